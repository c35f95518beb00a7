//! Pure protocol rules: everything here is deterministic and free of I/O so it can be read and
//! tested in isolation.
pub mod jwt;
pub mod manifest;
pub mod message;
pub mod tracking;
pub mod webhook;

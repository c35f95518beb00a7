//! Talking to Webex over HTTP: the JWKS cache and the per-tenant REST calls.
//!
//! # Layout
//! - [`jwks`]: regional key sets, cached, refetched on an unknown kid at most once per cooldown.
//! - [`client`]: OAuth refresh-token exchange, appUrl GET/PATCH, with error classes.
pub mod client;
pub mod jwks;

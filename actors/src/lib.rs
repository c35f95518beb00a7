//! The actor engine of xapi-stream.
//!
//! # Layout
//! - [`protocol`]: pure rules of the Webex Workspace Integration protocol (no I/O, no actix,
//!   no reqwest, no redis): manifest checks, JWT claims and policy, webhook authentication,
//!   message types and normalization.
//! - [`config`]: configuration types and their validation (loading lives in the binary).
//! - [`registry`]: tenant id → handle; activation, resume at start-up.
//! - [`secret`]: `Secret`, a string redacted in `Debug`/`Display`.
//! - [`shutdown`]: the one shutdown signal every loop races.
//! - [`store`]: Redis: connection, key names, records, stream writer.
//! - [`telemetry`]: every metric family, registered once; named recording functions.
//! - [`tenant`]: one tenant's shared state, token keeper and supervisor actor.
pub mod config;
pub mod protocol;
// PENDING pub mod registry;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
// PENDING pub mod tenant;

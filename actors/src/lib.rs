//! The actor engine of xapi-stream.
//!
//! # Layout
//! - [`protocol`]: pure rules of the Webex Workspace Integration protocol (no I/O, no actix,
//!   no reqwest, no redis): manifest checks, JWT claims and policy, webhook authentication,
//!   message types and normalization.
//! - [`auth`]: `JwtVerifier`: region → JWKS → signature → policy → jti.
//! - [`devices`]: the device API: inventory, xAPI status/commands, configurations, the
//!   command stream; per-tenant grants, rate limits and retries.
//! - [`config`]: configuration types and their validation (loading lives in the binary).
//! - [`registry`]: tenant id → handle; activation, resume at start-up.
//! - [`secret`]: `Secret`, a string redacted in `Debug`/`Display`.
//! - [`shutdown`]: the one shutdown signal every loop races.
//! - [`store`]: Redis: connection, key names, records, stream writer.
//! - [`telemetry`]: every metric family, registered once; named recording functions.
//! - [`tenant`]: one tenant's shared state, token keeper and supervisor actor.
//! - [`webex`]: reqwest client for Webex: JWKS cache, OAuth refresh, appUrl.
pub mod auth;
pub mod config;
pub mod devices;
pub mod ownership;
pub mod protocol;
pub mod registry;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod webex;

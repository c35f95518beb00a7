//! The actor engine of xapi-stream.
//!
//! # Layout
//! - [`protocol`]: pure rules of the Webex Workspace Integration protocol (no I/O, no actix,
//!   no reqwest, no redis): manifest checks, JWT claims and policy, webhook authentication,
//!   message types and normalization.
//! - [`actions`]: Webex → integration actions (healthCheck, update, updateApproved,
//!   deprovision) for one tenant.
//! - [`auth`]: `JwtVerifier`: region → JWKS → signature → policy → jti.
//! - [`devices`]: the device API: inventory, xAPI status/commands, configurations, the
//!   command stream; per-tenant grants, rate limits and retries.
//! - [`config`]: configuration types and their validation (loading lives in the binary).
//! - [`console`]: the operator console's sessions (open, check, close, end all).
//! - [`ingest`]: the one pipeline of webhooks and queue polls (verify, parse, check, write).
//! - [`ownership`]: the coordinator: heartbeats, rendezvous spreading, leases acquired, renewed
//!   and handed over.
//! - [`registry`]: tenant id → handle; activation, resume at start-up, following other
//!   replicas' changes.
//! - [`secret`]: `Secret`, a string redacted in `Debug`/`Display`.
//! - [`shutdown`]: the one shutdown signal every loop races.
//! - [`store`]: Redis: connection, key names, records, stream writer.
//! - [`support`]: the support log: errors answered with a trackingId, found again by it.
//! - [`telemetry`]: every metric family, registered once; named recording functions.
//! - [`supervisor`]: each tenant's supervisor actor and the `TenantHandle` everyone holds.
//! - [`tenant`]: one tenant's shared state, token keeper, claim on its lease, appUrl work,
//!   and `Deps` (what every component needs, built once).
//! - [`webex`]: reqwest client for Webex: JWKS cache, OAuth refresh, appUrl.
//! - [`onboarding`]: invitations, setup codes, pending activations and their approval.
pub mod actions;
pub mod auth;
pub mod config;
pub mod console;
pub mod consumers;
pub mod devices;
pub mod ingest;
pub mod onboarding;
pub mod ownership;
pub mod protocol;
pub mod registry;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod supervisor;
pub mod support;
pub mod telemetry;
pub mod tenant;
pub mod webex;

/// The error of every call that needs Redis (unreachable, timed out, a corrupt record...).
pub use store::StoreError;

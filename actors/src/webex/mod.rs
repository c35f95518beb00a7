//! Talking to Webex over HTTP: the JWKS cache, the per-tenant REST calls and the clients of
//! queue long-polls.
//!
//! # Layout
//! - [`jwks`]: regional key sets, cached, refetched on an unknown kid at most once per cooldown.
//! - [`client`]: OAuth refresh-token exchange, appUrl GET/PATCH, with error classes.
//! - [`http1`]: the lean HTTP/1.1 long-poll client (the default); [`polls`]: the reqwest poll
//!   clients (HTTP/2, or a proxy). The queue poller (`ingest::poller`) drives either.
pub mod client;
pub mod http1;
pub mod jwks;
pub mod polls;

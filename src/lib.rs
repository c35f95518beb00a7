//! xapi-stream: the process around the actor engine.
//!
//! # Layout
//! - [`cli`]: the `xapi-stream` command line.
//! - [`config`]: configuration loading (defaults → file → environment) and validation.
//! - [`engine`]: wiring and lifecycle: start, ordered shutdown, signal handling.
//! - [`http`]: the HTTP edge (routes, error JSON with trackingId, probes, metrics).
//! - [`logging`]: tracing subscriber set-up.
//! - [`tail`]: `xapi-stream tail`, a consumer-group reader of the streams.
//! - `devkit` (feature `devkit`, on by default): the simulator, private Redis servers, the
//!   demo — dev tooling the engine never imports.
pub mod cli;
pub mod config;
#[cfg(feature = "devkit")]
pub mod devkit;
pub mod engine;
pub mod http;
pub mod logging;
pub mod tail;

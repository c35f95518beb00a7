//! xapi-stream: the process around the actor engine.
//!
//! # Layout
//! - [`config`]: configuration loading (defaults → file → environment) and validation.
//! - [`demo`]: `xapi-stream demo`, the end-to-end walk-through.
//! - [`devenv`]: configuration of a local engine against private Redis + simulator.
//! - [`engine`]: wiring and lifecycle: start, ordered shutdown, signal handling.
//! - [`http`]: the HTTP edge (routes, error JSON with trackingId, probes, metrics).
//! - [`logging`]: tracing subscriber set-up.
//! - [`sim`]: the built-in Webex cloud simulator (HTTP server + library API for tests,
//!   benches and the demo).
//! - [`redis_server`]: a private `redis-server` process for the demo, tests and benches.
//! - [`redis_cluster`]: a local 3-master Redis Cluster of such processes.
//! - [`tail`]: `xapi-stream tail`, a consumer-group reader of the streams.
//! - [`cli`]: the `xapi-stream` command line.
pub mod cli;
pub mod config;
pub mod demo;
pub mod devenv;
pub mod engine;
pub mod http;
pub mod logging;
pub mod redis_cluster;
pub mod redis_server;
pub mod sim;
pub mod tail;

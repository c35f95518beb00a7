//! Development tooling: everything that plays the world around the engine in the demo, the
//! tests and the benchmarks. The engine's own code never imports this room (behind the
//! default-on `devkit` cargo feature, so `cargo build --no-default-features` leaves it out).
//!
//! # Layout
//! - [`sim`]: the Webex cloud simulator (HTTP server + library API).
//! - [`redis_server`]: a private `redis-server` process (start, kill, pause, restart).
//! - [`redis_cluster`]: a local 3-master Redis Cluster of such processes.
//! - [`redis_sentinel`]: a local master, replicas and sentinels (the failover tests).
//! - [`devenv`]: the configuration of a local engine against private Redis + simulator.
//! - [`demo`]: `xapi-stream demo`, the end-to-end walk-through.
//! - [`cli`]: `xapi-stream sim`.
pub mod cli;
pub mod demo;
pub mod devenv;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod sim;

//! Black-box tests: the engine (in-process or as the real binary) against a private
//! `redis-server` and the Webex simulator, over real HTTP. One test binary so the build links
//! once; each test gets its own key prefix, fault tests get their own Redis.
mod utils;

mod actions;
mod activation;
mod browser;
mod cli;
mod console;
mod consumers;
mod credentials;
mod devices;
mod drain;
mod durability;
mod engine_basics;
mod failover;
mod ingest;
mod openapi;
mod operator;
mod prometheus;
mod rotation;
mod scale;
mod sentinel;
mod transport;
mod walls;

//! `xapi-stream sim`: the simulator as a process of its own.
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::{engine, logging};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub bind: SocketAddr,
    /// Number of customer organizations.
    #[arg(long, default_value_t = 3)]
    pub orgs: usize,
    /// Devices per organization.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Integration (manifest) id.
    #[arg(long, default_value = "ac6b6972-538e-11ec-bf63-0242ac130002")]
    pub app_id: String,
    #[arg(long, default_value = "sim-client-id")]
    pub client_id: String,
    #[arg(long, default_value = "sim-client-secret")]
    pub client_secret: String,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 7199)]
    pub access_token_ttl: u64,
    /// Queue long-poll wait in seconds.
    #[arg(long, default_value_t = 20)]
    pub poll_wait: u64,
    /// Background traffic in messages per second across all organizations (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

pub fn sim(args: SimArgs) -> ExitCode {
    logging::init(&actors::config::LogConfig {
        format: actors::config::LogFormat::Auto,
        level: "info".into(),
    });
    let cfg = super::sim::SimConfig {
        orgs: args.orgs,
        devices_per_org: args.devices,
        app_id: args.app_id,
        client_id: args.client_id,
        client_secret: args.client_secret,
        access_token_ttl: Duration::from_secs(args.access_token_ttl),
        poll_wait: Duration::from_secs(args.poll_wait),
        ..Default::default()
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let sim = super::sim::Sim::start(cfg, args.bind).await?;
        println!("webex simulator listening on {}", sim.base_url());
        for (region, url) in sim.jwks_table() {
            println!("  jwks {region:<18} {url}");
        }
        for org in sim.orgs() {
            println!("  org {} {:<14} {}", org.index, org.name, org.org_id);
        }
        println!(
            "  activation JWT: curl -X POST {}/_sim/orgs/0/activation",
            sim.base_url()
        );
        if args.rate > 0.0 {
            sim.start_traffic(args.rate);
        }
        engine::termination_signal().await;
        sim.shutdown().await;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

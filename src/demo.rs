//! `xapi-stream demo`: the main job end to end on one machine. Starts a private redis-server,
//! the Webex simulator and the engine in this process, then shows what arrives, step by step.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::devenv;
use crate::engine;
use crate::redis_server::RedisServer;
use crate::sim::{Sim, SimConfig};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Customer organizations the simulator plays.
    #[arg(long, default_value_t = 3)]
    pub orgs: usize,
    /// Devices per organization.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// How long to show traffic, in seconds (Ctrl-C stops earlier).
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
}

/// Prints one progress line with the elapsed time.
struct Progress(Instant);

impl Progress {
    fn step(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>6.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

pub fn run(args: DemoArgs) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(demo(args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let p = Progress(Instant::now());
    p.step("starting a private redis-server on a free port");
    let redis = RedisServer::start()?;
    p.step(format!("redis ready at {}", redis.url()));

    let sim_cfg = SimConfig {
        orgs: args.orgs,
        devices_per_org: args.devices,
        ..Default::default()
    };
    let sim = Sim::start(sim_cfg, "127.0.0.1:0".parse()?).await?;
    p.step(format!(
        "webex simulator at {} playing {} organizations with {} devices each",
        sim.base_url(),
        args.orgs,
        args.devices
    ));

    let cfg = devenv::engine_config(
        &sim,
        &redis.url(),
        "demo",
        &[("INTEGRATION__INGEST", "both"), ("LOG__LEVEL", "info")],
    )?;
    let engine = engine::start(cfg).await?;
    let base = engine.base_url();
    p.step(format!("engine listening at {base}"));

    let http = reqwest::Client::new();
    let jwks: serde_json::Value = http
        .get(sim.jwks_url("us-east-2_a"))
        .send()
        .await?
        .json()
        .await?;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    p.step(format!("simulator JWKS publishes ES256 keys {kids:?}"));
    for org in sim.orgs() {
        p.step(format!(
            "org {} {:<12} region {:<12} queue length {}",
            org.index,
            org.name,
            org.region,
            sim.queue_len(org.index)
        ));
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await?;
        if ready.status().is_success() {
            p.step("engine /readyz: ready (redis reachable)");
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("engine did not become ready within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = http.get(format!("{base}/healthz")).send().await?.status();
    p.step(format!("engine /healthz: {health}"));

    let stop = tokio::time::sleep(Duration::from_secs(args.duration));
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = engine::termination_signal() => break,
            _ = tick.tick() => {
                let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
                let families = metrics.lines().filter(|l| l.starts_with("# TYPE xapi_stream_")).count();
                let redis_up = metric_value(&metrics, "xapi_stream_redis_up").unwrap_or(0.0);
                p.step(format!("engine /metrics: {families} xapi_stream_* families, redis_up={redis_up}"));
            }
        }
    }

    p.step("stopping: engine, simulator, redis");
    engine.shutdown().await;
    sim.shutdown().await;
    drop(redis);
    p.step("demo finished");
    Ok(())
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

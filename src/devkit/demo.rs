//! `xapi-stream demo`: the main job end to end on one machine. Starts a private redis-server,
//! the Webex simulator and the engine in this process, then shows what arrives, step by step.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use actors::store::keys::Keys;
use clap::Args;

use crate::devkit::devenv;
use crate::devkit::redis_server::RedisServer;
use crate::devkit::sim::{Sim, SimConfig};
use crate::engine;

/// The demo's `redis.key_prefix`.
const PREFIX: &str = "demo";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Customer organizations the simulator plays.
    #[arg(long, default_value_t = 3)]
    pub orgs: usize,
    /// Devices per organization.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Stop by itself this many seconds after the walk-through (when it prints the console's
    /// address and what to try); without it the demo runs until Ctrl-C.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Device changes per second across all organizations.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
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
    // Ctrl-C (or SIGTERM) is heard once, for the whole demo: it ends the demo at the next step.
    let (stop_tx, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        engine::termination_signal().await;
        let _ = stop_tx.send(true);
    });
    p.step("starting a private redis-server on a free port");
    let redis = RedisServer::start()?;
    p.step(format!("redis ready at {}", redis.url()));

    let sim_cfg = SimConfig {
        orgs: args.orgs,
        devices_per_org: args.devices,
        // Webex waits 20 s on an empty queue; a shorter wait keeps the demo's shutdown quick
        // (the engine finishes in-flight polls before it exits).
        poll_wait: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let sim = Sim::start(sim_cfg, "127.0.0.1:0".parse()?).await?;
    p.step(format!(
        "webex simulator at {} playing {} organizations with {} devices each",
        sim.base_url(),
        args.orgs,
        args.devices
    ));

    let keys = Keys::new(PREFIX);
    let cfg = devenv::engine_config(
        &sim,
        &redis.url(),
        PREFIX,
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

    // Activate every organization the way an operator does (manual activation JWTs).
    for org in sim.orgs() {
        let resp = http
            .post(format!("{base}/admin/activations"))
            .bearer_auth(devenv::ADMIN_TOKEN)
            .json(&serde_json::json!({ "jwt": sim.activation_jwt(org.index) }))
            .send()
            .await?;
        let body: serde_json::Value = resp.json().await?;
        p.step(format!(
            "activation of {} started: tenant {} is {}",
            org.name,
            body["tenant_id"].as_str().unwrap_or("?"),
            body["provisioning_state"].as_str().unwrap_or("?")
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tenants = tenants(&http, &base).await?;
        let done = tenants
            .iter()
            .filter(|t| t["provisioning_state"] == "completed")
            .count();
        if done == args.orgs {
            p.step(format!(
                "all {done} tenants completed: webhook + queue registered with Webex, tokens valid"
            ));
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("activations did not complete: {tenants:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = args.rate;
    sim.start_traffic(rate);
    p.step(format!(
        "devices now send {rate} changes/s (as signed webhooks and to the queues)"
    ));

    let mut conn = redis.client().get_multiplexed_async_connection().await?;
    // A few progress lines first (Ctrl-C ends the demo).
    let until = Instant::now() + Duration::from_secs(7);
    let mut watch = Watch {
        p: &p,
        http: &http,
        base: &base,
        sim: &sim,
        keys: &keys,
        stopped: stopped.clone(),
    };
    if !watch
        .progress(&mut conn, Duration::from_secs(3), Some(until))
        .await?
    {
        p.step("stopping: engine, simulator, redis");
        engine.shutdown().await;
        sim.shutdown().await;
        drop(redis);
        p.step("demo finished");
        return Ok(());
    }
    let org = sim.org(0);
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.status_stream(&org.org_id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    if let Some(entry) = last.ids.first() {
        let fields: Vec<String> = entry
            .map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    redis::from_redis_value_ref::<String>(v).unwrap_or_default()
                )
            })
            .collect();
        p.step(format!(
            "latest entry of {}'s {}:",
            org.name,
            keys.status_stream(&org.org_id)
        ));
        println!("    {}", fields.join("  "));
    }

    // The device API: the inventory downstream joins on, and a command sent through Redis.
    let devices: u64 = redis::cmd("HLEN")
        .arg(keys.devices(&org.org_id))
        .query_async(&mut conn)
        .await?;
    p.step(format!(
        "inventory of {}: {devices} devices in {} (id → name, product, workspace)",
        org.name,
        keys.devices(&org.org_id)
    ));
    let device = &org.devices[0];
    let _: String = redis::cmd("XADD")
        .arg(keys.commands_stream(&org.org_id))
        .arg("*")
        .arg(&[
            "id",
            "demo-1",
            "device",
            &device.device_id,
            "name",
            "Message.Send",
        ])
        .arg(&["arguments", r#"{"Text": "Hello from xapi-stream"}"#])
        .query_async(&mut conn)
        .await?;
    p.step(format!(
        "wrote a Message.Send request for {} to {}",
        device.name,
        keys.commands_stream(&org.org_id)
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let results: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.command_results(&org.org_id))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let field = |e: &redis::streams::StreamId, k: &str| {
            e.map
                .get(k)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .unwrap_or_default()
        };
        if let Some(e) = results.ids.iter().find(|e| field(e, "id") == "demo-1") {
            p.step(format!(
                "command_results: id=demo-1 status={} result={}{}",
                field(e, "status"),
                field(e, "result"),
                field(e, "description")
            ));
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("no result for the demo command within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A consumer credential: the customer's own analytics reads its organization only.
    let tenant_id = tenant_of(&http, &base, &org.org_id).await?;
    let grant: serde_json::Value = http
        .post(format!("{base}/admin/tenants/{tenant_id}/consumers"))
        .bearer_auth(devenv::ADMIN_TOKEN)
        .json(&serde_json::json!({"name": "analytics"}))
        .send()
        .await?
        .json()
        .await?;
    let (user, password) = (
        grant["user"].as_str().unwrap_or("?").to_string(),
        grant["password"].as_str().unwrap_or("?").to_string(),
    );
    p.step(format!(
        "granted {}'s analytics a Redis user that reads its organization only: {user}",
        org.name
    ));

    let admin = engine.admin_url();
    let other = sim.org(1.min(args.orgs.saturating_sub(1)));
    println!();
    let stop_at = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    println!(
        "  The demo keeps running{}. While it does:",
        match args.seconds {
            Some(s) => format!(" for {s} s (--seconds)"),
            None => " until you press Ctrl-C".into(),
        }
    );
    println!();
    println!("  console     {admin}/console/");
    println!(
        "  sign in     with the admin token: {}",
        devenv::ADMIN_TOKEN
    );
    println!();
    println!("  try:");
    println!(
        "    redis-cli -p {} XRANGE '{}' - + COUNT 5",
        redis.port(),
        keys.status_stream(&org.org_id)
    );
    println!(
        "    redis-cli -p {} --user {user} --pass {password} --no-auth-warning XLEN '{}'",
        redis.port(),
        keys.status_stream(&org.org_id)
    );
    if other.org_id != org.org_id {
        println!(
            "    redis-cli -p {} --user {user} --pass {password} --no-auth-warning XLEN '{}'   # NOPERM: another customer",
            redis.port(),
            keys.status_stream(&other.org_id)
        );
    }
    println!(
        "    curl -s -H 'Authorization: Bearer {}' {admin}/admin/tenants",
        devenv::ADMIN_TOKEN
    );
    println!("    curl -s {admin}/metrics | grep '^xapi_stream_webhooks_total'");
    println!();
    if !*stopped.borrow() {
        watch
            .progress(&mut conn, Duration::from_secs(10), stop_at)
            .await?;
    }

    p.step("stopping: engine, simulator, redis");
    engine.shutdown().await;
    sim.shutdown().await;
    drop(redis);
    p.step("demo finished");
    Ok(())
}

/// What the progress lines read, and whether Ctrl-C or SIGTERM was heard.
struct Watch<'a> {
    p: &'a Progress,
    http: &'a reqwest::Client,
    base: &'a str,
    sim: &'a Sim,
    keys: &'a Keys,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Watch<'_> {
    /// Prints what has arrived every `every` until `until` (None: until Ctrl-C or SIGTERM, which
    /// `stopped` tells); false when it was stopped by a signal.
    async fn progress(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        every: Duration,
        until: Option<Instant>,
    ) -> anyhow::Result<bool> {
        let Watch {
            p,
            http,
            base,
            sim,
            keys,
            stopped,
        } = self;
        let stop = async {
            match until {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(true),
                _ = stopped.wait_for(|s| *s) => return Ok(false),
                _ = tick.tick() => {
                    let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
                    let m = |s: &str| metric_value(&metrics, s).unwrap_or(0.0);
                    let mut status = 0u64;
                    let mut events = 0u64;
                    for org in sim.orgs() {
                        let s: u64 = redis::cmd("XLEN").arg(keys.status_stream(&org.org_id)).query_async(conn).await?;
                        let e: u64 = redis::cmd("XLEN").arg(keys.events_stream(&org.org_id)).query_async(conn).await?;
                        status += s;
                        events += e;
                    }
                    p.step(format!(
                        "streams: {status} status + {events} event entries | webhooks accepted {} duplicate {} | queue polls {} | redis_up {}",
                        m("xapi_stream_webhooks_total{result=\"accepted\"}"),
                        m("xapi_stream_webhooks_total{result=\"duplicate\"}"),
                        m("xapi_stream_queue_polls_total{result=\"ok\"}") + m("xapi_stream_queue_polls_total{result=\"empty\"}"),
                        m("xapi_stream_redis_up"),
                    ));
                }
            }
        }
    }
}

/// Every tenant, as `GET /admin/tenants` lists them.
async fn tenants(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(http
        .get(format!("{base}/admin/tenants"))
        .bearer_auth(devenv::ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?)
}

/// The tenant id of organization `org`.
async fn tenant_of(http: &reqwest::Client, base: &str, org: &str) -> anyhow::Result<String> {
    tenants(http, base)
        .await?
        .iter()
        .find(|t| t["org_id"] == org)
        .and_then(|t| t["tenant_id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no tenant for {org}"))
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

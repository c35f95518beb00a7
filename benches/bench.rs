//! The write-path benchmark: wrk (Debian's package) against the engine and the bare actix-web
//! reference server — and the Node express + ioredis peer when npm can install it — in one
//! run, targets interleaved, medians of `--rounds`. Every request body is unique and signed
//! (the engine deduplicates repeats), with 2 updated keys and 1 removed key on one of 4,000
//! devices per tenant and a fresh timestamp, so each accepted message must produce exactly 3
//! stream entries. Redis and engine CPU per message are read from `/proc/<pid>/stat`.
//!
//!   make bench            (or: cargo build --release --bins && target/release/xapi-bench)
//!   target/release/xapi-bench [--seconds 10] [--connections 64] [--rounds 3] [--tenants 1]
//!                             [--bodies 1000000] [--devices 4000] [--no-peer] [--no-open-loop]
//!                             [--wait-replicas N]   (Redis gets N replicas, `redis.wait_replicas = N`)
//!                             [--commandstats]      (per engine run: Redis's INFO commandstats,
//!                                                    calls and µs per accepted message)
//!                             [--trace]             (a sampler every 100 ms: the 100-ms steps in
//!                                                    which the engine's runs stalled, and what the
//!                                                    machine's cores did around the open loop's
//!                                                    slowest requests; it costs some throughput)
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use xapi_stream::devkit::redis_server::{RedisServer, free_port};
use xapi_stream::devkit::sim::{Sim, SimConfig, sign_webhook};

#[path = "common.rs"]
mod common;
use common::*;

const USAGE: &str = "usage: xapi-bench [--seconds 10] [--connections 64] [--rounds 3] [--tenants 1] [--bodies 1000000] [--devices 4000]
                  [--no-peer] [--no-open-loop] [--wait-replicas N] [--commandstats] [--trace]
(see the top of benches/bench.rs and benches/README.md)";

/// The wrk script: loads pre-generated requests (path, signature, body per line) and cycles
/// through them.
const WRK_LUA: &str = r#"
local reqs = {}
local i = 0
function init(args)
  for line in io.lines(os.getenv("XAPI_BENCH_BODIES")) do
    local path, sig, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", path,
      { ["X-Spark-Signature"] = sig, ["Content-Type"] = "application/json" }, body)
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
"#;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    requests: u64,
    /// CPU µs per accepted message of Redis and of the target process.
    redis_us: f64,
    target_us: f64,
    /// Stream entries per accepted message (engine only).
    entries_per_msg: f64,
    /// Webhooks the engine answered as duplicates (engine only): bodies wrk sent again after
    /// running through them all, which cost less than a unique one. 0 when `--bodies` sufficed.
    duplicates: u64,
}

/// A target: where wrk sends, which process serves it, and how a body is addressed and signed.
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
    /// (path, secret, org, workspace) per tenant.
    tenants: Vec<(String, String, String, String)>,
    /// The engine's /metrics, to count what it wrote.
    metrics_url: Option<String>,
}

/// Devices per tenant the bodies are spread over, by default (`--devices`): a body's device
/// comes back only every `tenants × devices` bodies, so wrk's 64 connections never carry two
/// messages of one device at once and each device's messages apply in order.
const DEVICES: usize = 4000;
/// The status keys a device's messages rotate through.
const KEYS: [&str; 3] = [
    "RoomAnalytics.PeopleCount.Current",
    "Audio.Volume",
    "Standby.State",
];

/// `n` unique signed status bodies for `t`, written as wrk request lines; returns the file.
/// Like the seed's example, each updates 2 keys and removes 1: the n-th message of a device
/// sets `KEYS[n % 3]` and `KEYS[(n + 1) % 3]` to a value never sent before and removes
/// `KEYS[(n + 2) % 3]`, which its previous message set — so each produces exactly 3 stream
/// entries (the first of a device too: its state is unknown, so its removal is written).
fn bodies(
    t: &Target,
    (n, devices): (usize, usize),
    tag: &str,
    app: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let path = dir.join(format!("{}-{tag}.tsv", t.name.replace(' ', "_")));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("bodies file"));
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let per_tenant = devices.min(n.div_ceil(t.tenants.len())).max(1);
    for k in 0..n {
        let tenant = k % t.tenants.len();
        let (p, secret, org, ws) = &t.tenants[tenant];
        let d = (k / t.tenants.len()) % per_tenant;
        let seq = k / (t.tenants.len() * per_tenant);
        let device = webex_id("DEVICE", &format!("{tag}-{d}"));
        let mut updated = serde_json::Map::new();
        updated.insert(KEYS[seq % 3].into(), json!(k));
        updated.insert(KEYS[(seq + 1) % 3].into(), json!(k));
        let body = serde_json::to_vec(&json!({
            "appId": app, "deviceId": device, "workspaceId": ws, "orgId": org,
            "timestamp": ts, "type": "status",
            "changes": { "updated": updated, "removed": [KEYS[(seq + 2) % 3]] },
            "isFullSync": false
        }))
        .expect("json");
        let sig = sign_webhook(secret, &body);
        out.write_all(p.as_bytes()).unwrap();
        out.write_all(b"\t").unwrap();
        out.write_all(sig.as_bytes()).unwrap();
        out.write_all(b"\t").unwrap();
        out.write_all(&body).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    path
}

/// An id of the length of Webex's own (organization 87, workspace 78, device 79 characters):
/// unpadded base64 of `ciscospark://us/<KIND>/<uuid>`, the uuid derived from `seed`. What an
/// entry costs in Redis depends on it (the ids are most of a status entry's bytes).
fn webex_id(kind: &str, seed: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    let (a, b) = (
        h.finish(),
        h.finish().rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15,
    );
    let uuid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    );
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        format!("ciscospark://us/{kind}/{uuid}"),
    )
}

/// What a status entry costs Redis: `MEMORY USAGE <stream> SAMPLES 0` (every node counted)
/// over `XLEN`, for the engine's first tenant, whose entries carry ids of Webex's length.
fn bytes_per_entry(redis: &RedisServer, stream: &str) -> anyhow::Result<(u64, f64)> {
    let mut conn = redis.client().get_connection()?;
    let len: u64 = redis::cmd("XLEN").arg(stream).query(&mut conn)?;
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(stream)
        .arg("SAMPLES")
        .arg(0)
        .query(&mut conn)?;
    Ok((len, bytes as f64 / len.max(1) as f64))
}

/// Parses wrk's `--latency` output.
fn parse_wrk(text: &str) -> Run {
    let value = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
    };
    let ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => n,
        }
    };
    Run {
        rps: value("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: value("50%").map(ms).unwrap_or(f64::NAN),
        p99_ms: value("99%").map(ms).unwrap_or(f64::NAN),
        non_2xx: value("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        requests: text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        ..Default::default()
    }
}

fn redis_pid(redis: &RedisServer) -> u32 {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut redis.client().get_connection().expect("redis"))
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("redis process_id")
}

async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// What the engine's metrics count, read before and after a run.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Status messages written.
    messages: f64,
    /// Status stream entries written.
    entries: f64,
    /// Webhooks answered as duplicates.
    duplicates: f64,
}

async fn engine_counts(url: &str) -> Counts {
    let text = scrape(url).await;
    Counts {
        messages: metric(
            &text,
            "xapi_stream_messages_total{source=\"webhook\",type=\"status\"}",
        ),
        entries: metric(&text, "xapi_stream_stream_entries_total{stream=\"status\"}"),
        duplicates: metric(&text, "xapi_stream_webhooks_total{result=\"duplicate\"}"),
    }
}

/// One wrk run against `t` with a fresh set of bodies.
async fn run_wrk(
    t: &Target,
    redis: &RedisServer,
    redis_pid: u32,
    opts: &Opts,
    tag: &str,
    app: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Run> {
    let file = bodies(t, (opts.bodies, opts.devices), tag, app, dir);
    let script = dir.join("bench.lua");
    std::fs::write(&script, WRK_LUA)?;
    let before = match &t.metrics_url {
        Some(u) => engine_counts(u).await,
        None => Counts::default(),
    };
    let stats = opts.commandstats && t.metrics_url.is_some();
    if stats {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut redis.client().get_connection()?)?;
    }
    let sampler =
        (opts.trace && t.metrics_url.is_some()).then(|| Sampler::start(t, redis_pid, redis));
    let (r0, t0) = (cpu_time(redis_pid), cpu_time(t.pid));
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{}", opts.connections)])
        .arg(format!("-d{}s", opts.seconds))
        .args(["--latency", "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}", t.port))
        .env("XAPI_BENCH_BODIES", &file)
        .output()
        .await?;
    let (r1, t1) = (cpu_time(redis_pid), cpu_time(t.pid));
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let name: String = t
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    std::fs::write(dir.join(format!("wrk-{tag}-{name}.txt")), &*text)?;
    // Connect and read errors, timeouts: requests that are neither in the latency figures nor
    // in non-2xx.
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors")) {
        println!("  wrk against {}: {}", t.name, line.trim());
    }
    if let Some(sampler) = sampler {
        report_stalls(&sampler.stop(), &mut redis.client().get_connection()?)?;
    }
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = parse_wrk(&text);
    let accepted = match &t.metrics_url {
        Some(u) => {
            // The last answers are counted by the time wrk has exited.
            let after = engine_counts(u).await;
            let m = after.messages - before.messages;
            let e = after.entries - before.entries;
            run.entries_per_msg = if m > 0.0 { e / m } else { f64::NAN };
            run.duplicates = (after.duplicates - before.duplicates) as u64;
            m
        }
        None => (run.requests - run.non_2xx) as f64,
    };
    let per = |d: Duration| d.as_secs_f64() * 1e6 / accepted.max(1.0);
    if stats {
        print_commandstats(redis, accepted)?;
    }
    run.redis_us = per(r1.saturating_sub(r0));
    run.target_us = per(t1.saturating_sub(t0));
    Ok(run)
}

/// Redis's own account of a run (`INFO commandstats`), per accepted message: what each command
/// cost, those called from the scripts included (the script's own time is EVALSHA's minus
/// theirs).
fn print_commandstats(redis: &RedisServer, accepted: f64) -> anyhow::Result<()> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.client().get_connection()?)?;
    let mut rows: Vec<(String, f64, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| -> Option<f64> {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_string(), field("calls")?, field("usec")?))
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let m = accepted.max(1.0);
    let inner: f64 = rows
        .iter()
        .filter(|r| r.0 != "evalsha" && r.0 != "eval")
        .map(|r| r.2)
        .sum();
    println!("  commandstats per accepted message (calls, µs):");
    for (name, calls, usec) in &rows {
        println!("    {name:<12} {:>7.3} {:>7.2}", calls / m, usec / m);
    }
    if let Some(e) = rows.iter().find(|r| r.0 == "evalsha") {
        println!(
            "    script itself (evalsha minus the rest) {:.2} µs",
            (e.2 - inner) / m
        );
    }
    Ok(())
}

struct Opts {
    commandstats: bool,
    trace: bool,
    seconds: u64,
    connections: usize,
    rounds: usize,
    tenants: usize,
    bodies: usize,
    devices: usize,
    peer: bool,
    open_loop: bool,
    wait_replicas: u32,
}

/// Starts the Node peer from `../shared/peers/node-receiver` (copied to a scratch folder,
/// `npm ci`), when it and npm are there.
async fn start_peer(
    dir: &std::path::Path,
    secret: &str,
    redis_url: &str,
) -> Option<(std::process::Child, u16)> {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/node-receiver");
    if !src.join("server.js").exists() {
        println!("(Node peer skipped: {} not found)", src.display());
        return None;
    }
    let work = dir.join("node-receiver");
    std::fs::create_dir_all(&work).ok()?;
    for f in ["package.json", "package-lock.json", "server.js"] {
        std::fs::copy(src.join(f), work.join(f)).ok()?;
    }
    if !work.join("node_modules").exists() {
        let ok = std::process::Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&work)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("(Node peer skipped: npm ci failed)");
            return None;
        }
    }
    let port = free_port().ok()?;
    let child = std::process::Command::new("node")
        .arg("server.js")
        .current_dir(&work)
        .env("SECRET", secret)
        .env("REDIS_URL", redis_url)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // It answers only POST /webhook; wait until the port accepts connections.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            println!("(Node peer skipped: not listening)");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some((child, port))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    check_args(
        &[
            "--seconds",
            "--connections",
            "--rounds",
            "--tenants",
            "--bodies",
            "--devices",
            "--wait-replicas",
        ],
        &["--no-peer", "--no-open-loop", "--commandstats", "--trace"],
        USAGE,
    );
    let opts = Opts {
        commandstats: std::env::args().any(|a| a == "--commandstats"),
        trace: std::env::args().any(|a| a == "--trace"),
        seconds: arg("--seconds", 10),
        connections: arg("--connections", 64),
        rounds: arg("--rounds", 3),
        tenants: arg("--tenants", 1),
        bodies: arg("--bodies", 1_000_000),
        devices: arg("--devices", DEVICES),
        peer: !std::env::args().any(|a| a == "--no-peer"),
        open_loop: !std::env::args().any(|a| a == "--no-open-loop"),
        wait_replicas: arg("--wait-replicas", 0),
    };
    anyhow::ensure!(
        std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok(),
        "wrk not found (apt-get install wrk; `make bench` installs it)"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    println!(
        "xapi-bench: wrk -t1 -c{} -d{}s, {} round(s), {} tenant(s) of up to {} devices, {} unique signed bodies per engine run (2 updated + 1 removed key)",
        opts.connections, opts.seconds, opts.rounds, opts.tenants, opts.devices, opts.bodies
    );
    let redis = RedisServer::start()?;
    let rpid = redis_pid(&redis);
    // Redis records its own stalls of 5 ms or more (`LATENCY LATEST`, printed after each run).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("latency-monitor-threshold")
        .arg(5)
        .query(&mut redis.client().get_connection()?)?;
    // Redis settings to try, e.g. XAPI_BENCH_REDIS="stream-node-max-bytes=1024".
    for (k, v) in std::env::var("XAPI_BENCH_REDIS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
    {
        println!("redis setting {k} {v}");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut redis.client().get_connection()?)?;
    }
    let followers = start_followers(&redis, opts.wait_replicas)?;
    let sim = Sim::start(
        SimConfig {
            orgs: opts.tenants,
            devices_per_org: 1,
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let mut env = xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), "bench");
    if opts.wait_replicas > 0 {
        println!(
            "every 200 waits for {} Redis replica(s) (redis.wait_replicas)",
            opts.wait_replicas
        );
        env.push((
            "XAPI_STREAM__REDIS__WAIT_REPLICAS".into(),
            opts.wait_replicas.to_string(),
        ));
    }
    let (engine, base) = spawn_engine(&env, "bench").await?;
    // Killed however main ends (an error or a panic as well): a process left behind would
    // load the machine of every later run.
    let mut children = Children(vec![engine]);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(opts.tenants);
    for chunk in (0..opts.tenants).collect::<Vec<_>>().chunks(50) {
        let answers = futures::future::join_all(chunk.iter().map(|&i| {
            http.post(format!("{base}/admin/activations"))
                .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
                .json(&json!({"jwt": sim.activation_jwt(i)}))
                .send()
        }))
        .await;
        for a in answers {
            let v: serde_json::Value = a?.json().await?;
            ids.push(v["tenant_id"].as_str().unwrap_or_default().to_string());
        }
    }
    while (0..opts.tenants).any(|i| sim.app_state(i).webhook.is_none()) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "activations did not complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} tenant(s) activated in {:.1?}",
        opts.tenants,
        started.elapsed()
    );
    let app = sim.config().app_id.clone();
    let secret = |i: usize| {
        sim.app_state(i)
            .webhook
            .and_then(|w| w.secret)
            .unwrap_or_default()
    };
    // The workspace of the bodies: an id of Webex's length (the simulator's are longer).
    let org = |i: usize| {
        let o = sim.org(i);
        (o.org_id.clone(), webex_id("PLACE", &o.org_id))
    };
    let engine_port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let mut targets = vec![Target {
        name: "engine",
        port: engine_port,
        pid: children.0[0].id(),
        tenants: ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (o, ws) = org(i);
                (format!("/tenants/{id}/webhook"), secret(i), o, ws)
            })
            .collect(),
        metrics_url: Some(format!("{base}/metrics")),
    }];
    let ref_port = free_port()?;
    let reference = std::process::Command::new(exe("reference-server"))
        .args(["--bind", &format!("127.0.0.1:{ref_port}")])
        .spawn()?;
    let reference_pid = reference.id();
    children.0.push(reference);
    while std::net::TcpStream::connect(("127.0.0.1", ref_port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (o0, ws0) = org(0);
    targets.push(Target {
        name: "bare actix-web",
        port: ref_port,
        pid: reference_pid,
        tenants: vec![("/webhook".into(), secret(0), o0.clone(), ws0.clone())],
        metrics_url: None,
    });
    if opts.peer
        && let Some((child, port)) = start_peer(&dir, &secret(0), &redis.url()).await
    {
        targets.push(Target {
            name: "Node express + ioredis",
            port,
            pid: child.id(),
            tenants: vec![("/webhook".into(), secret(0), o0, ws0)],
            metrics_url: None,
        });
        children.0.push(child);
    }

    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..opts.rounds {
        for (k, t) in targets.iter().enumerate() {
            let tag = format!("r{round}");
            let r = run_wrk(t, &redis, rpid, &opts, &tag, &app, &dir).await?;
            println!(
                "round {} {:<24} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {}",
                round + 1,
                t.name,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.non_2xx
            );
            runs[k].push(r);
        }
    }
    let med = |k: usize, f: fn(&Run) -> f64| median(runs[k].iter().map(f).collect());
    let bare = med(1, |r| r.rps);
    println!();
    println!("| target | req/s | p50 | p99 | vs bare | Redis CPU µs/msg | process CPU µs/msg |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (k, t) in targets.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2}× | {:.1} | {:.1} |",
            t.name,
            med(k, |r| r.rps),
            med(k, |r| r.p50_ms),
            med(k, |r| r.p99_ms),
            med(k, |r| r.rps) / bare,
            med(k, |r| r.redis_us),
            med(k, |r| r.target_us),
        );
    }
    let engine_runs = &runs[0];
    let non_2xx: u64 = engine_runs.iter().map(|r| r.non_2xx).sum();
    println!(
        "engine: non-2xx {non_2xx}; stream entries per accepted message {} (3 = exactly once)",
        engine_runs
            .iter()
            .map(|r| format!("{:.3}", r.entries_per_msg))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // wrk cycles through the bodies: a run faster than `--bodies` / `--seconds` sends some
    // again, which the engine answers as duplicates, cheaper than unique messages (and their
    // Redis and engine CPU is divided among fewer written messages).
    let duplicates: Vec<u64> = engine_runs.iter().map(|r| r.duplicates).collect();
    if duplicates.iter().any(|&d| d > 0) {
        println!(
            "warning: wrk ran through all {} bodies and sent some again (duplicates per round: {:?}); these figures are not of unique messages: rerun with a larger --bodies",
            opts.bodies, duplicates
        );
    } else {
        println!("engine: every body unique (0 duplicates in every round)");
    }
    // The medians above hide how far rounds spread on a shared machine: each round's own.
    let each = |f: &dyn Fn(&Run, &Run) -> String| {
        engine_runs
            .iter()
            .zip(&runs[1])
            .map(|(e, b)| f(e, b))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "engine, round by round: Redis CPU µs/msg {}; vs that round's bare actix-web {}",
        each(&|e, _| format!("{:.1}", e.redis_us)),
        each(&|e, b| format!("{:.2}×", e.rps / b.rps))
    );
    let stream = format!("bench:{{{}}}:status", org(0).0);
    let (len, per_entry) = bytes_per_entry(&redis, &stream)?;
    println!(
        "status entry in Redis: {per_entry:.0} bytes (MEMORY USAGE SAMPLES 0 / XLEN over the {len} entries of the first tenant's stream; workspace id {} and device id {} characters)",
        org(0).1.len(),
        webex_id("DEVICE", "r0-0").len()
    );

    if opts.open_loop {
        let rate = med(0, |r| r.rps) / 3.0;
        // Redis records its own stalls of 5 ms or more (LATENCY LATEST below); a sampler
        // records every 100 ms the CPU the machine gave to whom, to tell a stall of the engine
        // or Redis from one of the whole machine (steal, or nobody running).
        let mut rc = redis.client().get_connection()?;
        let _: i64 = redis::cmd("LATENCY").arg("RESET").query(&mut rc)?;
        let sampler = opts
            .trace
            .then(|| Sampler::start(&targets[0], rpid, &redis));
        let ol = open_loop(&targets[0], rate, &opts, &app).await;
        let samples = sampler.map(Sampler::stop).unwrap_or_default();
        let lat = &ol.sorted;
        println!(
            "engine open loop at {rate:.0}/s (a third of its max) over {} connections: achieved {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, non-2xx {}",
            opts.connections,
            ol.achieved,
            pct(lat, 0.5),
            pct(lat, 0.99),
            pct(lat, 0.999),
            ol.errors
        );
        report_open_loop(&ol, &samples, &mut rc, &dir)?;
    }
    drop(children);
    drop(followers);
    sim.shutdown().await;
    Ok(())
}

/// `n` replicas of `master`, in sync.
fn start_followers(master: &RedisServer, n: u32) -> anyhow::Result<Vec<RedisServer>> {
    let port = master.port().to_string();
    let followers: Vec<RedisServer> = (0..n)
        .map(|_| RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for f in &followers {
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut f.client().get_connection()?)?;
            if info.contains("master_link_status:up") {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "a Redis replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(followers)
}

/// Open loop at `rate`/s for `secs` against the engine (fresh bodies; see `common::open_loop`).
async fn open_loop(t: &Target, rate: f64, opts: &Opts, app: &str) -> OpenLoop {
    let n = (rate * opts.seconds as f64) as usize;
    let file = bodies(
        t,
        (n.max(1), opts.devices),
        "open",
        app,
        &std::env::temp_dir(),
    );
    let base = format!("http://127.0.0.1:{}", t.port);
    let reqs: Vec<Req> = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '\t');
            let (path, sig, body) = (p.next()?, p.next()?, p.next()?);
            Some((
                Arc::from(format!("{base}{path}")),
                body.as_bytes().to_vec(),
                sig.to_string(),
            ))
        })
        .collect();
    let _ = std::fs::remove_file(&file);
    let secs = opts.seconds as f64;
    common::open_loop(Arc::new(reqs), rate, secs, opts.connections).await
}

/// Samples every 100 ms, on a thread of its own, what the machine gave to whom and how many
/// messages Redis applied (its XADD count / 3).
struct Sampler {
    on: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(t: &Target, rpid: u32, redis: &RedisServer) -> Self {
        let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (flag, epid, me, port) = (on.clone(), t.pid, std::process::id(), t.port);
        let mut rc = redis.client().get_connection().ok();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while flag.load(std::sync::atomic::Ordering::Relaxed) {
                let xadds = rc.as_mut().map_or(0, |c| {
                    let info: String = redis::cmd("INFO")
                        .arg("commandstats")
                        .query(c)
                        .unwrap_or_default();
                    info.lines()
                        .find_map(|l| l.strip_prefix("cmdstat_xadd:calls="))
                        .and_then(|v| v.split(',').next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                });
                samples.push(Sample {
                    at: start.elapsed().as_secs_f64(),
                    machine: machine_ticks(),
                    engine: cpu_time(epid),
                    redis: cpu_time(rpid),
                    client: cpu_time(me),
                    sockets: server_sockets(port),
                    xadds,
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Self { on, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.on.store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

/// The processes a run started, killed and waited for when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// What the machine gave to whom, sampled during a run.
struct Sample {
    /// Seconds since the sampler started.
    at: f64,
    /// `/proc/stat`: (steal, idle, total) ticks of all cores.
    machine: (u64, u64, u64),
    engine: Duration,
    redis: Duration,
    client: Duration,
    /// The engine's TCP connections: (established, closing).
    sockets: (usize, usize),
    /// Redis's XADD calls so far.
    xadds: u64,
}

/// What the machine did between two samples, in one line.
fn between(a: &Sample, b: &Sample) -> String {
    let secs = (b.at - a.at).max(1e-3);
    let ticks = b.machine.2.saturating_sub(a.machine.2).max(1) as f64;
    format!(
        "over {:.2} s: {:.0} messages/s; engine {:.0} %, Redis {:.0} %, client {:.0} % of a core; machine steal {:.0} %, idle {:.0} %; engine connections {} → {} open, {} closing",
        secs,
        b.xadds.saturating_sub(a.xadds) as f64 / 3.0 / secs,
        b.engine.saturating_sub(a.engine).as_secs_f64() / secs * 100.0,
        b.redis.saturating_sub(a.redis).as_secs_f64() / secs * 100.0,
        b.client.saturating_sub(a.client).as_secs_f64() / secs * 100.0,
        b.machine.0.saturating_sub(a.machine.0) as f64 / ticks * 100.0,
        b.machine.1.saturating_sub(a.machine.1) as f64 / ticks * 100.0,
        a.sockets.0,
        b.sockets.0,
        b.sockets.1,
    )
}

/// The 100-ms steps of a closed-loop run in which Redis applied less than half the run's median
/// (a stall), with what the machine did then; Redis's latency events of the run.
fn report_stalls(samples: &[Sample], rc: &mut redis::Connection) -> anyhow::Result<()> {
    let rates: Vec<f64> = samples
        .windows(2)
        .map(|w| w[1].xadds.saturating_sub(w[0].xadds) as f64 / (w[1].at - w[0].at).max(1e-3))
        .collect();
    // wrk loads its bodies before it sends: the run is from the first step with messages to the
    // last, and its first and last steps hold wrk's start and end.
    let first = rates.iter().position(|&r| r > 0.0).unwrap_or(0);
    let last = rates.iter().rposition(|&r| r > 0.0).unwrap_or(0);
    let typical = median(rates.get(first..=last).unwrap_or_default().to_vec());
    let stalls: Vec<usize> = (first + 1..last)
        .filter(|&i| rates[i] < typical / 2.0)
        .collect();
    if !stalls.is_empty() {
        println!(
            "  {} stalled 100-ms step(s) (under half the median rate):",
            stalls.len()
        );
    }
    for &i in stalls.iter().take(8) {
        println!(
            "    at {:5.1} s {}",
            samples[i].at,
            between(&samples[i], &samples[i + 1])
        );
    }
    print_latency_events(rc)
}

/// Redis's own latency events (`latency-monitor-threshold` 5 ms) since the last reset; resets.
fn print_latency_events(rc: &mut redis::Connection) -> anyhow::Result<()> {
    let events: Vec<(String, i64, i64, i64)> = redis::cmd("LATENCY").arg("LATEST").query(rc)?;
    for (event, _, latest, max) in events {
        println!("  Redis latency event {event}: latest {latest} ms, max {max} ms");
    }
    let _: i64 = redis::cmd("LATENCY").arg("RESET").query(rc)?;
    Ok(())
}

/// Where the open loop's slowest requests were: the worst 100-ms windows of send time, what
/// the machine's cores did around them, Redis's own latency events; the whole trace goes to
/// `target/bench/open-loop.tsv` (send time s, latency ms).
fn report_open_loop(
    ol: &OpenLoop,
    samples: &[Sample],
    rc: &mut redis::Connection,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut tsv = String::with_capacity(ol.trace.len() * 16);
    for (at, ms) in &ol.trace {
        tsv.push_str(&format!("{at:.4}\t{ms:.3}\n"));
    }
    std::fs::write(dir.join("open-loop.tsv"), tsv)?;
    let slow = ol.trace.iter().filter(|(_, ms)| *ms > 50.0).count();
    if let Some(most) = samples.iter().map(|s| s.sockets.0).max() {
        println!("  the engine's connections: at most {most} open at once");
    }
    println!(
        "  requests over 50 ms: {slow} of {}; the worst 100-ms windows of send time (trace: target/bench/open-loop.tsv):",
        ol.trace.len()
    );
    // The sampler starts before the bodies are made; the loop's time 0 is when it ends, so
    // the windows are matched to samples by the loop's length counted back from the end.
    let loop_secs = ol.trace.last().map_or(0.0, |t| t.0);
    let offset = samples.last().map_or(0.0, |s| s.at) - loop_secs;
    for (start, n, max, slow) in worst_windows(&ol.trace, 0.1, 50.0, 5) {
        // The CPU around the window: from its start to 0.3 s after (the slow requests'
        // answers come later than their send time).
        let from = samples.iter().rev().find(|s| s.at <= offset + start);
        let to = samples.iter().find(|s| s.at >= offset + start + 0.3);
        let cpu = match (from, to) {
            (Some(a), Some(b)) => between(a, b),
            _ if samples.is_empty() => "no samples (--trace)".into(),
            _ => "no samples around it".into(),
        };
        println!("    at {start:5.1} s: {n} requests, max {max:.1} ms, {slow} over 50 ms; {cpu}");
    }
    print_latency_events(rc)
}

//! The webhook load tool. In one run on one machine it starts a private Redis, the simulator,
//! the engine (the release binary, as its own process) and the reference server; activates
//! tenants; then measures
//!   1. closed-loop max throughput of the reference server (the machine's HTTP ceiling),
//!   2. closed-loop max throughput of the engine (every 200 is durable in Redis),
//!   3. open-loop latency of the engine at a third of its max (a fixed offered rate;
//!      latency counted from each request's scheduled send time, so stalls are not hidden),
//!
//! It prints the figures and their ratios.
//!
//!   cargo build --release --bins && target/release/xapi-load [--seconds 10] [--connections 64]
//!
//! With `--wait-replicas N` the engine's Redis gets N replicas and `redis.wait_replicas = N`:
//! every 200 waits until the batch is on them (the cost of a failover-proof acknowledgement).
//!
//! With `--replicas 1,2,3` it measures scale-out instead: for each N, N engine processes share
//! one Redis (a fresh key prefix per round) and the tenants; the load is spread over them.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use xapi_stream::devkit::redis_server::{RedisServer, free_port};
use xapi_stream::devkit::sim::{Sim, SimConfig, sign_webhook};

#[path = "common.rs"]
mod common;
use common::*;

const TENANTS: usize = 16;

/// A signed request: (url, body, signature).
type Req = (Arc<str>, Vec<u8>, String);

struct Target {
    url: Vec<Arc<str>>,
    secrets: Vec<String>,
    orgs: Vec<(String, String, String)>,
    app: String,
}

/// `n` distinct, signed status messages of ~400 bytes, spread over tenants; each sets a new
/// value so every one produces exactly one stream record.
fn requests(t: &Target, n: usize, offset: usize) -> Vec<Req> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (0..n)
        .map(|k| {
            let i = k % t.url.len();
            let (org, dev, ws) = &t.orgs[i];
            let body = serde_json::to_vec(&json!({
                "appId": t.app, "deviceId": dev, "workspaceId": ws, "orgId": org, "timestamp": ts,
                "type": "status", "changes": {"updated": {"RoomAnalytics.PeopleCount.Current": offset + k}, "removed": []},
                "isFullSync": false
            }))
            .expect("json");
            let sig = sign_webhook(&t.secrets[i], &body);
            (t.url[i].clone(), body, sig)
        })
        .collect()
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Closed loop: `connections` workers send back to back for `secs`; returns (ok/s, errors).
async fn closed_loop(reqs: Arc<Vec<Req>>, connections: usize, secs: f64) -> (f64, usize) {
    let http = client(connections);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let err = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (http, reqs, next, ok, err) = (
                http.clone(),
                reqs.clone(),
                next.clone(),
                ok.clone(),
                err.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((url, body, sig)) = reqs.get(k) else {
                        break;
                    };
                    let r = http
                        .post(&**url)
                        .header("X-Spark-Signature", sig)
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => err.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        ok.load(Ordering::Relaxed) as f64 / elapsed,
        err.load(Ordering::Relaxed),
    )
}

/// Open loop at `rate`/s for `secs`: latency from the scheduled send time.
async fn open_loop(reqs: Arc<Vec<Req>>, rate: f64, secs: f64) -> (f64, Vec<f64>, usize) {
    let http = client(512);
    let n = ((rate * secs) as usize).min(reqs.len());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at).await;
        let (http, reqs) = (http.clone(), reqs.clone());
        tasks.push(tokio::spawn(async move {
            let (url, body, sig) = &reqs[k];
            let r = http
                .post(&**url)
                .header("X-Spark-Signature", sig)
                .body(body.clone())
                .send()
                .await;
            let ok = matches!(r, Ok(ref r) if r.status().is_success());
            (ok, at.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        let (ok, ms) = t.await.expect("task");
        if ok {
            lat.push(ms);
        } else {
            errors += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (lat.len() as f64 / elapsed, lat, errors)
}

/// `--replicas 1,2,3`: closed-loop throughput with N engine processes sharing one Redis.
async fn scale_out(list: &str, secs: f64, connections: usize) -> anyhow::Result<()> {
    let counts: Vec<usize> = list
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    anyhow::ensure!(!counts.is_empty(), "--replicas wants a list like 1,2,3");
    println!(
        "xapi-stream scale-out: replicas {counts:?}, {connections} connections, {secs} s each, {TENANTS} tenants"
    );
    let redis = RedisServer::start()?;
    let sim = Sim::start(
        SimConfig {
            orgs: TENANTS,
            devices_per_org: 1,
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let orgs: Vec<(String, String, String)> = sim
        .orgs()
        .iter()
        .map(|o| {
            (
                o.org_id.clone(),
                o.devices[0].device_id.clone(),
                o.devices[0].workspace_id.clone(),
            )
        })
        .collect();
    let ref_port = free_port()?;
    let mut reference = std::process::Command::new(exe("reference-server"))
        .args(["--bind", &format!("127.0.0.1:{ref_port}")])
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let budget = (200_000.0 * secs) as usize;
    let ref_target = Target {
        url: (0..TENANTS)
            .map(|_| Arc::from(format!("http://127.0.0.1:{ref_port}/webhook")))
            .collect(),
        secrets: vec!["reference".to_string(); TENANTS],
        orgs: orgs.clone(),
        app: sim.config().app_id.clone(),
    };
    let (ref_rps, _) = closed_loop(
        Arc::new(requests(&ref_target, budget, 0)),
        connections,
        secs,
    )
    .await;
    println!("reference server     : {ref_rps:>9.0} req/s");
    let _ = reference.kill();
    let _ = reference.wait();
    let http = reqwest::Client::new();
    let mut first = None;
    for (round, &n) in counts.iter().enumerate() {
        // Same encryption key for every replica of a round; a fresh key prefix per round.
        let env =
            xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), &format!("scale{round}"));
        let mut replicas = Vec::new();
        for r in 0..n {
            replicas.push(spawn_engine(&env, &format!("load-r{r}")).await?);
        }
        let bases: Vec<String> = replicas.iter().map(|(_, b)| b.clone()).collect();
        let mut ids = Vec::new();
        for i in 0..TENANTS {
            let r: serde_json::Value = http
                .post(format!("{}/admin/activations", bases[0]))
                .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
                .json(&json!({"jwt": sim.activation_jwt(i)}))
                .send()
                .await?
                .json()
                .await?;
            ids.push(r["tenant_id"].as_str().unwrap_or_default().to_string());
        }
        // Every replica knows every tenant, completed (its webhook secret is the new one).
        let wait = Instant::now();
        for base in &bases {
            loop {
                let list: serde_json::Value = http
                    .get(format!("{base}/admin/tenants"))
                    .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
                    .send()
                    .await?
                    .json()
                    .await?;
                let done = list.as_array().is_some_and(|a| {
                    a.len() == TENANTS && a.iter().all(|t| t["provisioning_state"] == "completed")
                });
                if done {
                    break;
                }
                anyhow::ensure!(
                    wait.elapsed() < Duration::from_secs(30),
                    "{base} does not list every tenant completed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let target = Target {
            // Tenant i is sent to replica i % n: the load spreads evenly over the replicas.
            url: ids
                .iter()
                .enumerate()
                .map(|(i, id)| Arc::from(format!("{}/tenants/{id}/webhook", bases[i % n])))
                .collect(),
            secrets: (0..TENANTS)
                .map(|i| {
                    sim.app_state(i)
                        .webhook
                        .and_then(|w| w.secret)
                        .unwrap_or_default()
                })
                .collect(),
            orgs: orgs.clone(),
            app: sim.config().app_id.clone(),
        };
        let (rps, errors) = closed_loop(
            Arc::new(requests(&target, budget, 1_000_000 * (round + 1))),
            connections,
            secs,
        )
        .await;
        // Redis's own cost per message (apply.lua), for the capacity estimate.
        let redis_cost = {
            let mut c = redis.client().get_connection()?;
            let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c)?;
            let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c)?;
            info.lines()
                .find(|l| l.starts_with("cmdstat_evalsha:"))
                .and_then(|l| {
                    l.split(',')
                        .find_map(|kv| kv.strip_prefix("usec_per_call="))
                })
                .unwrap_or("?")
                .to_string()
        };
        let base_rps = *first.get_or_insert(rps);
        println!(
            "replicas={n}  throughput={rps:>9.0} req/s  errors={errors}  ratio_vs_reference={:.2}  vs_first_round={:.2}  redis_usec_per_message={redis_cost}",
            rps / ref_rps,
            rps / base_rps
        );
        for (mut child, _) in replicas {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    sim.shutdown().await;
    Ok(())
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let secs: f64 = arg("--seconds", 10.0);
    let connections: usize = arg("--connections", 64);
    let replicas: String = arg("--replicas", String::new());
    if !replicas.is_empty() {
        return scale_out(&replicas, secs, connections).await;
    }
    println!(
        "xapi-stream load: {connections} connections, {secs} s per phase, {TENANTS} tenants, ~400-byte signed bodies"
    );
    let redis = RedisServer::start()?;
    let wait_replicas: u32 = arg("--wait-replicas", 0);
    let followers = start_followers(&redis, wait_replicas)?;
    let sim = Sim::start(
        SimConfig {
            orgs: TENANTS,
            devices_per_org: 1,
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let mut env = xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), "load");
    if wait_replicas > 0 {
        println!("every 200 waits for {wait_replicas} Redis replica(s) (redis.wait_replicas)");
        env.push((
            "XAPI_STREAM__REDIS__WAIT_REPLICAS".into(),
            wait_replicas.to_string(),
        ));
    }
    let (mut engine, base) = spawn_engine(&env, "load").await?;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..TENANTS {
        let r: serde_json::Value = http
            .post(format!("{base}/admin/activations"))
            .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
            .json(&json!({"jwt": sim.activation_jwt(i)}))
            .send()
            .await?
            .json()
            .await?;
        ids.push(r["tenant_id"].as_str().unwrap_or_default().to_string());
    }
    while (0..TENANTS).any(|i| sim.app_state(i).webhook.is_none()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orgs = sim.orgs();
    let engine_target = Target {
        url: ids
            .iter()
            .map(|id| Arc::from(format!("{base}/tenants/{id}/webhook")))
            .collect(),
        secrets: (0..TENANTS)
            .map(|i| {
                sim.app_state(i)
                    .webhook
                    .and_then(|w| w.secret)
                    .unwrap_or_default()
            })
            .collect(),
        orgs: orgs
            .iter()
            .map(|o| {
                (
                    o.org_id.clone(),
                    o.devices[0].device_id.clone(),
                    o.devices[0].workspace_id.clone(),
                )
            })
            .collect(),
        app: sim.config().app_id.clone(),
    };
    let ref_port = free_port()?;
    let mut reference = std::process::Command::new(exe("reference-server"))
        .args(["--bind", &format!("127.0.0.1:{ref_port}")])
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ref_target = Target {
        url: (0..TENANTS)
            .map(|_| Arc::from(format!("http://127.0.0.1:{ref_port}/webhook")))
            .collect(),
        ..Target {
            url: vec![],
            secrets: engine_target.secrets.clone(),
            orgs: engine_target.orgs.clone(),
            app: engine_target.app.clone(),
        }
    };
    let budget = (200_000.0 * secs) as usize;
    println!("generating {budget} signed requests per phase…");

    let (ref_rps, ref_err) = closed_loop(
        Arc::new(requests(&ref_target, budget, 0)),
        connections,
        secs,
    )
    .await;
    println!("reference server : {ref_rps:>9.0} req/s  (errors {ref_err})");
    let (eng_rps, eng_err) = closed_loop(
        Arc::new(requests(&engine_target, budget, 1_000_000)),
        connections,
        secs,
    )
    .await;
    println!(
        "engine (to Redis): {eng_rps:>9.0} req/s  (non-2xx {eng_err})  = {:.2}x reference",
        eng_rps / ref_rps
    );
    let rate = (eng_rps / 3.0).max(100.0);
    let (got, lat, errs) = open_loop(
        Arc::new(requests(
            &engine_target,
            (rate * secs) as usize + 1,
            10_000_000,
        )),
        rate,
        secs,
    )
    .await;
    println!(
        "engine open loop at {rate:.0}/s: achieved {got:.0}/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms (non-2xx {errs})",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let entries = metrics
        .lines()
        .find(|l| l.starts_with("xapi_stream_stream_entries_total{stream=\"status\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?");
    println!("status entries written to Redis: {entries}");
    let _ = engine.kill();
    let _ = reference.kill();
    let _ = engine.wait();
    let _ = reference.wait();
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

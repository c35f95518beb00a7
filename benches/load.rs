//! The scale-out load tool: for each N of `--replicas` (default 1,2,3), N engine processes
//! (the release binary) share one Redis (a fresh key prefix per round) and the tenants; signed
//! webhooks are spread over them, closed loop, beside the reference server's ceiling. (The
//! single-engine write-path benchmark is `xapi-bench`.)
//!
//!   cargo build --release --bins && target/release/xapi-load [--replicas 1,2,3] [--seconds 6]
//!
//! With `--tenants N [--idle S]` it measures the cost of many idle tenants instead: one engine
//! (queue ingest, 20-s long-polls) activates N organizations of the simulator, then for S seconds
//! with no message flowing (`--polls http1|reqwest-http1|h2`, default http1) reads the engine's RSS and CPU and Redis's commands and CPU; then
//! kill -9 and a restart under the same replica id, again under a new one (how long until every
//! tenant is polled again), and a SIGTERM (how long until exit, and the exit code).
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
                    let Some(req) = reqs.get(k) else {
                        break;
                    };
                    if send(&http, req).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        err.fetch_add(1, Ordering::Relaxed);
                    }
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
    check_args(
        &[
            "--tenants",
            "--polls",
            "--idle",
            "--seconds",
            "--connections",
            "--replicas",
            "--overview",
        ],
        &[],
        "usage: xapi-load [--replicas 1,2,3] [--seconds 6] [--connections 64]\n       xapi-load --tenants N [--idle 20] [--polls http1|reqwest-http1|h2]\n       xapi-load --tenants N --overview REQUESTS\n(see the top of benches/load.rs)",
    );
    let tenants: usize = arg("--tenants", 0);
    if tenants > 0 {
        let polls: String = arg("--polls", "http1".to_string());
        return idle_scale(tenants, arg("--idle", 20.0), &polls, arg("--overview", 0)).await;
    }
    let secs: f64 = arg("--seconds", 6.0);
    let connections: usize = arg("--connections", 64);
    let replicas: String = arg("--replicas", "1,2,3".to_string());
    scale_out(&replicas, secs, connections).await
}

/// `--overview R`: with the N tenants loaded, signs in to the console and asks for the overview
/// (`GET /console/`) R times one after another, then the first page of the tenant list; prints
/// the latency of each (median, p95, max), as a browser would see it over loopback.
async fn console_overview(base: &str, n: usize, requests: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http
        .post(format!("{base}/console/login"))
        .form(&[("token", xapi_stream::devkit::devenv::ADMIN_TOKEN)])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_string();
    for (path, check) in [
        ("/console/", format!(">{n}</div>")),
        ("/console/tenants", format!("{n} tenant(s)")),
    ] {
        let mut took = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{path}"))
                .header("Cookie", &cookie)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
            let body = r.text().await?;
            took.push(t.elapsed());
            anyhow::ensure!(body.contains(&check), "{path} does not show {n} tenants");
        }
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
        println!(
            "GET {path} with {n} tenants, {requests} requests one after another: median {:.1?}, p95 {:.1?}, max {:.1?}",
            at(0.5),
            at(0.95),
            took[took.len() - 1]
        );
    }
    Ok(())
}

/// Resident memory of a process, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn redis_stat(redis: &RedisServer, section: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut redis.client().get_connection().expect("redis"))
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The busiest commands since the last `CONFIG RESETSTAT`, per second (Lua's inner calls
/// included, as Redis counts them).
fn top_commands(redis: &RedisServer, secs: f64) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.client().get_connection()?)?;
    let mut calls: Vec<(String, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n: f64 = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), n / secs))
        })
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(calls
        .iter()
        .take(8)
        .map(|(n, c)| format!("{n} {c:.0}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Waits until every org of `sim` was polled after `since`; the time that took.
async fn all_polled_after(
    sim: &Sim,
    n: usize,
    since: std::time::Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let missing = (0..n)
            .filter(|&i| sim.last_poll(i).is_none_or(|t| t <= since))
            .count();
        if missing == 0 {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            since.elapsed() < limit,
            "{missing} of {n} tenants not polled within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--tenants N --idle S [--polls http1|reqwest-http1|h2]`: the idle cost of N queue tenants on
/// one engine. Polls go over the lean HTTP/1.1 client (the default, a connection per tenant),
/// reqwest over HTTP/1.1 (a connection per poll with hyper's buffers), or reqwest over HTTP/2
/// (as over HTTPS to a server offering it; `ingest.polls_per_connection` polls per connection).
async fn idle_scale(n: usize, idle_secs: f64, polls: &str, overview: usize) -> anyhow::Result<()> {
    let (protocol, client, h2) = match polls {
        "http1" => ("HTTP/1.1", "http1", false),
        "reqwest-http1" => ("HTTP/1.1", "negotiated", false),
        "h2" => ("HTTP/2", "negotiated", true),
        other => anyhow::bail!("--polls {other}: one of http1, reqwest-http1, h2"),
    };
    let protocol = format!("{protocol} (ingest.poll_client = {client})");
    println!(
        "xapi-stream idle scale: {n} queue tenants, {idle_secs} s idle, polls over {protocol}"
    );
    let redis = RedisServer::start()?;
    let sim = Sim::start(
        SimConfig {
            orgs: n,
            devices_per_org: 1,
            poll_wait: Duration::from_secs(20),
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let mut env = xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), "idle");
    env.push(("XAPI_STREAM__INTEGRATION__INGEST".into(), "queue".into()));
    env.push(("XAPI_STREAM__WEBEX__PLAIN_HTTP2".into(), h2.to_string()));
    env.push(("XAPI_STREAM__INGEST__POLL_CLIENT".into(), client.into()));
    let grace: u64 = 10;
    env.push((
        "XAPI_STREAM__SERVER__SHUTDOWN_GRACE_SECS".into(),
        grace.to_string(),
    ));
    let (mut engine, base) = spawn_engine(&env, "idle-a").await?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let answers = futures::future::join_all(chunk.iter().map(|&i| {
            http.post(format!("{base}/admin/activations"))
                .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
                .json(&json!({"jwt": sim.activation_jwt(i)}))
                .send()
        }))
        .await;
        for a in answers {
            anyhow::ensure!(a?.status().is_success(), "activation refused");
        }
    }
    loop {
        let pending = (0..n)
            .filter(|&i| sim.app_state(i).provisioning_state.as_deref() != Some("completed"))
            .count();
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{pending} activations not completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let activation = started.elapsed();
    println!("activated {n} tenants in {activation:.1?}");
    all_polled_after(&sim, n, started, Duration::from_secs(120)).await?;
    if overview > 0 {
        let res = console_overview(&base, n, overview).await;
        let _ = engine.kill();
        let _ = engine.wait();
        return res;
    }
    // Settle (first inventory syncs, first refresh schedules), then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = engine.id();
    let rpid = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut redis.client().get_connection()?)?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let (e0, r0) = (cpu_time(pid), cpu_time(rpid));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis.client().get_connection()?)?;
    let c0 = redis_stat(&redis, "stats", "total_commands_processed");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let secs = t0.elapsed().as_secs_f64();
    let engine_cpu = cpu_time(pid).saturating_sub(e0).as_secs_f64() / secs * 100.0;
    let redis_cpu = cpu_time(rpid).saturating_sub(r0).as_secs_f64() / secs * 100.0;
    let ops = (redis_stat(&redis, "stats", "total_commands_processed") - c0) / secs;
    let rss = rss_bytes(pid);
    let top = top_commands(&redis, secs)?;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let owned = metric(&metrics, "xapi_stream_tenants_owned");
    println!(
        "idle: engine RSS {:.0} MB ({:.1} KB per tenant), engine CPU {engine_cpu:.1} % of a core, Redis {ops:.0} ops/s, Redis CPU {redis_cpu:.1} %, tenants owned {owned}",
        rss as f64 / 1e6,
        rss as f64 / 1024.0 / n as f64
    );
    println!("Redis commands per second while idle: {top}");
    // kill -9, restart under the same replica id: how long until every tenant is polled again.
    let _ = engine.kill();
    let _ = engine.wait();
    let restarted = Instant::now();
    let (e2, _) = spawn_engine(&env, "idle-a").await?;
    let same = all_polled_after(&sim, n, restarted, Duration::from_secs(180)).await?;
    println!(
        "kill -9 + restart as the same replica id: every tenant polled again after {same:.1?}"
    );
    // … and under a new replica id (a plain process gets $HOSTNAME-<pid>).
    let mut e2 = e2;
    let _ = e2.kill();
    let _ = e2.wait();
    let restarted = Instant::now();
    let (mut e3, _) = spawn_engine(&env, "idle-b").await?;
    let new = all_polled_after(&sim, n, restarted, Duration::from_secs(180)).await?;
    println!("kill -9 + restart as a new replica id: every tenant polled again after {new:.1?}");
    // SIGTERM: time to exit and the status.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let termed = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &e3.id().to_string()])
        .status();
    let status = e3.wait()?;
    println!(
        "SIGTERM: exited {:?} after {:.1?} (grace {grace} s)",
        status.code(),
        termed.elapsed()
    );
    sim.shutdown().await;
    Ok(())
}

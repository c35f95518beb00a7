//! A real Prometheus (Debian's `prometheus` package) scrapes a running engine under simulator
//! traffic; every PromQL expression of the Grafana dashboard must run, and every panel must draw
//! live data: each target's expr is run through `/api/v1/query_range` over the test's window and
//! every panel is rendered to a PNG (target/panels/, by tests/it/plot_panels.py with matplotlib
//! from `make plot-deps`). The traffic is made to exercise every panel: besides the simulator's
//! webhooks and queue, bad and stale webhooks, rejected JWTs, device requests over HTTP and the
//! command stream, inventory syncs (one tenant's listing fails, so its inventory actor restarts),
//! short-lived access tokens (refreshes), consumer groups behind (lag), leases acquired while
//! Prometheus watches, a transport switch, and Redis paused until ingest refuses (backpressure).
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::{Sim, SimConfig, WebhookReg, sign_webhook};

use crate::utils::*;

/// A Prometheus server killed on drop.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let port = xapi_stream::devkit::redis_server::free_port().unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yaml");
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: xapi-stream\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (make deps installs Debian's prometheus package)");
    Prometheus {
        child,
        dir,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The dashboard's `[5m]` rate windows hold 20 scrapes at the deployment's 15 s interval
/// (deploy/k8s ServiceMonitor); at this test's 1 s interval the same 20 scrapes are 20 s.
const RATE_WINDOW: &str = "20s";
/// Resolution of the range queries (Grafana's `$__interval` for this window and width).
const STEP_SECS: u64 = 1;

/// `expr` with Grafana's variables replaced by the values this test's window gives them. Any
/// `$` left afterwards is a variable the test does not know: it fails rather than guess.
fn concrete(expr: &str, window_secs: u64) -> String {
    let q = expr
        .replace("$__rate_interval", RATE_WINDOW)
        .replace("${__rate_interval}", RATE_WINDOW)
        .replace("$__interval", &format!("{STEP_SECS}s"))
        .replace("${__interval}", &format!("{STEP_SECS}s"))
        .replace("$__range", &format!("{window_secs}s"))
        .replace("${__range}", &format!("{window_secs}s"))
        .replace("[5m]", &format!("[{RATE_WINDOW}]"));
    assert!(
        !q.contains('$'),
        "a dashboard expr uses a variable this test does not replace: {expr}"
    );
    q
}

/// Seconds since the epoch.
fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One query of the instant API: its `data.result`, or None when Prometheus is not answering.
async fn instant(http: &reqwest::Client, prom: &str, q: &str) -> Option<Value> {
    let r: Value = http
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(r["data"]["result"].clone())
}

/// The first sample's value of an instant query, if any.
async fn instant_value(http: &reqwest::Client, prom: &str, q: &str) -> Option<f64> {
    instant(http, prom, q).await.and_then(|r| {
        r[0]["value"][1]
            .as_str()
            .and_then(|n| n.parse::<f64>().ok())
    })
}

/// `query_range` of `q` over [start, end]: its `data.result` (panics when the query fails).
async fn query_range(
    http: &reqwest::Client,
    prom: &str,
    expr: &str,
    q: &str,
    start: f64,
    end: f64,
) -> Value {
    let r: Value = http
        .get(format!("{prom}/api/v1/query_range"))
        .query(&[
            ("query", q.to_string()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", format!("{STEP_SECS}s")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["status"], "success",
        "query does not parse or fails: {expr} (run as {q}): {r}"
    );
    r["data"]["result"].clone()
}

/// What a target's answer holds: series, finite points, finite points other than 0.
fn points(result: &Value) -> (usize, usize, usize) {
    let series = result.as_array().map_or(0, Vec::len);
    let values = result
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p[1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .filter(|v| v.is_finite());
    let (mut finite, mut nonzero) = (0, 0);
    for v in values {
        finite += 1;
        if v != 0.0 {
            nonzero += 1;
        }
    }
    (series, finite, nonzero)
}

/// Every panel of the dashboard (rows' children too) with its targets' answers over
/// [start, end], in the shape tests/it/plot_panels.py reads.
async fn panels_over(
    http: &reqwest::Client,
    prom: &str,
    dashboard: &Value,
    start: f64,
    end: f64,
) -> Vec<Value> {
    let mut panels: Vec<&Value> = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let window = (end - start).ceil() as u64;
    let mut out = Vec::new();
    for p in panels.into_iter().filter(|p| p["type"] != "row") {
        let mut targets = Vec::new();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            let q = concrete(expr, window);
            let result = query_range(http, prom, expr, &q, start, end).await;
            targets.push(json!({
                "refId": t["refId"], "expr": expr, "query": q,
                "legendFormat": t["legendFormat"].as_str().unwrap_or(""), "result": result,
            }));
        }
        // Series on the right axis (fieldConfig overrides byRegexp/byName → axisPlacement).
        let overrides: Vec<Value> = p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                let side = o["properties"]
                    .as_array()?
                    .iter()
                    .find(|pr| pr["id"] == "custom.axisPlacement")?["value"]
                    .clone();
                let pattern = match o["matcher"]["id"].as_str()? {
                    "byRegexp" => o["matcher"]["options"].as_str()?.to_string(),
                    "byName" => regex_escape(o["matcher"]["options"].as_str()?),
                    _ => return None,
                };
                Some(json!([pattern, side]))
            })
            .collect();
        out.push(json!({
            "id": p["id"], "title": p["title"], "type": p["type"],
            "description": p["description"], "gridPos": p["gridPos"],
            "unit": p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("short"),
            "mappings": p["fieldConfig"]["defaults"]["mappings"].as_array().cloned().unwrap_or_default(),
            "overrides": overrides, "targets": targets,
        }));
    }
    out
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if r"\.^$|?*+()[]{}".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The panels none of whose targets drew a finite value other than 0, each with why.
fn without_live_data(panels: &[Value]) -> Vec<String> {
    panels
        .iter()
        .filter_map(|p| {
            let per_target: Vec<(String, (usize, usize, usize))> = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["expr"].as_str().unwrap().to_string(),
                        points(&t["result"]),
                    )
                })
                .collect();
            if per_target.iter().any(|(_, (_, _, nonzero))| *nonzero > 0) {
                return None;
            }
            let why: Vec<String> = per_target
                .iter()
                .map(|(e, (series, finite, _))| match (series, finite) {
                    (0, _) => format!("{e}: no series"),
                    (_, 0) => format!("{e}: {series} series, no finite point (NaN only)"),
                    _ => format!("{e}: {series} series, every point 0"),
                })
                .collect();
            Some(format!(
                "panel {:?}: {}",
                p["title"].as_str().unwrap(),
                why.join("; ")
            ))
        })
        .collect()
}

/// Where this test's pictures go: `<target dir>/panels`.
fn panels_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    target.join("panels")
}

/// Draws `panels` with tests/it/plot_panels.py: one PNG per panel plus the grid pictures.
fn render(panels: &[Value], title: &str, start: f64, end: f64) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let deps = root.join("target/plot-deps/python");
    assert!(
        deps.join("matplotlib").exists(),
        "{} has no matplotlib: run `make plot-deps` (make test does)",
        deps.display()
    );
    let dir = panels_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("panels.json");
    let doc =
        json!({"title": title, "start": start, "end": end, "step": STEP_SECS, "panels": panels});
    std::fs::write(&input, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(root.join("tests/it/plot_panels.py"))
        .arg(&input)
        .arg(&dir)
        .env("PYTHONPATH", &deps)
        .env("MPLCONFIGDIR", dir.join(".matplotlib"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "plot_panels.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for p in panels {
        let png = dir.join(format!("panel-{:02}.png", p["id"].as_u64().unwrap()));
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "no picture of panel {}: {}",
            p["title"],
            png.display()
        );
    }
    dir
}

/// What the background driver needs to exercise the panels the simulator's traffic leaves at 0.
struct Driver {
    sim: Sim,
    base: String,
    prefix: String,
    redis: redis::Client,
    tenants: Vec<String>,
    hooks: Vec<WebhookReg>,
    /// Set while Redis is paused: skip what would only wait on it.
    redis_paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Driver {
    /// Every 250 ms until stopped (each step bounded by timeouts): webhooks that are refused
    /// (bad signature, stale, unknown tenant, malformed), JWTs that are rejected (malformed,
    /// expired), device requests over the admin API (granted and refused) and the command
    /// stream, renamed devices (inventory changes), a 503 now and then from the device API,
    /// and consumer groups that read without acknowledging (pending).
    async fn run(self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut conn = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut n: usize = 0;
        while !self.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let i = n % self.tenants.len();
            let org = self.sim.org(i);
            // Webhooks: accepted ones come from the simulator's traffic (and, as ingest is
            // "both", duplicates: each message also arrives by queue).
            let msg = self.sim.generate(i, 1).remove(0);
            let wrong = WebhookReg {
                secret: Some("not-the-secret".into()),
                ..self.hooks[i].clone()
            };
            self.sim.post_webhook(&wrong, &msg).await;
            let mut stale = msg.clone();
            stale["timestamp"] = json!("2020-01-01T00:00:00.000Z");
            self.sim.post_webhook(&self.hooks[i], &stale).await;
            let secret = self.hooks[i].secret.clone().unwrap_or_default();
            let body = b"{\"not\": json".to_vec();
            let _ = http
                .post(&self.hooks[i].target_url)
                .header("X-Spark-Signature", sign_webhook(&secret, &body))
                .body(body)
                .send()
                .await;
            let _ = http
                .post(format!("{}/tenants/{}/webhook", self.base, uuid_like(n)))
                .header("X-Spark-Signature", "00")
                .body(serde_json::to_vec(&msg).unwrap())
                .send()
                .await;
            // JWTs: malformed and (one in four) expired activations.
            let jwt = if n % 4 != 1 {
                "garbage".to_string()
            } else {
                let mut c = self.sim.activation_claims(i);
                c["expiryTime"] = json!("2023-08-10T08:02:33.816114574Z");
                self.sim.sign_claims(&c, None)
            };
            let _ = http
                .post(format!("{}/admin/activations", self.base))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "jwt": jwt }))
                .send()
                .await;
            if n.is_multiple_of(4) {
                self.sim
                    .rename_device(2, (n / 4) % org.devices.len(), &format!("Room {n}"));
            }
            if n.is_multiple_of(20) {
                self.sim.fail_api_next(1, 1, 503);
            }
            if self.redis_paused.load(Ordering::Relaxed) {
                continue;
            }
            // Device requests of org 1 over HTTP: a status query, and a command outside the
            // grants (refused, never sent).
            let dev = &self.sim.org(1).devices[n % 4].device_id;
            let root = format!(
                "{}/admin/tenants/{}/devices/{}",
                self.base,
                self.tenants[1],
                url::form_urlencoded::byte_serialize(dev.as_bytes()).collect::<String>()
            );
            if n.is_multiple_of(2) {
                let _ = http
                    .get(format!("{root}/status?name=Standby.State"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await;
            } else {
                let _ = http
                    .post(format!("{root}/commands/SystemUnit.Boot"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await;
            }
            // Redis: the command stream (a granted and a refused command) and the consumer
            // groups reading without acknowledging.
            if conn.is_none() {
                conn = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.redis.get_multiplexed_async_connection(),
                )
                .await
                .ok()
                .and_then(Result::ok);
            }
            let Some(c) = conn.as_mut() else { continue };
            let one = self.sim.org(1);
            let commands = format!("{}:{{{}}}:commands", self.prefix, one.org_id);
            let name = if n.is_multiple_of(3) {
                "SystemUnit.Boot"
            } else {
                "Message.Send"
            };
            let mut pipe = redis::pipe();
            pipe.cmd("XADD")
                .arg(&commands)
                .arg("*")
                .arg("id")
                .arg(format!("req-{n}"))
                .arg("device")
                .arg(&one.devices[0].device_id)
                .arg("name")
                .arg(name)
                .arg("arguments")
                .arg(r#"{"Text": "Hello", "Duration": 5}"#)
                .ignore();
            for (stream, group) in [
                (
                    format!("{}:{{{}}}:status", self.prefix, org.org_id),
                    "warehouse",
                ),
                (
                    format!("{}:{{all-{}}}:status", self.prefix, n % 2),
                    "analytics",
                ),
            ] {
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg("reader")
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">")
                    .ignore();
            }
            let sent =
                tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(c)).await;
            if !matches!(sent, Ok(Ok(()))) {
                conn = None;
            }
        }
    }
}

/// A tenant id no tenant has.
fn uuid_like(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

#[actix_web::test]
async fn a_real_prometheus_scrapes_the_engine_and_dashboard_queries_work() {
    // A Redis of its own: it is paused below.
    let TestEnv { redis, prefix, sim } = TestEnv::own(SimConfig {
        orgs: 3,
        poll_wait: Duration::from_secs(1),
        // Refreshed every few seconds: token refreshes and the expiry horizon move.
        access_token_ttl: Duration::from_secs(10),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("INTEGRATION__INGEST", "both"),
            ("DEVICES__INVENTORY_INTERVAL_SECS", "2"),
            // Two pages per listing, so org 0's can point at another host (below).
            ("DEVICES__PAGE_SIZE", "2"),
            ("STREAMS__FIREHOSE", "true"),
            ("STREAMS__SHARDS", "2"),
            ("STREAMS__LAG_GROUPS", "warehouse"),
            ("STREAMS__LAG_SAMPLE_SECS", "1"),
        ],
    )
    .await;
    let base = engine.base_url();
    let http = reqwest::Client::new();

    // Consumer groups nobody serves yet (consumer lag): "warehouse" on each organization's
    // streams (streams.lag_groups), "analytics" on the firehose's shards.
    {
        let mut conn = redis.client().get_connection().unwrap();
        let mut streams: Vec<(String, &str)> = Vec::new();
        for i in 0..3 {
            for kind in ["status", "events"] {
                let org = sim.org(i).org_id;
                streams.push((format!("{prefix}:{{{org}}}:{kind}"), "warehouse"));
            }
        }
        for shard in 0..2 {
            for kind in ["status", "events"] {
                streams.push((format!("{prefix}:{{all-{shard}}}:{kind}"), "analytics"));
            }
        }
        for (s, group) in streams {
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(s)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query(&mut conn)
                .unwrap();
        }
    }
    // Org 0's device listings point their second page at another host: its inventory syncs
    // fail (not followed), and the inventory actor is restarted with backoff.
    sim.set_next_link_base(0, Some("http://127.0.0.1:9"));

    let prom = start_prometheus(&engine.addr().to_string());
    assert!(
        eventually(Duration::from_secs(20), || async {
            http.get(format!("{}/-/ready", prom.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await,
        "prometheus did not start"
    );
    // The window of the range queries and pictures starts with Prometheus's first scrapes.
    let start = now_unix().floor();
    // The idle engine's counters (0) are on record before anything happens, so the first
    // leases, activations and token exchanges show as increases.
    assert!(
        eventually(Duration::from_secs(60), || async {
            instant_value(&http, &prom.url, "count_over_time(up[1m])")
                .await
                .is_some_and(|n| n >= 3.0)
        })
        .await,
        "prometheus did not scrape the engine 3 times"
    );

    let mut tenants = Vec::new();
    for i in 0..3 {
        tenants.push(activate_org(&sim, &base, i).await);
    }
    let hooks: Vec<WebhookReg> = (0..3)
        .map(|i| sim.app_state(i).webhook.expect("a registered webhook"))
        .collect();
    sim.start_traffic(150.0);
    // A transport switch (both → webhook: the queue goes at once) for its panel.
    let switched = reqwest::Client::new()
        .patch(format!("{base}/admin/tenants/{}", tenants[2]))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "ingest": "webhook" }))
        .send()
        .await
        .unwrap();
    assert_eq!(switched.status().as_u16(), 202);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let t = admin_tenant(&base, &tenants[2]).await;
            t["ingest"] == "webhook" && t["transport_switch"].is_null()
        })
        .await,
        "the switch did not complete: {}",
        admin_tenant(&base, &tenants[2]).await
    );
    let redis_paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = actix_web::rt::spawn(
        Driver {
            sim: sim.clone(),
            base: base.clone(),
            prefix: prefix.clone(),
            redis: redis.client(),
            tenants: tenants.clone(),
            hooks,
            redis_paused: redis_paused.clone(),
            stop: stop.clone(),
        }
        .run(),
    );

    // Backpressure: once messages flow, Redis stops answering until ingest refuses one (a
    // write past its deadline, or the queue full); then it answers again and the engine is
    // ready again by itself.
    assert!(
        eventually(Duration::from_secs(30), || async {
            scrape(
                &base,
                "xapi_stream_messages_total{source=\"webhook\",type=\"status\"}",
            )
            .await
                > 0.0
                && scrape(
                    &base,
                    "xapi_stream_messages_total{source=\"queue\",type=\"status\"}",
                )
                .await
                    > 0.0
        })
        .await,
        "no message arrived by webhook and by queue"
    );
    redis_paused.store(true, Ordering::Relaxed);
    redis.pause();
    let refused = eventually(Duration::from_secs(60), || async {
        scrape(&base, "xapi_stream_backpressure_rejections_total").await > 0.0
    })
    .await;
    redis.resume();
    redis_paused.store(false, Ordering::Relaxed);
    assert!(refused, "ingest never refused while Redis was paused");
    wait_ready(&engine.admin_url(), Duration::from_secs(30)).await;

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/xapi-stream.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    // Every panel draws live data: some target of it has a finite value other than 0 in the
    // window. Polled (Prometheus scrapes every second; rates need a few scrapes), bounded; and
    // the window holds at least MIN_SCRAPES scrapes, so the pictures show the traffic settle
    // after the Redis pause rather than its first seconds.
    const MIN_SCRAPES: f64 = 45.0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (panels, end) = loop {
        let end = now_unix();
        let panels = panels_over(&http, &prom.url, &dashboard, start, end).await;
        let empty = without_live_data(&panels);
        let scrapes = instant_value(&http, &prom.url, "count_over_time(up[10m])")
            .await
            .unwrap_or(0.0);
        if empty.is_empty() && scrapes >= MIN_SCRAPES {
            break (panels, end);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} panels draw no live data after the traffic ({scrapes} scrapes):\n{}",
            empty.len(),
            panels.len(),
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    assert!(panels.len() >= 8, "dashboard has {} panels", panels.len());
    for p in &panels {
        let stats: Vec<String> = p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let (s, f, nz) = points(&t["result"]);
                format!(
                    "{}: {s} series, {f} points, {nz} non-zero",
                    t["refId"].as_str().unwrap()
                )
            })
            .collect();
        eprintln!(
            "panel {:>2} {:<55} {}",
            p["id"],
            p["title"].as_str().unwrap(),
            stats.join("; ")
        );
    }
    let dir = render(
        &panels,
        dashboard["title"].as_str().unwrap_or("dashboard"),
        start,
        end,
    );
    eprintln!(
        "{} panels drawn from {:.0} s of live data: {}",
        panels.len(),
        end - start,
        dir.display()
    );

    // The alert rules were loaded from deploy/prometheus/alerts.yaml and evaluate cleanly.
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prom.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(all.len() >= 6, "alert rules loaded: {}", all.len());
    for r in &all {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate: {}",
            r["name"], r["lastError"]
        );
    }
    // promtool's linter on a live scrape (naming, help, types).
    let scrape = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

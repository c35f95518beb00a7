//! A real Prometheus (Debian's `prometheus` package) scrapes a running engine under simulator
//! traffic; every PromQL expression of the Grafana dashboard must parse and the main panels
//! must return data.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use xapi_stream::devkit::sim::SimConfig;

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

/// Every `expr` of every panel target in a Grafana dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut out);
    out
}

#[actix_web::test]
async fn a_real_prometheus_scrapes_the_engine_and_dashboard_queries_work() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 3,
        poll_wait: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("INTEGRATION__INGEST", "both")],
    )
    .await;
    let base = engine.base_url();
    for i in 0..3 {
        activate_org(&sim, &base, i).await;
    }
    sim.start_traffic(150.0);
    let prom = start_prometheus(&engine.addr().to_string());
    let http = reqwest::Client::new();
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
    // Enough scrapes for rate() windows: wait until Prometheus holds 8 samples of the target
    // (scrape interval 1 s), however long that takes on a busy machine.
    assert!(
        eventually(Duration::from_secs(60), || async {
            let r: Option<Value> = match http
                .get(format!("{}/api/v1/query", prom.url))
                .query(&[("query", "count_over_time(up[1m])")])
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            r.and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .is_some_and(|n| n >= 8.0)
        })
        .await,
        "prometheus did not scrape the engine 8 times"
    );

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/xapi-stream.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 8, "dashboard has {} queries", exprs.len());
    let mut with_data = Vec::new();
    for expr in &exprs {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
            .replace("[5m]", "[1m]");
        let r: Value = http
            .get(format!("{}/api/v1/query", prom.url))
            .query(&[("query", q.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            r["status"], "success",
            "query does not parse or fails: {expr}: {r}"
        );
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            with_data.push(expr.clone());
        }
    }
    for main in [
        "xapi_stream_messages_total",
        "xapi_stream_webhooks_total",
        "xapi_stream_redis_write_seconds_bucket",
        "xapi_stream_tenants",
    ] {
        assert!(
            with_data.iter().any(|e| e.contains(main)),
            "no dashboard panel on {main} returned data; with data: {with_data:#?}"
        );
    }
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

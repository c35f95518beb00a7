//! Graceful drain of the real binary: SIGTERM while webhooks and queue messages flow.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xapi_stream::devkit::sim::{SimConfig, sign_webhook};

use crate::utils::*;

fn event(sim: &xapi_stream::devkit::sim::Sim, i: usize, tag: &str, n: usize) -> Value {
    let org = sim.org(i);
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id, "workspaceId": org.devices[0].workspace_id,
        "orgId": org.org_id, "timestamp": ts, "type": "events",
        "events": [{"key": "Test.Drain", "value": {tag: n}, "timestamp": ts}]})
}

#[actix_web::test]
async fn sigterm_under_load_loses_nothing_accepted_and_exits_zero_within_grace() {
    const TENANTS: usize = 4;
    const N: usize = 6000;
    const QUEUED: usize = 200;
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        poll_wait: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let env = xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), &prefix);
    let base = env
        .iter()
        .find(|(k, _)| k.ends_with("SERVER__PUBLIC_URL"))
        .map(|(_, v)| v.clone())
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_xapi-stream"))
        .arg("serve")
        .envs(env)
        .env("XAPI_STREAM__INTEGRATION__INGEST", "both")
        .env("XAPI_STREAM__SERVER__SHUTDOWN_GRACE_SECS", "10")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&base, Duration::from_secs(15)).await;
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        let id = activate_org(&sim, &base, i).await;
        tenants.push((id, sim.app_state(i).webhook.unwrap().secret.unwrap()));
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::with_capacity(N);
    let mut sigterm_at = None;
    for n in 0..N {
        let i = n % TENANTS;
        if n == N / 4 {
            // Queue traffic too: these must end up written or still queued.
            for k in 0..QUEUED {
                sim.enqueue(k % TENANTS, event(&sim, k % TENANTS, "q", k));
            }
            let pid = child.id().unwrap();
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            sigterm_at = Some(Instant::now());
        }
        let body = serde_json::to_vec(&event(&sim, i, "w", n)).unwrap();
        let (id, secret) = tenants[i].clone();
        let (http, sem, base) = (http.clone(), sem.clone(), base.clone());
        let permit = sem.acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/tenants/{id}/webhook"))
                .header("X-Spark-Signature", sign_webhook(&secret, &body))
                .body(body)
                .send()
                .await;
            drop(permit);
            (n, r.map(|r| r.status().as_u16()).unwrap_or(0))
        }));
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exited")
        .unwrap();
    let took = sigterm_at.unwrap().elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(12),
        "drain took {took:?} (grace 10 s)"
    );
    let mut answers: HashMap<usize, u16> = HashMap::new();
    for t in tasks {
        let (n, s) = t.await.unwrap();
        answers.insert(n, s);
    }
    let ok = answers.values().filter(|s| **s == 200).count();
    assert!(ok >= N / 4 - 64, "accepted before the drain: {ok}");

    let mut webhook_seen: HashMap<usize, usize> = HashMap::new();
    let mut queue_seen: HashMap<usize, usize> = HashMap::new();
    let mut conn = redis.client().get_connection().unwrap();
    for i in 0..TENANTS {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{prefix}:{{{}}}:events", sim.org(i).org_id))
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        for e in r.ids {
            let v: Value = serde_json::from_str(&e.get::<String>("value").unwrap()).unwrap();
            if let Some(n) = v["w"].as_u64() {
                *webhook_seen.entry(n as usize).or_default() += 1;
            }
            if let Some(k) = v["q"].as_u64() {
                *queue_seen.entry(k as usize).or_default() += 1;
            }
        }
    }
    for (n, s) in &answers {
        let c = webhook_seen.get(n).copied().unwrap_or(0);
        assert!(c <= 1, "webhook {n} written {c} times");
        if *s == 200 {
            assert_eq!(c, 1, "webhook {n} answered 200 but missing from Redis");
        }
    }
    assert!(
        queue_seen.values().all(|c| *c == 1),
        "a queue message was written twice"
    );
    let still_queued: usize = (0..TENANTS).map(|i| sim.queue_len(i)).sum();
    assert_eq!(
        queue_seen.len() + still_queued,
        QUEUED,
        "queue messages lost: {} written, {still_queued} still queued",
        queue_seen.len()
    );
    sim.shutdown().await;
}

//! Ingest: webhooks and queue polls into Redis streams, exactly as the contract says; reject
//! paths; faults of Redis under load.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamRangeReply;
use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::{Sim, SimConfig, sign_webhook};

use crate::utils::*;

/// Activates org `i`; returns (tenant id, webhook secret) once completed.
async fn activate(sim: &Sim, base: &str, i: usize) -> (String, String) {
    let id = activate_org(sim, base, i).await;
    let secret = sim
        .app_state(i)
        .webhook
        .and_then(|w| w.secret)
        .unwrap_or_default();
    (id, secret)
}

/// A fresh engine with org 0 activated, and that org's first device.
struct OneTenant {
    env: TestEnv,
    engine: xapi_stream::engine::RunningEngine,
    base: String,
    tenant: String,
    secret: String,
    org: xapi_stream::devkit::sim::OrgInfo,
    dev: String,
    ws: String,
}

impl OneTenant {
    async fn start() -> Self {
        let env = TestEnv::start(SimConfig::default()).await;
        let engine = start_engine(&env.sim, &env.redis.url(), &env.prefix, &[]).await;
        let base = engine.base_url();
        let (tenant, secret) = activate(&env.sim, &base, 0).await;
        let org = env.sim.org(0);
        let (dev, ws) = (
            org.devices[0].device_id.clone(),
            org.devices[0].workspace_id.clone(),
        );
        Self {
            env,
            engine,
            base,
            tenant,
            secret,
            org,
            dev,
            ws,
        }
    }
}

async fn post(base: &str, tenant: &str, secret: &str, body: &[u8]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/tenants/{tenant}/webhook"))
        .header("X-Spark-Signature", sign_webhook(secret, body))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub fn entries(
    redis: &xapi_stream::devkit::redis_server::RedisServer,
    key: &str,
) -> Vec<HashMap<String, String>> {
    let mut conn = redis.client().get_connection().unwrap();
    let r: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    r.ids
        .into_iter()
        .map(|e| {
            e.map
                .keys()
                .map(|k| (k.clone(), e.get::<String>(k).unwrap()))
                .collect()
        })
        .collect()
}

/// The field names of each entry of a stream, in the order Redis keeps them.
pub fn field_order(
    redis: &xapi_stream::devkit::redis_server::RedisServer,
    key: &str,
) -> Vec<Vec<String>> {
    let mut conn = redis.client().get_connection().unwrap();
    let r: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    r.into_iter()
        .map(|(_, flat)| flat.into_iter().step_by(2).collect())
        .collect()
}

/// Entry schema 2 (contract §3): every status entry has these fields, in this order.
pub const STATUS_FIELDS: [&str; 10] = [
    "workspace",
    "device",
    "key",
    "op",
    "value",
    "prev",
    "ts",
    "full_sync",
    "source",
    "schema",
];
/// ... and every events entry these.
pub const EVENT_FIELDS: [&str; 8] = [
    "workspace",
    "device",
    "key",
    "value",
    "ts",
    "msg_ts",
    "source",
    "schema",
];

fn now_ts(offset_ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(offset_ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn webhooks(base: &str, result: &str) -> f64 {
    scrape(
        base,
        &format!("xapi_stream_webhooks_total{{result=\"{result}\"}}"),
    )
    .await
}

#[actix_web::test]
async fn seed_payloads_become_exactly_the_contract_records() {
    let OneTenant {
        env: TestEnv {
            redis,
            prefix: p,
            sim,
        },
        engine,
        base,
        tenant,
        secret,
        org,
        dev,
        ws,
    } = OneTenant::start().await;
    let app = sim.config().app_id.clone();
    let status_key = format!("{p}:{{{}}}:status", org.org_id);
    let events_key = format!("{p}:{{{}}}:events", org.org_id);
    let state_key = format!("{p}:{{{}}}:state:{dev}", org.org_id);

    // The seed's example webhook, for our org and device.
    let t1 = now_ts(-3000);
    let seed = json!({
      "appId": app, "deviceId": dev, "workspaceId": ws, "orgId": org.org_id, "timestamp": t1,
      "type": "status",
      "changes": { "updated": { "Standby.State": "Halfwake", "RoomAnalytics.PeopleCount.Current": 2 },
                   "removed": [ "Audio.Microphones.Mute" ] },
      "isFullSync": false
    });
    let body = serde_json::to_vec(&seed).unwrap();
    assert_eq!(post(&base, &tenant, &secret, &body).await.0, 200);
    // Entry schema 2: no `org` (the key names it) nor `app`; `value` and `prev` empty when
    // absent (here: a removal, and keys whose previous value is unknown).
    let common = |key: &str, op: &str, value: &str| {
        fields(&[
            ("workspace", &ws),
            ("device", &dev),
            ("key", key),
            ("op", op),
            ("value", value),
            ("prev", ""),
            ("ts", &t1),
            ("full_sync", "0"),
            ("source", "webhook"),
            ("schema", "2"),
        ])
    };
    let people = common("RoomAnalytics.PeopleCount.Current", "set", "2");
    let standby = common("Standby.State", "set", "\"Halfwake\"");
    let mute = common("Audio.Microphones.Mute", "remove", "");
    let got = entries(redis, &status_key);
    assert_eq!(got.len(), 3, "{got:#?}");
    for want in [&people, &standby, &mute] {
        assert!(got.contains(want), "missing {want:#?} in {got:#?}");
    }
    let mut conn = redis.client().get_connection().unwrap();
    let state: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&state_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        state,
        fields(&[
            ("Standby.State", "\"Halfwake\""),
            ("RoomAnalytics.PeopleCount.Current", "2")
        ])
    );

    // Delivered again (a webhook retry): 200, counted duplicate, nothing written.
    let dup_before = webhooks(&base, "duplicate").await;
    assert_eq!(post(&base, &tenant, &secret, &body).await.0, 200);
    assert_eq!(webhooks(&base, "duplicate").await, dup_before + 1.0);
    assert_eq!(entries(redis, &status_key).len(), 3);

    // A change of one key carries prev; an unchanged key writes nothing.
    let t2 = now_ts(-2000);
    let change = json!({"appId": app, "deviceId": dev, "workspaceId": ws, "orgId": org.org_id, "timestamp": t2,
        "type": "status", "changes": {"updated": {"Standby.State": "Standby", "RoomAnalytics.PeopleCount.Current": 2}}, "isFullSync": false});
    assert_eq!(
        post(
            &base,
            &tenant,
            &secret,
            &serde_json::to_vec(&change).unwrap()
        )
        .await
        .0,
        200
    );
    let got = entries(redis, &status_key);
    assert_eq!(got.len(), 4);
    assert_eq!(got[3]["key"], "Standby.State");
    assert_eq!(got[3]["value"], "\"Standby\"");
    assert_eq!(got[3]["prev"], "\"Halfwake\"");

    // A stale message (older than what was applied) does not overwrite.
    let stale = json!({"appId": app, "deviceId": dev, "workspaceId": ws, "orgId": org.org_id, "timestamp": now_ts(-2500),
        "type": "status", "changes": {"updated": {"Standby.State": "Off"}}, "isFullSync": false});
    assert_eq!(
        post(
            &base,
            &tenant,
            &secret,
            &serde_json::to_vec(&stale).unwrap()
        )
        .await
        .0,
        200
    );
    assert_eq!(entries(redis, &status_key).len(), 4);

    // Full sync: Standby unchanged, a new key set, PeopleCount no longer listed → removed.
    let t3 = now_ts(-1000);
    let full = json!({"appId": app, "deviceId": dev, "workspaceId": ws, "orgId": org.org_id, "timestamp": t3,
        "type": "status", "changes": {"updated": {"Standby.State": "Standby", "RoomAnalytics.PeoplePresence": "No"}, "removed": []}, "isFullSync": true});
    assert_eq!(
        post(&base, &tenant, &secret, &serde_json::to_vec(&full).unwrap())
            .await
            .0,
        200
    );
    let got = entries(redis, &status_key);
    assert_eq!(got.len(), 6, "{got:#?}");
    let new: Vec<(&str, &str)> = got[4..]
        .iter()
        .map(|e| (e["key"].as_str(), e["op"].as_str()))
        .collect();
    assert!(new.contains(&("RoomAnalytics.PeoplePresence", "set")));
    assert!(new.contains(&("RoomAnalytics.PeopleCount.Current", "remove")));
    let removal = got[4..].iter().find(|e| e["op"] == "remove").unwrap();
    assert_eq!(removal["prev"], "2");
    assert_eq!(removal["value"], "");
    assert!(got[4..].iter().all(|e| e["full_sync"] == "1"));
    // Every status entry, whatever it carries, has the same fields in the same order.
    let order = field_order(redis, &status_key);
    assert_eq!(order.len(), 6);
    assert!(order.iter().all(|f| f == &STATUS_FIELDS), "{order:?}");

    // Events: one entry per event, with both timestamps.
    let t4 = now_ts(0);
    let ev = json!({"appId": app, "deviceId": dev, "workspaceId": ws, "orgId": org.org_id, "timestamp": t4, "type": "events",
        "events": [{"key": "BootEvent", "value": {"Level": "Full"}, "timestamp": t3},
                   {"key": "UserInterface.Message.Prompt.Response", "value": {"OptionId": 2}, "timestamp": t4}]});
    assert_eq!(
        post(&base, &tenant, &secret, &serde_json::to_vec(&ev).unwrap())
            .await
            .0,
        200
    );
    let got = entries(redis, &events_key);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0],
        fields(&[
            ("workspace", &ws),
            ("device", &dev),
            ("key", "BootEvent"),
            ("value", "{\"Level\":\"Full\"}"),
            ("ts", &t3),
            ("msg_ts", &t4),
            ("source", "webhook"),
            ("schema", "2")
        ])
    );
    let order = field_order(redis, &events_key);
    assert!(order.iter().all(|f| f == &EVENT_FIELDS), "{order:?}");

    // The tenant counts what it received.
    let t = admin_tenant(&base, &tenant).await;
    assert_eq!(t["messages_received"]["webhook"], 5, "{t}");
    // Per-stage latencies are recorded.
    let text = metrics_text(&base).await;
    for stage in ["verify", "parse", "redis_write", "end_to_end"] {
        let n = metric(
            &text,
            &format!("xapi_stream_stage_seconds_count{{stage=\"{stage}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 5.0, "stage {stage} recorded {n} times");
    }
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn every_reject_path_is_answered_counted_and_writes_nothing() {
    let TestEnv {
        redis,
        prefix: p,
        sim,
    } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &p,
        &[("SERVER__MAX_BODY_BYTES", "2048")],
    )
    .await;
    let base = engine.base_url();
    let (tenant, secret) = activate(&sim, &base, 0).await;
    let org = sim.org(0);
    let msg = |ts: String| {
        json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id, "workspaceId": org.devices[0].workspace_id,
            "orgId": org.org_id, "timestamp": ts, "type": "status", "changes": {"updated": {"Standby.State": "On"}}, "isFullSync": false})
    };
    let good = serde_json::to_vec(&msg(now_ts(0))).unwrap();
    let http = reqwest::Client::new();
    let url = format!("{base}/tenants/{tenant}/webhook");
    // The tenant's background work has written its keys (first inventory sync, the command
    // stream's group): the snapshot below must not race with it.
    let settled = ["devices", "workspaces", "inventory", "commands"]
        .map(|k| format!("{p}:{{{}}}:{k}", org.org_id));
    assert!(
        eventually(Duration::from_secs(20), || async {
            let keys = keys_with_prefix(redis, &p);
            settled.iter().all(|k| keys.contains(k))
        })
        .await,
        "the first inventory sync did not land"
    );
    let keys_before = keys_with_prefix(redis, &p);

    let check = |status: u16, body: Value, want: u16| {
        assert_eq!(status, want, "{body}");
        assert_eq!(
            body["trackingId"].as_str().map(str::len),
            Some(32),
            "{body}"
        );
    };
    // Bad, missing, and wrong-length signatures.
    let r = http
        .post(&url)
        .header(
            "X-Spark-Signature",
            sign_webhook("wrong-secret-wrong-secret", &good),
        )
        .body(good.clone())
        .send()
        .await
        .unwrap();
    check(r.status().as_u16(), r.json().await.unwrap(), 401);
    let r = http.post(&url).body(good.clone()).send().await.unwrap();
    check(r.status().as_u16(), r.json().await.unwrap(), 401);
    let r = http
        .post(&url)
        .header("X-Spark-Signature", "abc")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    check(r.status().as_u16(), r.json().await.unwrap(), 401);
    // Malformed JSON, correctly signed.
    let (s, b) = post(&base, &tenant, &secret, b"{not json").await;
    check(s, b, 400);
    // Stale and future timestamps.
    let (s, b) = post(
        &base,
        &tenant,
        &secret,
        &serde_json::to_vec(&msg(now_ts(-6 * 60_000))).unwrap(),
    )
    .await;
    check(s, b, 400);
    let (s, b) = post(
        &base,
        &tenant,
        &secret,
        &serde_json::to_vec(&msg(now_ts(6 * 60_000))).unwrap(),
    )
    .await;
    check(s, b, 400);
    // Unknown tenant; too large.
    let (s, b) = post(
        &base,
        "00000000-0000-0000-0000-000000000000",
        &secret,
        &good,
    )
    .await;
    check(s, b, 404);
    let big = vec![b' '; 4096];
    let (s, b) = post(&base, &tenant, &secret, &big).await;
    check(s, b, 413);
    // A health check is accepted and writes nothing.
    let hc = serde_json::to_vec(
        &json!({"appId": sim.config().app_id, "timestamp": now_ts(0), "type": "healthCheck"}),
    )
    .unwrap();
    assert_eq!(post(&base, &tenant, &secret, &hc).await.0, 200);

    assert_eq!(
        keys_with_prefix(redis, &p),
        keys_before,
        "a rejected request wrote something"
    );
    for (result, n) in [
        ("bad_signature", 3.0),
        ("malformed", 1.0),
        ("stale", 2.0),
        ("unknown_tenant", 1.0),
        ("too_large", 1.0),
        ("health_check", 1.0),
        ("accepted", 0.0),
    ] {
        assert_eq!(
            webhooks(&base, result).await,
            n,
            "webhooks_total{{result={result}}}"
        );
    }
    // And the good one is accepted.
    assert_eq!(post(&base, &tenant, &secret, &good).await.0, 200);
    assert_eq!(webhooks(&base, "accepted").await, 1.0);
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn redis_paused_then_killed_under_20000_webhooks_loses_and_doubles_nothing() {
    const N: usize = 20_000;
    const TENANTS: usize = 8;
    let mut redis = xapi_stream::devkit::redis_server::RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ])
    .unwrap();
    let p = unique_prefix();
    let sim = start_sim(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &p,
        &[("REDIS__COMMAND_TIMEOUT_MS", "500")],
    )
    .await;
    let base = engine.base_url();
    let mut tenants = Vec::new();
    for i in 0..TENANTS {
        tenants.push(activate(&sim, &base, i).await);
    }
    // Unique event ids: each accepted message must appear exactly once.
    let bodies: Vec<(usize, Vec<u8>)> = (0..N)
        .map(|n| {
            let i = n % TENANTS;
            let org = sim.org(i);
            let m = json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id, "workspaceId": org.devices[0].workspace_id,
                "orgId": org.org_id, "timestamp": now_ts(0), "type": "events",
                "events": [{"key": "Test.Load", "value": {"n": n}, "timestamp": now_ts(0)}]});
            (i, serde_json::to_vec(&m).unwrap())
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(N);
    for (n, (i, body)) in bodies.into_iter().enumerate() {
        if n == N / 4 {
            redis.pause();
        }
        if n == N / 4 + 2000 {
            redis.resume();
        }
        if n == N / 2 {
            redis.kill();
        }
        if n == N / 2 + 2000 {
            redis.restart().unwrap();
        }
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (tenant, secret) = tenants[i].clone();
        let http = http.clone();
        let url = format!("{base}/tenants/{tenant}/webhook");
        tasks.push(tokio::spawn(async move {
            let sig = sign_webhook(&secret, &body);
            let r = http
                .post(url)
                .header("X-Spark-Signature", sig)
                .body(body)
                .send()
                .await;
            drop(permit);
            (n, r.map(|r| r.status().as_u16()).unwrap_or(0))
        }));
    }
    let mut status: HashMap<usize, u16> = HashMap::new();
    for t in tasks {
        let (n, s) = t.await.unwrap();
        status.insert(n, s);
    }
    let ok = status.values().filter(|s| **s == 200).count();
    let refused = status.values().filter(|s| **s >= 500).count();
    assert_eq!(
        ok + refused,
        N,
        "every request got 200 or 5xx: {:?}",
        status
            .values()
            .filter(|s| **s != 200 && **s < 500)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(refused > 0, "the faults were not felt");
    assert!(ok > N / 2, "too few accepted: {ok}");

    // Count each id in the streams.
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for i in 0..TENANTS {
        for e in entries(&redis, &format!("{p}:{{{}}}:events", sim.org(i).org_id)) {
            let v: Value = serde_json::from_str(&e["value"]).unwrap();
            *seen.entry(v["n"].as_u64().unwrap() as usize).or_default() += 1;
        }
    }
    for (n, s) in &status {
        let c = seen.get(n).copied().unwrap_or(0);
        assert!(c <= 1, "message {n} written {c} times");
        if *s == 200 {
            assert_eq!(c, 1, "message {n} answered 200 but is not in the stream");
        }
    }
    // The engine is alive and ready again by itself.
    let h = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(h.status(), 200);
    wait_ready(&base, Duration::from_secs(15)).await;
    let text = metrics_text(&base).await;
    assert!(metric(&text, "xapi_stream_backpressure_rejections_total").unwrap_or(0.0) > 0.0);
    eprintln!("fault test: {ok} accepted, {refused} refused (503) of {N}");
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn queues_of_50_tenants_drain_5000_messages_without_loss_or_duplicates() {
    const TENANTS: usize = 50;
    const PER_TENANT: usize = 100;
    let TestEnv {
        redis,
        prefix: p,
        sim,
    } = TestEnv::start(SimConfig {
        orgs: TENANTS,
        devices_per_org: 3,
        poll_wait: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let engine = start_engine(&sim, &redis.url(), &p, &[("INTEGRATION__INGEST", "both")]).await;
    let base = engine.base_url();
    let acts = futures::future::join_all((0..TENANTS).map(|i| activate(&sim, &base, i))).await;
    assert_eq!(acts.len(), TENANTS);
    // Every message goes to the queue AND as a webhook, in device order per tenant.
    let mut all: Vec<Vec<Value>> = Vec::new();
    for i in 0..TENANTS {
        let msgs = sim.generate(i, PER_TENANT);
        all.push(msgs);
    }
    futures::future::join_all(all.iter().enumerate().map(|(i, msgs)| {
        let sim = sim.clone();
        async move {
            for m in msgs {
                let r = sim.deliver(i, std::slice::from_ref(m)).await;
                assert_eq!(r.queued, 1);
                assert_eq!(r.webhook_statuses, vec![200]);
            }
        }
    }))
    .await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            (0..TENANTS).all(|i| sim.queue_len(i) == 0)
        })
        .await,
        "queues not drained"
    );
    // The last polled batches have landed once every queue was polled again: a poller writes
    // its batch before it sends the next poll.
    let drained_at = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || async {
            (0..TENANTS).all(|i| sim.last_poll(i).is_some_and(|t| t > drained_at))
        })
        .await,
        "a queue was not polled again after it was drained"
    );
    let mut conn = redis.client().get_connection().unwrap();
    for (i, sent) in all.iter().enumerate() {
        let org = sim.org(i);
        // No duplicates: each (device, key, ts) at most once.
        let mut seen = std::collections::HashSet::new();
        for e in entries(redis, &format!("{p}:{{{}}}:status", org.org_id)) {
            assert!(
                seen.insert((e["device"].clone(), e["key"].clone(), e["ts"].clone())),
                "duplicate record {e:?}"
            );
        }
        let events = entries(redis, &format!("{p}:{{{}}}:events", org.org_id));
        let expected_events = sent.iter().filter(|m| m["type"] == "events").count();
        assert_eq!(events.len(), expected_events, "events of org {i}");
        // No loss: each device's state equals the model's final values.
        for (d, dev) in org.devices.iter().enumerate() {
            let want = sim.full_sync(i, d)["changes"]["updated"].clone();
            let state: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(format!("{p}:{{{}}}:state:{}", org.org_id, dev.device_id))
                .query(&mut conn)
                .unwrap();
            for (k, v) in state {
                assert_eq!(
                    want.get(&k).map(|w| w.to_string()),
                    Some(v.clone()),
                    "org {i} device {d} key {k}"
                );
            }
        }
    }
    let text = metrics_text(&base).await;
    let m = |s: &str| metric(&text, s).unwrap_or(0.0);
    let via_webhook = m("xapi_stream_messages_total{source=\"webhook\",type=\"status\"}")
        + m("xapi_stream_messages_total{source=\"webhook\",type=\"events\"}");
    let via_queue = m("xapi_stream_messages_total{source=\"queue\",type=\"status\"}")
        + m("xapi_stream_messages_total{source=\"queue\",type=\"events\"}");
    let dups = m("xapi_stream_webhooks_total{result=\"duplicate\"}");
    assert_eq!(
        via_webhook + dups,
        (TENANTS * PER_TENANT) as f64,
        "every webhook accepted or a duplicate"
    );
    assert_eq!(
        via_queue + via_webhook,
        (TENANTS * PER_TENANT) as f64,
        "each message written exactly once"
    );
    assert!(via_queue > 0.0, "the queue path was used");
    assert!(
        m("xapi_stream_queue_poll_lag_seconds_count") > 0.0,
        "queue-poll lag recorded"
    );
    let horizon = m("xapi_stream_token_expiry_horizon_seconds");
    assert!(
        horizon > 7000.0 && horizon <= 7199.0,
        "token expiry horizon {horizon}"
    );
    for i in 0..TENANTS {
        assert!(
            sim.max_concurrent_pollers(i) <= 1,
            "org {i} polled concurrently"
        );
    }
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn after_a_secret_rotation_old_and_new_secrets_both_verify() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let (tenant, old) = activate(&sim, &base, 0).await;
    // Re-activation PATCHes a fresh secret.
    let (again, new) = {
        let before = sim.app_state(0).patches.len();
        let body: Value = reqwest::Client::new()
            .post(format!("{base}/admin/activations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "jwt": sim.activation_jwt(0) }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            eventually(Duration::from_secs(20), || async {
                sim.app_state(0).patches.len() == before + 1
            })
            .await
        );
        (
            body["tenant_id"].as_str().unwrap().to_string(),
            sim.app_state(0).webhook.unwrap().secret.unwrap(),
        )
    };
    assert_eq!(again, tenant, "same tenant id after re-activation");
    assert_ne!(old, new, "a new secret was registered");
    let org = sim.org(0);
    let msg = |n: i64| {
        serde_json::to_vec(&json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id, "workspaceId": "w",
            "orgId": org.org_id, "timestamp": now_ts(n), "type": "status",
            "changes": {"updated": {"RoomAnalytics.PeopleCount.Current": n}}, "isFullSync": false}))
        .unwrap()
    };
    assert_eq!(
        post(&base, &tenant, &new, &msg(1)).await.0,
        200,
        "new secret"
    );
    assert_eq!(
        post(&base, &tenant, &old, &msg(2)).await.0,
        200,
        "old secret within the 5-minute grace"
    );
    assert_eq!(
        post(&base, &tenant, "some-other-secret-0123456789", &msg(3))
            .await
            .0,
        401
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// Queue polls over HTTP/2 (prior knowledge to the simulator) are spread over several
/// connections of at most `ingest.polls_per_connection` polls each — one connection for all
/// would be stuck at the server's stream limit — and deliver every message once.
#[actix_web::test]
async fn polls_over_http2_share_connections_up_to_the_limit_and_deliver_every_message() {
    const TENANTS: usize = 60;
    const PER_CONNECTION: usize = 8;
    let TestEnv {
        redis,
        prefix: p,
        sim,
    } = TestEnv::start(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        poll_wait: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &p,
        &[
            ("INTEGRATION__INGEST", "queue"),
            ("WEBEX__PLAIN_HTTP2", "true"),
            ("INGEST__POLL_CLIENT", "negotiated"),
            ("INGEST__POLLS_PER_CONNECTION", &PER_CONNECTION.to_string()),
        ],
    )
    .await;
    let base = engine.base_url();
    futures::future::join_all((0..TENANTS).map(|i| activate(&sim, &base, i))).await;
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || async {
            (0..TENANTS).all(|i| sim.last_poll(i).is_some_and(|t| t > started))
        })
        .await,
        "not every queue is polled"
    );
    let sent: Vec<Vec<Value>> = (0..TENANTS).map(|i| sim.generate(i, 5)).collect();
    for (i, msgs) in sent.iter().enumerate() {
        for m in msgs {
            sim.enqueue(i, m.clone());
        }
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            (0..TENANTS).all(|i| sim.queue_len(i) == 0)
        })
        .await,
        "queues not drained"
    );
    let drained_at = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || async {
            (0..TENANTS).all(|i| sim.last_poll(i).is_some_and(|t| t > drained_at))
        })
        .await,
        "a queue was not polled again after it was drained"
    );
    for (i, msgs) in sent.iter().enumerate() {
        let org = sim.org(i).org_id;
        let want = msgs.iter().filter(|m| m["type"] == "events").count();
        let events = entries(redis, &format!("{p}:{{{org}}}:events"));
        assert_eq!(events.len(), want, "events of org {i}");
    }
    let (most_on_one, http2) = sim.poll_connections();
    assert!(http2 > TENANTS as u64, "polls did not use HTTP/2: {http2}");
    assert!(
        most_on_one <= PER_CONNECTION,
        "{most_on_one} polls waited on one connection (limit {PER_CONNECTION})"
    );
    assert!(
        most_on_one > 1,
        "polls were not multiplexed at all ({most_on_one} per connection)"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// `integration.webhook_auth`: each scheme is registered with Webex as configured (the
/// simulator then sends it); the right credentials are accepted, wrong or missing ones get
/// 401 and write nothing.
#[actix_web::test]
async fn every_webhook_scheme_accepts_its_credentials_and_refuses_others() {
    for scheme in [
        "hmac_signature",
        "authorization_header",
        "basic_authentication",
    ] {
        let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
        let engine = start_engine(
            &sim,
            &redis.url(),
            &prefix,
            &[("INTEGRATION__WEBHOOK_AUTH", scheme)],
        )
        .await;
        let base = engine.base_url();
        activate_org(&sim, &base, 0).await;
        let hook = sim.app_state(0).webhook.expect("a webhook is registered");
        assert_eq!(hook.kind, scheme);
        match scheme {
            "basic_authentication" => {
                assert!(hook.password.as_ref().is_some_and(|p| p.len() >= 20));
                assert!(hook.secret.is_none());
            }
            _ => assert!(hook.secret.as_ref().is_some_and(|s| s.len() >= 20)),
        }
        let org = sim.org(0).org_id;
        let keys = [
            format!("{prefix}:{{{org}}}:status"),
            format!("{prefix}:{{{org}}}:events"),
        ];
        let count = || keys.iter().map(|k| entries(redis, k).len()).sum::<usize>();
        let msgs = sim.generate(0, 2);

        let refused_before = webhooks(&base, "bad_signature").await;
        let ok = sim.post_webhook(&hook, &msgs[0]).await;
        assert_eq!(ok, 200, "{scheme}: the right credentials");
        let written = count();
        assert!(written > 0, "{scheme}: entries written");

        // Wrong credentials of the same scheme, and none at all.
        let mut wrong = hook.clone();
        wrong.secret = wrong.secret.map(|s| format!("{s}x"));
        wrong.password = wrong.password.map(|s| format!("{s}x"));
        let mut none = hook.clone();
        none.kind = "none".into();
        for (what, h) in [("wrong", &wrong), ("missing", &none)] {
            assert_eq!(
                sim.post_webhook(h, &msgs[1]).await,
                401,
                "{scheme}: {what} credentials"
            );
        }
        // Another scheme's header with the same secret is refused too.
        let mut other = hook.clone();
        other.kind = if scheme == "hmac_signature" {
            "authorization_header".into()
        } else {
            "hmac_signature".into()
        };
        other.secret = hook.secret.clone().or(hook.password.clone());
        assert_eq!(
            sim.post_webhook(&other, &msgs[1]).await,
            401,
            "{scheme}: other scheme"
        );
        assert_eq!(count(), written, "{scheme}: nothing written");
        assert_eq!(
            webhooks(&base, "bad_signature").await - refused_before,
            3.0,
            "{scheme}: each refusal counted"
        );

        engine.shutdown().await;
        sim.shutdown().await;
    }
}

/// Stamps written in decimal (before counts and stamps went to apply.lua in hexadecimal) still
/// guard a device's keys after an upgrade: a key stamped later than a message is not
/// overwritten by it, one stamped earlier is, and its stamp is then rewritten in the new form.
#[actix_web::test]
async fn stamps_written_in_decimal_before_an_upgrade_still_keep_older_messages_out() {
    let OneTenant {
        env: TestEnv {
            redis,
            prefix: p,
            sim,
        },
        engine: _engine,
        base,
        tenant,
        secret,
        org,
        dev,
        ws,
    } = OneTenant::start().await;
    let (state_key, stamps_key, status_key) = (
        format!("{p}:{{{}}}:state:{dev}", org.org_id),
        format!("{p}:{{{}}}:stamps:{dev}", org.org_id),
        format!("{p}:{{{}}}:status", org.org_id),
    );
    let now = chrono::Utc::now().timestamp_millis();
    let mut conn = redis.client().get_connection().unwrap();
    // As an earlier version left them: "Audio.Volume" last changed a second from now, and
    // "Standby.State" a minute ago, both stamped in decimal.
    let _: () = redis::cmd("HSET")
        .arg(&state_key)
        .arg(&["Audio.Volume", "10", "Standby.State", "\"Off\""])
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&stamps_key)
        .arg("\0known")
        .arg("1")
        .arg("Audio.Volume")
        .arg((now + 1000).to_string())
        .arg("Standby.State")
        .arg((now - 60_000).to_string())
        .query(&mut conn)
        .unwrap();
    let ts = chrono::DateTime::from_timestamp_millis(now)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = serde_json::to_vec(&json!({
      "appId": sim.config().app_id, "deviceId": dev, "workspaceId": ws, "orgId": org.org_id,
      "timestamp": ts, "type": "status",
      "changes": { "updated": { "Audio.Volume": 50, "Standby.State": "Halfwake" }, "removed": [] },
      "isFullSync": false
    }))
    .unwrap();
    assert_eq!(post(&base, &tenant, &secret, &body).await.0, 200);

    let state: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&state_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        state,
        fields(&[("Audio.Volume", "10"), ("Standby.State", "\"Halfwake\"")]),
        "the key stamped later kept its value, the other one changed"
    );
    let got = entries(redis, &status_key);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["key"], "Standby.State");
    assert_eq!(got[0]["prev"], "\"Off\"");
    let stamps: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&stamps_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(stamps["Audio.Volume"], (now + 1000).to_string());
    assert_eq!(stamps["Standby.State"], format!("0x{now:x}"));
}

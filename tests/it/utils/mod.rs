//! The test harness: private Redis, simulator and engine helpers.
#![allow(dead_code)]

pub mod browser;
mod replica;
pub use replica::Replica;

use std::sync::OnceLock;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;

use xapi_stream::devkit::redis_server::RedisServer;
use xapi_stream::devkit::sim::{Sim, SimConfig};
use xapi_stream::engine::{self, RunningEngine};

/// One redis-server per test binary for tests that do not disturb Redis. It dies with the
/// test process (see `redis_server::spawn_tied_to_process`).
pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(|| RedisServer::start().expect("redis-server starts (is it installed?)"))
}

/// A private redis-server that this test may kill, pause and restart.
pub fn own_redis() -> RedisServer {
    RedisServer::start().expect("redis-server starts (is it installed?)")
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A simulator on a free port with quick defaults for tests.
pub async fn start_sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// An engine on a free port against `redis_url` and `sim`, waited until ready.
pub async fn start_engine(
    sim: &Sim,
    redis_url: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> RunningEngine {
    let cfg = xapi_stream::devkit::devenv::engine_config(sim, redis_url, prefix, extra)
        .expect("test configuration is valid");
    if std::env::var_os("RUST_LOG").is_some() {
        // Engine logs in test output when asked for: RUST_LOG=debug cargo nextest run …
        xapi_stream::logging::init(&cfg.log);
    }
    let engine = engine::start(cfg).await.expect("engine starts");
    wait_ready(&engine.admin_url(), Duration::from_secs(10)).await;
    engine
}

/// Polls `/readyz` until 200 or panics after `limit`.
pub async fn wait_ready(base: &str, limit: Duration) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key under `prefix` in `redis`, except `<prefix>:replicas` (the heartbeats every
/// running engine writes, whatever its traffic).
pub fn keys_with_prefix(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let mut conn = redis.client().get_connection().expect("redis connection");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .expect("KEYS");
    let heartbeats = format!("{prefix}:replicas");
    keys.retain(|k| *k != heartbeats);
    keys.sort();
    keys
}

/// A sample's value from a Prometheus text exposition, e.g. `name{label="x"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `POST /provision` with `jwt` (an HTTPS activation waiting for its setup page): its session.
pub async fn provision_session(base: &str, jwt: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/provision"))
        .json(&json!({ "jwt": jwt }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let redirect = body["redirectUrl"].as_str().expect("a redirectUrl");
    redirect.rsplit('/').next().unwrap().to_string()
}

/// `GET <base><path>` with the admin bearer: the JSON body.
pub async fn admin_get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST /admin/invitations` for a customer: 201 and its one-time code.
pub async fn invite(base: &str, customer_id: &str, name: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/invitations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "customer_id": customer_id, "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let inv: Value = r.json().await.unwrap();
    inv["code"].as_str().expect("a code").to_string()
}

/// `POST /admin/activations` with `jwt`: (status, body).
pub async fn admin_activate(base: &str, jwt: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/activations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "jwt": jwt }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Activates the simulator's orgs `orgs` at once; every answer must be 202.
pub async fn activate_orgs(base: &str, sim: &Sim, orgs: &[usize]) {
    let jwts: Vec<String> = orgs.iter().map(|&i| sim.activation_jwt(i)).collect();
    let answers = futures::future::join_all(jwts.iter().map(|j| admin_activate(base, j))).await;
    for (status, body) in answers {
        assert_eq!(status, 202, "{body}");
    }
}

/// Waits until each of the simulator's first `orgs` orgs has its webhook registered and every
/// tenant shows `completed`. Otherwise panics naming the stuck ones and the engine's non-zero
/// counters: a flake here must be diagnosable from CI's log.
pub async fn wait_all_activated(base: &str, sim: &Sim, orgs: usize, limit: Duration) {
    let unfinished = || async {
        let no_webhook: Vec<usize> = (0..orgs)
            .filter(|&i| sim.app_state(i).webhook.is_none())
            .collect();
        let tenants = admin_get(base, "/admin/tenants").await;
        let not_completed: Vec<Value> = tenants
            .as_array()
            .expect("a tenant list")
            .iter()
            .filter(|t| t["provisioning_state"] != "completed")
            .cloned()
            .collect();
        (no_webhook, not_completed)
    };
    if eventually(limit, || async {
        let (a, b) = unfinished().await;
        a.is_empty() && b.is_empty()
    })
    .await
    {
        return;
    }
    let (no_webhook, not_completed) = unfinished().await;
    let counters: Vec<String> = metrics_text(base)
        .await
        .lines()
        .filter(|l| l.starts_with("xapi_stream_") && !l.contains("_bucket") && !l.ends_with(" 0"))
        .map(String::from)
        .collect();
    panic!(
        "{} orgs registered no webhook (sim orgs {:?}…); {} tenants not completed, e.g. {:#?}\n{}",
        no_webhook.len(),
        &no_webhook[..no_webhook.len().min(10)],
        not_completed.len(),
        &not_completed[..not_completed.len().min(5)],
        counters.join("\n"),
    );
}

/// `GET /admin/tenants/<id>`.
pub async fn admin_tenant(base: &str, id: &str) -> Value {
    admin_get(base, &format!("/admin/tenants/{id}")).await
}

/// Activates simulated org `i` (through the admin API at `base`) and waits until both Webex
/// and the engine's own record say completed (the record follows the PATCH's answer); returns
/// the tenant id.
pub async fn activate_org(sim: &Sim, base: &str, i: usize) -> String {
    let (status, body) = admin_activate(base, &sim.activation_jwt(i)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["tenant_id"].as_str().expect("tenant id").to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            sim.app_state(i).provisioning_state.as_deref() == Some("completed")
                && admin_tenant(base, &id).await["provisioning_state"] == "completed"
        })
        .await,
        "activation of org {i} did not complete"
    );
    id
}

/// Every key under `prefix` and its DUMP, concatenated (to look for plain-text secrets).
pub fn dump_prefix(redis: &RedisServer, prefix: &str) -> Vec<u8> {
    let mut conn = redis.client().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    let mut all = Vec::new();
    for k in keys {
        all.extend_from_slice(k.as_bytes());
        let d: Vec<u8> = redis::cmd("DUMP").arg(&k).query(&mut conn).unwrap();
        all.extend_from_slice(&d);
    }
    all
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The `event` field of every entry of `<prefix>:tenants`.
pub fn lifecycle(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let mut conn = redis.client().get_connection().unwrap();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:tenants"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    entries
        .ids
        .iter()
        .map(|e| e.get::<String>("event").unwrap())
        .collect()
}

/// The entries of `<prefix>:tenants` whose `event` is `event`, each as its fields.
pub fn lifecycle_entries(
    redis: &RedisServer,
    prefix: &str,
    event: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let mut conn = redis.client().get_connection().unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:tenants"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    reply
        .ids
        .iter()
        .filter(|e| e.get::<String>("event").as_deref() == Some(event))
        .map(|e| {
            e.map
                .keys()
                .map(|k| (k.clone(), e.get::<String>(k).unwrap_or_default()))
                .collect()
        })
        .collect()
}

/// The lease holder of each of orgs `0..n` that has one: org index → replica id.
pub fn lease_holders(
    redis: &RedisServer,
    prefix: &str,
    sim: &Sim,
    n: usize,
) -> std::collections::HashMap<usize, String> {
    let mut conn = redis.client().get_connection().unwrap();
    (0..n)
        .filter_map(|i| {
            let v: Option<String> = redis::cmd("GET")
                .arg(format!("{prefix}:{{{}}}:lease", sim.org(i).org_id))
                .query(&mut conn)
                .unwrap();
            v.and_then(|v| v.rsplit_once('|').map(|(r, _)| (i, r.to_string())))
        })
        .collect()
}

/// `env` (an engine process's environment) with `settings` (`SECTION__KEY`, value) added.
pub fn with_settings(
    mut env: Vec<(String, String)>,
    settings: &[(&str, &str)],
) -> Vec<(String, String)> {
    for (k, v) in settings {
        env.push((format!("XAPI_STREAM__{k}"), v.to_string()));
    }
    env
}

/// The text of `GET <base>/metrics`.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// One sample from the engine's `/metrics`, 0 when absent.
pub async fn scrape(base: &str, sample: &str) -> f64 {
    let text = metrics_text(base).await;
    metric(&text, sample).unwrap_or(0.0)
}

/// `POST /tenants/<id>/actions` with `jwt`: (status, body).
pub async fn action(base: &str, tenant: &str, jwt: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/tenants/{tenant}/actions"))
        .json(&json!({ "jwt": jwt }))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The world a test runs in: a Redis (the shared one, or its own), a key prefix no other test
/// uses, and a simulator. Engines — in-process ([`TestEnv::engine`]) or the real binary
/// ([`TestEnv::replica_env`] with [`Replica`]) — are started in it.
pub struct TestEnv<R = &'static RedisServer> {
    pub redis: R,
    pub prefix: String,
    pub sim: Sim,
}

impl TestEnv {
    /// The shared Redis, a fresh prefix, a simulator with `cfg`.
    pub async fn start(cfg: SimConfig) -> Self {
        TestEnv {
            redis: shared_redis(),
            prefix: unique_prefix(),
            sim: start_sim(cfg).await,
        }
    }
}

impl TestEnv<RedisServer> {
    /// A Redis of its own (to kill, pause, restart), a fresh prefix, a simulator with `cfg`.
    pub async fn own(cfg: SimConfig) -> Self {
        TestEnv {
            redis: own_redis(),
            prefix: unique_prefix(),
            sim: start_sim(cfg).await,
        }
    }
}

impl<R: std::borrow::Borrow<RedisServer>> TestEnv<R> {
    /// An in-process engine in this world with `extra` settings, ready.
    pub async fn engine(&self, extra: &[(&str, &str)]) -> RunningEngine {
        start_engine(&self.sim, &self.redis.borrow().url(), &self.prefix, extra).await
    }

    /// The environment of an engine process in this world (see [`Replica`]).
    pub fn replica_env(&self) -> Vec<(String, String)> {
        xapi_stream::devkit::devenv::engine_env(&self.sim, &self.redis.borrow().url(), &self.prefix)
    }
}

/// An events message from org `i`'s first device: events `key` with value `{"n": n}`. Tests
/// that count what landed number their messages this way (see `events_seen`).
pub fn numbered_event(sim: &Sim, i: usize, key: &str, n: u64) -> Value {
    let org = sim.org(i);
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id,
        "workspaceId": org.devices[0].workspace_id, "orgId": org.org_id, "timestamp": ts,
        "type": "events", "events": [{"key": key, "value": {"n": n}, "timestamp": ts}]})
}

/// How often each `n` of events `key` (see `numbered_event`) appears in the events streams of
/// orgs `0..orgs` on the Redis behind `client`.
pub fn events_seen(
    client: &redis::Client,
    prefix: &str,
    sim: &Sim,
    orgs: usize,
    key: &str,
) -> std::collections::HashMap<u64, usize> {
    let mut conn = client.get_connection().unwrap();
    let mut seen = std::collections::HashMap::new();
    for i in 0..orgs {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{prefix}:{{{}}}:events", sim.org(i).org_id))
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        for e in reply.ids {
            if e.get::<String>("key").as_deref() != Some(key) {
                continue;
            }
            let v: String = e.get("value").unwrap();
            let n = serde_json::from_str::<Value>(&v).unwrap()["n"]
                .as_u64()
                .unwrap();
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

//! Scale-out: three engine processes (the real binary) share 200 tenants over one Redis, and
//! over a 3-master Redis Cluster. Every tenant is polled by one replica at a time; a replica
//! killed with SIGKILL under load has its tenants polled again within the lease TTL + 5 s; no
//! refresh token is ever used twice; every webhook answered 200 is in the streams exactly once.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::redis_cluster::RedisCluster;
use xapi_stream::devkit::redis_server::RedisServer;
use xapi_stream::devkit::sim::{Sim, SimConfig, sign_webhook};

use crate::utils::*;

const TENANTS: usize = 200;
const REPLICAS: usize = 3;
/// Short leases so a takeover happens within the test (the default is 30 s).
const LEASE_TTL: Duration = Duration::from_secs(6);
/// The acceptance bound for a dead replica's tenants to be polled again.
const TAKEOVER_BOUND: Duration = Duration::from_secs(6 + 5);

/// Where the engines keep their data.
enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    /// The engine's `redis.url`.
    fn url(&self) -> String {
        match self {
            Backend::Single(r) => r.url(),
            Backend::Cluster(c) => c.urls(),
        }
    }

    /// A synchronous connection that routes every key to the node holding it.
    fn conn(&self) -> Box<dyn redis::ConnectionLike> {
        match self {
            Backend::Single(r) => Box::new(r.client().get_connection().expect("redis")),
            Backend::Cluster(c) => {
                Box::new(c.client().get_connection().expect("cluster connection"))
            }
        }
    }
}

/// What the load generator saw answered 200: (org index, n) pairs.
type Accepted = Arc<Mutex<Vec<(usize, u64)>>>;

/// Sends signed event webhooks for random tenants to the live replicas, round robin, until
/// `stop`; records every message answered 200.
fn start_load(
    sim: &Sim,
    tenant_ids: Arc<Vec<String>>,
    live: Arc<Mutex<Vec<String>>>,
    accepted: Accepted,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let secrets: Arc<Vec<String>> = Arc::new(
        (0..TENANTS)
            .map(|i| {
                sim.app_state(i)
                    .webhook
                    .and_then(|w| w.secret)
                    .expect("webhook secret registered")
            })
            .collect(),
    );
    let orgs: Arc<Vec<_>> = Arc::new((0..TENANTS).map(|i| sim.org(i)).collect());
    let app = sim.config().app_id.clone();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (0..16)
        .map(|_| {
            let (secrets, orgs, app, next, http, live, accepted, stop, tenant_ids) = (
                secrets.clone(),
                orgs.clone(),
                app.clone(),
                next.clone(),
                http.clone(),
                live.clone(),
                accepted.clone(),
                stop.clone(),
                tenant_ids.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let i = (n as usize * 7919) % TENANTS;
                    let org = &orgs[i];
                    let ts =
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    let body = serde_json::to_vec(&json!({
                        "appId": app, "deviceId": org.devices[0].device_id,
                        "workspaceId": org.devices[0].workspace_id, "orgId": org.org_id,
                        "timestamp": ts, "type": "events",
                        "events": [{"key": "Test.Scale", "value": {"n": n}, "timestamp": ts}]
                    }))
                    .unwrap();
                    let base = {
                        let live = live.lock().unwrap();
                        live[n as usize % live.len()].clone()
                    };
                    let res = http
                        .post(format!("{base}/tenants/{}/webhook", tenant_ids[i]))
                        .header("X-Spark-Signature", sign_webhook(&secrets[i], &body))
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    if let Ok(r) = res
                        && r.status().as_u16() == 200
                    {
                        accepted.lock().unwrap().push((i, n));
                    }
                }
            })
        })
        .collect()
}

/// The lease holder of every tenant: org index → replica id.
fn lease_holders(backend: &Backend, prefix: &str, sim: &Sim) -> HashMap<usize, String> {
    let mut conn = backend.conn();
    (0..TENANTS)
        .filter_map(|i| {
            let v: Option<String> = redis::cmd("GET")
                .arg(format!("{prefix}:{{{}}}:lease", sim.org(i).org_id))
                .query(&mut *conn)
                .unwrap();
            v.and_then(|v| v.rsplit_once('|').map(|(r, _)| (i, r.to_string())))
        })
        .collect()
}

fn count_by_replica(holders: &HashMap<usize, String>) -> BTreeMap<String, usize> {
    let mut share = BTreeMap::new();
    for r in holders.values() {
        *share.entry(r.clone()).or_default() += 1;
    }
    share
}

async fn tenant_count(base: &str) -> usize {
    let r = reqwest::Client::new()
        .get(format!("{base}/admin/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    match r {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn suite(backend: Backend) {
    let prefix = unique_prefix();
    // 8-s tokens: each tenant's refresh token rotates every ~5 s, before and after the takeover.
    let sim = start_sim(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        access_token_ttl: Duration::from_secs(8),
        poll_wait: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let mut env = xapi_stream::devkit::devenv::engine_env(&sim, &backend.url(), &prefix);
    for (k, v) in [
        ("INTEGRATION__INGEST", "both"),
        ("SCALING__LEASE_TTL_SECS", "6"),
        ("SCALING__RESYNC_SECS", "5"),
        ("WEBEX__HTTP_TIMEOUT_SECS", "3"),
        ("SERVER__WORKERS", "1"),
        ("LOG__LEVEL", "warn"),
        ("LOG__FORMAT", "text"),
    ] {
        env.push((format!("XAPI_STREAM__{k}"), v.to_string()));
    }
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|r| Replica::spawn(&format!("r{r}"), &env))
        .collect();
    for r in &replicas {
        wait_ready(&r.base, Duration::from_secs(20)).await;
    }

    // Activate every tenant through replica 0, 20 at a time; the lease holders complete them.
    let base0 = replicas[0].base.clone();
    let mut tenant_ids = vec![String::new(); TENANTS];
    for chunk in (0..TENANTS).collect::<Vec<_>>().chunks(20) {
        let jwts: Vec<String> = chunk.iter().map(|&i| sim.activation_jwt(i)).collect();
        let answers =
            futures::future::join_all(jwts.iter().map(|jwt| admin_activate(&base0, jwt))).await;
        for (&i, (status, body)) in chunk.iter().zip(answers) {
            assert_eq!(status, 202, "{body}");
            tenant_ids[i] = body["tenant_id"].as_str().unwrap().to_string();
        }
    }
    let all_completed = eventually(Duration::from_secs(60), || async {
        (0..TENANTS).all(|i| sim.app_state(i).provisioning_state.as_deref() == Some("completed"))
    })
    .await;
    let pending: Vec<usize> = (0..TENANTS)
        .filter(|&i| sim.app_state(i).provisioning_state.as_deref() != Some("completed"))
        .collect();
    assert!(
        all_completed,
        "activations not completed: {pending:?}\n{}",
        replicas[0].log_tail()
    );
    // Every replica knows every tenant (announcements), every tenant has one lease holder, the
    // three replicas share them, and every queue is being polled.
    for r in &replicas {
        assert!(
            eventually(Duration::from_secs(20), || async {
                tenant_count(&r.base).await == TENANTS
            })
            .await,
            "{} does not list every tenant",
            r.id
        );
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_holders(&backend, &prefix, &sim).len() == TENANTS
                && (0..TENANTS).all(|i| sim.last_poll(i).is_some())
        })
        .await,
        "not every tenant is leased and polled"
    );
    let share = count_by_replica(&lease_holders(&backend, &prefix, &sim));
    assert_eq!(share.len(), REPLICAS, "{share:?}");
    for (r, n) in &share {
        assert!(
            (30..=110).contains(n),
            "uneven spread: {r} owns {n} of {TENANTS} ({share:?})"
        );
    }

    // Load: webhooks to every live replica; queue messages too.
    let tenant_ids = Arc::new(tenant_ids);
    let live = Arc::new(Mutex::new(
        replicas.iter().map(|r| r.base.clone()).collect::<Vec<_>>(),
    ));
    let accepted: Accepted = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = start_load(
        &sim,
        tenant_ids.clone(),
        live.clone(),
        accepted.clone(),
        stop.clone(),
    );
    let queue_sim = sim.clone();
    let queue_stop = stop.clone();
    let queued = tokio::spawn(async move {
        let mut n = 0u64;
        while !queue_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let i = (n as usize * 31) % TENANTS;
            let org = queue_sim.org(i);
            let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            queue_sim.enqueue(
                i,
                json!({"appId": queue_sim.config().app_id, "deviceId": org.devices[0].device_id,
                    "workspaceId": org.devices[0].workspace_id, "orgId": org.org_id, "timestamp": ts,
                    "type": "events", "events": [{"key": "Test.Queue", "value": {"n": n}, "timestamp": ts}]}),
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    });
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Kill -9 the third replica under load.
    let victim = replicas.pop().unwrap();
    let victims: Vec<usize> = lease_holders(&backend, &prefix, &sim)
        .into_iter()
        .filter(|(_, r)| *r == victim.id)
        .map(|(i, _)| i)
        .collect();
    assert!(!victims.is_empty());
    live.lock().unwrap().retain(|b| *b != victim.base);
    let mut victim = victim;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    let accepted_before_kill = accepted.lock().unwrap().len();

    // Its tenants are polled again within the lease TTL + 5 s — except one whose refresh token
    // was being exchanged at the instant of the kill (8-s tokens rotate every few seconds, so
    // that can happen): Webex has spent the old token and the new one died with the process.
    // Such a tenant must say so (tokens invalid, the crash reason), and the simulator must have
    // seen its spent token presented again; no other tenant may be missing.
    let mut resumed: HashMap<usize, Duration> = HashMap::new();
    let mut lost: Vec<usize> = Vec::new();
    while resumed.len() + lost.len() < victims.len() && killed_at.elapsed() < TAKEOVER_BOUND * 2 {
        for &i in &victims {
            if !resumed.contains_key(&i) && sim.last_poll(i).is_some_and(|t| t > killed_at) {
                resumed.insert(i, killed_at.elapsed());
            }
            if !lost.contains(&i) && !resumed.contains_key(&i) && sim.reused_refresh_tokens(i) > 0 {
                lost.push(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lost.sort_unstable();
    for &i in &lost {
        let mut shown = Value::Null;
        for _ in 0..100 {
            shown = admin_tenant(&replicas[0].base, &tenant_ids[i]).await;
            if shown["tokens_state"] == "invalid" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            shown["tokens_state"] == "invalid"
                && shown["last_error"]["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("refresh token lost in a crash during exchange")),
            "org {i} lost its refresh token in the kill but does not say so: {shown}"
        );
    }
    let slowest = resumed.values().max().copied().unwrap_or_default();
    assert_eq!(
        resumed.len() + lost.len(),
        victims.len(),
        "{} of {} tenants of the killed replica not polled again within {:?} ({} lost in the crash)",
        victims.len() - resumed.len() - lost.len(),
        victims.len(),
        TAKEOVER_BOUND * 2,
        lost.len()
    );
    assert!(
        slowest <= TAKEOVER_BOUND,
        "takeover took {slowest:?} (bound {TAKEOVER_BOUND:?})"
    );
    eprintln!(
        "takeover of {} tenants: slowest {slowest:?}, lease TTL {LEASE_TTL:?}; {} refresh token(s) lost in an exchange the kill interrupted",
        victims.len(),
        lost.len()
    );
    // A new replica joins under load and takes its share (the owners hand tenants over).
    let joined = Replica::spawn("r3", &env);
    wait_ready(&joined.base, Duration::from_secs(20)).await;
    live.lock().unwrap().push(joined.base.clone());
    let joined_id = joined.id.clone();
    replicas.push(joined);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let h = lease_holders(&backend, &prefix, &sim);
            h.len() == TENANTS && h.values().filter(|r| **r == joined_id).count() >= 40
        })
        .await,
        "the joining replica did not take its share: {:?}",
        count_by_replica(&lease_holders(&backend, &prefix, &sim))
    );

    // A replica drains (SIGTERM): out of the load balancer first, then its tenants are handed
    // over as soon as their work stopped, well before their leases would expire.
    let drained = replicas.remove(0);
    live.lock().unwrap().retain(|b| *b != drained.base);
    // (A tenant whose refresh token the kill cost cannot be polled by anyone: not counted.)
    let handed: Vec<usize> = lease_holders(&backend, &prefix, &sim)
        .into_iter()
        .filter(|(i, r)| *r == drained.id && !lost.contains(i))
        .map(|(i, _)| i)
        .collect();
    let termed_at = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &drained.child.id().to_string()])
        .status();
    let mut drained = drained;
    let status = drained.child.wait().unwrap();
    assert!(
        status.success(),
        "drain exit: {status:?}\n{}",
        drained.log_tail()
    );
    assert!(
        eventually(LEASE_TTL, || async {
            handed
                .iter()
                .all(|&i| sim.last_poll(i).is_some_and(|t| t > termed_at))
        })
        .await,
        "a drained replica's tenants were not taken over within the lease TTL"
    );
    eprintln!(
        "drain: {} tenants handed over, all polled again {:?} after SIGTERM",
        handed.len(),
        termed_at.elapsed()
    );

    // More load on the survivors (tokens keep rotating), then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    futures::future::join_all(load).await;
    let queued_total = queued.await.unwrap();

    // No queue ever had two pollers; no refresh token was used twice.
    for i in 0..TENANTS {
        assert!(
            sim.max_concurrent_pollers(i) <= 1,
            "org {i}: {} concurrent pollers",
            sim.max_concurrent_pollers(i)
        );
    }
    // The only refresh tokens presented twice are those the kill cut off (once each, by the
    // successor trying the stored one); the drain lost none.
    let oauth = sim.oauth_stats();
    let reused: Vec<(usize, u64)> = (0..TENANTS)
        .map(|i| (i, sim.reused_refresh_tokens(i)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        reused,
        lost.iter().map(|&i| (i, 1)).collect::<Vec<_>>(),
        "refresh tokens used twice other than in the kill: {oauth:?}"
    );
    assert_eq!(oauth.reused, lost.len() as u64, "{oauth:?}");
    assert_eq!(oauth.invalid_grant, lost.len() as u64, "{oauth:?}");
    assert!(oauth.exchanges_ok >= TENANTS as u64, "{oauth:?}");
    assert_eq!(sim.expired_bearer_calls(), 0, "an expired token was used");

    // Every webhook answered 200 is in its org's events stream exactly once; every queue
    // message at most once (a batch in the killed replica's hands is lost with it: Webex had
    // already removed it from the queue).
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > accepted_before_kill && accepted_before_kill > 100,
        "too little load: {accepted_before_kill} before the kill, {} in all",
        accepted.len()
    );
    let mut conn = backend.conn();
    let mut scale_seen: HashMap<u64, usize> = HashMap::new();
    let mut queue_seen: HashMap<u64, usize> = HashMap::new();
    for i in 0..TENANTS {
        let key = format!("{prefix}:{{{}}}:events", sim.org(i).org_id);
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut *conn)
            .unwrap();
        for e in reply.ids {
            let k: String = e.get("key").unwrap();
            let v: String = e.get("value").unwrap();
            let n = serde_json::from_str::<Value>(&v).unwrap()["n"]
                .as_u64()
                .unwrap();
            match k.as_str() {
                "Test.Scale" => *scale_seen.entry(n).or_default() += 1,
                "Test.Queue" => *queue_seen.entry(n).or_default() += 1,
                other => panic!("unexpected event {other}"),
            }
        }
    }
    let accepted_ns: HashSet<u64> = accepted.iter().map(|(_, n)| *n).collect();
    for n in &accepted_ns {
        assert_eq!(
            scale_seen.get(n).copied().unwrap_or(0),
            1,
            "webhook {n} answered 200 but written {} times",
            scale_seen.get(n).copied().unwrap_or(0)
        );
    }
    assert!(
        queue_seen.values().all(|&c| c == 1),
        "a queue message was written twice"
    );
    eprintln!(
        "{} webhooks answered 200 (each written once); {} of {queued_total} queue messages written; {} still queued",
        accepted_ns.len(),
        queue_seen.len(),
        (0..TENANTS).map(|i| sim.queue_len(i)).sum::<usize>()
    );

    // How long a rotated refresh token existed only in a replica's memory (informational).
    let text = reqwest::get(format!("{}/metrics", replicas[0].base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stage = |name: &str, what: &str| {
        metric(
            &text,
            &format!("xapi_stream_stage_seconds_{what}{{stage=\"{name}\"}}"),
        )
        .unwrap_or(0.0)
    };
    for name in ["token_exchange", "token_store"] {
        let (sum, n) = (stage(name, "sum"), stage(name, "count"));
        if n > 0.0 {
            eprintln!(
                "{name}: {n} on {}, mean {:.2} ms",
                replicas[0].id,
                sum / n * 1000.0
            );
        }
    }

    // The survivors now own everything.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let h = lease_holders(&backend, &prefix, &sim);
            h.len() == TENANTS && h.values().all(|r| *r != victim.id && *r != drained.id)
        })
        .await
    );
    drop(replicas);
    sim.shutdown().await;
}

#[actix_web::test]
async fn three_replicas_share_200_tenants_on_one_redis() {
    suite(Backend::Single(own_redis())).await;
}

#[actix_web::test]
async fn three_replicas_share_200_tenants_on_a_redis_cluster() {
    suite(Backend::Cluster(
        RedisCluster::start(3).expect("a 3-master redis cluster starts"),
    ))
    .await;
}

async fn webhook(base: &str, tenant: &str, secret: &str, body: &Value) -> u16 {
    let body = serde_json::to_vec(body).unwrap();
    reqwest::Client::new()
        .post(format!("{base}/tenants/{tenant}/webhook"))
        .header("X-Spark-Signature", sign_webhook(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// What one replica changes, the others follow: a tenant activated on one is served by the
/// other at once; an update and a webhook-secret rotation handled by the replica that does not
/// own the tenant reach the owner (polling moves, the old refresh token is never used); a
/// deprovisioning on the non-owner stops the owner's poller and both answer 410.
#[actix_web::test]
async fn changes_made_on_one_replica_are_followed_by_the_others() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 1,
        poll_wait: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    let common = [
        ("INTEGRATION__INGEST", "both"),
        ("SECURITY__ENCRYPTION_KEY", key.as_str()),
        ("SCALING__LEASE_TTL_SECS", "6"),
        ("WEBEX__HTTP_TIMEOUT_SECS", "3"),
    ];
    let with_id = |id: &'static str| {
        let mut v = common.to_vec();
        v.push(("SCALING__REPLICA_ID", id));
        v
    };
    let a = start_engine(&sim, &redis.url(), &prefix, &with_id("a")).await;
    let b = start_engine(&sim, &redis.url(), &prefix, &with_id("b")).await;
    let (s, body) = admin_activate(&a.base_url(), &sim.activation_jwt(0)).await;
    assert_eq!(s, 202, "{body}");
    let id = body["tenant_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            sim.app_state(0).provisioning_state.as_deref() == Some("completed")
        })
        .await
    );
    let org = sim.org(0);
    let msg = |n: u64| {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id,
            "workspaceId": org.devices[0].workspace_id, "orgId": org.org_id, "timestamp": ts,
            "type": "events", "events": [{"key": "Test.Follow", "value": {"n": n}, "timestamp": ts}]})
    };
    let secret = || sim.app_state(0).webhook.unwrap().secret.unwrap();
    // Both replicas accept the tenant's webhooks at once.
    assert_eq!(webhook(&b.base_url(), &id, &secret(), &msg(1)).await, 200);
    assert_eq!(webhook(&a.base_url(), &id, &secret(), &msg(2)).await, 200);

    // Who owns it? Act on the other one.
    let lease_key = format!("{prefix}:{{{}}}:lease", org.org_id);
    let holder = || -> String {
        let v: String = redis::cmd("GET")
            .arg(&lease_key)
            .query(&mut redis.client().get_connection().unwrap())
            .unwrap();
        v.rsplit_once('|').unwrap().0.to_string()
    };
    let owner_id = holder();
    let (owner, other) = if owner_id == "a" { (&a, &b) } else { (&b, &a) };

    // Re-activation through the non-owner: the owner completes it with a new webhook secret;
    // the non-owner verifies webhooks signed with it right away.
    let old_secret = secret();
    let (s, _) = admin_activate(&other.base_url(), &sim.activation_jwt(0)).await;
    assert_eq!(s, 202);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let w = sim.app_state(0).webhook.unwrap();
            w.secret.as_deref() != Some(old_secret.as_str())
                && sim.app_state(0).provisioning_state.as_deref() == Some("completed")
        })
        .await,
        "re-activation not completed by the owner"
    );
    assert_eq!(
        webhook(&other.base_url(), &id, &secret(), &msg(3)).await,
        200
    );
    assert_eq!(
        webhook(&owner.base_url(), &id, &secret(), &msg(4)).await,
        200
    );

    // An update handled by the non-owner: new refresh token, moved appUrl.
    sim.revoke_refresh_tokens(0);
    let fresh = sim.mint_refresh_token(0);
    let new_app = sim.moved_app_url(0, "k");
    let (s, body) = action(&other.base_url(), &id, &sim.action_jwt(0, "update", json!({
        "appUrl": new_app, "manifestUrl": format!("{new_app}/manifest"), "region": "eu-central-1_k", "refreshToken": fresh}))).await;
    assert_eq!(s, 204, "{body}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.polls_in_cluster("k") > 2
        })
        .await,
        "the owner's polling did not move to the new pollUrl"
    );
    assert_eq!(
        sim.oauth_stats().invalid_grant,
        0,
        "a revoked refresh token was used"
    );
    assert_eq!(holder(), owner_id, "ownership moved without a reason");

    // Deprovisioned through the non-owner: the owner stops polling; both answer 410.
    let (s, body) = action(
        &other.base_url(),
        &id,
        &sim.action_jwt(0, "deprovision", json!({})),
    )
    .await;
    assert_eq!(s, 204, "{body}");
    // The owner releases the lease once its work has stopped; from then on nothing polls.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let v: Option<String> = redis::cmd("GET")
                .arg(&lease_key)
                .query(&mut redis.client().get_connection().unwrap())
                .unwrap();
            v.is_none()
        })
        .await,
        "the deprovisioned tenant's lease was not released"
    );
    let polls = sim.polls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.polls(),
        polls,
        "the owner still polls a deprovisioned tenant"
    );
    for e in [&a, &b] {
        assert_eq!(webhook(&e.base_url(), &id, &secret(), &msg(5)).await, 410);
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

/// On a cluster, purging a deprovisioned tenant's streams finds its keys on the node serving
/// its slot (a plain SCAN would visit one random node).
#[actix_web::test]
async fn deprovisioning_purges_a_tenants_keys_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).expect("a 3-master redis cluster starts");
    let prefix = unique_prefix();
    let sim = start_sim(SimConfig {
        orgs: 3,
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &cluster.urls(),
        &prefix,
        &[("ACTIVATION__PURGE_STREAMS_ON_DEPROVISION", "true")],
    )
    .await;
    let base = engine.base_url();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(activate_org(&sim, &base, i).await);
    }
    for i in 0..3 {
        let report = sim.deliver(i, &sim.generate(i, 5)).await;
        assert!(
            report.webhook_statuses.iter().all(|&s| s == 200),
            "{report:?}"
        );
    }
    let org_keys = |i: usize| cluster.keys(&format!("{prefix}:{{{}}}:*", sim.org(i).org_id));
    for i in 0..3 {
        assert!(org_keys(i).len() > 2, "{:?}", org_keys(i));
    }
    for (i, id) in ids.iter().enumerate() {
        let (s, b) = action(&base, id, &sim.action_jwt(i, "deprovision", json!({}))).await;
        assert_eq!(s, 204, "{b}");
        let left = org_keys(i);
        let lease = format!("{prefix}:{{{}}}:lease", sim.org(i).org_id);
        assert!(
            left.iter().all(|k| k.ends_with(":tenant") || *k == lease),
            "org {i}: left {left:?}"
        );
    }
    engine.shutdown().await;
    sim.shutdown().await;
}

/// The fencing epoch at the storage: a replica whose lease was taken over (it was paused past
/// its TTL) cannot overwrite the refresh token its successor stored; the successor can.
#[actix_web::test]
async fn a_fenced_off_lease_holder_cannot_overwrite_token_state() {
    use actors::store::lease::{Acquired, Leases};
    use actors::store::tenants::{CasOutcome, TenantSecrets, Tenants};
    use actors::store::{Store, crypto::Sealer};

    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 1,
        ..Default::default()
    })
    .await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    activate_org(&sim, &engine.base_url(), 0).await;
    engine.shutdown().await; // releases its lease
    let org = sim.org(0).org_id;

    let cfg = xapi_stream::devkit::devenv::engine_config(&sim, &redis.url(), &prefix, &[]).unwrap();
    let store = Store::new(&cfg.redis, actors::telemetry::Metrics::new()).unwrap();
    assert!(store.connect(std::future::pending()).await);
    let leases = Leases::new(store.clone());
    let tenants = Tenants::new(store.clone(), Sealer::new(&[1u8; 32]));
    let Acquired::Held(old) = leases.take(&org, "paused", None).await.unwrap() else {
        panic!("record not free");
    };
    // A replica that read the record before "paused" took it cannot take it.
    assert_eq!(
        leases.take(&org, "successor", None).await.unwrap(),
        Acquired::Busy
    );
    // "paused" stops heartbeating: the successor, seeing it gone, takes the record it names.
    let record = actors::store::lease::value("paused", old);
    let Acquired::Held(new) = leases.take(&org, "successor", Some(&record)).await.unwrap() else {
        panic!("a dead replica's record not taken over");
    };
    assert!(new > old);
    // "paused", resuming, can neither take it back with what it last saw nor release it.
    assert_eq!(
        leases.take(&org, "paused", Some(&record)).await.unwrap(),
        Acquired::Busy
    );
    leases.release(&org, "paused", old).await.unwrap();
    assert_eq!(
        leases.read(&[org.as_str()]).await.unwrap(),
        vec![Some(actors::store::lease::value("successor", new))]
    );

    let version: u64 = redis::cmd("HGET")
        .arg(format!("{prefix}:{{{org}}}:tenant"))
        .arg("token_version")
        .query(&mut redis.client().get_connection().unwrap())
        .unwrap();
    let secrets = |rt: &str| TenantSecrets {
        refresh_token: actors::secret::Secret::new(rt.to_string()),
        ..Default::default()
    };
    // The successor stores its rotated token; the paused one, resuming, is refused even with
    // the current version in hand.
    let written = tenants
        .save_secrets(&org, version, &secrets("rt-successor"), None, Some(new))
        .await
        .unwrap();
    assert_eq!(written, CasOutcome::Written(version + 1));
    assert_eq!(
        tenants
            .save_secrets(&org, version + 1, &secrets("rt-paused"), None, Some(old))
            .await
            .unwrap(),
        CasOutcome::Fenced
    );
    // A stale version is refused too (someone else wrote since).
    assert_eq!(
        tenants
            .save_secrets(&org, version, &secrets("rt-stale"), None, Some(new))
            .await
            .unwrap(),
        CasOutcome::Stale
    );
    sim.shutdown().await;
}

/// A lease lost and won back while the poller is inside a long-poll (a failover lost the key):
/// the poller of the earlier ownership period finishes, the new period's poller takes over,
/// polling never stops and never doubles.
#[actix_web::test]
async fn a_lease_lost_and_won_back_mid_poll_keeps_exactly_one_poller() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 1,
        poll_wait: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("INTEGRATION__INGEST", "queue"),
            ("SCALING__LEASE_TTL_SECS", "6"),
            ("WEBEX__HTTP_TIMEOUT_SECS", "3"),
        ],
    )
    .await;
    activate_org(&sim, &engine.base_url(), 0).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sim.last_poll(0).is_some()
        })
        .await,
        "not polling"
    );
    let lease_key = format!("{prefix}:{{{}}}:lease", sim.org(0).org_id);
    let mut conn = redis.client().get_connection().unwrap();
    let lost = || async {
        scrape(
            &engine.base_url(),
            "xapi_stream_lease_changes_total{result=\"lost\"}",
        )
        .await
    };
    for round in 1..=2 {
        // The record vanishes (as after a failover): a verification (each record is read
        // once per lease TTL) finds it gone and stops the work; the same round takes it again
        // under a new epoch while the old period's poll is still waiting on the server.
        let _: i64 = redis::cmd("DEL").arg(&lease_key).query(&mut conn).unwrap();
        assert!(
            eventually(Duration::from_secs(6 + 4), || async {
                lost().await >= round as f64
            })
            .await,
            "the lost record was not noticed within the lease TTL"
        );
        let noticed = Instant::now();
        assert!(
            eventually(Duration::from_secs(10), || async {
                sim.last_poll(0)
                    .is_some_and(|t| t > noticed + Duration::from_secs(3))
            })
            .await,
            "polling stopped after the record was won back"
        );
        let record: Option<String> = redis::cmd("GET").arg(&lease_key).query(&mut conn).unwrap();
        assert!(record.is_some(), "not taken back");
    }
    assert_eq!(sim.max_concurrent_pollers(0), 1);
    engine.shutdown().await;
    sim.shutdown().await;
}

//! Switching a tenant between webhook and queue, made before it breaks (`PATCH
//! /admin/tenants/<id>` with `{"ingest": …}`): under steady traffic that every enabled transport
//! carries, no message is lost and none is written twice; the simulator — which applies a
//! transport change only `transport_apply_delay` after its PATCH, as Webex's caches do — shows
//! the old transport removed; a kill -9 of the owner in the overlap leaves the survivor to finish;
//! a requester killed before Webex answered its PATCH leaves the owner to send it again; a
//! refused PATCH leaves the tenant as it was and says why.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xapi_stream::devkit::redis_server::RedisServer;
use xapi_stream::devkit::sim::{Sim, SimConfig};

use crate::utils::*;

/// Webex applies a transport change this long after its PATCH (the simulator's delay).
const APPLY_DELAY: Duration = Duration::from_secs(1);
/// The simulator's long-poll wait (a quiet queue's poll answers after it).
const POLL_WAIT: Duration = Duration::from_secs(1);
/// `activation.transport_overlap_secs` of these tests: longer than the apply delay, as the
/// default 600 s is longer than Webex's 10 minutes.
const OVERLAP: Duration = Duration::from_secs(3);

/// A simulator of `orgs` organizations of one device each that applies transport changes
/// after [`APPLY_DELAY`].
fn delayed_sim(orgs: usize) -> SimConfig {
    SimConfig {
        orgs,
        devices_per_org: 1,
        poll_wait: POLL_WAIT,
        transport_apply_delay: APPLY_DELAY,
        ..Default::default()
    }
}

/// `PATCH /admin/tenants/<id>` with `{"ingest": mode}`: (status, body).
async fn set_ingest(base: &str, id: &str, mode: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .patch(format!("{base}/admin/tenants/{id}"))
        .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
        .json(&json!({ "ingest": mode }))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Waits until tenant `id` reads `mode` with no switch under way.
async fn switched(base: &str, id: &str, mode: &str, limit: Duration) -> bool {
    eventually(limit, || async {
        let t = admin_tenant(base, id).await;
        t["ingest"] == mode && t["transport_switch"].is_null()
    })
    .await
}

/// What the simulator does for org `i`: (webhook registered, queue receiving, queue removed).
fn transports(sim: &Sim, i: usize) -> (bool, bool, bool) {
    let a = sim.app_state(i);
    (a.webhook.is_some(), a.queue_receives(), a.queue_removed)
}

/// Delivers numbered events round-robin to orgs `0..orgs` as Webex does (to the queue if it
/// receives, and as a webhook if one is registered) until `stop`; returns (n, org, queued,
/// webhook status) of each.
fn start_traffic(
    sim: &Sim,
    orgs: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, usize, bool, u16)>> {
    let sim = sim.clone();
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let i = (n as usize) % orgs;
            let report = sim
                .deliver(i, &[numbered_event(&sim, i, "Test.Switch", n)])
                .await;
            let status = report.webhook_statuses.first().copied().unwrap_or(0);
            sent.push((n, i, report.queued == 1, status));
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    })
}

#[actix_web::test]
async fn switching_transports_under_traffic_loses_nothing_and_writes_nothing_twice() {
    const ORGS: usize = 3;
    let env = TestEnv::start(delayed_sim(ORGS)).await;
    let (sim, prefix) = (&env.sim, &env.prefix);
    let overlap = OVERLAP.as_secs().to_string();
    let engine = env
        .engine(&[
            ("INTEGRATION__INGEST", "both"),
            ("ACTIVATION__TRANSPORT_OVERLAP_SECS", &overlap),
        ])
        .await;
    let base = engine.admin_url();
    let mut ids = Vec::new();
    for i in 0..ORGS {
        ids.push(activate_org(sim, &base, i).await);
    }
    // Both transports carry every org's messages (the webhook once Webex applied it).
    assert!(
        eventually(Duration::from_secs(10), || async {
            (0..ORGS)
                .all(|i| transports(sim, i) == (true, true, false) && sim.last_poll(i).is_some())
        })
        .await,
        "the activations did not enable both transports"
    );
    // Starting points: org 0 on the webhook alone, org 1 on the queue alone (both → one: the
    // other is removed at once, there being nothing new to wait for); org 2 stays on both.
    for (i, mode) in [(0, "webhook"), (1, "queue")] {
        let (status, body) = set_ingest(&base, &ids[i], mode).await;
        assert_eq!(status, 202, "{body}");
    }
    assert!(switched(&base, &ids[0], "webhook", OVERLAP * 4).await);
    assert!(switched(&base, &ids[1], "queue", OVERLAP * 4).await);
    assert!(
        eventually(APPLY_DELAY * 5, || async {
            transports(sim, 0) == (true, false, true) && transports(sim, 1) == (false, true, false)
        })
        .await,
        "starting points not in effect at the simulator: {:?} {:?}",
        transports(sim, 0),
        transports(sim, 1)
    );

    // Under traffic: webhook → queue, queue → webhook, both → webhook.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = start_traffic(sim, ORGS, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut overlap_until = HashMap::new();
    for (i, mode) in [(0, "queue"), (1, "webhook"), (2, "webhook")] {
        let (status, body) = set_ingest(&base, &ids[i], mode).await;
        assert_eq!(status, 202, "org {i}: {body}");
        let sw = &body["transport_switch"];
        if i < 2 {
            // The new transport is enabled (and read) before the answer; the old one stays.
            assert_eq!(sw["to"], mode, "org {i}: {body}");
            assert_eq!(sw["phase"], "overlap", "org {i}: {body}");
            assert_eq!(sw["trackingId"].as_str().map(str::len), Some(32), "{body}");
            assert_eq!(body["ingest"], "both", "org {i}: {body}");
            let until: chrono::DateTime<chrono::Utc> =
                sw["overlap_until"].as_str().unwrap().parse().unwrap();
            overlap_until.insert(ids[i].clone(), until);
        } else {
            // Both → webhook: nothing new to wait for; the queue goes at once (the switch may
            // be over before the answer).
            assert!(sw.is_null() || sw["to"] == mode, "org {i}: {body}");
        }
    }
    let limit = OVERLAP * 4 + APPLY_DELAY * 2;
    for (i, mode) in [(0, "queue"), (1, "webhook"), (2, "webhook")] {
        assert!(
            switched(&base, &ids[i], mode, limit).await,
            "org {i} did not reach {mode}: {}",
            admin_tenant(&base, &ids[i]).await
        );
    }
    // Each old transport went only once its overlap had run (the lifecycle entry is written
    // after the removal).
    // (The lifecycle entry follows the record's change.)
    assert!(
        eventually(Duration::from_secs(5), || async {
            ingest_changes(env.redis, prefix).len() == 5
        })
        .await,
        "{:?}",
        ingest_changes(env.redis, prefix)
    );
    let changes = ingest_changes(env.redis, prefix);
    for (tenant, until) in &overlap_until {
        let (_, ts, reason) = changes.iter().rfind(|c| &c.0 == tenant).unwrap();
        assert!(
            ts >= until,
            "{tenant}: removed at {ts}, overlap until {until}"
        );
        assert!(
            reason == "webhook -> queue" || reason == "queue -> webhook",
            "{reason}"
        );
    }
    // The simulator shows each old transport removed.
    assert!(
        eventually(APPLY_DELAY * 5, || async {
            transports(sim, 0) == (false, true, false)
                && transports(sim, 1) == (true, false, true)
                && transports(sim, 2) == (true, false, true)
        })
        .await,
        "old transports not removed at the simulator: {:?} {:?} {:?}",
        transports(sim, 0),
        transports(sim, 1),
        transports(sim, 2)
    );
    // Traffic goes on over the new transports alone for a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();

    // No message met a moment with no transport at all.
    let undelivered: Vec<&(u64, usize, bool, u16)> = sent
        .iter()
        .filter(|(_, _, queued, status)| !queued && *status != 200)
        .collect();
    assert!(
        undelivered.is_empty(),
        "messages no transport carried: {undelivered:?}"
    );
    // Org 0's queue is drained and polled again since (a poller writes its batch before it
    // polls again).
    assert!(
        eventually(Duration::from_secs(10), || async { sim.queue_len(0) == 0 }).await,
        "org 0's queue not drained"
    );
    let drained_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.last_poll(0).is_some_and(|t| t > drained_at)
        })
        .await
    );
    let seen = events_seen(&env.redis.client(), prefix, sim, ORGS, "Test.Switch");
    let missing: Vec<u64> = sent
        .iter()
        .filter(|(n, ..)| !seen.contains_key(n))
        .map(|(n, ..)| *n)
        .collect();
    let doubled: Vec<(u64, usize)> = seen
        .iter()
        .filter(|(_, c)| **c != 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "of {} messages: missing {missing:?}, written more than once {doubled:?}",
        sent.len()
    );
    assert_eq!(seen.len(), sent.len(), "a message never sent was written");
    let both_ways = |i: usize| {
        sent.iter()
            .filter(|(_, o, q, s)| *o == i && *q && *s == 200)
            .count()
    };
    assert!(
        (0..ORGS).all(|i| both_ways(i) > 0),
        "the overlap carried no message over both transports: {:?}",
        (0..ORGS).map(both_ways).collect::<Vec<_>>()
    );
    // Each switch is counted.
    assert_eq!(
        scrape(
            &base,
            "xapi_stream_transport_switches_total{result=\"completed\"}"
        )
        .await,
        5.0
    );
    eprintln!(
        "{} messages over 3 switches, {} carried by both transports, each written once",
        sent.len(),
        (0..ORGS).map(both_ways).sum::<usize>()
    );
    drop(engine);
    sim.shutdown().await;
}

/// The `ingest_changed` lifecycle entries: (tenant, ts, reason).
fn ingest_changes(
    redis: &RedisServer,
    prefix: &str,
) -> Vec<(String, chrono::DateTime<chrono::Utc>, String)> {
    lifecycle_entries(redis, prefix, "ingest_changed")
        .into_iter()
        .map(|mut e| {
            (
                e.remove("tenant").unwrap(),
                e["ts"].parse().unwrap(),
                e.remove("reason").unwrap(),
            )
        })
        .collect()
}

/// The replica holding org `i`'s lease.
fn lease_holder(redis: &RedisServer, prefix: &str, sim: &Sim, i: usize) -> Option<String> {
    lease_holders(redis, prefix, sim, i + 1).remove(&i)
}

/// Lease TTL and `webex.http_timeout_secs` of this file's engine processes.
const LEASE_TTL: Duration = Duration::from_secs(6);
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// One organization's tenant on two engine processes (ids r0 and r1) reading `ingest` and
/// switching with `overlap`, activated and leased.
struct TwoReplicas {
    env: TestEnv<RedisServer>,
    replicas: HashMap<String, Replica>,
    tenant: String,
    /// The replica holding the tenant's lease, and the other.
    owner: String,
    other: String,
}

async fn two_replicas(ingest: &str, overlap: Duration) -> TwoReplicas {
    let env = TestEnv::own(delayed_sim(1)).await;
    let overlap = overlap.as_secs().to_string();
    let (ttl, timeout) = (
        LEASE_TTL.as_secs().to_string(),
        HTTP_TIMEOUT.as_secs().to_string(),
    );
    let vars = with_settings(
        env.replica_env(),
        &[
            ("INTEGRATION__INGEST", ingest),
            ("ACTIVATION__TRANSPORT_OVERLAP_SECS", &overlap),
            ("SCALING__LEASE_TTL_SECS", &ttl),
            ("WEBEX__HTTP_TIMEOUT_SECS", &timeout),
            ("SERVER__WORKERS", "1"),
            ("LOG__LEVEL", "info"),
            ("LOG__FORMAT", "text"),
        ],
    );
    let mut replicas = HashMap::new();
    for id in ["r0", "r1"] {
        let r = Replica::spawn(id, &vars);
        wait_ready(&r.base, Duration::from_secs(20)).await;
        replicas.insert(id.to_string(), r);
    }
    let tenant = activate_org(&env.sim, &replicas["r0"].base, 0).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_holder(&env.redis, &env.prefix, &env.sim, 0).is_some()
        })
        .await
    );
    let owner = lease_holder(&env.redis, &env.prefix, &env.sim, 0).unwrap();
    let other = if owner == "r0" { "r1" } else { "r0" }.to_string();
    TwoReplicas {
        env,
        replicas,
        tenant,
        owner,
        other,
    }
}

#[actix_web::test]
async fn a_kill_9_of_the_owner_in_the_overlap_leaves_the_survivor_to_finish_the_switch() {
    const OVERLAP_HERE: Duration = Duration::from_secs(10);
    let TwoReplicas {
        env,
        mut replicas,
        tenant,
        owner,
        other: survivor,
    } = two_replicas("webhook", OVERLAP_HERE).await;
    let (sim, prefix) = (&env.sim, &env.prefix);
    // Asked of the owner: it sends the enabling PATCH and would remove the webhook later.
    let (status, body) = set_ingest(&replicas[&owner].base, &tenant, "queue").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["transport_switch"]["phase"], "overlap", "{body}");
    let until: chrono::DateTime<chrono::Utc> = body["transport_switch"]["overlap_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    replicas.get_mut(&owner).unwrap().kill();
    let killed_at = Instant::now();
    let survivor = &replicas[&survivor];
    // The survivor takes the lease over within its TTL, polls the new queue, and once the
    // overlap has run removes the webhook.
    let bound = OVERLAP_HERE + LEASE_TTL + Duration::from_secs(5);
    assert!(
        switched(&survivor.base, &tenant, "queue", bound).await,
        "the survivor did not finish the switch: {}\n{}",
        admin_tenant(&survivor.base, &tenant).await,
        survivor.log_tail()
    );
    assert!(
        eventually(APPLY_DELAY * 5, || async {
            transports(sim, 0) == (false, true, false)
        })
        .await,
        "webhook not removed at the simulator: {:?}",
        transports(sim, 0)
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.last_poll(0).is_some_and(|t| t > killed_at)
        })
        .await,
        "the survivor does not poll the queue"
    );
    assert_eq!(
        lease_holder(&env.redis, prefix, sim, 0).as_deref(),
        Some(survivor.id.as_str())
    );
    // The removal came after the overlap (the lifecycle entry follows the record's change).
    assert!(
        eventually(Duration::from_secs(5), || async {
            ingest_changes(&env.redis, prefix).len() == 1
        })
        .await
    );
    let changes = ingest_changes(&env.redis, prefix);
    assert!(
        changes[0].1 >= until && changes[0].2 == "webhook -> queue",
        "{changes:?}"
    );
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_refused_switch_leaves_the_tenant_as_it_was_and_says_why() {
    let env = TestEnv::start(SimConfig {
        orgs: 1,
        devices_per_org: 1,
        poll_wait: POLL_WAIT,
        ..Default::default()
    })
    .await;
    let sim = &env.sim;
    let engine = env
        .engine(&[
            ("INTEGRATION__INGEST", "webhook"),
            ("ACTIVATION__TRANSPORT_OVERLAP_SECS", "600"),
        ])
        .await;
    let base = engine.admin_url();
    let id = activate_org(sim, &base, 0).await;
    let before = sim.app_state(0).patches.len();

    // Not a mode, or more than the mode: 400, nothing sent to Webex.
    for body in [
        json!({ "ingest": "pigeon" }),
        json!({ "ingest": "queue", "region": "x" }),
        json!({}),
    ] {
        let r = reqwest::Client::new()
            .patch(format!("{base}/admin/tenants/{id}"))
            .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["trackingId"].as_str().map(str::len), Some(32), "{e}");
    }
    assert_eq!(sim.app_state(0).patches.len(), before);

    // Webex refuses the PATCH enabling the queue: 502 with its answer; the tenant reads the
    // webhook as before, and its last_error says why.
    sim.refuse_next_patches(0, 1);
    let (status, body) = set_ingest(&base, &id, "queue").await;
    assert_eq!(status, 502, "{body}");
    let description = body["description"].as_str().unwrap();
    assert!(
        description.contains("refused")
            && description.contains("queue")
            && description.contains("400"),
        "{description}"
    );
    let t = admin_tenant(&base, &id).await;
    assert_eq!(t["ingest"], "webhook", "{t}");
    assert!(t["transport_switch"].is_null(), "{t}");
    let why = t["last_error"]["description"].as_str().unwrap_or("");
    assert!(why.contains("refused enabling the queue"), "{t}");
    assert_eq!(transports(sim, 0), (true, false, false));
    assert_eq!(
        scrape(
            &base,
            "xapi_stream_transport_switches_total{result=\"refused\"}"
        )
        .await,
        1.0
    );

    // Asked again, Webex takes it: the switch runs (a 600-s overlap); asking for it again
    // changes nothing, asking for another target meanwhile is refused (409).
    let (status, body) = set_ingest(&base, &id, "queue").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["transport_switch"]["phase"], "overlap", "{body}");
    let (status, again) = set_ingest(&base, &id, "queue").await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        again["transport_switch"]["trackingId"],
        body["transport_switch"]["trackingId"]
    );
    let (status, busy) = set_ingest(&base, &id, "both").await;
    assert_eq!(status, 409, "{busy}");
    assert!(
        busy["description"]
            .as_str()
            .is_some_and(|d| d.contains("a switch to queue is under way")),
        "{busy}"
    );
    assert_eq!(transports(sim, 0), (true, true, false));
    drop(engine);
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_requester_killed_before_webex_answered_leaves_the_owner_to_send_the_patch_again() {
    // The owner takes an enabling PATCH over once the requester's could no longer be in
    // flight: twice (3 × webex.http_timeout_secs + 5 s).
    let takeover = (HTTP_TIMEOUT * 3 + Duration::from_secs(5)) * 2;
    let TwoReplicas {
        env,
        mut replicas,
        tenant,
        owner,
        other: requester,
    } = two_replicas("queue", OVERLAP).await;
    let (sim, prefix) = (&env.sim, &env.prefix);
    // The requester's PATCH is applied by Webex, its answer held; the requester dies.
    sim.hold_patch_answers(0, true);
    let (base, id) = (replicas[&requester].base.clone(), tenant.clone());
    // (Its caller gets no answer: the connection dies with the process.)
    let asked = tokio::spawn(async move {
        reqwest::Client::new()
            .patch(format!("{base}/admin/tenants/{id}"))
            .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
            .json(&json!({ "ingest": "webhook" }))
            .send()
            .await
            .is_err()
    });
    assert!(
        eventually(HTTP_TIMEOUT, || async { sim.patch_answers_held(0) == 1 }).await,
        "the requester's PATCH did not arrive"
    );
    replicas.get_mut(&requester).unwrap().kill();
    sim.hold_patch_answers(0, false);
    assert!(asked.await.unwrap(), "the killed requester answered");
    let owner = &replicas[&owner];
    let t = admin_tenant(&owner.base, &tenant).await;
    assert_eq!(t["transport_switch"]["phase"], "enabling", "{t}");
    assert_eq!(t["ingest"], "queue", "{t}");
    // The owner sends it again once the requester's can no longer be in flight, then the
    // switch runs its course.
    // The takeover, the overlap, then a poll sent after it (and the engine's 2-s allowance for
    // clocks) that found the queue empty — up to two polls' wait — with the switch looking at
    // the record every second, and slack.
    let bound = takeover + OVERLAP + POLL_WAIT * 2 + Duration::from_secs(10);
    assert!(
        switched(&owner.base, &tenant, "webhook", bound).await,
        "the owner did not finish the switch: {}\n{}",
        admin_tenant(&owner.base, &tenant).await,
        owner.log_tail()
    );
    let enabling: Vec<Value> = sim
        .app_state(0)
        .patches
        .into_iter()
        .filter(|p| p["webhook"]["targetUrl"].is_string())
        .collect();
    assert_eq!(
        enabling.len(),
        2,
        "the requester's and the owner's: {enabling:?}"
    );
    assert!(
        eventually(APPLY_DELAY * 5, || async {
            transports(sim, 0) == (true, false, true)
        })
        .await,
        "{:?}",
        transports(sim, 0)
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            ingest_changes(&env.redis, prefix).len() == 1
        })
        .await
    );
    assert_eq!(ingest_changes(&env.redis, prefix)[0].2, "queue -> webhook");
    sim.shutdown().await;
}

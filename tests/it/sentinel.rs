//! Redis Sentinel: the engine finds the master through the sentinels and follows a failover.
//! A master, two replicas (so one is left to confirm `WAIT` once the other is promoted) and
//! three sentinels; the engine under webhook load with `redis.wait_replicas = 1` and every
//! tenant's queue polled; its `redis.url` names no server at all (only its scheme counts).
//! - kill -9 of the master;
//! - the master paused (SIGSTOP) past the failover, then resumed: it rejoins as a replica.
//!
//! Each case checks: every message answered 200 is on the final master exactly once; the
//! webhooks refused meanwhile got 503 with `Retry-After` and a trackingId, none hung; 200s came
//! back; every queue tenant was polled again and its queued message landed; no tenant is left
//! `invalid` or without its lease.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use xapi_stream::devkit::redis_sentinel::{
    DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, MASTER_NAME, SentinelSet, info,
};
use xapi_stream::devkit::sim::{SimConfig, sign_webhook};

use crate::utils::*;

/// Organizations (each a webhook and a queue tenant: `integration.ingest = "both"`).
const ORGS: usize = 3;
/// Concurrent webhook senders.
const SENDERS: usize = 8;
/// The engine answers a webhook within 5 s whatever Redis does (the contract's bound); a
/// request still unanswered after this much longer counts as hanging.
const HANG: Duration = Duration::from_secs(15);
/// Once the sentinels have promoted a replica, the engine learns it from `+switch-master` at
/// once, or from its own lookup within `sentinel::RECHECK` (5 s) if the announcement was
/// missed; then one reconnection. Webhooks are answered 200 again within this.
const BACK_AFTER_PROMOTION: Duration = Duration::from_secs(15);

/// One webhook's answer.
#[derive(Clone, Debug)]
struct Answer {
    n: u64,
    /// 0: no HTTP answer within [`HANG`].
    status: u16,
    retry_after: bool,
    body: Option<Value>,
    sent: Instant,
    done: Instant,
}

enum Fault {
    /// kill -9 of the master.
    Kill,
    /// SIGSTOP of the master until the sentinels have promoted a replica, then SIGCONT.
    PauseThenResume,
}

async fn failover_under_load(fault: Fault) {
    let mut set = tokio::task::spawn_blocking(|| SentinelSet::start(2, 3))
        .await
        .unwrap()
        .expect("master, 2 replicas and 3 sentinels start and settle");
    let first_master = set.master_port().expect("the sentinels name the master");
    assert_eq!(first_master, set.nodes[0].port());
    let prefix = unique_prefix();
    let sim = start_sim(SimConfig {
        orgs: ORGS,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let sentinels = set.sentinel_addrs().join(",");
    let engine = start_engine(
        &sim,
        // Port 1: nothing listens there; the master comes from the sentinels.
        "redis://127.0.0.1:1",
        &prefix,
        &[
            ("REDIS__SENTINELS", sentinels.as_str()),
            ("REDIS__SENTINEL_MASTER", MASTER_NAME),
            ("REDIS__WAIT_REPLICAS", "1"),
            ("REDIS__WAIT_TIMEOUT_MS", "300"),
            ("INTEGRATION__INGEST", "both"),
        ],
    )
    .await;
    let base = engine.base_url();
    let admin = engine.admin_url();
    let mut targets = Vec::new();
    for i in 0..ORGS {
        let id = activate_org(&sim, &base, i).await;
        targets.push((id, sim.app_state(i).webhook.unwrap().secret.unwrap()));
    }
    let targets = Arc::new(targets);

    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<std::sync::Mutex<Vec<Answer>>> = Default::default();
    let http = reqwest::Client::builder().timeout(HANG).build().unwrap();
    let load: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (sim, targets, next, stop, answered, http, base) = (
                sim.clone(),
                targets.clone(),
                next.clone(),
                stop.clone(),
                answered.clone(),
                http.clone(),
                base.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let i = (n % ORGS as u64) as usize;
                    let body =
                        serde_json::to_vec(&numbered_event(&sim, i, "Test.Failover", n)).unwrap();
                    let (id, secret) = &targets[i];
                    let sent = Instant::now();
                    let r = http
                        .post(format!("{base}/tenants/{id}/webhook"))
                        .header("X-Spark-Signature", sign_webhook(secret, &body))
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let answer = match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let retry_after = r.headers().contains_key("retry-after");
                            let body = if status == 200 {
                                None
                            } else {
                                r.json().await.ok()
                            };
                            Answer {
                                n,
                                status,
                                retry_after,
                                body,
                                sent,
                                done: Instant::now(),
                            }
                        }
                        Err(_) => Answer {
                            n,
                            status: 0,
                            retry_after: false,
                            body: None,
                            sent,
                            done: Instant::now(),
                        },
                    };
                    let refused = answer.status != 200;
                    answered.lock().unwrap().push(answer);
                    if refused {
                        // As a sender honouring Retry-After would, without waiting the whole second.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let count_200 = || {
        answered
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.status == 200)
            .count()
    };
    assert!(
        eventually(Duration::from_secs(30), || async { count_200() >= 200 }).await,
        "webhooks not accepted before the failover"
    );

    // The fault.
    let fault_at = Instant::now();
    let paused = match fault {
        Fault::Kill => {
            set.nodes[0].kill();
            false
        }
        Fault::PauseThenResume => {
            set.nodes[0].pause();
            true
        }
    };
    // Sentinel's own bounds: down after DOWN_AFTER_MS, a failover attempt within
    // FAILOVER_TIMEOUT_MS (retried after twice that); then the engine's lookup and reconnect.
    let failover_bound =
        Duration::from_millis(DOWN_AFTER_MS + 3 * FAILOVER_TIMEOUT_MS) + Duration::from_secs(20);
    let promoted = {
        let set = &set;
        let mut port = None;
        let found = eventually(failover_bound, || {
            let p = set.master_port().filter(|&p| p != first_master);
            port = p;
            async move { p.is_some() }
        })
        .await;
        assert!(
            found,
            "the sentinels promoted no replica within {failover_bound:?}"
        );
        port.unwrap()
    };
    let promoted_at = fault_at.elapsed();
    let first_200_again = {
        let answered = answered.clone();
        let found = eventually(BACK_AFTER_PROMOTION, || {
            let ok = answered
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.status == 200 && a.sent > fault_at + promoted_at);
            async move { ok }
        })
        .await;
        assert!(
            found,
            "no webhook sent after the promotion answered 200 within {BACK_AFTER_PROMOTION:?}"
        );
        // The first 200 answered after the fault to a request sent after it.
        answered
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.status == 200 && a.sent > fault_at)
            .map(|a| a.done.duration_since(fault_at))
            .min()
            .unwrap()
    };
    if paused {
        // Back from the pause: the sentinels turn the old master into a replica of the new one.
        set.nodes[0].resume();
        let old = &set.nodes[0];
        assert!(
            eventually(Duration::from_secs(60), || async {
                info(old, "replication").is_some_and(|i| {
                    i.contains("role:slave")
                        && i.contains(&format!("master_port:{promoted}"))
                        && i.contains("master_link_status:up")
                })
            })
            .await,
            "the resumed master did not rejoin as a replica of the promoted one"
        );
    }

    // Every queue tenant is polled again: a message queued now lands on the new master.
    let queued_at = Instant::now();
    for i in 0..ORGS {
        sim.enqueue(i, numbered_event(&sim, i, "Test.Queued", i as u64));
    }
    let new_master = set.node(promoted).unwrap().client();
    assert!(
        eventually(Duration::from_secs(30), || async {
            let seen = events_seen(&new_master, &prefix, &sim, ORGS, "Test.Queued");
            (0..ORGS as u64).all(|i| seen.get(&i) == Some(&1))
        })
        .await,
        "a queued message did not land on the new master: {:?}",
        events_seen(&new_master, &prefix, &sim, ORGS, "Test.Queued")
    );
    let polled_again = (0..ORGS)
        .filter(|&i| sim.last_poll(i).is_some_and(|t| t > queued_at))
        .count();

    // More traffic on the new master, then stop.
    let before = count_200();
    assert!(
        eventually(Duration::from_secs(30), || async {
            count_200() >= before + 100
        })
        .await,
        "webhooks not accepted after the failover"
    );
    stop.store(true, Ordering::Relaxed);
    futures::future::join_all(load).await;
    let answered = answered.lock().unwrap().clone();

    // Only 200 and 503; every 503 says when to retry and has its trackingId.
    let hung: Vec<&Answer> = answered.iter().filter(|a| a.status == 0).collect();
    assert!(
        hung.is_empty(),
        "{} webhooks got no answer within {HANG:?}",
        hung.len()
    );
    let others: Vec<(u64, u16)> = answered
        .iter()
        .filter(|a| a.status != 200 && a.status != 503)
        .map(|a| (a.n, a.status))
        .collect();
    assert!(others.is_empty(), "only 200 and 503 expected: {others:?}");
    let refused: Vec<&Answer> = answered.iter().filter(|a| a.status == 503).collect();
    for a in &refused {
        assert!(a.retry_after, "503 without Retry-After");
        let body = a.body.clone().unwrap_or(Value::Null);
        assert!(
            body["trackingId"].as_str().is_some_and(|t| t.len() == 32),
            "{body}"
        );
    }
    // Every 200 is on the new master, exactly once; nothing refused is there twice.
    let seen = events_seen(&new_master, &prefix, &sim, ORGS, "Test.Failover");
    let ok: Vec<u64> = answered
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.n)
        .collect();
    let lost: Vec<u64> = ok
        .iter()
        .copied()
        .filter(|n| seen.get(n) != Some(&1))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} messages answered 200 are not on the new master exactly once: {lost:?}",
        lost.len(),
        ok.len()
    );
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");

    // Every queue tenant polled again; no tenant invalid; every lease held by this replica.
    assert_eq!(
        polled_again, ORGS,
        "queue tenants polled again after the failover"
    );
    let tenants = admin_get(&admin, "/admin/tenants").await;
    for t in tenants.as_array().unwrap() {
        assert_eq!(t["provisioning_state"], "completed", "{t}");
        assert_eq!(t["tokens_state"], "valid", "{t}");
    }
    let mut conn = new_master.get_connection().unwrap();
    for i in 0..ORGS {
        let org = sim.org(i).org_id;
        let lease: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:{{{org}}}:lease"))
            .query(&mut conn)
            .unwrap();
        assert!(lease.is_some(), "org {i} has no lease on the new master");
    }
    assert!(scrape(&admin, "xapi_stream_redis_master_switches_total").await >= 1.0);
    wait_ready(&admin, Duration::from_secs(10)).await;

    eprintln!(
        "sentinel failover ({}): {} answered 200 (all on the new master once), {} answered 503 \
         with Retry-After; replica promoted {:.1} s after the fault; first 200 again {:.1} s \
         after the fault; {polled_again} of {ORGS} queue tenants polled \
         again",
        if paused {
            "SIGSTOP, then SIGCONT"
        } else {
            "kill -9"
        },
        ok.len(),
        refused.len(),
        promoted_at.as_secs_f64(),
        first_200_again.as_secs_f64(),
    );
    engine.shutdown().await;
    sim.shutdown().await;
    drop(set);
}

#[actix_web::test]
async fn sentinel_kill_9_of_the_master_loses_no_200() {
    failover_under_load(Fault::Kill).await;
}

#[actix_web::test]
async fn sentinel_master_paused_past_the_failover_rejoins_as_a_replica_and_nothing_is_lost() {
    failover_under_load(Fault::PauseThenResume).await;
}

//! Failover without a stranded tenant: a replica killed inside a token exchange (the simulator
//! holds the token endpoint's answer after rotating, so the kill lands in the window that
//! rotation cannot close) costs exactly that tenant's refresh token — reported with the crash
//! reason, counted, and in the lifecycle stream — while every other tenant of the dead replica
//! is polled again within the lease TTL plus one ownership round (plus one call to Webex),
//! even one whose first poll after the takeover fails. A drain (SIGTERM) lets an exchange in
//! flight finish and store its result before the process exits.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use xapi_stream::devkit::redis_server::RedisServer;
use xapi_stream::devkit::sim::{Sim, SimConfig};

use crate::utils::*;

/// Lease TTL of these tests (the default is 30 s); a round is TTL/6.
const LEASE_TTL: Duration = Duration::from_secs(6);
const ROUND: Duration = Duration::from_secs(1);
/// `webex.http_timeout_secs`: bounds one call to Webex (a token exchange, the first poll's
/// request).
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// A dead replica's lease expires within the TTL; the next round of a survivor takes it; its
/// first poll goes out after at most one call to Webex.
const RESUME_BOUND: Duration =
    Duration::from_secs(LEASE_TTL.as_secs() + ROUND.as_secs() + HTTP_TIMEOUT.as_secs());
/// The reason a tenant's tokens show `invalid` after such a crash starts with this.
const CRASH_REASON: &str = "refresh token lost in a crash during exchange";

fn replica_env(sim: &Sim, redis: &RedisServer, prefix: &str) -> Vec<(String, String)> {
    with_settings(
        xapi_stream::devkit::devenv::engine_env(sim, &redis.url(), prefix),
        &[
            ("INTEGRATION__INGEST", "queue"),
            ("SCALING__LEASE_TTL_SECS", "6"),
            ("WEBEX__HTTP_TIMEOUT_SECS", "3"),
            ("SERVER__WORKERS", "1"),
            ("LOG__LEVEL", "info"),
            ("LOG__FORMAT", "text"),
        ],
    )
}

/// The `tokens_invalid` lifecycle entries: (tenant, reason).
fn tokens_invalid_entries(redis: &RedisServer, prefix: &str) -> Vec<(String, String)> {
    lifecycle_entries(redis, prefix, "tokens_invalid")
        .into_iter()
        .map(|mut e| {
            (
                e.remove("tenant").unwrap_or_default(),
                e.remove("reason").unwrap_or_default(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn a_kill_inside_a_token_exchange_costs_that_tenant_only_and_says_why() {
    const TENANTS: usize = 24;
    // Two-hour tokens: no exchange happens unless the test causes one, so exactly one is in
    // flight when the replica dies.
    let TestEnv { redis, prefix, sim } = TestEnv::own(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        poll_wait: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let env = replica_env(&sim, &redis, &prefix);
    let survivor = Replica::spawn("r0", &env);
    let mut victim = Replica::spawn("r1", &env);
    for r in [&survivor, &victim] {
        wait_ready(&r.base, Duration::from_secs(20)).await;
    }
    let mut tenant_ids = Vec::new();
    for i in 0..TENANTS {
        let (status, body) = admin_activate(&survivor.base, &sim.activation_jwt(i)).await;
        assert_eq!(status, 202, "{body}");
        tenant_ids.push(body["tenant_id"].as_str().unwrap().to_string());
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            (0..TENANTS).all(|i| {
                sim.app_state(i).provisioning_state.as_deref() == Some("completed")
                    && sim.last_poll(i).is_some()
            }) && lease_holders(&redis, &prefix, &sim, TENANTS).len() == TENANTS
        })
        .await,
        "not every tenant completed, leased and polled"
    );
    let victims: Vec<usize> = lease_holders(&redis, &prefix, &sim, TENANTS)
        .into_iter()
        .filter(|(_, r)| *r == victim.id)
        .map(|(i, _)| i)
        .collect();
    assert!(victims.len() >= 3, "the victim owns {victims:?}");
    let (x, y) = (victims[0], victims[1]);

    // Make the victim exchange x's refresh token (its access token is refused), and hold the
    // answer after the rotation: the kill lands inside the exchange.
    sim.hold_token_answers(x, true);
    sim.revoke_access_tokens(x);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.token_answers_held(x) == 1
        })
        .await,
        "the victim did not exchange x's refresh token"
    );
    victim.kill();
    let killed_at = Instant::now();
    sim.hold_token_answers(x, false); // answered into a dead socket
    // The survivor's first poll of y fails.
    sim.fail_next_polls(y, 1);

    // Every other tenant of the dead replica is polled again within the bound, y included.
    let mut resumed: HashMap<usize, Duration> = HashMap::new();
    let others: Vec<usize> = victims.iter().copied().filter(|&i| i != x).collect();
    while resumed.len() < others.len() && killed_at.elapsed() < RESUME_BOUND * 2 {
        for &i in &others {
            if !resumed.contains_key(&i) && sim.last_poll(i).is_some_and(|t| t > killed_at) {
                resumed.insert(i, killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late: Vec<(usize, Option<Duration>)> = others
        .iter()
        .map(|i| (*i, resumed.get(i).copied()))
        .filter(|(_, d)| d.is_none_or(|d| d > RESUME_BOUND))
        .collect();
    assert!(
        late.is_empty(),
        "tenants of the killed replica not polled again within {RESUME_BOUND:?} (TTL + one round + one call): {late:?}"
    );
    eprintln!(
        "{} tenants resumed, slowest {:?} (y, whose first poll failed: {:?})",
        resumed.len(),
        resumed.values().max(),
        resumed.get(&y)
    );

    // x: invalid, with the crash reason and a trackingId; counted; in the lifecycle stream.
    let tenant_x = &tenant_ids[x];
    assert!(
        eventually(RESUME_BOUND, || async {
            admin_tenant(&survivor.base, tenant_x).await["tokens_state"] == "invalid"
        })
        .await,
        "x not marked invalid: {}",
        admin_tenant(&survivor.base, tenant_x).await
    );
    let shown: Value = admin_tenant(&survivor.base, tenant_x).await;
    let description = shown["last_error"]["description"].as_str().unwrap_or("");
    assert!(
        description.starts_with(CRASH_REASON),
        "last_error of x: {shown}"
    );
    let tracking = shown["last_error"]["trackingId"].as_str().unwrap_or("");
    assert!(
        tracking.len() == 32 && tracking.chars().all(|c| c.is_ascii_hexdigit()),
        "{tracking:?}"
    );
    assert!(
        survivor.log_lines(10_000).contains(tracking),
        "the trackingId is not in the survivor's log"
    );
    assert_eq!(
        scrape(&survivor.base, "xapi_stream_token_exchanges_lost_total").await,
        1.0
    );
    let entries = tokens_invalid_entries(&redis, &prefix);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(&entries[0].0, tenant_x);
    assert!(entries[0].1.starts_with(CRASH_REASON), "{entries:?}");
    // Exactly that tenant: its spent token was presented once; every other tenant is valid.
    for (i, id) in tenant_ids.iter().enumerate() {
        let expected = u64::from(i == x);
        assert_eq!(sim.reused_refresh_tokens(i), expected, "org {i}");
        if i != x {
            let t = admin_tenant(&survivor.base, id).await;
            assert_eq!(t["tokens_state"], "valid", "org {i}: {t}");
        }
    }
    drop(survivor);
    sim.shutdown().await;
}

/// SIGTERM while a token exchange is in flight, with a shutdown grace shorter than the
/// exchange takes: the exchange finishes and stores the rotated refresh token before the
/// process exits 0, so the next engine exchanges it without a refusal.
#[actix_web::test]
async fn a_drain_lets_a_token_exchange_in_flight_store_its_result() {
    let TestEnv { redis, prefix, sim } = TestEnv::own(SimConfig {
        orgs: 1,
        devices_per_org: 1,
        poll_wait: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let mut env = replica_env(&sim, &redis, &prefix);
    // The grace is shorter than the hold below; the HTTP timeout longer.
    env.push((
        "XAPI_STREAM__SERVER__SHUTDOWN_GRACE_SECS".into(),
        "1".into(),
    ));
    env.push(("XAPI_STREAM__WEBEX__HTTP_TIMEOUT_SECS".into(), "10".into()));
    env.push(("XAPI_STREAM__SCALING__LEASE_TTL_SECS".into(), "30".into()));
    let mut engine = Replica::spawn("d0", &env);
    wait_ready(&engine.base, Duration::from_secs(20)).await;
    let tenant = activate_org(&sim, &engine.base, 0).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.last_poll(0).is_some()
        })
        .await
    );
    sim.hold_token_answers(0, true);
    sim.revoke_access_tokens(0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.token_answers_held(0) == 1
        })
        .await,
        "no exchange started"
    );
    let pid = engine.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    // Hold the answer past the shutdown grace (1 s): children are cancelled by then, the
    // exchange must not be. (Longer than needed only makes the point stronger; the exchange
    // may wait up to the 10-s HTTP timeout.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "the engine exited with an exchange in flight\n{}",
        engine.log_tail()
    );
    sim.hold_token_answers(0, false);
    let status = engine.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", engine.log_tail());
    let mut conn = redis.client().get_connection().unwrap();
    let intent: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:{{{}}}:tenant", sim.org(0).org_id))
        .arg("exchange_intent")
        .query(&mut conn)
        .unwrap();
    assert_eq!(intent, None, "the stored result did not clear the intent");

    // The next engine redeems what the drained one stored.
    let next = Replica::spawn("d1", &env);
    wait_ready(&next.base, Duration::from_secs(20)).await;
    sim.revoke_access_tokens(0);
    let polls = sim.polls();
    assert!(
        eventually(Duration::from_secs(20), || async {
            sim.polls() > polls + 2 && sim.last_poll(0).is_some()
        })
        .await
    );
    let oauth = sim.oauth_stats();
    assert_eq!(oauth.invalid_grant, 0, "{oauth:?}");
    assert_eq!(sim.reused_refresh_tokens(0), 0);
    let t = admin_tenant(&next.base, &tenant).await;
    assert_eq!(t["tokens_state"], "valid", "{t}");
    drop(next);
    drop(engine);
    sim.shutdown().await;
}

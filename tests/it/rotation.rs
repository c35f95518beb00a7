//! Webhook secret rotation: on demand (admin API, CLI) and periodic, under steady traffic from a
//! simulator that applies a changed registration a (test-scaled) while after the PATCH, as Webex
//! does about five minutes later.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::{Sim, SimConfig, WebhookReg};

use crate::ingest::entries;
use crate::utils::*;

/// What the simulator waits after a PATCH before it signs with the new secret (Webex: ≈ 5 min).
const APPLY_DELAY: Duration = Duration::from_secs(2);
/// `security.webhook_secret_overlap_secs` in these tests (at least 600 in production; a
/// simulator setup may scale it down). Longer than the apply delay, as 900 s is longer than 5 min.
const OVERLAP_SECS: u64 = 8;

async fn rotate(admin: &str, tenant: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{admin}/admin/tenants/{tenant}/webhook-secret/rotate"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn secret_of(sim: &Sim) -> Option<String> {
    sim.app_state(0).webhook.and_then(|w| w.secret)
}

/// Every entry of the org's status and events streams.
fn written(
    redis: &xapi_stream::devkit::redis_server::RedisServer,
    prefix: &str,
    sim: &Sim,
) -> usize {
    let org = sim.org(0).org_id;
    ["status", "events"]
        .iter()
        .map(|s| entries(redis, &format!("{prefix}:{{{org}}}:{s}")).len())
        .sum()
}

/// Delivers one fresh message every 20 ms, as Webex would (with whatever registration is in
/// effect), until `stop`; returns every answer's status.
fn steady_traffic(sim: &Sim, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u16>> {
    let sim = sim.clone();
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let msgs = sim.generate(0, 1);
            statuses.extend(sim.deliver(0, &msgs).await.webhook_statuses);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    })
}

/// The acceptance case: a rotation under steady webhook traffic gets zero 401s (the simulator
/// keeps signing with the old secret until it applies the new one), and after the overlap the
/// old secret is refused with nothing written.
#[actix_web::test]
async fn a_rotation_under_steady_traffic_refuses_nothing_and_retires_the_old_secret() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        webhook_apply_delay: APPLY_DELAY,
        ..SimConfig::default()
    })
    .await;
    let overlap = OVERLAP_SECS.to_string();
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("SECURITY__WEBHOOK_SECRET_OVERLAP_SECS", overlap.as_str()),
            ("SECURITY__WEBHOOK_SECRET_ROTATION_DAYS", "0"),
        ],
    )
    .await;
    let admin = engine.admin_url();
    let tenant = activate_org(&sim, &admin, 0).await;
    let old: WebhookReg = sim.app_state(0).webhook.expect("registered");
    let old_secret = old.secret.clone().expect("an hmac secret");

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = steady_traffic(&sim, stop.clone());
    assert!(
        eventually(Duration::from_secs(10), || async {
            written(redis, &prefix, &sim) > 0
        })
        .await,
        "traffic flows before the rotation"
    );
    let (status, body) = rotate(&admin, &tenant).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scheme"], "hmac_signature");
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["previous_valid_until"].clone()).expect("an overlap end");
    let patch = sim.app_state(0).patches.last().cloned().unwrap();
    let new_secret = patch["webhook"]["secret"]
        .as_str()
        .expect("PATCH carries the secret");
    assert_ne!(new_secret, old_secret);
    assert!(new_secret.len() >= 32);
    assert!(
        patch.get("provisioningState").is_none(),
        "only the webhook is PATCHed: {patch}"
    );

    // A second rotation waits for the first one's overlap.
    let (status, body) = rotate(&admin, &tenant).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["trackingId"].as_str().map(str::len),
        Some(32),
        "{body}"
    );

    // The simulator switches to the new secret after its delay; traffic goes on with it.
    assert!(
        eventually(Duration::from_secs(30), || async {
            secret_of(&sim).as_deref() == Some(new_secret)
        })
        .await,
        "the simulator did not apply the new registration"
    );
    let at_switch = written(redis, &prefix, &sim);
    assert!(
        eventually(Duration::from_secs(20), || async {
            written(redis, &prefix, &sim) > at_switch + 5
        })
        .await,
        "traffic signed with the new secret is not written"
    );
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    assert!(
        statuses.len() > 20,
        "steady traffic: {} messages",
        statuses.len()
    );
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        refused.is_empty(),
        "non-200 answers during the rotation: {refused:?}"
    );

    // Past the overlap the old secret is refused, and writes nothing.
    let now = chrono::Utc::now();
    if until > now {
        tokio::time::sleep((until - now).to_std().unwrap()).await;
    }
    let before = written(redis, &prefix, &sim);
    let msg = sim.generate(0, 1).remove(0);
    assert_eq!(
        sim.post_webhook(&old, &msg).await,
        401,
        "the old secret after the overlap"
    );
    let mut new = old.clone();
    new.secret = Some(new_secret.to_string());
    assert_eq!(
        written(redis, &prefix, &sim),
        before,
        "a refused message wrote nothing"
    );
    assert_eq!(sim.post_webhook(&new, &msg).await, 200, "the new secret");

    assert!(
        lifecycle(redis, &prefix).contains(&"secret_rotated".to_string()),
        "a secret_rotated lifecycle entry"
    );
    let rotations = |r: &'static str| {
        let admin = admin.clone();
        async move {
            scrape(
                &admin,
                &format!("xapi_stream_webhook_secret_rotations_total{{result=\"{r}\"}}"),
            )
            .await
        }
    };
    assert_eq!(rotations("rotated").await, 1.0);
    assert_eq!(rotations("busy").await, 1.0);
    engine.shutdown().await;
    sim.shutdown().await;
}

/// A PATCH that Webex refuses leaves the old secret in force, past any overlap: nothing is
/// half-rotated. The next rotation then goes through.
#[actix_web::test]
async fn a_refused_rotation_leaves_the_old_secret_in_force() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("SECURITY__WEBHOOK_SECRET_OVERLAP_SECS", "1"),
            ("SECURITY__WEBHOOK_SECRET_ROTATION_DAYS", "0"),
        ],
    )
    .await;
    let admin = engine.admin_url();
    let tenant = activate_org(&sim, &admin, 0).await;
    let old = sim.app_state(0).webhook.expect("registered");
    let patches = sim.app_state(0).patches.len();

    sim.set_app_url_status(0, Some(400));
    let (status, body) = rotate(&admin, &tenant).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("not rotated"),
        "{body}"
    );
    assert_eq!(body["trackingId"].as_str().map(str::len), Some(32));
    assert_eq!(
        sim.app_state(0).patches.len(),
        patches,
        "Webex took no PATCH"
    );
    sim.set_app_url_status(0, None);

    // Longer than the overlap: the old secret is still the one in force.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msg = sim.generate(0, 1).remove(0);
    assert_eq!(
        sim.post_webhook(&old, &msg).await,
        200,
        "old secret still in force"
    );
    let failed = scrape(
        &admin,
        "xapi_stream_webhook_secret_rotations_total{result=\"failed\"}",
    )
    .await;
    assert_eq!(failed, 1.0);

    // The CLI rotates through the admin API.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_xapi-stream"))
        .args(["rotate-secret", "--tenant", &tenant, "--url", &admin])
        .env("XAPI_STREAM__SERVER__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("XAPI_STREAM__SECURITY__ENCRYPTION_KEY", crate::cli::KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rotated"), "{stdout}");
    let new = sim.app_state(0).webhook.expect("registered");
    assert_ne!(new.secret, old.secret, "the retry went through");
    let msg = sim.generate(0, 1).remove(0);
    assert_eq!(sim.post_webhook(&new, &msg).await, 200);
    engine.shutdown().await;
    sim.shutdown().await;
}

/// `security.webhook_secret_rotation_days` (test-scaled to seconds): the lease holder rotates
/// on its own, again and again, and webhooks keep being accepted with whatever is in effect.
#[actix_web::test]
async fn the_lease_holder_rotates_periodically() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    // A period of 3 s (more than twice the 1-second overlap).
    let days = format!("{}", 3.0 / 86_400.0);
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("SECURITY__WEBHOOK_SECRET_OVERLAP_SECS", "1"),
            ("SECURITY__WEBHOOK_SECRET_ROTATION_DAYS", days.as_str()),
        ],
    )
    .await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    activate_org(&sim, &base, 0).await;
    let first = secret_of(&sim).expect("registered");
    let started = Instant::now();
    let webhook_patches = || {
        sim.app_state(0)
            .patches
            .iter()
            .filter(|p| p.get("webhook").is_some())
            .count()
    };
    // The activation's PATCH, then at least two periodic ones (each 2.7–3 s plus one overlap).
    assert!(
        eventually(Duration::from_secs(60), || async { webhook_patches() >= 3 }).await,
        "{} webhook PATCHes in {:?}",
        webhook_patches(),
        started.elapsed()
    );
    assert_ne!(secret_of(&sim).unwrap(), first);
    let msg = sim.generate(0, 1).remove(0);
    let hook = sim.app_state(0).webhook.unwrap();
    assert_eq!(sim.post_webhook(&hook, &msg).await, 200);
    // A rotation's lifecycle entry and metric follow Webex's answer to its PATCH: the second
    // periodic PATCH may have been seen a moment before they are written.
    let rotated = || {
        lifecycle(redis, &prefix)
            .iter()
            .filter(|e| *e == "secret_rotated")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || async { rotated() >= 2 }).await,
        "{} secret_rotated entries",
        rotated()
    );
    let metric = "xapi_stream_webhook_secret_rotations_total{result=\"rotated\"}";
    assert!(
        eventually(Duration::from_secs(10), || async {
            scrape(&admin, metric).await >= 2.0
        })
        .await
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// Two replicas: a rotation asked of one is honoured by the other at once (it reads the new
/// secret from Redis the first time a webhook signed with it arrives), and both refuse the old
/// secret after the overlap.
#[actix_web::test]
async fn a_rotation_on_one_replica_is_honoured_by_the_other() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    // One encryption key for both (each test engine otherwise gets its own).
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    let env = |id: &'static str| {
        [
            ("SECURITY__ENCRYPTION_KEY", key.as_str()),
            ("SECURITY__WEBHOOK_SECRET_OVERLAP_SECS", "2"),
            ("SECURITY__WEBHOOK_SECRET_ROTATION_DAYS", "0"),
            ("SCALING__REPLICA_ID", id),
        ]
    };
    let a = start_engine(&sim, &redis.url(), &prefix, &env("replica-a")).await;
    let b = start_engine(&sim, &redis.url(), &prefix, &env("replica-b")).await;
    let tenant = activate_org(&sim, &a.admin_url(), 0).await;
    let old = sim.app_state(0).webhook.expect("registered");
    // B knows the tenant too (it follows A's announcements).
    assert!(
        eventually(Duration::from_secs(20), || async {
            admin_tenant(&b.admin_url(), &tenant).await["provisioning_state"] == "completed"
        })
        .await
    );
    let at_a = |hook: &WebhookReg| {
        let mut h = hook.clone();
        h.target_url = format!("{}/tenants/{tenant}/webhook", a.base_url());
        h
    };
    let msg = sim.generate(0, 1).remove(0);
    assert_eq!(sim.post_webhook(&at_a(&old), &msg).await, 200);

    let (status, body) = rotate(&b.admin_url(), &tenant).await;
    assert_eq!(status, 200, "{body}");
    let new = sim.app_state(0).webhook.expect("registered");
    assert_ne!(new.secret, old.secret);
    let msg = sim.generate(0, 1).remove(0);
    assert_eq!(
        sim.post_webhook(&at_a(&new), &msg).await,
        200,
        "A takes the new secret"
    );
    let msg = sim.generate(0, 1).remove(0);
    assert_eq!(
        sim.post_webhook(&at_a(&old), &msg).await,
        200,
        "and the old one, within the overlap"
    );

    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["previous_valid_until"].clone()).unwrap();
    let now = chrono::Utc::now();
    if until > now {
        tokio::time::sleep((until - now).to_std().unwrap()).await;
    }
    for engine in [&a, &b] {
        let mut h = old.clone();
        h.target_url = format!("{}/tenants/{tenant}/webhook", engine.base_url());
        let msg = sim.generate(0, 1).remove(0);
        assert_eq!(
            sim.post_webhook(&h, &msg).await,
            401,
            "old secret after the overlap"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

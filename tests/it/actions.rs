//! Webex → integration actions: healthCheck, update, updateApproved, deprovision; rejections;
//! cleanup when the integration disappears on the Webex side.
use std::time::Duration;

use serde_json::json;
use xapi_stream::devkit::sim::{SimConfig, sign_webhook};

use crate::utils::*;

#[actix_web::test]
async fn health_check_reports_valid_invalid_and_unknown() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;

    let (s, b) = action(&base, &id, &sim.action_jwt(0, "healthCheck", json!({}))).await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"operationalState": "operational", "tokensState": "valid"})
        )
    );

    sim.set_app_url_status(0, Some(500));
    let (s, b) = action(&base, &id, &sim.action_jwt(0, "healthCheck", json!({}))).await;
    assert_eq!((s, b["tokensState"].clone()), (200, json!("unknown")));

    // 401 and the refresh token is dead: invalid.
    sim.set_app_url_status(0, Some(401));
    sim.revoke_refresh_tokens(0);
    let (s, b) = action(&base, &id, &sim.action_jwt(0, "healthCheck", json!({}))).await;
    assert_eq!((s, b["tokensState"].clone()), (200, json!("invalid")));
    assert_eq!(admin_tenant(&base, &id).await["tokens_state"], "invalid");

    // The fix is an update with a new refresh token: tokens are valid again.
    sim.set_app_url_status(0, None);
    let fresh = sim.mint_refresh_token(0);
    let (s, _) = action(
        &base,
        &id,
        &sim.action_jwt(
            0,
            "update",
            json!({"refreshToken": fresh, "region": "eu-central-1_k"}),
        ),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = action(&base, &id, &sim.action_jwt(0, "healthCheck", json!({}))).await;
    assert_eq!((s, b["tokensState"].clone()), (200, json!("valid")));
    let t = admin_tenant(&base, &id).await;
    assert_eq!(t["tokens_state"], "valid");
    assert_eq!(t["region"], "eu-central-1_k");
    assert_eq!(
        sim.oauth_stats().reused,
        0,
        "an old refresh token was used after the update"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn bad_action_tokens_are_rejected_and_change_nothing() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    let six_min_ago = chrono::Utc::now().timestamp() - 360;
    let stale = sim.action_jwt(0, "deprovision", json!({"iat": six_min_ago}));
    let wrong_app = sim.action_jwt(
        0,
        "deprovision",
        json!({"appId": "00000000-0000-4000-8000-000000000000"}),
    );
    let activation = sim.activation_jwt(0);
    let replayed = sim.action_jwt(0, "healthCheck", json!({}));
    assert_eq!(action(&base, &id, &replayed).await.0, 200);
    for (name, jwt) in [
        ("stale", stale),
        ("app id", wrong_app),
        ("activation JWT", activation),
        ("replay", replayed),
    ] {
        let (s, b) = action(&base, &id, &jwt).await;
        assert!((400..500).contains(&s), "{name}: {s} {b}");
        assert_eq!(
            b["trackingId"].as_str().map(str::len),
            Some(32),
            "{name}: {b}"
        );
    }
    assert_eq!(
        admin_tenant(&base, &id).await["provisioning_state"],
        "completed"
    );
    // Unknown tenant: 404.
    assert_eq!(
        action(&base, "nope", &sim.action_jwt(0, "healthCheck", json!({})))
            .await
            .0,
        404
    );
    // Another org's token at this tenant: refused.
    assert_eq!(
        action(&base, &id, &sim.action_jwt(1, "deprovision", json!({})))
            .await
            .0,
        403
    );
    assert_eq!(
        admin_tenant(&base, &id).await["provisioning_state"],
        "completed"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn update_approved_stores_the_new_grant() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    let before = sim.oauth_stats().exchanges_ok;
    let (s, _) = action(
        &base,
        &id,
        &sim.action_jwt(
            0,
            "updateApproved",
            json!({
        "manifestVersion": "3", "scopes": "spark-admin:workspaces_read,spark:xapi_statuses",
        "xapiAccess": {"commands": [], "statuses": ["RoomAnalytics.*"], "events": []}}),
        ),
    )
    .await;
    assert_eq!(s, 204);
    let t = admin_tenant(&base, &id).await;
    assert_eq!(t["manifest_version"], "3");
    assert_eq!(
        t["scopes"],
        json!(["spark-admin:workspaces_read", "spark:xapi_statuses"])
    );
    assert_eq!(t["xapi_access"]["statuses"], json!(["RoomAnalytics.*"]));
    assert_eq!(
        sim.oauth_stats().exchanges_ok,
        before + 1,
        "a new access token was fetched"
    );
    assert_eq!(
        lifecycle(redis, &prefix),
        vec!["activated", "update_approved"]
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn deprovision_stops_everything_answers_410_and_forgets_secrets() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        access_token_ttl: Duration::from_secs(3),
        poll_wait: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("INTEGRATION__INGEST", "both"),
            ("ACTIVATION__RECONCILE_INTERVAL_SECS", "0.2"),
        ],
    )
    .await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    let secret = sim.app_state(0).webhook.unwrap().secret.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { sim.polls() > 0 }).await,
        "the queue was being polled"
    );

    let (s, b) = action(
        &base,
        &id,
        &sim.action_jwt(0, "deprovision", json!({"interactive": true})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let redirect = b["redirectUrl"].as_str().unwrap().to_string();
    assert!(
        redirect.ends_with(&format!("/setup/removed/{id}")),
        "{redirect}"
    );
    let page = reqwest::get(&redirect).await.unwrap();
    assert_eq!(page.status(), 200);

    // The lease is released once every piece of owned work (children, an exchange in flight)
    // has stopped; from then on nothing more for 5 s.
    let lease_key = format!("{prefix}:{{{}}}:lease", sim.org(0).org_id);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let v: Option<String> = redis::cmd("GET")
                .arg(&lease_key)
                .query(&mut redis.client().get_connection().unwrap())
                .unwrap();
            v.is_none()
        })
        .await,
        "the lease of the deprovisioned tenant was not released"
    );
    let (polls, reads, exchanges) = (sim.polls(), sim.app_reads(), sim.oauth_stats().exchanges_ok);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.polls(), polls, "polled after deprovisioning");
    assert_eq!(sim.app_reads(), reads, "appUrl read after deprovisioning");
    assert_eq!(
        sim.oauth_stats().exchanges_ok,
        exchanges,
        "token refreshed after deprovisioning"
    );

    // Webhooks: 410.
    let org = sim.org(0);
    let body = serde_json::to_vec(&json!({"appId": sim.config().app_id, "deviceId": org.devices[0].device_id, "workspaceId": "w",
        "orgId": org.org_id, "timestamp": chrono::Utc::now().to_rfc3339(), "type": "status",
        "changes": {"updated": {"Standby.State": "On"}}, "isFullSync": false})).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/tenants/{id}/webhook"))
        .header("X-Spark-Signature", sign_webhook(&secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(
        admin_tenant(&base, &id).await["provisioning_state"],
        "deprovisioned"
    );
    // Actions too.
    assert_eq!(
        action(&base, &id, &sim.action_jwt(0, "healthCheck", json!({})))
            .await
            .0,
        410
    );

    // No secret of it remains in Redis (not even encrypted: the secrets field is gone).
    let d = dump_prefix(redis, &prefix);
    for s in sim.issued_tokens().iter().chain([&secret]) {
        assert!(
            !d.windows(s.len()).any(|w| w == s.as_bytes()),
            "secret left in Redis"
        );
    }
    let mut conn = redis.client().get_connection().unwrap();
    let has: bool = redis::cmd("HEXISTS")
        .arg(format!("{prefix}:{{{}}}:tenant", org.org_id))
        .arg("secrets")
        .query(&mut conn)
        .unwrap();
    assert!(!has, "sealed secrets still stored");
    assert_eq!(
        lifecycle(redis, &prefix),
        vec!["activated", "deprovisioned"]
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn app_url_gone_on_reconciliation_cleans_the_tenant_up() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("ACTIVATION__RECONCILE_INTERVAL_SECS", "0.2")],
    )
    .await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    sim.set_app_url_status(0, Some(410));
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_tenant(&base, &id).await["provisioning_state"] == "deprovisioned"
        })
        .await,
        "tenant not cleaned up after appUrl 410"
    );
    let t = admin_tenant(&base, &id).await;
    assert!(
        t["last_error"]["description"]
            .as_str()
            .unwrap()
            .contains("removed"),
        "{t}"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn update_moves_tokens_and_polling_to_the_new_app_url() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        poll_wait: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("INTEGRATION__INGEST", "queue")],
    )
    .await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    assert!(
        eventually(Duration::from_secs(5), || async { sim.polls() > 2 }).await,
        "not polling"
    );
    assert_eq!(sim.polls_in_cluster("k"), 0);
    // The customer moved: old refresh tokens are revoked, a new one comes with the update.
    sim.revoke_refresh_tokens(0);
    let fresh = sim.mint_refresh_token(0);
    let new_app = sim.moved_app_url(0, "k");
    let (s, b) = action(&base, &id, &sim.action_jwt(0, "update", json!({
        "appUrl": new_app, "manifestUrl": format!("{new_app}/manifest"), "region": "eu-central-1_k", "refreshToken": fresh}))).await;
    assert_eq!(s, 204, "{b}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            sim.polls_in_cluster("k") > 2
        })
        .await,
        "polling did not move to the new pollUrl"
    );
    let t = admin_tenant(&base, &id).await;
    assert_eq!(t["app_url"], new_app);
    assert_eq!(t["tokens_state"], "valid");
    assert!(t["poll_url"].as_str().unwrap().contains("/k/queue/"), "{t}");
    assert_eq!(
        sim.oauth_stats().invalid_grant,
        0,
        "the revoked refresh token was used"
    );
    assert_eq!(lifecycle(redis, &prefix), vec!["activated", "updated"]);
    engine.shutdown().await;
    sim.shutdown().await;
}

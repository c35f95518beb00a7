//! Activation end to end: JWT security rules, concurrent activations, token refresh with
//! rotating refresh tokens, resume after a crash, secrets encrypted at rest.
use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::SimConfig;

use crate::utils::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

async fn wait_state(base: &str, id: &str, want: &str, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let t = admin_tenant(base, id).await;
        if t["provisioning_state"] == want {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tenant {id} never reached {want}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_error_json(body: &Value) {
    let t = body["trackingId"].as_str().expect("trackingId present");
    assert_eq!(t.len(), 32, "{body}");
    assert!(
        t.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert!(
        !body["description"].as_str().unwrap_or("").is_empty(),
        "{body}"
    );
}

async fn rejections(base: &str, reason: &str) -> f64 {
    scrape(
        base,
        &format!("xapi_stream_jwt_rejections_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// Re-encodes a signed token with a changed payload, keeping header and signature.
fn tamper(jwt: &str, f: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    f(&mut claims);
    format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims.to_string()),
        parts[2]
    )
}

#[actix_web::test]
async fn every_bad_token_is_rejected_counted_and_stores_nothing() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("SERVER__MAX_BODY_BYTES", "4096")],
    )
    .await;
    let base = engine.base_url();

    let good = sim.activation_claims(0);
    let now = chrono::Utc::now().timestamp();
    let pem = sim.public_key_pem();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(sim.current_kid()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &good,
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT", "kid": sim.current_kid()}).to_string()),
        B64.encode(good.to_string())
    );
    let mut expired = good.clone();
    expired["expiryTime"] = json!("2023-08-10T08:02:33.816114574Z");
    let mut wrong_app = good.clone();
    wrong_app["appId"] = json!("00000000-0000-4000-8000-000000000000");
    let action = sim.action_jwt(0, "healthCheck", json!({}));

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "bad signature",
            tamper(&sim.activation_jwt(0), |c| c["orgName"] = json!("Evil")),
            401,
            "signature",
        ),
        (
            "unknown kid",
            sim.sign_claims(&good, Some("no-such-kid")),
            401,
            "unknown_kid",
        ),
        ("alg none", none, 401, "algorithm"),
        ("HS256 with the public key", hs256, 401, "algorithm"),
        ("expired", sim.sign_claims(&expired, None), 401, "expired"),
        (
            "wrong appId",
            sim.sign_claims(&wrong_app, None),
            401,
            "app_id",
        ),
        ("action JWT at activation", action, 400, "wrong_action"),
        ("malformed", "not.a.jwt".to_string(), 400, "malformed"),
        ("garbage", "garbage".to_string(), 400, "malformed"),
    ];
    for (name, jwt, status, reason) in cases {
        let before = rejections(&base, reason).await;
        let (got, body) = admin_activate(&base, &jwt).await;
        assert!(
            got == status || (got / 100 == status / 100),
            "{name}: got {got}, want {status}: {body}"
        );
        assert_eq!(got / 100, 4, "{name}: {got}");
        assert_error_json(&body);
        assert_eq!(
            rejections(&base, reason).await,
            before + 1.0,
            "{name}: {reason} not counted"
        );
    }

    // A valid JWT in a JSON array instead of {"jwt": …}: 400, nothing recorded.
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/activations"))
        .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
        .json(&json!([sim.activation_jwt(0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_error_json(&r.json::<Value>().await.unwrap());

    // Oversized body: 413 with the contract JSON.
    let big = "x".repeat(8192);
    let (got, body) = admin_activate(&base, &big).await;
    assert_eq!(got, 413);
    assert_error_json(&body);

    // Nothing at all was written for any of these (not even a jti).
    assert!(
        keys_with_prefix(redis, &prefix).is_empty(),
        "{:?}",
        keys_with_prefix(redis, &prefix)
    );
    let _ = now;

    // A valid one works, and the same token again is a replay.
    let jwt = sim.activation_jwt(0);
    let (got, body) = admin_activate(&base, &jwt).await;
    assert_eq!(got, 202, "{body}");
    let before = rejections(&base, "replay").await;
    let (got, body) = admin_activate(&base, &jwt).await;
    assert_eq!(got / 100, 4);
    assert_error_json(&body);
    assert_eq!(rejections(&base, "replay").await, before + 1.0);

    // A replay is still refused by a new engine process on the same Redis.
    engine.shutdown().await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (got, _) = admin_activate(&engine.base_url(), &jwt).await;
    assert_eq!(got / 100, 4, "replay accepted after restart");
    assert_eq!(rejections(&engine.base_url(), "replay").await, 1.0);
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn unknown_regions_fall_back_to_the_default_and_gov_urls() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    // Only the fallback targets point at the simulator: any other choice fails to verify.
    let dead = "http://127.0.0.1:9/jwks";
    let us_east = sim.jwks_url("us-east-2_a");
    let gov = sim.jwks_url("us-gov-west-1_a1");
    let overrides = [
        ("WEBEX__JWKS__us-west-2_r", dead),
        ("WEBEX__JWKS__eu-central-1_k", dead),
        ("WEBEX__JWKS__me-central-1_d", dead),
        ("WEBEX__JWKS__us-east-2_a", us_east.as_str()),
        ("WEBEX__JWKS__us-gov-west-1_a1", dead),
    ];
    let engine = start_engine(&sim, &redis.url(), &prefix, &overrides).await;
    let mut claims = sim.activation_claims(0);
    claims["region"] = json!("xx-north-9_z");
    let (got, body) = admin_activate(&engine.base_url(), &sim.sign_claims(&claims, None)).await;
    assert_eq!(
        got, 202,
        "unknown region did not fall back to us-east-2_a: {body}"
    );
    // A gov region must NOT fall back to us-east-2_a.
    let mut claims = sim.activation_claims(1);
    claims["region"] = json!("us-gov-east-9_q");
    let (got, body) = admin_activate(&engine.base_url(), &sim.sign_claims(&claims, None)).await;
    assert_eq!(
        got, 503,
        "gov region must use the gov JWKS (unreachable here): {body}"
    );
    engine.shutdown().await;

    let overrides = [
        ("WEBEX__JWKS__us-east-2_a", dead),
        ("WEBEX__JWKS__us-gov-west-1_a1", gov.as_str()),
    ];
    let engine = start_engine(&sim, &redis.url(), &unique_prefix(), &overrides).await;
    let mut claims = sim.activation_claims(2);
    claims["region"] = json!("us-gov-east-9_q");
    let (got, body) = admin_activate(&engine.base_url(), &sim.sign_claims(&claims, None)).await;
    assert_eq!(
        got, 202,
        "unknown us-gov region did not fall back to the gov JWKS: {body}"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_hundred_tenants_activate_concurrently_with_one_patch_each() {
    const N: usize = 100;
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: N,
        devices_per_org: 1,
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
    let jwts: Vec<String> = (0..N).map(|i| sim.activation_jwt(i)).collect();
    let answers = futures::future::join_all(jwts.iter().map(|j| admin_activate(&base, j))).await;
    let mut ids = Vec::new();
    for (status, body) in answers {
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["provisioning_state"], "provisioning", "{body}");
        ids.push(body["tenant_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    for id in &ids {
        let t = wait_state(&base, id, "completed", Duration::from_secs(60)).await;
        assert_eq!(t["tokens_state"], "valid");
        assert_eq!(t["ingest"], "both");
    }
    let mut secrets = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let app = sim.app_state(i);
        assert_eq!(app.patches.len(), 1, "org {i}: {:?}", app.patches);
        let p = &app.patches[0];
        assert_eq!(p["provisioningState"], "completed");
        let org_tenant = admin_tenant(&base, id).await;
        assert_eq!(org_tenant["org_id"], sim.org(i).org_id);
        let tid = org_tenant["tenant_id"].as_str().unwrap();
        assert_eq!(p["actionsUrl"], format!("{base}/tenants/{tid}/actions"));
        assert_eq!(
            p["webhook"]["targetUrl"],
            format!("{base}/tenants/{tid}/webhook")
        );
        assert_eq!(p["webhook"]["type"], "hmac_signature");
        let secret = p["webhook"]["secret"].as_str().unwrap();
        assert!(secret.len() >= 32, "secret too short");
        assert!(secrets.insert(secret.to_string()), "webhook secret reused");
        assert_eq!(p["queue"]["state"], "enabled");
        assert!(app.poll_url.is_some());
        assert_eq!(org_tenant["poll_url"].as_str(), app.poll_url.as_deref());
    }
    let list = admin_get(&base, "/admin/tenants").await;
    assert_eq!(list.as_array().expect("a tenant list").len(), N);
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "xapi_stream_tenants{state=\"completed\"}"),
        Some(N as f64)
    );
    assert_eq!(
        metric(&text, "xapi_stream_activations_total{result=\"completed\"}"),
        Some(N as f64)
    );

    // Re-activating an organization keeps its tenant id.
    let (status, body) = admin_activate(&base, &sim.activation_jwt(0)).await;
    assert_eq!(status, 202);
    assert_eq!(body["tenant_id"], ids[0]);
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn https_provisioning_goes_through_the_setup_page() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{base}/provision"))
        .json(&json!({ "jwt": sim.activation_jwt(0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let redirect = body["redirectUrl"].as_str().unwrap().to_string();
    assert!(
        redirect.starts_with("http://127.0.0.1:8080/setup/") || redirect.contains("/setup/"),
        "{redirect}"
    );
    let session = redirect.rsplit('/').next().unwrap().to_string();

    let page = http
        .get(format!("{base}/setup/{session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(&sim.org(0).name), "org name on the page");
    assert!(html.contains("us-east-2_a"));
    assert!(html.contains("awaiting confirmation"));
    assert_eq!(
        sim.app_state(0).patches.len(),
        0,
        "nothing happens before the admin confirms"
    );

    // The page never asks for the operator's admin token: it asks for an invitation code.
    assert!(!html.to_lowercase().contains("admin token"), "{html}");
    assert!(html.contains("name=\"code\""), "{html}");

    // The operator invites the customer; the link leaves the code in a cookie for the page.
    let r = http
        .post(format!("{base}/admin/invitations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"customer_id": "cust-42", "name": "Acme Rooms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let inv: Value = r.json().await.unwrap();
    let code = inv["code"].as_str().unwrap().to_string();
    let link = inv["link"].as_str().unwrap();
    assert!(link.ends_with(&format!("/setup?code={code}")), "{link}");
    let landing = http
        .get(format!("{base}/setup?code={code}"))
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), 200);
    let cookie = landing
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let html = http
        .get(format!("{base}/setup/{session}"))
        .header("Cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(&format!("value=\"{code}\"")),
        "code prefilled: {html}"
    );

    // Wrong code: 401 page, nothing changed; the admin token is no code either.
    for wrong in ["WRONG-CODE", ADMIN_TOKEN] {
        let r = http
            .post(format!("{base}/setup/{session}"))
            .form(&[("code", wrong)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains("Nothing was changed"));
    }
    assert!(engine.registry().is_empty());
    assert_eq!(sim.app_state(0).patches.len(), 0);

    let r = http
        .post(format!("{base}/setup/{session}"))
        .form(&[("code", code.to_lowercase().replace('-', " ").as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let ok = eventually(Duration::from_secs(20), || async {
        let html = http
            .get(format!("{base}/setup/{session}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        html.contains("<dd id=state>completed</dd>")
    })
    .await;
    assert!(ok, "setup page never showed completed");
    assert_eq!(sim.app_state(0).patches.len(), 1);
    // The invitation's customer went to Webex, and the code is spent.
    assert_eq!(
        sim.app_state(0).customer,
        Some(json!({"id": "cust-42", "name": "Acme Rooms"}))
    );
    let listed = admin_get(&base, "/admin/invitations").await;
    assert_eq!(listed[0]["state"], "used", "{listed}");
    assert!(
        !listed.to_string().contains(&code),
        "codes are never listed"
    );

    // Unknown session: 404 page.
    let r = http.get(format!("{base}/setup/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn auto_complete_starts_at_once_and_failures_show_a_tracking_id() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("ACTIVATION__AUTO_COMPLETE", "true")],
    )
    .await;
    let base = engine.base_url();
    let r = reqwest::Client::new()
        .post(format!("{base}/provision"))
        .json(&json!({ "jwt": sim.activation_jwt(0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(20), || async {
            sim.app_state(0).provisioning_state.as_deref() == Some("completed")
        })
        .await
    );

    // appUrl answering 500: the tenant ends in `error` with a trackingId.
    sim.set_app_url_status(1, Some(500));
    let (status, body) = admin_activate(&base, &sim.activation_jwt(1)).await;
    assert_eq!(status, 202);
    let t = wait_state(
        &base,
        body["tenant_id"].as_str().unwrap(),
        "error",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        t["last_error"]["trackingId"].as_str().unwrap().len(),
        32,
        "{t}"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn short_lived_tokens_are_always_fresh_and_refresh_tokens_never_reused() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 5,
        access_token_ttl: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    // The reconciler calls the appUrl with the tenant's token every 200 ms.
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("ACTIVATION__RECONCILE_INTERVAL_SECS", "0.2")],
    )
    .await;
    let base = engine.base_url();
    for i in 0..5 {
        let (status, body) = admin_activate(&base, &sim.activation_jwt(i)).await;
        assert_eq!(status, 202, "{body}");
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stats = sim.oauth_stats();
    assert_eq!(
        sim.expired_bearer_calls(),
        0,
        "the engine used an expired token"
    );
    assert_eq!(
        stats.invalid_grant, 0,
        "a rotated refresh token was reused: {stats:?}"
    );
    // 5 tenants × 30 s / (refresh every ≤ 2 s) — many exchanges, all with the newest token.
    assert!(stats.exchanges_ok >= 5 * 10, "{stats:?}");
    assert!(
        sim.app_reads() >= 5 * 50,
        "reconciler did not exercise the tokens"
    );
    for t in engine.registry().list() {
        assert_eq!(
            t.record().tokens_state,
            actors::store::tenants::TokensState::Valid
        );
    }
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_rejected_refresh_token_marks_the_tenant_invalid() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        access_token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (_, body) = admin_activate(&engine.base_url(), &sim.activation_jwt(0)).await;
    let id = body["tenant_id"].as_str().unwrap().to_string();
    wait_state(
        &engine.base_url(),
        &id,
        "completed",
        Duration::from_secs(20),
    )
    .await;
    sim.revoke_refresh_tokens(0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_tenant(&engine.base_url(), &id).await["tokens_state"] == "invalid"
        })
        .await
    );
    assert_eq!(
        lifecycle(redis, &prefix),
        vec!["activated", "tokens_invalid"]
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// An engine that loads a tenant whose refresh token is recorded as refused knows it: when it
/// takes the tenant over it does not present that token to Webex again (the scale suite saw a
/// joining replica do so once).
#[actix_web::test]
async fn a_tenant_loaded_as_invalid_never_presents_its_refused_token_again() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        access_token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([9u8; 32])
    };
    let ea = [
        ("SECURITY__ENCRYPTION_KEY", key.as_str()),
        ("SCALING__REPLICA_ID", "a"),
    ];
    let eb = [
        ("SECURITY__ENCRYPTION_KEY", key.as_str()),
        ("SCALING__REPLICA_ID", "b"),
    ];
    let a = start_engine(&sim, &redis.url(), &prefix, &ea).await;
    let (_, body) = admin_activate(&a.base_url(), &sim.activation_jwt(0)).await;
    let id = body["tenant_id"].as_str().unwrap().to_string();
    wait_state(&a.base_url(), &id, "completed", Duration::from_secs(20)).await;
    sim.revoke_refresh_tokens(0);
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_tenant(&a.base_url(), &id).await["tokens_state"] == "invalid"
        })
        .await
    );
    let refused = sim.oauth_stats().invalid_grant;
    // B loads the tenant as invalid, then takes it over when A leaves.
    let b = start_engine(&sim, &redis.url(), &prefix, &eb).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.registry().get(&id).is_some()
        })
        .await
    );
    a.shutdown().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            scrape(&b.base_url(), "xapi_stream_tenants_owned").await == 1.0
        })
        .await,
        "b did not take the tenant over"
    );
    // Its 2-s access token long expired: a refresher that thought the tenant valid would
    // exchange within a second or two of taking it over; wait well beyond that.
    let owned_at = std::time::Instant::now();
    while owned_at.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            sim.oauth_stats().invalid_grant,
            refused,
            "the refused refresh token was presented again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        admin_tenant(&b.base_url(), &id).await["tokens_state"],
        "invalid"
    );
    b.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn killed_engine_resumes_every_tenant_and_redis_holds_no_plain_secret() {
    // 4-s tokens refresh every 2–2.7 s. A SIGKILL *between* an exchange's response and the CAS
    // write of the rotated refresh token loses that token: inherent to rotating refresh tokens
    // (documented in ARCHITECTURE.md, reported as a crash loss, tested in failover.rs) and not
    // what this test is about. So the kill comes while the token endpoint refuses (503) and
    // no exchange is outstanding (no `exchange_intent` left in any tenant's hash).
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 4,
        access_token_ttl: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let bin = env!("CARGO_BIN_EXE_xapi-stream");
    let port = xapi_stream::devkit::redis_server::free_port().unwrap();
    let env = xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), &prefix);
    let spawn = || {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("serve")
            .envs(env.iter().cloned())
            .env("XAPI_STREAM__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env(
                "XAPI_STREAM__SERVER__PUBLIC_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env("XAPI_STREAM__INTEGRATION__INGEST", "both")
            .env("XAPI_STREAM__ACTIVATION__RECONCILE_INTERVAL_SECS", "0.5")
            // A restarted container keeps its pod name, so it takes its tenants' leases back
            // at once instead of waiting for them to expire.
            .env("XAPI_STREAM__SCALING__REPLICA_ID", "pod-a")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn();
    wait_ready(&base, Duration::from_secs(15)).await;
    let mut refresh_tokens = Vec::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let claims = sim.activation_claims(i);
        refresh_tokens.push(claims["refreshToken"].as_str().unwrap().to_string());
        let (status, body) = admin_activate(&base, &sim.sign_claims(&claims, None)).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["tenant_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_state(&base, id, "completed", Duration::from_secs(20)).await;
    }
    // A refresh of every tenant (4 activation exchanges, then 4 more at least).
    assert!(
        eventually(Duration::from_secs(20), || async {
            sim.oauth_stats().exchanges_ok >= 8
        })
        .await,
        "tokens not refreshed before the kill"
    );
    sim.set_oauth_status(Some(503));
    let orgs: Vec<String> = (0..4).map(|i| sim.org(i).org_id).collect();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let mut conn = redis.client().get_connection().unwrap();
            orgs.iter().all(|org| {
                let intent: Option<String> = redis::cmd("HGET")
                    .arg(format!("{prefix}:{{{org}}}:tenant"))
                    .arg("exchange_intent")
                    .query(&mut conn)
                    .unwrap();
                intent.is_none()
            })
        })
        .await,
        "an exchange stayed outstanding"
    );
    child.kill().unwrap(); // SIGKILL: no drain
    child.wait().unwrap();
    sim.set_oauth_status(None);

    let mut child = spawn();
    wait_ready(&base, Duration::from_secs(15)).await;
    for id in &ids {
        wait_state(&base, id, "completed", Duration::from_secs(20)).await;
    }
    let exchanges_before = sim.oauth_stats().exchanges_ok;
    assert!(
        eventually(Duration::from_secs(20), || async {
            sim.oauth_stats().exchanges_ok > exchanges_before
        })
        .await,
        "tokens not refreshed after resume"
    );
    assert_eq!(
        sim.oauth_stats().invalid_grant,
        0,
        "a stale refresh token was used after restart"
    );
    assert_eq!(sim.expired_bearer_calls(), 0);
    for i in 0..4 {
        assert_eq!(
            sim.app_state(i).patches.len(),
            1,
            "org {i} was re-activated"
        );
    }

    let dump = dump_prefix(redis, &prefix);
    assert!(!dump.is_empty());
    let cfg = sim.config();
    let mut secrets: Vec<String> = refresh_tokens;
    secrets.push(cfg.client_secret.clone());
    secrets.push(ADMIN_TOKEN.to_string());
    secrets.extend(sim.issued_tokens());
    for i in 0..4 {
        if let Some(s) = sim.app_state(i).webhook.and_then(|w| w.secret) {
            secrets.push(s);
        }
    }
    assert!(secrets.len() > 10);
    for s in &secrets {
        assert!(
            !contains_bytes(&dump, s),
            "a secret is stored in plain text in Redis"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    sim.shutdown().await;
}

/// Redis stalls for longer than the lease while activations complete: the ones caught in the
/// stall (their secret or their completed record could not be stored) are tried again once
/// Redis answers, and every tenant ends `completed` with its webhook set at Webex. Before,
/// such a tenant stayed `provisioning` for good, unpolled and without a webhook.
#[actix_web::test]
async fn activations_caught_in_a_redis_stall_complete_once_it_is_back() {
    const N: usize = 300;
    const CHUNK: usize = 50;
    const LEASE_TTL_SECS: u64 = 6;
    let redis = own_redis();
    let sim = start_sim(SimConfig {
        orgs: N,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let prefix = unique_prefix();
    let lease = LEASE_TTL_SECS.to_string();
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("SCALING__LEASE_TTL_SECS", lease.as_str()),
            ("WEBEX__HTTP_TIMEOUT_SECS", "3"),
            ("LOG__LEVEL", "warn"),
        ],
    )
    .await;
    let base = engine.base_url();
    let stall = Duration::from_secs(LEASE_TTL_SECS + 1);
    for (k, chunk) in (0..N).collect::<Vec<_>>().chunks(CHUNK).enumerate() {
        activate_orgs(&base, &sim, chunk).await;
        // Stall while the first chunk completes, and again mid-way through the rest.
        if k == 0 || k == 3 {
            redis.pause();
            tokio::time::sleep(stall).await;
            redis.resume();
        }
    }
    // Two stalls, the retry backoff capped at 5 s and 300 activations: 90 s is ample.
    wait_all_activated(&base, &sim, N, Duration::from_secs(90)).await;
    let list = admin_get(&base, "/admin/tenants").await;
    assert_eq!(list.as_array().expect("a tenant list").len(), N);
    for i in 0..N {
        let app = sim.app_state(i);
        let last = app.patches.last().expect("at least one PATCH");
        assert_eq!(last["provisioningState"], "completed", "org {i}: {last}");
    }
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_token_endpoint_outage_is_retried_with_backoff_and_recovers() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        access_token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("ACTIVATION__RECONCILE_INTERVAL_SECS", "0.3")],
    )
    .await;
    let base = engine.base_url();
    let (_, body) = admin_activate(&base, &sim.activation_jwt(0)).await;
    let id = body["tenant_id"].as_str().unwrap().to_string();
    wait_state(&base, &id, "completed", Duration::from_secs(20)).await;
    // 429 with Retry-After: 1 for 4 s: the token expires meanwhile; nothing uses an expired one.
    sim.set_oauth_status(Some(429));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = sim.oauth_stats().exchanges_ok;
    sim.set_oauth_status(None);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sim.oauth_stats().exchanges_ok > during
        })
        .await,
        "the refresher did not recover by itself"
    );
    assert_eq!(
        sim.expired_bearer_calls(),
        0,
        "an expired token was used during the outage"
    );
    let t = admin_tenant(&base, &id).await;
    assert_eq!(
        t["tokens_state"], "valid",
        "a transient outage must not mark tokens invalid: {t}"
    );
    let text = metrics_text(&base).await;
    let errors =
        metric(&text, "xapi_stream_token_refreshes_total{result=\"error\"}").unwrap_or(0.0);
    assert!(
        (1.0..=8.0).contains(&errors),
        "retries should back off, not hammer: {errors}"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// Five wrong invitation codes lock the setup session: even the right code is refused after,
/// and nothing about the activation changed.
#[actix_web::test]
async fn five_wrong_invitation_codes_lock_the_session_and_change_nothing() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = provision_session(&base, &sim.activation_jwt(0)).await;
    let code = invite(&base, "c-1", "Customer One").await;
    let post = |code: String| {
        let (http, url) = (http.clone(), format!("{base}/setup/{session}"));
        async move {
            let r = http.post(url).form(&[("code", code)]).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Twenty wrong codes at once: exactly five are tried (each attempt is counted before its
    // code is), the other fifteen find the session locked.
    let answers = futures::future::join_all((0..20).map(|i| post(format!("WRONG-{i}")))).await;
    let tried: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s == 401).collect();
    assert_eq!(
        tried.len(),
        5,
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|(s, _)| *s == 401 || *s == 429));
    for (_, html) in &answers {
        assert!(html.contains("Nothing was changed"), "{html}");
    }
    let (status, html) = post(code.clone()).await;
    assert_eq!(status, 429, "the right code after five wrong ones: {html}");
    assert!(html.contains("locked"), "{html}");
    let page = http
        .get(format!("{base}/setup/{session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=locked") && !page.contains("<form"),
        "{page}"
    );
    assert!(engine.registry().is_empty(), "no tenant");
    assert_eq!(sim.app_state(0).patches.len(), 0, "nothing PATCHed");
    let admin = engine.admin_url();
    assert_eq!(
        scrape(
            &admin,
            "xapi_stream_setup_attempts_total{result=\"wrong_code\"}"
        )
        .await,
        5.0
    );
    assert_eq!(
        scrape(
            &admin,
            "xapi_stream_setup_attempts_total{result=\"locked\"}"
        )
        .await,
        16.0
    );
    // The invitation itself is untouched: another (new) activation can still use it.
    let listed = admin_get(&admin, "/admin/invitations").await;
    assert_eq!(listed[0]["state"], "open", "{listed}");
    // And nothing under the data prefix beyond what provisioning stores (the pending session,
    // the activation's jti): the attempts are counted under <p>-audit.
    let keys = keys_with_prefix(redis, &prefix);
    assert!(
        keys.iter().all(|k| k.contains(":pending:")
            || k.ends_with(":pending_index")
            || k.contains(":jti:")
            || k.contains("{invitations}")),
        "{keys:?}"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// Behind a trusted load balancer (`server.trusted_proxies`) the setup form's per-address limit
/// counts each customer's address from `X-Forwarded-For`, not the balancer's: one address runs
/// out, another is still heard; an address the client wrote itself left of the real one is not.
#[actix_web::test]
async fn behind_a_trusted_proxy_the_per_address_limit_counts_the_forwarded_client() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig {
        orgs: 3,
        ..Default::default()
    })
    .await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("SERVER__TRUSTED_PROXIES", "127.0.0.1, ::1"),
            ("ACTIVATION__SETUP_MAX_ATTEMPTS", "2"),
            ("ACTIVATION__SETUP_ATTEMPTS_PER_ADDRESS", "3"),
        ],
    )
    .await;
    let base = engine.base_url();
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for i in 0..3 {
        sessions.push(provision_session(&base, &sim.activation_jwt(i)).await);
    }
    let wrong = |session: usize, forwarded: &'static str| {
        let url = format!("{base}/setup/{}", sessions[session]);
        let http = http.clone();
        async move {
            http.post(url)
                .header("X-Forwarded-For", forwarded)
                .form(&[("code", "WRONG-CODE")])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // 203.0.113.7: two on one session, one on the next, then the address is out (429)...
    assert_eq!(wrong(0, "203.0.113.7").await, 401);
    assert_eq!(wrong(0, "203.0.113.7").await, 401);
    assert_eq!(wrong(1, "203.0.113.7").await, 401);
    assert_eq!(wrong(1, "203.0.113.7").await, 429);
    // ... even when it writes another address in front of its own.
    assert_eq!(wrong(2, "198.51.100.9, 203.0.113.7").await, 429);
    // Another customer behind the same balancer is still heard.
    assert_eq!(wrong(2, "198.51.100.9").await, 401);
    engine.shutdown().await;
    sim.shutdown().await;
}

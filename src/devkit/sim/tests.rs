//! The simulator against its own contract, over real HTTP.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::Mac;
use serde_json::{Value, json};

use super::*;

async fn sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn exchange(s: &Sim, refresh: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/access_token", s.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &s.config().client_id),
            ("client_secret", &s.config().client_secret),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .unwrap()
}

async fn access_token(s: &Sim, i: usize) -> String {
    let r: Value = exchange(s, &s.mint_refresh_token(i))
        .await
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn issued_jwts_verify_against_the_published_jwks() {
    let s = sim(SimConfig::default()).await;
    let jwt = s.activation_jwt(0);
    let set: jsonwebtoken::jwk::JwkSet = reqwest::get(s.jwks_url("eu-central-1_k"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let data =
        jsonwebtoken::decode::<Value>(&jwt, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &v)
            .unwrap();
    for claim in [
        "sub",
        "oauthUrl",
        "orgName",
        "appUrl",
        "userId",
        "manifestUrl",
        "appId",
        "expiryTime",
        "action",
        "webexapisBaseUrl",
        "scopes",
        "region",
        "iat",
        "jti",
        "refreshToken",
        "xapiAccess",
    ] {
        assert!(data.claims.get(claim).is_some(), "claim {claim} missing");
    }
    assert_eq!(data.claims["action"], "provision");
    assert!(
        data.claims["xapiAccess"].is_string(),
        "xapiAccess is a JSON string as in the seed"
    );
    // A rotated key is published beside the old one; a tampered token does not verify.
    s.rotate_signing_key();
    let set: jsonwebtoken::jwk::JwkSet = reqwest::get(s.jwks_url("us-east-2_a"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set.keys.len(), 2);
    let tampered = format!("{}x", &jwt[..jwt.len() - 1]);
    assert!(
        jsonwebtoken::decode::<Value>(
            &tampered,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &v
        )
        .is_err()
    );
    s.shutdown().await;
}

#[actix_web::test]
async fn refresh_tokens_rotate_and_cannot_be_used_twice() {
    let s = sim(SimConfig::default()).await;
    let first = s.mint_refresh_token(0);
    let r = exchange(&s, &first).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let rotated = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rotated, first);
    assert_eq!(body["expires_in"], 7199);
    // The used one is refused; the rotated one works (JSON body this time).
    let again = exchange(&s, &first).await;
    assert_eq!(again.status(), 400);
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let json_body = reqwest::Client::new()
        .post(format!("{}/v1/access_token", s.base_url()))
        .json(
            &json!({"grant_type": "refresh_token", "client_id": "sim-client-id",
            "client_secret": "sim-client-secret", "refresh_token": rotated}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 200);
    // Wrong client secret.
    let bad = reqwest::Client::new()
        .post(format!("{}/v1/access_token", s.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "sim-client-id"),
            ("client_secret", "nope"),
            ("refresh_token", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let st = s.oauth_stats();
    assert_eq!(
        (st.exchanges_ok, st.invalid_grant, st.reused, st.bad_client),
        (2, 1, 1, 1)
    );
    // Forced failures.
    s.set_oauth_status(Some(429));
    let r = exchange(&s, &s.mint_refresh_token(0)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    s.shutdown().await;
}

#[actix_web::test]
async fn queue_long_poll_waits_then_answers_empty_and_caps_at_ten() {
    let s = sim(SimConfig {
        poll_wait: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let token = access_token(&s, 0).await;
    let app = s.org(0).app_url;
    let patched: Value = reqwest::Client::new()
        .patch(&app)
        .bearer_auth(&token)
        .json(&json!({"provisioningState": "completed", "queue": {"state": "enabled"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let poll_url = patched["queue"]["pollUrl"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let t = Instant::now();
    let empty: Value = http
        .get(&poll_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({"messages": []}));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "answered before the wait: {:?}",
        t.elapsed()
    );
    // A message arriving during the wait is returned at once.
    let s2 = s.clone();
    let msg = s.generate(0, 1).remove(0);
    let m2 = msg.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s2.enqueue(0, m2);
    });
    let got: Value = http
        .get(&poll_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["messages"], json!([msg]));
    for m in s.generate(0, 13) {
        s.enqueue(0, m);
    }
    let got: Value = http
        .get(&poll_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["messages"].as_array().unwrap().len(), 10);
    assert_eq!(s.queue_len(0), 3);
    // No token: 401.
    assert_eq!(http.get(&poll_url).send().await.unwrap().status(), 401);
    s.shutdown().await;
}

#[actix_web::test]
async fn transport_changes_take_effect_after_the_delay_and_a_removed_queue_answers_404() {
    const DELAY: Duration = Duration::from_millis(400);
    let s = sim(SimConfig {
        poll_wait: Duration::from_millis(50),
        transport_apply_delay: DELAY,
        ..Default::default()
    })
    .await;
    let token = access_token(&s, 0).await;
    let (app, http) = (s.org(0).app_url, reqwest::Client::new());
    let patch = |body: Value| {
        let (http, app, token) = (http.clone(), app.clone(), token.clone());
        async move {
            let r = http
                .patch(&app)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let hook = json!({"type": "hmac_signature", "targetUrl": "http://127.0.0.1:9/hook",
        "secret": "0123456789abcdefghij"});
    let asked = Instant::now();
    let answer = patch(json!({"webhook": hook, "queue": {"state": "enabled"}})).await;
    // The queue exists at once (its pollUrl in the answer) but receives nothing yet; the
    // webhook is not registered yet.
    let poll_url = answer["queue"]["pollUrl"].as_str().unwrap().to_string();
    let a = s.app_state(0);
    if asked.elapsed() < DELAY {
        assert!(a.webhook.is_none() && !a.queue_receives(), "{a:?}");
        assert_eq!(s.deliver(0, &s.generate(0, 1)).await.queued, 0);
    }
    tokio::time::sleep(DELAY).await;
    let a = s.app_state(0);
    assert!(a.webhook.is_some() && a.queue_receives(), "{a:?}");
    // Removals: messages flow as before until the delay has passed, then the queue's poll
    // URL answers 404 and nothing is sent anywhere.
    let asked = Instant::now();
    patch(json!({"webhook": {"type": "none"}, "queue": {"state": "remove"}})).await;
    let poll = || http.get(&poll_url).bearer_auth(&token).send();
    if asked.elapsed() < DELAY {
        let a = s.app_state(0);
        assert!(a.webhook.is_some() && a.queue_receives(), "{a:?}");
    }
    tokio::time::sleep(DELAY).await;
    let a = s.app_state(0);
    assert!(
        a.webhook.is_none() && a.queue_removed && a.queue_state.is_none(),
        "{a:?}"
    );
    assert_eq!(poll().await.unwrap().status(), 404);
    let report = s.deliver(0, &s.generate(0, 1)).await;
    assert_eq!((report.queued, report.webhook_statuses.len()), (0, 0));
    // Enabled again: polled again (no 404).
    patch(json!({"queue": {"state": "enabled"}})).await;
    assert_eq!(poll().await.unwrap().status(), 200);
    // A PATCH refused on demand changes nothing.
    s.refuse_next_patches(0, 1);
    let r = http
        .patch(&app)
        .bearer_auth(&token)
        .json(&json!({"queue": {"state": "remove"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    tokio::time::sleep(DELAY).await;
    assert!(!s.app_state(0).queue_removed);
    s.shutdown().await;
}

#[actix_web::test]
async fn app_url_checks_tokens_records_patches_and_can_fail_on_demand() {
    let s = sim(SimConfig {
        access_token_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let app = s.org(1).app_url;
    let http = reqwest::Client::new();
    assert_eq!(http.get(&app).send().await.unwrap().status(), 401);
    let token = access_token(&s, 1).await;
    let other = access_token(&s, 0).await;
    assert_eq!(
        http.get(&app)
            .bearer_auth(&other)
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "token of another org"
    );
    let bad = http.patch(&app).bearer_auth(&token).json(&json!({"webhook": {"type": "hmac_signature", "targetUrl": "http://x", "secret": "short"}})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let ok = http
        .patch(&app)
        .bearer_auth(&token)
        .json(&json!({"provisioningState": "completed", "actionsUrl": "http://a/actions",
            "webhook": {"type": "hmac_signature", "targetUrl": "http://h/hook", "secret": "0123456789abcdefghij"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let st = s.app_state(1);
    assert_eq!(st.provisioning_state.as_deref(), Some("completed"));
    assert_eq!(
        st.webhook.unwrap().secret.as_deref(),
        Some("0123456789abcdefghij")
    );
    assert_eq!(st.patches.len(), 1);
    assert!(st.poll_url.is_none());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        http.get(&app)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "expired token"
    );
    s.set_app_url_status(1, Some(410));
    let fresh = access_token(&s, 1).await;
    assert_eq!(
        http.get(&app)
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .status(),
        410
    );
    s.shutdown().await;
}

#[actix_web::test]
async fn webhooks_are_signed_so_an_independent_receiver_verifies_them() {
    assert_eq!(
        sign_webhook("Jefe", b"what do ya want for nothing?"),
        "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    );
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let seen2 = seen.clone();
    const SECRET: &str = "receiver-secret-0123456789";
    let server = HttpServer::new(move || {
        let seen = seen2.clone();
        App::new().route(
            "/hook",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let seen = seen.clone();
                async move {
                    let sig = req
                        .headers()
                        .get("X-Spark-Signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let mut mac =
                        hmac::Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
                    mac.update(&body);
                    let ok = hex::decode(sig)
                        .map(|raw| mac.verify_slice(&raw).is_ok())
                        .unwrap_or(false);
                    seen.lock().unwrap().push(ok);
                    if ok {
                        HttpResponse::Ok().finish()
                    } else {
                        HttpResponse::Unauthorized().finish()
                    }
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);

    let s = sim(SimConfig::default()).await;
    let token = access_token(&s, 0).await;
    reqwest::Client::new()
        .patch(s.org(0).app_url)
        .bearer_auth(&token)
        .json(&json!({"provisioningState": "completed",
            "webhook": {"type": "hmac_signature", "targetUrl": format!("http://{addr}/hook"), "secret": SECRET}}))
        .send()
        .await
        .unwrap();
    let msgs = s.generate(0, 20);
    let report = s.deliver(0, &msgs).await;
    assert_eq!(report.webhook_statuses, vec![200; 20]);
    assert_eq!(report.queued, 0);
    assert_eq!(seen.lock().unwrap().len(), 20);
    assert!(seen.lock().unwrap().iter().all(|ok| *ok));
    s.shutdown().await;
    handle.stop(false).await;
}

#[actix_web::test]
async fn device_models_emit_only_changes_with_increasing_timestamps() {
    let s = sim(SimConfig {
        devices_per_org: 2,
        ..Default::default()
    })
    .await;
    let msgs = s.generate(0, 300);
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut statuses = 0;
    for m in &msgs {
        let dev = m["deviceId"].as_str().unwrap().to_string();
        let ts = m["timestamp"].as_str().unwrap().to_string();
        if let Some(prev) = last.get(&dev) {
            let a = chrono::DateTime::parse_from_rfc3339(prev).unwrap();
            let b = chrono::DateTime::parse_from_rfc3339(&ts).unwrap();
            assert!(b > a, "timestamps must increase per device");
        }
        last.insert(dev, ts);
        assert_eq!(m["orgId"], s.org(0).org_id);
        if m["type"] == "status" {
            statuses += 1;
            assert_eq!(m["isFullSync"], false);
        } else {
            assert_eq!(m["type"], "events");
            assert!(m["events"][0]["key"].is_string());
        }
    }
    assert!(statuses > 200, "mostly status messages");
    let fs = s.full_sync(0, 0);
    assert_eq!(fs["isFullSync"], true);
    assert!(fs["changes"]["updated"]["Standby.State"].is_string());
    s.shutdown().await;
}

//! The operator surfaces against an attacker and a Redis stall, black-box: the real binary
//! (`XAPI_STREAM_TEST_BIN` runs them against another build), its own Redis where the test
//! pauses it, HTTP only.
//! - Signing out ends a session on every replica; "sign out everywhere" ends them all.
//! - An activation (`POST /admin/activations`, `POST /provision`) answered 503 in a stall
//!   completes when the same JWT is sent again, and is a replay after that; an invitation
//!   answered 503 left nothing usable.
//! - Oversized or malformed forms are 413/400 and never a guess.
//! - A flood of unauthenticated errors cannot push a known tenant's error out of the support
//!   log.
//! - Wrong admin tokens are throttled per address (bearer and console), a right one from
//!   elsewhere is not.
//! - Every answer with a body says `nosniff`; the console on the public port is warned about.
//! - A console page answers within one Redis timeout during a stall.
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::sim::{SimConfig, sign_webhook};

use crate::utils::*;

/// `redis.command_timeout_ms` of the stall tests: short, so a stall of a few of them is quick.
const TIMEOUT_MS: u64 = 1500;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Starts the real binary with `env` plus `extra` (`SECTION__KEY`, value), and waits until
/// it is ready.
async fn engine(id: &str, env: &[(String, String)], extra: &[(&str, &str)]) -> Replica {
    let mut env = env.to_vec();
    for (k, v) in extra {
        env.push((format!("XAPI_STREAM__{k}"), v.to_string()));
    }
    let r = Replica::spawn(id, &env);
    wait_ready(&r.base, Duration::from_secs(20)).await;
    r
}

/// Signs in from `from` (an `X-Forwarded-For` address, or none); the `name=value` cookie.
async fn sign_in(base: &str) -> String {
    let r = client()
        .post(format!("{base}/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// Whether `cookie` opens the console at `base` (its overview, not the sign-in form).
async fn opens_console(base: &str, cookie: &str) -> bool {
    let r = client()
        .get(format!("{base}/console/"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let html = r.text().await.unwrap();
    status == 200 && html.contains("id=\"tenants-total\"")
}

/// The CSRF token of a console page's forms.
async fn csrf(base: &str, cookie: &str) -> String {
    let html = client()
        .get(format!("{base}/console/"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = html
        .find("name=csrf value=\"")
        .expect("a form with a CSRF token")
        + 17;
    html[at..].split('"').next().unwrap().to_string()
}

/// A console POST with `cookie` and `form`: (status, Location or body).
async fn console_post(
    base: &str,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let r = client()
        .post(format!("{base}{path}"))
        .header("Cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    (status, location.unwrap_or(r.text().await.unwrap()))
}

/// POSTs `size` bytes of a form to `base``path` over a plain socket, by Content-Length or in
/// 64 KiB chunks (`Transfer-Encoding: chunked`), as far as the engine reads (it may answer and
/// close early); the answer's status.
async fn raw_post(base: &str, path: &str, size: usize, chunked: bool) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {size}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         {framing}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    while sent < size {
        let frame = if chunked {
            [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat()
        } else {
            chunk.clone()
        };
        if s.write_all(&frame).await.is_err() {
            break; // answered and closed
        }
        sent += chunk.len();
    }
    if chunked {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:.200}"))
}

/// Open invitations (`GET /admin/invitations`).
async fn open_invitations(base: &str) -> usize {
    admin_get(base, "/admin/invitations")
        .await
        .as_array()
        .expect("a list")
        .iter()
        .filter(|i| i["state"] == "open")
        .count()
}

#[actix_web::test]
async fn signing_out_ends_the_session_on_every_replica_and_everywhere_ends_them_all() {
    let t = TestEnv::start(SimConfig::default()).await;
    let env = t.replica_env();
    let a = engine("a", &env, &[]).await;
    let b = engine("b", &env, &[]).await;

    let first = sign_in(&a.base).await;
    let second = sign_in(&a.base).await;
    assert!(
        opens_console(&b.base, &first).await,
        "a session opens the console on every replica"
    );
    let token = csrf(&a.base, &first).await;
    let (status, to) = console_post(&a.base, "/console/logout", &first, &[("csrf", &token)]).await;
    assert_eq!((status, to.as_str()), (303, "/console/"), "sign-out");
    for base in [&a.base, &b.base] {
        assert!(
            !opens_console(base, &first).await,
            "a signed-out cookie still opens {base}/console/"
        );
    }
    // Nor does it act: creating an invitation with it is refused, nothing is stored.
    let (status, _) = console_post(
        &b.base,
        "/console/invitations",
        &first,
        &[("csrf", &token), ("customer_id", "c-1"), ("name", "Stolen")],
    )
    .await;
    assert_eq!(status, 401, "an invitation made with a signed-out cookie");
    assert_eq!(open_invitations(&a.base).await, 0);
    assert!(
        opens_console(&b.base, &second).await,
        "signing out one session ends only that one"
    );

    // Sign out everywhere (from replica b): every session ends, on every replica.
    let third = sign_in(&b.base).await;
    let token = csrf(&b.base, &second).await;
    let (status, _) = console_post(
        &b.base,
        "/console/sessions/end",
        &second,
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(status, 303);
    for cookie in [&second, &third] {
        for base in [&a.base, &b.base] {
            assert!(
                !opens_console(base, cookie).await,
                "a session outlived signing out everywhere"
            );
        }
    }
    let fourth = sign_in(&a.base).await;
    assert!(
        opens_console(&b.base, &fourth).await,
        "signing in works again afterwards"
    );
}

/// Sends `send` until it is answered other than 503, following `Retry-After`, for at most
/// `limit`; the last answer.
async fn retry_503<F, Fut>(limit: Duration, mut send: F) -> (u16, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + limit;
    let started = Instant::now();
    let mut answers = Vec::new();
    loop {
        let r = send().await;
        let status = r.status().as_u16();
        let wait = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        answers.push(status);
        if status != 503 || Instant::now() > deadline {
            eprintln!("sent again: {answers:?} within {:?}", started.elapsed());
            return (status, body);
        }
        assert!(wait.is_some(), "a 503 without Retry-After: {body}");
        tokio::time::sleep(Duration::from_secs(wait.unwrap_or(1))).await;
    }
}

/// Sends `send` while Redis is paused long enough for the engine's bounded commands to time
/// out; resumes Redis once it answered. Its answer.
async fn during_stall(
    redis: &xapi_stream::devkit::redis_server::RedisServer,
    send: impl std::future::Future<Output = reqwest::Response>,
) -> (u16, Value) {
    redis.pause();
    let r = send.await;
    redis.resume();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[actix_web::test]
async fn an_activation_answered_503_in_a_stall_completes_when_sent_again() {
    let t = TestEnv::own(SimConfig {
        orgs: 2,
        ..SimConfig::default()
    })
    .await;
    let timeout = TIMEOUT_MS.to_string();
    let e = engine(
        "a",
        &t.replica_env(),
        &[("REDIS__COMMAND_TIMEOUT_MS", &timeout)],
    )
    .await;
    // A retry finds the claim of the stalled attempt held for a few timeouts at most.
    let retry_limit = Duration::from_millis(20 * TIMEOUT_MS);

    // POST /admin/activations.
    let jwt = t.sim.activation_jwt(0);
    let send = || {
        client()
            .post(format!("{}/admin/activations", e.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "jwt": jwt }))
            .send()
    };
    let (status, body) = during_stall(&t.redis, async { send().await.unwrap() }).await;
    assert_eq!(status, 503, "an activation during the stall: {body}");
    let (status, body) = retry_503(retry_limit, || async { send().await.unwrap() }).await;
    assert_eq!(status, 202, "the same JWT sent again after the 503: {body}");
    let tenant = body["tenant_id"].as_str().expect("a tenant").to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            admin_tenant(&e.base, &tenant).await["provisioning_state"] == "completed"
        })
        .await,
        "the retried activation did not complete"
    );
    let (status, body) = retry_503(retry_limit, || async { send().await.unwrap() }).await;
    assert_eq!(
        status, 401,
        "a JWT whose activation took effect is a replay: {body}"
    );

    // POST /provision.
    let jwt = t.sim.activation_jwt(1);
    let send = || {
        client()
            .post(format!("{}/provision", e.base))
            .json(&json!({ "jwt": jwt }))
            .send()
    };
    let (status, body) = during_stall(&t.redis, async { send().await.unwrap() }).await;
    assert_eq!(status, 503, "a provisioning during the stall: {body}");
    let (status, body) = retry_503(retry_limit, || async { send().await.unwrap() }).await;
    assert_eq!(status, 200, "the same JWT sent again after the 503: {body}");
    let url = body["redirectUrl"]
        .as_str()
        .expect("a redirectUrl")
        .to_string();
    let page = client().get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200, "its setup page");
    let (status, body) = retry_503(retry_limit, || async { send().await.unwrap() }).await;
    assert_eq!(
        status, 401,
        "a provisioning that took effect is a replay: {body}"
    );
}

#[actix_web::test]
async fn an_invitation_answered_503_in_a_stall_is_not_usable() {
    let t = TestEnv::own(SimConfig::default()).await;
    let timeout = TIMEOUT_MS.to_string();
    let e = engine(
        "a",
        &t.replica_env(),
        &[("REDIS__COMMAND_TIMEOUT_MS", &timeout)],
    )
    .await;
    // POST /admin/invitations answered 503 stores nothing usable.
    let (status, body) = during_stall(&t.redis, async {
        client()
            .post(format!("{}/admin/invitations", e.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"customer_id": "c-9", "name": "Nobody saw it"}))
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(status, 503, "an invitation during the stall: {body}");
    // Once Redis has run what waited for it (a PING answered after it), no open invitation.
    let mut conn = t.redis.client().get_connection().unwrap();
    let _: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(
        open_invitations(&e.base).await,
        0,
        "an invitation answered 503 was stored"
    );
}

/// A session of `base`'s setup page (an HTTPS activation of the simulator's org `i`).
async fn setup_session(base: &str, jwt: &str) -> String {
    provision_session(base, jwt).await
}

#[actix_web::test]
async fn oversized_or_malformed_forms_are_413_or_400_and_never_count_as_a_guess() {
    let t = TestEnv::start(SimConfig::default()).await;
    let e = engine("a", &t.replica_env(), &[]).await;
    let session = setup_session(&e.base, &t.sim.activation_jwt(0)).await;
    let setup = format!("{}/setup/{session}", e.base);
    let login = format!("{}/console/login", e.base);
    let big = format!("code={}", "A".repeat(20_000));
    let token_big = format!("token={}", "A".repeat(20_000));
    for (url, what) in [(&setup, "setup"), (&login, "sign-in")] {
        let form = if what == "setup" { &big } else { &token_big };
        let cases: Vec<(&str, u16, reqwest::RequestBuilder)> = vec![
            (
                "a 20 KB form",
                413,
                client()
                    .post(url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.clone()),
            ),
            (
                "a JSON body",
                400,
                client().post(url).json(&json!({"code": "x", "token": "x"})),
            ),
        ];
        for (case, want, req) in cases {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), want, "{what}: {case}");
        }
        let path = &url[e.base.len()..];
        for chunked in [false, true] {
            assert_eq!(
                raw_post(&e.base, path, 10 << 20, chunked).await,
                413,
                "{what}: a 10 MiB body (chunked: {chunked})"
            );
        }
    }
    let metrics = metrics_text(&e.base).await;
    assert_eq!(
        metric(
            &metrics,
            "xapi_stream_setup_attempts_total{result=\"wrong_code\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "a form that is not one counted as a wrong code"
    );
    // Every attempt is still there: a wrong code now says all but one are left.
    let r = client()
        .post(&setup)
        .form(&[("code", "WRONG-CODE")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let html = r.text().await.unwrap();
    let cfg = xapi_stream::devkit::devenv::engine_config(&t.sim, "redis://x", "p", &[]).unwrap();
    let left = cfg.activation.setup_max_attempts - 1;
    assert!(html.contains(&format!("{left} attempt(s) left")), "{html}");
    // And the sign-in counted no wrong token: the right one from the same address works at once.
    sign_in(&e.base).await;
}

#[actix_web::test]
async fn a_flood_of_unauthenticated_errors_cannot_hide_a_known_tenants_error() {
    let t = TestEnv::start(SimConfig::default()).await;
    let per_hour = 20;
    let e = engine(
        "a",
        &t.replica_env(),
        &[("SUPPORT__ERRORS_PER_HOUR", &per_hour.to_string())],
    )
    .await;
    let tenant = activate_org(&t.sim, &e.base, 0).await;
    // A scanner: junk JWTs on /provision, five times the hour's budget.
    for i in 0..5 * per_hour {
        let r = client()
            .post(format!("{}/provision", e.base))
            .json(&json!({ "jwt": format!("eyJhbGciOiJFUzI1NiJ9.junk{i}.sig") }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
    }
    // Then a real customer's webhook with a bad signature.
    let body = serde_json::to_vec(&numbered_event(&t.sim, 0, "Test.Support", 1)).unwrap();
    let r = client()
        .post(format!("{}/tenants/{tenant}/webhook", e.base))
        .header("Content-Type", "application/json")
        .header("X-Spark-Signature", sign_webhook("not-the-secret", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r.json::<Value>().await.unwrap()["trackingId"]
        .as_str()
        .unwrap()
        .to_string();
    let found = eventually(Duration::from_secs(10), || async {
        client()
            .get(format!("{}/admin/errors/{id}", e.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(
        found,
        "the tenant's error {id} is not in the support log after the flood"
    );
}

#[actix_web::test]
async fn wrong_admin_tokens_are_throttled_per_address_and_a_right_one_elsewhere_is_not() {
    let t = TestEnv::start(SimConfig::default()).await;
    let e = engine(
        "a",
        &t.replica_env(),
        &[("SERVER__TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let cfg = xapi_stream::devkit::devenv::engine_config(&t.sim, "redis://x", "p", &[]).unwrap();
    let limit = cfg.security.admin_failures_per_address as usize;
    let bearer = |from: &'static str, token: &'static str| {
        client()
            .get(format!("{}/admin/tenants", e.base))
            .header("X-Forwarded-For", from)
            .bearer_auth(token)
            .send()
    };
    let login = |from: &'static str, token: &'static str| {
        client()
            .post(format!("{}/console/login", e.base))
            .header("X-Forwarded-For", from)
            .form(&[("token", token)])
            .send()
    };
    let mut bearer_answers = Vec::new();
    let mut login_answers = Vec::new();
    for _ in 0..40 {
        let r = bearer("203.0.113.1", "guess").await.unwrap();
        bearer_answers.push((r.status().as_u16(), r.headers().contains_key("retry-after")));
        let r = login("203.0.113.2", "guess").await.unwrap();
        login_answers.push((r.status().as_u16(), r.headers().contains_key("retry-after")));
    }
    for (what, answers) in [
        ("bearer", &bearer_answers),
        ("console sign-in", &login_answers),
    ] {
        assert!(
            answers[..limit].iter().all(|a| a.0 == 401),
            "{what}: the first {limit}: {answers:?}"
        );
        assert!(
            answers[limit..].iter().all(|&a| a == (429, true)),
            "{what}: past {limit} wrong tokens, 429 with Retry-After: {answers:?}"
        );
    }
    // The throttled address gets 429 even with the right token (it is not compared)...
    assert_eq!(
        bearer("203.0.113.1", ADMIN_TOKEN).await.unwrap().status(),
        429
    );
    // ...and every other address is served at once.
    assert_eq!(
        bearer("203.0.113.3", ADMIN_TOKEN).await.unwrap().status(),
        200
    );
    assert_eq!(
        login("203.0.113.3", ADMIN_TOKEN).await.unwrap().status(),
        303
    );
    let metrics = metrics_text(&e.base).await;
    let throttled = 2 * (40 - limit) + 1;
    assert_eq!(
        metric(
            &metrics,
            "xapi_stream_admin_auth_failures_total{result=\"throttled\"}"
        ),
        Some(throttled as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "xapi_stream_admin_auth_failures_total{result=\"refused\"}"
        ),
        Some(2.0 * limit as f64)
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            e.log_lines(200)
                .contains("too many wrong tokens from one address")
        })
        .await,
        "no log line about the throttled address"
    );
}

#[actix_web::test]
async fn every_answer_with_a_body_says_nosniff() {
    let t = TestEnv::start(SimConfig::default()).await;
    let e = engine("a", &t.replica_env(), &[]).await;
    let cookie = sign_in(&e.base).await;
    let body = b"{}".to_vec();
    let requests = [
        (
            "console page",
            client()
                .get(format!("{}/console/", e.base))
                .header("Cookie", cookie.as_str()),
        ),
        ("sign-in page", client().get(format!("{}/console/", e.base))),
        (
            "error JSON 404",
            client().get(format!("{}/nowhere", e.base)),
        ),
        (
            "error JSON 401",
            client().get(format!("{}/admin/tenants", e.base)),
        ),
        (
            "setup page 404",
            client().get(format!("{}/setup/no-such-session", e.base)),
        ),
        ("metrics", client().get(format!("{}/metrics", e.base))),
        (
            "webhook 404",
            client()
                .post(format!("{}/tenants/nobody/webhook", e.base))
                .body(body),
        ),
    ];
    for (what, req) in requests {
        let r = req.send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap().to_string()),
            Some("nosniff".to_string()),
            "{what} ({})",
            r.status()
        );
    }
}

#[actix_web::test]
async fn a_console_on_the_public_port_is_warned_about_at_start() {
    let t = TestEnv::start(SimConfig::default()).await;
    let e = engine("a", &t.replica_env(), &[("LOG__FORMAT", "text")]).await;
    assert!(
        e.log_lines(100).contains("share the public listener"),
        "no start-up warning about the console on the public port:\n{}",
        e.log_lines(100)
    );
}

#[actix_web::test]
async fn a_console_page_answers_within_one_redis_timeout_during_a_stall() {
    let t = TestEnv::own(SimConfig::default()).await;
    let timeout = TIMEOUT_MS.to_string();
    let e = engine(
        "a",
        &t.replica_env(),
        &[("REDIS__COMMAND_TIMEOUT_MS", &timeout)],
    )
    .await;
    let tenant = activate_org(&t.sim, &e.base, 0).await;
    let cookie = sign_in(&e.base).await;
    let bound = Duration::from_millis(2 * TIMEOUT_MS);
    for path in [
        format!("/console/tenants/{tenant}"),
        "/console/invitations".to_string(),
        "/console/".to_string(),
        "/console/tenants".to_string(),
    ] {
        t.redis.pause();
        let started = Instant::now();
        let r = client()
            .get(format!("{}{path}", e.base))
            .header("Cookie", cookie.as_str())
            .send()
            .await;
        let took = started.elapsed();
        t.redis.resume();
        let status = r.unwrap().status().as_u16();
        eprintln!("{path} during a stall: {status} after {took:?}");
        assert!(
            took < bound,
            "{path} took {took:?} during a stall, more than twice redis.command_timeout_ms ({status})"
        );
        assert!(status == 503 || status == 200, "{path}: {status}");
        // Redis is back: the page answers again.
        assert!(
            eventually(Duration::from_secs(10), || async {
                client()
                    .get(format!("{}{path}", e.base))
                    .header("Cookie", cookie.as_str())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    == 200
            })
            .await,
            "{path} after the stall"
        );
    }
}

/// The jti of a JWT (its payload read without a check: the test made it).
fn jti_of(jwt: &str) -> String {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Makes Redis look as if the activation with `jwt` had been claimed and worked on, but its
/// confirmation never landed (the engine was answered a timeout and said 503): what a retry
/// after such a 503 finds.
fn lose_confirmation(
    redis: &xapi_stream::devkit::redis_server::RedisServer,
    prefix: &str,
    jwt: &str,
) {
    use sha2::Digest;
    let key = format!(
        "{prefix}:jti:{}",
        hex::encode(sha2::Sha256::digest(jti_of(jwt).as_bytes()))
    );
    let claim = format!(
        "claim:{}:00:0",
        hex::encode(sha2::Sha256::digest(jwt.as_bytes()))
    );
    let mut conn = redis.client().get_connection().unwrap();
    let kept: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(claim)
        .arg("XX")
        .arg("KEEPTTL")
        .query(&mut conn)
        .unwrap();
    assert!(kept.is_some(), "no jti recorded at {key}");
}

#[actix_web::test]
async fn a_retry_after_a_lost_confirmation_finds_the_activation_and_does_not_repeat_it() {
    let t = TestEnv::start(SimConfig {
        orgs: 2,
        ..SimConfig::default()
    })
    .await;
    let e = engine("a", &t.replica_env(), &[]).await;

    // POST /admin/activations: the activation completed (tokens exchanged, appUrl patched).
    let jwt = t.sim.activation_jwt(0);
    let (status, body) = admin_activate(&e.base, &jwt).await;
    assert_eq!(status, 202, "{body}");
    let tenant = body["tenant_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            t.sim.app_state(0).provisioning_state.as_deref() == Some("completed")
                && admin_tenant(&e.base, &tenant).await["provisioning_state"] == "completed"
        })
        .await,
        "the activation did not complete"
    );
    let (patches, exchanges) = (
        t.sim.app_state(0).patches.len(),
        t.sim.oauth_stats().exchanges_ok,
    );
    lose_confirmation(t.redis, &t.prefix, &jwt);
    let (status, body) = admin_activate(&e.base, &jwt).await;
    assert_eq!(status, 202, "the retry after a lost confirmation: {body}");
    assert_eq!(body["tenant_id"], tenant.as_str());
    assert_eq!(
        body["provisioning_state"], "completed",
        "activated again: {body}"
    );
    assert_eq!(
        t.sim.app_state(0).patches.len(),
        patches,
        "the appUrl was patched again"
    );
    assert_eq!(
        t.sim.oauth_stats().exchanges_ok,
        exchanges,
        "the tokens were exchanged again"
    );
    assert_eq!(
        admin_tenant(&e.base, &tenant).await["tokens_state"],
        "valid"
    );
    let (status, body) = admin_activate(&e.base, &jwt).await;
    assert_eq!(status, 401, "confirmed now, the JWT is a replay: {body}");

    // POST /provision: the retry answers the same setup page.
    let jwt = t.sim.activation_jwt(1);
    let session = provision_session(&e.base, &jwt).await;
    lose_confirmation(t.redis, &t.prefix, &jwt);
    assert_eq!(
        provision_session(&e.base, &jwt).await,
        session,
        "another setup session"
    );
    let r = client()
        .post(format!("{}/provision", e.base))
        .json(&json!({ "jwt": jwt }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "confirmed now, the JWT is a replay");
}

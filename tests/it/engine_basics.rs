//! The engine's process skeleton: probes, metrics, Redis reachability, ordered shutdown.
use std::time::{Duration, Instant};

use xapi_stream::devkit::sim::SimConfig;

use crate::utils::*;

#[actix_web::test]
async fn probes_and_metrics_answer() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let http = reqwest::Client::new();
    let base = engine.base_url();

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for family in [
        "xapi_stream_webhooks_total",
        "xapi_stream_queue_polls_total",
        "xapi_stream_messages_total",
        "xapi_stream_stream_entries_total",
        "xapi_stream_redis_write_seconds",
        "xapi_stream_token_refreshes_total",
        "xapi_stream_actions_total",
        "xapi_stream_activations_total",
        "xapi_stream_jwt_rejections_total",
        "xapi_stream_backpressure_rejections_total",
        "xapi_stream_tenants",
        "xapi_stream_ingest_queue_depth",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "metric family {family} missing from /metrics"
        );
    }
    assert!(text.contains("xapi_stream_process_resident_memory_bytes"));
    assert_eq!(metric(&text, "xapi_stream_redis_up"), Some(1.0));

    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn readiness_follows_redis_within_a_bound() {
    let TestEnv {
        mut redis,
        prefix,
        sim,
    } = TestEnv::own(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/readyz", engine.base_url());

    // A hung Redis (SIGSTOP): readiness answers 503 within the ping bound, never hangs.
    redis.pause();
    let t = Instant::now();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "readyz hung {:?}",
        t.elapsed()
    );
    // Liveness is unaffected.
    let h = http
        .get(format!("{}/healthz", engine.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    redis.resume();
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.get(&url)
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await
    );

    // A dead Redis, then a restarted one on the same port: readiness recovers by itself.
    redis.kill();
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.get(&url)
                .send()
                .await
                .map(|r| r.status() == 503)
                .unwrap_or(false)
        })
        .await
    );
    redis.restart().unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            http.get(&url)
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await,
        "readiness did not recover after redis restart"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn engine_serves_health_before_redis_exists() {
    // Redis not started yet: liveness 200, readiness 503; once Redis appears, ready.
    let port = xapi_stream::devkit::redis_server::free_port().unwrap();
    let sim = start_sim(SimConfig::default()).await;
    let cfg = xapi_stream::devkit::devenv::engine_config(
        &sim,
        &format!("redis://127.0.0.1:{port}"),
        &unique_prefix(),
        &[],
    )
    .unwrap();
    let engine = xapi_stream::engine::start(cfg).await.unwrap();
    let http = reqwest::Client::new();
    let base = engine.base_url();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn each_test_gets_a_private_prefix_and_redis_can_be_faulted() {
    let mut redis = own_redis();
    let a = unique_prefix();
    let b = unique_prefix();
    assert_ne!(a, b);
    let mut conn = redis.client().get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{a}:k"))
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys_with_prefix(&redis, &a), vec![format!("{a}:k")]);
    assert!(keys_with_prefix(&redis, &b).is_empty());
    redis.kill();
    assert!(redis.client().get_connection().is_err());
    redis.restart().unwrap();
    assert!(
        keys_with_prefix(&redis, &a).is_empty(),
        "no persistence across restarts"
    );
}

/// `server.admin_bind`: the admin API, metrics and probes move to a private listener; the
/// public one serves only what Webex and customers' admins call, and answers 404 (the error
/// JSON) to the rest.
#[actix_web::test]
async fn with_admin_bind_the_public_port_serves_only_what_webex_calls() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("SERVER__ADMIN_BIND", "127.0.0.1:0")],
    )
    .await;
    let (public, admin) = (engine.base_url(), engine.admin_url());
    assert_ne!(public, admin);
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/admin/tenants"),
        ("POST", "/admin/activations"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{public}{path}"))
            .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path} on the public port");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["trackingId"].as_str().map(str::len),
            Some(32),
            "{body}"
        );
    }
    // The admin side works on its own port, and Webex's side on the public one.
    let tenant = activate_org(&sim, &admin, 0).await;
    let report = sim.deliver(0, &sim.generate(0, 3)).await;
    assert!(
        !report.webhook_statuses.is_empty() && report.webhook_statuses.iter().all(|&s| s == 200),
        "webhooks to the public port: {:?}",
        report.webhook_statuses
    );
    let got = admin_tenant(&admin, &tenant).await;
    assert_eq!(got["provisioning_state"], "completed", "{got}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            scrape(&admin, "xapi_stream_webhooks_total{result=\"accepted\"}").await >= 1.0
        })
        .await,
        "metrics on the admin port count the webhooks"
    );
    let r = http
        .get(format!("{admin}/tenants/{tenant}/webhook"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "webhooks are not served on the admin port");

    engine.shutdown().await;
    sim.shutdown().await;
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// A client trusting only `cert_pem`, reaching `localhost` at `addr`.
fn trusting(cert_pem: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// `server.tls_cert`/`tls_key`: the edge speaks HTTPS with the configured certificate (curl
/// with `--cacert` reaches `/healthz`), and a SIGHUP makes it serve renewed files.
#[actix_web::test]
async fn tls_at_the_edge_serves_the_configured_certificate_and_reloads_it_on_sighup() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (a_cert, a_key) = self_signed();
    std::fs::write(&cert_path, &a_cert).unwrap();
    std::fs::write(&key_path, &a_key).unwrap();
    let cfg = xapi_stream::devkit::devenv::engine_config(
        &sim,
        &redis.url(),
        &prefix,
        &[
            ("SERVER__TLS_CERT", cert_path.to_str().unwrap()),
            ("SERVER__TLS_KEY", key_path.to_str().unwrap()),
        ],
    )
    .unwrap();
    let engine = xapi_stream::engine::start(cfg).await.unwrap();
    let addr = engine.addr();
    assert!(engine.base_url().starts_with("https://"));
    let url = format!("https://localhost:{}/healthz", addr.port());
    let a = trusting(&a_cert, addr);
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await,
        "HTTPS /healthz with the configured certificate"
    );
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err_and(|e| !e.is_status())
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&cert_path)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .arg(&url)
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl --cacert: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Renewed files, then SIGHUP: new connections get the new certificate.
    let (b_cert, b_key) = self_signed();
    std::fs::write(&cert_path, &b_cert).unwrap();
    std::fs::write(&key_path, &b_key).unwrap();
    // SAFETY: signals this process; the engine installed its SIGHUP handler before serving.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let b = trusting(&b_cert, addr);
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await,
        "the renewed certificate is served after SIGHUP"
    );
    assert!(
        trusting(&a_cert, addr).get(&url).send().await.is_err(),
        "the old certificate is no longer served"
    );

    engine.shutdown().await;
    sim.shutdown().await;
}

/// Support by trackingId: a rejected webhook's trackingId leads to its time, endpoint, tenant,
/// status, reason and description, through the admin API and `xapi-stream support`.
#[actix_web::test]
async fn a_rejected_webhooks_tracking_id_finds_its_tenant_and_reason() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let tenant = activate_org(&sim, &base, 0).await;
    let mut hook = sim.app_state(0).webhook.expect("registered");
    hook.secret = Some("not-the-secret-not-the-secret".into());
    let body = serde_json::to_vec(&sim.generate(0, 1)[0]).unwrap();
    let r = reqwest::Client::new()
        .post(&hook.target_url)
        .header(
            "X-Spark-Signature",
            xapi_stream::devkit::sim::sign_webhook("wrong-secret-wrong", &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let answer: serde_json::Value = r.json().await.unwrap();
    let id = answer["trackingId"].as_str().unwrap().to_string();

    let lookup = || error_lookup(&admin, &id);
    // Recorded off the request path: found within a moment.
    assert!(
        eventually(Duration::from_secs(10), || async {
            lookup().await.0 == 200
        })
        .await,
        "trackingId {id} not found"
    );
    let (_, e) = lookup().await;
    assert_eq!(e["trackingId"], id.as_str());
    assert_eq!(e["tenant"], tenant.as_str());
    assert_eq!(e["status"], 401);
    assert_eq!(e["reason"], "bad_signature");
    assert_eq!(
        e["endpoint"],
        format!("POST /tenants/{tenant}/webhook").as_str()
    );
    assert!(
        e["description"].as_str().unwrap().contains("signature"),
        "{e}"
    );
    assert!(e["time"].as_str().is_some());

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_xapi-stream"))
        .args(["support", &id, "--url", &admin])
        .env(
            "XAPI_STREAM__SERVER__ADMIN_TOKEN",
            xapi_stream::devkit::devenv::ADMIN_TOKEN,
        )
        .env("XAPI_STREAM__SECURITY__ENCRYPTION_KEY", crate::cli::KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&tenant) && stdout.contains("bad_signature"),
        "{stdout}"
    );

    // Unknown and malformed ids.
    assert_eq!(error_lookup(&admin, &"0".repeat(32)).await.0, 404);
    assert_eq!(error_lookup(&admin, "xyz").await.0, 400);
    assert_eq!(
        scrape(
            &admin,
            "xapi_stream_support_errors_total{result=\"dropped\"}"
        )
        .await,
        0.0
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn a_flood_of_404s_cannot_use_up_the_support_budget_of_real_errors() {
    let TestEnv { redis, prefix, sim } =
        TestEnv::start(xapi_stream::devkit::sim::SimConfig::default()).await;
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("SUPPORT__ERRORS_PER_HOUR", "20")],
    )
    .await;
    let (base, admin) = (engine.base_url(), engine.admin_url());
    let http = reqwest::Client::new();
    // 30 unknown paths: 2 of them (a tenth of 20) recorded, 28 dropped.
    for i in 0..30 {
        let r = http
            .get(format!("{base}/no-such-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let dropped = "xapi_stream_support_errors_total{result=\"dropped\"}";
    assert_eq!(scrape(&admin, dropped).await, 28.0);
    // A real error afterwards is still recorded and found by its trackingId.
    let r = http
        .post(format!("{base}/admin/activations"))
        .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
        .json(&serde_json::json!({"jwt": "not.a.jwt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    let id = body["trackingId"].as_str().unwrap().to_string();
    // The support log is written off the request path: wait for its own counter, not for a
    // lookup (one made before the write would be answered 404, itself one more dropped 404).
    let recorded = "xapi_stream_support_errors_total{result=\"recorded\"}";
    let flushed = eventually(std::time::Duration::from_secs(10), || async {
        scrape(&admin, recorded).await == 3.0
    })
    .await;
    assert!(
        flushed,
        "the real error was not recorded: {recorded} = {}",
        scrape(&admin, recorded).await
    );
    assert_eq!(
        error_lookup(&admin, &id).await.0,
        200,
        "the real error is found by its trackingId"
    );
    assert_eq!(
        scrape(&admin, dropped).await,
        28.0,
        "only the 404s beyond their tenth of the budget are dropped, never the real error"
    );
    engine.shutdown().await;
    sim.shutdown().await;
}

/// `GET /admin/errors/{id}` on the admin listener: the status and the JSON answer (Null when
/// the body is not JSON).
async fn error_lookup(admin: &str, id: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{admin}/admin/errors/{id}"))
        .bearer_auth(xapi_stream::devkit::devenv::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

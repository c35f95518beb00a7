//! The real binary: configuration errors, manifest checks, signal handling.
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::utils::*;

const BIN: &str = env!("CARGO_BIN_EXE_xapi-stream");
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn serve(config: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn bad_key_in_config_exits_non_zero_with_one_line_naming_it() {
    // Bind a port the engine would use so we also see nothing binds before validation.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let f = write_config(&format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\nmax_connections = 3\n[security]\nencryption_key = \"{KEY}\"\n"
    ));
    let out = serve(f.path(), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(lines[0].contains("redis.max_connections"), "{stderr}");
    // Nothing was bound: the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn invalid_values_and_env_overrides_are_named() {
    let f = write_config(&format!("[security]\nencryption_key = \"{KEY}\"\n"));
    let out = serve(f.path(), &[("XAPI_STREAM__SERVER__BIND", "not-an-address")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.trim().starts_with("config error: server.bind:"),
        "{stderr}"
    );

    let f = write_config("[server]\nbind = \"127.0.0.1:0\"\n");
    let out = serve(f.path(), &[]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("security.encryption_key"), "{stderr}");

    let out = serve(
        write_config(&format!("[security]\nencryption_key = \"{KEY}\"\n")).path(),
        &[("XAPI_STREAM__SERVER__ADMIN_BIND", "localhost")],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success()
            && stderr
                .trim()
                .starts_with("config error: server.admin_bind:"),
        "{stderr}"
    );

    // A plain-HTTP public_url: Webex requires HTTPS for actionsUrl and the webhook targetUrl.
    let f = write_config(&format!(
        "[server]\npublic_url = \"http://xapi.example.com\"\n[security]\nencryption_key = \"{KEY}\"\n"
    ));
    let out = serve(f.path(), &[]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("config error: server.public_url: must be https"),
        "{stderr}"
    );

    // A TLS certificate that is not there: a config error like any other.
    let f = write_config(&format!("[security]\nencryption_key = \"{KEY}\"\n"));
    let out = serve(
        f.path(),
        &[
            ("XAPI_STREAM__SERVER__TLS_CERT", "/nonexistent/tls.crt"),
            ("XAPI_STREAM__SERVER__TLS_KEY", "/nonexistent/tls.key"),
        ],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.trim().lines().count() == 1
            && stderr.starts_with("config error: server.tls_cert: /nonexistent/tls.crt"),
        "{stderr}"
    );

    // The poll client: a value it does not know, and HTTP/2 asked of the HTTP/1.1 client.
    let f = write_config(&format!("[security]\nencryption_key = \"{KEY}\"\n"));
    let out = serve(f.path(), &[("XAPI_STREAM__INGEST__POLL_CLIENT", "http3")]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && stderr.contains("ingest.poll_client"),
        "{stderr}"
    );
    let out = serve(
        f.path(),
        &[
            ("XAPI_STREAM__WEBEX__ALLOW_HTTP", "true"),
            ("XAPI_STREAM__WEBEX__PLAIN_HTTP2", "true"),
        ],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success()
            && stderr
                .trim()
                .starts_with("config error: webex.plain_http2:")
            && stderr.contains("ingest.poll_client"),
        "{stderr}"
    );

    // Rotation: an overlap below 600 s outside a simulator setup, a period not longer than
    // twice the overlap, a negative period.
    let f = write_config(&format!("[security]\nencryption_key = \"{KEY}\"\n"));
    for (env, key) in [
        (
            [("XAPI_STREAM__SECURITY__WEBHOOK_SECRET_OVERLAP_SECS", "300")],
            "security.webhook_secret_overlap_secs",
        ),
        (
            [(
                "XAPI_STREAM__SECURITY__WEBHOOK_SECRET_ROTATION_DAYS",
                "0.01",
            )],
            "security.webhook_secret_rotation_days",
        ),
        (
            [("XAPI_STREAM__SECURITY__WEBHOOK_SECRET_ROTATION_DAYS", "-1")],
            "security.webhook_secret_rotation_days",
        ),
    ] {
        let out = serve(f.path(), &env);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.trim().lines().count() == 1
                && stderr.starts_with(&format!("config error: {key}:")),
            "{env:?}: {stderr}"
        );
    }

    let f = write_config("this is = = not toml");
    let out = serve(f.path(), &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not valid TOML")
    );
}

#[test]
fn manifest_check_passes_the_example_and_names_problems() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/manifest.example.json");
    let out = Command::new(BIN)
        .args(["manifest", "check", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let f = write_config(
        r#"{"id":"nope","manifestVersion":"1","displayName":"x","vendor":"v","email":"e@x.io",
            "description":"d","availability":"global","apiAccess":[],"xapiAccess":{},
            "provisioning":{"type":"https","url":"http://insecure.example.com"}}"#,
    );
    let out = Command::new(BIN)
        .args(["manifest", "check"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for path in [
        "$.id",
        "$.manifestVersion",
        "$.tocUrl",
        "$.provisioning.url",
    ] {
        assert!(stdout.contains(path), "{path} not reported:\n{stdout}");
    }
}

#[test]
fn serve_drains_and_exits_zero_on_sigterm() {
    let redis = shared_redis();
    let port = xapi_stream::devkit::redis_server::free_port().unwrap();
    let f = write_config(&format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 5\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n[security]\nencryption_key = \"{KEY}\"\n",
        redis.url(),
        unique_prefix()
    ));
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(f.path())
        .env("XAPI_STREAM__LOG__FORMAT", "json")
        // The drain's info lines are asserted: a RUST_LOG of the caller's must not hide them.
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = reqwest::blocking::Client::new();
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readyz")).send()
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "engine did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

#[test]
fn tail_reads_with_a_consumer_group_and_acks() {
    let redis = shared_redis();
    let prefix = unique_prefix();
    let mut conn = redis.client().get_connection().unwrap();
    let key = format!("{prefix}:{{ORG1}}:status");
    for v in 0..3 {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(&[
                ("workspace", "WS"),
                ("device", "DEV"),
                ("key", "Standby.State"),
                ("op", "set"),
                ("value", &format!("{v}")),
                ("prev", if v == 0 { "" } else { "0" }),
                ("ts", "2026-12-06T00:00:00.000Z"),
                ("full_sync", "0"),
                ("source", "webhook"),
                ("schema", "2"),
            ])
            .query(&mut conn)
            .unwrap();
    }
    let out = Command::new(BIN)
        .args(["tail", "--org", "ORG1", "--count", "3", "--group", "g1"])
        .env("XAPI_STREAM__REDIS__URL", redis.url())
        .env("XAPI_STREAM__REDIS__KEY_PREFIX", &prefix)
        .env("XAPI_STREAM__SECURITY__ENCRYPTION_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains("Standby.State = 2"), "{stdout}");
    // Schema 2 leaves the organization to the stream's key: tail names it from there.
    assert!(stdout.lines().all(|l| l.contains("org=ORG1")), "{stdout}");
    assert!(stdout.contains("(was unknown)"), "{stdout}");
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&key)
        .arg("g1")
        .query(&mut conn)
        .unwrap();
    let redis::Value::Array(parts) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(
        parts[0],
        redis::Value::Int(0),
        "everything printed was acknowledged"
    );
}

#[test]
fn tail_all_reads_the_firehose_shards_and_names_each_org() {
    let redis = shared_redis();
    let prefix = unique_prefix();
    let mut conn = redis.client().get_connection().unwrap();
    // Two organizations in two shards, as the engine writes them (streams.shards = 4).
    for (shard, org) in [(1, "ORG-A"), (3, "ORG-B")] {
        let _: String = redis::cmd("XADD")
            .arg(format!("{prefix}:{{all-{shard}}}:status"))
            .arg("*")
            .arg(&[
                ("org", org),
                ("device", "DEV"),
                ("key", "Standby.State"),
                ("op", "set"),
                ("value", "\"Standby\""),
                ("source", "webhook"),
            ])
            .query(&mut conn)
            .unwrap();
    }
    // An organization's own stream is not part of --all.
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:{{ORG-A}}:status"))
        .arg("*")
        .arg(&[("org", "ORG-A"), ("key", "Own.Stream")])
        .query(&mut conn)
        .unwrap();
    let out = Command::new(BIN)
        .args(["tail", "--all", "--count", "2", "--group", "g1"])
        .env("XAPI_STREAM__REDIS__URL", redis.url())
        .env("XAPI_STREAM__REDIS__KEY_PREFIX", &prefix)
        .env("XAPI_STREAM__STREAMS__FIREHOSE", "true")
        .env("XAPI_STREAM__STREAMS__SHARDS", "4")
        .env("XAPI_STREAM__SECURITY__ENCRYPTION_KEY", KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tailing 8 stream(s)"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains("org=ORG-A") && stdout.contains("org=ORG-B"),
        "{stdout}"
    );
    assert!(!stdout.contains("Own.Stream"), "{stdout}");
}

/// The binary as an operator runs it against a running engine: the engine's admin token and
/// encryption key in its environment (as from the same configuration).
fn admin_cli() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env(
        "XAPI_STREAM__SERVER__ADMIN_TOKEN",
        xapi_stream::devkit::devenv::ADMIN_TOKEN,
    )
    .env("XAPI_STREAM__SECURITY__ENCRYPTION_KEY", KEY);
    cmd
}

#[actix_web::test]
async fn activate_command_sends_the_jwt_to_a_running_engine() {
    let TestEnv { redis, prefix, sim } =
        TestEnv::start(xapi_stream::devkit::sim::SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let jwt_file = write_config(&sim.activation_jwt(0));
    let out = admin_cli()
        .args(["activate", "--url", &engine.base_url(), "--jwt-file"])
        .arg(jwt_file.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("activation started") && stdout.contains("provisioning"),
        "{stdout}"
    );
    // The same JWT again is a replay: refused with the trackingId shown.
    let out = admin_cli()
        .args(["activate", "--url", &engine.base_url(), "--jwt-file"])
        .arg(jwt_file.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trackingId"));
    engine.shutdown().await;
    sim.shutdown().await;
}

#[actix_web::test]
async fn manifest_request_update_patches_the_app_url() {
    let TestEnv { redis, prefix, sim } =
        TestEnv::start(xapi_stream::devkit::sim::SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/manifest.example.json");
    let run = |file: String| {
        let base = base.clone();
        let id = id.clone();
        async move {
            admin_cli()
                .args([
                    "manifest",
                    "request-update",
                    "--tenant",
                    &id,
                    "--url",
                    &base,
                    &file,
                ])
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(example.to_string()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = sim.app_state(0).patches.last().cloned().unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    assert_eq!(last["updateRequest"]["newManifest"], want);
    // An invalid manifest is refused locally, nothing sent.
    let bad = write_config(r#"{"id": "nope"}"#);
    let before = sim.app_state(0).patches.len();
    let out = run(bad.path().display().to_string()).await;
    assert!(!out.status.success());
    assert_eq!(sim.app_state(0).patches.len(), before);
    engine.shutdown().await;
    sim.shutdown().await;
}

/// `xapi-stream consumer grant|list|revoke` through a running engine: the password printed
/// once works against Redis, the listing never shows it, a revoked user cannot authenticate.
#[actix_web::test]
async fn consumer_commands_grant_list_and_revoke_a_redis_user() {
    let TestEnv { redis, prefix, sim } =
        TestEnv::start(xapi_stream::devkit::sim::SimConfig::default()).await;
    let engine = start_engine(&sim, &redis.url(), &prefix, &[]).await;
    let base = engine.base_url();
    let id = activate_org(&sim, &base, 0).await;
    let run = |args: Vec<String>| async move {
        let out = admin_cli()
            .arg("consumer")
            .args(&args)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let args = |words: &[&str]| -> Vec<String> {
        words
            .iter()
            .map(|w| w.to_string())
            .chain(["--tenant".into(), id.clone(), "--url".into(), base.clone()])
            .collect()
    };
    let (ok, out, err) = run(args(&["grant", "--name", "bi"])).await;
    assert!(ok, "{out} {err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let (user, password) = (field("user:"), field("password:"));
    let org = sim.org(0).org_id;
    assert!(out.contains(&format!("{prefix}:{{{org}}}:status")), "{out}");
    let client = {
        let mut u = url::Url::parse(&redis.url()).unwrap();
        u.set_username(&user).unwrap();
        u.set_password(Some(&password)).unwrap();
        redis::Client::open(u.as_str()).unwrap()
    };
    let len: i64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:{{{org}}}:status"))
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    assert!(len >= 0);
    let (ok, listed, _) = run(args(&["list"])).await;
    assert!(
        ok && listed.contains(&user) && !listed.contains(&password),
        "{listed}"
    );
    let (ok, again, err) = run(args(&["grant", "--name", "bi"])).await;
    assert!(
        !ok && err.contains("409") && err.contains("trackingId"),
        "{again} {err}"
    );
    let (ok, out, err) = run(args(&["revoke", "--name", "bi"])).await;
    assert!(ok, "{out} {err}");
    assert!(
        client.get_connection().is_err(),
        "a revoked user authenticated"
    );
    let (ok, listed, _) = run(args(&["list"])).await;
    assert!(ok && listed.contains("no consumers"), "{listed}");
    engine.shutdown().await;
    sim.shutdown().await;
}

/// `xapi-stream demo --seconds N` (what `make demo` runs, bounded): it keeps running after the
/// walk-through, prints the console's address and a sign-in token, every command it suggests
/// works while it runs (the consumer credential's read of another customer is refused), and it
/// ends by itself with exit code 0.
#[actix_web::test]
async fn the_demo_stays_up_and_every_command_it_suggests_works_while_it_runs() {
    use tokio::io::AsyncBufReadExt;
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--seconds", "15"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut commands = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            let t = line.trim_start();
            if t.starts_with("redis-cli") || t.starts_with("curl") {
                commands.push(t.to_string());
            }
            if line.contains("curl -s http") {
                break; // the last suggestion
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("the demo did not reach its suggestions: {seen:#?}"));
    let console = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("console"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no console address: {seen:#?}"))
        .to_string();
    assert!(
        seen.iter()
            .any(|l| l.contains("admin token: dev-admin-token")),
        "{seen:#?}"
    );
    let page = reqwest::get(&console).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("name=token"));
    assert_eq!(commands.len(), 5, "{commands:#?}");
    for c in &commands {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(c.split("   #").next().unwrap())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if c.contains("NOPERM") {
            assert!(text.contains("NOPERM"), "{c}: {text}");
        } else {
            assert!(
                out.status.success() && !text.contains("ERR") && !text.trim().is_empty(),
                "{c}: {text}"
            );
        }
    }
    // Still running, then ends by itself.
    assert!(
        demo.try_wait().unwrap().is_none(),
        "the demo ended before --seconds"
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(90), async {
        while lines.next_line().await.unwrap().is_some() {}
        demo.wait().await.unwrap()
    })
    .await
    .expect("the demo ends by itself after --seconds");
    assert!(status.success());
}

#[actix_web::test]
async fn set_ingest_switches_one_tenant_or_all_and_a_restart_names_those_off_the_setting() {
    let TestEnv { redis, prefix, sim } = TestEnv::start(xapi_stream::devkit::sim::SimConfig {
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    // Processes sharing one configuration (and encryption key).
    let env = with_settings(
        xapi_stream::devkit::devenv::engine_env(&sim, &redis.url(), &prefix),
        &[
            ("INTEGRATION__INGEST", "webhook"),
            ("LOG__LEVEL", "info"),
            ("LOG__FORMAT", "text"),
        ],
    );
    let engine = Replica::spawn("first", &env);
    wait_ready(&engine.base, Duration::from_secs(20)).await;
    let base = engine.base.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(activate_org(&sim, &base, i).await);
    }
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let base = base.clone();
        async move {
            let out = admin_cli()
                .arg("set-ingest")
                .args(&args)
                .args(["--url", &base])
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // One tenant: the queue is enabled at once, the webhook removed after the (600-s) overlap.
    let (code, out, err) = run(&["--tenant", &ids[0], "queue"]).await;
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(
        out.contains(&format!(
            "tenant {}: switching webhook -> queue (overlap",
            ids[0]
        )),
        "{out}"
    );
    assert_eq!(sim.app_state(0).queue_state.as_deref(), Some("enabled"));
    // Every other tenant, with progress and a summary; then nothing is left to move.
    let (code, out, err) = run(&["--all", "queue"]).await;
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("2 of 3 tenants to move to queue"), "{out}");
    assert!(
        out.contains("[1/2] tenant") && out.contains("[2/2] tenant"),
        "{out}"
    );
    assert!(out.contains("2 switching, 0 refused"), "{out}");
    let (code, out, _) = run(&["--all", "queue"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("0 of 3 tenants to move"), "{out}");
    // Refused (another switch is under way): exit 1, each refusal with its description and
    // trackingId.
    let (code, out, err) = run(&["--all", "webhook"]).await;
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(out.contains("0 switching, 3 refused"), "{out}");
    assert!(
        err.contains("switch refused (409 Conflict)")
            && err.contains("a switch to queue is under way")
            && err.contains("trackingId"),
        "{err}"
    );
    // Not a mode, or no tenant named: refused by the command line itself.
    assert_eq!(run(&["--all", "pigeon"]).await.0, Some(2));
    assert_eq!(run(&["queue"]).await.0, Some(2));
    // A replica started now (integration.ingest still "webhook") says which tenants differ
    // from the setting, and how to move them.
    let replica = Replica::spawn("differs", &env);
    wait_ready(&replica.base, Duration::from_secs(20)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            replica.log_lines(1000).contains(
                "3 tenant(s) read another transport than integration.ingest = \"webhook\"",
            )
        })
        .await,
        "{}",
        replica.log_tail()
    );
    assert!(
        replica
            .log_lines(1000)
            .contains("xapi-stream set-ingest --all webhook")
    );
    drop(replica);
    drop(engine);
    sim.shutdown().await;
}

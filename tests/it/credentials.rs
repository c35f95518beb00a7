//! Consumer credentials against real Redis ACL: a granted user reads its organization with a
//! consumer group (the Python example, given only the credentials) and gets every entry; Redis
//! refuses it (`NOPERM`) another organization, writes, key listing, the server, the firehose
//! and the command stream unless granted; revoked (or its tenant deprovisioned), its
//! connection is closed and it cannot authenticate again. The same on a 3-master Redis Cluster
//! (the user is on every node); under Sentinel on the master and every replica; and a node
//! that lost its users (restarted without an ACL file, or joined later) gets them back from the
//! sync, which also removes a user no record names.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use redis::ConnectionLike;
use serde_json::{Value, json};
use xapi_stream::devkit::devenv::ADMIN_TOKEN;
use xapi_stream::devkit::redis_cluster::RedisCluster;
use xapi_stream::devkit::sim::{Sim, SimConfig};

use crate::consumers::{deps, entry_ids, example, org_streams, sunk};
use crate::utils::*;

/// One admin API call: (status, JSON body or Null).
async fn admin_call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn grant(base: &str, tenant: &str, name: &str, commands: bool) -> (u16, Value) {
    admin_call(
        base,
        reqwest::Method::POST,
        &format!("/admin/tenants/{tenant}/consumers"),
        Some(json!({"name": name, "commands": commands})),
    )
    .await
}

async fn revoke(base: &str, tenant: &str, name: &str) -> u16 {
    admin_call(
        base,
        reqwest::Method::DELETE,
        &format!("/admin/tenants/{tenant}/consumers/{name}"),
        None,
    )
    .await
    .0
}

/// The Redis a suite runs on.
struct World {
    /// The engine's `redis.url`.
    engine_url: String,
    cluster: bool,
    /// Each data node's URL (engine's credentials: none).
    nodes: Vec<String>,
}

impl World {
    /// A connection authenticated as `user`: to the cluster (following slots), or to the one
    /// server.
    fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> redis::RedisResult<Box<dyn ConnectionLike>> {
        if self.cluster {
            let c = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
                .username(user)
                .password(password)
                .build()?;
            Ok(Box::new(c.get_connection()?))
        } else {
            Ok(Box::new(
                node_as(&self.nodes[0], user, password).get_connection()?,
            ))
        }
    }

    /// Whether every data node has `user` (`ACL GETUSER`, as the engine's user).
    fn user_on_nodes(&self, user: &str) -> Vec<bool> {
        self.nodes
            .iter()
            .map(|n| {
                let mut c = redis::Client::open(n.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let v: redis::Value = redis::cmd("ACL")
                    .arg("GETUSER")
                    .arg(user)
                    .query(&mut c)
                    .unwrap();
                v != redis::Value::Nil
            })
            .collect()
    }
}

/// A client of the node at `url` authenticating as `user`.
fn node_as(url: &str, user: &str, password: &str) -> redis::Client {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(Some(password)).unwrap();
    redis::Client::open(u.as_str()).unwrap()
}

/// Runs `cmd`; the error text if Redis refused it.
fn run(conn: &mut dyn ConnectionLike, cmd: &mut redis::Cmd) -> Result<redis::Value, String> {
    cmd.query::<redis::Value>(conn).map_err(|e| e.to_string())
}

fn assert_noperm(conn: &mut dyn ConnectionLike, what: &str, cmd: &mut redis::Cmd) {
    match run(conn, cmd) {
        Err(e) if e.contains("NOPERM") || e.contains("NoPerm") => {}
        other => panic!("{what}: expected NOPERM, got {other:?}"),
    }
}

fn assert_allowed(conn: &mut dyn ConnectionLike, what: &str, cmd: &mut redis::Cmd) -> redis::Value {
    run(conn, cmd).unwrap_or_else(|e| panic!("{what}: refused: {e}"))
}

/// The Python example (docs/consumers/python/consumer.py) reading `org` as `user`: every entry
/// of the organization's two streams once, acknowledged. Returns the sink.
fn python_reads(
    world: &World,
    prefix: &str,
    org: &str,
    user: &str,
    password: &str,
    dir: &std::path::Path,
) -> PathBuf {
    let sink = dir.join(format!("{user}.sqlite"));
    let mut cmd = Command::new("python3");
    cmd.arg(example("python/consumer.py"))
        .args(["--redis", &world.nodes[0], "--prefix", prefix, "--org", org])
        .args(["--user", user, "--group", "warehouse", "--consumer", "c1"])
        .args(["--exit-when-idle-ms", "1500"])
        .arg("--sink")
        .arg(&sink)
        .env("REDIS_PASSWORD", password)
        .env("PYTHONPATH", deps("python"));
    if world.cluster {
        cmd.arg("--cluster");
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python example failed with the consumer credentials:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sink
}

/// Every entry id of `streams`, read as the engine's user.
fn written(world: &World, streams: &[String]) -> std::collections::HashSet<(String, String)> {
    if world.cluster {
        let c = redis::cluster::ClusterClient::new(world.nodes.clone()).unwrap();
        entry_ids(&mut c.get_connection().unwrap(), streams)
    } else {
        let c = redis::Client::open(world.nodes[0].as_str()).unwrap();
        entry_ids(&mut c.get_connection().unwrap(), streams)
    }
}

async fn scoped_suite(world: World, sim: Sim, prefix: String) {
    let engine = start_engine(
        &sim,
        &world.engine_url,
        &prefix,
        &[("STREAMS__FIREHOSE", "true")],
    )
    .await;
    let base = engine.admin_url();
    let t0 = activate_org(&sim, &base, 0).await;
    let t1 = activate_org(&sim, &base, 1).await;
    for i in 0..2 {
        let hook = sim.app_state(i).webhook.unwrap();
        for m in sim.generate(i, 20) {
            assert_eq!(sim.post_webhook(&hook, &m).await, 200);
        }
    }
    let (org0, org1) = (sim.org(0).org_id, sim.org(1).org_id);
    let dev0 = sim.org(0).devices[0].device_id.clone();
    let dev1 = sim.org(1).devices[0].device_id.clone();

    // Grant: the password once, the user on every node, the keys named.
    let (status, g) = grant(&base, &t0, "analytics", false).await;
    assert_eq!(status, 201, "{g}");
    let user = g["user"].as_str().unwrap().to_string();
    let password = g["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 64);
    assert!(user.contains(&t0) && user.ends_with("-analytics"), "{user}");
    assert_eq!(g["keys"]["status"], format!("{prefix}:{{{org0}}}:status"));
    assert!(g["keys"].get("commands").is_none(), "{g}");
    assert_eq!(
        g["nodes"].as_array().unwrap().len(),
        world.nodes.len(),
        "{g}"
    );
    assert_eq!(world.user_on_nodes(&user), vec![true; world.nodes.len()]);

    // The Python example with the credentials gets every entry of its organization.
    let dir = tempfile::tempdir().unwrap();
    let streams = org_streams(&prefix, &org0);
    let expected = written(&world, &streams);
    assert!(expected.len() >= 20, "{} entries", expected.len());
    let sink = python_reads(&world, &prefix, &org0, &user, &password, dir.path());
    let rows = sunk(&[sink]);
    let got: std::collections::HashSet<(String, String)> = rows
        .iter()
        .map(|(s, i, _, _)| (s.clone(), i.clone()))
        .collect();
    assert_eq!(
        got, expected,
        "the consumer did not get every entry of its organization"
    );

    // What Redis lets it do, and refuses.
    let mut conn = world.connect_as(&user, &password).unwrap();
    let c = conn.as_mut();
    let own_status = format!("{prefix}:{{{org0}}}:status");
    assert_allowed(
        c,
        "XRANGE own status",
        redis::cmd("XRANGE")
            .arg(&own_status)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1),
    );
    assert_allowed(
        c,
        "HGETALL own state",
        redis::cmd("HGETALL").arg(format!("{prefix}:{{{org0}}}:state:{dev0}")),
    );
    assert_allowed(
        c,
        "XLEN own command results",
        redis::cmd("XLEN").arg(format!("{prefix}:{{{org0}}}:command_results")),
    );
    assert_allowed(
        c,
        "HGETALL own devices",
        redis::cmd("HGETALL").arg(format!("{prefix}:{{{org0}}}:devices")),
    );
    let refused: Vec<(&str, redis::Cmd)> = vec![
        (
            "XRANGE another org's status",
            redis::cmd("XRANGE")
                .arg(format!("{prefix}:{{{org1}}}:status"))
                .arg("-")
                .arg("+")
                .clone(),
        ),
        (
            "HGETALL another org's state",
            redis::cmd("HGETALL")
                .arg(format!("{prefix}:{{{org1}}}:state:{dev1}"))
                .clone(),
        ),
        (
            "XRANGE another org's events",
            redis::cmd("XRANGE")
                .arg(format!("{prefix}:{{{org1}}}:events"))
                .arg("-")
                .arg("+")
                .clone(),
        ),
        (
            "XADD own status",
            redis::cmd("XADD")
                .arg(&own_status)
                .arg("*")
                .arg("k")
                .arg("v")
                .clone(),
        ),
        ("DEL own status", redis::cmd("DEL").arg(&own_status).clone()),
        (
            "XTRIM own status",
            redis::cmd("XTRIM")
                .arg(&own_status)
                .arg("MAXLEN")
                .arg(0)
                .clone(),
        ),
        (
            "XGROUP DESTROY own group",
            redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&own_status)
                .arg("warehouse")
                .clone(),
        ),
        (
            "HSET own state",
            redis::cmd("HSET")
                .arg(format!("{prefix}:{{{org0}}}:state:{dev0}"))
                .arg("k")
                .arg("1")
                .clone(),
        ),
        (
            "XRANGE a firehose shard",
            redis::cmd("XRANGE")
                .arg(format!("{prefix}:{{all-0}}:status"))
                .arg("-")
                .arg("+")
                .clone(),
        ),
        (
            "XADD own command stream",
            redis::cmd("XADD")
                .arg(format!("{prefix}:{{{org0}}}:commands"))
                .arg("*")
                .arg("k")
                .arg("v")
                .clone(),
        ),
        (
            "HGETALL the tenant record",
            redis::cmd("HGETALL")
                .arg(format!("{prefix}:{{{org0}}}:tenant"))
                .clone(),
        ),
    ];
    for (what, mut cmd) in refused {
        assert_noperm(c, what, &mut cmd);
    }
    // What names no key, on a node directly (as any client would send it).
    let mut direct = node_as(&world.nodes[0], &user, &password)
        .get_connection()
        .unwrap();
    for (what, mut cmd) in [
        ("FLUSHALL", redis::cmd("FLUSHALL")),
        (
            "CONFIG GET",
            redis::cmd("CONFIG").arg("GET").arg("maxmemory").clone(),
        ),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        ("SCAN", redis::cmd("SCAN").arg(0).clone()),
        ("INFO", redis::cmd("INFO")),
        ("ACL LIST", redis::cmd("ACL").arg("LIST").clone()),
        ("PUBLISH", redis::cmd("PUBLISH").arg("x").arg("y").clone()),
    ] {
        assert_noperm(&mut direct, what, &mut cmd);
    }

    // Commands only when granted, and then only its own organization's stream.
    let (status, ops) = grant(&base, &t0, "ops", true).await;
    assert_eq!(status, 201, "{ops}");
    assert_eq!(
        ops["keys"]["commands"],
        format!("{prefix}:{{{org0}}}:commands")
    );
    let ops_user = ops["user"].as_str().unwrap().to_string();
    let ops_pw = ops["password"].as_str().unwrap().to_string();
    let mut ops_conn = world.connect_as(&ops_user, &ops_pw).unwrap();
    assert_allowed(
        ops_conn.as_mut(),
        "XADD own command stream (granted)",
        redis::cmd("XADD")
            .arg(format!("{prefix}:{{{org0}}}:commands"))
            .arg("*")
            .arg("id")
            .arg("ops-1"),
    );
    assert_noperm(
        ops_conn.as_mut(),
        "XADD another org's command stream",
        redis::cmd("XADD")
            .arg(format!("{prefix}:{{{org1}}}:commands"))
            .arg("*")
            .arg("id")
            .arg("x"),
    );
    assert_noperm(
        ops_conn.as_mut(),
        "XADD own status (commands granted)",
        redis::cmd("XADD")
            .arg(&own_status)
            .arg("*")
            .arg("k")
            .arg("v"),
    );

    // Listed (never a password); names are unique per tenant; bad requests refused.
    let (status, list) = admin_call(
        &base,
        reqwest::Method::GET,
        &format!("/admin/tenants/{t0}/consumers"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["analytics", "ops"]);
    assert!(!list.to_string().contains("password") && !list.to_string().contains(&password));
    let (status, other) = admin_call(
        &base,
        reqwest::Method::GET,
        &format!("/admin/tenants/{t1}/consumers"),
        None,
    )
    .await;
    assert_eq!((status, other), (200, json!([])));
    let (status, dup) = grant(&base, &t0, "analytics", false).await;
    assert_eq!(status, 409, "{dup}");
    assert_eq!(dup["trackingId"].as_str().unwrap().len(), 32);
    assert_eq!(grant(&base, &t0, "Bad Name", false).await.0, 400);
    assert_eq!(grant(&base, "no-such-tenant", "x", false).await.0, 404);

    // The support log has the grant, without its secret.
    let (status, record) = admin_call(
        &base,
        reqwest::Method::GET,
        &format!("/admin/errors/{}", g["trackingId"].as_str().unwrap()),
        None,
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_call(
                &base,
                reqwest::Method::GET,
                &format!("/admin/errors/{}", g["trackingId"].as_str().unwrap()),
                None,
            )
            .await
            .0 == 200
        })
        .await,
        "the grant is in the support log ({status} {record})"
    );
    let (_, record) = admin_call(
        &base,
        reqwest::Method::GET,
        &format!("/admin/errors/{}", g["trackingId"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(record["reason"], "consumer_granted", "{record}");
    assert!(!record.to_string().contains(&password));

    // Revoked: the open connection is closed, a new one cannot authenticate, no node has it.
    assert_eq!(revoke(&base, &t0, "analytics").await, 204);
    assert!(
        run(c, redis::cmd("XLEN").arg(&own_status)).is_err(),
        "a revoked user's connection still works"
    );
    let again = world
        .connect_as(&user, &password)
        .and_then(|mut c| redis::cmd("XLEN").arg(&own_status).query::<i64>(c.as_mut()));
    let e = again.expect_err("a revoked user authenticated").to_string();
    assert!(
        e.contains("WRONGPASS") || e.contains("AuthenticationFailed"),
        "{e}"
    );
    assert_eq!(world.user_on_nodes(&user), vec![false; world.nodes.len()]);
    assert_eq!(revoke(&base, &t0, "analytics").await, 404);

    let metrics = metrics_text(&base).await;
    let count = |labels: &str| {
        metric(
            &metrics,
            &format!("xapi_stream_consumer_credentials_total{{{labels}}}"),
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(count(r#"action="grant",result="ok""#), 2.0);
    assert_eq!(count(r#"action="grant",result="exists""#), 1.0);
    assert_eq!(count(r#"action="grant",result="invalid""#), 1.0);
    assert_eq!(count(r#"action="revoke",result="ok""#), 1.0);
    assert!(!metrics.contains(&password) && !metrics.contains(&ops_pw));

    // A deprovision revokes the rest.
    let (status, _) = action(&base, &t0, &sim.action_jwt(0, "deprovision", json!({}))).await;
    assert!(
        (200..300).contains(&status),
        "deprovision answered {status}"
    );
    assert!(
        world
            .connect_as(&ops_user, &ops_pw)
            .and_then(|mut c| redis::cmd("PING").query::<String>(c.as_mut()))
            .is_err()
    );
    assert_eq!(
        world.user_on_nodes(&ops_user),
        vec![false; world.nodes.len()]
    );
    let (_, list) = admin_call(
        &base,
        reqwest::Method::GET,
        &format!("/admin/tenants/{t0}/consumers"),
        None,
    )
    .await;
    assert_eq!(list, json!([]));
    engine.shutdown().await;
}

fn two_orgs() -> SimConfig {
    SimConfig {
        orgs: 2,
        devices_per_org: 2,
        ..Default::default()
    }
}

#[actix_web::test]
async fn a_consumer_credential_reads_its_organization_only_until_revoked() {
    let redis = shared_redis();
    let world = World {
        engine_url: redis.url(),
        cluster: false,
        nodes: vec![redis.url()],
    };
    scoped_suite(world, start_sim(two_orgs()).await, unique_prefix()).await;
}

#[actix_web::test]
async fn on_a_redis_cluster_a_consumer_credential_is_on_every_node_and_reads_its_organization_only()
{
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .expect("a 3-master redis cluster starts");
    let world = World {
        engine_url: cluster.urls(),
        cluster: true,
        nodes: cluster.node_urls(),
    };
    scoped_suite(world, start_sim(two_orgs()).await, unique_prefix()).await;
    drop(cluster);
}

/// Sentinel: ACLs are not replicated, so the user is set on the master and each replica
/// (consumers may read from a replica); the master is found through the sentinels.
#[actix_web::test]
async fn under_sentinel_a_consumer_credential_is_on_the_master_and_every_replica() {
    use xapi_stream::devkit::redis_sentinel::{MASTER_NAME, SentinelSet};
    let set = tokio::task::spawn_blocking(|| SentinelSet::start(2, 1))
        .await
        .unwrap()
        .expect("master, 2 replicas and a sentinel start");
    let sim = start_sim(two_orgs()).await;
    let prefix = unique_prefix();
    let sentinels = set.sentinel_addrs().join(",");
    let engine = start_engine(
        &sim,
        "redis://127.0.0.1:1",
        &prefix,
        &[
            ("REDIS__SENTINELS", sentinels.as_str()),
            ("REDIS__SENTINEL_MASTER", MASTER_NAME),
        ],
    )
    .await;
    let base = engine.admin_url();
    let t0 = activate_org(&sim, &base, 0).await;
    let (status, g) = grant(&base, &t0, "analytics", false).await;
    assert_eq!(status, 201, "{g}");
    let user = g["user"].as_str().unwrap();
    let password = g["password"].as_str().unwrap();
    assert_eq!(
        g["nodes"].as_array().unwrap().len(),
        3,
        "master and 2 replicas: {g}"
    );
    let org0 = sim.org(0).org_id;
    for node in &set.nodes {
        // Each node, the replicas included, authenticates the user and serves it its own org.
        let mut c = node_as(&node.url(), user, password)
            .get_connection()
            .unwrap();
        let _: i64 = redis::cmd("XLEN")
            .arg(format!("{prefix}:{{{org0}}}:status"))
            .query(&mut c)
            .unwrap_or_else(|e| panic!("node {}: {e}", node.port()));
    }
    assert_eq!(revoke(&base, &t0, "analytics").await, 204);
    for node in &set.nodes {
        assert!(
            node_as(&node.url(), user, password)
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_err()
        );
    }
    engine.shutdown().await;
}

/// A node that lost the users (restarted without an ACL file, or joined the cluster later)
/// gets them back within `redis.acl_sync_secs`; an engine-made user no record names (revoked
/// while its node was unreachable) is removed; users the engine did not make are left alone.
#[actix_web::test]
async fn the_sync_restores_a_lost_user_and_removes_one_no_record_names() {
    let redis = shared_redis();
    let sim = start_sim(two_orgs()).await;
    let prefix = unique_prefix();
    let engine = start_engine(
        &sim,
        &redis.url(),
        &prefix,
        &[("REDIS__ACL_SYNC_SECS", "1")],
    )
    .await;
    let base = engine.admin_url();
    let t0 = activate_org(&sim, &base, 0).await;
    let (status, g) = grant(&base, &t0, "analytics", false).await;
    assert_eq!(status, 201, "{g}");
    let user = g["user"].as_str().unwrap().to_string();
    let password = g["password"].as_str().unwrap().to_string();
    let mut admin = redis.client().get_connection().unwrap();
    let stray = format!("{prefix}-{}-stray", uuid::Uuid::new_v4());
    let foreign = format!("{prefix}-someone-else");
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query(&mut admin)
        .unwrap();
    for u in [&stray, &foreign] {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(u)
            .arg("on")
            .arg(">pw")
            .query(&mut admin)
            .unwrap();
    }
    let exists = |admin: &mut redis::Connection, u: &str| {
        redis::cmd("ACL")
            .arg("GETUSER")
            .arg(u)
            .query::<redis::Value>(admin)
            .unwrap()
            != redis::Value::Nil
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            let ok = exists(&mut admin, &user) && !exists(&mut admin, &stray);
            async move { ok }
        })
        .await,
        "the sync did not restore the lost user and remove the stray one"
    );
    assert!(
        exists(&mut admin, &foreign),
        "a user the engine did not make was removed"
    );
    let mut c = node_as(&redis.url(), &user, &password)
        .get_connection()
        .unwrap();
    let _: String = redis::cmd("PING").query(&mut c).unwrap();
    let metrics = metrics_text(&base).await;
    assert!(
        metric(
            &metrics,
            r#"xapi_stream_consumer_credentials_total{action="restore",result="ok"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &metrics,
            r#"xapi_stream_consumer_credentials_total{action="remove",result="ok"}"#
        )
        .unwrap()
            >= 1.0
    );
    // Rules of an earlier version (the record says so): set again, and the record marked.
    let records = format!("{prefix}:consumers");
    let json: String = redis::cmd("HGET")
        .arg(&records)
        .arg(&user)
        .query(&mut admin)
        .unwrap();
    let mut record: Value = serde_json::from_str(&json).unwrap();
    assert!(!record["rules"].as_str().unwrap().is_empty(), "{record}");
    record["rules"] = json!("an-earlier-version");
    let _: () = redis::cmd("HSET")
        .arg(&records)
        .arg(&user)
        .arg(record.to_string())
        .query(&mut admin)
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("-xrange")
        .query(&mut admin)
        .unwrap();
    let status = format!("{prefix}:{{{}}}:status", sim.org(0).org_id);
    assert!(
        eventually(Duration::from_secs(20), || {
            let xrange = redis::cmd("XRANGE")
                .arg(&status)
                .arg("-")
                .arg("+")
                .query::<redis::Value>(&mut c)
                .is_ok();
            let json: String = redis::cmd("HGET")
                .arg(&records)
                .arg(&user)
                .query(&mut admin)
                .unwrap();
            let ok = xrange && !json.contains("an-earlier-version");
            async move { ok }
        })
        .await,
        "the sync did not set the current rules for a record of an earlier version"
    );
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&foreign)
        .query(&mut admin)
        .unwrap();
    assert_eq!(revoke(&base, &t0, "analytics").await, 204);
    engine.shutdown().await;
}

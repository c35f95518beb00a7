//! Downstream consumers: the firehose, retention by age, and the Python and Node consumer
//! examples in docs/consumers, run for real against the engine's streams.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::Value;
use xapi_stream::devkit::redis_cluster::RedisCluster;
use xapi_stream::devkit::sim::{Sim, SimConfig};

use crate::ingest::{EVENT_FIELDS, STATUS_FIELDS};
use crate::utils::*;

/// Where `make consumer-deps` puts the examples' packages (redis-py; ioredis in the example's
/// own node_modules).
pub(crate) fn deps(kind: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = match kind {
        "python" => root.join("target/consumer-deps/python"),
        _ => root.join("docs/consumers/node/node_modules"),
    };
    assert!(
        dir.exists(),
        "{} is missing: run `make consumer-deps` (make test does)",
        dir.display()
    );
    dir
}

pub(crate) fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/consumers")
        .join(path)
}

/// A Python consumer of the firehose (see docs/consumers/python/consumer.py).
fn python_consumer(
    redis_url: &str,
    prefix: &str,
    name: &str,
    sink: &PathBuf,
    extra: &[&str],
) -> Child {
    Command::new("python3")
        .arg(example("python/consumer.py"))
        .args([
            "--redis",
            redis_url,
            "--prefix",
            prefix,
            "--firehose",
            "--shards",
            "16",
        ])
        .args(["--group", "analytics", "--consumer", name, "--count", "50"])
        .args(["--claim-idle-ms", "1500"])
        .arg("--sink")
        .arg(sink)
        .args(extra)
        .env("PYTHONPATH", deps("python"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs")
}

fn shards(prefix: &str) -> Vec<String> {
    (0..16)
        .flat_map(|n| {
            [
                format!("{prefix}:{{all-{n}}}:status"),
                format!("{prefix}:{{all-{n}}}:events"),
            ]
        })
        .collect()
}

/// Every entry id of `streams`.
pub(crate) fn entry_ids(
    conn: &mut impl redis::ConnectionLike,
    streams: &[String],
) -> HashSet<(String, String)> {
    let mut ids = HashSet::new();
    for s in streams {
        let reply: redis::streams::StreamRangeReply = conn.xrange_all(s).unwrap();
        ids.extend(reply.ids.into_iter().map(|e| (s.clone(), e.id)));
    }
    ids
}

pub(crate) fn org_streams(prefix: &str, org: &str) -> [String; 2] {
    [
        format!("{prefix}:{{{org}}}:status"),
        format!("{prefix}:{{{org}}}:events"),
    ]
}

fn total_len(conn: &mut impl redis::ConnectionLike, streams: &[String]) -> usize {
    streams
        .iter()
        .map(|s| conn.xlen::<_, usize>(s).unwrap())
        .sum()
}

/// (stream, id) → deliveries, over every sink.
pub(crate) fn sunk(sinks: &[PathBuf]) -> Vec<(String, String, i64, String)> {
    let mut rows = Vec::new();
    for sink in sinks {
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import json,sqlite3,sys\n\
                 db=sqlite3.connect(sys.argv[1])\n\
                 for r in db.execute('SELECT stream,id,deliveries,fields FROM entries'):print(json.dumps(r))",
            )
            .arg(sink)
            .output()
            .expect("python3 reads the sink");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            rows.push((
                v[0].as_str().unwrap().to_string(),
                v[1].as_str().unwrap().to_string(),
                v[2].as_i64().unwrap(),
                v[3].as_str().unwrap().to_string(),
            ));
        }
    }
    rows
}

/// Checks `entry` against docs/schemas/<kind>-entry.schema.json: its required fields, the
/// `enum`/`const` of each property, and that a `remove` has no `value`.
fn check_schema(kind: &str, entry: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("docs/schemas/{kind}-entry.schema.json"));
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for field in schema["required"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        assert!(
            entry[field].is_string(),
            "{kind} entry without {field}: {entry}"
        );
    }
    let known = schema["properties"].as_object().unwrap();
    for name in entry.as_object().unwrap().keys() {
        assert!(
            known.contains_key(name),
            "{kind} entry: unknown field {name}"
        );
    }
    for (name, rule) in known {
        let Some(v) = entry.get(name) else { continue };
        if let Some(allowed) = rule["enum"].as_array() {
            assert!(
                allowed.contains(v),
                "{kind} entry: {name}={v} not in {allowed:?}"
            );
        }
        if let Some(c) = rule.get("const") {
            assert_eq!(v, c, "{kind} entry: {name}");
        }
    }
    if entry["op"] == "remove" {
        assert_eq!(entry["value"], "", "a remove with a value: {entry}");
    }
}

/// A consumer of the group "analytics" writing to `sink`, shared by the group's consumers (as
/// a warehouse loader would: idempotent, an entry delivered again only counts a delivery).
fn group_consumer(
    redis: &Consumed,
    prefix: &str,
    name: &str,
    sink: &PathBuf,
    extra: &[&str],
) -> Child {
    let cluster: &[&str] = if redis.cluster { &["--cluster"] } else { &[] };
    python_consumer(&redis.url, prefix, name, sink, &[cluster, extra].concat())
}

/// The Redis the consumers read: a URL for redis-py, and whether it is a cluster's node.
struct Consumed {
    url: String,
    cluster: bool,
}

const TENANTS: usize = 1000;

#[actix_web::test]
async fn a_python_consumer_group_reads_1000_tenants_from_the_firehose_once_despite_a_crash() {
    let env = TestEnv::start(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let consumed = Consumed {
        url: env.redis.url(),
        cluster: false,
    };
    let client = env.redis.client();
    firehose_group_suite(&env.sim, &env.prefix, &env.redis.url(), &consumed, || {
        client.get_connection().unwrap()
    })
    .await;
}

/// The same on a 3-master Redis Cluster, where the firehose is relayed from the
/// organizations' streams to shards in other slots (actors/src/store/relay.rs).
#[actix_web::test]
async fn a_python_consumer_group_reads_1000_tenants_from_a_cluster_firehose_once_despite_a_crash() {
    let cluster = RedisCluster::start(3).expect("a 3-master redis cluster starts");
    let sim = start_sim(SimConfig {
        orgs: TENANTS,
        devices_per_org: 1,
        ..Default::default()
    })
    .await;
    let consumed = Consumed {
        url: cluster.node_urls()[0].clone(),
        cluster: true,
    };
    let client = cluster.client();
    firehose_group_suite(&sim, &unique_prefix(), &cluster.urls(), &consumed, || {
        client.get_connection().unwrap()
    })
    .await;
    sim.shutdown().await;
}

/// [`TENANTS`] tenants under load, every webhook delivered twice; a Python consumer group of 3
/// on the firehose, one of them killed midway: every entry reaches the sink exactly once, the
/// firehose holds exactly the organizations' entries, each matches its schema, and the lag
/// metrics drain to 0. `connect` opens a blocking connection to the Redis at `redis_url`.
async fn firehose_group_suite<C: redis::ConnectionLike>(
    sim: &Sim,
    prefix: &str,
    redis_url: &str,
    consumed: &Consumed,
    connect: impl Fn() -> C,
) {
    let engine = start_engine(
        sim,
        redis_url,
        prefix,
        &[
            ("STREAMS__FIREHOSE", "true"),
            ("STREAMS__LAG_SAMPLE_SECS", "1"),
            ("LOG__LEVEL", "warn"),
        ],
    )
    .await;
    let base = engine.admin_url();
    // Activate every tenant, 50 at a time; the webhooks are registered once each completes.
    for chunk in (0..TENANTS).collect::<Vec<_>>().chunks(50) {
        activate_orgs(&base, sim, chunk).await;
    }
    wait_all_activated(&base, sim, TENANTS, Duration::from_secs(120)).await;

    // Load: 4 messages per tenant over webhooks, 16 at a time, every one delivered twice
    // (a webhook retry: the copy must add nothing to any stream).
    let mut accepted = 0usize;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.sqlite");
    let mut c3 = None;
    let mut survivors = None;
    for round in 0..4 {
        if round == 1 {
            // The group starts with a backlog of a round: c3 first, alone, and it dies right
            // after its third read, leaving what that read gave it pending. (Alone, it cannot
            // miss its reads to the others: the backlog is far more than two reads take.)
            c3 = Some(group_consumer(
                consumed,
                prefix,
                "c3",
                &sink,
                &["--crash-after-reads", "3"],
            ));
        }
        if round == 2 {
            let c3 = c3.as_mut().expect("started");
            let crashed = eventually(Duration::from_secs(60), || {
                let code = c3.try_wait().unwrap().map(|s| s.code());
                async move { code == Some(Some(137)) }
            })
            .await;
            assert!(
                crashed,
                "c3 was to crash after its third read: {:?}",
                c3.try_wait()
            );
            // The others read while the rest arrives, and claim what c3 left.
            survivors = Some((
                group_consumer(consumed, prefix, "c1", &sink, &[]),
                group_consumer(consumed, prefix, "c2", &sink, &[]),
            ));
        }
        let msgs: Vec<(usize, Value)> = (0..TENANTS)
            .flat_map(|i| sim.generate(i, 1).into_iter().map(move |m| (i, m)))
            .collect();
        for chunk in msgs.chunks(16) {
            let hooks: Vec<_> = chunk
                .iter()
                .map(|(i, _)| sim.app_state(*i).webhook.expect("registered"))
                .collect();
            let posts = chunk
                .iter()
                .zip(&hooks)
                .flat_map(|((_, m), hook)| [sim.post_webhook(hook, m), sim.post_webhook(hook, m)]);
            let statuses = futures::future::join_all(posts).await;
            assert!(
                statuses.iter().all(|&s| s == 200),
                "round {round}: {statuses:?}"
            );
            accepted += chunk.len();
        }
    }
    assert_eq!(accepted, 4 * TENANTS);
    let (mut c1, mut c2) = survivors.expect("started");
    let mut conn = connect();
    let streams = shards(prefix);
    // The firehose holds exactly what the organizations' streams hold.
    let mut per_org = 0usize;
    for i in 0..TENANTS {
        let org = sim.org(i).org_id;
        per_org += total_len(
            &mut conn,
            &[
                format!("{}:{{{org}}}:status", prefix),
                format!("{}:{{{org}}}:events", prefix),
            ],
        );
    }
    let firehose = entry_ids(&mut conn, &streams);
    assert!(per_org > 0);
    // Schema 2: a firehose entry is `org`, then an organization's entry's fields in their order;
    // the organization's own entries leave `org` to their key.
    for (stream, fields) in [
        (&streams[..], true),
        (&org_streams(prefix, &sim.org(0).org_id)[..], false),
    ] {
        for s in stream {
            let want: Vec<&str> = if s.ends_with(":events") {
                EVENT_FIELDS.to_vec()
            } else {
                STATUS_FIELDS.to_vec()
            };
            let want = if fields {
                [vec!["org"], want].concat()
            } else {
                want
            };
            let r: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(s)
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .unwrap();
            for (id, flat) in r {
                let names: Vec<&str> = flat.iter().step_by(2).map(String::as_str).collect();
                assert_eq!(names, want, "{s} {id}");
            }
        }
    }
    assert_eq!(
        firehose.len(),
        per_org,
        "firehose entries vs per-organization entries"
    );

    // Drained: nothing pending (c3's entries claimed by the others), no lag.
    let drained = eventually(Duration::from_secs(60), || {
        let mut conn = connect();
        let streams = streams.clone();
        async move {
            streams.iter().all(|s| {
                let pending: redis::streams::StreamPendingReply =
                    conn.xpending(s, "analytics").unwrap();
                let lag: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(s)
                    .query(&mut conn)
                    .unwrap();
                pending.count() == 0
                    && lag
                        .iter()
                        .all(|g| matches!(g.get("lag"), Some(redis::Value::Int(0))))
            })
        }
    })
    .await;
    assert!(drained, "the group did not drain");
    // ... and the engine's lag metrics say so, per entry type, for this group.
    let metrics_say_drained = eventually(Duration::from_secs(30), || async {
        let text = metrics_text(&base).await;
        ["consumer_lag", "consumer_pending"].iter().all(|m| {
            ["status", "events"].iter().all(|kind| {
                text.lines().any(|l| {
                    l.starts_with(&format!("xapi_stream_{m}{{"))
                        && l.contains("group=\"analytics\"")
                        && l.contains(&format!("stream=\"{kind}\""))
                        && l.ends_with(" 0")
                })
            })
        })
    })
    .await;
    assert!(
        metrics_say_drained,
        "consumer_lag/consumer_pending not reported as 0"
    );
    for c in [&mut c1, &mut c2] {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let mut claimed = 0usize;
    for c in [c1, c2] {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        claimed += text
            .lines()
            .filter_map(|l| l.split("claimed ").nth(1))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum::<usize>();
    }
    assert!(claimed > 0, "c3's pending entries were not claimed");

    // Every entry reached the sink once: one row each, nothing else. (An entry is delivered
    // again when a live consumer holds it unacknowledged past --claim-idle-ms — a slow batch on
    // a loaded machine — and another claims it: at least once, by Redis's design. The sink's
    // key makes that a counted delivery, not a second row.)
    let rows = sunk(std::slice::from_ref(&sink));
    let got: HashSet<(String, String)> = rows
        .iter()
        .map(|(s, i, _, _)| (s.clone(), i.clone()))
        .collect();
    assert_eq!(rows.len(), got.len(), "an entry is in the sink twice");
    assert_eq!(got, firehose, "the sink differs from the firehose");
    // Every entry matches its JSON Schema in docs/schemas (required fields, fixed values).
    for (stream, _, _, fields) in &rows {
        let f: Value = serde_json::from_str(fields).unwrap();
        let kind = if stream.ends_with(":events") {
            "event"
        } else {
            "status"
        };
        check_schema(kind, &f);
    }
    engine.shutdown().await;
}

#[actix_web::test]
async fn with_per_org_off_only_the_firehose_is_written_and_a_retry_adds_nothing() {
    let env = TestEnv::start(SimConfig::default()).await;
    let engine = env
        .engine(&[
            ("STREAMS__FIREHOSE", "true"),
            ("STREAMS__PER_ORG", "false"),
            ("STREAMS__SHARDS", "4"),
        ])
        .await;
    activate_org(&env.sim, &engine.admin_url(), 0).await;
    let hook = env.sim.app_state(0).webhook.unwrap();
    let msgs = env.sim.generate(0, 20);
    for m in &msgs {
        assert_eq!(env.sim.post_webhook(&hook, m).await, 200);
    }
    let mut conn = env.redis.client().get_connection().unwrap();
    let org = env.sim.org(0).org_id;
    let shard = actors::store::keys::firehose_shard(&org, 4);
    let hose = [
        format!("{}:{{all-{shard}}}:status", env.prefix),
        format!("{}:{{all-{shard}}}:events", env.prefix),
    ];
    let written = total_len(&mut conn, &hose);
    assert!(written > 0);
    for m in &msgs {
        assert_eq!(env.sim.post_webhook(&hook, m).await, 200);
    }
    assert_eq!(total_len(&mut conn, &hose), written, "a retry wrote again");
    let per_org: Vec<String> = keys_with_prefix(env.redis, &env.prefix)
        .into_iter()
        .filter(|k| k.ends_with(":status") || k.ends_with(":events"))
        .filter(|k| !k.contains(":{all-"))
        .collect();
    assert!(per_org.is_empty(), "per-org streams written: {per_org:?}");
    engine.shutdown().await;
}

#[actix_web::test]
async fn entries_older_than_the_retention_are_trimmed_and_newer_ones_kept() {
    // A Redis of its own: one entry per stream node, so that `MINID ~` (which trims whole
    // nodes) trims exactly and the test can tell old from new precisely.
    let env = TestEnv::own(SimConfig::default()).await;
    let mut conn = env.redis.client().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    const RETENTION: u64 = 10;
    let engine = env
        .engine(&[
            ("STREAMS__RETENTION_SECS", "10"),
            ("STREAMS__FIREHOSE", "true"),
        ])
        .await;
    activate_org(&env.sim, &engine.admin_url(), 0).await;
    let hook = env.sim.app_state(0).webhook.unwrap();
    let org = env.sim.org(0).org_id;
    let shard = actors::store::keys::firehose_shard(&org, 16);
    let streams = [
        format!("{}:{{{org}}}:status", env.prefix),
        format!("{}:{{{org}}}:events", env.prefix),
        format!("{}:{{all-{shard}}}:status", env.prefix),
        format!("{}:{{all-{shard}}}:events", env.prefix),
    ];
    for m in env.sim.generate(0, 30) {
        assert_eq!(env.sim.post_webhook(&hook, &m).await, 200);
    }
    let old = entry_ids(&mut conn, &streams);
    assert!(!old.is_empty());
    let written_by = Instant::now();
    // Once the old entries are older than the retention, the next write to a stream trims
    // them from it. The organization's status stream is written by every status message.
    let url = env.redis.url();
    let gone = eventually(Duration::from_secs(RETENTION * 6), || {
        let (sim, hook, streams, old, url) = (&env.sim, hook.clone(), &streams, &old, &url);
        async move {
            if written_by.elapsed() < Duration::from_secs(RETENTION) {
                return false;
            }
            for m in sim.generate(0, 4) {
                assert_eq!(sim.post_webhook(&hook, &m).await, 200);
            }
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            let now = entry_ids(&mut conn, &streams[..1]);
            !now.is_empty() && now.is_disjoint(old)
        }
    })
    .await;
    assert!(gone, "old entries were not trimmed from the status stream");
    // In every stream written since, the old entries are gone and the new ones kept.
    let before = entry_ids(&mut conn, &streams);
    for m in env.sim.generate(0, 10) {
        assert_eq!(env.sim.post_webhook(&hook, &m).await, 200);
    }
    let after = entry_ids(&mut conn, &streams);
    let newer: HashSet<_> = before.difference(&old).cloned().collect();
    assert!(
        after.is_superset(&newer),
        "entries newer than the retention were trimmed"
    );
    assert!(after.difference(&before).count() > 0, "nothing new written");
    for s in &streams {
        let new_here = after.iter().any(|e| e.0 == *s && !old.contains(e));
        let old_here = after.iter().any(|e| e.0 == *s && old.contains(e));
        assert!(!(new_here && old_here), "{s}: old entries survived a write");
    }
    engine.shutdown().await;
}

#[actix_web::test]
async fn the_node_consumer_reads_an_organization_with_a_group_and_acknowledges_everything() {
    let env = TestEnv::start(SimConfig::default()).await;
    let engine = env.engine(&[]).await;
    activate_org(&env.sim, &engine.admin_url(), 0).await;
    let hook = env.sim.app_state(0).webhook.unwrap();
    for m in env.sim.generate(0, 40) {
        assert_eq!(env.sim.post_webhook(&hook, &m).await, 200);
    }
    let org = env.sim.org(0).org_id;
    let streams = [
        format!("{}:{{{org}}}:status", env.prefix),
        format!("{}:{{{org}}}:events", env.prefix),
    ];
    let mut conn = env.redis.client().get_connection().unwrap();
    let written = entry_ids(&mut conn, &streams);
    assert!(!written.is_empty());
    deps("node");
    let out = tokio::process::Command::new("node")
        .arg(example("node/consumer.js"))
        .args([
            "--redis",
            &env.redis.url(),
            "--prefix",
            &env.prefix,
            "--org",
            &org,
        ])
        .args([
            "--group",
            "warehouse",
            "--consumer",
            "n1",
            "--exit-when-idle-ms",
            "1500",
        ])
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: HashSet<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap().into(),
                l["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(lines.len(), got.len(), "an entry printed twice");
    assert_eq!(got, written);
    assert!(lines.iter().all(|l| l["fields"]["org"] == org.as_str()));
    for s in &streams {
        let pending: redis::streams::StreamPendingReply = conn.xpending(s, "warehouse").unwrap();
        assert_eq!(pending.count(), 0, "{s}: entries left unacknowledged");
    }
    engine.shutdown().await;
}

/// A 3-master cluster, a simulator of one organization, a fresh key prefix.
async fn cluster_world() -> (RedisCluster, Sim, String) {
    let cluster = RedisCluster::start(3).expect("a 3-master redis cluster starts");
    let sim = start_sim(SimConfig {
        orgs: 1,
        ..Default::default()
    })
    .await;
    (cluster, sim, unique_prefix())
}

/// On a cluster the firehose is relayed from the organizations' streams: what an engine that
/// died between the two steps left behind is copied by the next relay, relays running at once
/// (replicas, a retry) copy nothing twice, and a backlog longer than one round is copied whole,
/// each entry's fields verbatim and in order.
#[actix_web::test]
async fn the_cluster_relay_copies_every_entry_once_even_when_relays_race() {
    use actors::store::relay::{Checkpoints, Trim, relay};
    let (cluster, sim, prefix) = cluster_world().await;
    let cfg = xapi_stream::devkit::devenv::engine_config(&sim, &cluster.urls(), &prefix, &[])
        .expect("valid configuration");
    let store = actors::store::Store::new(&cfg.redis, actors::telemetry::Metrics::new()).unwrap();
    assert!(store.connect(std::future::pending()).await);
    let org = "relay-org";
    let shards = 16;
    let shard = actors::store::keys::firehose_shard(org, shards);
    let (status, events) = (
        format!("{prefix}:{{{org}}}:status"),
        format!("{prefix}:{{{org}}}:events"),
    );
    let (hose_status, hose_events) = (
        format!("{prefix}:{{all-{shard}}}:status"),
        format!("{prefix}:{{all-{shard}}}:events"),
    );
    let mut conn = cluster.client().get_connection().unwrap();
    // What apply.lua leaves: entries in the organization's streams, the first of each marked.
    let mut add = |stream: &str, n: usize, first: bool| {
        for i in 0..n {
            let id: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg(
                    &[
                        "key",
                        &format!("K{i}"),
                        "value",
                        &format!("{{\"n\":{i}}}"),
                        "schema",
                        "2",
                    ][..],
                )
                .query(&mut conn)
                .unwrap();
            if first && i == 0 {
                let _: () = redis::cmd("HSET")
                    .arg(format!("{prefix}:{{{org}}}:relay_from:16"))
                    .arg(stream)
                    .arg(&id)
                    .query(&mut conn)
                    .unwrap();
            }
        }
    };
    add(&status, 5, true);
    add(&events, 3, true);
    let trim = Trim {
        maxlen: 1_000_000,
        retention: Duration::ZERO,
    };
    let known = Checkpoints::default();
    let mut c = store.conn().unwrap();
    assert_eq!(
        relay(&store, &mut c, org, shards, trim, &known, false)
            .await
            .unwrap(),
        8
    );
    // Left behind by a relay that never ran, then four relays at once.
    add(&status, 4, false);
    let copied = futures::future::join_all((0..4).map(|_| {
        let (store, known, mut c) = (&store, &known, store.conn().unwrap());
        async move {
            relay(store, &mut c, org, shards, trim, known, false)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(copied.iter().sum::<u64>(), 4, "{copied:?}");
    assert_eq!(
        relay(&store, &mut c, org, shards, trim, &known, false)
            .await
            .unwrap(),
        0
    );
    // A backlog of more than one round.
    add(&events, 1_200, false);
    assert_eq!(
        relay(&store, &mut c, org, shards, trim, &known, false)
            .await
            .unwrap(),
        1_200
    );
    let mut conn = cluster.client().get_connection().unwrap();
    type Range = Vec<(String, Vec<String>)>;
    for (from, to) in [(&status, &hose_status), (&events, &hose_events)] {
        let a: Range = redis::cmd("XRANGE")
            .arg(from)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        let b: Range = redis::cmd("XRANGE")
            .arg(to)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        // A copy is the entry, field for field, after the organization (schema 2).
        let with_org = a
            .iter()
            .map(|(_, f)| [vec!["org".to_string(), org.to_string()], f.clone()].concat())
            .collect::<Vec<_>>();
        let copies = b.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>();
        assert_eq!(with_org, copies, "{to} differs from {from}");
    }
    // An entry written before schema 2 (a rolling upgrade) has `org` first: copied as it is,
    // not with a second `org`.
    let old = ["org", org, "key", "Old.Schema", "schema", "1"];
    let _: String = redis::cmd("XADD")
        .arg(&status)
        .arg("*")
        .arg(&old[..])
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        relay(&store, &mut c, org, shards, trim, &known, false)
            .await
            .unwrap(),
        1
    );
    let last: Range = redis::cmd("XREVRANGE")
        .arg(&hose_status)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(last[0].1, old);
    // Both checkpoints exist now: no more marks wanted for this organization.
    assert_eq!(known.marks_wanted(org), "00");
    sim.shutdown().await;
}

/// An engine that wrote an organization's entries on a cluster and died before relaying them
/// leaves them marked (`relay_from:<shards>`) and unrelayed: the organization's next message through
/// any engine copies them to the firehose with its own, each once.
#[actix_web::test]
async fn on_a_cluster_the_next_message_relays_what_a_dead_engine_left_unrelayed() {
    let (cluster, sim, prefix) = cluster_world().await;
    let engine = start_engine(
        &sim,
        &cluster.urls(),
        &prefix,
        &[("STREAMS__FIREHOSE", "true")],
    )
    .await;
    activate_org(&sim, &engine.base_url(), 0).await;
    let org = sim.org(0).org_id;
    let status = format!("{prefix}:{{{org}}}:status");
    let mut conn = cluster.client().get_connection().unwrap();
    // What the dead engine left: an entry, marked as the first written with the firehose on.
    let left: String = redis::cmd("XADD")
        .arg(&status)
        .arg("*")
        .arg(
            &[
                "workspace",
                "ws-left",
                "device",
                "dev-left",
                "key",
                "Left.Over",
                "op",
                "set",
                "value",
                "1",
                "prev",
                "",
                "ts",
                "2026-12-02T00:00:00.000Z",
                "full_sync",
                "0",
                "source",
                "webhook",
                "schema",
                "2",
            ][..],
        )
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{{{org}}}:relay_from:16"))
        .arg(&status)
        .arg(&left)
        .query(&mut conn)
        .unwrap();
    let msgs = sim.generate(0, 3);
    for _ in 0..2 {
        let report = sim.deliver(0, &msgs).await;
        assert!(
            report.webhook_statuses.iter().all(|&s| s == 200),
            "{report:?}"
        );
    }
    let shard = actors::store::keys::firehose_shard(&org, 16);
    let hose = [
        format!("{prefix}:{{all-{shard}}}:status"),
        format!("{prefix}:{{all-{shard}}}:events"),
    ];
    let org_streams = [status.clone(), format!("{prefix}:{{{org}}}:events")];
    let (in_org, in_hose) = (
        total_len(&mut conn, &org_streams),
        total_len(&mut conn, &hose),
    );
    assert!(in_org > 1, "nothing written for the messages");
    assert_eq!(in_hose, in_org, "firehose vs the organization's streams");
    let first: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&hose[0])
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert!(
        first[0].1.windows(2).any(|w| w == ["key", "Left.Over"]),
        "the left entry is not the shard's first: {first:?}"
    );
    assert_eq!(first[0].1[..2], ["org".to_string(), org.clone()]);
    engine.shutdown().await;
    sim.shutdown().await;
}

/// The groups named in `streams.lag_groups` are reported for the organizations' streams: lag
/// and pending summed over the organizations the engine owns, per entry type; a named group no
/// stream has yet reads 0; a group not named is not reported.
#[actix_web::test]
async fn lag_of_the_named_groups_on_the_organizations_streams_is_reported() {
    let env = TestEnv::start(SimConfig {
        orgs: 2,
        ..Default::default()
    })
    .await;
    let engine = env
        .engine(&[
            ("STREAMS__LAG_GROUPS", "warehouse,audit"),
            ("STREAMS__LAG_SAMPLE_SECS", "1"),
        ])
        .await;
    let base = engine.admin_url();
    for i in 0..2 {
        activate_org(&env.sim, &base, i).await;
        let report = env.sim.deliver(i, &env.sim.generate(i, 4)).await;
        assert!(
            report.webhook_statuses.iter().all(|&s| s == 200),
            "{report:?}"
        );
    }
    let stream =
        |i: usize, kind: &str| format!("{}:{{{}}}:{kind}", env.prefix, env.sim.org(i).org_id);
    let mut conn = env.redis.client().get_connection().unwrap();
    let len = |conn: &mut redis::Connection, s: String| conn.xlen::<_, i64>(s).unwrap();
    let (status0, status1, events0) = (
        len(&mut conn, stream(0, "status")),
        len(&mut conn, stream(1, "status")),
        len(&mut conn, stream(0, "events")),
    );
    assert!(status0 > 1 && status1 > 0, "{status0} {status1}");
    for (s, group) in [
        (stream(0, "status"), "warehouse"),
        (stream(1, "status"), "warehouse"),
        (stream(0, "events"), "warehouse"),
        (stream(1, "status"), "unnamed"),
    ] {
        let _: () = conn.xgroup_create_mkstream(s, group, "0").unwrap();
    }
    // One entry of organization 0's status delivered to the group, not acknowledged.
    let _: redis::streams::StreamReadReply = conn
        .xread_options(
            &[stream(0, "status")],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("warehouse", "w1")
                .count(1),
        )
        .unwrap();
    let want = [
        (
            "org_consumer_lag",
            "status",
            "warehouse",
            status0 - 1 + status1,
        ),
        ("org_consumer_pending", "status", "warehouse", 1),
        ("org_consumer_lag", "events", "warehouse", events0),
        ("org_consumer_pending", "events", "warehouse", 0),
        ("org_consumer_lag", "status", "audit", 0),
        ("org_consumer_lag", "events", "audit", 0),
    ];
    let sample = |text: &str, name: &str, kind: &str, group: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("xapi_stream_{name}{{"))
                    && l.contains(&format!("group=\"{group}\""))
                    && l.contains(&format!("stream=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
    };
    let reported = eventually(Duration::from_secs(30), || async {
        let text = metrics_text(&base).await;
        want.iter()
            .all(|(name, kind, group, v)| sample(&text, name, kind, group) == Some(*v))
    })
    .await;
    let text = metrics_text(&base).await;
    let shown: Vec<_> = text
        .lines()
        .filter(|l| l.contains("org_consumer_"))
        .collect();
    assert!(reported, "expected {want:?}, got {shown:#?}");
    assert!(
        !shown.iter().any(|l| l.contains("unnamed")),
        "a group not named is reported: {shown:#?}"
    );
    engine.shutdown().await;
}

//! `xapi-stream tail`: a downstream consumer example. Reads the status and event streams of one
//! organization (or all, found by SCAN) with a consumer group — XREADGROUP, XACK after
//! printing, XAUTOCLAIM of entries another consumer left pending too long — and prints one line
//! per record.
use actors::store::keys::Keys;
use std::time::Duration;

use clap::Args;
use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};

use crate::config;

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Engine configuration (for redis.url and redis.key_prefix).
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
    /// Only this organization (the JWT `sub` / message `orgId`); default: every organization.
    #[arg(long, conflicts_with = "all")]
    pub org: Option<String>,
    /// Read the firehose (`<p>:{all-<n>}:status|events`, `streams.shards` of each): every
    /// organization from a fixed set of streams, each entry with its `org`. Needs
    /// `streams.firehose = true` in the engine.
    #[arg(long)]
    pub all: bool,
    /// Consumer group name.
    #[arg(long, default_value = "xapi-tail")]
    pub group: String,
    /// Consumer name within the group.
    #[arg(long, default_value = "tail-1")]
    pub consumer: String,
    /// Entries pending longer than this (ms) on another consumer are claimed.
    #[arg(long, default_value_t = 60_000)]
    pub claim_idle_ms: u64,
    /// Stop after this many records (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub count: usize,
}

/// Block this long in one XREADGROUP.
const BLOCK: Duration = Duration::from_secs(2);

pub fn run(args: TailArgs) -> std::process::ExitCode {
    let cfg = match config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(tail(cfg, args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn streams(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &config::Config,
    args: &TailArgs,
) -> anyhow::Result<Vec<String>> {
    let prefix = cfg.redis.key_prefix.as_str();
    let keys = Keys::new(prefix);
    if args.all {
        return Ok((0..cfg.streams.shards)
            .flat_map(|n| [keys.firehose_status(n), keys.firehose_events(n)])
            .collect());
    }
    if let Some(org) = &args.org {
        return Ok(vec![keys.status_stream(org), keys.events_stream(org)]);
    }
    let mut found = Vec::new();
    for kind in ["status", "events"] {
        let mut iter: redis::AsyncIter<String> =
            conn.scan_match(keys.streams_pattern(kind)).await?;
        while let Some(k) = futures::StreamExt::next(&mut iter).await {
            let k = k?;
            if !actors::store::keys::is_firehose(prefix, &k) {
                found.push(k);
            }
        }
    }
    found.sort();
    Ok(found)
}

async fn tail(cfg: config::Config, args: TailArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !cfg.redis.is_cluster(),
        "xapi-stream tail reads a single Redis; on a Redis Cluster, point redis.url at the node serving the org's slot (CLUSTER KEYSLOT <p>:{{<org>}}:status) and set redis.cluster = false"
    );
    let client = redis::Client::open(cfg.redis.url.expose())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    if args.all && !cfg.streams.firehose {
        eprintln!(
            "note: streams.firehose is off in this configuration; the firehose streams stay empty until an engine writes them"
        );
    }
    let keys = streams(&mut conn, &cfg, &args).await?;
    if keys.is_empty() {
        anyhow::bail!("no streams under prefix {:?} yet", cfg.redis.key_prefix);
    }
    for k in &keys {
        // Create the group at the start of the stream (MKSTREAM); an existing group is fine.
        let r: redis::RedisResult<()> = conn.xgroup_create_mkstream(k, &args.group, "0").await;
        if let Err(e) = r
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
    }
    eprintln!(
        "tailing {} stream(s) as {}/{}",
        keys.len(),
        args.group,
        args.consumer
    );
    let mut printed = 0usize;
    loop {
        // Take over what a dead consumer left pending.
        for k in &keys {
            let claimed: StreamAutoClaimReply = conn
                .xautoclaim_options(
                    k,
                    &args.group,
                    &args.consumer,
                    args.claim_idle_ms,
                    "0-0",
                    StreamAutoClaimOptions::default().count(100),
                )
                .await?;
            for e in claimed.claimed {
                print_entry(k, &e.id, &e.map);
                let _: i64 = conn.xack(k, &args.group, &[&e.id]).await?;
                printed += 1;
            }
        }
        let ids: Vec<&str> = keys.iter().map(|_| ">").collect();
        let opts = StreamReadOptions::default()
            .group(&args.group, &args.consumer)
            .count(100)
            .block(BLOCK.as_millis() as usize);
        let reply: Option<StreamReadReply> = conn.xread_options(&keys, &ids, &opts).await?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for e in key.ids {
                print_entry(&key.key, &e.id, &e.map);
                let _: i64 = conn.xack(&key.key, &args.group, &[&e.id]).await?;
                printed += 1;
                if args.count > 0 && printed >= args.count {
                    return Ok(());
                }
            }
        }
    }
}

fn print_entry(stream: &str, id: &str, map: &std::collections::HashMap<String, redis::Value>) {
    let get = |k: &str| {
        map.get(k)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    let kind = if stream.ends_with(":events") {
        "event "
    } else {
        "status"
    };
    let short = |s: String| {
        if s.len() > 16 {
            format!("…{}", &s[s.len() - 12..])
        } else {
            s
        }
    };
    // Say which organization: a firehose entry carries it, an organization's stream names it in
    // its key (entry schema 2).
    let org = match get("org") {
        o if !o.is_empty() => o,
        _ => actors::store::keys::hash_tag(stream)
            .unwrap_or_default()
            .to_string(),
    };
    let device = |d: String| format!("{} org={}", short(d), short(org.clone()));
    // An empty `prev` is a previous value unknown (schema 2; absent in schema 1).
    let prev = match get("prev") {
        p if p.is_empty() => "unknown".to_string(),
        p => p,
    };
    match get("op").as_str() {
        "remove" => println!(
            "{id} {kind} device={} {} removed (was {})",
            device(get("device")),
            get("key"),
            prev
        ),
        _ if kind == "event " => println!(
            "{id} {kind} device={} {} = {} at {}",
            device(get("device")),
            get("key"),
            get("value"),
            get("ts")
        ),
        _ => println!(
            "{id} {kind} device={} {} = {} (was {}) [{}]",
            device(get("device")),
            get("key"),
            get("value"),
            prev,
            get("source")
        ),
    }
}

//! A local Redis Sentinel deployment for the failover tests: a master, its replicas (synced
//! before anything else happens) and sentinels watching them, every one a private process on
//! loopback (see [`RedisServer`]). Quick timings: a master is down after
//! [`DOWN_AFTER_MS`] without an answer.
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, RedisServerError};

/// The master's name in the sentinels' configuration.
pub const MASTER_NAME: &str = "xapi-master";
/// How long a master may be silent before a sentinel considers it down.
pub const DOWN_AFTER_MS: u64 = 1000;
/// Sentinel's bound on one failover attempt (it retries after twice this).
pub const FAILOVER_TIMEOUT_MS: u64 = 5000;
/// How long the replicas and sentinels get to find each other.
const SETTLE: Duration = Duration::from_secs(30);

/// A master, replicas and sentinels. Every process dies with the set.
pub struct SentinelSet {
    /// The data nodes: index 0 started as the master. After a failover, ask
    /// [`SentinelSet::master_port`] which one is master.
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    /// Starts a master, `replicas` replicas of it and `sentinels` sentinels (quorum: a
    /// majority), and waits until every replica has synced and every sentinel knows every
    /// replica and every other sentinel (so that a failover can be agreed on).
    pub fn start(replicas: usize, sentinels: usize) -> Result<Self, RedisServerError> {
        // No delay before a full sync, so replicas are in sync at once.
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"])?;
        let mport = master.port().to_string();
        let mut nodes = vec![master];
        for _ in 0..replicas {
            nodes.push(RedisServer::start_with(&[
                "--replicaof",
                "127.0.0.1",
                &mport,
                "--repl-diskless-sync-delay",
                "0",
            ])?);
        }
        let quorum = sentinels / 2 + 1;
        let directives = vec![
            format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} {quorum}"),
            format!("sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}"),
            format!("sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}"),
            format!("sentinel parallel-syncs {MASTER_NAME} 1"),
        ];
        let sentinels = (0..sentinels)
            .map(|_| RedisServer::start_sentinel(&directives))
            .collect::<Result<Vec<_>, _>>()?;
        let set = Self { nodes, sentinels };
        set.settle(replicas)?;
        Ok(set)
    }

    /// `host:port` of every sentinel (the engine's `redis.sentinels`).
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The port of the master the first sentinel that answers names.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut c = s.client().get_connection().ok()?;
            let addr: Vec<String> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME)
                .query(&mut c)
                .ok()?;
            addr.get(1)?.parse().ok()
        })
    }

    /// The data node listening on `port`.
    pub fn node(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| n.port() == port)
    }

    /// Waits until every replica is in sync and every sentinel sees the whole set.
    fn settle(&self, replicas: usize) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + SETTLE;
        let others = self.sentinels.len() - 1;
        loop {
            let synced = self.nodes[1..].iter().all(|r| {
                info(r, "replication").is_some_and(|i| i.contains("master_link_status:up"))
            });
            let known = self.sentinels.iter().all(|s| {
                let Ok(mut c) = s.client().get_connection() else {
                    return false;
                };
                let mut count = |what: &str| {
                    redis::cmd("SENTINEL")
                        .arg(what)
                        .arg(MASTER_NAME)
                        .query::<Vec<redis::Value>>(&mut c)
                        .map(|v| v.len())
                        .unwrap_or(0)
                };
                count("REPLICAS") == replicas && count("SENTINELS") == others
            });
            if synced && known {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RedisServerError::Cluster(format!(
                    "sentinel set not settled within {SETTLE:?} (replicas synced: {synced}, sentinels know everything: {known})"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `INFO <section>` of a server, if it answers.
pub fn info(server: &RedisServer, section: &str) -> Option<String> {
    let mut c = server.client().get_connection().ok()?;
    redis::cmd("INFO").arg(section).query(&mut c).ok()
}

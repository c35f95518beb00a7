//! A local Redis Cluster of `redis-server --cluster-enabled yes` processes, for the tests, the
//! benchmarks and anyone trying cluster mode on one machine. No `redis-cli` needed: slots are
//! assigned with `CLUSTER ADDSLOTSRANGE` and the nodes joined with `CLUSTER MEET`.
//!
//! Each node is a [`RedisServer`] with its own temp directory (`--dir`), so every node's relative
//! `--cluster-config-file nodes.conf` lands in its own directory and survives a
//! [`restart`](RedisServer::restart) (the node keeps its id and slots).
use std::time::{Duration, Instant};

use crate::devkit::redis_server::{RedisServer, RedisServerError};

/// The Redis Cluster slot of `key`: CRC16-XMODEM of its hash tag (the bytes between the first `{`
/// and the first `}` after it, when non-empty) or of the whole key, modulo 16384. The same function
/// the engine routes with; the tests below check it against `CLUSTER KEYSLOT`.
pub use actors::store::key_slot;

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;
/// How long the nodes may take to agree that the cluster is up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A running cluster of masters (no replicas). The nodes die with it.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes, gives each an even share of the slots, joins them, and waits
    /// until every node reports `cluster_state:ok` and knows every slot.
    pub fn start(masters: usize) -> Result<Self, RedisServerError> {
        let masters = masters.max(1);
        let nodes = (0..masters)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { nodes };
        let fail =
            |what: &str, e: redis::RedisError| RedisServerError::Cluster(format!("{what}: {e}"));
        let per = SLOTS as usize / masters;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let mut conn = node
                .client()
                .get_connection()
                .map_err(|e| fail("connect", e))?;
            let first = i * per;
            let last = if i + 1 == masters {
                SLOTS as usize - 1
            } else {
                (i + 1) * per - 1
            };
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query::<()>(&mut conn)
                .map_err(|e| fail("ADDSLOTSRANGE", e))?;
        }
        let mut first = cluster.nodes[0]
            .client()
            .get_connection()
            .map_err(|e| fail("connect", e))?;
        for node in &cluster.nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .query::<()>(&mut first)
                .map_err(|e| fail("MEET", e))?;
        }
        cluster.wait_converged()?;
        Ok(cluster)
    }

    fn wait_converged(&self) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let pending: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| !node_converged(n, self.nodes.len()))
                .map(RedisServer::port)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RedisServerError::Cluster(format!(
                    "{} nodes did not converge within {CONVERGE_TIMEOUT:?} (not ok yet: ports {pending:?}; \
                     want cluster_state:ok, all nodes known and CLUSTER SLOTS covering {SLOTS} slots)",
                    self.nodes.len()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's `redis.url` for this cluster: every node, comma-separated.
    pub fn urls(&self) -> String {
        self.node_urls().join(",")
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A cluster client seeded with every node (blocking connections via `get_connection`).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.node_urls()).expect("valid node urls")
    }

    /// Every key matching `pattern` on any node (`KEYS` on each master), sorted. A node that
    /// cannot be reached (killed, paused) contributes nothing.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for n in &self.nodes {
            if let Ok(mut c) = n.client().get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query(&mut c)
                    .unwrap_or_default();
                all.extend(keys);
            }
        }
        all.sort();
        all
    }
}

/// A node that says the cluster is ok, knows all nodes, and whose `CLUSTER SLOTS` covers every slot.
fn node_converged(node: &RedisServer, nodes: usize) -> bool {
    let Ok(mut c) = node.client().get_connection() else {
        return false;
    };
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut c)
        .unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    field("cluster_state:").as_deref() == Some("ok")
        && field("cluster_slots_ok:").as_deref() == Some("16384")
        && field("cluster_known_nodes:").and_then(|v| v.parse::<usize>().ok()) == Some(nodes)
        && slots_covered(&mut c) == SLOTS as usize
}

/// How many slots `CLUSTER SLOTS` on this connection lists as served (0 on any error).
fn slots_covered(c: &mut redis::Connection) -> usize {
    let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(c)
        .unwrap_or_default();
    ranges
        .iter()
        .map(|r| match r.as_slice() {
            [redis::Value::Int(a), redis::Value::Int(b), ..] if b >= a => (b - a + 1) as usize,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_three_master_cluster_routes_hash_tagged_keys() {
        let cluster = RedisCluster::start(3).expect("cluster starts");
        let mut conn = cluster.client().get_connection().unwrap();
        for org in ["a", "b", "c", "d", "e", "f"] {
            for k in ["x", "y"] {
                let _: () = redis::cmd("SET")
                    .arg(format!("t:{{{org}}}:{k}"))
                    .arg(1)
                    .query(&mut conn)
                    .unwrap();
            }
            // Two keys of one org in one script: same slot thanks to the hash tag.
            let n: i64 = redis::Script::new("return redis.call('EXISTS', KEYS[1], KEYS[2])")
                .key(format!("t:{{{org}}}:x"))
                .key(format!("t:{{{org}}}:y"))
                .invoke(&mut conn)
                .unwrap();
            assert_eq!(n, 2);
        }
        let keys = cluster.keys("t:*");
        assert_eq!(keys.len(), 12);
        // The keys really are spread over more than one node.
        let per_node: Vec<usize> = cluster
            .nodes()
            .iter()
            .map(|n| {
                let mut c = n.client().get_connection().unwrap();
                redis::cmd("DBSIZE").query::<usize>(&mut c).unwrap()
            })
            .collect();
        assert!(
            per_node.iter().filter(|&&n| n > 0).count() >= 2,
            "{per_node:?}"
        );
    }

    /// Index of the node whose `CLUSTER SLOTS` (as seen by node 0) serves `slot`.
    fn owner(cluster: &RedisCluster, slot: u16) -> usize {
        use redis::Value::{Array, Int};
        let mut c = cluster.nodes()[0].client().get_connection().unwrap();
        let ranges: Vec<Vec<redis::Value>> =
            redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).unwrap();
        // Each range: [first, last, [ip, port, id, ...] (master), replicas...].
        let port = ranges
            .iter()
            .find_map(|r| match r.as_slice() {
                [Int(a), Int(b), Array(master), ..] if (*a..=*b).contains(&(slot as i64)) => {
                    match master.get(1) {
                        Some(Int(p)) => Some(*p as u16),
                        _ => None,
                    }
                }
                _ => None,
            })
            .expect("slot is served");
        cluster
            .nodes()
            .iter()
            .position(|n| n.port() == port)
            .expect("a node of the cluster")
    }

    #[test]
    fn key_slot_matches_cluster_keyslot_and_keys_spans_all_masters() {
        let started = Instant::now();
        let cluster = RedisCluster::start(3).expect("cluster starts");
        eprintln!("3-master cluster converged in {:?}", started.elapsed());
        assert_eq!(cluster.urls().split(',').count(), 3);
        assert!(cluster.urls().starts_with("redis://127.0.0.1:"));

        // key_slot against the server's own CLUSTER KEYSLOT, hash-tag corner cases included.
        let mut c = cluster.nodes()[0].client().get_connection().unwrap();
        for key in [
            "",
            "foo",
            "123456789",
            "{user1000}.following",
            "user1000",
            "xapi:{ORG}:status",
            "foo{}{bar}",
            "{}",
            "{}foo",
            "foo{{bar}}zap",
            "{{bar}}",
            "{bar",
            "foo{bar}{zap}",
            "}{a}",
            "a{b",
            "a}b{c}",
            "ünïcödé{ø}",
        ] {
            let want: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut c)
                .unwrap();
            assert_eq!(key_slot(key), want, "key {key:?}");
        }

        // Write each key straight to the node serving its slot (no MOVED, no cluster client).
        let mut written = Vec::new();
        for tag in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            let key = format!("k:{{{tag}}}:v");
            let node = owner(&cluster, key_slot(&key));
            let mut conn = cluster.nodes()[node].client().get_connection().unwrap();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(tag)
                .query(&mut conn)
                .unwrap();
            written.push((key, node));
        }
        let used: std::collections::BTreeSet<usize> = written.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            used.len(),
            3,
            "tags a..h land on all three masters: {written:?}"
        );
        let mut want: Vec<String> = written.into_iter().map(|(k, _)| k).collect();
        want.sort();
        assert_eq!(cluster.keys("*"), want);
        assert_eq!(cluster.keys("k:{a}*"), vec!["k:{a}:v".to_string()]);
    }
}

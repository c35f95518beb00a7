//! A local Redis Cluster of `redis-server --cluster-enabled yes` processes, for the tests, the
//! benchmarks and anyone trying cluster mode on one machine. No `redis-cli` needed: slots are
//! assigned with `CLUSTER ADDSLOTSRANGE` and the nodes joined with `CLUSTER MEET`.
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, RedisServerError};

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
        let fail = |what: &str, e: redis::RedisError| {
            RedisServerError::Io(std::io::Error::other(format!("cluster {what}: {e}")))
        };
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
            if self
                .nodes
                .iter()
                .all(|n| node_converged(n, self.nodes.len()))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RedisServerError::Io(std::io::Error::other(format!(
                    "redis cluster of {} nodes did not converge within {CONVERGE_TIMEOUT:?}",
                    self.nodes.len()
                ))));
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

    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Every key matching `pattern` on any node, sorted.
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

/// A node that says the cluster is ok, knows all nodes, and sees every slot served.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_three_master_cluster_routes_hash_tagged_keys() {
        let cluster = RedisCluster::start(3).expect("cluster starts");
        let client = redis::cluster::ClusterClient::new(cluster.node_urls()).unwrap();
        let mut conn = client.get_connection().unwrap();
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
}

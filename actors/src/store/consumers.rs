//! Consumer credentials in Redis: the record of each granted consumer (`<p>:consumers`, a hash
//! user → JSON, the one source of truth) and its Redis ACL user, set on every node that holds
//! data — ACLs are not replicated, so a replica (Sentinel, Cluster) needs the user too.
//!
//! The rules (Redis ≥ 7.0: key permissions and selectors) let a user read one organization:
//! consumer-group commands on its status, events, command-results and inventory streams,
//! read-only hash commands on its device state and inventory hashes, and — granted with
//! `commands` — `XADD` to its command stream only. No command that writes data, lists keys,
//! publishes or touches the server; on a Cluster the topology reads a cluster client needs.
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{Keys, Store, StoreError};

/// Replaces or deletes a record only if it is the one expected (consumers_swap.lua).
static SWAP: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("consumers_swap.lua")));

/// One granted consumer, as stored. The password is never stored: only its SHA-256 (what Redis
/// itself keeps), sealed with the encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    pub name: String,
    /// The Redis ACL user name ([`user_name`]).
    pub user: String,
    pub tenant_id: String,
    pub org: String,
    /// May `XADD` to the organization's command stream.
    pub commands: bool,
    pub created_at: DateTime<Utc>,
    /// `v1:…`: the password's SHA-256 (hex), sealed for `consumer:<user>`.
    pub password_sha256: String,
    /// [`rules_digest`] of the rules last set everywhere: the sync sets the user again when
    /// this version's rules differ (an upgrade, a switch to a cluster). Empty in records of
    /// the first version.
    #[serde(default)]
    pub rules: String,
}

/// The key names a consumer of `org` may use, for the grant's answer and the docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerKeys {
    pub status: String,
    pub events: String,
    pub command_results: String,
    pub inventory: String,
    /// A pattern: one hash per device.
    pub state: String,
    pub devices: String,
    pub workspaces: String,
    /// Present when the consumer may add commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<String>,
}

impl ConsumerKeys {
    pub fn of(keys: &Keys, org: &str, commands: bool) -> Self {
        Self {
            status: keys.status_stream(org),
            events: keys.events_stream(org),
            command_results: keys.command_results(org),
            inventory: keys.inventory_stream(org),
            state: keys.device_state(org, "*"),
            devices: keys.devices(org),
            workspaces: keys.workspaces(org),
            commands: commands.then(|| keys.commands_stream(org)),
        }
    }
}

/// Consumer names: what an operator types, kept short and safe in a user name and a URL.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// The prefix of every ACL user the engine creates: `<p>-` when the key prefix holds only
/// letters, digits, `_` and `.` (user names go into `redis://user:pw@…` URLs); otherwise those
/// characters with the rest replaced by `_`, then `~` and 8 hex digits of the prefix's SHA-256,
/// so that two deployments on one Redis never share it.
fn user_prefix(keys: &Keys) -> String {
    let raw = keys.prefix();
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    if raw.chars().all(safe) {
        return format!("{raw}-");
    }
    let p: String = raw.chars().map(|c| if safe(c) { c } else { '_' }).collect();
    let digest = hex::encode(&sha2::Sha256::digest(raw.as_bytes())[..4]);
    format!("{p}~{digest}-")
}

/// The ACL user of consumer `name` of tenant `tenant_id`: `<p>-<tenant_id>-<name>`.
pub fn user_name(keys: &Keys, tenant_id: &str, name: &str) -> String {
    format!("{}{tenant_id}-{name}", user_prefix(keys))
}

/// Whether `user` is one of the users [`user_name`] makes (the sync removes such a user when
/// no record names it, and never touches any other).
pub fn is_consumer_user(keys: &Keys, user: &str) -> bool {
    let Some(rest) = user.strip_prefix(&user_prefix(keys)) else {
        return false;
    };
    let (Some(id), Some(name)) = (rest.get(..36), rest.get(37..)) else {
        return false;
    };
    rest.as_bytes()[36] == b'-' && uuid::Uuid::parse_str(id).is_ok() && valid_name(name)
}

/// A key name as an ACL pattern that matches it only (glob characters escaped).
fn literal(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether an organization id can go into ACL rules: Webex's are base64 (`A-Z a-z 0-9 + / =`).
/// Anything else is refused rather than escaped: a selector is one argument that Redis splits
/// on spaces and quotes, and `}` or `:` would let one organization's pattern reach into
/// another's keys.
pub fn acl_safe(org: &str) -> bool {
    !org.is_empty()
        && org.bytes().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'_' | b'.' | b'-')
        })
}

/// A short digest of `rules` without the password (`#…`): which version of the rules a user has.
pub fn rules_digest(rules: &[String]) -> String {
    let mut h = sha2::Sha256::new();
    for r in rules.iter().filter(|r| !r.starts_with('#')) {
        h.update(r.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// The `ACL SETUSER` rules (after the user name) of a consumer of `org` whose password has the
/// SHA-256 `password_sha256` (hex). `cluster` adds the topology reads a cluster client needs.
pub fn acl_rules(
    keys: &Keys,
    org: &str,
    commands: bool,
    cluster: bool,
    password_sha256: &str,
) -> Vec<String> {
    let k = ConsumerKeys::of(keys, org, commands);
    let mut rules: Vec<String> = vec![
        "reset".into(),
        "on".into(),
        format!("#{password_sha256}"),
        "resetchannels".into(),
    ];
    for stream in [&k.status, &k.events, &k.command_results, &k.inventory] {
        rules.push(format!("~{}", literal(stream)));
    }
    rules.push("-@all".into());
    for cmd in STREAM_READS {
        rules.push(format!("+{cmd}"));
    }
    if cluster {
        for cmd in CLUSTER_CLIENT {
            rules.push(format!("+{cmd}"));
        }
    }
    // The hashes, read-only keys (`%R~`) with read commands only, in a selector of their own.
    let state_pattern = format!("{}*", literal(&keys.device_state(org, "")));
    let mut hashes = format!(
        "(%R~{state_pattern} %R~{} %R~{}",
        literal(&k.devices),
        literal(&k.workspaces)
    );
    for cmd in HASH_READS {
        hashes.push_str(" +");
        hashes.push_str(cmd);
    }
    hashes.push(')');
    rules.push(hashes);
    if let Some(commands) = &k.commands {
        rules.push(format!("(~{} +xadd)", literal(commands)));
    }
    rules
}

/// What a consumer group needs on a stream, and reads: nothing that deletes, trims or moves
/// a group (`XGROUP DESTROY|SETID`, `XDEL`, `XTRIM`, `XSETID` stay refused).
const STREAM_READS: &[&str] = &[
    "xreadgroup",
    "xread",
    "xrange",
    "xrevrange",
    "xlen",
    "xinfo",
    "xpending",
    "xack",
    "xclaim",
    "xautoclaim",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    "ping",
    "echo",
    // A client of a `redis.url` with a database number selects it first.
    "select",
];

/// What cluster clients ask before their first command (topology, command table) and during a
/// resharding (`ASKING`), and reads from replicas (`READONLY`).
const CLUSTER_CLIENT: &[&str] = &[
    "cluster|slots",
    "cluster|shards",
    "cluster|info",
    "cluster|nodes",
    "cluster|myid",
    "command",
    "readonly",
    "readwrite",
    "asking",
];

const HASH_READS: &[&str] = &[
    "hget", "hmget", "hgetall", "hscan", "hkeys", "hvals", "hlen", "hexists", "hstrlen", "type",
    "exists",
];

/// A Redis node holding data (a master or a replica), with the engine's credentials.
#[derive(Clone)]
pub struct Node {
    /// `host:port`.
    pub addr: String,
    client: redis::Client,
}

/// How `ACL` went on one node.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The node could not be reached (or did not answer in time).
    #[error("node {node} unreachable: {error}")]
    Unreachable { node: String, error: String },
    /// The node answered with an error (no `ACL` command, the engine's user lacks `+acl`,
    /// rules it does not know: Redis < 7.0).
    #[error("node {node} refused {command}: {error}")]
    Refused {
        node: String,
        command: &'static str,
        error: String,
    },
}

impl Node {
    async fn conn(&self, store: &Store) -> Result<redis::aio::MultiplexedConnection, AclError> {
        store
            .bounded(self.client.get_multiplexed_async_connection())
            .await
            .map_err(|e| AclError::Unreachable {
                node: self.addr.clone(),
                error: e.to_string(),
            })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        store: &Store,
        conn: &mut redis::aio::MultiplexedConnection,
        command: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, AclError> {
        match store.bounded(cmd.query_async(conn)).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_unavailable() => Err(AclError::Unreachable {
                node: self.addr.clone(),
                error: e.to_string(),
            }),
            Err(e) => Err(AclError::Refused {
                node: self.addr.clone(),
                command,
                error: e.to_string(),
            }),
        }
    }

    /// Sets `user` with `rules` here (then `ACL SAVE` where an ACL file is configured).
    pub async fn set_user(
        &self,
        store: &Store,
        user: &str,
        rules: &[String],
    ) -> Result<(), AclError> {
        let mut conn = self.conn(store).await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user).arg(rules);
        let () = self.run(store, &mut conn, "ACL SETUSER", &cmd).await?;
        self.save(store, &mut conn).await;
        Ok(())
    }

    /// Deletes `user` here (its connections are closed by Redis); true when it existed.
    pub async fn del_user(&self, store: &Store, user: &str) -> Result<bool, AclError> {
        let mut conn = self.conn(store).await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("DELUSER").arg(user);
        let n: i64 = self.run(store, &mut conn, "ACL DELUSER", &cmd).await?;
        if n > 0 {
            self.save(store, &mut conn).await;
        }
        Ok(n > 0)
    }

    /// Every ACL user here, with its rules (`ACL LIST`: one line per user).
    pub async fn users(&self, store: &Store) -> Result<Vec<String>, AclError> {
        let mut conn = self.conn(store).await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("LIST");
        self.run(store, &mut conn, "ACL LIST", &cmd).await
    }

    /// `ACL SAVE`: kept across a restart where the node has an ACL file; refused (and ignored)
    /// where it has none — the sync sets the users again after a restart.
    async fn save(&self, store: &Store, conn: &mut redis::aio::MultiplexedConnection) {
        let _ = self
            .run::<()>(store, conn, "ACL SAVE", redis::cmd("ACL").arg("SAVE"))
            .await;
    }
}

impl Store {
    /// Every node holding data: on a Cluster each master and replica `CLUSTER NODES` lists as
    /// reachable; otherwise the master (the one server, or the one Sentinel names) and the
    /// replicas its `ROLE` lists. Credentials and TLS come from `redis.url`.
    pub async fn data_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let mut addrs: Vec<String> = Vec::new();
        if self.is_cluster() {
            let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
            addrs = cluster_data_nodes(&nodes);
        } else {
            let master = self.pubsub_client().await?;
            let info = master.get_connection_info();
            addrs.push(info.addr().to_string());
            let mut conn = self
                .bounded(master.get_multiplexed_async_connection())
                .await?;
            let role: redis::Value = self
                .bounded(redis::cmd("ROLE").query_async(&mut conn))
                .await?;
            addrs.extend(replicas_of(&role));
        }
        addrs.sort();
        addrs.dedup();
        addrs
            .into_iter()
            .map(|addr| {
                let client = self.client_at(&addr)?;
                Ok(Node { addr, client })
            })
            .collect()
    }

    /// The records of every granted consumer (`HGETALL <p>:consumers`).
    pub async fn consumer_records(&self) -> Result<Vec<ConsumerRecord>, StoreError> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().consumers()))
            .await?;
        all.into_iter()
            .map(|(user, json)| {
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("consumer record {user}: {e}")))
            })
            .collect()
    }

    /// Stores `record` unless its user exists: the stored JSON, or None when it exists.
    pub async fn insert_consumer(
        &self,
        record: &ConsumerRecord,
    ) -> Result<Option<String>, StoreError> {
        let json = serde_json::to_string(record).expect("a record serializes");
        let inserted: bool = self
            .query(
                redis::cmd("HSETNX")
                    .arg(self.keys().consumers())
                    .arg(&record.user)
                    .arg(&json),
            )
            .await?;
        Ok(inserted.then_some(json))
    }

    /// The stored JSON of `user`'s record, if any.
    pub async fn consumer_json(&self, user: &str) -> Result<Option<String>, StoreError> {
        self.query(redis::cmd("HGET").arg(self.keys().consumers()).arg(user))
            .await
    }

    /// Replaces `user`'s record by `new` (None: deletes it) only if it still is `expected`.
    pub async fn swap_consumer(
        &self,
        user: &str,
        expected: &str,
        new: Option<&ConsumerRecord>,
    ) -> Result<bool, StoreError> {
        let new = new
            .map(|r| serde_json::to_string(r).expect("a record serializes"))
            .unwrap_or_default();
        self.invoke(
            SWAP.key(self.keys().consumers())
                .arg(user)
                .arg(expected)
                .arg(new),
        )
        .await
    }

    /// Removes the record of `user`; true when there was one.
    pub async fn remove_consumer(&self, user: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .query(redis::cmd("HDEL").arg(self.keys().consumers()).arg(user))
            .await?;
        Ok(n > 0)
    }
}

/// The `ip:port` of every master and replica in a `CLUSTER NODES` answer, but those the cluster
/// marked `fail` and nodes still joining (`handshake`) or without an address (`noaddr`); a node
/// only suspected (`fail?`) may still serve clients, so it is kept.
fn cluster_data_nodes(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (addr, flags) = (f.nth(1)?, f.next()?);
            let skip = flags
                .split(',')
                .any(|x| matches!(x, "fail" | "handshake" | "noaddr"));
            // ip:port@cport (Redis 7 may add ,hostname)
            (!skip).then(|| addr.split('@').next().unwrap_or(addr).to_string())
        })
        .collect()
}

/// The `ip:port` of each replica in a master's `ROLE` answer
/// (`["master", offset, [[ip, port, offset], …]]`).
fn replicas_of(role: &redis::Value) -> Vec<String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let Value::Array(parts) = role else {
        return Vec::new();
    };
    if parts.first().and_then(text).as_deref() != Some("master") {
        return Vec::new();
    }
    let Some(Value::Array(replicas)) = parts.get(2) else {
        return Vec::new();
    };
    replicas
        .iter()
        .filter_map(|r| match r {
            Value::Array(f) => Some(format!("{}:{}", text(f.first()?)?, text(f.get(1)?)?)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_users() {
        let keys = Keys::new("xapi");
        assert!(valid_name("analytics"));
        assert!(valid_name("a-1_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("-a"));
        assert!(!valid_name("Analytics"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(33)));
        let id = "0b9f3c1e-2a4d-4a7e-9c55-6c1d2e3f4a5b";
        let user = user_name(&keys, id, "analytics");
        assert_eq!(user, format!("xapi-{id}-analytics"));
        assert!(is_consumer_user(&keys, &user));
        assert!(!is_consumer_user(&keys, "default"));
        assert!(!is_consumer_user(&keys, "xapi-not-a-uuid-analytics"));
        assert!(!is_consumer_user(&Keys::new("other"), &user));
        let (colon, slash) = (
            user_name(&Keys::new("a:b"), id, "n"),
            user_name(&Keys::new("a/b"), id, "n"),
        );
        assert!(
            colon.starts_with("a_b~") && colon.ends_with(&format!("-{id}-n")),
            "{colon}"
        );
        assert_ne!(colon, slash, "two prefixes, one user name");
        assert_ne!(colon, user_name(&Keys::new("a_b"), id, "n"));
    }

    #[test]
    fn rules_name_the_organization_only_and_escape_globs() {
        let keys = Keys::new("xapi");
        let rules = acl_rules(&keys, "o*1", true, false, "ab");
        assert_eq!(&rules[..4], &["reset", "on", "#ab", "resetchannels"]);
        assert!(rules.contains(&"~xapi:{o\\*1}:status".to_string()));
        assert!(rules.contains(&"(~xapi:{o\\*1}:commands +xadd)".to_string()));
        assert!(
            rules
                .iter()
                .any(|r| r.starts_with("(%R~xapi:{o\\*1}:state:*"))
        );
        assert!(!rules.iter().any(|r| r.contains("all-")));
        let without = acl_rules(&keys, "o", false, false, "ab");
        assert!(!without.iter().any(|r| r.contains("commands")));
        assert!(!without.iter().any(|r| r.contains("cluster")));
        assert!(acl_rules(&keys, "o", false, true, "ab").contains(&"+cluster|slots".to_string()));
        assert!(acl_safe("Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi8x+/="));
        for bad in ["a b", "a)", "a\"b", "A}:state:X", "o*1", ""] {
            assert!(!acl_safe(bad), "{bad}");
        }
        let rules = acl_rules(&keys, "o", false, false, "ab");
        assert_eq!(
            rules_digest(&rules),
            rules_digest(&acl_rules(&keys, "o", false, false, "cd"))
        );
        assert_ne!(
            rules_digest(&rules),
            rules_digest(&acl_rules(&keys, "o", false, true, "ab"))
        );
    }

    #[test]
    fn cluster_nodes_masters_and_replicas_but_not_failed_ones() {
        let nodes = "\
a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 10.0.0.2:7001@17001 master - 0 1700000000000 2 connected 5461-10922
c3 10.0.0.3:7002@17002,redis-3 master - 0 1700000000000 3 connected 10923-16383
d4 10.0.0.4:7003@17003 slave a1 0 1700000000000 1 connected
e5 10.0.0.5:7004@17004 slave,fail? b2 0 1700000000000 2 connected
f6 10.0.0.6:7005@17005 slave,fail c3 0 1700000000000 3 disconnected
g7 10.0.0.7:7006@17006 handshake - 0 0 0 connected
h8 :0@0 noaddr - 0 0 0 disconnected
";
        assert_eq!(
            cluster_data_nodes(nodes),
            [
                "10.0.0.1:7000",
                "10.0.0.2:7001",
                "10.0.0.3:7002",
                "10.0.0.4:7003",
                "10.0.0.5:7004"
            ]
        );
    }

    #[test]
    fn replicas_from_role() {
        use redis::Value;
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let role = Value::Array(vec![
            b("master"),
            Value::Int(10),
            Value::Array(vec![
                Value::Array(vec![b("10.0.0.2"), b("6380"), b("10")]),
                Value::Array(vec![b("10.0.0.3"), b("6381"), b("9")]),
            ]),
        ]);
        assert_eq!(replicas_of(&role), ["10.0.0.2:6380", "10.0.0.3:6381"]);
        assert!(replicas_of(&Value::Array(vec![b("slave")])).is_empty());
    }
}

//! Redis, the system of record: the connection, key names, and one repository per kind of
//! record. Only this module knows key names and scripts; every script is a `.lua` file beside
//! the Rust that loads it (deadline scripts start with the one Lua fragment kept here,
//! [`NOW_MS_LUA`]).
//!
//! # Layout
//! - [`Store`]: a cloneable handle on one multiplexed, self-reconnecting connection (to one
//!   server, a Redis Cluster, or the master that Redis Sentinel names: [`sentinel`]), and the
//!   three ways of sending on it, each bounded in time: [`Store::query`],
//!   [`Store::query_pipe`], [`Store::invoke`].
//! - [`keys`]: every key name the engine writes, in one place.
//! - [`tenants`]: sealed tenant records and their CAS, exchange intents, lifecycle, purge.
//! - [`writer`]: the stream writer (group commit, `apply.lua`, `WAIT`); [`relay`]: the firehose
//!   relay on a cluster; [`trim`]: how both trim.
//! - [`jti`], [`invitations`], [`pending`], [`sessions`]: activation JWT ids, invitation codes,
//!   pending HTTPS activations, console sessions.
//! - [`lease`]: ownership records and heartbeats; [`bell`]: the command bell; [`lag`]:
//!   consumer-lag sampling; [`devices`]: inventory hashes and command/result streams;
//!   [`consumers`]: consumer credentials (records, and ACL users on every data node);
//!   [`stats`]: the fleet's figures per minute for the console's overview;
//!   [`errors`]: the support log's hourly hashes; [`crypto`]: sealing records at rest.
pub mod bell;
pub mod consumers;
pub mod crypto;
pub mod devices;
pub mod errors;
pub mod invitations;
pub mod jti;
pub mod keys;
pub mod lag;
pub mod lease;
pub mod pending;
pub mod relay;
pub mod sentinel;
pub mod sessions;
pub mod stats;
pub mod tenants;
pub mod trim;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use crate::config::{RedisConfig, seed_urls};
use crate::telemetry::Metrics;
use sentinel::{Follower, SentinelConn};

pub use keys::Keys;

/// How long a readiness ping may take before Redis counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two attempts of the initial connection.
const CONNECT_RETRY: Duration = Duration::from_millis(500);

/// Errors of the store, mapped by callers to 503 (unavailable) or 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is not connected yet")]
    NotConnected,
    #[error("redis command timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("concurrent change: {0}")]
    Conflict(&'static str),
    /// `WAIT` did not see the write on enough replicas in time (it is on the master).
    #[error("write confirmed by {got} of {wanted} Redis replicas in time")]
    NotReplicated { wanted: u32, got: i64 },
}

/// Lua: `now`, Redis's clock in Unix milliseconds (for [`Store::write_deadline_ms`]).
pub const NOW_MS_LUA: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// Clock difference between an engine and Redis that write deadlines allow for (NTP keeps
/// hosts within milliseconds).
const CLOCK_MARGIN: Duration = Duration::from_millis(250);

impl StoreError {
    /// True when the failure is about reaching Redis (worth a 503 and a retry), not about data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::NotConnected | StoreError::Timeout => true,
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(e.kind(), redis::ErrorKind::Io)
                    // A master demoted to a replica: nothing can be written until the engine
                    // reaches the new master (Sentinel) or the operator points it there.
                    || sentinel::is_readonly(e)
            }
            StoreError::NotReplicated { .. } => true,
            StoreError::Corrupt(_) | StoreError::Conflict(_) => false,
        }
    }
}

/// One multiplexed connection: to a single Redis (self-reconnecting), to a Redis Cluster
/// (following MOVED/ASK and topology changes) or to the master Redis Sentinel names (following
/// failovers). Every command and script of the engine runs on it unchanged; only pipelines must
/// stay within one hash slot in cluster mode (see [`Store::is_cluster`]).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl Conn {
    /// This connection held to one server for a sequence of commands that must reach the same
    /// one (a batch of writes, then `WAIT` for them): under Sentinel, the master of now even if
    /// a failover follows; otherwise the connection itself.
    pub async fn pinned(&self) -> Result<Conn, StoreError> {
        match self {
            Conn::Sentinel(c) => Ok(Conn::Sentinel(c.pinned().await?)),
            other => Ok(other.clone()),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Where Redis is: one server, the seed nodes of a cluster, or wherever the sentinels say.
enum Target {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
    Sentinel(Arc<Follower>),
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first
/// `{` and the next `}`, if non-empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A cloneable handle on Redis. The connection is established in the background so the HTTP
/// edge (health probes) can serve while Redis is still coming up.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// A plain client on the first seed: pub/sub (cluster-wide in Redis Cluster). Under
    /// Sentinel the current master's client is used instead.
    pubsub_client: redis::Client,
    /// The first seed URL (credentials for per-node clients).
    seed: String,
    conn: OnceCell<Conn>,
    /// Set when a command was refused with `READONLY` (the server is a replica): readiness
    /// then asks `ROLE` until it is a master again.
    read_only: std::sync::atomic::AtomicBool,
    keys: Keys,
    command_timeout: Duration,
    metrics: Metrics,
}

impl Store {
    /// Parses the URL; does not connect (see [`Store::connect`]).
    pub fn new(cfg: &RedisConfig, metrics: Metrics) -> Result<Self, StoreError> {
        let seeds = seed_urls(cfg.url.expose());
        let first = seeds.first().copied().unwrap_or_default();
        let target = if cfg.is_sentinel() {
            Target::Sentinel(Follower::new(cfg, metrics.clone())?)
        } else if cfg.is_cluster() {
            let timeout = Duration::from_millis(cfg.command_timeout_ms);
            Target::Cluster(Box::new(
                redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()?,
            ))
        } else {
            Target::Single(Box::new(redis::Client::open(first)?))
        };
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                pubsub_client: redis::Client::open(first)?,
                seed: first.to_string(),
                conn: OnceCell::new(),
                read_only: Default::default(),
                keys: Keys::new(&cfg.key_prefix),
                command_timeout: Duration::from_millis(cfg.command_timeout_ms),
                metrics,
            }),
        })
    }

    /// Opens a connection of its own (self-reconnecting like the shared one), for a user whose
    /// commands must not wait behind others' or hold others up (`WAIT` blocks its connection).
    pub async fn dedicated(&self) -> Result<Conn, StoreError> {
        self.bounded(self.open()).await
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.inner.command_timeout))
            .set_connection_timeout(Some(self.inner.command_timeout))
            .set_number_of_retries(2)
    }

    async fn open(&self) -> redis::RedisResult<Conn> {
        match &self.inner.target {
            Target::Single(client) => client
                .get_connection_manager_with_config(self.manager_config())
                .await
                .map(Conn::Single),
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            Target::Sentinel(follower) => {
                // Connected once the sentinels named a master and it answers.
                let conn = SentinelConn::new(follower.clone(), self.manager_config());
                let mut probe = conn.clone();
                redis::cmd("PING").query_async::<String>(&mut probe).await?;
                Ok(Conn::Sentinel(conn))
            }
        }
    }

    /// Connects, retrying until it succeeds or `until` resolves. The connection manager then
    /// reconnects by itself after Redis restarts.
    pub async fn connect(&self, until: impl std::future::Future<Output = ()>) -> bool {
        tokio::pin!(until);
        if let Target::Sentinel(follower) = &self.inner.target {
            follower.start();
        }
        let mut attempts = 0u32;
        loop {
            let attempt = self.open();
            tokio::select! {
                _ = &mut until => return false,
                res = attempt => match res {
                    Ok(conn) => {
                        let _ = self.inner.conn.set(conn);
                        self.inner.metrics.redis_up.set(1);
                        tracing::info!(attempts, "connected to redis");
                        return true;
                    }
                    Err(e) => {
                        attempts += 1;
                        if attempts == 1 || attempts.is_multiple_of(20) {
                            tracing::warn!(error = %e, attempts, "redis not reachable yet; retrying");
                        }
                    }
                }
            }
            tokio::select! {
                _ = &mut until => return false,
                _ = tokio::time::sleep(CONNECT_RETRY) => {}
            }
        }
    }

    /// True when talking to a Redis Cluster (pipelines must then stay within one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }

    /// A client for pub/sub (a dedicated connection per subscriber): under Sentinel, the
    /// current master's (subscribers follow [`Store::master_watch`] and subscribe again after a
    /// switch).
    pub async fn pubsub_client(&self) -> Result<redis::Client, StoreError> {
        match &self.inner.target {
            Target::Sentinel(follower) => Ok(follower.master().await?.client),
            _ => Ok(self.inner.pubsub_client.clone()),
        }
    }

    /// Resolves when the master changes (Sentinel); never otherwise. Take it before connecting,
    /// so that a switch between connecting and subscribing is not missed.
    pub fn master_watch(&self) -> MasterWatch {
        MasterWatch(match &self.inner.target {
            Target::Sentinel(follower) => Some(follower.watch()),
            _ => None,
        })
    }

    /// A client per node: the one server, or every master of a cluster (`CLUSTER NODES`), with
    /// the credentials of the first seed URL. For what is per node, like keyspace notifications.
    pub async fn node_clients(&self) -> Result<Vec<redis::Client>, StoreError> {
        if !self.is_cluster() {
            return Ok(vec![self.pubsub_client().await?]);
        }
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        nodes
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.contains("master"))
            })
            .filter_map(|l| l.split_whitespace().nth(1))
            // ip:port@cport
            .map(|addr| self.client_at(addr.split('@').next().unwrap_or(addr)))
            .collect()
    }

    /// A client of the node at `host:port`, with the scheme, credentials, database and TLS
    /// options of `redis.url` (its first seed).
    pub fn client_at(&self, hostport: &str) -> Result<redis::Client, StoreError> {
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
        let mut u = url::Url::parse(&self.inner.seed)
            .map_err(|e| StoreError::Corrupt(format!("redis.url: {e}")))?;
        u.set_host(Some(host))
            .map_err(|e| StoreError::Corrupt(format!("node address {hostport}: {e}")))?;
        u.set_port(port.parse().ok())
            .map_err(|_| StoreError::Corrupt(format!("node address {hostport}")))?;
        Ok(redis::Client::open(u.as_str())?)
    }

    /// The multiplexed connection, or `NotConnected` before the first connect.
    pub fn conn(&self) -> Result<Conn, StoreError> {
        self.inner
            .conn
            .get()
            .cloned()
            .ok_or(StoreError::NotConnected)
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The latest Redis time (Unix ms) at which a write sent now may still take effect. A
    /// write that times out is answered 503; one carrying this deadline (checked by its script
    /// against Redis's `TIME`, see [`NOW_MS_LUA`]) does nothing if it lands later, after a
    /// stall, so that 503 stays true. Allows [`CLOCK_MARGIN`] of clock difference between the
    /// engine and Redis.
    /// The error of a write its script refused as late although it answered in time: Redis's
    /// clock (`redis_now_ms`) is ahead of this engine's by more than the deadline allows.
    /// Logged (clocks must agree within [`CLOCK_MARGIN`]); the caller answers 503.
    pub fn late_write(&self, redis_now_ms: i64) -> StoreError {
        let ahead = redis_now_ms - chrono::Utc::now().timestamp_millis();
        tracing::warn!(
            redis_ahead_ms = ahead,
            "a write was refused as past its deadline although Redis answered in time: Redis's \
             clock is ahead of this engine's; keep both on NTP"
        );
        StoreError::Timeout
    }

    pub fn write_deadline_ms(&self) -> i64 {
        let margin = CLOCK_MARGIN.min(self.inner.command_timeout / 4);
        chrono::Utc::now().timestamp_millis()
            + (self.inner.command_timeout - margin).as_millis() as i64
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Runs one command future under the store's bound, so nothing hangs past it.
    pub async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let res = match tokio::time::timeout(self.inner.command_timeout, fut).await {
            Ok(r) => self.note(r.map_err(StoreError::from)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &res {
            Ok(_) => self.inner.metrics.redis_up.set(1),
            Err(e) if e.is_unavailable() => self.inner.metrics.redis_up.set(0),
            Err(_) => {}
        }
        res
    }

    /// Sends one command on the shared connection ([`Store::conn`]) under the store's bound
    /// ([`Store::bounded`]). For sequences that must reach one server, hold a connection
    /// instead ([`Conn::pinned`], [`Store::dedicated`]).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// Sends one pipeline (or transaction) like [`Store::query`]. In cluster mode its keys
    /// must share one hash slot.
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        self.bounded(pipe.query_async(&mut conn)).await
    }

    /// Runs one script invocation (`EVALSHA`, loading the script when Redis lacks it) like
    /// [`Store::query`].
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        self.bounded(inv.invoke_async(&mut conn)).await
    }

    /// Remembers a `READONLY` refusal (see [`Store::ping`]); passes the result on.
    fn note<T>(&self, res: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Redis(e)) = &res
            && sentinel::is_readonly(e)
        {
            self.inner.read_only.store(true, Ordering::Relaxed);
        }
        res
    }

    /// PING within [`PING_TIMEOUT`]: the readiness probe's view of Redis. After a `READONLY`
    /// refusal (the server was demoted to a replica), `ROLE` instead, until it answers
    /// `master`: a replica answers PING, yet cannot take a single write.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let read_only = self.inner.read_only.load(Ordering::Relaxed);
        let fut = async move {
            if !read_only {
                return redis::cmd("PING").query_async::<String>(&mut conn).await;
            }
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            match role.first() {
                Some(redis::Value::BulkString(r)) if r.as_slice() == b"master" => {
                    Ok("master".to_string())
                }
                _ => Err(redis::RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                    "READONLY",
                    "redis answers as a replica: writes are refused".to_string(),
                ))),
            }
        };
        match tokio::time::timeout(PING_TIMEOUT, fut).await {
            Ok(Ok(_)) => {
                self.inner.read_only.store(false, Ordering::Relaxed);
                self.inner.metrics.redis_up.set(1);
                Ok(())
            }
            Ok(Err(e)) => {
                self.inner.metrics.redis_up.set(0);
                Err(e.into())
            }
            Err(_) => {
                self.inner.metrics.redis_up.set(0);
                Err(StoreError::Timeout)
            }
        }
    }
}

/// Resolves when the master changes: see [`Store::master_watch`].
pub struct MasterWatch(Option<tokio::sync::watch::Receiver<Option<sentinel::Master>>>);

impl MasterWatch {
    /// Waits for the next switch (forever without Sentinel, or once the store is gone).
    pub async fn changed(&mut self) {
        let switched = match &mut self.0 {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !switched {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn key_slots_follow_redis_hash_tags() {
        // Reference values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot("123456789"), 0x31c3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("xapi:{ORG}:status"), key_slot("ORG"));
        // An empty tag does not count: the whole key is hashed.
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
        // Only the first tag counts.
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    }
}

//! Redis Sentinel: where the master is now, and connections that follow it through a failover.
//!
//! The [`Follower`] asks the sentinels (the `redis` crate's [`redis::sentinel::Sentinel`], which
//! also checks that the named master calls itself master) at start, again whenever a connection
//! reports trouble (refused, dropped, timed out, or a `READONLY` answer: the old master came
//! back as a replica), on every sentinel's `+switch-master` announcement, and every
//! [`RECHECK`] as a safety net. Each new address is a new *generation*; a [`SentinelConn`]
//! notices on its next command that its generation is old and reconnects to the new master,
//! so every user of the store (the writer, leases, pub/sub, the command bell, the lag reader)
//! follows without restarting. A metric counts switches.
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelNodeConnectionInfo;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult, TlsMode};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::telemetry::Metrics;

/// How often the master is asked for although nothing went wrong (announcements are
/// fire-and-forget; a sentinel restarted meanwhile announced nothing to us).
const RECHECK: Duration = Duration::from_secs(5);
/// Pause between two lookups while no master can be found (a failover in progress).
const RETRY: Duration = Duration::from_millis(250);
/// Fewest time between two lookups triggered by failing commands: during a failover every
/// command fails, and one lookup at a time, a few per second, is all that helps.
const SUSPECT_GAP: Duration = Duration::from_millis(200);
/// Bound of one lookup (every sentinel asked, then the master's `ROLE`).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before subscribing to a sentinel's announcements again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// The master as last found.
#[derive(Clone)]
pub struct Master {
    /// Its client (address from the sentinels; credentials, database and TLS from `redis.url`).
    pub client: redis::Client,
    /// `host:port`, for logs.
    pub addr: String,
    /// Counts the addresses found so far; a connection of an older generation reconnects.
    pub generation: u64,
}

/// Finds the master through the sentinels and announces every change.
pub struct Follower {
    master_name: String,
    sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    node: SentinelNodeConnectionInfo,
    /// One client per sentinel, for their `+switch-master` announcements.
    sentinel_clients: Vec<redis::Client>,
    current: watch::Sender<Option<Master>>,
    /// Rung when a connection reports trouble or a sentinel announces a switch.
    wake: Notify,
    metrics: Metrics,
    /// Cancelled when the store is dropped: ends the lookups and subscriptions.
    cancel: CancellationToken,
    command_timeout: Duration,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The trouble worth a new lookup: the master is gone, unreachable, or no longer a master.
pub fn is_failover_sign(e: &RedisError) -> bool {
    is_readonly(e)
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || e.is_timeout()
}

/// A write refused because the server is a replica: `READONLY`, as a reply of its own or inside
/// a script's error (a script's first write on a replica).
pub fn is_readonly(e: &RedisError) -> bool {
    e.code() == Some("READONLY")
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        )
        || e.to_string().contains("READONLY")
}

impl Follower {
    /// Parses the configuration; looks nothing up yet ([`Follower::start`]).
    pub fn new(cfg: &RedisConfig, metrics: Metrics) -> RedisResult<Arc<Self>> {
        let url = cfg.url.expose();
        let data = url.into_connection_info()?;
        let tls = match data.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => Some(if *insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            }),
            _ => None,
        };
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(data.redis_settings().clone());
        if let Some(mode) = tls {
            node = node.set_tls_mode(mode);
        }
        let scheme = if tls.is_some() { "rediss" } else { "redis" };
        let fragment = if tls == Some(TlsMode::Insecure) {
            "#insecure"
        } else {
            ""
        };
        let sentinel_urls = cfg
            .sentinels
            .iter()
            .map(|hostport| {
                let mut u =
                    url::Url::parse(&format!("{scheme}://{hostport}{fragment}")).map_err(|e| {
                        RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "redis.sentinels",
                            e.to_string(),
                        ))
                    })?;
                if !cfg.sentinel_password.is_empty() {
                    let _ = u.set_password(Some(cfg.sentinel_password.expose()));
                }
                Ok(u.to_string())
            })
            .collect::<RedisResult<Vec<String>>>()?;
        let sentinel_clients = sentinel_urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<RedisResult<Vec<_>>>()?;
        let sentinel = redis::sentinel::Sentinel::build(sentinel_urls)?;
        Ok(Arc::new(Self {
            master_name: cfg.sentinel_master.clone(),
            sentinel: tokio::sync::Mutex::new(sentinel),
            node,
            sentinel_clients,
            current: watch::channel(None).0,
            wake: Notify::new(),
            metrics,
            cancel: CancellationToken::new(),
            command_timeout: Duration::from_millis(cfg.command_timeout_ms),
        }))
    }

    /// Starts the lookups and the announcement subscriptions (once; on the caller's runtime).
    /// They end when the store is dropped.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(Self::follow(Arc::downgrade(self), self.cancel.clone()));
        for client in &self.sentinel_clients {
            tokio::spawn(Self::announcements(
                Arc::downgrade(self),
                client.clone(),
                self.cancel.clone(),
            ));
        }
    }

    /// The master as last found, if any yet.
    pub fn current(&self) -> Option<Master> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every new master from now on.
    pub fn watch(&self) -> watch::Receiver<Option<Master>> {
        self.current.subscribe()
    }

    /// A connection of `generation` failed in a way a failover explains: look again soon.
    pub fn suspect(&self, generation: u64) {
        if self.current.borrow().as_ref().map(|m| m.generation) == Some(generation) {
            self.wake.notify_one();
        }
    }

    /// The master, waiting up to the command timeout for the first lookup (or a failover's).
    pub async fn master(&self) -> RedisResult<Master> {
        let mut rx = self.current.subscribe();
        let found = tokio::time::timeout(self.command_timeout, rx.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(m)) => Ok(m.clone().expect("waited for Some")),
            _ => Err(RedisError::from((
                redis::ErrorKind::Io,
                "redis master not known yet",
                format!(
                    "no sentinel named a reachable master {:?}",
                    self.master_name
                ),
            ))),
        }
    }

    /// One lookup: the sentinels' master, checked to be a master.
    async fn lookup(&self) -> RedisResult<redis::Client> {
        let mut sentinel = self.sentinel.lock().await;
        sentinel
            .async_master_for(&self.master_name, Some(&self.node))
            .await
    }

    /// Records `client` as the master; a new address starts a new generation.
    fn found(&self, client: redis::Client) {
        let addr = client.get_connection_info().addr().to_string();
        let mut switched_from = None;
        self.current.send_if_modified(|cur| match cur {
            Some(m) if m.addr == addr => false,
            _ => {
                let generation = cur.as_ref().map_or(1, |m| m.generation + 1);
                switched_from = Some(cur.as_ref().map(|m| m.addr.clone()));
                *cur = Some(Master {
                    client,
                    addr: addr.clone(),
                    generation,
                });
                true
            }
        });
        match switched_from {
            Some(Some(old)) => {
                self.metrics.redis_master_switches.inc();
                tracing::warn!(from = %old, to = %addr, master = %self.master_name, "redis master switched (sentinel); reconnecting every connection");
            }
            Some(None) => {
                tracing::info!(master = %self.master_name, %addr, "redis master found through the sentinels")
            }
            None => {}
        }
    }

    /// Looks the master up at start, on every wake, and every [`RECHECK`].
    async fn follow(me: std::sync::Weak<Self>, cancel: CancellationToken) {
        let mut failures = 0u32;
        let mut last = Instant::now() - SUSPECT_GAP;
        loop {
            let Some(this) = me.upgrade() else { return };
            let since = last.elapsed();
            if since < SUSPECT_GAP {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(SUSPECT_GAP - since) => {}
                }
            }
            last = Instant::now();
            let pause = match tokio::time::timeout(LOOKUP_TIMEOUT, this.lookup()).await {
                Ok(Ok(client)) => {
                    failures = 0;
                    this.found(client);
                    RECHECK
                }
                Ok(Err(e)) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(40) {
                        tracing::warn!(error = %e, master = %this.master_name, failures, "no redis master found through the sentinels yet; asking again");
                    }
                    RETRY
                }
                Err(_) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(40) {
                        tracing::warn!(master = %this.master_name, failures, "redis sentinel lookup timed out; asking again");
                    }
                    RETRY
                }
            };
            let wake = async { this.wake.notified().await };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One sentinel's `+switch-master` announcements ring the lookup.
    async fn announcements(
        me: std::sync::Weak<Self>,
        client: redis::Client,
        cancel: CancellationToken,
    ) {
        let addr = client.get_connection_info().addr().to_string();
        loop {
            let attempt = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, RedisError>(pubsub)
            };
            let subscribed = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(LOOKUP_TIMEOUT, attempt) => r,
            };
            if let Ok(Ok(pubsub)) = subscribed {
                tracing::debug!(sentinel = %addr, "following +switch-master");
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = messages.next() => match m {
                            Some(m) => {
                                let payload: String = m.get_payload().unwrap_or_default();
                                let Some(this) = me.upgrade() else { return };
                                if payload.split_whitespace().next() == Some(this.master_name.as_str()) {
                                    tracing::info!(sentinel = %addr, %payload, "sentinel announced +switch-master");
                                    this.wake.notify_one();
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
    }
}

/// A connection to whichever server is master now: a self-reconnecting connection to the
/// current master, replaced on the first command after a switch. Clones share it (like the
/// clones of a [`ConnectionManager`]); [`SentinelConn::pinned`] keeps one master for a
/// sequence of commands that must reach the same server (writes, then `WAIT` for them).
#[derive(Clone)]
pub struct SentinelConn {
    follower: Arc<Follower>,
    config: Arc<ConnectionManagerConfig>,
    slot: Arc<Slot>,
    /// Set on a pinned connection: this generation's connection, whatever happens next.
    pinned: Option<(u64, ConnectionManager)>,
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<(u64, ConnectionManager)>>,
    /// One reconnection at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl SentinelConn {
    /// A connection of its own (nothing shared with other `SentinelConn`s); connects on first
    /// use.
    pub fn new(follower: Arc<Follower>, config: ConnectionManagerConfig) -> Self {
        Self {
            follower,
            config: Arc::new(config),
            slot: Arc::default(),
            pinned: None,
        }
    }

    /// The current master's connection, opening it if this one is of an older generation.
    async fn manager(&self) -> RedisResult<(u64, ConnectionManager)> {
        if let Some(p) = &self.pinned {
            return Ok(p.clone());
        }
        let master = self.follower.master().await?;
        let fresh = |slot: &RwLock<Option<(u64, ConnectionManager)>>| {
            slot.read()
                .expect("slot lock")
                .as_ref()
                .filter(|(g, _)| *g == master.generation)
                .cloned()
        };
        if let Some(m) = fresh(&self.slot.current) {
            return Ok(m);
        }
        let _one = self.slot.connecting.lock().await;
        if let Some(m) = fresh(&self.slot.current) {
            return Ok(m);
        }
        match master
            .client
            .get_connection_manager_with_config((*self.config).clone())
            .await
        {
            Ok(m) => {
                *self.slot.current.write().expect("slot lock") =
                    Some((master.generation, m.clone()));
                Ok((master.generation, m))
            }
            Err(e) => {
                self.follower.suspect(master.generation);
                Err(e)
            }
        }
    }

    /// This connection held to the current master for a sequence of commands.
    pub async fn pinned(&self) -> RedisResult<Self> {
        let m = self.manager().await?;
        Ok(Self {
            pinned: Some(m),
            ..self.clone()
        })
    }

    /// After a command: trouble a failover explains asks for a new lookup.
    fn after<T>(&self, generation: u64, res: &RedisResult<T>) {
        if let Err(e) = res
            && is_failover_sign(e)
        {
            self.follower.suspect(generation);
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.manager().await?;
            let res = conn.req_packed_command(cmd).await;
            self.after(generation, &res);
            res
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.manager().await?;
            let res = conn.req_packed_commands(pipeline, offset, count).await;
            self.after(generation, &res);
            res
        })
    }

    fn get_db(&self) -> i64 {
        self.follower
            .current()
            .map_or(0, |m| m.client.get_connection_info().redis_settings().db())
    }
}

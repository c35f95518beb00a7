//! The command bell: Redis keyspace notifications on `<p>:{<org>}:commands` wake the consumer
//! of that organization, so an idle tenant costs Redis nothing (instead of a read every
//! `devices.commands_poll_ms`). The engine turns on the notifications it needs (`K` keyspace
//! events, `t` stream commands) with `CONFIG SET` at start; where that is refused (a managed
//! Redis) or the subscription is down, consumers fall back to polling. Notifications are
//! fire-and-forget, so consumers also sweep their stream every `devices.commands_sweep_secs`.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::Notify;

use super::Store;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Pause before subscribing again after the subscription was lost.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// Rings one organization's consumer when its command stream gets an entry.
#[derive(Clone, Default)]
pub struct Bell {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    doors: DashMap<String, Arc<Notify>>,
    /// True while notifications are enabled and subscribed.
    ringing: AtomicBool,
}

impl Bell {
    /// The door of `org`'s consumer (the same one for every caller).
    pub fn door(&self, org: &str) -> Arc<Notify> {
        self.inner
            .doors
            .entry(org.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Forgets `org`'s door (its consumer stopped).
    pub fn close(&self, org: &str) {
        self.inner.doors.remove(org);
    }

    /// Whether notifications arrive now (else consumers must poll).
    pub fn is_ringing(&self) -> bool {
        self.inner.ringing.load(Ordering::Acquire)
    }

    fn ring(&self, org: &str) {
        if let Some(door) = self.inner.doors.get(org) {
            door.notify_one();
        }
    }

    /// Listens until `stop`: enables the notifications, subscribes on every node, rings.
    /// (On a Redis Cluster notifications are per node: it subscribes on each master.) The bell
    /// counts as ringing only while every node's subscription is up; each time it starts or
    /// stops ringing every door is rung once, since an entry added meanwhile was announced to
    /// nobody.
    pub async fn listen(self, store: Store, metrics: Metrics, stop: Shutdown) {
        let prefix = store.keys().prefix().to_string();
        loop {
            // Under Sentinel a new master means enabling and subscribing there.
            let mut master = store.master_watch();
            let nodes = match enable(&store).await {
                Ok(nodes) => nodes,
                Err(e) => {
                    tracing::warn!(error = %e, "keyspace notifications unavailable; command streams are read every devices.commands_poll_ms");
                    tokio::select! {
                        _ = stop.wait() => return,
                        _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                    }
                }
            };
            let total = nodes.len();
            let up = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let listeners = nodes.into_iter().map(|client| {
                let me = self.clone();
                let pattern = format!(
                    "__keyspace@{}__:{prefix}:{{*}}:commands",
                    client.get_connection_info().redis_settings().db()
                );
                let (stop, up, metrics) = (stop.clone(), up.clone(), metrics.clone());
                Box::pin(async move {
                    me.subscribe(client, pattern, up, total, metrics, stop)
                        .await
                })
            });
            // Each returns when its subscription ends; one lost means resubscribing all.
            tokio::select! {
                _ = futures::future::select_all(listeners) => {}
                _ = master.changed() => tracing::info!("command bell: redis master switched; subscribing there"),
            }
            metrics.command_notifications_up.set(0);
            if self.inner.ringing.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    "command bell stopped; command streams are read every devices.commands_poll_ms until it is back"
                );
            }
            self.ring_all();
            tokio::select! {
                _ = stop.wait() => return,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
    }

    fn ring_all(&self) {
        for door in self.inner.doors.iter() {
            door.notify_one();
        }
    }

    /// One node's subscription, until it ends or `stop`; the last of `total` to come `up`
    /// starts the ringing.
    async fn subscribe(
        &self,
        client: redis::Client,
        pattern: String,
        up: Arc<std::sync::atomic::AtomicUsize>,
        total: usize,
        metrics: Metrics,
        stop: Shutdown,
    ) {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "command bell: cannot connect");
                return;
            }
        };
        if let Err(e) = pubsub.psubscribe(&pattern).await {
            tracing::debug!(error = %e, "command bell: cannot subscribe");
            return;
        }
        tracing::debug!(%pattern, "command bell subscribed");
        if up.fetch_add(1, Ordering::AcqRel) + 1 == total {
            self.inner.ringing.store(true, Ordering::Release);
            metrics.command_notifications_up.set(1);
            tracing::info!(
                nodes = total,
                "command bell ringing: new commands wake their consumer at once"
            );
            self.ring_all();
        }
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                _ = stop.wait() => return,
                m = messages.next() => match m {
                    Some(m) => {
                        // __keyspace@0__:<p>:{<org>}:commands, payload "xadd".
                        let channel = m.get_channel_name();
                        if let Some(org) = channel
                            .split_once(":{")
                            .and_then(|(_, rest)| rest.rsplit_once("}:commands"))
                            .map(|(org, _)| org)
                        {
                            self.ring(org);
                        }
                    }
                    None => return,
                },
            }
        }
    }
}

/// Turns on the notifications the bell needs (keeping whatever else is configured) on every
/// node; returns a client per node to subscribe on.
async fn enable(store: &Store) -> Result<Vec<redis::Client>, String> {
    let clients = store.node_clients().await.map_err(|e| e.to_string())?;
    for client in &clients {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let current: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let flags = current.get(1).cloned().unwrap_or_default();
        let has = |c: char| flags.contains(c) || (flags.contains('A') && c != 'K');
        if has('K') && has('t') {
            continue;
        }
        let mut wanted = flags.clone();
        for c in ['K', 't'] {
            if !has(c) {
                wanted.push(c);
            }
        }
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("CONFIG SET notify-keyspace-events {wanted}: {e}"))?;
        tracing::info!(from = %flags, to = %wanted, "enabled keyspace notifications for command streams");
    }
    Ok(clients)
}

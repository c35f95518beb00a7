//! The command bell: Redis keyspace notifications on `<p>:{<org>}:commands` wake the consumer
//! of that organization, so an idle tenant costs Redis nothing (instead of a read every
//! `devices.commands_poll_ms`). The engine turns on the notifications it needs (`K` keyspace
//! events, `t` stream commands) with `CONFIG SET` at start; where that is refused (a managed
//! Redis) or the subscription is down, consumers fall back to polling. Notifications are
//! fire-and-forget, so consumers also sweep their stream every `devices.commands_sweep_secs`.
//!
//! It subscribes to the channel of each open door (`SUBSCRIBE`), not to a pattern: with
//! notifications on, every XADD of every stream publishes one, and Redis matches it against
//! each pattern subscribed, which costs on every status entry written (callgrind, apply.lua's
//! calls over 1,000 organizations: 154.7k instructions per message without notifications,
//! 168.1k with a pattern, 161.0k with a channel per organization). A channel is one lookup.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

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
    doors: DashMap<String, Door>,
    /// True while notifications are enabled and subscribed.
    ringing: AtomicBool,
    /// Each node's subscription: told of every door opened or closed, which it subscribes or
    /// unsubscribes (dropped when its subscription ends). Held while a door opens or closes,
    /// so that every subscription hears of the changes of one door in the order they happened.
    listeners: std::sync::Mutex<Vec<mpsc::UnboundedSender<Change>>>,
}

/// An organization's door and how many consumers hold it (two overlap when one stops as the
/// next starts): it closes with the last.
struct Door {
    notify: Arc<Notify>,
    holders: usize,
}

/// A door opened or closed: a channel to subscribe or unsubscribe.
#[derive(Clone)]
enum Change {
    Open(String),
    Close(String),
}

impl Bell {
    /// The door of `org`'s consumer (the same one for every caller), held until [`Bell::close`].
    pub fn door(&self, org: &str) -> Arc<Notify> {
        let mut listeners = self.inner.listeners.lock().expect("bell listeners");
        let mut door = self
            .inner
            .doors
            .entry(org.to_string())
            .or_insert_with(|| Door {
                notify: Arc::new(Notify::new()),
                holders: 0,
            });
        door.holders += 1;
        let (notify, opened) = (door.notify.clone(), door.holders == 1);
        drop(door);
        if opened {
            announce(&mut listeners, Change::Open(org.to_string()));
        }
        notify
    }

    /// Lets go of `org`'s door (a consumer stopped); the last holder closes it.
    pub fn close(&self, org: &str) {
        let mut listeners = self.inner.listeners.lock().expect("bell listeners");
        let closed = match self.inner.doors.entry(org.to_string()) {
            dashmap::Entry::Occupied(mut e) => {
                e.get_mut().holders -= 1;
                e.get().holders == 0 && {
                    e.remove();
                    true
                }
            }
            dashmap::Entry::Vacant(_) => false,
        };
        if closed {
            announce(&mut listeners, Change::Close(org.to_string()));
        }
    }

    /// Whether notifications arrive now (else consumers must poll).
    pub fn is_ringing(&self) -> bool {
        self.inner.ringing.load(Ordering::Acquire)
    }

    fn ring(&self, org: &str) {
        if let Some(door) = self.inner.doors.get(org) {
            door.notify.notify_one();
        }
    }

    /// Listens until `stop`: enables the notifications, subscribes on every node, rings.
    /// (On a Redis Cluster notifications are per node: it subscribes on each master.) The bell
    /// counts as ringing only while every node's subscription is up; each time it starts or
    /// stops ringing every door is rung once, since an entry added meanwhile was announced to
    /// nobody.
    pub async fn listen(self, store: Store, metrics: Metrics, stop: Shutdown) {
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
                let channels = Channels {
                    db: client.get_connection_info().redis_settings().db(),
                    keys: store.keys().clone(),
                };
                let (stop, up, metrics) = (stop.clone(), up.clone(), metrics.clone());
                Box::pin(async move {
                    me.subscribe(client, channels, up, total, metrics, stop)
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
            door.notify.notify_one();
        }
    }

    /// One node's subscription, until it ends or `stop`: the channel of every open door, and
    /// of each door opened meanwhile; the last of `total` to come `up` starts the ringing.
    async fn subscribe(
        &self,
        client: redis::Client,
        channels: Channels,
        up: Arc<std::sync::atomic::AtomicUsize>,
        total: usize,
        metrics: Metrics,
        stop: Shutdown,
    ) {
        let (mut sink, mut messages) = match client.get_async_pubsub().await {
            Ok(p) => p.split(),
            Err(e) => {
                tracing::debug!(error = %e, "command bell: cannot connect");
                return;
            }
        };
        // Told of changes before the doors are read: a door opened in between is subscribed
        // twice at worst (harmless), never missed.
        let (tell, mut changes) = mpsc::unbounded_channel();
        {
            let mut listeners = self.inner.listeners.lock().expect("bell listeners");
            listeners.retain(|l| !l.is_closed());
            listeners.push(tell);
        }
        let open: Vec<String> = self
            .inner
            .doors
            .iter()
            .map(|d| channels.of(d.key()))
            .collect();
        for chunk in open.chunks(SUBSCRIBE_CHUNK) {
            if let Err(e) = sink.subscribe(chunk).await {
                tracing::debug!(error = %e, "command bell: cannot subscribe");
                return;
            }
        }
        tracing::debug!(channels = open.len(), "command bell subscribed");
        if up.fetch_add(1, Ordering::AcqRel) + 1 == total {
            self.inner.ringing.store(true, Ordering::Release);
            metrics.command_notifications_up.set(1);
            tracing::info!(
                nodes = total,
                "command bell ringing: new commands wake their consumer at once"
            );
            self.ring_all();
        }
        loop {
            tokio::select! {
                _ = stop.wait() => return,
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    // With what queued up behind it: one SUBSCRIBE and one UNSUBSCRIBE.
                    let mut batch = vec![change];
                    while let Ok(c) = changes.try_recv() {
                        batch.push(c);
                    }
                    let (open, closed) = settle(batch);
                    if let Err(e) = self.resubscribe(&mut sink, &channels, &open, &closed).await {
                        tracing::debug!(error = %e, "command bell: cannot (un)subscribe");
                        return;
                    }
                }
                m = messages.next() => match m {
                    Some(m) => {
                        // __keyspace@0__:<p>:{<org>}:commands, payload "xadd".
                        if let Some(org) = super::keys::hash_tag(m.get_channel_name()) {
                            self.ring(org);
                        }
                    }
                    None => return,
                },
            }
        }
    }

    /// Subscribes the channels of the doors `open`ed and unsubscribes those `closed`; then
    /// rings each door opened, once its channel is confirmed: an entry its consumer's first
    /// read missed, added before the subscription, was announced to nobody.
    async fn resubscribe(
        &self,
        sink: &mut redis::aio::PubSubSink,
        channels: &Channels,
        open: &[String],
        closed: &[String],
    ) -> redis::RedisResult<()> {
        let of = |orgs: &[String]| orgs.iter().map(|o| channels.of(o)).collect::<Vec<_>>();
        for chunk in of(open).chunks(SUBSCRIBE_CHUNK) {
            sink.subscribe(chunk).await?;
        }
        for chunk in of(closed).chunks(SUBSCRIBE_CHUNK) {
            sink.unsubscribe(chunk).await?;
        }
        for org in open {
            self.ring(org);
        }
        Ok(())
    }
}

/// Tells every node's subscription; forgets those that ended.
fn announce(listeners: &mut Vec<mpsc::UnboundedSender<Change>>, change: Change) {
    listeners.retain(|l| l.send(change.clone()).is_ok());
}

/// What a run of changes leaves: the doors open and those closed at its end (each once).
fn settle(changes: Vec<Change>) -> (Vec<String>, Vec<String>) {
    let mut last = std::collections::HashMap::new();
    let mut order = Vec::new();
    for change in changes {
        let (org, open) = match change {
            Change::Open(org) => (org, true),
            Change::Close(org) => (org, false),
        };
        if last.insert(org.clone(), open).is_none() {
            order.push(org);
        }
    }
    order.into_iter().partition(|org| last[org])
}

/// Channels subscribed per command at once (a SUBSCRIBE is confirmed channel by channel).
const SUBSCRIBE_CHUNK: usize = 1000;

/// The keyspace-notification channel of an organization's command stream on one node.
struct Channels {
    db: i64,
    keys: super::keys::Keys,
}

impl Channels {
    fn of(&self, org: &str) -> String {
        format!(
            "__keyspace@{}__:{}",
            self.db,
            self.keys.commands_stream(org)
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(bell: &Bell) -> mpsc::UnboundedReceiver<Change> {
        let (tell, changes) = mpsc::unbounded_channel();
        bell.inner.listeners.lock().unwrap().push(tell);
        changes
    }

    fn drain(changes: &mut mpsc::UnboundedReceiver<Change>) -> Vec<String> {
        std::iter::from_fn(|| changes.try_recv().ok())
            .map(|c| match c {
                Change::Open(org) => format!("+{org}"),
                Change::Close(org) => format!("-{org}"),
            })
            .collect()
    }

    #[test]
    fn doors_opened_and_closed_are_told_to_every_subscription_once() {
        let bell = Bell::default();
        let (mut a, mut b) = (listen(&bell), listen(&bell));
        let door = bell.door("ORG1");
        // A second consumer of ORG1 (one starting as the other stops): the same door, which
        // stays open until both let go.
        assert!(Arc::ptr_eq(&door, &bell.door("ORG1")), "one door per org");
        bell.door("ORG2");
        bell.close("ORG1");
        assert_eq!(drain(&mut a), ["+ORG1", "+ORG2"]);
        bell.close("ORG1");
        bell.close("ORG1");
        assert_eq!(drain(&mut a), ["-ORG1"]);
        assert_eq!(drain(&mut b), ["+ORG1", "+ORG2", "-ORG1"]);
        // A subscription that ended is forgotten at the next change.
        drop(b);
        bell.close("ORG2");
        assert_eq!(drain(&mut a), ["-ORG2"]);
        assert_eq!(bell.inner.listeners.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_run_of_changes_settles_to_the_last_of_each_door() {
        let changes = [
            Change::Open("A".into()),
            Change::Open("B".into()),
            Change::Close("A".into()),
            Change::Close("C".into()),
            Change::Open("A".into()),
            Change::Close("B".into()),
        ];
        let (open, closed) = settle(changes.to_vec());
        assert_eq!(open, ["A"]);
        assert_eq!(closed, ["B", "C"]);
    }

    #[test]
    fn the_channel_is_the_command_streams_keyspace_channel() {
        let channels = Channels {
            db: 0,
            keys: super::super::keys::Keys::new("xapi"),
        };
        assert_eq!(channels.of("ORG"), "__keyspace@0__:xapi:{ORG}:commands");
    }
}

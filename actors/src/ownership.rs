//! The ownership coordinator: decides which tenants this replica runs the background work of
//! (token refresh, queue poller, reconciler, inventory, command consumer) and keeps their leases.
//!
//! Every `scaling.renew_every()` (and when kicked: a new tenant, a re-activation) it
//! 1. heartbeats in `<p>:replicas` and reads the live set,
//! 2. for every tenant computes the preferred owner by rendezvous hashing over that set,
//! 3. renews the leases it holds, hands over those now preferred elsewhere (a replica joined:
//!    owned work stops at a safe point, then the lease is deleted so the newcomer takes it at
//!    once), and acquires the free leases of tenants it is preferred for.
//!
//! A replica that dies stops renewing: its leases and heartbeat expire within the lease TTL and
//! the survivors, now preferred for its tenants, take them on their next round. A draining
//! replica leaves the live set first and deletes its leases after its work stopped.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::store::lease::{Acquired, Leases, preferred_owner};
use crate::store::tenants::ProvisioningState;
use crate::supervisor::TenantHandle;

/// Lease operations in flight at once during a round.
const CONCURRENCY: usize = 64;

/// Runs the ownership rounds of one replica.
pub struct Coordinator {
    registry: Arc<Registry>,
    leases: Leases,
    replica: String,
    ttl: Duration,
    every: Duration,
    /// Tenants being handed over (owned work stopping before the lease is deleted).
    handing_over: std::sync::Mutex<HashSet<String>>,
    /// Set by [`Coordinator::leave`]: no heartbeat, no new leases; held ones are only renewed
    /// until their work has stopped.
    draining: std::sync::atomic::AtomicBool,
    /// Held for a whole round: [`Coordinator::leave`] waits for a round in flight, so its
    /// heartbeat cannot put a draining replica back into the live set.
    round_lock: tokio::sync::Mutex<()>,
    /// The live set of the last successful heartbeat (used when one heartbeat fails).
    last_live: std::sync::Mutex<Vec<String>>,
}

impl Coordinator {
    pub fn new(registry: Arc<Registry>) -> Arc<Self> {
        let deps = registry.deps().clone();
        let scaling = &deps.config.scaling;
        Arc::new(Self {
            leases: Leases::new(deps.store.clone()),
            replica: scaling.replica_id(),
            ttl: scaling.lease_ttl(),
            every: scaling.renew_every(),
            registry,
            handing_over: Default::default(),
            draining: Default::default(),
            round_lock: Default::default(),
            last_live: Default::default(),
        })
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Rounds until `stop`.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        tracing::info!(replica = %self.replica, ttl = ?self.ttl, every = ?self.every, "ownership coordinator started");
        let kick = self.registry.kick.clone();
        loop {
            self.round().await;
            tokio::select! {
                _ = stop.wait() => return,
                _ = kick.notified() => {}
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One round: heartbeat, then renew, hand over or acquire each tenant's lease.
    pub async fn round(self: &Arc<Self>) {
        let _round = self.round_lock.lock().await;
        if self.draining.load(Ordering::Acquire) {
            self.renew_while_draining().await;
            return;
        }
        let live = match self.leases.heartbeat(&self.replica, self.ttl).await {
            Ok(live) => {
                *self.last_live.lock().expect("live lock") = live.clone();
                live
            }
            Err(e) => {
                // The heartbeat key lives on one slot; its node may be down while the tenants'
                // are fine. Go on with the last live set: renewals that fail drop what lapses.
                tracing::warn!(error = %e, "ownership heartbeat failed; using the last live set");
                let last = self.last_live.lock().expect("live lock").clone();
                if last.is_empty() {
                    for h in self.registry.handles() {
                        self.drop_if_lapsed(&h).await;
                    }
                    return;
                }
                last
            }
        };
        let metrics = &self.registry.deps().metrics;
        metrics.replicas_live.set(live.len() as i64);
        let handles = self.registry.handles();
        futures::stream::iter(handles)
            .for_each_concurrent(CONCURRENCY, |h| {
                let live = &live;
                async move { self.tend(&h, live).await }
            })
            .await;
        let owned = self
            .registry
            .handles()
            .iter()
            .filter(|h| h.shared.claim.is_owning())
            .count();
        metrics.tenants_owned.set(owned as i64);
    }

    async fn tend(self: &Arc<Self>, h: &TenantHandle, live: &[String]) {
        let org = h.shared.org_id.clone();
        let claim = &h.shared.claim;
        if self
            .handing_over
            .lock()
            .expect("handover lock")
            .contains(&org)
        {
            return;
        }
        let gone = h.shared.state() == ProvisioningState::Deprovisioned;
        let preferred = preferred_owner(live, &org) == Some(self.replica.as_str());
        match claim.held_epoch() {
            Some(epoch) if gone || !preferred => {
                // Deprovisioned, or a replica preferred for it has joined: hand it over.
                self.hand_over(h.clone(), epoch);
            }
            Some(epoch) => {
                let sent = Instant::now();
                match self
                    .leases
                    .renew(&org, &self.replica, epoch, self.ttl)
                    .await
                {
                    Ok(true) => {
                        claim.set(epoch, sent, self.ttl);
                        if !claim.is_owning() && !claim.is_blocked() {
                            // A full mailbox refuses it; the next round offers it again.
                            h.start_owned_work();
                        }
                    }
                    Ok(false) => {
                        tracing::warn!(tenant = %h.shared.tenant_id, epoch, "lease lost to another replica");
                        self.registry.deps().metrics.lease("lost");
                        claim.clear();
                        h.stop_owned_work().await;
                    }
                    Err(e) => {
                        tracing::debug!(tenant = %h.shared.tenant_id, error = %e, "lease renewal failed");
                        self.drop_if_lapsed(h).await;
                    }
                }
            }
            None if preferred
                && !gone
                && !claim.is_blocked()
                && !self.draining.load(Ordering::Acquire) =>
            {
                let sent = Instant::now();
                match self.leases.acquire(&org, &self.replica, self.ttl).await {
                    Ok(Acquired::Held(epoch)) => {
                        claim.set(epoch, sent, self.ttl);
                        self.registry.deps().metrics.lease("acquired");
                        tracing::debug!(tenant = %h.shared.tenant_id, epoch, "lease acquired");
                        h.start_owned_work();
                    }
                    Ok(Acquired::Busy | Acquired::Gone) => {}
                    Err(e) => {
                        tracing::debug!(tenant = %h.shared.tenant_id, error = %e, "lease acquisition failed");
                    }
                }
            }
            None => {}
        }
    }

    /// A lease whose local validity ran out (Redis unreachable, or this process was paused)
    /// is treated as lost: owned work stops.
    async fn drop_if_lapsed(&self, h: &TenantHandle) {
        let claim = &h.shared.claim;
        if claim.held_epoch().is_some() && claim.valid_for().is_zero() {
            tracing::warn!(tenant = %h.shared.tenant_id, "lease lapsed without renewal; stopping owned work");
            self.registry.deps().metrics.lease("lapsed");
            claim.clear();
            h.stop_owned_work().await;
        }
    }

    /// Stops the owned work, waits until it finished its current step (bounded by the lease
    /// itself), then deletes the lease so the preferred replica takes it at once.
    fn hand_over(self: &Arc<Self>, h: TenantHandle, epoch: u64) {
        let org = h.shared.org_id.clone();
        self.handing_over
            .lock()
            .expect("handover lock")
            .insert(org.clone());
        let me = self.clone();
        tokio::spawn(async move {
            h.stop_owned_work().await;
            let claim = &h.shared.claim;
            // Keep the lease while the work finishes (a long-poll in flight), so the next owner
            // never polls beside it; bounded, in case a child is stuck.
            let deadline = Instant::now() + me.ttl * 2;
            let mut renew_at = Instant::now() + me.every;
            while claim.running() > 0 && Instant::now() < deadline {
                if Instant::now() >= renew_at {
                    let sent = Instant::now();
                    match me.leases.renew(&org, &me.replica, epoch, me.ttl).await {
                        Ok(true) => claim.set(epoch, sent, me.ttl),
                        _ => break,
                    }
                    renew_at = Instant::now() + me.every;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Forget it locally first: from the DEL on, the newcomer may exchange tokens, and
            // nothing here may still believe it holds the lease.
            let idle = claim.running() == 0;
            claim.clear();
            if idle && let Err(e) = me.leases.release(&org, &me.replica, epoch).await {
                tracing::debug!(tenant = %h.shared.tenant_id, error = %e, "lease not released; it expires by itself");
            }
            me.registry.deps().metrics.lease("handed_over");
            me.handing_over.lock().expect("handover lock").remove(&org);
        });
    }

    /// While draining: keep the leases whose work is still finishing (a long-poll in flight),
    /// so no other replica polls beside it.
    async fn renew_while_draining(&self) {
        let held: Vec<TenantHandle> = self
            .registry
            .handles()
            .into_iter()
            .filter(|h| h.shared.claim.held_epoch().is_some())
            .collect();
        futures::stream::iter(held)
            .for_each_concurrent(CONCURRENCY, |h| async move {
                let claim = &h.shared.claim;
                let Some(epoch) = claim.held_epoch() else {
                    return;
                };
                let sent = Instant::now();
                if let Ok(true) = self
                    .leases
                    .renew(&h.shared.org_id, &self.replica, epoch, self.ttl)
                    .await
                {
                    claim.set(epoch, sent, self.ttl);
                }
            })
            .await;
    }

    /// Draining: leave the live set (others start taking this replica's share at once) and
    /// take no new tenants.
    pub async fn leave(&self) {
        self.draining.store(true, Ordering::Release);
        // A round in flight may have heartbeated already: wait for it, then leave.
        let _round = self.round_lock.lock().await;
        if let Err(e) = self.leases.leave(&self.replica).await {
            tracing::warn!(error = %e, "could not leave the replica set; it expires by itself");
        }
    }

    /// After the supervisors stopped: delete every lease still held, so the survivors take
    /// the tenants without waiting for the TTL.
    pub async fn release_all(&self) {
        let held: Vec<(String, u64)> = self
            .registry
            .handles()
            .iter()
            .filter_map(|h| h.shared.claim.clear().map(|e| (h.shared.org_id.clone(), e)))
            .collect();
        let n = held.len();
        futures::stream::iter(held)
            .for_each_concurrent(CONCURRENCY, |(org, epoch)| async move {
                let _ = self.leases.release(&org, &self.replica, epoch).await;
            })
            .await;
        tracing::info!(leases = n, "leases released");
    }
}

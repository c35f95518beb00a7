//! The ownership coordinator: decides which tenants this replica runs the background work of
//! (token refresh, queue poller, reconciler, inventory, command consumer) and keeps their
//! ownership records (`crate::store::lease`).
//!
//! Every `scaling.renew_every()` (when kicked: a new tenant, a re-activation; and the moment
//! another replica's heartbeat expires) one round
//! 1. heartbeats in `<p>:replicas`, which keeps every record this replica holds (one script
//!    for all of them) and reads the live set; a heartbeat that had expired means others may
//!    have taken this replica's tenants, so all of them are dropped first,
//! 2. verifies a slice of the records it holds (all of them once per lease TTL: a record lost
//!    in a Redis failover, or taken over, stops the work),
//! 3. hands over the tenants now preferred elsewhere by rendezvous hashing over the live set
//!    (a replica joined: owned work stops at a safe point, then the record is deleted so the
//!    newcomer takes it at once) and starts owned work where it is missing,
//! 4. reads the records of the tenants it is preferred for but does not hold, and takes those
//!    that are free, name a replica no longer alive, or name itself (an earlier incarnation).
//!
//! So an idle replica costs Redis a heartbeat and a slice of MGET per round, not a command per
//! tenant. A replica that dies stops heartbeating: within the lease TTL its entry expires and
//! the survivors, now preferred for its tenants, take them (a round is scheduled for that
//! moment). A draining replica heartbeats as draining: preferred for nothing, its records hold
//! until its work stopped, then it deletes them.
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::store::lease::{Acquired, Heartbeat, Leases, holder, preferred_owner, value};
use crate::store::tenants::ProvisioningState;
use crate::supervisor::TenantHandle;

/// The least time between a kicked round and the next.
const KICK_SPACING: Duration = Duration::from_millis(100);
/// Takeovers in flight at once during a round.
const CONCURRENCY: usize = 64;

/// Runs the ownership rounds of one replica.
pub struct Coordinator {
    registry: Arc<Registry>,
    leases: Leases,
    replica: String,
    ttl: Duration,
    every: Duration,
    /// Tenants being handed over (owned work stopping before the record is deleted).
    handing_over: std::sync::Mutex<HashSet<String>>,
    /// Set by [`Coordinator::leave`]: heartbeats as draining, no new tenants.
    draining: std::sync::atomic::AtomicBool,
    /// Held for a whole round: [`Coordinator::leave`] waits for a round in flight, so its
    /// heartbeat cannot put a draining replica back into the preferred set.
    round_lock: tokio::sync::Mutex<()>,
    /// Rounds so far (which slice of the held records a round verifies).
    rounds: std::sync::atomic::AtomicU64,
    /// When another replica's heartbeat expires next (a round then takes its tenants).
    next_expiry: std::sync::Mutex<Option<Instant>>,
}

impl Coordinator {
    pub fn new(registry: Arc<Registry>) -> Arc<Self> {
        let deps = registry.deps().clone();
        let scaling = &deps.config().scaling;
        Arc::new(Self {
            leases: Leases::new(deps.store().clone()),
            replica: scaling.replica_id(),
            ttl: scaling.lease_ttl(),
            every: scaling.renew_every(),
            registry,
            handing_over: Default::default(),
            draining: Default::default(),
            round_lock: Default::default(),
            rounds: Default::default(),
            next_expiry: Default::default(),
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
            let mut wake = Instant::now() + self.every;
            if let Some(expiry) = *self.next_expiry.lock().expect("expiry lock") {
                // A moment after it: the heartbeat script runs on the server's clock.
                wake = wake.min(expiry + Duration::from_millis(20));
            }
            tokio::select! {
                _ = stop.wait() => return,
                _ = kick.notified() => {
                    // Kicks that follow quickly (a burst of activations) share one round: a
                    // round passes over every tenant.
                    tokio::select! {
                        _ = stop.wait() => return,
                        _ = tokio::time::sleep(KICK_SPACING) => {}
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Verification slices: every held record is read once per lease TTL.
    fn slices(&self) -> u64 {
        (self.ttl.as_secs_f64() / self.every.as_secs_f64())
            .floor()
            .max(1.0) as u64
    }

    /// One round (see the module docs).
    pub async fn round(self: &Arc<Self>) {
        let _round = self.round_lock.lock().await;
        let draining = self.draining.load(Ordering::Acquire);
        let sent = Instant::now();
        let beat = match self
            .leases
            .heartbeat(&self.replica, self.ttl, draining)
            .await
        {
            Ok(beat) => beat,
            Err(e) => {
                // Nothing is kept alive this round: what runs out of validity stops.
                tracing::warn!(error = %e, "ownership heartbeat failed");
                for h in self.registry.handles() {
                    self.drop_if_lapsed(&h).await;
                }
                return;
            }
        };
        *self.next_expiry.lock().expect("expiry lock") = beat.next_expiry.map(|d| sent + d);
        let handles = self.registry.handles();
        let held: Vec<&TenantHandle> = handles
            .iter()
            .filter(|h| h.shared.claim.held_epoch().is_some())
            .collect();
        if !beat.continuous && !held.is_empty() {
            // This replica's heartbeat had expired (a pause, Redis unreachable): others may have
            // taken its tenants. Drop them all; the takeovers below win back what is still free.
            tracing::warn!(
                tenants = held.len(),
                "ownership heartbeat had expired; dropping every tenant held"
            );
            for h in &held {
                self.lose(h, "lapsed").await;
            }
        }
        // The heartbeat keeps every record held for another TTL.
        for h in &handles {
            if let Some(epoch) = h.shared.claim.held_epoch() {
                h.shared.claim.set(epoch, sent, self.ttl);
            }
        }
        if draining {
            return;
        }
        let metrics = &self.registry.deps().metrics();
        metrics.replicas_live.set(beat.preferred.len() as i64);
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        self.verify(&handles, round).await;
        let mut candidates = Vec::new();
        for h in &handles {
            if let Some(h) = self.tend(h, &beat) {
                candidates.push(h);
            }
        }
        self.take_over(candidates, &beat, sent).await;
        let owned = handles
            .iter()
            .filter(|h| h.shared.claim.is_owning())
            .count();
        metrics.tenants_owned.set(owned as i64);
    }

    /// Reads this round's slice of the records held; those no longer naming this replica under
    /// the epoch held (lost in a failover, taken over) stop their work.
    async fn verify(&self, handles: &[TenantHandle], round: u64) {
        let slices = self.slices();
        let slice: Vec<(&TenantHandle, u64)> = handles
            .iter()
            .filter(|h| slice_of(&h.shared.org_id, slices) == round % slices)
            .filter_map(|h| h.shared.claim.held_epoch().map(|e| (h, e)))
            .filter(|(h, _)| !self.is_handing_over(&h.shared.org_id))
            .collect();
        if slice.is_empty() {
            return;
        }
        let orgs: Vec<&str> = slice
            .iter()
            .map(|(h, _)| h.shared.org_id.as_str())
            .collect();
        let records = match self.leases.read(&orgs).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "ownership records not verified this round");
                return;
            }
        };
        for ((h, epoch), record) in slice.into_iter().zip(records) {
            if record.as_deref() != Some(value(&self.replica, epoch).as_str())
                && h.shared.claim.held_epoch() == Some(epoch)
            {
                tracing::warn!(tenant = %h.shared.tenant_id, epoch, record = ?record, "ownership record lost or taken over");
                self.lose(h, "lost").await;
            }
        }
    }

    /// Forgets a tenant held and stops its owned work.
    async fn lose(&self, h: &TenantHandle, why: &str) {
        self.registry.deps().metrics().lease(why);
        h.shared.claim.clear();
        h.stop_owned_work().await;
    }

    fn is_handing_over(&self, org: &str) -> bool {
        self.handing_over
            .lock()
            .expect("handover lock")
            .contains(org)
    }

    /// A held tenant: handed over if it is gone or preferred elsewhere, else its owned work
    /// started if missing. An unheld one this replica is preferred for is returned, to take.
    fn tend<'a>(
        self: &Arc<Self>,
        h: &'a TenantHandle,
        beat: &Heartbeat,
    ) -> Option<&'a TenantHandle> {
        let org = &h.shared.org_id;
        if self.is_handing_over(org) {
            return None;
        }
        let claim = &h.shared.claim;
        let gone = h.shared.state() == ProvisioningState::Deprovisioned;
        let preferred = preferred_owner(&beat.preferred, org) == Some(self.replica.as_str());
        match claim.held_epoch() {
            Some(epoch) if gone || !preferred => {
                // Deprovisioned, or a replica preferred for it has joined: hand it over.
                self.hand_over(h.clone(), epoch);
                None
            }
            Some(_) => {
                if !claim.is_owning() && !claim.is_blocked() {
                    // A full mailbox refuses it; the next round offers it again.
                    h.start_owned_work();
                }
                None
            }
            None if preferred && !gone && !claim.is_blocked() => Some(h),
            None => None,
        }
    }

    /// Reads the records of `candidates` and takes those that are free, name a replica no
    /// longer alive, or name this one (an earlier incarnation: it is fenced off).
    async fn take_over(&self, candidates: Vec<&TenantHandle>, beat: &Heartbeat, sent: Instant) {
        if candidates.is_empty() {
            return;
        }
        let orgs: Vec<&str> = candidates
            .iter()
            .map(|h| h.shared.org_id.as_str())
            .collect();
        let records = match self.leases.read(&orgs).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "ownership records not read; next round");
                return;
            }
        };
        let takeable: Vec<(&TenantHandle, Option<String>)> = candidates
            .into_iter()
            .zip(records)
            .filter(|(_, record)| match record.as_deref().and_then(holder) {
                None => true,
                Some((owner, _)) => owner == self.replica || !beat.alive.contains(owner),
            })
            .collect();
        futures::stream::iter(takeable)
            .for_each_concurrent(CONCURRENCY, |(h, record)| async move {
                let claim = &h.shared.claim;
                match self
                    .leases
                    .take(&h.shared.org_id, &self.replica, record.as_deref())
                    .await
                {
                    Ok(Acquired::Held(epoch)) => {
                        claim.set(epoch, sent, self.ttl);
                        self.registry.deps().metrics().lease("acquired");
                        tracing::debug!(tenant = %h.shared.tenant_id, epoch, previous = ?record, "tenant taken");
                        h.start_owned_work();
                    }
                    Ok(Acquired::Busy | Acquired::Gone) => {}
                    Err(e) => {
                        tracing::debug!(tenant = %h.shared.tenant_id, error = %e, "takeover failed");
                    }
                }
            })
            .await;
    }

    /// A lease whose local validity ran out (Redis unreachable, or this process was paused)
    /// is treated as lost: owned work stops.
    async fn drop_if_lapsed(&self, h: &TenantHandle) {
        let claim = &h.shared.claim;
        if claim.held_epoch().is_some() && claim.valid_for().is_zero() {
            tracing::warn!(tenant = %h.shared.tenant_id, "lease lapsed without renewal; stopping owned work");
            self.registry.deps().metrics().lease("lapsed");
            claim.clear();
            h.stop_owned_work().await;
        }
    }

    /// Stops the owned work, waits until it finished its current step (bounded by twice the
    /// lease TTL, in case a child is stuck), then deletes the record so the preferred replica
    /// takes the tenant at once. Heartbeats keep the record meanwhile, so the next owner never
    /// polls beside a long-poll still in flight.
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
            let deadline = Instant::now() + me.ttl * 2;
            while claim.running() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Forget it locally first: from the DEL on, the newcomer may exchange tokens, and
            // nothing here may still believe it holds the tenant.
            let idle = claim.running() == 0;
            claim.clear();
            if idle && let Err(e) = me.leases.release(&org, &me.replica, epoch).await {
                tracing::debug!(tenant = %h.shared.tenant_id, error = %e, "record not released; it is taken once this replica's heartbeat expires");
            }
            me.registry.deps().metrics().lease("handed_over");
            me.handing_over.lock().expect("handover lock").remove(&org);
        });
    }

    /// Draining: from the next heartbeat on this replica is preferred for nothing (others start
    /// taking its share) while its records hold until its work stopped; no new tenants.
    pub async fn leave(self: &Arc<Self>) {
        self.draining.store(true, Ordering::Release);
        // A round in flight may have heartbeated already: wait for it, then heartbeat as
        // draining at once.
        self.round().await;
    }

    /// After the supervisors stopped: delete every record still held, so the survivors take
    /// the tenants without waiting for the TTL, then leave the replica set.
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
        if let Err(e) = self.leases.leave(&self.replica).await {
            tracing::warn!(error = %e, "could not leave the replica set; it expires by itself");
        }
        tracing::info!(records = n, "ownership records released");
    }
}

/// Which verification slice `org` is in.
fn slice_of(org: &str, slices: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    org.hash(&mut h);
    h.finish() % slices
}

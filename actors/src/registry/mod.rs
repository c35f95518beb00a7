//! The tenant registry: tenant id → [`TenantHandle`]. It activates organizations (one at a time
//! per organization, any number in parallel), loads every stored tenant at start-up, follows
//! changes other replicas make (pub/sub, periodic resync, lookups of unknown ids), and spreads
//! tenant supervisors over a small pool of arbiters (threads). Which replica runs a tenant's
//! background work is decided by leases (`crate::ownership`), not here.
mod background;
mod follow;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::Arbiter;
use chrono::Utc;
use dashmap::DashMap;

use std::time::Duration;

use crate::protocol::jwt::ActivationClaims;
use crate::store::StoreError;
use crate::store::tenants::{
    CasOutcome, Customer, ProvisioningState, StoredTenant, TenantRecord, TenantSecrets, TokensState,
};
use crate::supervisor::TenantHandle;
use crate::tenant::claim::Claim;
use crate::tenant::{Deps, TenantShared, TokenKeeper, WebhookSecrets};
pub use background::flush_counters_loop;
pub use follow::{follow_changes, resync_loop};

/// Why an activation could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("storage unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("the tenant record changed concurrently; try again")]
    Conflict,
}

/// All tenants of this engine.
/// What the console's overview reads from Redis (see [`Registry::fleet_view`]).
pub struct FleetView {
    pub hour: crate::store::stats::FleetHour,
    pub recent_errors: Vec<crate::support::ErrorRecord>,
    pub polls_failing: Vec<(String, crate::store::stats::PollsFailing)>,
}

pub struct Registry {
    deps: Arc<Deps>,
    by_id: DashMap<String, TenantHandle>,
    /// Serializes activations of one organization (re-activation stops the old supervisor).
    org_locks: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    arbiters: Vec<Arbiter>,
    next: AtomicUsize,
    /// Wakes the ownership coordinator (a tenant appeared or needs its owner now).
    pub kick: Arc<tokio::sync::Notify>,
    /// Set when the tenant gauges need recomputing ([`Registry::update_gauges`]).
    gauges_stale: std::sync::atomic::AtomicBool,
    /// org → tenant id of every tenant in `by_id` (an org's tenant id never changes).
    org_ids: DashMap<String, String>,
    /// Each organization's announced-change count at the last resync.
    seen: std::sync::Mutex<HashMap<String, u64>>,
    /// This replica's share of the fleet's figures not yet added (see `store::stats`).
    fleet: std::sync::Mutex<background::FleetPending>,
}

impl Registry {
    /// A registry whose supervisors run on `threads` arbiters (at least one).
    pub fn new(deps: Arc<Deps>, threads: usize) -> Self {
        Self {
            deps,
            by_id: DashMap::new(),
            org_locks: DashMap::new(),
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            next: AtomicUsize::new(0),
            kick: Arc::new(tokio::sync::Notify::new()),
            seen: Default::default(),
            fleet: Default::default(),
            org_ids: DashMap::new(),
            gauges_stale: Default::default(),
        }
    }

    /// Every handle, in no particular order.
    pub fn handles(&self) -> Vec<TenantHandle> {
        self.by_id.iter().map(|e| e.value().clone()).collect()
    }

    /// A closure that wakes the coordinator, for tasks that outlive a borrow of `self`.
    fn kick_handle(&self) -> impl Fn() + Send + 'static {
        let kick = self.kick.clone();
        move || kick.notify_one()
    }

    pub(crate) fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// The tenant of `org`, if loaded.
    fn by_org(&self, org: &str) -> Option<TenantHandle> {
        let id = self.org_ids.get(org)?.clone();
        self.get(&id)
    }

    pub fn get(&self, tenant_id: &str) -> Option<TenantHandle> {
        self.by_id.get(tenant_id).map(|h| h.clone())
    }

    /// Completed tenants whose transport is not `integration.ingest` and that no switch is
    /// moving there (e.g. after the setting changed; what `set-ingest --all` would move): how
    /// many, and a few of their ids.
    pub fn transports_differing(&self) -> (usize, Vec<String>) {
        let wanted = self.deps.config().integration.ingest;
        let mut ids: Vec<String> = self
            .by_id
            .iter()
            .filter(|e| {
                let r = e.value().record();
                r.provisioning_state == ProvisioningState::Completed
                    && r.ingest != wanted
                    && r.transport_switch.as_ref().is_none_or(|s| s.to != wanted)
            })
            .map(|e| e.key().clone())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.truncate(5);
        (n, ids)
    }

    /// Every tenant, ordered by org name then id (stable for the admin API).
    pub fn list(&self) -> Vec<TenantHandle> {
        let mut v: Vec<TenantHandle> = self.by_id.iter().map(|e| e.value().clone()).collect();
        v.sort_by_cached_key(|h| {
            let r = h.record();
            (r.org_name, r.tenant_id)
        });
        v
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Marks the tenant gauges stale: they are recomputed (a pass over every tenant) at the
    /// next scrape or within a second — not once per change, which made 10,000 activations
    /// quadratic.
    pub fn update_gauges(&self) {
        self.gauges_stale.store(true, Ordering::Release);
    }

    /// Recomputes the gauges if a change marked them stale.
    pub fn refresh_gauges(&self) {
        if self.gauges_stale.swap(false, Ordering::AcqRel) {
            self.compute_gauges();
        }
    }

    /// Recomputes the tenant gauges now from the current records: `tenants{state}` and the
    /// token expiry horizon.
    pub fn compute_gauges(&self) {
        let mut counts = [0i64; 4];
        for e in self.by_id.iter() {
            let i = ProvisioningState::ALL
                .iter()
                .position(|s| *s == e.value().shared.state())
                .unwrap_or(0);
            counts[i] += 1;
        }
        let horizon = self
            .by_id
            .iter()
            .filter(|e| e.value().shared.state() == ProvisioningState::Completed)
            .filter_map(|e| e.value().shared.tokens.expires_in())
            .min();
        self.deps
            .metrics()
            .token_expiry_horizon_seconds
            .set(horizon.map(|d| d.as_secs_f64()).unwrap_or(0.0));
        for (s, n) in ProvisioningState::ALL.iter().zip(counts) {
            self.deps
                .metrics()
                .tenants
                .with_label_values(&[s.as_str()])
                .set(n);
        }
    }

    /// Loads every stored tenant and starts its supervisor (owned work starts when the
    /// coordinator acquires the tenant's lease; a tenant caught mid-activation completes it
    /// then). Returns how many tenants exist.
    pub async fn resume_all(&self) -> Result<usize, StoreError> {
        let n = self.resync().await?;
        self.kick.notify_one();
        Ok(n)
    }

    /// Starts an activation from verified claims: stores the tenant (`provisioning`) and its
    /// refresh token (sealed), then its supervisor completes the activation in the background.
    /// Re-activating an organization reuses its tenant id and replaces its supervisor.
    /// Returns the handle and the record as it was when the activation started.
    pub async fn activate(
        &self,
        claims: &ActivationClaims,
        customer: Option<Customer>,
    ) -> Result<(TenantHandle, TenantRecord), ActivateError> {
        let org = claims.sub.clone();
        let lock = self.org_lock(&org);
        let _guard = lock.lock().await;

        let tenants = &self.deps.tenants();
        let tenant_id = tenants.tenant_id_for(&org).await?;
        let existing = tenants.load(&org).await?;
        // The activated tenant's first owner syncs its inventory at once (scopes may differ).
        crate::store::devices::DeviceStore::new(self.deps.store().clone())
            .forget_synced(&org)
            .await?;
        // A running supervisor (re-activation) is replaced below and stopped only after, so
        // webhooks keep finding the tenant meanwhile and its poller finishes its current poll.
        let previous = self.get(&tenant_id);
        let now = Utc::now();
        let record = TenantRecord {
            tenant_id: tenant_id.clone(),
            org_id: org.clone(),
            org_name: claims.org_name.clone(),
            region: claims.region.clone(),
            provisioning_state: ProvisioningState::Provisioning,
            tokens_state: TokensState::Unknown,
            scopes: claims.scopes_list(),
            xapi_access: claims.xapi_access.clone(),
            manifest_version: existing
                .as_ref()
                .and_then(|e| e.record.manifest_version.clone()),
            ingest: self.deps.config().integration.ingest,
            app_url: claims.app_url.clone(),
            manifest_url: claims.manifest_url.clone(),
            oauth_url: claims.oauth_url.clone(),
            webexapis_base_url: claims.webexapis_base_url.clone(),
            poll_url: None,
            last_error: None,
            created_at: existing
                .as_ref()
                .map(|e| e.record.created_at)
                .unwrap_or(now),
            updated_at: now,
            // A re-activation without an invitation keeps the customer it had.
            customer: customer
                .or_else(|| existing.as_ref().and_then(|e| e.record.customer.clone())),
            activation_jti: Some(claims.jti.clone()),
            // A re-activation asks Webex for `integration.ingest` afresh: a switch under way
            // ends with it.
            transport_switch: None,
        };
        let (mut secrets, version, record_version) = match &existing {
            Some(e) => (e.secrets.clone(), e.token_version, e.record_version),
            None => (TenantSecrets::default(), 0, 0),
        };
        secrets.refresh_token = claims.refresh_token.clone();
        secrets.access_token = None;
        secrets.access_expires_at = None;
        let version = match tenants
            .save_secrets(&org, version, &secrets, Some(&record), None)
            .await?
        {
            CasOutcome::Written(v) => v,
            CasOutcome::Stale | CasOutcome::Fenced => return Err(ActivateError::Conflict),
        };
        self.deps.metrics().activation("started");
        let started = record.clone();
        let stored = StoredTenant {
            record,
            secrets,
            token_version: version,
            record_version: record_version + 1,
            received: Default::default(),
        };
        // The lease holder (this replica or another one, told by pub/sub) completes it.
        let handle = match previous {
            Some(old) => self.replace(old, stored),
            None => self.start(stored, None),
        };
        self.kick.notify_one();
        self.update_gauges();
        Ok((handle, started))
    }

    /// The tenant record an activation with `claims` wrote, if it is the one stored (a retry of
    /// an activation answered 503 asks whether the first attempt took effect).
    pub async fn activated_by(
        &self,
        claims: &ActivationClaims,
    ) -> Result<Option<TenantRecord>, StoreError> {
        Ok(self
            .deps
            .tenants()
            .load_record(&claims.sub)
            .await?
            .map(|(r, _)| r)
            .filter(|r| r.activation_jti.as_deref() == Some(claims.jti.as_str())))
    }

    /// Starts a supervisor for a stored tenant on the next arbiter (keeping the claim of a
    /// supervisor it replaces).
    fn start(&self, stored: StoredTenant, claim: Option<Arc<Claim>>) -> TenantHandle {
        let StoredTenant {
            record,
            secrets,
            token_version,
            record_version,
            ..
        } = stored;
        let claim = claim.unwrap_or_default();
        let webhook = Arc::new(WebhookSecrets::default());
        let tokens = Arc::new(TokenKeeper::new(
            self.deps.clone(),
            record.org_id.clone(),
            record.oauth_url.clone(),
            secrets,
            token_version,
            claim.clone(),
            webhook.clone(),
        ));
        let shared = Arc::new(TenantShared::new(
            self.deps.clone(),
            record,
            tokens,
            webhook,
            claim,
            record_version,
        ));
        let arbiter =
            &self.arbiters[self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len()];
        let handle = TenantHandle::start(shared, &arbiter.handle());
        self.org_ids.insert(
            handle.shared.org_id.clone(),
            handle.shared.tenant_id.clone(),
        );
        self.by_id
            .insert(handle.tenant_id().to_string(), handle.clone());
        handle
    }

    /// Connects to Redis, retrying until it succeeds or `until` resolves.
    pub async fn connect(&self, until: impl std::future::Future<Output = ()>) -> bool {
        self.deps.store().connect(until).await
    }

    /// PING within the readiness bound.
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.deps.store().ping().await
    }

    /// The newest lifecycle entries of one tenant (among the last `scan` of `<p>:tenants`).
    pub async fn history(
        &self,
        tenant_id: &str,
        scan: usize,
    ) -> Result<Vec<std::collections::BTreeMap<String, String>>, StoreError> {
        self.deps.tenants().history(tenant_id, scan).await
    }

    /// The fleet's last hour for the console's overview: messages per minute and webhook
    /// answers by result (every replica's, added by their counter flushes), the latest errors
    /// of the support log, and the queue tenants whose polls fail (reported by their owners).
    pub async fn fleet_view(&self, errors: usize) -> Result<FleetView, StoreError> {
        let store = self.deps.store();
        let (hour, recent, failing) = tokio::try_join!(
            store.fleet_hour(chrono::Utc::now()),
            store.recent_errors(errors),
            store.polls_failing(),
        )?;
        Ok(FleetView {
            hour,
            recent_errors: recent,
            polls_failing: failing,
        })
    }

    /// How many devices and workspaces the stored inventory of `org` holds.
    pub async fn inventory_counts(&self, org: &str) -> Result<(u64, u64), StoreError> {
        crate::store::devices::DeviceStore::new(self.deps.store().clone())
            .counts(org)
            .await
    }

    /// Waits until the token exchanges in flight stored their results (or `limit` passed);
    /// returns how many were in flight and whether all finished.
    pub async fn drain_exchanges(&self, limit: Duration) -> (usize, bool) {
        let exchanges = &self.deps.exchanges();
        let in_flight = exchanges.in_flight();
        (in_flight, exchanges.drain(limit).await)
    }

    /// Resolves once the stream writer has written what it accepted and stopped (after the
    /// engine fired its stop).
    pub async fn writer_stopped(&self) {
        self.deps.writer().stopped().await
    }

    /// Stops every supervisor (and its children), then the arbiters.
    pub async fn stop_all(&self) {
        let handles: Vec<TenantHandle> = self.by_id.iter().map(|e| e.value().clone()).collect();
        futures::future::join_all(handles.iter().map(|h| h.stop())).await;
        for a in &self.arbiters {
            a.stop();
        }
    }
}

impl crate::ingest::Directory for Registry {
    async fn find(&self, tenant_id: &str) -> Result<Option<Arc<TenantShared>>, StoreError> {
        if let Some(h) = self.get(tenant_id) {
            return Ok(Some(h.shared));
        }
        // Perhaps activated on another replica a moment ago: ask Redis before answering 404.
        Ok(self.lookup(tenant_id).await?.map(|h| h.shared))
    }

    async fn reload(&self, org: &str) {
        let _ = self.refresh(org).await;
    }
}

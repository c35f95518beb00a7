//! One tenant (customer organization): its shared state — record, token keeper, claim on its
//! lease — readable without a mailbox, and the work it does against its appUrl. (Its
//! supervisor actor and handle are `crate::supervisor`.)
//!
//! # Layout
//! - this file: [`TenantShared`]: its record (read, compare-and-set update, reload), state;
//!   [`ChildError`], why a child ended early.
//! - `calls`: calls with the tenant's token ([`TenantShared::with_token`]: the one
//!   "401 → refresh → retry"), token-state transitions, the refresher.
//! - `counts`: message counts (hot path), their flush, the per-minute rate.
//! - `failures`: last error and lifecycle entries, written later while Redis is unreachable.
//! - [`appurl`]: completing an activation, reconciling with the appUrl, re-learning pollUrl.
//! - [`claim`]: this replica's claim on the tenant: the lease it holds and the owned work.
//! - `deps`: [`Deps`], what every tenant component needs from the engine, built once.
//! - [`gate`]: the device API's per-tenant gate (concurrency, rate-limit window).
//! - [`rotation`]: webhook secret rotation (offer, PATCH, confirm; periodic and on demand).
//! - [`tokens`]: `TokenKeeper`, the only place that exchanges the tenant's refresh token.
//! - [`transport`]: switching between webhook and queue (enable, overlap, remove).
//! - [`webhook_secrets`]: the secrets webhooks may be signed with, as ingest reads them.
pub mod appurl;
mod calls;
pub mod claim;
mod counts;
mod deps;
mod failures;
pub mod gate;
pub mod rotation;
pub mod tokens;
pub mod transport;
pub mod webhook_secrets;

use std::sync::{Arc, RwLock};

use chrono::Utc;
use serde_json::json;

use crate::store::StoreError;
use crate::store::tenants::ProvisioningState;
pub use crate::store::tenants::TenantRecord;
use crate::telemetry::Metrics;

pub use calls::{Refusal, WithToken};
use counts::MinuteRate;
pub use deps::{BuildError, Built, Deps};
pub use tokens::{TokenError, TokenKeeper};
pub use webhook_secrets::WebhookSecrets;

/// State of one tenant shared between its supervisor and the HTTP edge: readable without a
/// mailbox round trip. Only the supervisor (and actions routed through it) writes the record.
pub struct TenantShared {
    pub tenant_id: String,
    pub org_id: String,
    record: RwLock<TenantRecord>,
    pub tokens: Arc<TokenKeeper>,
    /// The secrets its webhooks may be signed with (kept current by the token keeper, which
    /// stores them with the tokens).
    pub(crate) webhook: Arc<WebhookSecrets>,
    /// The engine's dependencies: reachable inside this crate only, never from the edge.
    deps: Arc<Deps>,
    /// Set while the queue poller's last poll failed (healthCheck reports `impaired`).
    pub poller_failing: std::sync::atomic::AtomicBool,
    /// When (Unix ms) this replica last sent a poll that answered fewer messages than a poll
    /// may hold, its batch written: the queue was empty then (a transport switch removes a
    /// queue only once this is after its overlap). 0: never.
    pub queue_drained_at: std::sync::atomic::AtomicI64,
    /// The device API's per-tenant gate (concurrency, rate-limit window).
    pub(crate) devices: gate::DeviceGate,
    /// Whether this replica owns the tenant's background work (token refresh, queue poller…).
    pub claim: Arc<claim::Claim>,
    /// When the record and secrets were last read from Redis (see [`TenantShared::reload`]).
    reloaded_at: std::sync::Mutex<std::time::Instant>,
    /// The `record_version` of the record held: an older one read later is not adopted.
    record_version: std::sync::atomic::AtomicU64,
    /// Set when a re-activation replaced this tenant's supervisor (and this state) by a new one.
    pub superseded: std::sync::atomic::AtomicBool,
    /// Serializes `tokens_state` transitions: concurrent callers (poller, inventory, an
    /// action) that saw the same refusal record it once.
    tokens_state_lock: tokio::sync::Mutex<()>,
    /// Messages written and not yet added to the stored counters, by source (webhook, queue):
    /// the registry flushes them every second, off the write path.
    unflushed: [std::sync::atomic::AtomicU64; 2],
    /// Whether this tenant is in `Deps::to_flush` (queued once until flushed).
    flush_queued: std::sync::atomic::AtomicBool,
    /// Messages this replica wrote per minute (fed by the counter flush, off the write path).
    rate: std::sync::Mutex<MinuteRate>,
    /// Writes waiting for Redis to come back (`error`, `lifecycle:<event>`): one of each at a
    /// time, however often the same failure recurs meanwhile.
    deferred: Arc<dashmap::DashSet<String>>,
}

/// How many times a record update is retried after another replica wrote first.
const RECORD_CAS_ATTEMPTS: usize = 8;

/// What a reload found changed, for the supervisor to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    /// Re-activated elsewhere: the owned work restarts and completes the activation.
    pub reactivated: bool,
    /// Deprovisioned elsewhere.
    pub deprovisioned: bool,
    /// New URLs, scopes or refresh token (an update action elsewhere): owned work restarts.
    pub updated: bool,
    /// A transport switch moved on elsewhere (or `ingest` changed): the owner starts what the
    /// tenant now reads (the poller, the switch's own step); nothing running is cancelled.
    pub transport: bool,
}

impl TenantShared {
    pub fn new(
        deps: Arc<Deps>,
        record: TenantRecord,
        tokens: Arc<TokenKeeper>,
        webhook: Arc<WebhookSecrets>,
        claim: Arc<claim::Claim>,
        record_version: u64,
    ) -> Self {
        // A tenant loaded with its refresh token recorded as refused knows it from the start
        // (else its first ownership period would present that token to Webex again).
        tokens.follow_invalid(record.tokens_state == crate::store::tenants::TokensState::Invalid);
        Self {
            record_version: record_version.into(),
            superseded: Default::default(),
            tokens_state_lock: Default::default(),
            unflushed: Default::default(),
            flush_queued: Default::default(),
            rate: Default::default(),
            deferred: Default::default(),
            tenant_id: record.tenant_id.clone(),
            org_id: record.org_id.clone(),
            record: RwLock::new(record),
            claim,
            reloaded_at: std::sync::Mutex::new(std::time::Instant::now()),
            tokens,
            webhook,
            devices: gate::DeviceGate::new(deps.config.devices.max_concurrency),
            deps,
            poller_failing: Default::default(),
            queue_drained_at: Default::default(),
        }
    }

    /// The engine's dependencies (store, writer, Webex client, configuration, metrics).
    pub(crate) fn deps(&self) -> &Arc<Deps> {
        &self.deps
    }

    /// The stream writer (the ingest pipeline's last step).
    pub(crate) fn writer(&self) -> &crate::store::writer::StreamWriter {
        &self.deps.writer
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.deps.metrics
    }

    /// True once the engine's drain began.
    pub(crate) fn engine_stopping(&self) -> bool {
        self.deps.shutdown.is_fired()
    }

    /// A copy of the record.
    pub fn record(&self) -> TenantRecord {
        self.record.read().expect("record lock").clone()
    }

    /// Whether the tenant reads its queue (checked before every poll: a switch may remove it).
    pub fn reads_queue(&self) -> bool {
        self.record.read().expect("record lock").ingest.queue()
    }

    /// The queue's pollUrl (read on every poll: without copying the whole record).
    pub fn poll_url(&self) -> Option<String> {
        self.record.read().expect("record lock").poll_url.clone()
    }

    pub fn state(&self) -> ProvisioningState {
        self.record.read().expect("record lock").provisioning_state
    }

    /// True once the tenant is deprovisioned (its routes answer 410).
    pub fn is_deprovisioned(&self) -> bool {
        self.state() == ProvisioningState::Deprovisioned
    }

    /// Applies `change` to the stored record (another replica may have changed it), stamps
    /// `updated_at`, writes it with compare-and-set. The in-memory copy changes only if the
    /// write succeeded, so memory never runs ahead of Redis.
    pub async fn update(
        &self,
        change: impl Fn(&mut TenantRecord),
    ) -> Result<TenantRecord, StoreError> {
        let tenants = &self.deps.tenants;
        for _ in 0..RECORD_CAS_ATTEMPTS {
            let (mut next, version) = match tenants.load_record(&self.org_id).await? {
                Some(found) => found,
                None => (self.record(), 0),
            };
            change(&mut next);
            next.updated_at = Utc::now();
            if let Some(v) = tenants.save_record(&next, version).await? {
                *self.record.write().expect("record lock") = next.clone();
                self.record_version
                    .fetch_max(v, std::sync::atomic::Ordering::AcqRel);
                return Ok(next);
            }
        }
        Err(StoreError::Conflict("the tenant record kept changing"))
    }

    /// Adopts the record and secrets as stored (after another replica changed them) and says
    /// what changed for the supervisor.
    pub async fn reload(&self, stored: crate::store::tenants::StoredTenant) -> Changes {
        use crate::store::tenants::TokensState;
        *self.reloaded_at.lock().expect("reload lock") = std::time::Instant::now();
        let before = self.record();
        let new_refresh_token = stored.token_version > self.tokens.version().await
            && self.tokens.secrets().await.refresh_token != stored.secrets.refresh_token;
        let after = stored.record.clone();
        let newer_record = self
            .record_version
            .fetch_max(stored.record_version, std::sync::atomic::Ordering::AcqRel)
            <= stored.record_version;
        self.tokens
            .reload(stored.secrets, stored.token_version)
            .await;
        if !newer_record {
            // Read before a write this replica has made since: keep what we have.
            return Changes::default();
        }
        self.tokens.set_oauth_url(&after.oauth_url);
        self.tokens
            .follow_invalid(after.tokens_state == TokensState::Invalid);
        *self.record.write().expect("record lock") = after.clone();
        let state_changed = before.provisioning_state != after.provisioning_state;
        Changes {
            reactivated: after.provisioning_state == ProvisioningState::Provisioning
                && (state_changed || new_refresh_token),
            deprovisioned: state_changed
                && after.provisioning_state == ProvisioningState::Deprovisioned,
            updated: !state_changed
                && (new_refresh_token
                    || before.app_url != after.app_url
                    // (A queue a transport switch adds or removes is `transport`'s: nothing
                    // running needs a restart for it.)
                    || (before.poll_url != after.poll_url && before.ingest == after.ingest)
                    || before.scopes != after.scopes),
            transport: before.ingest != after.ingest
                || before.transport_switch != after.transport_switch,
        }
    }

    /// The `record_version` of the record held.
    pub fn record_version(&self) -> u64 {
        self.record_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this state still runs the tenant's owned work: the supervisor owns the lease
    /// and no re-activation has replaced it.
    pub fn still_in_charge(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.claim.is_owning()
            && self.claim.held_epoch().is_some()
            && !self.superseded.load(Ordering::Acquire)
    }

    /// Claims the right to reload from Redis now, at most once per `every` (concurrent callers:
    /// one wins).
    pub fn claim_reload(&self, every: std::time::Duration) -> bool {
        let mut at = self.reloaded_at.lock().expect("reload lock");
        if at.elapsed() < every {
            return false;
        }
        *at = std::time::Instant::now();
        true
    }
}

/// The contract's tenant JSON. `app_id` is the integration's (`integration.app_id`): stream
/// entries leave it out since schema 2, so the tenant says it.
pub fn tenant_json(
    r: &TenantRecord,
    received: &std::collections::BTreeMap<String, u64>,
    app_id: &str,
) -> serde_json::Value {
    let total: u64 = received.values().sum();
    json!({
        "tenant_id": r.tenant_id,
        "org_id": r.org_id,
        "org_name": r.org_name,
        "app_id": app_id,
        "region": r.region,
        "provisioning_state": r.provisioning_state,
        "tokens_state": r.tokens_state,
        "scopes": r.scopes,
        "xapi_access": r.xapi_access,
        "manifest_version": r.manifest_version,
        "ingest": r.ingest,
        "transport_switch": r.transport_switch,
        "last_error": r.last_error,
        "messages_received": {
            "webhook": received.get("webhook").copied().unwrap_or(0),
            "queue": received.get("queue").copied().unwrap_or(0),
            "total": total,
        },
        "app_url": r.app_url,
        "poll_url": r.poll_url,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "customer": r.customer,
    })
}

/// Why a tenant's child (reconciler, queue poller, inventory, command consumer) ended early:
/// what it was doing and the error underneath. The supervisor logs it and restarts the child
/// after a backoff; a child that stops because its work is over returns `Ok`.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {source}")]
pub struct ChildError {
    pub doing: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl ChildError {
    pub fn new(
        doing: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            doing,
            source: Box::new(source),
        }
    }
}

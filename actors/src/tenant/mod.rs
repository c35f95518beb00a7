//! One tenant (customer organization): its shared state — record, token keeper, claim on its
//! lease — readable without a mailbox, and the work it does against its appUrl. (Its
//! supervisor actor and handle are `crate::supervisor`.)
//!
//! # Layout
//! - this file: [`TenantShared`], token-state transitions, the 401 helper, the refresher.
//! - [`appurl`]: completing an activation, reconciling with the appUrl, re-learning pollUrl.
//! - [`claim`]: this replica's claim on the tenant: the lease it holds and the owned work.
//! - `deps`: [`Deps`], what every tenant component needs from the engine, built once.
//! - [`gate`]: the device API's per-tenant gate (concurrency, rate-limit window).
//! - [`rotation`]: webhook secret rotation (offer, PATCH, confirm; periodic and on demand).
//! - [`tokens`]: `TokenKeeper`, the only place that exchanges the tenant's refresh token.
pub mod appurl;
pub mod claim;
mod deps;
pub mod gate;
pub mod rotation;
pub mod tokens;
pub mod webhook_secrets;

use std::sync::{Arc, RwLock};

use chrono::Utc;
use serde_json::json;

use crate::protocol::tracking::TrackingId;
use crate::shutdown::Shutdown;
use crate::store::StoreError;
pub use crate::store::tenants::TenantRecord;
use crate::store::tenants::{LastError, ProvisioningState};
use crate::telemetry::Metrics;

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
    pub webhook: Arc<WebhookSecrets>,
    /// The engine's dependencies: reachable inside this crate only, never from the edge.
    deps: Arc<Deps>,
    /// Set while the queue poller's last poll failed (healthCheck reports `impaired`).
    pub poller_failing: std::sync::atomic::AtomicBool,
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

/// Messages counted in the current and the previous minute.
#[derive(Default, Clone, Copy)]
struct MinuteRate {
    minute: i64,
    count: u64,
    previous: u64,
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

    /// One message written for this tenant by `source` (counted in its `messages_received`).
    pub(crate) fn count_received(&self, source: crate::protocol::message::Source) {
        use std::sync::atomic::Ordering;
        let i = usize::from(source != crate::protocol::message::Source::Webhook);
        self.unflushed[i].fetch_add(1, Ordering::Relaxed);
        if !self.flush_queued.load(Ordering::Relaxed)
            && !self.flush_queued.swap(true, Ordering::AcqRel)
        {
            self.queue_for_flush();
        }
    }

    fn queue_for_flush(&self) {
        self.deps
            .to_flush
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self.tenant_id.clone());
    }

    /// Takes the counts not yet stored: `[webhook, queue]`.
    pub(crate) fn take_unflushed(&self) -> [u64; 2] {
        use std::sync::atomic::Ordering::AcqRel;
        // Unqueued first: a message counted after this queues the tenant again.
        self.flush_queued
            .store(false, std::sync::atomic::Ordering::Release);
        [
            self.unflushed[0].swap(0, AcqRel),
            self.unflushed[1].swap(0, AcqRel),
        ]
    }

    /// Adds `n` messages written now to the per-minute rate.
    pub(crate) fn count_rate(&self, n: u64) {
        let minute = Utc::now().timestamp().div_euclid(60);
        let mut r = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.minute != minute {
            r.previous = if r.minute == minute - 1 { r.count } else { 0 };
            r.minute = minute;
            r.count = 0;
        }
        r.count += n;
    }

    /// Messages this replica wrote for the tenant in the last full minute.
    pub fn messages_last_minute(&self) -> u64 {
        let minute = Utc::now().timestamp().div_euclid(60);
        let r = *self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match minute - r.minute {
            0 => r.previous,
            1 => r.count,
            _ => 0,
        }
    }

    /// Gives counts back that could not be stored (they are added on the next flush).
    pub(crate) fn restore_unflushed(&self, counts: [u64; 2]) {
        use std::sync::atomic::Ordering::AcqRel;
        self.unflushed[0].fetch_add(counts[0], AcqRel);
        self.unflushed[1].fetch_add(counts[1], AcqRel);
        if !self.flush_queued.swap(true, AcqRel) {
            self.queue_for_flush();
        }
    }

    /// The counts not yet stored, without taking them: `[webhook, queue]`.
    pub(crate) fn peek_unflushed(&self) -> [u64; 2] {
        use std::sync::atomic::Ordering::Acquire;
        [
            self.unflushed[0].load(Acquire),
            self.unflushed[1].load(Acquire),
        ]
    }

    /// True once the engine's drain began.
    pub(crate) fn engine_stopping(&self) -> bool {
        self.deps.shutdown.is_fired()
    }

    /// A copy of the record.
    pub fn record(&self) -> TenantRecord {
        self.record.read().expect("record lock").clone()
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
                    || before.poll_url != after.poll_url
                    || before.scopes != after.scopes),
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

    /// Records a failure with a fresh trackingId (also in the log line); returns the id.
    pub async fn fail(&self, state: Option<ProvisioningState>, description: String) -> TrackingId {
        self.record_error(description, move |r| {
            if let Some(s) = state {
                r.provisioning_state = s;
            }
        })
        .await
    }

    /// Stores `description` as the tenant's `last_error` with a fresh trackingId (also in the
    /// log line), together with `change`; returns the id. When Redis cannot be reached it is
    /// stored once Redis is back ([`store_error_later`]).
    async fn record_error(
        &self,
        description: String,
        change: impl Fn(&mut TenantRecord) + Send + Sync + 'static,
    ) -> TrackingId {
        let tracking = TrackingId::new();
        tracing::error!(trackingId = %tracking, tenant = %self.tenant_id, %description, "tenant error");
        let err = LastError {
            tracking_id: tracking.to_string(),
            description,
            at: Utc::now(),
        };
        let apply = {
            let err = err.clone();
            move |r: &mut TenantRecord| {
                change(r);
                r.last_error = Some(err.clone());
            }
        };
        match self.update(&apply).await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => {
                if let Some(done) = Deferred::start(&self.deferred, "error") {
                    tracing::warn!(trackingId = %tracking, tenant = %self.tenant_id, error = %e, "tenant error not stored yet: Redis unavailable; storing it once Redis is back");
                    store_error_later(
                        self.deps.tenants.clone(),
                        self.org_id.clone(),
                        err,
                        apply,
                        done,
                    );
                }
            }
            Err(e) => {
                tracing::error!(trackingId = %tracking, tenant = %self.tenant_id, error = %e, "could not store the tenant error");
            }
        }
        tracking
    }

    /// Appends a lifecycle entry; failures are logged, not fatal.
    pub async fn lifecycle(&self, event: &str) {
        self.lifecycle_because(event, None).await
    }

    /// Appends a lifecycle entry with a `reason` field. When Redis cannot be reached it is
    /// written once Redis is back (with the time it happened; never twice: each attempt
    /// carries a write deadline).
    pub async fn lifecycle_because(&self, event: &str, reason: Option<&str>) {
        let ts = Utc::now();
        let tenants = &self.deps.tenants;
        match tenants
            .lifecycle_at(&self.tenant_id, &self.org_id, event, reason, ts)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => {
                tracing::warn!(tenant = %self.tenant_id, event, error = %e, "lifecycle entry not written yet: Redis unavailable; writing it once Redis is back");
                let (tenants, tenant, org) =
                    (tenants.clone(), self.tenant_id.clone(), self.org_id.clone());
                let (event, reason) = (event.to_string(), reason.map(str::to_string));
                tokio::spawn(async move {
                    let written = retry_while_unavailable(|| {
                        tenants.lifecycle_at(&tenant, &org, &event, reason.as_deref(), ts)
                    })
                    .await;
                    match written {
                        Ok(()) => tracing::info!(
                            tenant,
                            event,
                            "lifecycle entry written after Redis came back"
                        ),
                        Err(e) => {
                            tracing::warn!(tenant, event, error = %e, "lifecycle entry not written")
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant_id, event, error = %e, "lifecycle entry not written");
            }
        }
    }
}

/// A write waiting for Redis, marked in its tenant's set while it waits (see
/// `TenantShared::deferred`); the mark goes when it is dropped.
struct Deferred {
    set: Arc<dashmap::DashSet<String>>,
    what: String,
}

impl Deferred {
    /// The mark for `what`, unless one is already waiting.
    fn start(set: &Arc<dashmap::DashSet<String>>, what: &str) -> Option<Self> {
        set.insert(what.to_string()).then(|| Self {
            set: set.clone(),
            what: what.to_string(),
        })
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.set.remove(&self.what);
    }
}

/// How long a write Redis could not take is tried again (with backoff up to
/// [`LATER_PAUSE_MAX`]) before it is given up (and logged).
const LATER_FOR: std::time::Duration = std::time::Duration::from_secs(3600);
const LATER_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `write` until it succeeds or fails other than for Redis being unreachable, for at most
/// [`LATER_FOR`].
async fn retry_while_unavailable<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let until = std::time::Instant::now() + LATER_FOR;
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        tokio::time::sleep(pause).await;
        match write().await {
            Err(e) if e.is_unavailable() && std::time::Instant::now() < until => {
                pause = (pause * 2).min(LATER_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// Stores a tenant error that Redis could not take when it happened, once Redis is back —
/// unless the record changed after it (a newer state wins over an old error). The replicas
/// pick the change up like any other record change.
fn store_error_later(
    tenants: crate::store::tenants::Tenants,
    org: String,
    err: LastError,
    apply: impl Fn(&mut TenantRecord) + Send + Sync + 'static,
    done: Deferred,
) {
    tokio::spawn(async move {
        let _done = done;
        let stored = retry_while_unavailable(|| async {
            for _ in 0..RECORD_CAS_ATTEMPTS {
                let Some((mut r, version)) = tenants.load_record(&org).await? else {
                    return Ok(false);
                };
                if r.last_error.as_ref() == Some(&err) || r.updated_at > err.at {
                    // Stored after all (a write that landed late), or overtaken.
                    return Ok(false);
                }
                apply(&mut r);
                r.updated_at = Utc::now();
                if tenants.save_record(&r, version).await?.is_some() {
                    return Ok(true);
                }
            }
            Err(StoreError::Conflict("the tenant record kept changing"))
        })
        .await;
        match stored {
            Ok(true) => {
                tracing::info!(trackingId = %err.tracking_id, org, "tenant error stored after Redis came back")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(trackingId = %err.tracking_id, org, error = %e, "tenant error not stored")
            }
        }
    });
}

/// The contract's tenant JSON.
pub fn tenant_json(
    r: &TenantRecord,
    received: &std::collections::BTreeMap<String, u64>,
) -> serde_json::Value {
    let total: u64 = received.values().sum();
    json!({
        "tenant_id": r.tenant_id,
        "org_id": r.org_id,
        "org_name": r.org_name,
        "region": r.region,
        "provisioning_state": r.provisioning_state,
        "tokens_state": r.tokens_state,
        "scopes": r.scopes,
        "xapi_access": r.xapi_access,
        "manifest_version": r.manifest_version,
        "ingest": r.ingest,
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

/// An error of a call made with the tenant's token that can say "Webex refused the token".
pub trait Refusal {
    fn token_refused(&self) -> bool;
}

impl Refusal for crate::webex::client::AppUrlError {
    fn token_refused(&self) -> bool {
        matches!(self, crate::webex::client::AppUrlError::Unauthorized(_))
    }
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

/// Why [`TenantShared::with_token`] failed: no token, or the call's own error (after the one
/// refresh, if the token was refused).
#[derive(Debug)]
pub enum WithToken<E> {
    Token(TokenError),
    Call(E),
}

impl<E: std::fmt::Display> std::fmt::Display for WithToken<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WithToken::Token(e) => write!(f, "token: {e}"),
            WithToken::Call(e) => e.fmt(f),
        }
    }
}

/// First and largest pause between failed background refreshes (doubling in between).
const REFRESH_RETRY_BASE: std::time::Duration = std::time::Duration::from_secs(1);
const REFRESH_RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(60);

impl TenantShared {
    /// A usable access token; token-state transitions are recorded.
    pub async fn access_token(&self) -> Result<crate::secret::Secret, TokenError> {
        let res = self.tokens.access_token().await;
        self.note_token_result(&res).await;
        res
    }

    /// Calls `call` with the tenant's access token; when Webex refuses that token (the call's
    /// error says so: [`Refusal::token_refused`]), refreshes it once and calls again with the
    /// new one. The one place of "401 → refresh → retry".
    pub async fn with_token<T, E, F, Fut>(&self, call: F) -> Result<T, WithToken<E>>
    where
        E: Refusal,
        F: FnMut(crate::secret::Secret) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let token = self.access_token().await.map_err(WithToken::Token)?;
        self.with_this_token(token, call).await
    }

    /// [`with_token`](Self::with_token) starting with `token` (already fetched by the caller).
    pub async fn with_this_token<T, E, F, Fut>(
        &self,
        token: crate::secret::Secret,
        mut call: F,
    ) -> Result<T, WithToken<E>>
    where
        E: Refusal,
        F: FnMut(crate::secret::Secret) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        match call(token.clone()).await {
            Err(e) if e.token_refused() => {
                let fresh = self
                    .refresh_after_rejection(&token)
                    .await
                    .map_err(WithToken::Token)?;
                call(fresh).await.map_err(WithToken::Call)
            }
            other => other.map_err(WithToken::Call),
        }
    }

    /// After Webex refused `rejected` (401): a fresh token, or why not.
    async fn refresh_after_rejection(
        &self,
        rejected: &crate::secret::Secret,
    ) -> Result<crate::secret::Secret, TokenError> {
        let res = self.tokens.refresh(Some(rejected)).await;
        self.note_token_result(&res).await;
        res
    }

    /// Keeps `tokens_state` in the record in line with what the token endpoint said. A dead
    /// refresh token always says why: `last_error` (with a trackingId, also in the log line)
    /// and the `tokens_invalid` lifecycle entry carry the reason.
    pub async fn note_token_result(&self, res: &Result<crate::secret::Secret, TokenError>) {
        use crate::store::tenants::TokensState;
        let next = match res {
            Ok(_) => TokensState::Valid,
            Err(TokenError::Invalid) => TokensState::Invalid,
            Err(_) => return,
        };
        if self.record.read().expect("record lock").tokens_state == next {
            return;
        }
        let _one_at_a_time = self.tokens_state_lock.lock().await;
        if self.record.read().expect("record lock").tokens_state == next {
            return;
        }
        if next == TokensState::Valid {
            if let Err(e) = self.update(|r| r.tokens_state = next).await {
                tracing::warn!(tenant = %self.tenant_id, error = %e, "tokens_state not stored");
            }
            return;
        }
        let reason = self
            .tokens
            .invalid_reason()
            .unwrap_or_else(|| "refresh token rejected by Webex".into());
        let description = format!(
            "{reason}. The customer's admin must provide a new refresh token (an update action, or activate again)."
        );
        self.record_error(description, move |r| r.tokens_state = next)
            .await;
        self.deps.metrics.token_refresh("invalid");
        self.lifecycle_because("tokens_invalid", Some(&reason))
            .await;
    }

    /// The background refresher: keeps a fresh access token ahead of expiry until `stop`.
    /// It runs on its own task, so a busy supervisor mailbox cannot delay it. Failures back off
    /// (doubling, capped, honouring `Retry-After`); a rejected refresh token parks the loop
    /// until a new one is adopted.
    pub async fn run_refresher(self: Arc<Self>, stop: Shutdown) {
        use tokio::time::Instant;
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        loop {
            let idle = self.tokens.is_invalid() || !self.tokens.has_refresh_token().await;
            let wait_until = if idle {
                None
            } else {
                Some(
                    retry_at
                        .or(self.tokens.refresh_due_at())
                        .unwrap_or_else(Instant::now),
                )
            };
            tokio::select! {
                _ = stop.wait() => return,
                _ = self.tokens.changed() => { retry_at = None; continue }
                _ = async {
                    match wait_until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
            // The current token is due: replace it even though it is usable for a moment.
            let due = self.tokens.current_token();
            // Boxed: the exchange's state exists only while it runs, not while the loop waits.
            let res = Box::pin(self.tokens.refresh(due.as_ref())).await;
            Box::pin(self.note_token_result(&res)).await;
            match res {
                Ok(_) | Err(TokenError::Invalid | TokenError::Gone) => {
                    failures = 0;
                    retry_at = None;
                }
                Err(TokenError::Transient {
                    retry_after,
                    message,
                    ..
                }) => {
                    failures += 1;
                    let backoff = retry_after
                        .unwrap_or_else(|| REFRESH_RETRY_BASE.saturating_mul(1 << failures.min(6)))
                        .min(REFRESH_RETRY_CAP);
                    tracing::warn!(tenant = %self.tenant_id, failures, %message, ?backoff, "token refresh failed; backing off");
                    retry_at = Some(Instant::now() + backoff);
                }
            }
        }
    }
}

//! The token keeper of one tenant: the only place that exchanges its refresh token. Readers get
//! a valid access token without a round trip; refreshes are single-flight, happen ahead of
//! expiry on their own task (not on an actor timer that a busy mailbox could delay), adopt a
//! rotated refresh token, and persist it with compare-and-set before the new access token is
//! used anywhere.
//!
//! An exchange runs on a task of its own ([`ExchangeTasks`]): once the token endpoint may have
//! rotated the refresh token, nothing — a dropped HTTP request, a cancelled child, a drain —
//! may stop the new one from reaching Redis. Before each exchange the keeper records an
//! [`ExchangeIntent`] in the tenant's hash, removed by the write that stores the result; a
//! successor that finds one left behind knows why Webex refuses the stored token.
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::Deps;
use super::claim::Claim;
use super::webhook_secrets::WebhookSecrets;
use crate::secret::Secret;
use crate::store::StoreError;
use crate::store::tenants::{BeginExchange, CasOutcome, ExchangeIntent, TenantSecrets};
use crate::webex::client::OAuthError;

/// An access token is not handed out when it expires sooner than this: a request needs time
/// to reach Webex.
pub const USE_MARGIN: Duration = Duration::from_millis(500);
/// Refresh ahead of expiry by a third of the lifetime, at most this much (before jitter).
pub const MAX_REFRESH_LEAD: Duration = Duration::from_secs(300);
/// The lead is stretched by a random 0–50 % per token, so tenants activated together (a
/// partner onboarding a batch, a restart loading thousands) do not all exchange at once.
pub const REFRESH_JITTER: f64 = 0.5;

/// A usable access token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_at: Instant,
    /// When to replace it: a third of its life (at most [`MAX_REFRESH_LEAD`]) before expiry,
    /// stretched by up to [`REFRESH_JITTER`].
    pub refresh_at: Instant,
}

impl AccessToken {
    /// A token that expires `lifetime` from now.
    pub fn new(token: Secret, lifetime: Duration) -> Self {
        let now = Instant::now();
        Self {
            token,
            expires_at: now + lifetime,
            refresh_at: now + refresh_after(lifetime, rand::random::<f64>()),
        }
    }

    fn usable(&self) -> bool {
        self.expires_at.saturating_duration_since(Instant::now()) > USE_MARGIN
    }
}

/// How long after it was obtained a token of `lifetime` is replaced, for a jitter draw `u` in
/// [0, 1]. A 2-hour token (Webex's 7,199 s) is replaced after 112.5–115 minutes: about 12.7
/// exchanges a day per tenant; no token is replaced before half its life.
pub fn refresh_after(lifetime: Duration, u: f64) -> Duration {
    let lead = (lifetime / 3)
        .min(MAX_REFRESH_LEAD)
        .max(USE_MARGIN * 2)
        .mul_f64(1.0 + REFRESH_JITTER * u.clamp(0.0, 1.0))
        .min(lifetime / 2);
    lifetime - lead
}

/// Where token exchanges run: on the engine's main runtime (which lives until the process
/// exits, unlike an HTTP worker's), tracked so that a drain waits for those in flight.
#[derive(Clone)]
pub struct ExchangeTasks {
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
}

impl ExchangeTasks {
    /// Exchanges will run on the runtime this is called on.
    pub fn on_current_runtime() -> Self {
        Self {
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(f, &self.runtime)
    }

    /// Exchanges in flight.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every exchange in flight has stored its result (or `limit` passed); returns
    /// whether all finished.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        self.tracker.reopen();
        done
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The refresh token is dead; the tenant needs an `update` action with a new one.
    #[error("refresh token rejected; the tenant needs a new one (update action)")]
    Invalid,
    /// Try again later.
    #[error("token refresh failed: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        /// Redis could not be reached: reading or recording the exchange failed before Webex
        /// was asked, the owner's lease is lapsing for want of renewals (no exchange was
        /// tried), or Webex answered and the rotated refresh token could not be stored while
        /// the lease lasted (then, as for any caller, the next exchange may find the stored
        /// token already redeemed).
        store_unavailable: bool,
    },
    /// The tenant has no secrets (deprovisioned).
    #[error("tenant has no credentials")]
    Gone,
}

impl TokenError {
    /// Redis could not be reached (see `Transient::store_unavailable`).
    pub fn store_unavailable(&self) -> bool {
        matches!(
            self,
            TokenError::Transient {
                store_unavailable: true,
                ..
            }
        )
    }
}

struct Persisted {
    secrets: TenantSecrets,
    version: u64,
}

/// How many times a compare-and-set of the secrets is retried after another writer (another
/// replica, an action) got there first.
const CAS_ATTEMPTS: usize = 5;
/// Pause between attempts to store a rotated refresh token while Redis is unavailable.
const PERSIST_RETRY: Duration = Duration::from_millis(250);
/// A replica that does not own the tenant answers "try again" this long after.
const FOLLOWER_RETRY: Duration = Duration::from_secs(1);

/// Owns one tenant's token state. Only the replica holding the tenant's lease exchanges the
/// refresh token (its writes are fenced by the lease epoch); the others follow what it stores.
pub struct TokenKeeper {
    deps: Arc<Deps>,
    org: String,
    claim: Arc<Claim>,
    oauth_url: StdMutex<String>,
    /// Held for the whole exchange: refreshes are single-flight. Shared with the exchange's
    /// own task (see [`ExchangeTasks`]).
    persisted: Arc<Mutex<Persisted>>,
    /// The fast read path.
    current: StdMutex<Option<AccessToken>>,
    /// Set (with the reason) when the refresh token was rejected; cleared by a new one.
    invalid: StdMutex<Option<String>>,
    /// This replica's id, named in exchange intents.
    replica: String,
    /// Wakes the background refresher (new token, new refresh token, stop).
    wake: Notify,
    /// The webhook secrets' view, refreshed whenever the secrets are stored or read (they
    /// share the sealed record, and its compare-and-set, with the tokens).
    webhook: Arc<WebhookSecrets>,
    /// After a transient failure: no new exchange before this instant, whoever asks (the
    /// reconciler, the poller and health checks share one backoff instead of each hammering
    /// the token endpoint), and how many failures in a row.
    backoff: StdMutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    until: Option<(Instant, TokenError)>,
    failures: u32,
}

/// First and largest pause between failed exchanges (doubling in between) when the server
/// gives no `Retry-After`.
const EXCHANGE_RETRY_BASE: Duration = Duration::from_secs(1);
const EXCHANGE_RETRY_CAP: Duration = Duration::from_secs(60);

impl TokenKeeper {
    pub fn new(
        deps: Arc<Deps>,
        org: String,
        oauth_url: String,
        secrets: TenantSecrets,
        version: u64,
        claim: Arc<Claim>,
        webhook: Arc<WebhookSecrets>,
    ) -> Self {
        let current = stored_access_token(&secrets);
        webhook.refresh(&secrets);
        Self {
            backoff: StdMutex::new(Backoff::default()),
            webhook,
            replica: deps.config.scaling.replica_id(),
            deps,
            org,
            claim,
            oauth_url: StdMutex::new(oauth_url),
            persisted: Arc::new(Mutex::new(Persisted { secrets, version })),
            current: StdMutex::new(current),
            invalid: StdMutex::new(None),
            wake: Notify::new(),
        }
    }

    fn cached(&self) -> Option<AccessToken> {
        self.current
            .lock()
            .expect("token lock")
            .clone()
            .filter(AccessToken::usable)
    }

    /// True after the refresh token was rejected (until a new one is adopted).
    pub fn is_invalid(&self) -> bool {
        self.invalid.lock().expect("invalid lock").is_some()
    }

    /// Why the refresh token is dead, while it is.
    pub fn invalid_reason(&self) -> Option<String> {
        self.invalid.lock().expect("invalid lock").clone()
    }

    fn set_invalid(&self, reason: Option<String>) {
        *self.invalid.lock().expect("invalid lock") = reason;
    }

    /// A usable access token, refreshing first when needed.
    pub async fn access_token(self: &Arc<Self>) -> Result<Secret, TokenError> {
        if let Some(t) = self.cached() {
            return Ok(t.token);
        }
        self.refresh(None).await
    }

    /// Refreshes unless another caller already did; `rejected` is a token Webex just refused
    /// (401), which is never handed out again.
    pub async fn refresh(
        self: &Arc<Self>,
        rejected: Option<&Secret>,
    ) -> Result<Secret, TokenError> {
        let mut p = self.persisted.clone().lock_owned().await;
        if let Some(t) = self.cached()
            && rejected.is_none_or(|r| r != &t.token)
        {
            return Ok(t.token);
        }
        if p.secrets.refresh_token.is_empty() {
            return Err(TokenError::Gone);
        }
        if self.is_invalid() {
            return Err(TokenError::Invalid);
        }
        // Exchange only while holding the lease long enough for the call to end within it;
        // otherwise follow whoever owns the tenant.
        let Some(epoch) = self.claim.epoch_for(self.deps.config.webex.http_timeout()) else {
            return self.follow_owner(&mut p, rejected).await;
        };
        // Redeem only the newest stored refresh token: an announcement of another replica's
        // write (the previous holder's last rotation) may not have arrived yet, and redeeming
        // an older one would be reuse. The stored access token may even be usable already.
        if let Some(token) = self.stored_token(&mut p, rejected).await? {
            return Ok(token);
        }
        if let Some((until, err)) = &self.backoff.lock().expect("backoff lock").until
            && Instant::now() < *until
        {
            return Err(err.clone());
        }
        // The exchange and the write of its result run on their own task: the caller (an HTTP
        // request whose client hung up, a child cancelled after the shutdown grace) may go
        // away, the rotated refresh token must still reach Redis.
        // It counts as owned work: a hand-over waits for it before deleting the lease, so the
        // next owner cannot fence off the write of its result.
        let me = self.clone();
        let working = self.claim.child_guard();
        let exchange = self.deps.exchanges.spawn(async move {
            let _working = working;
            me.exchange(p, epoch).await
        });
        exchange.await.unwrap_or_else(|e| {
            Err(TokenError::Transient {
                message: format!("token exchange task failed: {e}"),
                retry_after: None,
                store_unavailable: false,
            })
        })
    }

    /// One exchange of the stored refresh token under lease `epoch`: intent recorded, token
    /// endpoint called, result stored with the intent removed in the same write.
    async fn exchange(
        &self,
        mut p: OwnedMutexGuard<Persisted>,
        epoch: u64,
    ) -> Result<Secret, TokenError> {
        let tenants = &self.deps.tenants;
        let intent = ExchangeIntent::new(epoch, p.version, &p.secrets.refresh_token, &self.replica);
        // No exchange without its intent on record: a crash inside it must never be silent.
        let left_behind = match tenants.begin_exchange(&self.org, &intent).await {
            Ok(BeginExchange::Begun { previous }) => {
                previous.filter(|prev| prev.redeems(&p.secrets.refresh_token))
            }
            Ok(BeginExchange::Stale) => {
                let _ = self.reload_locked(&mut p).await;
                return Err(TokenError::Transient {
                    message: "the tenant's token state changed meanwhile".into(),
                    retry_after: Some(FOLLOWER_RETRY),
                    store_unavailable: false,
                });
            }
            Ok(BeginExchange::Fenced) => {
                return Err(TokenError::Transient {
                    message: "another replica took over this tenant (lease epoch moved on)".into(),
                    retry_after: Some(FOLLOWER_RETRY),
                    store_unavailable: false,
                });
            }
            Err(e) => {
                return Err(TokenError::Transient {
                    message: format!("could not record the exchange: {e}"),
                    retry_after: Some(FOLLOWER_RETRY),
                    store_unavailable: e.is_unavailable(),
                });
            }
        };
        if let Some(prev) = &left_behind {
            tracing::warn!(org = %self.org, replica = %prev.replica, epoch = prev.epoch, started = %prev.started_at(),
                "an earlier exchange of this refresh token never stored its result; trying the stored token");
        }
        let cfg = &self.deps.config.integration;
        let oauth_url = self.oauth_url.lock().expect("url lock").clone();
        let started = std::time::Instant::now();
        let result = self
            .deps
            .oauth
            .refresh(
                &oauth_url,
                &cfg.client_id,
                &cfg.client_secret,
                &p.secrets.refresh_token,
            )
            .await;
        if result.as_ref().is_err_and(|e| !e.outcome_unknown()) {
            // Webex answered and redeemed nothing: the intent has served its purpose. (An
            // exchange without an answer keeps it: its token may be spent.)
            if let Err(e) = tenants.end_exchange(&self.org, &intent).await {
                tracing::debug!(org = %self.org, error = %e, "exchange intent not removed");
            }
        }
        match result {
            Ok(grant) => {
                // From here to the stored result is the window a crash cannot survive.
                let answered = std::time::Instant::now();
                let used = p.secrets.refresh_token.clone();
                let expires_at =
                    Utc::now() + chrono::Duration::from_std(grant.expires_in).unwrap_or_default();
                // Persist the (possibly rotated) refresh token before anything uses the grant:
                // the old one is dead now. If another writer changed the secrets meanwhile
                // (webhook secret rotation), our tokens are merged into theirs; if it replaced
                // the refresh token itself (an update action), theirs is newer and wins.
                let merge = |s: &mut TenantSecrets| {
                    if s.refresh_token != used {
                        return false;
                    }
                    if let Some(rt) = &grant.refresh_token {
                        s.refresh_token = rt.clone();
                    }
                    s.access_token = Some(grant.access_token.clone());
                    s.access_expires_at = Some(expires_at);
                    true
                };
                // The old refresh token is dead now: a Redis hiccup must not lose the new one.
                // Keep trying while the lease lasts (no one else can have written meanwhile).
                let stored = loop {
                    match self.persist(&mut p, Fence::Exchange(&intent), merge).await {
                        Ok(stored) => break stored,
                        Err(e)
                            if e.is_unavailable()
                                && self.claim.epoch_for(PERSIST_RETRY).is_some() =>
                        {
                            tracing::warn!(org = %self.org, error = %e, "rotated refresh token not stored yet; retrying");
                            tokio::time::sleep(PERSIST_RETRY).await;
                        }
                        Err(e) => {
                            return Err(TokenError::Transient {
                                message: format!("could not store the rotated refresh token: {e}"),
                                retry_after: None,
                                store_unavailable: e.is_unavailable(),
                            });
                        }
                    }
                };
                if !stored {
                    tracing::warn!(org = %self.org, "refresh token replaced while exchanging; the new one is kept");
                }
                self.deps.metrics.stage("token_exchange", started);
                self.deps.metrics.stage("token_store", answered);
                *self.current.lock().expect("token lock") = Some(AccessToken::new(
                    grant.access_token.clone(),
                    grant.expires_in,
                ));
                *self.backoff.lock().expect("backoff lock") = Backoff::default();
                self.deps.metrics.token_refresh("ok");
                self.wake.notify_one();
                Ok(grant.access_token)
            }
            Err(OAuthError::InvalidGrant(msg)) => {
                let reason = match &left_behind {
                    Some(prev) if prev.epoch != epoch || prev.replica != self.replica => {
                        self.deps.metrics.token_exchange_lost();
                        format!(
                            "{LOST_IN_CRASH} (replica {}, lease epoch {}, started {}); Webex now refuses the stored token: {msg}",
                            prev.replica,
                            prev.epoch,
                            prev.started_at()
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        )
                    }
                    Some(prev) => {
                        self.deps.metrics.token_exchange_lost();
                        format!(
                            "refresh token lost in an exchange that got no answer (started {}); Webex now refuses the stored token: {msg}",
                            prev.started_at()
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        )
                    }
                    None => format!("refresh token rejected by Webex: {msg}"),
                };
                tracing::warn!(org = %self.org, %reason, "refresh token rejected");
                self.deps.metrics.token_refresh("invalid_grant");
                self.set_invalid(Some(reason));
                *self.current.lock().expect("token lock") = None;
                Err(TokenError::Invalid)
            }
            Err(OAuthError::Transient {
                message,
                retry_after,
            }) => Err(self.back_off(message, retry_after)),
            Err(
                e @ (OAuthError::BadClient(_) | OAuthError::Url(_) | OAuthError::Unanswered(_)),
            ) => Err(self.back_off(e.to_string(), None)),
        }
    }

    /// Records a transient failure: no exchange until the server's `Retry-After`, or a doubling
    /// pause, has passed. Returns the error to hand out meanwhile.
    fn back_off(&self, message: String, retry_after: Option<Duration>) -> TokenError {
        self.deps.metrics.token_refresh("error");
        let mut b = self.backoff.lock().expect("backoff lock");
        b.failures += 1;
        let wait = retry_after
            .unwrap_or_else(|| EXCHANGE_RETRY_BASE.saturating_mul(1 << (b.failures - 1).min(6)))
            .min(EXCHANGE_RETRY_CAP);
        let err = TokenError::Transient {
            message,
            retry_after: Some(wait),
            store_unavailable: false,
        };
        b.until = Some((Instant::now() + wait, err.clone()));
        err
    }

    /// Compare-and-set write of `change` applied to the secrets; after a lost race the stored
    /// secrets are reloaded and `change` decides again (returning false: not applicable to
    /// what is stored now, which is then simply adopted). `fence` limits the write to the
    /// lease holder. Returns whether `change` was written.
    async fn persist(
        &self,
        p: &mut Persisted,
        fence: Fence<'_>,
        change: impl Fn(&mut TenantSecrets) -> bool,
    ) -> Result<bool, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let mut next = p.secrets.clone();
            if !change(&mut next) {
                return Ok(false);
            }
            let tenants = &self.deps.tenants;
            let outcome = match fence {
                Fence::Exchange(intent) => {
                    tenants
                        .save_exchanged(&self.org, p.version, &next, intent)
                        .await?
                }
                Fence::Epoch(epoch) => {
                    tenants
                        .save_secrets(&self.org, p.version, &next, None, epoch)
                        .await?
                }
            };
            match outcome {
                CasOutcome::Written(v) => {
                    p.version = v;
                    p.secrets = next;
                    self.webhook.refresh(&p.secrets);
                    return Ok(true);
                }
                CasOutcome::Fenced => {
                    tracing::warn!(org = %self.org, "lease lost: another replica owns this tenant's tokens now");
                    return Err(StoreError::Conflict(
                        "another replica took over this tenant (lease epoch moved on)",
                    ));
                }
                CasOutcome::Stale => {
                    tracing::debug!(org = %self.org, "token state changed under us; reloading");
                    self.reload_locked(p).await?;
                }
            }
        }
        Err(StoreError::Conflict("the tenant's secrets kept changing"))
    }

    /// Reads the stored secrets and adopts them when newer.
    async fn reload_locked(&self, p: &mut Persisted) -> Result<(), StoreError> {
        if let Some(stored) = self.deps.tenants.load(&self.org).await? {
            self.adopt_locked(p, stored.secrets, stored.token_version);
        }
        Ok(())
    }

    /// Adopts secrets written elsewhere (another replica, an action) if newer than ours.
    fn adopt_locked(&self, p: &mut Persisted, secrets: TenantSecrets, version: u64) {
        if version <= p.version {
            return;
        }
        let new_refresh_token = secrets.refresh_token != p.secrets.refresh_token;
        if let Some(t) = stored_access_token(&secrets) {
            let mut cur = self.current.lock().expect("token lock");
            if cur.as_ref().is_none_or(|c| c.token != t.token) {
                *cur = Some(t);
            }
        } else if new_refresh_token {
            *self.current.lock().expect("token lock") = None;
        }
        p.secrets = secrets;
        p.version = version;
        self.webhook.refresh(&p.secrets);
        if new_refresh_token {
            self.set_invalid(None);
            *self.backoff.lock().expect("backoff lock") = Backoff::default();
        }
        self.wake.notify_one();
    }

    /// Adopts secrets read from Redis (a change announced by another replica, a resync).
    pub async fn reload(&self, secrets: TenantSecrets, version: u64) {
        let mut p = self.persisted.lock().await;
        self.adopt_locked(&mut p, secrets, version);
    }

    /// The version of the secrets held.
    pub async fn version(&self) -> u64 {
        self.persisted.lock().await.version
    }

    /// Marks the refresh token dead or alive as the owner recorded it (followers only).
    pub fn follow_invalid(&self, invalid: bool) {
        if !self.claim.is_owning() {
            let mut cur = self.invalid.lock().expect("invalid lock");
            match (invalid, cur.is_some()) {
                (true, false) => {
                    *cur = Some(
                        "refresh token rejected (recorded by the replica owning the tenant)".into(),
                    )
                }
                (false, true) => *cur = None,
                _ => {}
            }
        }
    }

    /// Reloads the stored secrets; a usable access token other than `rejected`, if one is
    /// stored; `Gone` without a refresh token.
    async fn stored_token(
        &self,
        p: &mut Persisted,
        rejected: Option<&Secret>,
    ) -> Result<Option<Secret>, TokenError> {
        if let Err(e) = self.reload_locked(p).await {
            return Err(TokenError::Transient {
                message: format!("could not read the tenant's token state: {e}"),
                retry_after: Some(FOLLOWER_RETRY),
                store_unavailable: e.is_unavailable(),
            });
        }
        if let Some(t) = self.cached()
            && rejected.is_none_or(|r| r != &t.token)
        {
            return Ok(Some(t.token));
        }
        if p.secrets.refresh_token.is_empty() {
            return Err(TokenError::Gone);
        }
        Ok(None)
    }

    /// A replica that does not own the tenant never exchanges: it uses the access token the
    /// owner stored, if it is usable and not the one just refused.
    async fn follow_owner(
        &self,
        p: &mut Persisted,
        rejected: Option<&Secret>,
    ) -> Result<Secret, TokenError> {
        if let Some(token) = self.stored_token(p, rejected).await? {
            return Ok(token);
        }
        if self.is_invalid() {
            return Err(TokenError::Invalid);
        }
        // An owner gets here only when its lease has less time left than an exchange may take:
        // renewals keep more than that, so they are not reaching Redis (or are very late).
        // Nothing is decided: the exchange runs once a renewal lands (or the next owner runs it).
        if self.claim.is_owning() && self.claim.held_epoch().is_some() {
            return Err(TokenError::Transient {
                message: "this replica's lease is lapsing (its renewals are not reaching Redis); no exchange until it is renewed".into(),
                retry_after: Some(FOLLOWER_RETRY),
                store_unavailable: true,
            });
        }
        Err(TokenError::Transient {
            message: "the replica owning this tenant has not refreshed its token yet".into(),
            retry_after: Some(FOLLOWER_RETRY),
            store_unavailable: false,
        })
    }

    /// Adopts a new refresh token (update action) and new oauthUrl, persisted with CAS.
    pub async fn adopt_refresh_token(
        &self,
        refresh_token: Secret,
        oauth_url: Option<String>,
    ) -> Result<(), StoreError> {
        let mut p = self.persisted.lock().await;
        self.persist(&mut p, Fence::Epoch(None), |s| {
            s.refresh_token = refresh_token.clone();
            s.access_token = None;
            s.access_expires_at = None;
            true
        })
        .await?;
        if let Some(url) = oauth_url {
            *self.oauth_url.lock().expect("url lock") = url;
        }
        *self.current.lock().expect("token lock") = None;
        self.set_invalid(None);
        *self.backoff.lock().expect("backoff lock") = Backoff::default();
        self.wake.notify_one();
        Ok(())
    }

    /// Updates the secrets other than tokens (webhook secret rotation) under the same CAS,
    /// fenced by the lease when this replica holds one.
    pub async fn update_secrets(
        &self,
        change: impl Fn(&mut TenantSecrets),
    ) -> Result<TenantSecrets, StoreError> {
        let mut p = self.persisted.lock().await;
        let epoch = self.claim.held_epoch();
        self.persist(&mut p, Fence::Epoch(epoch), |s| {
            change(s);
            true
        })
        .await?;
        Ok(p.secrets.clone())
    }

    /// [`update_secrets`](Self::update_secrets) without the lease fence: for facts that hold
    /// whoever owns the tenant now (Webex confirmed a webhook secret). Still compare-and-set:
    /// `change` is applied to the newest secrets.
    pub async fn update_secrets_unfenced(
        &self,
        change: impl Fn(&mut TenantSecrets),
    ) -> Result<TenantSecrets, StoreError> {
        let mut p = self.persisted.lock().await;
        self.persist(&mut p, Fence::Epoch(None), |s| {
            change(s);
            true
        })
        .await?;
        Ok(p.secrets.clone())
    }

    /// [`update_secrets`](Self::update_secrets) where `change` may decline (returns false:
    /// nothing is written). Returns whether it wrote.
    pub async fn update_secrets_if(
        &self,
        change: impl Fn(&mut TenantSecrets) -> bool,
    ) -> Result<bool, StoreError> {
        let mut p = self.persisted.lock().await;
        let epoch = self.claim.held_epoch();
        self.persist(&mut p, Fence::Epoch(epoch), change).await
    }

    /// Follows the oauthUrl of the record (an update action handled by another replica).
    pub fn set_oauth_url(&self, url: &str) {
        let mut cur = self.oauth_url.lock().expect("url lock");
        if *cur != url {
            *cur = url.to_string();
        }
    }

    /// A copy of the current secrets.
    pub async fn secrets(&self) -> TenantSecrets {
        self.persisted.lock().await.secrets.clone()
    }

    /// Forgets every credential in memory (deprovisioning).
    pub async fn clear(&self) {
        let mut p = self.persisted.lock().await;
        p.secrets = TenantSecrets::default();
        self.webhook.clear();
        *self.current.lock().expect("token lock") = None;
        self.wake.notify_one();
    }

    /// Time left on the current access token (None when there is none).
    pub fn expires_in(&self) -> Option<Duration> {
        self.current
            .lock()
            .expect("token lock")
            .as_ref()
            .map(|t| t.expires_at.saturating_duration_since(Instant::now()))
    }

    /// When the current token should be replaced (None: no token yet, refresh now).
    pub fn refresh_due_at(&self) -> Option<Instant> {
        self.current
            .lock()
            .expect("token lock")
            .as_ref()
            .map(|t| t.refresh_at)
    }

    /// The token that is due, to be passed to [`refresh`](Self::refresh) as the one to replace.
    pub fn current_token(&self) -> Option<Secret> {
        self.current
            .lock()
            .expect("token lock")
            .as_ref()
            .map(|t| t.token.clone())
    }

    /// True while a refresh token is held (activated and not deprovisioned).
    pub async fn has_refresh_token(&self) -> bool {
        !self.persisted.lock().await.secrets.refresh_token.is_empty()
    }

    /// Resolves when the token state changed (new token, new refresh token, cleared).
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

/// The access token stored with the secrets, if any.
fn stored_access_token(secrets: &TenantSecrets) -> Option<AccessToken> {
    match (&secrets.access_token, secrets.access_expires_at) {
        (Some(t), Some(at)) => {
            let left = (at - Utc::now()).to_std().unwrap_or_default();
            Some(AccessToken::new(t.clone(), left))
        }
        _ => None,
    }
}

/// How a write of the secrets is limited to the lease holder.
#[derive(Clone, Copy)]
enum Fence<'a> {
    /// The result of this exchange (fenced by its epoch; removes its intent).
    Exchange(&'a ExchangeIntent),
    /// Fenced by this epoch, if any.
    Epoch(Option<u64>),
}

/// The start of the reason a tenant's tokens show `invalid` when its refresh token was lost
/// because the replica exchanging it died before storing the rotated one.
pub const LOST_IN_CRASH: &str = "refresh token lost in a crash during exchange";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_hour_token_is_replaced_after_112_to_115_minutes() {
        let two_hours = Duration::from_secs(7199);
        let earliest = refresh_after(two_hours, 1.0);
        let latest = refresh_after(two_hours, 0.0);
        assert_eq!(latest, Duration::from_secs(7199 - 300));
        assert_eq!(earliest, Duration::from_secs(7199 - 450));
        // Most of its life left: not replaced before half of it is gone, whatever the draw.
        for lifetime in [1u64, 8, 60, 600, 7199, 86_400] {
            let l = Duration::from_secs(lifetime);
            for u in [0.0, 0.3, 0.99, 1.0] {
                let at = refresh_after(l, u);
                assert!(
                    at >= l / 2,
                    "{lifetime}s token at u={u}: replaced after {at:?}"
                );
                assert!(at <= l, "{lifetime}s token at u={u}: after {at:?}");
            }
        }
    }

    #[test]
    fn the_jitter_spreads_tenants_activated_together() {
        let l = Duration::from_secs(7199);
        let draws: Vec<Duration> = (0..200)
            .map(|_| AccessToken::new(Secret::new("t".to_string()), l))
            .map(|t| t.refresh_at - (t.expires_at - l))
            .collect();
        let (min, max) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*max - *min > Duration::from_secs(100), "{min:?}..{max:?}");
    }
}

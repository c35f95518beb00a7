//! Exchanging the refresh token: single-flight, on the engine's own runtime
//! ([`ExchangeTasks`]), with an intent on record and a shared backoff; and following the lease
//! holder's exchanges on the replicas that do not own the tenant.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{
    AccessToken, Backoff, EXCHANGE_RETRY_BASE, EXCHANGE_RETRY_CAP, FOLLOWER_RETRY, Fence,
    PERSIST_RETRY, Persisted, TokenError, TokenKeeper,
};
use crate::secret::Secret;
use crate::store::tenants::{BeginExchange, ExchangeIntent, TenantSecrets};
use crate::webex::client::OAuthError;

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

/// The start of the reason a tenant's tokens show `invalid` when its refresh token was lost
/// because the replica exchanging it died before storing the rotated one.
pub const LOST_IN_CRASH: &str = "refresh token lost in a crash during exchange";

impl TokenKeeper {
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
    pub(super) async fn exchange(
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
    pub(super) fn back_off(&self, message: String, retry_after: Option<Duration>) -> TokenError {
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

    /// Reloads the stored secrets; a usable access token other than `rejected`, if one is
    /// stored; `Gone` without a refresh token.
    pub(super) async fn stored_token(
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
    pub(super) async fn follow_owner(
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
}

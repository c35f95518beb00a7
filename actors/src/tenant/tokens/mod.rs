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
mod exchange;
mod persist;

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::Deps;
use super::claim::Claim;
use super::webhook_secrets::WebhookSecrets;
use crate::secret::Secret;
use crate::store::tenants::TenantSecrets;
pub use exchange::{ExchangeTasks, LOST_IN_CRASH};
use persist::{Fence, stored_access_token};

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

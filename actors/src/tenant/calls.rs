//! Calls made with the tenant's access token: the one "401 → refresh → retry" helper
//! ([`TenantShared::with_token`]), the token-state transitions a call's result implies, and the
//! background refresher.
use std::sync::Arc;

use super::{TenantShared, TokenError};
use crate::shutdown::Shutdown;

/// An error of a call made with the tenant's token that can say "Webex refused the token".
pub trait Refusal {
    fn token_refused(&self) -> bool;
}

impl Refusal for crate::webex::client::AppUrlError {
    fn token_refused(&self) -> bool {
        matches!(self, crate::webex::client::AppUrlError::Unauthorized(_))
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

    /// PATCHes the appUrl `app_url` with `body` ([`with_this_token`](Self::with_this_token)
    /// with `token`, or [`with_token`](Self::with_token) when `None`): how the activation, the
    /// webhook secret's rotation, a transport switch and a manifest update send theirs. (A
    /// failed activation's error report uses its token as it is: no refresh.)
    pub async fn patch_app(
        &self,
        app_url: &str,
        token: Option<crate::secret::Secret>,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, WithToken<crate::webex::client::AppUrlError>> {
        let webex = self.deps().webex();
        let call =
            |t: crate::secret::Secret| async move { webex.patch_app(app_url, &t, body).await };
        match token {
            Some(token) => self.with_this_token(token, call).await,
            None => self.with_token(call).await,
        }
    }

    /// After Webex refused `rejected` (401): a fresh token, or why not.
    pub(super) async fn refresh_after_rejection(
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

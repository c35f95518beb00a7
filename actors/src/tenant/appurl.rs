//! A tenant's work against its appUrl, run by the lease holder: completing an activation
//! (token exchange, a fresh webhook secret, the PATCH), the periodic reconciliation (scopes,
//! xAPI access, manifest version, removal), and re-learning the queue's pollUrl after an update.
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ChildError, TenantShared, TokenError, WithToken, rotation};
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use crate::store::tenants::{ProvisioningState, TokensState};
use crate::webex::client::AppUrlError;

/// The reconciler's interval varies by ±this fraction so tenants do not call Webex in step.
const RECONCILE_JITTER: f64 = 0.1;

/// After an update: exchange the (possibly new) refresh token now, so a dead one shows at once,
/// and learn the queue's pollUrl from the (possibly moved) appUrl.
pub async fn relearn_poll_url(shared: &TenantShared) {
    let Ok(token) = shared.access_token().await else {
        return;
    };
    if !shared.record().ingest.queue() {
        return;
    }
    let app_url = shared.record().app_url;
    let poll_url = match shared.deps().webex.get_app(&app_url, &token).await {
        Ok(app) => app
            .pointer("/queue/pollUrl")
            .and_then(Value::as_str)
            .map(str::to_string),
        Err(e) => {
            tracing::warn!(tenant = %shared.tenant_id, error = %e, "could not read the appUrl after an update");
            None
        }
    };
    if let Some(url) = poll_url
        && shared.record().poll_url.as_deref() != Some(url.as_str())
        && let Err(e) = shared
            .update(|r| {
                // Not for a queue a transport switch removed meanwhile.
                if r.ingest.queue() {
                    r.poll_url = Some(url.clone());
                }
            })
            .await
    {
        tracing::warn!(tenant = %shared.tenant_id, error = %e, "new pollUrl not stored");
    }
}

/// Completes an activation: token exchange (adopting a rotated refresh token), a fresh webhook
/// secret stored before Webex learns it, the PATCH of the appUrl, and the tenant's final
/// state. An attempt that failed only because Redis could not be reached is tried again (with
/// capped exponential backoff) until `owned` fires, i.e. this round of owned work ends (lease
/// lost, re-activation, shutdown; a later round starts its own completion): the tenant stays
/// `provisioning` meanwhile, which is the truth, and Redis could not take an error record
/// anyway. Any other failure leaves the tenant in `error` with a trackingId, and Webex is told
/// `provisioningState: error` when a token is at hand. Returns whether it completed.
pub async fn complete_activation(shared: &TenantShared, owned: &Shutdown) -> bool {
    let metrics = &shared.deps().metrics;
    let mut pause = STORE_RETRY_MIN;
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        if owned.is_fired() {
            return false;
        }
        match try_complete(shared).await {
            Ok(()) => {
                metrics.activation("completed");
                shared.lifecycle("activated").await;
                tracing::info!(tenant = %shared.tenant_id, org = %shared.org_id, "activation completed");
                return true;
            }
            Err(f) if !shared.still_in_charge() || owned.is_fired() => {
                // The lease moved on (or a re-activation replaced this supervisor) meanwhile: the
                // new owner completes the activation; reporting an error would undo its work.
                tracing::info!(tenant = %shared.tenant_id, description = %f.description, "activation handed to the new owner");
                return false;
            }
            Err(f) if f.store_unavailable => {
                // Once, then about once a minute: a tenant whose Redis slot stays down must not
                // flood the log.
                if attempt == 1 || attempt.is_multiple_of(12) {
                    tracing::warn!(tenant = %shared.tenant_id, description = %f.description, attempt, ?pause, "activation not completed: Redis unavailable; trying again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = owned.wait() => return false,
                }
                pause = (pause * 2).min(STORE_RETRY_MAX);
            }
            Err(Failure {
                description, token, ..
            }) => {
                metrics.activation("error");
                let tracking = shared
                    .fail(Some(ProvisioningState::Error), description)
                    .await;
                if let Some(token) = token {
                    let body = json!({ "provisioningState": "error" });
                    let app_url = shared.record().app_url;
                    if let Err(e) = shared.deps().webex.patch_app(&app_url, &token, &body).await {
                        tracing::warn!(trackingId = %tracking, error = %e, "could not report the error to Webex");
                    }
                }
                return false;
            }
        }
    }
}

/// The first pause before an activation is tried again after Redis was unavailable; doubled
/// up to [`STORE_RETRY_MAX`].
const STORE_RETRY_MIN: Duration = Duration::from_millis(250);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why an attempt to complete an activation failed.
struct Failure {
    description: String,
    /// The access token, when the failure should be reported to Webex.
    token: Option<Secret>,
    /// Redis could not be reached (a write timed out, perhaps to land later): another attempt
    /// may succeed, and the completion's writes are safe to repeat (compare-and-set on the
    /// secrets, the record rewritten whole).
    store_unavailable: bool,
}

impl Failure {
    fn new(description: impl Into<String>, token: Option<Secret>) -> Self {
        Failure {
            description: description.into(),
            token,
            store_unavailable: false,
        }
    }

    /// A failure to write: unavailable when Redis could not be reached.
    fn store(description: impl Into<String>, token: Option<Secret>, unavailable: bool) -> Self {
        Failure {
            store_unavailable: unavailable,
            ..Failure::new(description, token)
        }
    }

    /// A step of the secret's rotation failed.
    fn rotation(e: rotation::RotateError, token: &Secret) -> Self {
        let unavailable = e.store_unavailable();
        Failure::store(e.to_string(), Some(token.clone()), unavailable)
    }
}

async fn try_complete(shared: &TenantShared) -> Result<(), Failure> {
    let deps = &shared.deps();
    let token = shared.access_token().await.map_err(|e| match e {
        TokenError::Invalid => {
            Failure::new("the activation's refresh token was rejected by Webex", None)
        }
        e if e.store_unavailable() => Failure::store(
            format!("could not exchange the refresh token: {e}"),
            None,
            true,
        ),
        other => Failure::new(
            format!("could not exchange the refresh token: {other}"),
            None,
        ),
    })?;
    let record = shared.record();
    let ingest = record.ingest;
    let mut body = json!({
        "provisioningState": "completed",
        "actionsUrl": deps.actions_url(&shared.tenant_id),
        "customer": match &record.customer {
            Some(c) => json!({ "id": c.id, "name": c.name }),
            None => json!({ "id": shared.tenant_id, "name": record.org_name }),
        },
    });
    // A fresh webhook secret, offered (accepted on webhooks) before Webex learns it and made
    // current once the PATCH succeeded; the one it replaces keeps its overlap.
    let scheme = deps.config.integration.webhook_auth;
    let secret = match ingest.webhook() {
        true => Some(
            rotation::offer_stored(shared, &rotation::new_webhook_secret(), scheme, true)
                .await
                .map_err(|e| Failure::rotation(e, &token))?,
        ),
        false => None,
    };
    if let Some(secret) = &secret {
        let target = deps.webhook_url(&shared.tenant_id);
        body["webhook"] = rotation::registration(scheme, &target, secret);
    }
    if ingest.queue() {
        body["queue"] = json!({ "state": "enabled" });
    }
    // The token may have been revoked between exchange and PATCH: one fresh try.
    let answer = shared
        .patch_app(&record.app_url, Some(token.clone()), &body)
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            if let Some(secret) = &secret {
                rotation::withdraw_after(shared, secret, &e).await;
            }
            return Err(match e {
                WithToken::Token(e) => {
                    let unavailable = e.store_unavailable();
                    Failure::store(
                        format!("appUrl rejected our token and refresh failed: {e}"),
                        None,
                        unavailable,
                    )
                }
                WithToken::Call(e) => Failure::new(
                    format!("PATCH of the appUrl failed: {e}"),
                    Some(token.clone()),
                ),
            });
        }
    };
    if let Some(secret) = &secret {
        rotation::confirm_stored(shared, secret, scheme)
            .await
            .map_err(|e| Failure::rotation(e, &token))?;
    }
    let poll_url = answer
        .pointer("/queue/pollUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    if ingest.queue() {
        match &poll_url {
            Some(u) => {
                deps.webex.check_url(u).map_err(|e| {
                    Failure::new(format!("pollUrl refused: {e}"), Some(token.clone()))
                })?;
            }
            None => {
                return Err(Failure::new(
                    "Webex did not return a queue pollUrl",
                    Some(token.clone()),
                ));
            }
        }
    }
    if !shared.still_in_charge() {
        return Err(Failure::new("superseded while completing", None));
    }
    shared
        .update(|r| {
            r.provisioning_state = ProvisioningState::Completed;
            r.tokens_state = TokensState::Valid;
            r.poll_url = poll_url.clone();
            r.last_error = None;
        })
        .await
        .map_err(|e| {
            Failure::store(
                format!("could not store the completed activation: {e}"),
                None,
                e.is_unavailable(),
            )
        })?;
    Ok(())
}

/// Periodically reads the appUrl: granted scopes, xAPI access and manifest version follow
/// what Webex says; a removed integration is reported. Interval from
/// `activation.reconcile_interval_secs`, jittered. The same loop runs the periodic webhook
/// secret rotation when it falls due (see [`rotation`]): no extra task per tenant.
pub async fn run_reconciler(shared: Arc<TenantShared>, stop: Shutdown) -> Result<(), ChildError> {
    let every = shared.deps().config.activation.reconcile_interval_secs;
    let jittered = || {
        let jitter = 1.0 + RECONCILE_JITTER * (rand::random::<f64>() * 2.0 - 1.0);
        tokio::time::Instant::now() + Duration::from_secs_f64((every * jitter).max(0.01))
    };
    let mut reconcile_at = jittered();
    // Overdue rotations are spread from when this owner started (see `rotation::next_due`).
    let since = chrono::Utc::now();
    // After a rotation that did not happen: not before then (the stored secrets may still say
    // "due").
    let mut not_before: Option<tokio::time::Instant> = None;
    loop {
        let rotate_at = rotation::next_due(&shared, since).await.map(|due| {
            let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
            let at = tokio::time::Instant::now() + wait;
            not_before.map_or(at, |nb| at.max(nb))
        });
        let rotating = rotate_at.is_some_and(|r| r < reconcile_at);
        let wake = if rotating {
            rotate_at.unwrap_or(reconcile_at)
        } else {
            reconcile_at
        };
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            _ = tokio::time::sleep_until(wake) => {}
        }
        if rotating {
            let period = shared
                .deps()
                .config
                .security
                .rotation_period()
                .unwrap_or_default();
            let retry = tokio::time::Instant::now() + rotation::retry_after(period);
            // Boxed like the reconciliation: its state exists only while it runs.
            not_before = match Box::pin(rotation::rotate(&shared, rotation::Why::Periodic)).await {
                Ok(_) => None,
                // The last rotation's overlap runs (an operator's, another replica's): look
                // again after it; its confirmation has moved the due time on.
                Err(rotation::RotateError::Overlap(until)) => {
                    let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
                    Some(tokio::time::Instant::now() + wait.max(rotation::retry_after(period)))
                }
                Err(_) => Some(retry),
            };
            continue;
        }
        reconcile_at = jittered();
        // Boxed: the call's state exists only while it runs, not while the loop sleeps.
        Box::pin(reconcile_once(&shared)).await?;
    }
}

/// One reconciliation. Errors that a restart could mend are returned; Webex being down is not
/// one of them (logged, next round).
pub async fn reconcile_once(shared: &TenantShared) -> Result<(), ChildError> {
    let deps = &shared.deps();
    let app_url = shared.record().app_url;
    let answer = shared
        .with_token(|t| {
            let (webex, url) = (&deps.webex, &app_url);
            async move { webex.get_app(url, &t).await }
        })
        .await;
    let answer = match answer {
        Ok(app) => Ok(app),
        Err(WithToken::Token(e)) => {
            tracing::debug!(tenant = %shared.tenant_id, error = %e, "reconcile skipped: no token");
            return Ok(());
        }
        Err(WithToken::Call(e)) => Err(e),
    };
    match answer {
        Ok(app) => {
            let scopes: Option<Vec<String>> =
                app.get("scopes").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                });
            let access = app.get("xapiAccessKeys").cloned();
            let version = app.get("manifestVersion").map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            shared
                .update(|r| {
                    if let Some(s) = &scopes {
                        r.scopes = s.clone();
                    }
                    if let Some(a) = access.as_ref().filter(|a| !a.is_null()) {
                        r.xapi_access = a.clone();
                    }
                    if version.is_some() {
                        r.manifest_version = version.clone();
                    }
                })
                .await
                .map_err(|e| ChildError::new("reconcile: storing the appUrl's answer", e))?;
            Ok(())
        }
        Err(AppUrlError::Gone(code)) => {
            shared
                .fail(
                    None,
                    format!("the integration was removed on the Webex side ({code}); cleaning up"),
                )
                .await;
            // Cleaned up as if deprovisioned (by the registry, which stops this reconciler too).
            let _ = shared.deps().gone.send(shared.tenant_id.clone());
            Ok(())
        }
        Err(e) => {
            tracing::warn!(tenant = %shared.tenant_id, error = %e, "reconcile: appUrl unavailable");
            Ok(())
        }
    }
}

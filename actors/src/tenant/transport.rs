//! Switching a tenant between webhook and queue, made before it breaks. Webex caches a tenant's
//! notification settings for up to 10 minutes, so a transport enabled now may carry nothing for
//! a while and one removed now may still carry messages for a while. A switch therefore:
//!
//! 1. **enabling** — PATCHes the appUrl to enable what the target adds (a webhook registration
//!    with a fresh secret, or `{"queue": {"state": "enabled"}}`); `ingest` then reads both, so
//!    the owner starts the queue poller if the queue is new. Sent by the replica that took the
//!    request (its answer says whether Webex took it); if that replica dies first, the owner
//!    sends it once the request's PATCH can no longer be in flight.
//! 2. **overlap** — both transports are read for `activation.transport_overlap_secs`; a message
//!    delivered by both is written once (the writer's dedupe).
//! 3. **removing** — the owner PATCHes the old transport away (`{"webhook": {"type": "none"}}`,
//!    `{"queue": {"state": "remove"}}`); `ingest` becomes the target, the poller of a removed
//!    queue stops after its last poll, and a lifecycle entry `ingest_changed` is written.
//!
//! Every phase is in the tenant record (`transport_switch`), so a restart or a lease move
//! resumes it on the new owner. Any failure of the enabling PATCH ends the switch with the
//! reason in `last_error` (the tenant stays as it was; the operator asks again). A removal
//! Webex refuses (4xx other than 408/409/429, or a dead refresh token) ends the switch the same
//! way, the tenant reading both (what Webex sends) until switched again; other failures of it
//! are retried. A 4xx to a removal sent again (the phase was `removing` already: the first may
//! have landed) counts as done.
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::{ChildError, TenantRecord, TenantShared, TokenError, WithToken, rotation};
use crate::config::IngestMode;
use crate::protocol::tracking::TrackingId;
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use crate::store::tenants::{ProvisioningState, SwitchPhase, TransportSwitch};
use crate::webex::client::AppUrlError;

/// Why a switch did not start (or a step of it failed).
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the tenant is {0}: only a completed activation can change transport")]
    NotActive(&'static str),
    #[error("a switch to {0} is under way; wait for it to end")]
    Busy(&'static str),
    /// Webex answered the PATCH with a 4xx: the switch ended, the reason is in `last_error`.
    #[error("{0}")]
    Refused(String),
    /// Webex could not be reached, or answered 5xx, or no token could be had.
    #[error("{0}")]
    Webex(String),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
}

/// Starts switching the tenant to `to`: records the switch, then enables what `to` adds (the
/// PATCH, answered here). Asking for the mode the tenant has, or for the switch under way, is
/// not an error: nothing changes. Returns the record as it stands.
pub async fn request(shared: &TenantShared, to: IngestMode) -> Result<TenantRecord, SwitchError> {
    let tracking = TrackingId::new().to_string();
    let now = Utc::now();
    let next = shared
        .update(|r| {
            if r.transport_switch.is_none()
                && r.ingest != to
                && r.provisioning_state == ProvisioningState::Completed
            {
                r.transport_switch = Some(TransportSwitch {
                    from: r.ingest,
                    to,
                    phase: SwitchPhase::Enabling,
                    requested_at: now,
                    overlap_until: None,
                    tracking_id: tracking.clone(),
                });
            }
        })
        .await?;
    match &next.transport_switch {
        Some(s) if s.tracking_id == tracking => {}
        Some(s) if s.to == to => return Ok(next),
        Some(s) => return Err(SwitchError::Busy(s.to.as_str())),
        None if next.provisioning_state != ProvisioningState::Completed => {
            return Err(SwitchError::NotActive(next.provisioning_state.as_str()));
        }
        None => return Ok(next),
    }
    tracing::info!(tenant = %shared.tenant_id, trackingId = %tracking, from = next.ingest.as_str(), to = to.as_str(), "transport switch requested");
    shared.metrics().transport_switch("requested");
    enable(shared).await?;
    Ok(shared.record())
}

/// The tenant's switch, when it is the one in `phase`.
fn current(shared: &TenantShared, phase: SwitchPhase) -> Option<TransportSwitch> {
    shared
        .record()
        .transport_switch
        .filter(|s| s.phase == phase)
}

/// Step 1: enables what the target adds. Any failure ends the switch (the tenant as it was,
/// the reason in `last_error`): the operator asks again.
async fn enable(shared: &TenantShared) -> Result<(), SwitchError> {
    let Some(switch) = current(shared, SwitchPhase::Enabling) else {
        return Ok(());
    };
    let record = shared.record();
    let (from, to) = (record.ingest, switch.to);
    let add_webhook = to.webhook() && !from.webhook();
    let add_queue = to.queue() && !from.queue();
    if !add_webhook && !add_queue {
        // Both → one of them: nothing new to wait for; the other goes now (a queue once a poll
        // found it empty: a message whose webhook delivery failed is still there).
        let now = Utc::now();
        set_phase(shared, &switch, |s| {
            s.phase = SwitchPhase::Removing;
            s.overlap_until = Some(now);
        })
        .await?;
        return Ok(());
    }
    let deps = shared.deps();
    let token = match shared.access_token().await {
        Ok(t) => t,
        Err(e) => {
            let why = format!("transport switch to {}: no access token: {e}", to.as_str());
            return Err(abandon(shared, &switch, why, false).await);
        }
    };
    let mut body = json!({});
    let scheme = deps.config.integration.webhook_auth;
    let secret = if add_webhook {
        let offered =
            rotation::offer_stored(shared, &rotation::new_webhook_secret(), scheme, true).await;
        match offered {
            Ok(s) => {
                let target = deps.webhook_url(&shared.tenant_id);
                body["webhook"] = rotation::registration(scheme, &target, &s);
                Some(s)
            }
            Err(e) => {
                let why = format!("transport switch to {}: {e}", to.as_str());
                return Err(abandon(shared, &switch, why, false).await);
            }
        }
    } else {
        None
    };
    if add_queue {
        body["queue"] = json!({ "state": "enabled" });
    }
    let answer = shared.patch_app(&record.app_url, Some(token), &body).await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let refused = refused(&e);
            if let Some(secret) = &secret {
                rotation::withdraw_after(shared, secret, &e).await;
            }
            let why = format!(
                "Webex {} enabling the {} (switch to {}): {e}",
                if refused {
                    "refused"
                } else {
                    "did not confirm"
                },
                what(add_webhook, add_queue),
                to.as_str()
            );
            return Err(abandon(shared, &switch, why, refused).await);
        }
    };
    // Confirmed only while the switch is still this request's to move on: a requester whose
    // answer came after the owner took over must not demote the secret the owner registered.
    let still_ours =
        current(shared, SwitchPhase::Enabling).is_some_and(|s| s.tracking_id == switch.tracking_id);
    if let Some(secret) = secret.as_ref().filter(|_| still_ours)
        && let Err(e) = rotation::confirm_stored(shared, secret, scheme).await
    {
        // Webex has the new registration; webhooks signed with it verify for the offer's
        // overlap, and the next rotation replaces it.
        tracing::warn!(tenant = %shared.tenant_id, error = %e, "switch: the new webhook secret was not confirmed");
    }
    let poll_url = answer
        .pointer("/queue/pollUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    if add_queue {
        let checked = match &poll_url {
            Some(u) => deps
                .webex
                .check_url(u)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("Webex did not return a queue pollUrl".to_string()),
        };
        if let Err(e) = checked {
            let why = format!("transport switch to {}: {e}", to.as_str());
            return Err(abandon(shared, &switch, why, false).await);
        }
    }
    let until = Utc::now() + deps.config.activation.transport_overlap();
    let both = from.union(to);
    let next = shared
        .update(|r| {
            let ours = r.transport_switch.as_ref().is_some_and(|s| {
                s.tracking_id == switch.tracking_id && s.phase == SwitchPhase::Enabling
            });
            if ours && r.provisioning_state == ProvisioningState::Completed {
                r.ingest = both;
                if add_queue {
                    r.poll_url = poll_url.clone();
                }
                if let Some(s) = r.transport_switch.as_mut() {
                    s.phase = SwitchPhase::Overlap;
                    s.overlap_until = Some(until);
                }
            }
        })
        .await?;
    match &next.transport_switch {
        Some(s) if s.tracking_id == switch.tracking_id && s.phase != SwitchPhase::Enabling => {}
        _ => {
            // The owner took the switch over meanwhile and ended it (or the tenant was
            // deprovisioned or re-activated): what Webex now has is reconciled by asking again.
            tracing::warn!(tenant = %shared.tenant_id, trackingId = %switch.tracking_id, "transport switch: enabled at Webex after the switch had ended");
            return Err(SwitchError::Webex(
                "the switch ended while its PATCH was answered (see the tenant's last_error); ask again"
                    .into(),
            ));
        }
    }
    tracing::info!(tenant = %shared.tenant_id, trackingId = %switch.tracking_id, added = what(add_webhook, add_queue), %until, "transport switch: new transport enabled; both are read until the overlap ends");
    Ok(())
}

/// Step 3: removes what the target drops. A refusal ends the switch; other failures are
/// returned for the caller to try again (the phase stays `removing`).
async fn remove(shared: &TenantShared, switch: &TransportSwitch) -> Result<(), SwitchError> {
    // Sent before (a crash, a lost answer, a record not updated after it): Webex may have
    // removed it already.
    let again = switch.phase == SwitchPhase::Removing;
    if !again {
        set_phase(shared, switch, |s| s.phase = SwitchPhase::Removing).await?;
    }
    let record = shared.record();
    let to = switch.to;
    let drop_webhook = record.ingest.webhook() && !to.webhook();
    let drop_queue = record.ingest.queue() && !to.queue();
    let mut body = json!({});
    if drop_webhook {
        body["webhook"] = json!({ "type": "none" });
    }
    if drop_queue {
        body["queue"] = json!({ "state": "remove" });
    }
    if drop_webhook || drop_queue {
        if !shared.still_in_charge() {
            // A lease moved or a re-activation replaced this tenant meanwhile: its new owner
            // (or the activation) decides what Webex has.
            return Err(SwitchError::Webex("no longer the tenant's owner".into()));
        }
        let answer = shared.patch_app(&record.app_url, None, &body).await;
        match answer {
            Ok(_) => {}
            Err(e) if again && refused(&e) => {
                tracing::info!(tenant = %shared.tenant_id, trackingId = %switch.tracking_id, error = %e, "transport switch: a removal sent again was refused; the first one took effect");
            }
            Err(e) => {
                let why = format!(
                    "Webex {} removing the {} (switch to {}): {e}",
                    if refused(&e) {
                        "refused"
                    } else {
                        "did not confirm"
                    },
                    what(drop_webhook, drop_queue),
                    to.as_str()
                );
                if refused(&e) {
                    return Err(abandon(shared, switch, why, true).await);
                }
                return Err(SwitchError::Webex(why));
            }
        }
    }
    let finished = std::sync::atomic::AtomicBool::new(false);
    shared
        .update(|r| {
            finished.store(false, std::sync::atomic::Ordering::Relaxed);
            if r.transport_switch.as_ref().map(|s| &s.tracking_id) == Some(&switch.tracking_id) {
                r.ingest = to;
                if drop_queue {
                    r.poll_url = None;
                }
                r.transport_switch = None;
                finished.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await?;
    if finished.load(std::sync::atomic::Ordering::Relaxed) {
        let reason = format!("{} -> {}", switch.from.as_str(), to.as_str());
        shared
            .lifecycle_because("ingest_changed", Some(&reason))
            .await;
        shared.metrics().transport_switch("completed");
        tracing::info!(tenant = %shared.tenant_id, trackingId = %switch.tracking_id, from = switch.from.as_str(), to = to.as_str(), "transport switch completed");
    }
    Ok(())
}

/// Ends `switch` with `why` as the tenant's `last_error`; `ingest` stays what it is.
async fn abandon(
    shared: &TenantShared,
    switch: &TransportSwitch,
    why: String,
    refused: bool,
) -> SwitchError {
    let id = switch.tracking_id.clone();
    shared
        .record_error(why.clone(), move |r| {
            if r.transport_switch.as_ref().map(|s| &s.tracking_id) == Some(&id) {
                r.transport_switch = None;
            }
        })
        .await;
    shared
        .metrics()
        .transport_switch(if refused { "refused" } else { "failed" });
    if refused {
        SwitchError::Refused(why)
    } else {
        SwitchError::Webex(why)
    }
}

async fn set_phase(
    shared: &TenantShared,
    switch: &TransportSwitch,
    change: impl Fn(&mut TransportSwitch),
) -> Result<(), StoreError> {
    shared
        .update(|r| {
            if let Some(s) = r
                .transport_switch
                .as_mut()
                .filter(|s| s.tracking_id == switch.tracking_id)
            {
                change(s);
            }
        })
        .await
        .map(|_| ())
}

/// Whether Webex refused the PATCH itself (a 4xx other than for the token), as opposed to not
/// answering it.
fn refused(e: &WithToken<AppUrlError>) -> bool {
    match e {
        // A dead refresh token stays dead until an update action: nothing to retry.
        WithToken::Token(TokenError::Invalid) => true,
        WithToken::Token(_) => false,
        // Too many requests, a timeout or a conflict at Webex: worth another try.
        WithToken::Call(AppUrlError::Status { status, .. }) => {
            *status < 500 && !matches!(status, 408 | 409 | 429)
        }
        WithToken::Call(AppUrlError::Gone(_) | AppUrlError::Unauthorized(_)) => true,
        WithToken::Call(AppUrlError::Url(_)) => true,
        WithToken::Call(AppUrlError::Network(_)) => false,
    }
}

fn what(webhook: bool, queue: bool) -> &'static str {
    match (webhook, queue) {
        (true, true) => "webhook and queue",
        (true, false) => "webhook",
        _ => "queue",
    }
}

/// The owner's part, a child of the supervisor while the record holds a switch: waits out the
/// overlap — and, before removing a queue, a poll after it that found the queue empty — then
/// removes the old transport (or sends the enabling PATCH of a requester that died). Returns
/// after each step that changed what the tenant reads, so the supervisor starts (or lets end)
/// the queue poller and runs it again while the switch lasts; a step that changed nothing is an
/// error (the supervisor tries again after its backoff).
pub async fn run(shared: std::sync::Arc<TenantShared>, stop: Shutdown) -> Result<(), ChildError> {
    let overlap = shared.deps().config.activation.transport_overlap();
    // When this owner started waiting for the queue to be seen empty.
    let mut draining_since: Option<tokio::time::Instant> = None;
    loop {
        let record = shared.record();
        let Some(switch) = record.transport_switch else {
            return Ok(());
        };
        let now = Utc::now();
        let wait_until = match switch.phase {
            // The requester's PATCH (after a token refresh, and again after another) may be
            // in flight: its own bound, twice.
            SwitchPhase::Enabling => switch.requested_at + rotation::in_flight_for(&shared) * 2,
            SwitchPhase::Overlap => switch.overlap_until.unwrap_or(now),
            SwitchPhase::Removing => now,
        };
        let mut wait = (wait_until - now).to_std().unwrap_or_default();
        if wait.is_zero()
            && switch.phase != SwitchPhase::Enabling
            && !drained(&shared, &switch, record.ingest)
        {
            let since = *draining_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() < overlap {
                wait = RECHECK;
            } else {
                // Its polls fail (or the queue is gone at Webex already): it goes anyway, and
                // the tenant says so.
                let why = format!(
                    "transport switch to {}: the queue was not seen empty within {} s after the overlap (do its polls fail?); removed anyway",
                    switch.to.as_str(),
                    overlap.as_secs()
                );
                shared.record_error(why, |_| {}).await;
                shared.metrics().transport_switch("forced");
            }
        }
        let in_charge = shared.still_in_charge();
        if !wait.is_zero() || !in_charge {
            // Also looks again now and then: the requester may move the switch on, a lease
            // being renewed may come back.
            let pause = if in_charge {
                wait.clamp(Duration::from_millis(50), RECHECK)
            } else {
                RECHECK
            };
            tokio::select! {
                _ = stop.wait() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
            continue;
        }
        if stop.is_fired() {
            return Ok(());
        }
        let step = match switch.phase {
            SwitchPhase::Enabling => enable(&shared).await,
            SwitchPhase::Overlap | SwitchPhase::Removing => remove(&shared, &switch).await,
        };
        let after = shared.record().transport_switch;
        let moved_on = after
            .as_ref()
            .is_none_or(|a| a.tracking_id != switch.tracking_id || a.phase != switch.phase);
        return match step {
            // Whoever moved it on (this step, or a requester's late answer): done here.
            _ if moved_on => Ok(()),
            Ok(()) | Err(SwitchError::Refused(_)) => Err(ChildError::new(
                "transport switch",
                SwitchError::Webex("the step could not be recorded yet".into()),
            )),
            Err(e) => Err(ChildError::new("transport switch", e)),
        };
    }
}

/// Whether the switch may remove what it drops now: a webhook at once; a queue once a poll
/// sent after the overlap (plus [`CLOCK_MARGIN`], the replicas' clocks differ) found it empty,
/// its batch written — what Webex queued before the new transport took effect is read first.
fn drained(shared: &TenantShared, switch: &TransportSwitch, ingest: IngestMode) -> bool {
    let Some(until) = switch.overlap_until else {
        return true;
    };
    if !ingest.queue() || switch.to.queue() {
        return true;
    }
    let margin = chrono::Duration::from_std(CLOCK_MARGIN).unwrap_or_default();
    shared
        .queue_drained_at
        .load(std::sync::atomic::Ordering::Relaxed)
        >= (until + margin).timestamp_millis()
}

/// How often a waiting switch looks at the record again.
const RECHECK: Duration = Duration::from_secs(1);
/// Allowance for the difference between two replicas' clocks.
const CLOCK_MARGIN: Duration = Duration::from_secs(2);

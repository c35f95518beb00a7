//! Webhook secret rotation. A new secret is first *offered*: stored (sealed, with the other
//! secrets) and accepted on webhooks, before the PATCH that gives it to Webex. Only once Webex
//! confirmed the PATCH does it become the current secret; the one it replaces is still accepted
//! for `security.webhook_secret_overlap_secs` (Webex applies a new configuration about five
//! minutes after the PATCH). A PATCH that Webex refused leaves everything as it was: nothing is
//! half-rotated. A PATCH whose outcome is unknown (no answer, a 5xx) keeps the current secret in
//! force *and* the offered one acceptable until the overlap has passed, in case Webex applied it.
//!
//! Rotations run on every (re-)activation ([`super::appurl`]), periodically on the lease holder
//! (`security.webhook_secret_rotation_days`, jittered per tenant, driven by the reconciler), and
//! on demand (`POST /admin/tenants/<id>/webhook-secret/rotate`, `xapi-stream rotate-secret`) on
//! whichever replica is asked. Two rotations never overlap: one waits while another's PATCH is
//! in flight or the last one's overlap runs (the check and the offer are one compare-and-set of
//! the sealed secrets).
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{TenantShared, WithToken};
use crate::protocol::webhook::{BASIC_USERNAME, Scheme};
use crate::secret::Secret;
use crate::store::tenants::{AcceptedSecret, OfferedSecret, ProvisioningState, TenantSecrets};
use crate::webex::client::AppUrlError;

/// A webhook secret is this many random bytes (base64url: 43 characters, ≥ 32 required).
const WEBHOOK_SECRET_BYTES: usize = 32;

/// A fresh webhook secret: 32 random bytes, base64url.
pub fn new_webhook_secret() -> Secret {
    let bytes: [u8; WEBHOOK_SECRET_BYTES] = rand::random();
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The periodic rotation comes up to this fraction of the period early, per tenant.
const ROTATION_JITTER: f64 = 0.1;
/// A failed periodic rotation is tried again after this fraction of the period…
const RETRY_FRACTION: f64 = 0.01;
/// …but at most this long and at least [`RETRY_MIN`] later.
const RETRY_MAX: Duration = Duration::from_secs(600);
const RETRY_MIN: Duration = Duration::from_secs(1);
/// An offer whose PATCH's outcome is unknown stays acceptable this long beyond the overlap
/// (Webex may have applied it; the next rotation sends it again until Webex answers).
const UNSETTLED_GRACE: Duration = Duration::from_secs(86_400);
/// Earlier secrets kept acceptable, at most (the newest deadlines win).
const ALSO_ACCEPTED_MAX: usize = 4;

/// Who asked for a rotation (the `reason` of its `secret_rotated` lifecycle entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Periodic,
    Operator,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Periodic => "periodic",
            Why::Operator => "operator",
        }
    }
}

/// Why a rotation could not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Another rotation's PATCH is in flight (since then).
    InFlight(DateTime<Utc>),
    /// The last rotation's overlap runs until then.
    Overlap(DateTime<Utc>),
}

/// A rotation that did not happen (the current secret stays in force).
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the tenant receives no webhooks (integration.ingest is queue)")]
    NoWebhook,
    #[error("the tenant is {0}, not completed")]
    NotActive(&'static str),
    #[error("a rotation of this tenant is in flight since {0}")]
    InFlight(DateTime<Utc>),
    #[error("the last rotation's overlap runs until {0}; rotate again after it")]
    Overlap(DateTime<Utc>),
    /// `unavailable`: Redis could not be reached (a retry may succeed), not a refused write.
    #[error("could not store the new secret: {message}")]
    Store { message: String, unavailable: bool },
    #[error("no access token for the PATCH: {0}")]
    Token(String),
    #[error("Webex did not take the new secret: {0}")]
    Webex(String),
}

impl RotateError {
    /// Redis could not be reached: trying again may succeed.
    pub fn store_unavailable(&self) -> bool {
        matches!(
            self,
            RotateError::Store {
                unavailable: true,
                ..
            }
        )
    }

    /// The `webhook_secret_rotations_total{result}` label.
    pub fn result(&self) -> &'static str {
        match self {
            RotateError::NoWebhook | RotateError::NotActive(_) => "not_applicable",
            RotateError::InFlight(_) | RotateError::Overlap(_) => "busy",
            RotateError::Store { .. } | RotateError::Token(_) | RotateError::Webex(_) => "failed",
        }
    }
}

/// A rotation Webex confirmed.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub rotated_at: DateTime<Utc>,
    /// The replaced secret is accepted until then.
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub scheme: Scheme,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Offers a secret: it verifies from now on. Returns the secret to PATCH: `fresh`, or the
/// earlier offer whose outcome is still unknown (sent again until Webex answers, so a secret
/// Webex may hold is never dropped). Refused while another offer is in flight (for
/// `in_flight_for` after it was made) or the last rotation's overlap runs, unless `force` (an
/// activation replaces whatever was there, keeping what it displaces acceptable).
pub fn offer(
    s: &mut TenantSecrets,
    fresh: Secret,
    scheme: Scheme,
    now: DateTime<Utc>,
    in_flight_for: Duration,
    overlap: Duration,
    force: bool,
) -> Result<Secret, Busy> {
    if !force {
        if let Some(o) = &s.offered_webhook
            && o.in_flight
            && o.at + chrono(in_flight_for) > now
        {
            return Err(Busy::InFlight(o.at));
        }
        if s.previous_webhook_secret.is_some()
            && let Some(until) = s.previous_valid_until
            && until > now
        {
            return Err(Busy::Overlap(until));
        }
    }
    let unsettled = s
        .offered_webhook
        .take()
        .filter(|o| o.until > now && o.scheme == scheme);
    let secret = match unsettled {
        Some(o) if !force => o.secret,
        Some(o) => {
            keep_accepting(s, o.secret, o.scheme, o.until, now);
            fresh
        }
        None => fresh,
    };
    s.offered_webhook = Some(OfferedSecret {
        secret: secret.clone(),
        scheme,
        at: now,
        until: now + chrono(in_flight_for) + chrono(overlap) + chrono(UNSETTLED_GRACE),
        in_flight: true,
    });
    Ok(secret)
}

/// Keeps `secret` acceptable until `until` among the earlier secrets (pruning expired ones and
/// keeping the [`ALSO_ACCEPTED_MAX`] latest deadlines).
fn keep_accepting(
    s: &mut TenantSecrets,
    secret: Secret,
    scheme: Scheme,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    s.also_accepted
        .retain(|a| a.until > now && a.secret != secret);
    if until > now {
        s.also_accepted.push(AcceptedSecret {
            secret,
            scheme,
            until,
        });
    }
    s.also_accepted.sort_by_key(|a| std::cmp::Reverse(a.until));
    s.also_accepted.truncate(ALSO_ACCEPTED_MAX);
}

/// Webex took `secret`: it becomes the current secret, the one it replaces is accepted for
/// `overlap` more. Returns when that ends (`None` when there was no secret before).
pub fn confirm(
    s: &mut TenantSecrets,
    secret: &Secret,
    scheme: Scheme,
    now: DateTime<Utc>,
    overlap: Duration,
) -> Option<DateTime<Utc>> {
    if s.offered_webhook
        .as_ref()
        .is_some_and(|o| o.secret == *secret)
    {
        s.offered_webhook = None;
    }
    // A previous secret still in its overlap (a re-activation right after a rotation) stays
    // acceptable until its own deadline.
    if let (Some(prev), Some(prev_until)) =
        (s.previous_webhook_secret.take(), s.previous_valid_until)
        && prev != *secret
    {
        keep_accepting(s, prev, s.previous_webhook_scheme, prev_until, now);
    }
    s.also_accepted
        .retain(|a| a.until > now && a.secret != *secret);
    let until = match s.webhook_secret.take() {
        Some(old) if old != *secret => {
            s.previous_webhook_secret = Some(old);
            s.previous_webhook_scheme = s.webhook_scheme;
            let until = now + chrono(overlap);
            s.previous_valid_until = Some(until);
            Some(until)
        }
        _ => None,
    };
    s.webhook_secret = Some(secret.clone());
    s.webhook_scheme = scheme;
    s.webhook_rotated_at = Some(now);
    until
}

/// The PATCH offering `secret` failed. Refused by Webex (`outcome_known`): the offer is gone.
/// Unknown: it stays acceptable until its `until`, no longer blocking the next rotation.
pub fn withdraw(s: &mut TenantSecrets, secret: &Secret, outcome_known: bool) {
    let ours = s
        .offered_webhook
        .as_ref()
        .is_some_and(|o| o.secret == *secret);
    if !ours {
        return;
    }
    if outcome_known {
        s.offered_webhook = None;
    } else if let Some(o) = &mut s.offered_webhook {
        o.in_flight = false;
    }
}

/// When the periodic rotation of a tenant is due: `period` after the current secret was
/// confirmed (or the tenant created, for records from before rotations), up to
/// [`ROTATION_JITTER`] of it early, per tenant. An overdue one is spread over that same
/// fraction from `now`, so an upgrade does not rotate every tenant at once.
pub fn due_at(
    s: &TenantSecrets,
    created_at: DateTime<Utc>,
    period: Duration,
    tenant_id: &str,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let base = s.webhook_rotated_at.unwrap_or(created_at);
    let h = unit_hash(tenant_id, base.timestamp_millis());
    let due = base + chrono(period.mul_f64(1.0 - ROTATION_JITTER * h));
    if due >= now {
        due
    } else {
        now + chrono(period.mul_f64(ROTATION_JITTER * h))
    }
}

/// How long after a failed periodic rotation it is tried again.
pub fn retry_after(period: Duration) -> Duration {
    period.mul_f64(RETRY_FRACTION).clamp(RETRY_MIN, RETRY_MAX)
}

/// A number in [0, 1) from the tenant id and the rotation's base (FNV-1a): stable across
/// restarts and replicas, different per tenant.
fn unit_hash(tenant_id: &str, base: i64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant_id.bytes().chain(base.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The PATCH's `webhook` object for `secret` under `scheme`.
pub fn registration(scheme: Scheme, target: &str, secret: &Secret) -> Value {
    match scheme {
        Scheme::HmacSignature | Scheme::AuthorizationHeader => json!({
            "targetUrl": target,
            "type": scheme.as_str(),
            "secret": secret.expose(),
        }),
        Scheme::BasicAuthentication => json!({
            "targetUrl": target,
            "type": scheme.as_str(),
            "username": BASIC_USERNAME,
            "password": secret.expose(),
        }),
    }
}

/// Whether Webex certainly did not apply a PATCH that failed this way.
pub fn outcome_known(e: &AppUrlError) -> bool {
    match e {
        AppUrlError::Unauthorized(_) | AppUrlError::Gone(_) | AppUrlError::Url(_) => true,
        AppUrlError::Status { status, .. } => *status < 500,
        AppUrlError::Network(_) => false,
    }
}

/// How long an offer counts as in flight: the PATCH, a token refresh and a second PATCH.
pub fn in_flight_for(shared: &TenantShared) -> Duration {
    Duration::from_secs(3 * shared.deps().config.webex.http_timeout_secs.max(1) + 5)
}

/// Offers `fresh` under `scheme` (see [`offer`]) in the tenant's stored secrets; returns the
/// secret to PATCH.
pub async fn offer_stored(
    shared: &TenantShared,
    fresh: &Secret,
    scheme: Scheme,
    force: bool,
) -> Result<Secret, RotateError> {
    let overlap = shared.deps().config.security.overlap();
    let in_flight = in_flight_for(shared);
    let outcome = Mutex::new(None);
    shared
        .tokens
        .update_secrets_if(|s| {
            let r = offer(
                s,
                fresh.clone(),
                scheme,
                Utc::now(),
                in_flight,
                overlap,
                force,
            );
            let wrote = r.is_ok();
            *outcome.lock().expect("outcome lock") = Some(r);
            wrote
        })
        .await
        .map_err(|e| RotateError::Store {
            message: e.to_string(),
            unavailable: e.is_unavailable(),
        })?;
    match outcome.into_inner().expect("outcome lock") {
        Some(Ok(secret)) => Ok(secret),
        Some(Err(Busy::InFlight(at))) => Err(RotateError::InFlight(at)),
        Some(Err(Busy::Overlap(until))) => Err(RotateError::Overlap(until)),
        None => Err(RotateError::Store {
            message: "the offer was not applied".into(),
            unavailable: false,
        }),
    }
}

/// Confirms `secret` in the stored secrets (see [`confirm`]). Webex holds it now, whoever owns
/// the tenant: not fenced by the lease, and retried (with a pause) until it is recorded or
/// `in_flight_for` has passed; the offer stays acceptable meanwhile.
pub async fn confirm_stored(
    shared: &TenantShared,
    secret: &Secret,
    scheme: Scheme,
) -> Result<Rotated, RotateError> {
    let overlap = shared.deps().config.security.overlap();
    let deadline = tokio::time::Instant::now() + in_flight_for(shared);
    let mut pause = Duration::from_millis(100);
    loop {
        let outcome = Mutex::new(None);
        let result = shared
            .tokens
            .update_secrets_unfenced(|s| {
                let now = Utc::now();
                let until = confirm(s, secret, scheme, now, overlap);
                *outcome.lock().expect("outcome lock") = Some(Rotated {
                    rotated_at: now,
                    previous_valid_until: until,
                    scheme,
                });
            })
            .await;
        match result {
            Ok(_) => {
                return Ok(outcome
                    .into_inner()
                    .expect("outcome lock")
                    .expect("the change ran"));
            }
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(tenant = %shared.tenant_id, error = %e, "Webex took the new webhook secret; recording it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(RotateError::Store {
                    message: format!(
                        "Webex took the new secret but it could not be recorded ({e}); it stays accepted as an offer and the next rotation sends it again"
                    ),
                    unavailable: e.is_unavailable(),
                });
            }
        }
    }
}

/// Withdraws `secret` after a failed PATCH (see [`withdraw`]); a store error is logged (the
/// offer then simply expires).
/// [`withdraw_stored`] after a PATCH with the tenant's token failed with `e`: Webex may have
/// applied a PATCH left unanswered (then the offer stays acceptable for the overlap).
pub async fn withdraw_after(
    shared: &TenantShared,
    secret: &Secret,
    e: &super::WithToken<AppUrlError>,
) {
    let known = match e {
        super::WithToken::Token(_) => true,
        super::WithToken::Call(e) => outcome_known(e),
    };
    withdraw_stored(shared, secret, known).await;
}

pub async fn withdraw_stored(shared: &TenantShared, secret: &Secret, outcome_known: bool) {
    if let Err(e) = shared
        .tokens
        .update_secrets_unfenced(|s| withdraw(s, secret, outcome_known))
        .await
    {
        tracing::warn!(tenant = %shared.tenant_id, error = %e, "offered webhook secret not withdrawn; it expires by itself");
    }
}

/// Rotates the tenant's webhook secret now: offer, PATCH, confirm (see the module's doc).
/// Counted in `webhook_secret_rotations_total{result}`; a confirmed one writes a
/// `secret_rotated` lifecycle entry with `why`.
pub async fn rotate(shared: &TenantShared, why: Why) -> Result<Rotated, RotateError> {
    let result = try_rotate(shared).await;
    let metrics = shared.metrics();
    match &result {
        Ok(r) => {
            metrics.secret_rotation("rotated");
            shared
                .lifecycle_because("secret_rotated", Some(why.as_str()))
                .await;
            tracing::info!(
                tenant = %shared.tenant_id,
                why = why.as_str(),
                previous_valid_until = ?r.previous_valid_until,
                "webhook secret rotated"
            );
        }
        Err(e) => {
            metrics.secret_rotation(e.result());
            tracing::warn!(tenant = %shared.tenant_id, why = why.as_str(), error = %e, "webhook secret not rotated; the current one stays in force");
        }
    }
    result
}

/// Whether the tenant has a webhook that stays: not while a transport switch removes it (a
/// rotation's PATCH landing after the removal would register it again).
fn keeps_webhook(record: &crate::store::tenants::TenantRecord) -> bool {
    record.ingest.webhook()
        && record
            .transport_switch
            .as_ref()
            .is_none_or(|s| s.to.webhook())
}

async fn try_rotate(shared: &TenantShared) -> Result<Rotated, RotateError> {
    let record = shared.record();
    if !keeps_webhook(&record) {
        return Err(RotateError::NoWebhook);
    }
    if record.provisioning_state != ProvisioningState::Completed {
        return Err(RotateError::NotActive(record.provisioning_state.as_str()));
    }
    let deps = shared.deps();
    let scheme = deps.config.integration.webhook_auth;
    let fresh = new_webhook_secret();
    let secret = offer_stored(shared, &fresh, scheme, false).await?;
    let body = json!({
        "webhook": registration(scheme, &deps.webhook_url(&shared.tenant_id), &secret),
    });
    // Bounded, so the offer is never still being PATCHed once it stops counting as in flight.
    let bound = in_flight_for(shared).saturating_sub(Duration::from_secs(2));
    let answer = tokio::time::timeout(bound, shared.patch_app(&record.app_url, None, &body)).await;
    match answer {
        Ok(Ok(_)) => confirm_stored(shared, &secret, scheme).await,
        Ok(Err(WithToken::Token(e))) => {
            withdraw_stored(shared, &secret, true).await;
            Err(RotateError::Token(e.to_string()))
        }
        Ok(Err(WithToken::Call(e))) => {
            withdraw_stored(shared, &secret, outcome_known(&e)).await;
            Err(RotateError::Webex(e.to_string()))
        }
        Err(_) => {
            withdraw_stored(shared, &secret, false).await;
            Err(RotateError::Webex(format!(
                "no answer within {} s",
                bound.as_secs()
            )))
        }
    }
}

/// When the next periodic rotation is due (`None`: off, or the tenant has no webhook). An
/// overdue one is spread from `since` (a fixed time, such as when this owner started: a moving
/// "now" would push it back on every look).
pub async fn next_due(shared: &TenantShared, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let period = shared.deps().config.security.rotation_period()?;
    let record = shared.record();
    if !keeps_webhook(&record) || record.provisioning_state != ProvisioningState::Completed {
        return None;
    }
    let secrets = shared.tokens.secrets().await;
    Some(due_at(
        &secrets,
        record.created_at,
        period,
        &shared.tenant_id,
        since,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn with_current(secret: &str) -> TenantSecrets {
        TenantSecrets {
            webhook_secret: Some(Secret::new(secret)),
            ..TenantSecrets::default()
        }
    }

    #[test]
    fn a_confirmed_rotation_keeps_the_old_secret_for_the_overlap() {
        let mut s = with_current("old");
        let new = Secret::new("new");
        offer(
            &mut s,
            new.clone(),
            Scheme::HmacSignature,
            at(0),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        assert_eq!(
            s.webhook_secret,
            Some(Secret::new("old")),
            "old in force until confirmed"
        );
        let until = confirm(&mut s, &new, Scheme::HmacSignature, at(10), 15 * MIN);
        assert_eq!(until, Some(at(10 + 900)));
        assert_eq!(s.webhook_secret, Some(new));
        assert_eq!(s.previous_webhook_secret, Some(Secret::new("old")));
        assert_eq!(s.previous_valid_until, Some(at(910)));
        assert!(s.offered_webhook.is_none());
        assert_eq!(s.webhook_rotated_at, Some(at(10)));
    }

    #[test]
    fn a_refused_patch_leaves_everything_as_it_was() {
        let mut s = with_current("old");
        let before = serde_json::to_string(&s).unwrap();
        let new = Secret::new("new");
        offer(
            &mut s,
            new.clone(),
            Scheme::HmacSignature,
            at(0),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        withdraw(&mut s, &new, true);
        assert_eq!(serde_json::to_string(&s).unwrap(), before);
    }

    #[test]
    fn an_unknown_outcome_keeps_the_offer_acceptable_and_sends_it_again() {
        let mut s = with_current("old");
        let new = Secret::new("new");
        offer(
            &mut s,
            new.clone(),
            Scheme::HmacSignature,
            at(0),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        withdraw(&mut s, &new, false);
        let o = s.offered_webhook.as_ref().unwrap();
        assert!(!o.in_flight);
        assert_eq!(
            o.until,
            at(60 + 900 + 86_400),
            "acceptable a day beyond the overlap"
        );
        assert_eq!(s.webhook_secret, Some(Secret::new("old")));
        // The next rotation starts at once and PATCHes the same secret again: Webex may hold it.
        let again = offer(
            &mut s,
            Secret::new("newer"),
            Scheme::HmacSignature,
            at(600),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        assert_eq!(again, new);
        confirm(&mut s, &again, Scheme::HmacSignature, at(601), 15 * MIN);
        assert_eq!(s.webhook_secret, Some(new));
        assert!(s.offered_webhook.is_none());
    }

    #[test]
    fn a_reactivation_within_an_overlap_keeps_every_secret_webex_may_use() {
        let mut s = with_current("s0");
        let s1 = Secret::new("s1");
        offer(
            &mut s,
            s1.clone(),
            Scheme::HmacSignature,
            at(0),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        confirm(&mut s, &s1, Scheme::HmacSignature, at(1), 15 * MIN);
        // A re-activation two minutes later (forced), while s0's overlap runs.
        let s2 = offer(
            &mut s,
            Secret::new("s2"),
            Scheme::HmacSignature,
            at(120),
            MIN,
            15 * MIN,
            true,
        )
        .unwrap();
        confirm(&mut s, &s2, Scheme::HmacSignature, at(121), 15 * MIN);
        assert_eq!(s.webhook_secret, Some(Secret::new("s2")));
        assert_eq!(s.previous_webhook_secret, Some(s1));
        let kept: Vec<_> = s
            .also_accepted
            .iter()
            .map(|a| (a.secret.expose().to_string(), a.until))
            .collect();
        assert_eq!(
            kept,
            vec![("s0".to_string(), at(901))],
            "s0 until its own deadline"
        );
        // An unsettled offer displaced by a forced one stays acceptable too.
        let s3 = Secret::new("s3");
        let mut t = with_current("cur");
        offer(
            &mut t,
            s3.clone(),
            Scheme::HmacSignature,
            at(0),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        withdraw(&mut t, &s3, false);
        offer(
            &mut t,
            Secret::new("s4"),
            Scheme::HmacSignature,
            at(5),
            MIN,
            15 * MIN,
            true,
        )
        .unwrap();
        assert_eq!(t.also_accepted.len(), 1);
        assert_eq!(t.also_accepted[0].secret, s3);
    }

    #[test]
    fn rotations_do_not_overlap_unless_forced() {
        let mut s = with_current("old");
        let new = Secret::new("new");
        offer(
            &mut s,
            new.clone(),
            Scheme::HmacSignature,
            at(0),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        assert_eq!(
            offer(
                &mut s,
                Secret::new("x"),
                Scheme::HmacSignature,
                at(30),
                MIN,
                15 * MIN,
                false
            ),
            Err(Busy::InFlight(at(0)))
        );
        // An offer whose replica died mid-PATCH stops blocking after its in-flight time.
        let mut stale = s.clone();
        offer(
            &mut stale,
            Secret::new("y"),
            Scheme::HmacSignature,
            at(61),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        confirm(&mut s, &new, Scheme::HmacSignature, at(10), 15 * MIN);
        assert_eq!(
            offer(
                &mut s,
                Secret::new("x"),
                Scheme::HmacSignature,
                at(20),
                MIN,
                15 * MIN,
                false
            ),
            Err(Busy::Overlap(at(910)))
        );
        offer(
            &mut s,
            Secret::new("x"),
            Scheme::HmacSignature,
            at(911),
            MIN,
            15 * MIN,
            false,
        )
        .unwrap();
        offer(
            &mut s,
            Secret::new("z"),
            Scheme::HmacSignature,
            at(912),
            MIN,
            15 * MIN,
            true,
        )
        .unwrap();
    }

    #[test]
    fn the_periodic_rotation_is_jittered_per_tenant_and_spreads_overdue_ones() {
        let day = Duration::from_secs(86_400);
        let period = 30 * day;
        let mut s = with_current("old");
        s.webhook_rotated_at = Some(at(0));
        let dues: Vec<_> = (0..50)
            .map(|i| due_at(&s, at(0), period, &format!("tenant-{i}"), at(1)))
            .collect();
        for d in &dues {
            assert!(*d > at(27 * 86_400) && *d <= at(30 * 86_400), "{d}");
        }
        let distinct: std::collections::BTreeSet<_> = dues.iter().collect();
        assert!(distinct.len() > 45, "jitter differs per tenant");
        assert_eq!(
            due_at(&s, at(0), period, "tenant-1", at(1)),
            due_at(&s, at(0), period, "tenant-1", at(100)),
            "stable"
        );
        // Overdue (a record from before rotations, created long ago): within 3 days of the
        // fixed `since`, the same whenever it is asked.
        let old = TenantSecrets::default();
        let since = at(400 * 86_400);
        let d = due_at(&old, at(0), period, "tenant-1", since);
        assert!(d >= since && d <= since + chrono::Duration::days(3), "{d}");
        assert_eq!(d, due_at(&old, at(0), period, "tenant-1", since));
        assert_eq!(retry_after(period), RETRY_MAX);
        assert_eq!(retry_after(Duration::from_secs(5)), RETRY_MIN);
    }
}

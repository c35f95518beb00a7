//! The secrets a tenant's webhooks may be signed with, readable by every request without
//! waiting for anything: the current secret, the previous one while its rotation's overlap
//! lasts, an offered one (its PATCH in flight or of unknown outcome) and older ones still
//! accepted (see [`super::rotation`]). They are stored in the tenant's sealed secrets beside
//! the tokens, under one compare-and-set; whoever stores or reads those secrets (the
//! [`super::TokenKeeper`]) refreshes this view, and ingest reads it ([`TenantShared::webhook`]).
//!
//! [`TenantShared::webhook`]: super::TenantShared
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::protocol::webhook::{Credentials, Scheme};
use crate::secret::Secret;
use crate::store::tenants::TenantSecrets;

/// One tenant's webhook secrets as last stored.
#[derive(Default)]
pub struct WebhookSecrets(Mutex<Accepted>);

#[derive(Clone, Default)]
struct Accepted {
    current: Option<(Secret, Scheme)>,
    previous: Option<(Secret, Scheme, DateTime<Utc>)>,
    /// A secret offered to Webex and not confirmed, and older ones still accepted.
    others: Vec<(Secret, Scheme, DateTime<Utc>)>,
}

impl WebhookSecrets {
    /// Takes the webhook secrets of `s` (stored or just read).
    pub(super) fn refresh(&self, s: &TenantSecrets) {
        let accepted = Accepted {
            current: s.webhook_secret.clone().map(|x| (x, s.webhook_scheme)),
            previous: s
                .previous_webhook_secret
                .clone()
                .zip(s.previous_valid_until)
                .map(|(x, until)| (x, s.previous_webhook_scheme, until)),
            others: s
                .offered_webhook
                .iter()
                .map(|o| (o.secret.clone(), o.scheme, o.until))
                .chain(
                    s.also_accepted
                        .iter()
                        .map(|a| (a.secret.clone(), a.scheme, a.until)),
                )
                .collect(),
        };
        *self.0.lock().expect("webhook secrets lock") = accepted;
    }

    /// Forgets them (deprovisioning).
    pub(super) fn clear(&self) {
        *self.0.lock().expect("webhook secrets lock") = Accepted::default();
    }

    /// How webhooks of this tenant authenticate now; `None` before any secret exists. Besides
    /// the current secret, the previous one verifies while its rotation's overlap lasts, and an
    /// offered one until its own deadline.
    pub(crate) fn credentials(&self) -> Option<Credentials> {
        let w = self.0.lock().expect("webhook secrets lock").clone();
        let now = Utc::now();
        let mut also: Vec<_> = w
            .previous
            .into_iter()
            .chain(w.others)
            .filter(|(_, _, until)| *until > now)
            .map(|(s, scheme, _)| scheme.with_secret(s))
            .collect();
        let current = match w.current {
            Some((s, scheme)) => scheme.with_secret(s),
            // A first activation's secret, offered and not confirmed yet.
            None if !also.is_empty() => also.remove(0),
            None => return None,
        };
        Some(Credentials { current, also })
    }
}

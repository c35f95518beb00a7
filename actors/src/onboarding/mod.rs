//! Onboarding: how a customer organization becomes a tenant. The operator invites a customer
//! (a one-time code), Webex posts an HTTPS activation that waits for its setup page
//! (a *pending* activation), and then either the customer's admin enters the code on that page
//! or the operator approves (or rejects) it in the console. The first decider wins; a failed
//! activation gives the code back. The edge reads requests, calls these use cases and renders
//! what they answer: it never reaches the store.
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::protocol::jwt::ActivationClaims;
use crate::registry::{ActivateError, Registry};
use crate::store::invitations::Redeemed;
use crate::store::pending::PendingStore;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

pub use crate::store::invitations::{Invitation, Use};
pub use crate::store::tenants::Customer;

/// A pending HTTPS activation, stored sealed until its setup page is completed.
#[derive(Serialize, Deserialize)]
pub struct Pending {
    pub claims: ActivationClaims,
    /// Set once the admin completed the setup (or the operator approved it).
    pub tenant_id: Option<String>,
    /// Set when the operator rejected it in the console.
    #[serde(default)]
    pub rejected: bool,
}

impl Pending {
    /// A new activation, waiting for its setup page.
    pub fn new(claims: ActivationClaims) -> Self {
        Self {
            claims,
            tenant_id: None,
            rejected: false,
        }
    }

    /// Started or rejected: nothing is left to decide.
    pub fn is_decided(&self) -> bool {
        self.tenant_id.is_some() || self.rejected
    }
}

/// Why a pending activation cannot be shown or acted on.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("unknown or expired activation")]
    NotFound,
    #[error("the activation cannot be read")]
    Unreadable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a customer's invitation code on the setup page came to.
#[derive(Debug)]
pub enum Submitted {
    /// Nothing (more) to do: the activation started or was rejected, possibly by the operator
    /// meanwhile (a right code is given back then). Show the page.
    Settled,
    /// The code was right: the activation started with the invitation's customer.
    Completed {
        tenant_id: String,
        customer: Customer,
    },
    /// Too many wrong codes for this activation.
    Locked,
    /// Too many wrong codes from this address this hour.
    Limited,
    /// The code is wrong, used or expired (`why`); `left` attempts remain.
    Refused { why: &'static str, left: u64 },
}

/// Why a code could not be tried.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Pending(#[from] PendingError),
    #[error("the activation could not start: {0}")]
    Activation(ActivateError),
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        Self::Pending(PendingError::Store(e))
    }
}

/// The operator's decision on a pending activation.
pub enum Decision {
    /// Approve, optionally for a customer of the partner's books (`id` empty: none; `name`
    /// empty: the organization's name).
    Approve {
        customer_id: String,
        name: String,
    },
    Reject,
}

/// Why a decision was not made.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Pending(#[from] PendingError),
    #[error("already decided")]
    AlreadyDecided,
    #[error("the activation could not start: {0}")]
    Activation(ActivateError),
}

impl From<StoreError> for DecideError {
    fn from(e: StoreError) -> Self {
        Self::Pending(PendingError::Store(e))
    }
}

/// The onboarding use cases. Cheap to share.
pub struct Onboarding {
    registry: Arc<Registry>,
    pending: PendingStore,
    store: Store,
    config: Arc<Config>,
    metrics: Metrics,
}

impl Onboarding {
    pub fn new(registry: Arc<Registry>) -> Self {
        let deps = registry.deps().clone();
        Self {
            pending: PendingStore::new(deps.store().clone(), deps.tenants().sealer().clone()),
            store: deps.store().clone(),
            config: deps.config().clone(),
            metrics: deps.metrics().clone(),
            registry,
        }
    }

    // ---- pending activations ----

    /// A pending activation.
    pub async fn pending(&self, session: &str) -> Result<Pending, PendingError> {
        let bytes = self
            .pending
            .get(session)
            .await?
            .ok_or(PendingError::NotFound)?;
        serde_json::from_slice(&bytes).map_err(|_| PendingError::Unreadable)
    }

    /// Keeps a pending activation for `activation.pending_ttl_secs`.
    pub async fn keep(&self, session: &str, p: &Pending) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(p).expect("pending activation serializes");
        self.pending
            .put(session, &bytes, self.config.activation.pending_ttl_secs)
            .await
    }

    /// Whether a pending activation is stored under `session`.
    pub async fn is_pending(&self, session: &str) -> Result<bool, StoreError> {
        Ok(self.pending.get(session).await?.is_some())
    }

    /// The newest `limit` pending activations that can be read, with their sessions.
    pub async fn pending_list(&self, limit: usize) -> Result<Vec<(String, Pending)>, StoreError> {
        let mut out = Vec::new();
        for session in self.pending.sessions(limit).await? {
            if let Ok(p) = self.pending(&session).await {
                out.push((session, p));
            }
        }
        Ok(out)
    }

    // ---- invitations ----

    /// A new invitation: the record and its one-time code (shown once, never stored).
    pub async fn invite(
        &self,
        customer: Customer,
        ttl: Duration,
    ) -> Result<(Invitation, String), StoreError> {
        self.store.create_invitation(customer, ttl).await
    }

    /// The newest `limit` invitations and how they were used.
    pub async fn invitations(
        &self,
        limit: usize,
    ) -> Result<Vec<(Invitation, Option<Use>)>, StoreError> {
        self.store.list_invitations(limit).await
    }

    // ---- the setup page ----

    /// Wrong codes so far for `session` (0 when Redis cannot say: the form is shown and the
    /// submission counts).
    pub async fn setup_failures(&self, session: &str, addr: &str) -> u64 {
        self.store
            .setup_failures(session, addr)
            .await
            .map(|(s, _)| s)
            .unwrap_or(0)
    }

    /// The customer's admin enters `code` on the setup page of `session`, from `addr`. The
    /// attempt is counted before the code is tried (and given back when it is right), so
    /// parallel posts cannot all pass the check before any is counted. A right code starts
    /// the activation with the invitation's customer — unless the operator decided first; a
    /// failed activation gives the code back. Counted in `setup_attempts_total`.
    pub async fn submit_code(
        &self,
        session: &str,
        addr: &str,
        code: &str,
    ) -> Result<Submitted, SubmitError> {
        let count = |r: &str| self.metrics.setup_attempt(r);
        let mut pending = self.pending(session).await?;
        if pending.is_decided() {
            return Ok(Submitted::Settled);
        }
        let act = &self.config.activation;
        let ttl = Duration::from_secs(act.pending_ttl_secs);
        let (tried, from_addr) = self.store.count_setup_failure(session, addr, ttl).await?;
        if tried > act.setup_max_attempts {
            count("locked");
            return Ok(Submitted::Locked);
        }
        if from_addr > act.setup_attempts_per_address {
            count("limited");
            return Ok(Submitted::Limited);
        }
        let redeemed = if code.trim().is_empty() || code.len() > 64 {
            Redeemed::Unknown
        } else {
            self.store.redeem_invitation(code, session).await?
        };
        let inv = match redeemed {
            Redeemed::Fresh(inv) => inv,
            refused => {
                let why = match refused {
                    Redeemed::Expired => "expired",
                    Redeemed::Used => "used",
                    _ => "wrong_code",
                };
                count(why);
                let left = act.setup_max_attempts.saturating_sub(tried);
                return Ok(Submitted::Refused { why, left });
            }
        };
        let result = self.activate_with(session, &mut pending, &inv).await;
        // A right code's attempt is given back when the activation started or was decided
        // by the operator meanwhile (a failed activation keeps it counted, as before).
        let started_or_decided = matches!(
            result,
            Ok(_) | Err(SubmitError::Pending(PendingError::Store(_)))
        );
        if started_or_decided && let Err(e) = self.store.forgive_setup_attempt(session, addr).await
        {
            tracing::debug!(error = %e, "a right code's attempt not given back");
        }
        let not_started = result.is_err() || matches!(result, Ok(Submitted::Settled));
        if not_started && let Err(e) = self.store.release_invitation(&inv.digest).await {
            tracing::warn!(error = %e, "invitation not released (its activation did not start)");
        }
        match &result {
            Ok(Submitted::Settled) => count("decided"),
            Ok(Submitted::Completed {
                tenant_id,
                customer,
            }) => {
                count("completed");
                tracing::info!(customer = %customer.id, tenant = %tenant_id, "setup completed with an invitation");
            }
            _ => {}
        }
        result
    }

    /// The activation of a right code: first decider wins (the operator may be approving or
    /// rejecting it right now).
    async fn activate_with(
        &self,
        session: &str,
        pending: &mut Pending,
        inv: &Invitation,
    ) -> Result<Submitted, SubmitError> {
        let Some(claim) = self.claim_decision(session).await? else {
            return Ok(Submitted::Settled);
        };
        match self
            .registry
            .activate(&pending.claims, Some(inv.customer.clone()))
            .await
        {
            Ok((h, _)) => pending.tenant_id = Some(h.tenant_id().to_string()),
            Err(e) => {
                self.release_decision(session, &claim).await;
                return Err(SubmitError::Activation(e));
            }
        }
        if let Err(e) = self.keep(session, pending).await {
            tracing::warn!(error = %e, "setup state not stored; activation continues");
        }
        Ok(Submitted::Completed {
            tenant_id: pending.tenant_id.clone().unwrap_or_default(),
            customer: inv.customer.clone(),
        })
    }

    // ---- the operator's decision ----

    /// The operator approves or rejects the pending activation of `session`; first decider
    /// wins. Returns the organization's name.
    pub async fn decide(&self, session: &str, decision: Decision) -> Result<String, DecideError> {
        let mut p = self.pending(session).await?;
        if p.is_decided() {
            return Err(DecideError::AlreadyDecided);
        }
        let claim = self
            .claim_decision(session)
            .await?
            .ok_or(DecideError::AlreadyDecided)?;
        match decision {
            Decision::Reject => p.rejected = true,
            Decision::Approve { customer_id, name } => {
                let (id, name) = (customer_id.trim(), name.trim());
                let customer = (!id.is_empty()).then(|| Customer {
                    id: cut(id, 200),
                    name: cut(
                        if name.is_empty() {
                            &p.claims.org_name
                        } else {
                            name
                        },
                        200,
                    ),
                });
                match self.registry.activate(&p.claims, customer).await {
                    Ok((h, _)) => p.tenant_id = Some(h.tenant_id().to_string()),
                    Err(e) => {
                        self.release_decision(session, &claim).await;
                        return Err(DecideError::Activation(e));
                    }
                }
            }
        }
        if let Err(e) = self.keep(session, &p).await {
            if p.rejected {
                // Not rejected after all: the decision is open again (an approval keeps its
                // claim: the tenant exists).
                self.release_decision(session, &claim).await;
            }
            return Err(e.into());
        }
        Ok(p.claims.org_name)
    }

    /// Claims the decision on `session` (`Ok(None)`: another decided). On an error the claim
    /// is given back (it may have been made before the error).
    async fn claim_decision(&self, session: &str) -> Result<Option<String>, StoreError> {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let ttl = self.config.activation.pending_ttl_secs;
        match self.pending.claim_decision(session, &token, ttl).await {
            Ok(true) => Ok(Some(token)),
            Ok(false) => Ok(None),
            Err(e) => {
                self.release_decision(session, &token).await;
                Err(e)
            }
        }
    }

    /// Gives back a decision this caller claimed (nothing was decided).
    async fn release_decision(&self, session: &str, token: &str) {
        if let Err(e) = self.pending.release_decision(session, token).await {
            tracing::warn!(error = %e, "pending activation's decision not given back");
        }
    }
}

/// `s` cut to `max` characters (with "…" when cut).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

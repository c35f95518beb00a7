//! Storing what the keeper holds: the sealed secrets under compare-and-set, fenced by the
//! lease epoch (or by an exchange's intent), adopted from Redis when another writer got there
//! first; refresh tokens adopted from an update action; the webhook secrets' view refreshed.
use chrono::Utc;

use super::{AccessToken, Backoff, CAS_ATTEMPTS, Persisted, TokenKeeper};
use crate::secret::Secret;
use crate::store::StoreError;
use crate::store::tenants::{CasOutcome, ExchangeIntent, TenantSecrets};

/// The access token stored with the secrets, if any.
pub(super) fn stored_access_token(secrets: &TenantSecrets) -> Option<AccessToken> {
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
pub(super) enum Fence<'a> {
    /// The result of this exchange (fenced by its epoch; removes its intent).
    Exchange(&'a ExchangeIntent),
    /// Fenced by this epoch, if any.
    Epoch(Option<u64>),
}

impl TokenKeeper {
    /// Compare-and-set write of `change` applied to the secrets; after a lost race the stored
    /// secrets are reloaded and `change` decides again (returning false: not applicable to
    /// what is stored now, which is then simply adopted). `fence` limits the write to the
    /// lease holder. Returns whether `change` was written.
    pub(super) async fn persist(
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
    pub(super) async fn reload_locked(&self, p: &mut Persisted) -> Result<(), StoreError> {
        if let Some(stored) = self.deps.tenants.load(&self.org).await? {
            self.adopt_locked(p, stored.secrets, stored.token_version);
        }
        Ok(())
    }

    /// Adopts secrets written elsewhere (another replica, an action) if newer than ours.
    pub(super) fn adopt_locked(&self, p: &mut Persisted, secrets: TenantSecrets, version: u64) {
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
}

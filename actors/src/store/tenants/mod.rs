//! Tenant records in Redis. Each organization has one hash `<p>:{<org>}:tenant` with the
//! public record (JSON), the encrypted secrets, a `token_version` for compare-and-set, and
//! message counters; `<p>:tenant_ids` maps the stable tenant id to its organization.
//!
//! Secrets (refresh token, access token, webhook secrets) are one AES-GCM blob bound to the
//! organization; they are never written in plain text. A write of secrets names the version it
//! was derived from and fails if another writer got there first, so an older refresh token can
//! never overwrite a newer one.
//!
//! # Layout
//! - this file: the domain types and [`Tenants`]' records and their compare-and-set
//!   (`cas_secrets.lua`, `cas_record.lua`).
//! - `intents`: the exchange intent a refresh leaves behind ([`ExchangeIntent`]).
//! - `lifecycle`: the `<p>:tenants` lifecycle stream.
//! - `purge`: deprovisioning (secrets deleted, streams purged).
mod intents;
mod lifecycle;
mod purge;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use super::{Store, StoreError};
use crate::config::IngestMode;
use crate::secret::Secret;

pub use intents::{BeginExchange, ExchangeIntent};

/// Where an organization's activation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisioningState {
    Provisioning,
    Completed,
    Error,
    Deprovisioned,
}

impl ProvisioningState {
    pub const ALL: [ProvisioningState; 4] = [
        Self::Provisioning,
        Self::Completed,
        Self::Error,
        Self::Deprovisioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Completed => "completed",
            Self::Error => "error",
            Self::Deprovisioned => "deprovisioned",
        }
    }
}

/// Whether the tenant's tokens work (the healthCheck `tokensState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokensState {
    Valid,
    Invalid,
    Unknown,
}

impl TokensState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Unknown => "unknown",
        }
    }
}

/// The last failure of a tenant, with the trackingId quoted to support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    #[serde(rename = "trackingId")]
    pub tracking_id: String,
    pub description: String,
    pub at: DateTime<Utc>,
}

/// The non-secret record of one tenant (one customer organization).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant_id: String,
    /// The JWT `sub`: the Webex organization id.
    pub org_id: String,
    pub org_name: String,
    pub region: String,
    pub provisioning_state: ProvisioningState,
    pub tokens_state: TokensState,
    pub scopes: Vec<String>,
    pub xapi_access: serde_json::Value,
    pub manifest_version: Option<String>,
    pub ingest: IngestMode,
    pub app_url: String,
    pub manifest_url: String,
    pub oauth_url: String,
    pub webexapis_base_url: String,
    pub poll_url: Option<String>,
    pub last_error: Option<LastError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The partner's own customer id and name (from the invitation the customer's admin
    /// activated with): the activation PATCH's `customer`. Absent: the tenant id and org name.
    #[serde(default)]
    pub customer: Option<Customer>,
    /// The jti of the activation JWT that last (re)activated the tenant: a retry of an
    /// activation answered 503 finds here that it took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_jti: Option<String>,
    /// A change of transport under way (see `crate::tenant::transport`): recorded here so
    /// that whichever replica owns the tenant finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_switch: Option<TransportSwitch>,
}

/// A switch between webhook and queue, made before it breaks: the new transport is enabled
/// (`ingest` then reads both), both are read for `activation.transport_overlap_secs`, then the
/// old one is removed (`ingest` becomes `to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSwitch {
    /// The mode when the switch was asked for.
    pub from: IngestMode,
    /// The mode asked for.
    pub to: IngestMode,
    pub phase: SwitchPhase,
    pub requested_at: DateTime<Utc>,
    /// When the old transport is removed (set once the new one is enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_until: Option<DateTime<Utc>>,
    /// The request's trackingId, in the log line of each step (support finds them by it).
    #[serde(rename = "trackingId")]
    pub tracking_id: String,
}

/// Where a transport switch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchPhase {
    /// The PATCH enabling the new transport is being sent.
    Enabling,
    /// Both transports are read until `overlap_until`.
    Overlap,
    /// The PATCH removing the old transport is due or being sent.
    Removing,
}

impl SwitchPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabling => "enabling",
            Self::Overlap => "overlap",
            Self::Removing => "removing",
        }
    }
}

/// A partner's customer: who an organization is in the partner's own books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub name: String,
}

/// The tenant's secrets, stored sealed as one blob.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TenantSecrets {
    pub refresh_token: Secret,
    pub access_token: Option<Secret>,
    pub access_expires_at: Option<DateTime<Utc>>,
    /// The current webhook secret (hmac_signature / authorization_header).
    pub webhook_secret: Option<Secret>,
    /// The secret before the last rotation, accepted until `previous_valid_until`.
    pub previous_webhook_secret: Option<Secret>,
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// The scheme of `webhook_secret` (absent in records written before schemes: HMAC).
    #[serde(default)]
    pub webhook_scheme: crate::protocol::webhook::Scheme,
    /// The scheme of `previous_webhook_secret`.
    #[serde(default)]
    pub previous_webhook_scheme: crate::protocol::webhook::Scheme,
    /// A new secret sent to Webex (or about to be) whose PATCH has not been confirmed: it
    /// verifies too until `OfferedSecret::until` (see `crate::tenant::rotation`).
    #[serde(default)]
    pub offered_webhook: Option<OfferedSecret>,
    /// Earlier secrets still accepted until their own deadline: a previous secret displaced
    /// by a second rotation within its overlap (a re-activation), an offer of unknown outcome
    /// displaced by a new offer. Expired ones are pruned on every rotation.
    #[serde(default)]
    pub also_accepted: Vec<AcceptedSecret>,
    /// When the current webhook secret was confirmed by Webex (the periodic rotation counts
    /// from it; absent in records written before rotations).
    #[serde(default)]
    pub webhook_rotated_at: Option<DateTime<Utc>>,
}

/// A webhook secret accepted until a deadline.
#[derive(Clone, Serialize, Deserialize)]
pub struct AcceptedSecret {
    pub secret: Secret,
    pub scheme: crate::protocol::webhook::Scheme,
    pub until: DateTime<Utc>,
}

/// A webhook secret offered to Webex in a PATCH not (yet) confirmed.
#[derive(Clone, Serialize, Deserialize)]
pub struct OfferedSecret {
    pub secret: Secret,
    pub scheme: crate::protocol::webhook::Scheme,
    /// When it was offered.
    pub at: DateTime<Utc>,
    /// Accepted on webhooks until then.
    pub until: DateTime<Utc>,
    /// Its PATCH is (or may still be) in flight: another rotation waits.
    pub in_flight: bool,
}

impl std::fmt::Debug for TenantSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSecrets")
            .field("access_expires_at", &self.access_expires_at)
            .finish_non_exhaustive()
    }
}

/// A record with its secrets and the version the secrets were read at.
#[derive(Debug, Clone)]
pub struct StoredTenant {
    pub record: TenantRecord,
    pub secrets: TenantSecrets,
    pub token_version: u64,
    pub record_version: u64,
    pub received: BTreeMap<String, u64>,
}

/// Hash fields of `<p>:{<org>}:tenant`.
mod field {
    pub const RECORD: &str = "record";
    pub const SECRETS: &str = "secrets";
    pub const TOKEN_VERSION: &str = "token_version";
    /// Bumped by every write of the record (compare-and-set across replicas).
    pub const RECORD_VERSION: &str = "record_version";
    /// Message counters are `received:<source>`.
    pub const RECEIVED_PREFIX: &str = "received:";
    // `exchange_intent` (an exchange of the refresh token in flight, [`ExchangeIntent`])
    // and `lease_epoch` are read and written by the scripts only.
}

/// The outcome of a compare-and-set of the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the new version.
    Written(u64),
    /// Someone else wrote first: reload and decide again.
    Stale,
    /// The lease epoch moved on: this replica no longer owns the tenant.
    Fenced,
}

/// The secrets blob is bound to its organization.
fn secrets_context(org: &str) -> String {
    format!("tenant:{org}:secrets")
}

/// The store's view of tenants, with the sealer for their secrets.
#[derive(Clone)]
pub struct Tenants {
    store: Store,
    sealer: Sealer,
    /// Compare-and-set of the secrets (see cas_secrets.lua).
    cas: redis::Script,
    /// Compare-and-set of the record (see cas_record.lua).
    cas_record: redis::Script,
}

impl Tenants {
    pub fn new(store: Store, sealer: Sealer) -> Self {
        Self {
            store,
            sealer,
            cas: redis::Script::new(include_str!("cas_secrets.lua")),
            cas_record: redis::Script::new(include_str!("cas_record.lua")),
        }
    }

    /// Tells every replica that `org`'s record or secrets changed: counts the change in
    /// `<p>:tenant_changes` (what a resync compares), then publishes the org on `<p>:changes`
    /// (followed at once). Best effort: replicas also reload everything every
    /// `scaling.full_resync_secs` and a tenant on a failed signature check.
    pub async fn announce(&self, org: &str) {
        let Ok(mut conn) = self.store.conn() else {
            return;
        };
        let keys = self.store.keys();
        let counted: Result<i64, _> = self
            .store
            .bounded(conn.hincr(keys.tenant_changes(), org, 1))
            .await;
        let published: Result<i64, _> = self
            .store
            .bounded(conn.publish(keys.changes_channel(), org))
            .await;
        if let Some(e) = counted.err().or(published.err()) {
            tracing::debug!(org, error = %e, "change announcement not complete");
        }
    }

    /// How many changes were announced per organization (`<p>:tenant_changes`).
    pub async fn change_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.store
            .query(&redis::Cmd::hgetall(self.store.keys().tenant_changes()))
            .await
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The tenant id of `org`, creating one if the organization is new. Stable across
    /// re-activations and safe under concurrent activations of one organization.
    pub async fn tenant_id_for(&self, org: &str) -> Result<String, StoreError> {
        let mut conn = self.store.conn()?;
        let by_org = self.store.keys().tenant_by_org();
        let candidate = uuid::Uuid::new_v4().to_string();
        let _: bool = self
            .store
            .bounded(conn.hset_nx(&by_org, org, &candidate))
            .await?;
        let id: String = self.store.bounded(conn.hget(&by_org, org)).await?;
        if id == candidate {
            let _: () = self
                .store
                .bounded(conn.hset(self.store.keys().tenant_ids(), &id, org))
                .await?;
        }
        Ok(id)
    }

    /// The organization of a tenant id, if known.
    pub async fn org_of(&self, tenant_id: &str) -> Result<Option<String>, StoreError> {
        self.store
            .query(&redis::Cmd::hget(self.store.keys().tenant_ids(), tenant_id))
            .await
    }

    /// Every (tenant id, org) known.
    pub async fn all_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        let map: BTreeMap<String, String> = self
            .store
            .query(&redis::Cmd::hgetall(self.store.keys().tenant_ids()))
            .await?;
        Ok(map.into_iter().collect())
    }

    /// Loads one tenant with decrypted secrets.
    pub async fn load(&self, org: &str) -> Result<Option<StoredTenant>, StoreError> {
        let map: BTreeMap<String, String> = self
            .store
            .query(&redis::Cmd::hgetall(self.store.keys().tenant(org)))
            .await?;
        let Some(record) = map.get(field::RECORD) else {
            return Ok(None);
        };
        let record: TenantRecord = serde_json::from_str(record)
            .map_err(|e| StoreError::Corrupt(format!("tenant record of {org}: {e}")))?;
        let secrets = match map.get(field::SECRETS) {
            Some(sealed) => {
                let plain = self
                    .sealer
                    .open(sealed, &secrets_context(org))
                    .map_err(|e| StoreError::Corrupt(format!("secrets of {org}: {e}")))?;
                serde_json::from_slice(&plain)
                    .map_err(|e| StoreError::Corrupt(format!("secrets of {org}: {e}")))?
            }
            None => TenantSecrets::default(),
        };
        let token_version = map
            .get(field::TOKEN_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let record_version = map
            .get(field::RECORD_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let received = map
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(field::RECEIVED_PREFIX)
                    .map(|src| (src.to_string(), v.parse().unwrap_or(0)))
            })
            .collect();
        Ok(Some(StoredTenant {
            record,
            secrets,
            token_version,
            record_version,
            received,
        }))
    }

    /// The stored `(record_version, token_version)` of `org` (0 where absent): what a replica
    /// compares before loading the whole tenant.
    pub async fn versions(&self, org: &str) -> Result<(u64, u64), StoreError> {
        let (record, token): (Option<u64>, Option<u64>) = self
            .store
            .query(
                redis::cmd("HMGET")
                    .arg(self.store.keys().tenant(org))
                    .arg(field::RECORD_VERSION)
                    .arg(field::TOKEN_VERSION),
            )
            .await?;
        Ok((record.unwrap_or(0), token.unwrap_or(0)))
    }

    /// The stored record and its version (None: no record).
    pub async fn load_record(&self, org: &str) -> Result<Option<(TenantRecord, u64)>, StoreError> {
        let (record, version): (Option<String>, Option<u64>) = self
            .store
            .query(
                redis::cmd("HMGET")
                    .arg(self.store.keys().tenant(org))
                    .arg(field::RECORD)
                    .arg(field::RECORD_VERSION),
            )
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let record: TenantRecord = serde_json::from_str(&record)
            .map_err(|e| StoreError::Corrupt(format!("tenant record of {org}: {e}")))?;
        Ok(Some((record, version.unwrap_or(0))))
    }

    /// Compare-and-set of the public record (not the secrets): `Ok(Some(new_version))`, or
    /// `Ok(None)` when another writer (another replica) got there first.
    pub async fn save_record(
        &self,
        record: &TenantRecord,
        expected_version: u64,
    ) -> Result<Option<u64>, StoreError> {
        let json = serde_json::to_string(record).expect("record serializes");
        let mut inv = self.cas_record.prepare_invoke();
        inv.key(self.store.keys().tenant(&record.org_id))
            .arg(expected_version)
            .arg(json);
        let v: i64 = self.store.invoke(&inv).await?;
        if v >= 0 {
            self.announce(&record.org_id).await;
        }
        Ok((v >= 0).then_some(v as u64))
    }

    /// Compare-and-set of the secrets (and optionally the record in the same step), fenced by
    /// the lease epoch when one is given.
    pub async fn save_secrets(
        &self,
        org: &str,
        expected_version: u64,
        secrets: &TenantSecrets,
        record: Option<&TenantRecord>,
        epoch: Option<u64>,
    ) -> Result<CasOutcome, StoreError> {
        self.cas_secrets(org, expected_version, secrets, record, epoch, None)
            .await
    }

    /// [`Tenants::save_secrets`] of the result of the exchange `intent` announced, fenced by
    /// its epoch; the intent is removed in the same step.
    pub async fn save_exchanged(
        &self,
        org: &str,
        expected_version: u64,
        secrets: &TenantSecrets,
        intent: &ExchangeIntent,
    ) -> Result<CasOutcome, StoreError> {
        self.cas_secrets(
            org,
            expected_version,
            secrets,
            None,
            Some(intent.epoch),
            Some(intent),
        )
        .await
    }

    async fn cas_secrets(
        &self,
        org: &str,
        expected_version: u64,
        secrets: &TenantSecrets,
        record: Option<&TenantRecord>,
        epoch: Option<u64>,
        intent: Option<&ExchangeIntent>,
    ) -> Result<CasOutcome, StoreError> {
        let plain = serde_json::to_vec(secrets).expect("secrets serialize");
        let sealed = self.sealer.seal(&plain, &secrets_context(org));
        let record_json = record
            .map(|r| serde_json::to_string(r).expect("record serializes"))
            .unwrap_or_default();
        let mut inv = self.cas.prepare_invoke();
        inv.key(self.store.keys().tenant(org))
            .arg(expected_version)
            .arg(sealed)
            .arg(record_json)
            .arg(epoch.map(|e| e.to_string()).unwrap_or_default())
            .arg(intent.map(ExchangeIntent::encode).unwrap_or_default());
        let v: i64 = self.store.invoke(&inv).await?;
        if v >= 0 {
            self.announce(org).await;
        }
        Ok(match v {
            -2 => CasOutcome::Fenced,
            v if v < 0 => CasOutcome::Stale,
            v => CasOutcome::Written(v as u64),
        })
    }

    /// Adds counts of messages written to organizations' `received:<source>` counters:
    /// `(org, source, n)`, one pipeline (one per organization on a cluster).
    pub async fn add_received(&self, counts: &[(String, &str, u64)]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut conn = self.store.conn()?;
        let keys = self.store.keys();
        if self.store.is_cluster() {
            for (org, source, n) in counts {
                let field = format!("{}{source}", field::RECEIVED_PREFIX);
                let _: i64 = self
                    .store
                    .bounded(conn.hincr(keys.tenant(org), field, *n))
                    .await?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (org, source, n) in counts {
            pipe.hincr(
                keys.tenant(org),
                format!("{}{source}", field::RECEIVED_PREFIX),
                *n,
            )
            .ignore();
        }
        let _: () = self.store.bounded(pipe.query_async(&mut conn)).await?;
        Ok(())
    }
}

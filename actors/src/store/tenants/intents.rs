//! The exchange intent: a note left in the tenant's hash while its refresh token is redeemed
//! (`begin_exchange.lua`), removed by the compare-and-set that stores the result or, when the
//! exchange rotated nothing, by `end_exchange.lua`.
use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::Tenants;
use crate::secret::Secret;
use crate::store::StoreError;

/// Records an exchange intent if the lease epoch and the secrets' version still hold.
static BEGIN_EXCHANGE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("begin_exchange.lua")));

/// Removes an exchange intent if it is still the one recorded.
static END_EXCHANGE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("end_exchange.lua")));

/// A note the lease holder leaves in the tenant's hash right before it redeems the refresh
/// token, removed by the compare-and-set that stores the result. Webex invalidates a refresh
/// token once it is exchanged, so a holder that dies between the token endpoint's answer and
/// that write loses the new one; the note it leaves behind lets its successor tell such a loss
/// from a revoked token (see `TokenKeeper::refresh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeIntent {
    /// The lease epoch the exchange ran under.
    pub epoch: u64,
    /// `token_version` of the secrets whose refresh token was redeemed.
    pub token_version: u64,
    /// Which refresh token: the first 16 hex digits of its SHA-256 (not a secret, and enough to
    /// tell tokens apart).
    pub fingerprint: String,
    /// When the exchange started (Unix milliseconds).
    pub at_ms: i64,
    /// The replica that ran it.
    pub replica: String,
}

impl ExchangeIntent {
    /// An intent to redeem `refresh_token` (stored at `token_version`) under `epoch`, now.
    pub fn new(epoch: u64, token_version: u64, refresh_token: &Secret, replica: &str) -> Self {
        Self {
            epoch,
            token_version,
            fingerprint: fingerprint(refresh_token),
            at_ms: Utc::now().timestamp_millis(),
            replica: replica.to_string(),
        }
    }

    /// Whether this intent redeemed `refresh_token`.
    pub fn redeems(&self, refresh_token: &Secret) -> bool {
        self.fingerprint == fingerprint(refresh_token)
    }

    /// When the exchange started.
    pub fn started_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.at_ms).unwrap_or_default()
    }

    pub(super) fn encode(&self) -> String {
        format!(
            "v1|{}|{}|{}|{}|{}",
            self.epoch, self.token_version, self.fingerprint, self.at_ms, self.replica
        )
    }

    fn decode(s: &str) -> Option<Self> {
        let mut it = s.splitn(6, '|');
        if it.next()? != "v1" {
            return None;
        }
        Some(Self {
            epoch: it.next()?.parse().ok()?,
            token_version: it.next()?.parse().ok()?,
            fingerprint: it.next()?.to_string(),
            at_ms: it.next()?.parse().ok()?,
            replica: it.next()?.to_string(),
        })
    }
}

fn fingerprint(token: &Secret) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(token.expose().as_bytes())[..8])
}

/// What [`Tenants::begin_exchange`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginExchange {
    /// The intent is recorded. `previous`: an earlier intent that no stored result ever
    /// cleared (its holder died or never got an answer), if one was left.
    Begun { previous: Option<ExchangeIntent> },
    /// The secrets changed since they were read: reload first.
    Stale,
    /// The lease epoch moved on: another replica owns the tenant now.
    Fenced,
}

impl Tenants {
    /// Records `intent` before the refresh token is redeemed (see [`ExchangeIntent`]).
    pub async fn begin_exchange(
        &self,
        org: &str,
        intent: &ExchangeIntent,
    ) -> Result<BeginExchange, StoreError> {
        let mut inv = BEGIN_EXCHANGE.prepare_invoke();
        inv.key(self.store.keys().tenant(org))
            .arg(intent.epoch)
            .arg(intent.token_version)
            .arg(intent.encode());
        let reply: Vec<redis::Value> = self.store.invoke(&inv).await?;
        let code: i64 = match reply.first() {
            Some(v) => redis::from_redis_value(v.clone())
                .map_err(|e| StoreError::Corrupt(format!("exchange intent reply: {e}")))?,
            None => return Err(StoreError::Corrupt("empty exchange intent reply".into())),
        };
        Ok(match code {
            -2 => BeginExchange::Fenced,
            -1 => BeginExchange::Stale,
            _ => {
                let prev: String = match reply.get(1) {
                    Some(v) => redis::from_redis_value(v.clone()).unwrap_or_default(),
                    None => String::new(),
                };
                BeginExchange::Begun {
                    previous: ExchangeIntent::decode(&prev),
                }
            }
        })
    }

    /// Removes `intent` after an exchange that rotated nothing (the token endpoint refused it
    /// or was unavailable).
    pub async fn end_exchange(&self, org: &str, intent: &ExchangeIntent) -> Result<(), StoreError> {
        let mut inv = END_EXCHANGE.prepare_invoke();
        inv.key(self.store.keys().tenant(org)).arg(intent.encode());
        let _: i64 = self.store.invoke(&inv).await?;
        Ok(())
    }
}

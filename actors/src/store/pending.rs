//! Pending HTTPS activations: an activation JWT Webex posted to `/provision`, kept sealed (24 h)
//! until its setup page is completed, approved or rejected. Keys: `<p>:pending:<session>`,
//! `<p>:pending_index` (sessions by creation time, for the console) and
//! `<p>:pending_decided:<session>` (SET NX by the first of approve, reject or a customer's code).
use chrono::Utc;
use redis::AsyncCommands;

use super::crypto::Sealer;
use super::{Store, StoreError};

/// The pending activations' repository.
#[derive(Clone)]
pub struct PendingStore {
    store: Store,
    sealer: Sealer,
}

impl PendingStore {
    pub fn new(store: Store, sealer: Sealer) -> Self {
        Self { store, sealer }
    }

    /// Sessions of pending HTTPS activations, newest first (at most `limit`).
    pub async fn sessions(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.store
            .query(&redis::Cmd::zrevrange(
                self.store.keys().pending_index(),
                0,
                limit as isize - 1,
            ))
            .await
    }

    /// Stores a pending HTTPS activation (sealed) under a random session id for `ttl_secs`.
    pub async fn put(
        &self,
        session: &str,
        payload: &[u8],
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.store.conn()?;
        let sealed = self.sealer.seal(payload, &format!("pending:{session}"));
        let keys = self.store.keys();
        let now = Utc::now().timestamp_millis();
        let oldest = now - i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        // The index (for the operator console) in its own slot on a cluster: separate calls.
        let _: () = self
            .store
            .bounded(conn.set_ex(keys.pending(session), sealed, ttl_secs))
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(keys.pending_index())
            .arg("NX")
            .arg(now)
            .arg(session)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(keys.pending_index())
            .arg("-inf")
            .arg(format!("({oldest}"))
            .ignore();
        self.store.bounded(pipe.query_async(&mut conn)).await
    }

    /// Claims the decision on a pending activation for `ttl_secs` under `token` (a value unique
    /// to this caller): true for the first caller only, so the operator's approve or reject and
    /// a customer's code cannot both act on it. After an error the claim may or may not have
    /// been made: give it back with [`PendingStore::release_decision`] either way.
    pub async fn claim_decision(
        &self,
        session: &str,
        token: &str,
        ttl_secs: u64,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .store
            .query(
                redis::cmd("SET")
                    .arg(self.store.keys().pending_decided(session))
                    .arg(token)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl_secs.max(1)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Gives back a decision claimed under `token` (nothing was decided); another caller's
    /// claim is left alone.
    pub async fn release_decision(&self, session: &str, token: &str) -> Result<(), StoreError> {
        /// Deletes the decision if still claimed under the token (see pending_release.lua).
        static RELEASE: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(include_str!("pending_release.lua")));
        self.store
            .invoke(
                RELEASE
                    .key(self.store.keys().pending_decided(session))
                    .arg(token),
            )
            .await
    }

    /// Reads a pending activation.
    pub async fn get(&self, session: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed: Option<String> = self
            .store
            .query(&redis::Cmd::get(self.store.keys().pending(session)))
            .await?;
        match sealed {
            None => Ok(None),
            Some(s) => self
                .sealer
                .open(&s, &format!("pending:{session}"))
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("pending activation: {e}"))),
        }
    }
}

//! Console sessions, kept in Redis so that one can end: signing out deletes the session for
//! every replica at once, and ending all of them replaces the (random) epoch every session is
//! checked against. A session is stored under the SHA-256 of its cookie's nonce, so what Redis holds
//! cannot be replayed as a cookie.
use std::sync::LazyLock;

use super::{Store, StoreError};

/// Opens a session in the current epoch (see sessions_open.lua).
static OPEN: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("sessions_open.lua")));

fn new_epoch() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Store {
    /// Opens the session `digest` for `ttl_secs`.
    pub async fn open_console_session(
        &self,
        digest: &str,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let keys = self.keys();
        let _: i64 = self
            .invoke(
                OPEN.key(keys.console_session(digest))
                    .key(keys.console_epoch())
                    .arg(ttl_secs.max(1))
                    .arg(new_epoch()),
            )
            .await?;
        Ok(())
    }

    /// Whether the session `digest` is open: stored, unexpired, opened in the current epoch.
    pub async fn console_session_open(&self, digest: &str) -> Result<bool, StoreError> {
        let keys = self.keys();
        let (opened, epoch): (Option<String>, Option<String>) = self
            .query(
                redis::cmd("MGET")
                    .arg(keys.console_session(digest))
                    .arg(keys.console_epoch()),
            )
            .await?;
        Ok(opened.is_some_and(|o| epoch.is_some_and(|e| o == e)))
    }

    /// Ends the session `digest`.
    pub async fn close_console_session(&self, digest: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .query(redis::cmd("DEL").arg(self.keys().console_session(digest)))
            .await?;
        Ok(())
    }

    /// Ends every session (sessions opened afterwards are not affected): a new epoch.
    pub async fn end_console_sessions(&self) -> Result<(), StoreError> {
        let _: () = self
            .query(
                redis::cmd("SET")
                    .arg(self.keys().console_epoch())
                    .arg(new_epoch()),
            )
            .await?;
        Ok(())
    }
}

//! The operator console's sessions, as the edge uses them: open one at sign-in, ask whether a
//! cookie's session is still open, close it at sign-out, end every session at once. They live
//! in Redis ([`crate::store::sessions`]) so that ending one holds on every replica.
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// Console sessions, stored under the digest of the cookie's signed part (never the cookie).
#[derive(Clone)]
pub struct Sessions {
    store: Store,
}

impl Sessions {
    pub fn new(registry: &Registry) -> Self {
        Self {
            store: registry.deps().store().clone(),
        }
    }

    /// Opens the session `digest` for `ttl_secs`.
    pub async fn open(&self, digest: &str, ttl_secs: u64) -> Result<(), StoreError> {
        self.store.open_console_session(digest, ttl_secs).await
    }

    /// Whether the session `digest` is open (stored, unexpired, not ended).
    pub async fn is_open(&self, digest: &str) -> Result<bool, StoreError> {
        self.store.console_session_open(digest).await
    }

    /// Ends the session `digest`.
    pub async fn close(&self, digest: &str) -> Result<(), StoreError> {
        self.store.close_console_session(digest).await
    }

    /// Ends every session opened so far, on every replica.
    pub async fn end_all(&self) -> Result<(), StoreError> {
        self.store.end_console_sessions().await
    }
}

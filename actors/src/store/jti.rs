//! The jti store: JWT ids seen within their lifetime, so a replayed JWT is rejected across
//! restarts and replicas. A jti is recorded only after the token is otherwise valid.
use std::time::Duration;

use super::{Store, StoreError};

/// How long a jti is remembered: the 24 h after which the protocol's expiry rules take over.
pub const JTI_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

impl Store {
    /// Records `jti` (`SET NX EX`); `Ok(false)` when it was already there — a replay.
    pub async fn record_jti(&self, jti: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let key = self.keys().jti(jti);
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(JTI_RETENTION.as_secs())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }
}

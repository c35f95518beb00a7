//! The jti store: JWT ids seen within their lifetime, so a replayed JWT is rejected across
//! restarts and replicas. A jti is recorded only after the token is otherwise valid.
//!
//! An activation's jti is recorded in two steps, so that it counts as used only once the
//! activation took effect: [`Store::claim_jti`] before the work, [`Store::commit_jti`] after
//! it. A claim that was never committed (the caller was answered 503) can be taken again by
//! the same token once its hold has passed; a committed jti is a replay. Both steps carry a
//! write deadline (see [`Store::write_deadline_ms`]): one that lands after its caller gave up
//! does nothing. Values: `claim:<token digest>:<attempt nonce>:<held until, ms>`, then `done`
//! (action JWTs, recorded in one step, store `1`). Only the attempt holding the claim commits:
//! an attempt overtaken by a resumed one (it ran past its hold) is answered 503, so one token
//! gets one 2xx.
use std::sync::LazyLock;
use std::time::Duration;

use super::{NOW_MS_LUA, Store, StoreError};

/// How long a jti is remembered: the 24 h after which the protocol's expiry rules take over.
pub const JTI_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// What [`Store::claim_jti`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JtiClaim {
    /// First use: the caller may act, then commit with this attempt nonce.
    Claimed(String),
    /// The same token's earlier attempt claimed it and never committed: act again (find what
    /// that attempt may have done), then commit with this attempt nonce.
    Resumed(String),
    /// The same token's claim is held for this many more milliseconds (an attempt may still
    /// be running): try again after it.
    Held(u64),
    /// Used: committed, or claimed by another token with the same jti.
    Replay,
}

/// Claims a jti for an attempt (jti_claim.lua after [`NOW_MS_LUA`]).
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!("{NOW_MS_LUA}\n{}", include_str!("jti_claim.lua")))
});

/// Commits a claimed jti (jti_commit.lua after [`NOW_MS_LUA`]).
static COMMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!("{NOW_MS_LUA}\n{}", include_str!("jti_commit.lua")))
});

impl Store {
    /// Records `jti` (`SET NX EX`); `Ok(false)` when it was already there — a replay.
    pub async fn record_jti(&self, jti: &str) -> Result<bool, StoreError> {
        let key = self.keys().jti(jti);
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(JTI_RETENTION.as_secs()),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Claims `jti` for the token with `digest` (hex) for `hold` (see the module's doc).
    pub async fn claim_jti(
        &self,
        jti: &str,
        digest: &str,
        hold: Duration,
    ) -> Result<JtiClaim, StoreError> {
        let nonce = hex::encode(rand::random::<[u8; 8]>());
        let (what, ms): (String, i64) = self
            .invoke(
                CLAIM
                    .key(self.keys().jti(jti))
                    .arg(digest)
                    .arg(&nonce)
                    .arg(hold.as_millis() as u64)
                    .arg(self.write_deadline_ms())
                    .arg(JTI_RETENTION.as_secs()),
            )
            .await?;
        match what.as_str() {
            "claimed" => Ok(JtiClaim::Claimed(nonce)),
            "resumed" => Ok(JtiClaim::Resumed(nonce)),
            "held" => Ok(JtiClaim::Held(ms.max(0) as u64)),
            "replay" => Ok(JtiClaim::Replay),
            // Redis ran it past its deadline although it answered in time: clocks apart.
            _ => Err(self.late_write(ms)),
        }
    }

    /// Marks `jti`, claimed for `digest` by attempt `nonce`, as used. `Err` when it was not
    /// (another attempt took the claim over, or Redis ran the commit past its deadline): the
    /// caller answers 503, and the token's retry finds the claim again.
    pub async fn commit_jti(&self, jti: &str, digest: &str, nonce: &str) -> Result<(), StoreError> {
        let done: i64 = self
            .invoke(
                COMMIT
                    .key(self.keys().jti(jti))
                    .arg(digest)
                    .arg(nonce)
                    .arg(self.write_deadline_ms()),
            )
            .await?;
        match done {
            1 => Ok(()),
            0 => Err(StoreError::Conflict(
                "the JWT's claim was taken over by a later attempt",
            )),
            late => Err(self.late_write(-late)),
        }
    }
}

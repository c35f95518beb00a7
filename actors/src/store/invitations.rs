//! Invitations: how a customer's admin proves, on the setup page, that the partner expects their
//! organization. The operator makes one per customer (`POST /admin/invitations`): a one-time
//! code, never stored (only its SHA-256), expiring, single use, carrying the partner's customer
//! id and name into the activation. Keys, all in the `{invitations}` slot:
//! `<p>:{invitations}:<digest>` (JSON, expiring a day after the invitation),
//! `<p>:{invitations}:<digest>:used` (set once, by the redeeming setup form) and
//! `<p>:{invitations}:index` (digests by creation time, for listings).
//!
//! Wrong codes are counted per setup session and per client address under
//! `<p>-audit:{setup}:…` (outside `<p>:`, like everything refused requests leave behind).
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{NOW_MS_LUA, Store, StoreError};
use crate::store::tenants::Customer;

/// Letters of a code: Crockford's base32 (no I, L, O, U), easy to read aloud and type.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of a code (5 bits each: 100 bits), shown in groups of four.
const CODE_LEN: usize = 20;
/// An invitation's record outlives its expiry by this much, so listings show it as expired.
const KEEP_AFTER_EXPIRY: Duration = Duration::from_secs(86_400);

/// Stores an invitation unless past its write deadline (invitations_store.lua after
/// [`NOW_MS_LUA`]).
static STORE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{NOW_MS_LUA}\n{}",
        include_str!("invitations_store.lua")
    ))
});

/// One invitation as stored (no code: only its digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invitation {
    pub digest: String,
    pub customer: Customer,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// How an invitation was used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Use {
    pub used_at: DateTime<Utc>,
    /// The setup session it completed.
    pub session: String,
}

/// What redeeming a code found.
#[derive(Debug)]
pub enum Redeemed {
    /// Now used by this session: the activation may proceed.
    Fresh(Invitation),
    /// No invitation has this code (or it expired long ago).
    Unknown,
    Expired,
    /// Already used (by another session).
    Used,
}

/// A new code: [`CODE_LEN`] random base32 characters in groups of four (`K7QM-2XPA-…`).
pub fn new_code() -> String {
    let bytes: [u8; CODE_LEN] = rand::random();
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// The digest a code is stored under: SHA-256 of the code with case, spaces and dashes removed
/// (and the letters base32 readers confuse mapped as Crockford's base32 says: O→0, I/L→1).
pub fn digest(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    hex::encode(Sha256::digest(normal.as_bytes()))
}

/// Marks an invitation used unless it is already (see invitations_redeem.lua).
static REDEEM: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("invitations_redeem.lua")));

impl Store {
    /// Stores a new invitation for `customer`, valid `ttl`; returns it and its code (the only
    /// time the code exists outside the customer's hands).
    pub async fn create_invitation(
        &self,
        customer: Customer,
        ttl: Duration,
    ) -> Result<(Invitation, String), StoreError> {
        let code = new_code();
        let now = Utc::now();
        let inv = Invitation {
            digest: digest(&code),
            customer,
            created_at: now,
            expires_at: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
        };
        let keep = (ttl + KEEP_AFTER_EXPIRY).as_secs();
        let keys = self.keys();
        let index = keys.invitations_index();
        let json = serde_json::to_string(&inv).expect("an invitation serializes");
        let oldest_kept = (now - chrono::Duration::seconds(keep as i64)).timestamp_millis();
        let stored: i64 = self
            .invoke(
                STORE
                    .key(keys.invitation(&inv.digest))
                    .key(&index)
                    .arg(json)
                    .arg(keep)
                    .arg(now.timestamp_millis())
                    .arg(&inv.digest)
                    .arg(format!("({oldest_kept}"))
                    .arg(self.write_deadline_ms()),
            )
            .await?;
        if stored != 1 {
            // Redis ran it past its deadline although it answered in time: clocks apart.
            return Err(self.late_write(-stored));
        }
        Ok((inv, code))
    }

    /// Redeems `code` for setup `session` (single use: concurrent forms cannot both win).
    pub async fn redeem_invitation(
        &self,
        code: &str,
        session: &str,
    ) -> Result<Redeemed, StoreError> {
        let d = digest(code);
        let keys = self.keys();
        let now = Utc::now();
        let used = Use {
            used_at: now,
            session: session.to_string(),
        };
        let mut conn = self.conn()?;
        let answer: Vec<redis::Value> = self
            .bounded(
                REDEEM
                    .key(keys.invitation(&d))
                    .key(keys.invitation_used(&d))
                    .arg(serde_json::to_string(&used).expect("serializes"))
                    .invoke_async(&mut conn),
            )
            .await?;
        let code = answer
            .first()
            .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok());
        match code {
            Some(2) => {
                let json: String = answer
                    .get(1)
                    .and_then(|v| redis::from_redis_value(v.clone()).ok())
                    .unwrap_or_default();
                let inv: Invitation = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("invitation: {e}")))?;
                // The digest is the key it was found under; compared once more in constant
                // time, as every secret comparison is.
                use subtle::ConstantTimeEq;
                if !bool::from(inv.digest.as_bytes().ct_eq(d.as_bytes())) {
                    return Err(StoreError::Corrupt("invitation digest mismatch".into()));
                }
                if inv.expires_at <= now {
                    // Not used after all: an expired invitation stays expired, not used.
                    let _: () = self.bounded(conn.del(keys.invitation_used(&d))).await?;
                    return Ok(Redeemed::Expired);
                }
                Ok(Redeemed::Fresh(inv))
            }
            Some(1) => Ok(Redeemed::Used),
            _ => Ok(Redeemed::Unknown),
        }
    }

    /// Gives an invitation back (the activation it was redeemed for could not start).
    pub async fn release_invitation(&self, digest: &str) -> Result<(), StoreError> {
        self.query(&redis::Cmd::del(self.keys().invitation_used(digest)))
            .await
    }

    /// The newest `limit` invitations with how each was used, newest first.
    pub async fn list_invitations(
        &self,
        limit: usize,
    ) -> Result<Vec<(Invitation, Option<Use>)>, StoreError> {
        let keys = self.keys();
        let mut conn = self.conn()?;
        let digests: Vec<String> = self
            .bounded(conn.zrevrange(keys.invitations_index(), 0, limit as isize - 1))
            .await?;
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for d in &digests {
            pipe.cmd("GET").arg(keys.invitation(d));
            pipe.cmd("GET").arg(keys.invitation_used(d));
        }
        let found: Vec<Option<String>> = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(found
            .chunks(2)
            .filter_map(|pair| {
                let inv: Invitation = serde_json::from_str(pair[0].as_deref()?).ok()?;
                let used = pair[1]
                    .as_deref()
                    .and_then(|u| serde_json::from_str(u).ok());
                Some((inv, used))
            })
            .collect())
    }

    /// Counts one wrong code for `session` and for the client `addr`; returns both counts
    /// after it.
    pub async fn count_setup_failure(
        &self,
        session: &str,
        addr: &str,
        session_ttl: Duration,
    ) -> Result<(u64, u64), StoreError> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("INCR")
            .arg(keys.setup_failures(session))
            .cmd("EXPIRE")
            .arg(keys.setup_failures(session))
            .arg(session_ttl.as_secs().max(1))
            .ignore()
            // The address's hour starts with its first failure.
            .cmd("SET")
            .arg(keys.setup_failures_from(addr))
            .arg(0)
            .arg("NX")
            .arg("EX")
            .arg(3600)
            .ignore()
            .cmd("INCR")
            .arg(keys.setup_failures_from(addr));
        let (s, a): (u64, u64) = self.query_pipe(&pipe).await?;
        Ok((s, a))
    }

    /// Gives back the attempt [`count_setup_failure`](Self::count_setup_failure) counted, for
    /// a code that was right.
    pub async fn forgive_setup_attempt(&self, session: &str, addr: &str) -> Result<(), StoreError> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("DECR")
            .arg(keys.setup_failures(session))
            .ignore()
            .cmd("DECR")
            .arg(keys.setup_failures_from(addr))
            .ignore();
        self.query_pipe(&pipe).await
    }

    /// Wrong codes so far for `session` and from `addr` (this hour).
    pub async fn setup_failures(
        &self,
        session: &str,
        addr: &str,
    ) -> Result<(u64, u64), StoreError> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(keys.setup_failures(session))
            .cmd("GET")
            .arg(keys.setup_failures_from(addr));
        let (s, a): (Option<u64>, Option<u64>) = self.query_pipe(&pipe).await?;
        Ok((s.unwrap_or(0), a.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_base32_and_their_digest_forgives_typing() {
        let code = new_code();
        assert_eq!(code.len(), CODE_LEN + CODE_LEN / 4 - 1);
        assert!(code.split('-').all(|g| g.len() == 4));
        assert!(
            code.chars()
                .all(|c| c == '-' || ALPHABET.contains(&(c as u8)))
        );
        let typed = code.to_lowercase().replace('-', " ");
        assert_eq!(digest(&typed), digest(&code));
        assert_eq!(digest("O0IL-1"), digest("0011 1"));
        assert_ne!(digest(&new_code()), digest(&code));
    }
}

//! Leases: which replica owns a tenant's token refresh and queue poller. One key per tenant,
//! `<p>:{<org>}:lease` = `<replica>|<epoch>` with a TTL; the epoch comes from the tenant hash
//! (`lease_epoch`, never reset) and grows with every new holder, so it works as a fencing
//! token: token-state writes carry it and fail once someone else acquired the lease (see
//! `tenants::CAS_SECRETS`). Both keys share the `{org}` hash tag: one script, one slot.
//!
//! Replicas announce themselves in `<p>:replicas` (a sorted set scored by heartbeat expiry in
//! Redis time, so replica clocks do not matter) and spread tenants by rendezvous hashing over
//! the live set.
use std::time::Duration;

use super::{Store, StoreError};

/// Acquire. KEYS: lease, tenant hash. ARGV: replica, ttl ms. A lease still held under this
/// replica's own id (an earlier incarnation: a restarted container keeps its pod name) is taken
/// over with a new epoch too, so that incarnation is fenced off if it is merely paused.
/// Returns the new epoch (> 0), 0 when another replica holds it, -1 when the tenant is gone.
const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner = string.match(cur, '^(.*)|%d+$')
  if owner ~= ARGV[1] then return 0 end
end
if redis.call('HEXISTS', KEYS[2], 'record') == 0 then return -1 end
local e = redis.call('HINCRBY', KEYS[2], 'lease_epoch', 1)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2])
return e
"#;

/// Extend a lease still held under `epoch`. KEYS: lease. ARGV: `<replica>|<epoch>`, ttl ms.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Give a lease up (only if still ours). KEYS: lease. ARGV: `<replica>|<epoch>`.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Heartbeat: (re)announce this replica, drop expired ones, list the live ones. Uses the
/// server's clock. KEYS: replicas. ARGV: replica, ttl ms.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#;

/// The result of an acquisition attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Held by us under this epoch.
    Held(u64),
    /// Another replica holds it.
    Busy,
    /// The tenant no longer exists.
    Gone,
}

/// Lease operations on one store.
#[derive(Clone)]
pub struct Leases {
    store: Store,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    heartbeat: redis::Script,
}

fn value(replica: &str, epoch: u64) -> String {
    format!("{replica}|{epoch}")
}

impl Leases {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            heartbeat: redis::Script::new(HEARTBEAT),
        }
    }

    /// Takes the lease of `org` if free or left by an earlier incarnation of this replica
    /// (always a new epoch).
    pub async fn acquire(
        &self,
        org: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<Acquired, StoreError> {
        let keys = self.store.keys();
        let mut conn = self.store.conn()?;
        let mut inv = self.acquire.prepare_invoke();
        inv.key(keys.lease(org))
            .key(keys.tenant(org))
            .arg(replica)
            .arg(ttl.as_millis() as u64);
        let v: i64 = self.store.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(match v {
            v if v > 0 => Acquired::Held(v as u64),
            0 => Acquired::Busy,
            _ => Acquired::Gone,
        })
    }

    /// Extends our lease; false when it is no longer ours (expired, or taken over).
    pub async fn renew(
        &self,
        org: &str,
        replica: &str,
        epoch: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.store.conn()?;
        let mut inv = self.renew.prepare_invoke();
        inv.key(self.store.keys().lease(org))
            .arg(value(replica, epoch))
            .arg(ttl.as_millis() as u64);
        let v: i64 = self.store.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(v == 1)
    }

    /// Gives our lease up so another replica can take the tenant at once.
    pub async fn release(&self, org: &str, replica: &str, epoch: u64) -> Result<(), StoreError> {
        let mut conn = self.store.conn()?;
        let mut inv = self.release.prepare_invoke();
        inv.key(self.store.keys().lease(org))
            .arg(value(replica, epoch));
        let _: i64 = self.store.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Announces `replica` as live for `ttl`; returns every live replica (sorted).
    pub async fn heartbeat(&self, replica: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        let mut conn = self.store.conn()?;
        let mut inv = self.heartbeat.prepare_invoke();
        inv.key(self.store.keys().replicas())
            .arg(replica)
            .arg(ttl.as_millis() as u64);
        let mut v: Vec<String> = self.store.bounded(inv.invoke_async(&mut conn)).await?;
        v.sort();
        Ok(v)
    }

    /// Removes `replica` from the live set (draining): others take its share at once.
    pub async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        use redis::AsyncCommands;
        let mut conn = self.store.conn()?;
        let _: i64 = self
            .store
            .bounded(conn.zrem(self.store.keys().replicas(), replica))
            .await?;
        Ok(())
    }
}

/// Rendezvous (highest-random-weight) hashing: the replica that should own `org`, given the
/// live set. Every replica computes the same answer from the same set; when a replica joins or
/// leaves, only the tenants it gains or loses move (≈ 1/n of them).
pub fn preferred_owner<'a>(replicas: &'a [String], org: &str) -> Option<&'a str> {
    replicas
        .iter()
        .max_by_key(|r| weight(r, org))
        .map(String::as_str)
}

fn weight(replica: &str, org: &str) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(replica.as_bytes());
    h.update([0u8]);
    h.update(org.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_evenly_and_moves_little() {
        let three: Vec<String> = (0..3).map(|i| format!("pod-{i}")).collect();
        let orgs: Vec<String> = (0..3000).map(|i| format!("org-{i}")).collect();
        let mut counts = std::collections::HashMap::new();
        for o in &orgs {
            *counts
                .entry(preferred_owner(&three, o).unwrap().to_string())
                .or_insert(0) += 1;
        }
        for r in &three {
            let n = counts[r];
            assert!((850..=1150).contains(&n), "{r} got {n} of 3000");
        }
        // A fourth replica joins: only tenants moving *to* it change owner.
        let four: Vec<String> = (0..4).map(|i| format!("pod-{i}")).collect();
        let mut moved = 0;
        for o in &orgs {
            let before = preferred_owner(&three, o).unwrap();
            let after = preferred_owner(&four, o).unwrap();
            if before != after {
                assert_eq!(after, "pod-3");
                moved += 1;
            }
        }
        assert!((600..=900).contains(&moved), "{moved} moved");
        assert_eq!(preferred_owner(&[], "x"), None);
    }
}

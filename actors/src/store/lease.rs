//! Ownership records: which replica runs a tenant's token refresh, queue poller and command
//! consumer. One key per tenant, `<p>:{<org>}:lease` = `<replica>|<epoch>`, with no TTL: a
//! record is as good as its replica's heartbeat. The epoch comes from the tenant hash
//! (`lease_epoch`, never reset) and grows with every new holder, so it works as a fencing
//! token: token-state writes carry it and fail once someone else took the tenant (see
//! `tenants/cas_secrets.lua`). Both keys share the `{org}` hash tag: one script, one slot.
//!
//! Replicas heartbeat in `<p>:replicas`, a sorted set scored by the heartbeat's expiry in
//! Redis time (replica clocks do not matter). A replica alive there keeps every record naming
//! it without touching them, so an idle replica costs Redis one script per round however many
//! tenants it holds. A record naming a replica that is no longer there may be taken over
//! (compare-and-set on the record's value). A draining replica heartbeats as
//! `<replica>|draining`: still alive (its records hold while its work finishes) but no longer
//! preferred for any tenant. Tenants are spread by rendezvous hashing over the live set.
use std::collections::HashSet;
use std::time::Duration;

use super::{Store, StoreError};

/// How a draining replica's heartbeat member ends.
const DRAINING: &str = "|draining";

/// The result of a takeover attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Held by us under this epoch.
    Held(u64),
    /// The record changed since it was read (another replica took it).
    Busy,
    /// The tenant no longer exists.
    Gone,
}

/// What a heartbeat saw.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// This replica's previous heartbeat had not expired: nobody may have taken its records.
    pub continuous: bool,
    /// Replicas that take tenants (sorted; draining ones left out).
    pub preferred: Vec<String>,
    /// Every replica alive, draining ones included: their records hold.
    pub alive: HashSet<String>,
    /// Time until the next other replica's heartbeat expires (when its records become free).
    pub next_expiry: Option<Duration>,
}

/// Whom a record names, if anyone: `<replica>|<epoch>`.
pub fn holder(record: &str) -> Option<(&str, u64)> {
    let (replica, epoch) = record.rsplit_once('|')?;
    Some((replica, epoch.parse().ok()?))
}

/// Ownership operations on one store.
#[derive(Clone)]
pub struct Leases {
    store: Store,
    /// Takes over a record (see lease_take.lua).
    take: redis::Script,
    /// Gives a record up if still ours (see lease_release.lua).
    release: redis::Script,
    /// Announces this replica, drops expired ones (see lease_heartbeat.lua).
    heartbeat: redis::Script,
}

/// A record's value.
pub fn value(replica: &str, epoch: u64) -> String {
    format!("{replica}|{epoch}")
}

/// Records read per MGET.
const READ_CHUNK: usize = 500;

impl Leases {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            take: redis::Script::new(include_str!("lease_take.lua")),
            release: redis::Script::new(include_str!("lease_release.lua")),
            heartbeat: redis::Script::new(include_str!("lease_heartbeat.lua")),
        }
    }

    /// Takes the record of `org` for `replica` if it still has the value `expected` (None:
    /// absent), always under a new epoch.
    pub async fn take(
        &self,
        org: &str,
        replica: &str,
        expected: Option<&str>,
    ) -> Result<Acquired, StoreError> {
        let keys = self.store.keys();
        let mut inv = self.take.prepare_invoke();
        inv.key(keys.lease(org))
            .key(keys.tenant(org))
            .arg(replica)
            .arg(expected.unwrap_or(""));
        let v: i64 = self.store.invoke(&inv).await?;
        Ok(match v {
            v if v > 0 => Acquired::Held(v as u64),
            0 => Acquired::Busy,
            _ => Acquired::Gone,
        })
    }

    /// The records of `orgs`, in order (None: absent).
    pub async fn read(&self, orgs: &[&str]) -> Result<Vec<Option<String>>, StoreError> {
        let keys = self.store.keys();
        let mut out = Vec::with_capacity(orgs.len());
        for chunk in orgs.chunks(READ_CHUNK) {
            let mut cmd = redis::cmd("MGET");
            for org in chunk {
                cmd.arg(keys.lease(org));
            }
            let values: Vec<Option<String>> = self.store.query(&cmd).await?;
            out.extend(values);
        }
        Ok(out)
    }

    /// Gives our record up so another replica can take the tenant at once.
    pub async fn release(&self, org: &str, replica: &str, epoch: u64) -> Result<(), StoreError> {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.store.keys().lease(org))
            .arg(value(replica, epoch));
        let _: i64 = self.store.invoke(&inv).await?;
        Ok(())
    }

    /// Announces `replica` as alive for `ttl` (as draining: alive, but preferred for nothing).
    pub async fn heartbeat(
        &self,
        replica: &str,
        ttl: Duration,
        draining: bool,
    ) -> Result<Heartbeat, StoreError> {
        let (me, twin) = if draining {
            (format!("{replica}{DRAINING}"), replica.to_string())
        } else {
            (replica.to_string(), format!("{replica}{DRAINING}"))
        };
        let mut inv = self.heartbeat.prepare_invoke();
        inv.key(self.store.keys().replicas())
            .arg(&me)
            .arg(ttl.as_millis() as u64)
            .arg(&twin);
        let (continuous, now, members): (i64, i64, Vec<(String, f64)>) =
            self.store.invoke(&inv).await?;
        let mut beat = Heartbeat {
            continuous: continuous == 1,
            ..Default::default()
        };
        for (member, expiry) in members {
            if member != me {
                let left = Duration::from_millis((expiry as i64 - now).max(0) as u64);
                beat.next_expiry = Some(beat.next_expiry.map_or(left, |n| n.min(left)));
            }
            match member.strip_suffix(DRAINING) {
                Some(name) => {
                    beat.alive.insert(name.to_string());
                }
                None => {
                    beat.alive.insert(member.clone());
                    beat.preferred.push(member);
                }
            }
        }
        beat.preferred.sort();
        Ok(beat)
    }

    /// Leaves the replica set for good (after a drain released every record).
    pub async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .store
            .query(
                redis::cmd("ZREM")
                    .arg(self.store.keys().replicas())
                    .arg(replica)
                    .arg(format!("{replica}{DRAINING}")),
            )
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

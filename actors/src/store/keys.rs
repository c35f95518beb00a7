//! Every Redis key name the engine writes. Per-organization keys carry the `{org}` hash tag so
//! that multi-key scripts stay in one slot on Redis Cluster.

/// Key builder for one `redis.key_prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<p>:{<org>}:status` — status change stream of one organization.
    pub fn status_stream(&self, org: &str) -> String {
        format!("{}:{{{org}}}:status", self.prefix)
    }

    /// `<p>:{<org>}:events` — event stream of one organization.
    pub fn events_stream(&self, org: &str) -> String {
        format!("{}:{{{org}}}:events", self.prefix)
    }

    /// `<p>:{all-<n>}:status` — shard `n` of the fleet-wide status stream (the firehose).
    pub fn firehose_status(&self, shard: u32) -> String {
        format!("{}:{{all-{shard}}}:status", self.prefix)
    }

    /// `<p>:{all-<n>}:events` — shard `n` of the fleet-wide event stream.
    pub fn firehose_events(&self, shard: u32) -> String {
        format!("{}:{{all-{shard}}}:events", self.prefix)
    }

    /// `<p>:{all-<n>}:relayed` — on Redis Cluster, per organization and entry type
    /// (`<org>:status`, `<org>:events`) the id of the last entry of its stream copied to shard
    /// `n` (internal; see relay.rs).
    pub fn firehose_relayed(&self, shard: u32) -> String {
        format!("{}:{{all-{shard}}}:relayed", self.prefix)
    }

    /// `<p>:{<org>}:relay_from:<shards>` — on Redis Cluster, the id of the first entry of each
    /// of the organization's streams written with a firehose of `shards` shards (internal; see
    /// relay.rs). Per shard count: with another, the organization's shard changes, and the new
    /// one starts with what is written from then on.
    pub fn relay_from(&self, org: &str, shards: u32) -> String {
        format!("{}:{{{org}}}:relay_from:{shards}", self.prefix)
    }

    /// `<p>:{*}:<kind>` — a `SCAN MATCH` pattern of every organization's `kind` stream
    /// (`status` or `events`).
    pub fn streams_pattern(&self, kind: &str) -> String {
        format!("{}:{{*}}:{kind}", self.prefix)
    }

    /// `<p>:{<org>}:state:<deviceId>` — current status values of one device.
    pub fn device_state(&self, org: &str, device: &str) -> String {
        format!("{}:{{{org}}}:state:{device}", self.prefix)
    }

    /// `<p>:jti:<sha256(jti)>` — a seen JWT id (hashed: jtis are caller-chosen strings).
    pub fn jti(&self, jti: &str) -> String {
        use sha2::Digest;
        format!(
            "{}:jti:{}",
            self.prefix,
            hex::encode(sha2::Sha256::digest(jti.as_bytes()))
        )
    }

    /// `<p>:{<org>}:tenant` — the tenant record, sealed secrets, token version, counters.
    pub fn tenant(&self, org: &str) -> String {
        format!("{}:{{{org}}}:tenant", self.prefix)
    }

    /// `<p>:tenant_ids` — hash tenant id → org.
    pub fn tenant_ids(&self) -> String {
        format!("{}:tenant_ids", self.prefix)
    }

    /// `<p>:tenant_by_org` — hash org → tenant id (stable across re-activations).
    pub fn tenant_by_org(&self) -> String {
        format!("{}:tenant_by_org", self.prefix)
    }

    /// `<p>-audit:{errors}:<hour>` — the support log's hash of one hour (trackingId → record).
    /// What refused requests leave behind lives under `<p>-audit:`, never under `<p>:`: a
    /// refused request writes nothing among the data.
    pub fn errors(&self, hour: i64) -> String {
        format!("{}-audit:{{errors}}:{hour}", self.prefix)
    }

    /// `<p>:{invitations}:<digest>` — one invitation (JSON; the code itself is never stored).
    pub fn invitation(&self, digest: &str) -> String {
        format!("{}:{{invitations}}:{digest}", self.prefix)
    }

    /// `<p>:{invitations}:<digest>:used` — set once, when a setup form redeems the invitation.
    pub fn invitation_used(&self, digest: &str) -> String {
        format!("{}:{{invitations}}:{digest}:used", self.prefix)
    }

    /// `<p>:{invitations}:index` — sorted set of invitation digests by creation time.
    pub fn invitations_index(&self) -> String {
        format!("{}:{{invitations}}:index", self.prefix)
    }

    /// `<p>-audit:{setup}:fails:<session>` — wrong invitation codes tried on one setup session.
    pub fn setup_failures(&self, session: &str) -> String {
        format!("{}-audit:{{setup}}:fails:{session}", self.prefix)
    }

    /// `<p>-audit:{setup}:from:<addr>` — wrong invitation codes from one client address (hour).
    pub fn setup_failures_from(&self, addr: &str) -> String {
        format!("{}-audit:{{setup}}:from:{addr}", self.prefix)
    }

    /// `<p>:{console}:session:<digest>` — a signed-in console session (the SHA-256 of the
    /// cookie's nonce, never the cookie), holding the sessions epoch it was opened in.
    pub fn console_session(&self, digest: &str) -> String {
        format!("{}:{{console}}:session:{digest}", self.prefix)
    }

    /// `<p>:{console}:epoch` — random, replaced to end every console session at once.
    pub fn console_epoch(&self) -> String {
        format!("{}:{{console}}:epoch", self.prefix)
    }

    /// `<p>:pending_index` — sorted set of pending activation sessions by creation time.
    pub fn pending_index(&self) -> String {
        format!("{}:pending_index", self.prefix)
    }

    /// `<p>:pending:<session>` — a sealed HTTPS activation awaiting its setup page.
    pub fn pending(&self, session: &str) -> String {
        format!("{}:pending:{session}", self.prefix)
    }

    /// `<p>:pending_decided:<session>` — set (NX) by whoever decides a pending activation first:
    /// the operator's approve or reject, or the customer's invitation code.
    pub fn pending_decided(&self, session: &str) -> String {
        format!("{}:pending_decided:{session}", self.prefix)
    }

    /// `<p>:{<org>}:stamps:<deviceId>` — per key, the millisecond timestamp that last changed it.
    pub fn device_stamps(&self, org: &str, device: &str) -> String {
        format!("{}:{{{org}}}:stamps:{device}", self.prefix)
    }

    /// `<p>:{<org>}:seen:<bucket>` — set of the fingerprints of the messages applied whose
    /// timestamp falls in one time bucket (deduplication; see `store::writer`).
    pub fn seen(&self, org: &str, bucket: i64) -> String {
        format!("{}:{{{org}}}:seen:{bucket}", self.prefix)
    }

    /// `<p>:{<org>}:devices` — hash device id → inventory JSON.
    pub fn devices(&self, org: &str) -> String {
        format!("{}:{{{org}}}:devices", self.prefix)
    }

    /// `<p>:{<org>}:workspaces` — hash workspace id → inventory JSON.
    pub fn workspaces(&self, org: &str) -> String {
        format!("{}:{{{org}}}:workspaces", self.prefix)
    }

    /// `<p>:{<org>}:inventory` — stream of inventory changes (add, update, remove).
    pub fn inventory_stream(&self, org: &str) -> String {
        format!("{}:{{{org}}}:inventory", self.prefix)
    }

    /// `<p>:{<org>}:commands` — requests from downstream systems for the tenant's devices.
    pub fn commands_stream(&self, org: &str) -> String {
        format!("{}:{{{org}}}:commands", self.prefix)
    }

    /// `<p>:{<org>}:command_results` — one result (or error) per request, with its id.
    pub fn command_results(&self, org: &str) -> String {
        format!("{}:{{{org}}}:command_results", self.prefix)
    }

    /// `<p>:{<org>}:cmdreq:<sha256(request id)>` — a request id already sent to Webex
    /// (commands run at most once per id).
    pub fn command_request(&self, org: &str, request_id: &str) -> String {
        use sha2::Digest;
        format!(
            "{}:{{{org}}}:cmdreq:{}",
            self.prefix,
            hex::encode(sha2::Sha256::digest(request_id.as_bytes()))
        )
    }

    /// `<p>:{stats}:messages:<hour>` — hash minute → messages written by every replica.
    pub fn fleet_messages(&self, hour: i64) -> String {
        format!("{}:{{stats}}:messages:{hour}", self.prefix)
    }

    /// `<p>:{stats}:webhooks:<hour>` — hash `<minute>:<result>` → webhook answers.
    pub fn fleet_webhooks(&self, hour: i64) -> String {
        format!("{}:{{stats}}:webhooks:{hour}", self.prefix)
    }

    /// `<p>:{stats}:polls_failing` — hash tenant id → since when its queue polls fail (JSON),
    /// kept by the tenant's owner (set on the first failure in a row, removed on a success).
    pub fn polls_failing(&self) -> String {
        format!("{}:{{stats}}:polls_failing", self.prefix)
    }

    /// `<p>-audit:{errors}:recent` — list of the latest error records, newest first (capped).
    pub fn errors_recent(&self) -> String {
        format!("{}-audit:{{errors}}:recent", self.prefix)
    }

    /// `<p>:consumers` — hash ACL user → consumer record (consumer credentials; never a
    /// password, only its sealed SHA-256).
    pub fn consumers(&self) -> String {
        format!("{}:consumers", self.prefix)
    }

    /// `<p>:{<org>}:lease` — which replica owns the tenant's token refresh and queue poller,
    /// and under which fencing epoch (`<replica>|<epoch>`, expires unless renewed).
    pub fn lease(&self, org: &str) -> String {
        format!("{}:{{{org}}}:lease", self.prefix)
    }

    /// `<p>:replicas` — sorted set of live replicas, scored by heartbeat expiry (Redis time, ms).
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    /// `<p>:changes` — pub/sub channel: an organization whose record or secrets changed.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// `<p>:tenant_changes` — hash: org → how many changes were announced for it (a resync
    /// reloads only the organizations whose count moved).
    pub fn tenant_changes(&self) -> String {
        format!("{}:tenant_changes", self.prefix)
    }

    /// `<p>:tenants` — tenant lifecycle stream.
    pub fn tenants_stream(&self) -> String {
        format!("{}:tenants", self.prefix)
    }
}

/// The firehose shard of an organization's entries: FNV-1a (32 bits) of its id modulo `shards`.
/// Stable across replicas and restarts, so an organization's entries stay in one stream, in
/// order.
pub fn firehose_shard(org: &str, shards: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in org.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shards.max(1)
}

/// Whether `key` is a firehose shard (`<p>:{all-<n>}:…`), not an organization's stream.
/// The hash tag of a key, as Redis Cluster reads it (between the first `{` and the next `}`):
/// the organization of `<p>:{<org>}:…` — and of a keyspace channel, which ends with the key.
pub fn hash_tag(key: &str) -> Option<&str> {
    let (_, rest) = key.split_once('{')?;
    rest.split_once('}').map(|(tag, _)| tag)
}

pub fn is_firehose(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|k| k.strip_prefix(":{all-"))
        .is_some_and(|k| {
            k.split('}')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_key_shapes() {
        let k = Keys::new("xapi");
        assert_eq!(k.status_stream("ORG"), "xapi:{ORG}:status");
        assert_eq!(k.events_stream("ORG"), "xapi:{ORG}:events");
        assert_eq!(k.device_state("ORG", "D1"), "xapi:{ORG}:state:D1");
        assert_eq!(k.tenants_stream(), "xapi:tenants");
        assert_eq!(k.devices("ORG"), "xapi:{ORG}:devices");
        assert_eq!(k.workspaces("ORG"), "xapi:{ORG}:workspaces");
        assert_eq!(k.commands_stream("ORG"), "xapi:{ORG}:commands");
        assert_eq!(hash_tag(&k.commands_stream("ORG")), Some("ORG"));
        assert_eq!(hash_tag("__keyspace@0__:xapi:{ORG}:commands"), Some("ORG"));
        assert_eq!(hash_tag("xapi:tenants"), None);
        assert_eq!(k.command_results("ORG"), "xapi:{ORG}:command_results");
        assert_eq!(k.firehose_status(3), "xapi:{all-3}:status");
        assert_eq!(k.firehose_events(15), "xapi:{all-15}:events");
    }

    #[test]
    fn an_organization_has_one_shard_and_orgs_spread_over_all() {
        assert_eq!(firehose_shard("ORG", 16), firehose_shard("ORG", 16));
        let mut hit = [0u32; 16];
        for i in 0..1600 {
            hit[firehose_shard(&format!("org-{i}"), 16) as usize] += 1;
        }
        assert!(hit.iter().all(|&n| n > 50), "uneven spread: {hit:?}");
        assert_eq!(firehose_shard("ORG", 0), 0);
        assert!(is_firehose("xapi", "xapi:{all-7}:status"));
        assert!(!is_firehose("xapi", "xapi:{ORG}:status"));
        assert!(!is_firehose("xapi", "xapi:{all-x}:status"));
    }
}

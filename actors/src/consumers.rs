//! Consumer credentials: a customer's analytics reads its own organization only. Each grant is
//! a Redis ACL user (see [`crate::store::consumers`] for its rules) set on every node holding
//! data, with a generated password shown once: the engine keeps only its SHA-256, sealed, so
//! that the sync can set the user again on a node that joined or restarted.
//!
//! The record (`<p>:consumers`) is the truth, and every change orders its two steps so that
//! the sync can finish what a failure left: a grant records, then sets the user on every node
//! (and deletes it again if a revocation removed the record meanwhile); a revocation removes the
//! record, then deletes the user everywhere. The sync reads the nodes' users first, then the
//! records: a user it finds was recorded before it looked, so it never removes a grant in
//! flight.
use std::sync::Arc;

use chrono::Utc;
use sha2::Digest;

use crate::store::consumers::{
    self as acl, AclError, ConsumerKeys, ConsumerRecord, Node, acl_rules, user_name,
};
use crate::store::crypto::Sealer;
use crate::store::{Store, StoreError};
use crate::support::{ErrorClass, ErrorLog, ErrorRecord};
use crate::telemetry::Metrics;

/// Bytes of a generated password (shown as 64 hex digits).
const PASSWORD_BYTES: usize = 32;

/// The consumer credentials of every tenant. Cheap to clone.
#[derive(Clone)]
pub struct Consumers {
    store: Store,
    sealer: Sealer,
    metrics: Metrics,
    support: Arc<ErrorLog>,
    /// A node refusing `ACL` is logged once, not at every sync.
    refusal_logged: Arc<std::sync::atomic::AtomicBool>,
}

/// A consumer as listed (never its password).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub user: String,
    pub commands: bool,
    pub created_at: chrono::DateTime<Utc>,
    pub keys: ConsumerKeys,
}

/// A new grant: the only time its password is known (its `Debug` leaves it out).
#[derive(Clone, serde::Serialize)]
pub struct Granted {
    #[serde(flatten)]
    pub info: ConsumerInfo,
    pub tenant_id: String,
    pub org_id: String,
    pub password: String,
    /// The Redis nodes the user was set on.
    pub nodes: Vec<String>,
    /// The support log's record of the grant (`GET /admin/errors/<trackingId>`).
    #[serde(rename = "trackingId")]
    pub tracking_id: String,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("info", &self.info)
            .field("tenant_id", &self.tenant_id)
            .field("password", &"<redacted>")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(
        "invalid consumer name {0:?}: 1 to 32 characters, lowercase letters, digits, '_' or '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("the organization id cannot be written into Redis ACL rules (spaces or parentheses)")]
    UnsafeOrg,
    #[error("consumer {0:?} exists for this tenant (revoke it first)")]
    Exists(String),
    #[error("no consumer {0:?} for this tenant")]
    NotFound(String),
    #[error(
        "consumer {0:?} was revoked (or granted again) while it was being granted; nothing of this grant is kept"
    )]
    RevokedMeanwhile(String),
    /// Redis answered `ACL` with an error: a managed Redis that restricts it, an engine user
    /// without `+acl`, or Redis < 7.0.
    #[error(
        "{0}; consumer credentials need Redis >= 7.0 with ACL allowed to the engine's user (a managed Redis that restricts ACL: set the user by hand, docs/consumers.md)"
    )]
    Refused(AclError),
    #[error("{0}")]
    Unreachable(AclError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ConsumerError {
    /// The metric's result label.
    fn label(&self) -> &'static str {
        match self {
            Self::InvalidName(_) | Self::UnsafeOrg => "invalid",
            Self::Exists(_) | Self::RevokedMeanwhile(_) => "exists",
            Self::NotFound(_) => "not_found",
            Self::Refused(_) => "refused",
            Self::Unreachable(_) | Self::Store(_) => "unavailable",
        }
    }

    fn from_acl(e: AclError) -> Self {
        match e {
            AclError::Refused { .. } => Self::Refused(e),
            AclError::Unreachable { .. } => Self::Unreachable(e),
        }
    }
}

/// What the sync did on one node.
#[derive(Default)]
struct NodeSync {
    restored: usize,
    removed: usize,
    /// Records (as stored) whose rules were set anew, with the new rules' digest.
    stale_rules: Vec<(String, String)>,
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    pub nodes: usize,
    pub restored: usize,
    pub removed: usize,
    /// Nodes that could not be read or changed (tried again next time).
    pub failed: usize,
}

impl Consumers {
    pub fn new(store: Store, sealer: Sealer, metrics: Metrics, support: Arc<ErrorLog>) -> Self {
        Self {
            store,
            sealer,
            metrics,
            support,
            refusal_logged: Default::default(),
        }
    }

    fn info(&self, r: &ConsumerRecord) -> ConsumerInfo {
        ConsumerInfo {
            name: r.name.clone(),
            user: r.user.clone(),
            commands: r.commands,
            created_at: r.created_at,
            keys: ConsumerKeys::of(self.store.keys(), &r.org, r.commands),
        }
    }

    fn rules(&self, org: &str, commands: bool, sha256: &str) -> Vec<String> {
        acl_rules(
            self.store.keys(),
            org,
            commands,
            self.store.is_cluster(),
            sha256,
        )
    }

    /// Counts `res` of `action` (`consumer_credentials_total`) and passes it on.
    fn counted<T>(&self, action: &str, res: Result<T, ConsumerError>) -> Result<T, ConsumerError> {
        self.metrics.consumer_credentials(
            action,
            res.as_ref().map_or_else(ConsumerError::label, |_| "ok"),
        );
        res
    }

    /// The support log's record of a change (no secret in it), and the log line.
    fn audit(&self, tenant_id: &str, status: u16, reason: &str, description: String) -> String {
        let tracking_id = crate::protocol::tracking::TrackingId::new().to_string();
        tracing::info!(tenant = %tenant_id, trackingId = %tracking_id, "{description}");
        self.support.record(
            ErrorRecord {
                tracking_id: tracking_id.clone(),
                time: Utc::now(),
                status,
                endpoint: "consumer credentials".into(),
                tenant: Some(tenant_id.to_string()),
                reason: reason.into(),
                description,
            },
            ErrorClass::Tenant,
        );
        tracking_id
    }

    /// Grants consumer `name` of the tenant `tenant_id` (organization `org`): a Redis ACL user
    /// on every data node that reads that organization only (and adds commands with
    /// `commands`). Nothing is left behind when it fails.
    pub async fn grant(
        &self,
        tenant_id: &str,
        org: &str,
        name: &str,
        commands: bool,
    ) -> Result<Granted, ConsumerError> {
        self.counted(
            "grant",
            self.try_grant(tenant_id, org, name, commands).await,
        )
    }

    async fn try_grant(
        &self,
        tenant_id: &str,
        org: &str,
        name: &str,
        commands: bool,
    ) -> Result<Granted, ConsumerError> {
        if !acl::valid_name(name) {
            return Err(ConsumerError::InvalidName(name.to_string()));
        }
        if !acl::acl_safe(org) {
            return Err(ConsumerError::UnsafeOrg);
        }
        let user = user_name(self.store.keys(), tenant_id, name);
        let password = hex::encode(rand::random::<[u8; PASSWORD_BYTES]>());
        let sha256 = hex::encode(sha2::Sha256::digest(password.as_bytes()));
        let rules = self.rules(org, commands, &sha256);
        let record = ConsumerRecord {
            name: name.to_string(),
            user: user.clone(),
            tenant_id: tenant_id.to_string(),
            org: org.to_string(),
            commands,
            created_at: Utc::now(),
            password_sha256: self.sealer.seal(sha256.as_bytes(), &context(&user)),
            rules: acl::rules_digest(&rules),
        };
        let Some(json) = self.store.insert_consumer(&record).await? else {
            return Err(ConsumerError::Exists(name.to_string()));
        };
        let nodes = match self.set_everywhere(&user, &rules).await {
            Ok(nodes) => nodes,
            Err(e) => {
                // Undo this grant only (never a newer one of the same name), then make the
                // nodes match whatever the record is now.
                let _ = self.store.swap_consumer(&user, &json, None).await;
                self.settle(&user).await;
                return Err(e);
            }
        };
        if self.store.consumer_json(&user).await?.as_deref() != Some(json.as_str()) {
            // Revoked (and perhaps granted again) while the user was being set: the nodes
            // follow the record as it is now.
            self.settle(&user).await;
            return Err(ConsumerError::RevokedMeanwhile(name.to_string()));
        }
        let tracking_id = self.audit(
            tenant_id,
            201,
            "consumer_granted",
            format!(
                "consumer {name:?} granted: Redis ACL user {user} reads organization {org} (commands: {commands}) on {} node(s)",
                nodes.len()
            ),
        );
        Ok(Granted {
            info: self.info(&record),
            tenant_id: tenant_id.to_string(),
            org_id: org.to_string(),
            password,
            nodes,
            tracking_id,
        })
    }

    /// Makes every node hold `user` as its record says now: deleted when there is none, else
    /// set with the record's password and rules. Best effort (what fails, the sync finishes).
    async fn settle(&self, user: &str) {
        match self.store.consumer_json(user).await {
            Ok(None) => {
                let _ = self.delete_everywhere(user).await;
            }
            Ok(Some(json)) => {
                let Some((record, sha)) = self.open(user, &json) else {
                    return;
                };
                let rules = self.rules(&record.org, record.commands, &sha);
                if let Err(e) = self.set_everywhere(user, &rules).await {
                    tracing::warn!(error = %e, user, "consumer user not set again; the sync does it");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, user, "consumer record unreadable; the sync settles the user")
            }
        }
    }

    /// A stored record and its password's SHA-256 (hex), if it can be read and opened.
    fn open(&self, user: &str, json: &str) -> Option<(ConsumerRecord, String)> {
        let record: ConsumerRecord = serde_json::from_str(json)
            .map_err(|e| tracing::warn!(user, error = %e, "consumer record corrupt"))
            .ok()?;
        let sha = self
            .sealer
            .open(&record.password_sha256, &context(user))
            .map_err(|_| {
                tracing::warn!(
                    user,
                    "consumer record cannot be opened (another encryption key?)"
                )
            })
            .ok()?;
        Some((record, String::from_utf8_lossy(&sha).into_owned()))
    }

    /// Sets `user` on every data node; the nodes' addresses, or the first failure.
    async fn set_everywhere(
        &self,
        user: &str,
        rules: &[String],
    ) -> Result<Vec<String>, ConsumerError> {
        let nodes = self.store.data_nodes().await?;
        let results =
            futures::future::join_all(nodes.iter().map(|n| n.set_user(&self.store, user, rules)))
                .await;
        let mut addrs = Vec::with_capacity(nodes.len());
        for (node, res) in nodes.iter().zip(results) {
            res.map_err(ConsumerError::from_acl)?;
            addrs.push(node.addr.clone());
        }
        Ok(addrs)
    }

    /// Deletes `user` on every data node: how many had it, and the nodes that could not be
    /// reached or refused (they keep the user until the sync removes it).
    async fn delete_everywhere(&self, user: &str) -> Result<(usize, Vec<AclError>), StoreError> {
        let nodes = self.store.data_nodes().await?;
        let results =
            futures::future::join_all(nodes.iter().map(|n| n.del_user(&self.store, user))).await;
        let mut had = 0;
        let mut failed = Vec::new();
        for res in results {
            match res {
                Ok(true) => had += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, user, "consumer user not deleted on a node; the sync deletes it");
                    failed.push(e);
                }
            }
        }
        Ok((had, failed))
    }

    /// The consumers of `tenant_id`, by name (never a password).
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<ConsumerInfo>, ConsumerError> {
        let mut out: Vec<ConsumerInfo> = self
            .store
            .consumer_records()
            .await?
            .iter()
            .filter(|r| r.tenant_id == tenant_id)
            .map(|r| self.info(r))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Revokes consumer `name` of `tenant_id`: its record goes, then its user on every node
    /// (Redis closes its connections: its next command fails to authenticate). A node that
    /// cannot be reached makes it answer [`ConsumerError::Unreachable`]: the record is gone, so
    /// a retry (or the sync, once the node is back) finishes the revocation.
    pub async fn revoke(&self, tenant_id: &str, name: &str) -> Result<String, ConsumerError> {
        self.counted("revoke", self.try_revoke(tenant_id, name, "revoked").await)
    }

    async fn try_revoke(
        &self,
        tenant_id: &str,
        name: &str,
        why: &str,
    ) -> Result<String, ConsumerError> {
        if !acl::valid_name(name) {
            return Err(ConsumerError::NotFound(name.to_string()));
        }
        let user = user_name(self.store.keys(), tenant_id, name);
        let recorded = self.store.remove_consumer(&user).await?;
        let (had, failed) = self.delete_everywhere(&user).await?;
        if let Some(e) = failed.into_iter().next() {
            return Err(ConsumerError::from_acl(e));
        }
        if !recorded && had == 0 {
            return Err(ConsumerError::NotFound(name.to_string()));
        }
        let tracking_id = self.audit(
            tenant_id,
            204,
            "consumer_revoked",
            format!("consumer {name:?} {why}: Redis ACL user {user} deleted on {had} node(s)"),
        );
        Ok(tracking_id)
    }

    /// Revokes every consumer of `tenant_id` (deprovisioning): the records go (an error is
    /// returned only when Redis cannot be read or written), the users wherever reachable (the
    /// sync deletes them from a node that was not).
    pub async fn revoke_all(&self, tenant_id: &str) -> Result<usize, StoreError> {
        let records = self.store.consumer_records().await?;
        let mut n = 0;
        for r in records.iter().filter(|r| r.tenant_id == tenant_id) {
            let res = self
                .try_revoke(tenant_id, &r.name, "revoked (tenant deprovisioned)")
                .await;
            match self.counted("revoke", res) {
                Ok(_) => n += 1,
                Err(ConsumerError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(tenant = %tenant_id, error = %e, "consumer revoked on record; a node still has it until the sync")
                }
            }
        }
        Ok(n)
    }

    /// Makes every data node hold exactly the users on record: a missing one (the node joined
    /// or restarted without an ACL file) is set, one whose password or rules version differs is
    /// set again, an engine-made user no record names (revoked while the node was unreachable)
    /// is deleted. A record whose rules changed (an upgrade, a switch to a cluster) is marked
    /// current once every node has the new rules.
    pub async fn sync(&self) -> Result<Synced, StoreError> {
        let nodes = self.store.data_nodes().await?;
        let mut done = Synced {
            nodes: nodes.len(),
            ..Default::default()
        };
        let mut stale_rules: Option<Vec<(String, String)>> = None;
        for node in &nodes {
            match self.sync_node(node).await {
                Ok(s) => {
                    done.restored += s.restored;
                    done.removed += s.removed;
                    // Records whose rules are new on every node (the same on each pass).
                    stale_rules.get_or_insert(s.stale_rules);
                }
                Err(e) => {
                    use std::sync::atomic::Ordering;
                    done.failed += 1;
                    let refused = matches!(e, AclError::Refused { .. });
                    if !refused || !self.refusal_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "consumer credentials: node not synced; tried again next time{}",
                            if refused { " (a node refusing ACL is logged once)" } else { "" });
                    }
                }
            }
        }
        if done.failed == 0 {
            for (json, digest) in stale_rules.unwrap_or_default() {
                if let Ok(mut r) = serde_json::from_str::<ConsumerRecord>(&json) {
                    r.rules = digest;
                    let _ = self
                        .store
                        .swap_consumer(&r.user.clone(), &json, Some(&r))
                        .await;
                }
            }
        }
        Ok(done)
    }

    async fn sync_node(&self, node: &Node) -> Result<NodeSync, AclError> {
        // The node's users first, then the records (see the module's comment).
        let lines = node.users(&self.store).await?;
        let unreachable = |e: StoreError| AclError::Unreachable {
            node: "records".into(),
            error: e.to_string(),
        };
        let all: Vec<(String, String)> = self
            .store
            .query(redis::cmd("HGETALL").arg(self.store.keys().consumers()))
            .await
            .map_err(unreachable)?;
        self.metrics.consumer_users.set(all.len() as i64);
        let keys = self.store.keys();
        // `user <name> <rules…>`: the name, and the rest of the line.
        let present: Vec<(&str, &str)> = lines
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("user ")?;
                Some(rest.split_once(' ').unwrap_or((rest, "")))
            })
            .collect();
        let mut out = NodeSync::default();
        for (user, json) in &all {
            let Some((r, sha)) = self.open(user, json) else {
                continue;
            };
            let rules = self.rules(&r.org, r.commands, &sha);
            let digest = acl::rules_digest(&rules);
            let has = present
                .iter()
                .any(|(u, line)| u == user && line.contains(&format!("#{sha}")));
            if has && r.rules == digest {
                continue;
            }
            let res = node.set_user(&self.store, user, &rules).await;
            self.metrics.consumer_credentials(
                "restore",
                match &res {
                    Ok(()) => "ok",
                    Err(AclError::Refused { .. }) => "refused",
                    Err(AclError::Unreachable { .. }) => "unavailable",
                },
            );
            res?;
            // Changed meanwhile (revoked, granted again)? Then this set may have come after
            // the change's own: the nodes follow the record as it is now.
            if self
                .store
                .consumer_json(user)
                .await
                .ok()
                .flatten()
                .as_deref()
                != Some(json.as_str())
            {
                self.settle(user).await;
                continue;
            }
            if r.rules != digest {
                out.stale_rules.push((json.clone(), digest));
            }
            if !has {
                out.restored += 1;
                tracing::info!(node = %node.addr, user = %user, "consumer credentials: user set on a node that lacked it");
            }
        }
        for (user, _) in &present {
            if acl::is_consumer_user(keys, user) && !all.iter().any(|(u, _)| u == user) {
                let res = node.del_user(&self.store, user).await;
                self.metrics.consumer_credentials(
                    "remove",
                    match &res {
                        Ok(_) => "ok",
                        Err(AclError::Refused { .. }) => "refused",
                        Err(AclError::Unreachable { .. }) => "unavailable",
                    },
                );
                if res? {
                    out.removed += 1;
                    tracing::info!(node = %node.addr, user, "consumer credentials: a user no record names deleted");
                }
            }
        }
        Ok(out)
    }

    /// Runs [`Consumers::sync`] every `every` until `stop` resolves (the first one at once).
    pub async fn run_sync(
        &self,
        every: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            match self.sync().await {
                Ok(s) if s.restored + s.removed > 0 => tracing::info!(
                    nodes = s.nodes,
                    restored = s.restored,
                    removed = s.removed,
                    failed = s.failed,
                    "consumer credentials synced"
                ),
                Ok(_) => {}
                Err(e) if e.is_unavailable() => {}
                Err(e) => tracing::warn!(error = %e, "consumer credentials not synced"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// The associated data a record's password digest is sealed with.
fn context(user: &str) -> String {
    format!("consumer:{user}")
}

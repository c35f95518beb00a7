//! The lifecycle stream `<p>:tenants`: what happened to each tenant, and when.
use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::Tenants;
use crate::store::{NOW_MS_LUA, StoreError};

/// Appends a lifecycle entry unless past its write deadline (lifecycle.lua after NOW_MS_LUA).
static XADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!("{NOW_MS_LUA}\n{}", include_str!("lifecycle.lua")))
});

impl Tenants {
    /// Appends a lifecycle entry to `<p>:tenants`, now.
    pub async fn lifecycle(
        &self,
        tenant_id: &str,
        org: &str,
        event: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.lifecycle_at(tenant_id, org, event, reason, Utc::now())
            .await
    }

    /// Appends a lifecycle entry of something that happened at `ts`, unless Redis runs it past
    /// its write deadline (a stall: then `Err(Timeout)` and nothing written, so that a retry
    /// never writes it twice).
    pub async fn lifecycle_at(
        &self,
        tenant_id: &str,
        org: &str,
        event: &str,
        reason: Option<&str>,
        ts: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let ts = ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut inv = XADD.key(self.store.keys().tenants_stream());
        inv.arg(self.store.write_deadline_ms());
        for (k, v) in [
            ("tenant", tenant_id),
            ("org", org),
            ("event", event),
            ("ts", &ts),
        ] {
            inv.arg(k).arg(v);
        }
        if let Some(reason) = reason {
            inv.arg("reason").arg(reason);
        }
        let added: i64 = self.store.invoke(&inv).await?;
        if added == 1 {
            Ok(())
        } else {
            Err(self.store.late_write(-added))
        }
    }

    /// The newest lifecycle entries of `tenant_id` (field maps), newest first, among the last
    /// `scan` entries of `<p>:tenants`.
    pub async fn history(
        &self,
        tenant_id: &str,
        scan: usize,
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        let reply: redis::streams::StreamRangeReply = self
            .store
            .query(
                redis::cmd("XREVRANGE")
                    .arg(self.store.keys().tenants_stream())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(scan),
            )
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| {
                let mut m: BTreeMap<String, String> = e
                    .map
                    .iter()
                    .filter_map(|(k, v)| {
                        redis::from_redis_value::<String>(v.clone())
                            .ok()
                            .map(|v| (k.clone(), v))
                    })
                    .collect();
                m.insert("id".into(), e.id);
                m
            })
            .filter(|m| m.get("tenant").is_some_and(|t| t == tenant_id))
            .collect())
    }
}

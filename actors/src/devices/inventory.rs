//! Inventory sync: lists a tenant's devices and workspaces from `webexapisBaseUrl` (following
//! `Link: rel="next"` paging), reduces each item to the fields downstream joins need, and
//! applies the full listing to `<p>:{<org>}:devices` / `:workspaces` with one change entry per
//! add/update/remove on `<p>:{<org>}:inventory`. A listing that fails midway writes nothing
//! (a partial listing would look like removals).
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::access::{CallKind, Grants};
use super::{Api, DeviceError};
use crate::shutdown::Shutdown;
use crate::store::devices::{DeviceStore, InventoryChanges, InventoryKind};
use crate::store::tenants::ProvisioningState;
use crate::tenant::{ChildError, TenantShared};

/// A listing longer than this many pages is cut off as an error (a paging loop).
const MAX_PAGES: usize = 10_000;
/// Periodic syncs vary by ±this fraction so tenants do not call Webex in step.
const JITTER: f64 = 0.1;

/// What one sync found; `None` when the tenant lacks the scope for that listing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InventoryReport {
    pub devices: Option<InventoryChanges>,
    pub workspaces: Option<InventoryChanges>,
}

/// The device fields kept: what analytics joins status records with.
pub fn device_entry(item: &Value) -> Option<(String, String)> {
    let id = item.get("id")?.as_str()?.to_string();
    let s = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
    let mut tags: Vec<String> = item
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    let entry = json!({
        "id": id,
        "display_name": s("displayName"),
        "product": s("product"),
        "type": s("type"),
        "workspace_id": s("workspaceId").or_else(|| s("placeId")),
        "connection_status": s("connectionStatus"),
        "tags": tags,
        "serial": s("serial"),
        "software": s("software"),
        "mac": s("mac"),
        "ip": s("ip"),
    });
    Some((id, entry.to_string()))
}

/// The workspace fields kept.
pub fn workspace_entry(item: &Value) -> Option<(String, String)> {
    let id = item.get("id")?.as_str()?.to_string();
    let s = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
    let entry = json!({
        "id": id,
        "display_name": s("displayName"),
        "type": s("type"),
        "capacity": item.get("capacity").and_then(Value::as_u64),
        "location_id": s("locationId").or_else(|| s("workspaceLocationId")),
        "floor_id": s("floorId"),
        "sip_address": s("sipAddress"),
        "hotdesking_status": s("hotdeskingStatus"),
    });
    Some((id, entry.to_string()))
}

impl Api<'_> {
    /// Lists every page of `path` under the tenant's API base.
    async fn list_all(&self, kind: CallKind, path: &str) -> Result<Vec<Value>, DeviceError> {
        let record = self.tenant.record();
        let base = self.api_base(&record.webexapis_base_url)?;
        let mut url = base.join(path).expect("relative path joins");
        url.query_pairs_mut().append_pair(
            "max",
            &self.tenant.deps().config().devices.page_size.to_string(),
        );
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut next = Some(url);
        while let Some(url) = next.take() {
            if seen.len() >= MAX_PAGES || !seen.insert(url.to_string()) {
                return Err(DeviceError::Unavailable(format!(
                    "{path}: paging does not end (page {url} repeated or more than {MAX_PAGES} pages)"
                )));
            }
            let answer = self
                .device_call(kind, Method::GET, url, None, self.call_deadline())
                .await?;
            match answer.body.get("items").and_then(Value::as_array) {
                Some(page) => items.extend(page.iter().cloned()),
                None => {
                    return Err(DeviceError::Unavailable(format!(
                        "{path}: answer has no items array"
                    )));
                }
            }
            next = match answer.next {
                super::NextPage::None => None,
                super::NextPage::Follow(n) => url::Url::parse(&n).ok(),
                super::NextPage::Refused(target) => {
                    // Taking the pages so far as the whole list would remove every device after
                    // them: a listing cut short is a failed listing, and nothing is written.
                    return Err(DeviceError::Unavailable(format!(
                        "{path}: the next page is on another host ({target}); not followed, so the listing is incomplete and nothing was written"
                    )));
                }
            };
        }
        Ok(items)
    }

    /// One full inventory sync (single-flight per tenant).
    pub async fn sync_inventory(&self) -> Result<InventoryReport, DeviceError> {
        let _one_at_a_time = self.tenant.devices.inventory.lock().await;
        let record = self.tenant.record();
        if record.provisioning_state != ProvisioningState::Completed {
            return Err(DeviceError::NotActive(record.provisioning_state.as_str()));
        }
        let grants = Grants::new(&record.scopes, &record.xapi_access);
        let store = DeviceStore::new(self.tenant.deps().store().clone());
        let maxlen = self.tenant.deps().config().devices.results_maxlen;
        let mut report = InventoryReport::default();
        let result: Result<(), DeviceError> = async {
            for (call, path, kind) in [
                (CallKind::Devices, "devices", InventoryKind::Device),
                (CallKind::Workspaces, "workspaces", InventoryKind::Workspace),
            ] {
                if grants.check_scope(call).is_err() {
                    tracing::debug!(tenant = %self.tenant.tenant_id, kind = path, "inventory skipped: scope not granted");
                    continue;
                }
                let normalize = match kind {
                    InventoryKind::Device => device_entry,
                    InventoryKind::Workspace => workspace_entry,
                };
                let items = self.list_all(call, path).await?;
                let mut entries: Vec<(String, String)> =
                    items.iter().filter_map(normalize).collect();
                // Pages are offsets (`start=`): an item removed while we page shifts the later
                // ones back, and one of them can fall between two pages. So a removal is
                // confirmed by a second listing: what either listing has is kept (the second's
                // value wins), and only an item missing from both is removed.
                let listed: std::collections::HashSet<&str> =
                    entries.iter().map(|(id, _)| id.as_str()).collect();
                let stored = store.inventory_ids(&self.tenant.org_id, kind).await?;
                if stored.iter().any(|id| !listed.contains(id.as_str())) {
                    let again = self.list_all(call, path).await?;
                    let mut merged: std::collections::BTreeMap<String, String> =
                        entries.into_iter().collect();
                    merged.extend(again.iter().filter_map(normalize));
                    entries = merged.into_iter().collect();
                }
                let changes = store
                    .apply_inventory(&self.tenant.org_id, kind, &entries, maxlen)
                    .await?;
                match kind {
                    InventoryKind::Device => report.devices = Some(changes),
                    InventoryKind::Workspace => report.workspaces = Some(changes),
                }
            }
            Ok(())
        }
        .await;
        let mut changes = Vec::new();
        for (kind, c) in [("device", report.devices), ("workspace", report.workspaces)] {
            if let Some(c) = c {
                changes.extend([
                    (kind, "add", c.added),
                    (kind, "update", c.updated),
                    (kind, "remove", c.removed),
                ]);
            }
        }
        let metrics = &self.tenant.deps().metrics();
        match result {
            Ok(()) => {
                metrics.inventory_sync("ok", &changes);
                if let Err(e) = store.mark_synced(&self.tenant.org_id).await {
                    tracing::debug!(tenant = %self.tenant.tenant_id, error = %e, "inventory sync time not recorded");
                }
                tracing::info!(tenant = %self.tenant.tenant_id, devices = ?report.devices, workspaces = ?report.workspaces, "inventory synced");
                Ok(report)
            }
            Err(e) => {
                metrics.inventory_sync("error", &changes);
                Err(e)
            }
        }
    }
}

/// The stored inventory of `kind` for `tenant`, sorted by display name (then id).
pub async fn stored(
    tenant: &TenantShared,
    kind: InventoryKind,
) -> Result<Vec<Value>, crate::store::StoreError> {
    let store = DeviceStore::new(tenant.deps().store().clone());
    let map = store.inventory(&tenant.org_id, kind).await?;
    let mut items: Vec<Value> = map
        .values()
        .filter_map(|v| serde_json::from_str(v).ok())
        .collect();
    items.sort_by_cached_key(|v| {
        (
            v["display_name"].as_str().unwrap_or_default().to_string(),
            v["id"].as_str().unwrap_or_default().to_string(),
        )
    });
    Ok(items)
}

/// The inventory child: a sync at start (activation or resume), then one per
/// `devices.inventory_interval_secs`, jittered. Transient failures end the child so the
/// supervisor restarts it with backoff; refusals (a missing scope on the Webex side) wait for
/// the next round.
pub async fn run(shared: Arc<TenantShared>, stop: Shutdown) -> Result<(), ChildError> {
    let every = Duration::from_secs_f64(shared.deps().config().devices.inventory_interval_secs);
    // A new owner (restart, takeover) whose predecessor synced recently waits out the rest of
    // the interval (jittered), so thousands of tenants taken over together do not all list
    // their devices at once; a tenant never synced (a new activation) syncs now.
    let store = DeviceStore::new(shared.deps().store().clone());
    let mut wait = match store.synced_ago(&shared.org_id).await {
        Ok(Some(ago)) if ago < every => Some(
            (every - ago)
                .mul_f64(1.0 + JITTER * (rand::random::<f64>() * 2.0 - 1.0))
                .max(Duration::from_millis(10)),
        ),
        _ => None,
    };
    loop {
        if let Some(d) = wait {
            tokio::select! {
                _ = stop.wait() => return Ok(()),
                _ = tokio::time::sleep(d) => {}
            }
        }
        let jitter = 1.0 + JITTER * (rand::random::<f64>() * 2.0 - 1.0);
        wait = Some(every.mul_f64(jitter).max(Duration::from_millis(10)));
        let api = Api::of(&shared);
        // Boxed: the sync's state (4 KB) exists only while it runs, not while the loop sleeps.
        let sync = Box::pin(api.sync_inventory());
        let res = tokio::select! {
            _ = stop.wait() => return Ok(()),
            r = sync => r,
        };
        match res {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                // The restart (after its backoff) syncs at once instead of waiting out the
                // interval from the last success.
                if let Err(e) = store.forget_synced(&shared.org_id).await {
                    tracing::debug!(tenant = %shared.tenant_id, error = %e, "inventory sync time not cleared");
                }
                return Err(ChildError::new("inventory sync", e));
            }
            Err(e) => {
                tracing::warn!(tenant = %shared.tenant_id, error = %e, code = e.code(), "inventory sync refused; next round");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_entries_keep_join_fields_in_a_stable_form() {
        let item = json!({
            "id": "D1", "displayName": "Room 1", "placeId": "W1", "product": "Cisco Room Bar",
            "type": "roomdesk", "connectionStatus": "connected", "tags": ["b", "a"],
            "serial": "FOC1", "software": "RoomOS 11", "mac": "00:11", "ip": "10.0.0.1",
            "lastSeen": "2026-01-01T00:00:00Z", "errorCodes": []
        });
        let (id, text) = device_entry(&item).unwrap();
        assert_eq!(id, "D1");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["workspace_id"], "W1");
        assert_eq!(v["tags"], json!(["a", "b"]));
        assert!(
            v.get("lastSeen").is_none(),
            "volatile fields would update every sync"
        );
        // Same item, fields in another order → same text (no spurious updates).
        let reordered: Value = serde_json::from_str(
            r#"{"tags":["a","b"],"ip":"10.0.0.1","mac":"00:11","software":"RoomOS 11","serial":"FOC1",
                "connectionStatus":"connected","type":"roomdesk","product":"Cisco Room Bar",
                "placeId":"W1","displayName":"Room 1","id":"D1"}"#,
        )
        .unwrap();
        assert_eq!(device_entry(&reordered).unwrap().1, text);
        assert!(device_entry(&json!({"displayName": "no id"})).is_none());
    }

    #[test]
    fn workspace_entries() {
        let (id, text) = workspace_entry(&json!({
            "id": "W1", "displayName": "Huddle", "type": "huddle", "capacity": 4,
            "locationId": "L1", "sipAddress": "huddle@example.com"
        }))
        .unwrap();
        assert_eq!(id, "W1");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["capacity"], 4);
        assert_eq!(v["location_id"], "L1");
    }
}

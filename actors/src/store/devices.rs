//! The device API's Redis side: inventory hashes with their change stream, and the command
//! stream (consumer group) with its results stream. Every key carries the `{org}` hash tag, so
//! each script and transaction stays in one Cluster slot.
use std::collections::HashMap;

use redis::AsyncCommands;

use super::{Store, StoreError};

/// Changes written by one inventory apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InventoryChanges {
    pub total: usize,
    pub added: u64,
    pub updated: u64,
    pub removed: u64,
}

/// Which inventory hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryKind {
    Device,
    Workspace,
}

impl InventoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Workspace => "workspace",
        }
    }
}

/// How a request id stood when a consumer marked it as being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// First time: go ahead.
    New,
    /// This same stream entry was marked before (a consumer died mid-call): outcome unknown.
    SameEntry,
    /// Another entry used this request id already.
    OtherEntry(String),
}

/// One entry read from the command stream.
#[derive(Debug, Clone)]
pub struct CommandEntry {
    pub id: String,
    pub fields: HashMap<String, String>,
}

/// The entries of an XREADGROUP reply (one stream), RESP2 or RESP3; a deleted entry has no
/// fields.
fn parse_read_reply(reply: redis::Value) -> Vec<CommandEntry> {
    use redis::Value;
    let streams: Vec<Value> = match reply {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(parse_entries).collect()
}

/// `[[id, [field, value, …] | nil], …]` → entries (a deleted entry has no fields).
fn parse_entries(entries: redis::Value) -> Vec<CommandEntry> {
    use redis::Value;
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let Value::Array(parts) = e else { continue };
        let Some(id) = parts.first().and_then(text) else {
            continue;
        };
        let mut fields = HashMap::new();
        if let Some(Value::Array(kv)) = parts.get(1) {
            for pair in kv.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (text(k), text(v))
                {
                    fields.insert(k, v);
                }
            }
        }
        out.push(CommandEntry { id, fields });
    }
    out
}

/// A request id is remembered this long (commands run at most once per id).
pub const REQUEST_ID_TTL_SECS: u64 = 24 * 3600;

/// The device API's view of Redis.
/// Tenant-hash field: when the inventory was last fully synced (epoch ms).
const INVENTORY_SYNCED: &str = "inventory_synced_ms";

/// Diffs a full listing against the stored inventory hash (see devices_inventory.lua).
/// Compiled (hashed) once: every tenant's pollers and inventory make a `DeviceStore`, and a
/// script per store held 2.4 KB per tenant (measured at 10,000 tenants).
static INVENTORY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("devices_inventory.lua")));

#[derive(Clone)]
pub struct DeviceStore {
    store: Store,
}

impl DeviceStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn hash_key(&self, org: &str, kind: InventoryKind) -> String {
        let keys = self.store.keys();
        match kind {
            InventoryKind::Device => keys.devices(org),
            InventoryKind::Workspace => keys.workspaces(org),
        }
    }

    /// How many devices and workspaces the stored inventory of `org` holds.
    pub async fn counts(&self, org: &str) -> Result<(u64, u64), StoreError> {
        let keys = self.store.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN")
            .arg(keys.devices(org))
            .cmd("HLEN")
            .arg(keys.workspaces(org));
        self.store.query_pipe(&pipe).await
    }

    /// Applies a full listing of `kind` for `org` (entries: id → canonical JSON).
    pub async fn apply_inventory(
        &self,
        org: &str,
        kind: InventoryKind,
        entries: &[(String, String)],
        maxlen: u64,
    ) -> Result<InventoryChanges, StoreError> {
        let keys = self.store.keys();
        let hash = self.hash_key(org, kind);
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut inv = INVENTORY.prepare_invoke();
        inv.key(hash)
            .key(keys.inventory_stream(org))
            .arg(kind.as_str())
            .arg(org)
            .arg(ts)
            .arg(maxlen);
        for (id, json) in entries {
            inv.arg(id).arg(json);
        }
        let (added, updated, removed): (u64, u64, u64) = self.store.invoke(&inv).await?;
        Ok(InventoryChanges {
            total: entries.len(),
            added,
            updated,
            removed,
        })
    }

    /// Records that `org`'s inventory was fully synced now (`inventory_synced_ms` in the
    /// tenant hash): a new owner (a restart, a takeover) waits out the interval instead of
    /// syncing every tenant at once.
    pub async fn mark_synced(&self, org: &str) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        self.store
            .query(&redis::Cmd::hset(
                self.store.keys().tenant(org),
                INVENTORY_SYNCED,
                now,
            ))
            .await
    }

    /// Forgets when `org`'s inventory was synced (an activation: its first owner syncs at once).
    pub async fn forget_synced(&self, org: &str) -> Result<(), StoreError> {
        self.store
            .query(&redis::Cmd::hdel(
                self.store.keys().tenant(org),
                INVENTORY_SYNCED,
            ))
            .await
    }

    /// How long ago `org`'s inventory was last fully synced (None: never, or not recorded).
    pub async fn synced_ago(&self, org: &str) -> Result<Option<std::time::Duration>, StoreError> {
        let at: Option<i64> = self
            .store
            .query(&redis::Cmd::hget(
                self.store.keys().tenant(org),
                INVENTORY_SYNCED,
            ))
            .await?;
        let now = chrono::Utc::now().timestamp_millis();
        Ok(at.map(|t| std::time::Duration::from_millis(now.saturating_sub(t).max(0) as u64)))
    }

    /// The ids in the stored inventory of `kind` for `org`.
    pub async fn inventory_ids(
        &self,
        org: &str,
        kind: InventoryKind,
    ) -> Result<Vec<String>, StoreError> {
        let hash = self.hash_key(org, kind);
        self.store.query(&redis::Cmd::hkeys(hash)).await
    }

    /// The stored inventory of `kind` for `org`: id → JSON.
    pub async fn inventory(
        &self,
        org: &str,
        kind: InventoryKind,
    ) -> Result<HashMap<String, String>, StoreError> {
        let hash = self.hash_key(org, kind);
        self.store.query(&redis::Cmd::hgetall(hash)).await
    }

    /// Creates the consumer group of `org`'s command stream (from the stream's start, so
    /// commands written before the tenant's first activation are not skipped).
    pub async fn ensure_group(&self, org: &str, group: &str) -> Result<(), StoreError> {
        let res: Result<(), StoreError> = self
            .store
            .query(&redis::Cmd::xgroup_create_mkstream(
                self.store.keys().commands_stream(org),
                group,
                "0",
            ))
            .await;
        match res {
            Err(StoreError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads up to `count` entries: `">"` for new ones, `"0"` for this consumer's pending ones.
    /// Never blocks (a blocking read would stall the shared multiplexed connection).
    pub async fn read_commands(
        &self,
        org: &str,
        group: &str,
        consumer: &str,
        from: &str,
        count: usize,
    ) -> Result<Vec<CommandEntry>, StoreError> {
        // Parsed by hand: an entry that was deleted (XDEL, trimming) while pending comes back
        // with nil fields, which the typed reply refuses — and a consumer that cannot read
        // past it would stall on it forever.
        let reply: redis::Value = self
            .store
            .query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(self.store.keys().commands_stream(org))
                    .arg(from),
            )
            .await?;
        Ok(parse_read_reply(reply))
    }

    /// Claims entries another consumer left pending for `min_idle_ms` (a dead replica's).
    pub async fn claim_stale(
        &self,
        org: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<CommandEntry>, StoreError> {
        // Reply: [next cursor, [entries], [deleted ids]].
        let reply: redis::Value = self
            .store
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(self.store.keys().commands_stream(org))
                    .arg(group)
                    .arg(consumer)
                    .arg(min_idle_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        Ok(match reply {
            redis::Value::Array(mut parts) if parts.len() >= 2 => {
                parse_entries(parts.swap_remove(1))
            }
            _ => Vec::new(),
        })
    }

    /// How many entries of `group` are pending with consumers other than `consumer`.
    pub async fn pending_of_others(
        &self,
        org: &str,
        group: &str,
        consumer: &str,
    ) -> Result<u64, StoreError> {
        // Reply: [count, first id, last id, [[consumer, count], ...]].
        let reply: redis::Value = self
            .store
            .query(
                redis::cmd("XPENDING")
                    .arg(self.store.keys().commands_stream(org))
                    .arg(group),
            )
            .await?;
        let redis::Value::Array(parts) = reply else {
            return Ok(0);
        };
        let Some(redis::Value::Array(consumers)) = parts.get(3) else {
            return Ok(0);
        };
        let mut others = 0;
        for c in consumers {
            let Ok((name, count)) = redis::from_redis_value::<(String, u64)>(c.clone()) else {
                continue;
            };
            if name != consumer {
                others += count;
            }
        }
        Ok(others)
    }

    /// Marks `request_id` as sent by stream entry `entry` (SET NX, 24 h).
    pub async fn mark_request(
        &self,
        org: &str,
        request_id: &str,
        entry: &str,
    ) -> Result<Mark, StoreError> {
        let mut conn = self.store.conn()?;
        let key = self.store.keys().command_request(org, request_id);
        let set: Option<String> = self
            .store
            .bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(entry)
                    .arg("NX")
                    .arg("EX")
                    .arg(REQUEST_ID_TTL_SECS)
                    .query_async(&mut conn),
            )
            .await?;
        if set.is_some() {
            return Ok(Mark::New);
        }
        let holder: Option<String> = self.store.bounded(conn.get(&key)).await?;
        Ok(match holder {
            Some(h) if h == entry => Mark::SameEntry,
            Some(h) => Mark::OtherEntry(h),
            // Expired between the two calls: treat as ours now.
            None => Mark::New,
        })
    }

    /// Writes the results and acknowledges their requests in one transaction: a request is
    /// never acknowledged without its result, nor answered twice.
    pub async fn finish_commands(
        &self,
        org: &str,
        group: &str,
        results: &[(String, Vec<(String, String)>)],
        maxlen: u64,
    ) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        let keys = self.store.keys();
        let results_key = keys.command_results(org);
        let stream = keys.commands_stream(org);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (entry, fields) in results {
            pipe.cmd("XADD")
                .arg(&results_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(maxlen)
                .arg("*")
                .arg(fields)
                .ignore();
            pipe.xack(&stream, group, &[entry]).ignore();
        }
        let _: () = self.store.query_pipe(&pipe).await?;
        Ok(())
    }
}

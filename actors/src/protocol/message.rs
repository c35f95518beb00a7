//! xAPI notification messages (webhook bodies and queue entries) and their normalization into
//! stream records. Parsing validates what the contract relies on; [`DeviceState::apply`] is the
//! reference semantics of status diffs (sets only for changed values, removals only for keys
//! the device has or whose state is unknown, full syncs reconciled, stale updates skipped) that
//! the Redis script implements atomically.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Messages older than this, or further in the future, are refused (replay protection).
pub const MAX_MESSAGE_AGE: chrono::Duration = chrono::Duration::minutes(5);

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    Queue,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Queue => "queue",
        }
    }
}

/// One event of an `events` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub key: String,
    pub value: Value,
    pub timestamp: String,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Status {
        updated: BTreeMap<String, Value>,
        removed: Vec<String>,
        full_sync: bool,
    },
    Events(Vec<Event>),
    HealthCheck,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub app_id: String,
    pub org_id: String,
    pub device_id: String,
    pub workspace_id: String,
    /// The `timestamp` as sent (written to records verbatim).
    pub timestamp: String,
    pub ts: DateTime<Utc>,
    pub body: Body,
}

/// Why a message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message timestamp {0} is more than 5 minutes old or in the future")]
    Stale(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    app_id: Option<String>,
    device_id: Option<String>,
    workspace_id: Option<String>,
    org_id: Option<String>,
    timestamp: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    changes: Option<RawChanges>,
    is_full_sync: Option<bool>,
    events: Option<Vec<RawEvent>>,
}

#[derive(Deserialize)]
struct RawChanges {
    #[serde(default)]
    updated: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    removed: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawEvent {
    key: Option<String>,
    value: Option<Value>,
    timestamp: Option<String>,
}

fn malformed(s: impl Into<String>) -> MessageError {
    MessageError::Malformed(s.into())
}

fn required(v: Option<String>, name: &str) -> Result<String, MessageError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(format!("{name} is required")))
}

/// Parses JSON bytes into a message.
pub fn parse(bytes: &[u8]) -> Result<Message, MessageError> {
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
    from_raw(raw)
}

/// Parses an already-decoded JSON value (queue entries).
pub fn from_value(v: Value) -> Result<Message, MessageError> {
    let raw: Raw =
        serde_json::from_value(v).map_err(|e| malformed(format!("invalid message: {e}")))?;
    from_raw(raw)
}

fn from_raw(raw: Raw) -> Result<Message, MessageError> {
    let timestamp = required(raw.timestamp, "timestamp")?;
    let ts = DateTime::parse_from_rfc3339(&timestamp)
        .map_err(|_| malformed("timestamp is not an ISO 8601 UTC date time"))?
        .with_timezone(&Utc);
    let kind = required(raw.kind, "type")?;
    let app_id = required(raw.app_id, "appId")?;
    if kind == "healthCheck" {
        return Ok(Message {
            app_id,
            org_id: raw.org_id.unwrap_or_default(),
            device_id: raw.device_id.unwrap_or_default(),
            workspace_id: raw.workspace_id.unwrap_or_default(),
            timestamp,
            ts,
            body: Body::HealthCheck,
        });
    }
    let org_id = required(raw.org_id, "orgId")?;
    let device_id = required(raw.device_id, "deviceId")?;
    let workspace_id = raw.workspace_id.unwrap_or_default();
    let body = match kind.as_str() {
        "status" => {
            let changes = raw
                .changes
                .ok_or_else(|| malformed("changes is required for status"))?;
            let full_sync = raw
                .is_full_sync
                .ok_or_else(|| malformed("isFullSync is required for status"))?;
            let updated: BTreeMap<String, Value> =
                changes.updated.unwrap_or_default().into_iter().collect();
            let mut removed = changes.removed.unwrap_or_default();
            removed.sort();
            removed.dedup();
            if updated.keys().chain(removed.iter()).any(String::is_empty) {
                return Err(malformed("empty status key"));
            }
            Body::Status {
                updated,
                removed,
                full_sync,
            }
        }
        "events" => {
            let events = raw
                .events
                .ok_or_else(|| malformed("events is required for events"))?;
            let events = events
                .into_iter()
                .map(|e| {
                    Ok(Event {
                        key: required(e.key, "events.key")?,
                        value: e.value.unwrap_or(Value::Object(Default::default())),
                        timestamp: e.timestamp.unwrap_or_else(|| timestamp.clone()),
                    })
                })
                .collect::<Result<Vec<_>, MessageError>>()?;
            Body::Events(events)
        }
        other => return Err(malformed(format!("unknown type {other:?}"))),
    };
    Ok(Message {
        app_id,
        org_id,
        device_id,
        workspace_id,
        timestamp,
        ts,
        body,
    })
}

impl Message {
    /// Refuses a message more than 5 minutes old or ahead of `now`.
    pub fn check_fresh(&self, now: DateTime<Utc>) -> Result<(), MessageError> {
        if self.ts < now - MAX_MESSAGE_AGE || self.ts > now + MAX_MESSAGE_AGE {
            return Err(MessageError::Stale(self.timestamp.clone()));
        }
        Ok(())
    }

    pub fn type_str(&self) -> &'static str {
        match self.body {
            Body::Status { .. } => "status",
            Body::Events(_) => "events",
            Body::HealthCheck => "healthCheck",
        }
    }

    /// A digest of the message's content (not its transport): the same message delivered
    /// twice — a webhook retry, or by webhook and queue both — has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint_bytes())
    }

    /// [`fingerprint`](Self::fingerprint) as its 16 bytes.
    pub fn fingerprint_bytes(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        for part in [
            &self.org_id,
            &self.device_id,
            &self.workspace_id,
            &self.timestamp,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        match &self.body {
            Body::Status {
                updated,
                removed,
                full_sync,
            } => {
                h.update(if *full_sync { b"S1" } else { b"S0" });
                for (k, v) in updated {
                    h.update(k.as_bytes());
                    h.update([0]);
                    h.update(v.to_string().as_bytes());
                    h.update([0]);
                }
                h.update([1]);
                for k in removed {
                    h.update(k.as_bytes());
                    h.update([0]);
                }
            }
            Body::Events(events) => {
                h.update(b"E");
                for e in events {
                    for part in [&e.key, &e.value.to_string(), &e.timestamp] {
                        h.update(part.as_bytes());
                        h.update([0]);
                    }
                }
            }
            Body::HealthCheck => h.update(b"H"),
        }
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }
}

/// One status record of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    pub key: String,
    /// `Some(json)` for a set, `None` for a remove.
    pub value: Option<String>,
    pub prev: Option<String>,
}

/// A device's current status (value JSON and the timestamp that set each key). `known` is
/// false until the device's state was first seen: removals of unknown keys are then written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub values: BTreeMap<String, String>,
    /// Millisecond timestamp of the message that last changed each key (set or remove).
    pub stamps: BTreeMap<String, i64>,
    pub known: bool,
}

impl DeviceState {
    /// Applies a status change at `ts_ms`; returns the records to append.
    pub fn apply(
        &mut self,
        updated: &BTreeMap<String, Value>,
        removed: &[String],
        full_sync: bool,
        ts_ms: i64,
    ) -> Vec<StatusRecord> {
        let mut out = Vec::new();
        let stale =
            |stamps: &BTreeMap<String, i64>, k: &str| stamps.get(k).is_some_and(|s| *s > ts_ms);
        for (k, v) in updated {
            if stale(&self.stamps, k) {
                continue;
            }
            let json = v.to_string();
            let prev = self.values.get(k).cloned();
            self.stamps.insert(k.clone(), ts_ms);
            if prev.as_deref() != Some(json.as_str()) {
                self.values.insert(k.clone(), json.clone());
                out.push(StatusRecord {
                    key: k.clone(),
                    value: Some(json),
                    prev,
                });
            }
        }
        let mut removals: Vec<String> = removed.to_vec();
        if full_sync {
            removals.extend(
                self.values
                    .keys()
                    .filter(|k| !updated.contains_key(*k))
                    .cloned(),
            );
            removals.sort();
            removals.dedup();
        }
        for k in removals {
            if updated.contains_key(&k) || stale(&self.stamps, &k) {
                continue;
            }
            let prev = self.values.remove(&k);
            if prev.is_some() || !self.known {
                self.stamps.insert(k.clone(), ts_ms);
                out.push(StatusRecord {
                    key: k,
                    value: None,
                    prev,
                });
            }
        }
        self.known = true;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The seed's example webhook.
    const SEED_STATUS: &str = r#"{
      "appId": "ac6b6972-538e-11ec-bf63-0242ac130002",
      "deviceId": "Y2lzY29[...]MjZiYzZm",
      "workspaceId": "Y2lzY29zcGF[...]NjM=",
      "orgId": "Y2lzY29[...]YzVj",
      "timestamp": "1970-01-01T00:00:10Z",
      "type": "status",
      "changes": {
        "updated": { "Standby.State": "Halfwake", "RoomAnalytics.PeopleCount.Current": 2 },
        "removed": [ "Audio.Microphones.Mute" ]
      },
      "isFullSync": false
    }"#;

    fn upd(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn parses_the_seed_example() {
        let m = parse(SEED_STATUS.as_bytes()).unwrap();
        assert_eq!(m.org_id, "Y2lzY29[...]YzVj");
        assert_eq!(m.type_str(), "status");
        let Body::Status {
            updated,
            removed,
            full_sync,
        } = &m.body
        else {
            panic!()
        };
        assert_eq!(updated["Standby.State"], json!("Halfwake"));
        assert_eq!(removed, &vec!["Audio.Microphones.Mute".to_string()]);
        assert!(!full_sync);
        let hc = parse(br#"{"appId":"a","timestamp":"1970-01-01T00:00:10Z","type":"healthCheck"}"#)
            .unwrap();
        assert_eq!(hc.body, Body::HealthCheck);
    }

    #[test]
    fn malformed_and_stale() {
        for bad in [
            &b"not json"[..],
            br#"{"type":"status"}"#,
            br#"{"appId":"a","orgId":"o","deviceId":"d","timestamp":"yesterday","type":"status","changes":{},"isFullSync":false}"#,
            br#"{"appId":"a","orgId":"o","deviceId":"d","timestamp":"1970-01-01T00:00:10Z","type":"weird"}"#,
            br#"{"appId":"a","orgId":"o","deviceId":"d","timestamp":"1970-01-01T00:00:10Z","type":"status","changes":{}}"#,
        ] {
            assert!(matches!(parse(bad), Err(MessageError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        let m = parse(SEED_STATUS.as_bytes()).unwrap();
        let t0 = m.ts;
        assert!(m.check_fresh(t0 + chrono::Duration::minutes(4)).is_ok());
        assert!(m.check_fresh(t0 + chrono::Duration::minutes(6)).is_err());
        assert!(m.check_fresh(t0 - chrono::Duration::minutes(6)).is_err());
    }

    #[test]
    fn fingerprint_is_content_not_formatting() {
        let a = parse(SEED_STATUS.as_bytes()).unwrap();
        let compact: Value = serde_json::from_str(SEED_STATUS).unwrap();
        let b = from_value(compact).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut other: Value = serde_json::from_str(SEED_STATUS).unwrap();
        other["changes"]["updated"]["Standby.State"] = json!("Standby");
        assert_ne!(a.fingerprint(), from_value(other).unwrap().fingerprint());
    }

    #[test]
    fn diffs_sets_removes_and_full_sync() {
        let mut s = DeviceState::default();
        // Unknown state: removals are written (we cannot know the key was absent).
        let r = s.apply(
            &upd(&[("A", json!(1)), ("B", json!("x"))]),
            &["C".into()],
            false,
            10,
        );
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[2],
            StatusRecord {
                key: "C".into(),
                value: None,
                prev: None
            }
        );
        // Same values again: nothing.
        assert!(s.apply(&upd(&[("A", json!(1))]), &[], false, 11).is_empty());
        // A change carries prev.
        let r = s.apply(&upd(&[("A", json!(2))]), &[], false, 12);
        assert_eq!(
            r,
            vec![StatusRecord {
                key: "A".into(),
                value: Some("2".into()),
                prev: Some("1".into())
            }]
        );
        // Removing an absent key on a known device: nothing.
        assert!(
            s.apply(&BTreeMap::new(), &["Z".into()], false, 13)
                .is_empty()
        );
        // Full sync: B unchanged, A changed, D new, and nothing else to remove.
        let r = s.apply(
            &upd(&[("A", json!(3)), ("B", json!("x")), ("D", json!(true))]),
            &[],
            true,
            14,
        );
        assert_eq!(
            r.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            vec!["A", "D"]
        );
        // Full sync without B: B removed.
        let r = s.apply(&upd(&[("A", json!(3)), ("D", json!(true))]), &[], true, 15);
        assert_eq!(
            r,
            vec![StatusRecord {
                key: "B".into(),
                value: None,
                prev: Some("\"x\"".into())
            }]
        );
    }

    #[test]
    fn stale_updates_do_not_overwrite() {
        let mut s = DeviceState::default();
        s.apply(&upd(&[("A", json!(2))]), &[], false, 20);
        assert!(s.apply(&upd(&[("A", json!(1))]), &[], false, 19).is_empty());
        assert!(
            s.apply(&BTreeMap::new(), &["A".into()], false, 19)
                .is_empty()
        );
        assert_eq!(s.values["A"], "2");
        // Other keys of an older message still apply.
        assert_eq!(s.apply(&upd(&[("B", json!(1))]), &[], false, 19).len(), 1);
    }

    proptest::proptest! {
        /// Whatever arrives, state equals the last accepted value of each key, and applying the
        /// same change twice writes nothing the second time.
        #[test]
        fn idempotent_and_consistent(ops in proptest::collection::vec(
            (proptest::collection::btree_map("[a-d]", 0i64..3, 0..4),
             proptest::collection::vec("[a-d]", 0..2),
             proptest::bool::ANY,
             0i64..20), 1..30)) {
            let mut s = DeviceState::default();
            for (u, r, full, ts) in ops {
                let u: BTreeMap<String, Value> = u.into_iter().map(|(k, v)| (k, json!(v))).collect();
                s.apply(&u, &r, full, ts);
                let again = s.clone().apply(&u, &r, full, ts);
                proptest::prop_assert!(again.is_empty(), "second apply wrote {again:?}");
                for (k, v) in &s.values {
                    proptest::prop_assert!(s.stamps.contains_key(k));
                    proptest::prop_assert!(v.parse::<i64>().is_ok());
                }
            }
        }
    }
}

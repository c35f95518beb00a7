//! The command-stream consumer of one tenant: downstream systems write requests to
//! `<p>:{<org>}:commands`; this child reads them with the consumer group `xapi-stream`, runs
//! each through the device API (grants, rate limits, token) and writes one entry per request
//! to `<p>:{<org>}:command_results` with the request's `id`, acknowledging the request in the
//! same transaction. A request id reaches Webex at most once: a consumer that died mid-call
//! leaves a marker, and the entry, when claimed again, is answered `outcome_unknown` instead of
//! being sent a second time.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::AccessError;
use super::{DeviceError, DeviceRequest};
use crate::protocol::tracking::TrackingId;
use crate::shutdown::Shutdown;
use crate::store::devices::{CommandEntry, DeviceStore, Mark};
use crate::tenant::{ChildError, TenantShared};

/// The consumer group every engine replica reads with.
pub const GROUP: &str = "xapi-stream";
/// Entries read per round.
const BATCH: usize = 10;
/// Longest accepted request id.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A parsed request, or why it cannot run (answered with an error record).
fn parse(fields: &HashMap<String, String>) -> Result<DeviceRequest, DeviceError> {
    let invalid = |m: String| DeviceError::Refused(AccessError::Invalid(m));
    let get = |k: &str| fields.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let device = get("device")
        .ok_or_else(|| invalid("field device (the deviceId) is required".into()))?
        .to_string();
    let json_field = |k: &str| -> Result<Option<Value>, DeviceError> {
        get(k)
            .map(|t| {
                serde_json::from_str::<Value>(t)
                    .map_err(|e| invalid(format!("field {k} is not JSON: {e}")))
            })
            .transpose()
    };
    match get("kind").unwrap_or("command") {
        "command" => {
            let name = get("name")
                .ok_or_else(|| {
                    invalid("field name (the command, e.g. Message.Send) is required".into())
                })?
                .to_string();
            let arguments = match json_field("arguments")? {
                None => None,
                Some(Value::Object(m)) => Some(m),
                Some(_) => return Err(invalid("field arguments must be a JSON object".into())),
            };
            let body = fields.get("body").cloned().filter(|b| !b.is_empty());
            Ok(DeviceRequest::Command {
                device,
                name,
                arguments,
                body,
            })
        }
        "status" => {
            let raw = get("names")
                .or_else(|| get("name"))
                .ok_or_else(|| invalid("field names (status paths) is required".into()))?;
            let names: Vec<String> = if raw.starts_with('[') {
                serde_json::from_str(raw).map_err(|e| {
                    invalid(format!("field names is not a JSON array of strings: {e}"))
                })?
            } else {
                raw.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            Ok(DeviceRequest::Status { device, names })
        }
        "config_get" => Ok(DeviceRequest::ConfigGet {
            device,
            key: get("key").map(str::to_string),
        }),
        "config_patch" => {
            let ops = json_field("patch")?
                .ok_or_else(|| invalid("field patch (a JSON-patch array) is required".into()))?;
            Ok(DeviceRequest::ConfigPatch { device, ops })
        }
        other => Err(invalid(format!(
            "kind {other:?} is not command, status, config_get or config_patch"
        ))),
    }
}

/// `expires`: RFC 3339, or milliseconds since the epoch.
fn parse_expiry(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            raw.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
        })
}

/// Runs one request entry; returns the result record's fields.
async fn handle(
    shared: &TenantShared,
    store: &DeviceStore,
    entry: &CommandEntry,
) -> Vec<(String, String)> {
    let started = std::time::Instant::now();
    let request_id = entry
        .fields
        .get("id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let parsed = parse(&entry.fields);
    let mut out: Vec<(String, String)> = vec![
        ("id".into(), request_id.clone()),
        ("request".into(), entry.id.clone()),
        ("org".into(), shared.org_id.clone()),
    ];
    for k in ["device", "kind"] {
        if let Some(v) = entry.fields.get(k) {
            out.push((k.into(), v.clone()));
        }
    }
    if let Ok(req) = &parsed
        && let Some(n) = req.name()
    {
        out.push(("name".into(), n));
    }
    let outcome: Result<Value, DeviceError> = async {
        if entry.fields.is_empty() {
            return Err(DeviceError::Refused(AccessError::Invalid(
                "the request was deleted from the stream before it ran".into(),
            )));
        }
        if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(DeviceError::Refused(AccessError::Invalid(format!(
                "field id (the request id, 1 to {MAX_REQUEST_ID_LEN} characters) is required"
            ))));
        }
        let req = parsed?;
        if let Some(raw) = entry.fields.get("expires") {
            match parse_expiry(raw.trim()) {
                Some(at) if at < Utc::now() => {
                    return Err(DeviceError::Refused(AccessError::Invalid(format!(
                        "expired at {at} before it could run"
                    ))));
                }
                Some(_) => {}
                None => {
                    return Err(DeviceError::Refused(AccessError::Invalid(
                        "field expires is neither RFC 3339 nor epoch milliseconds".into(),
                    )));
                }
            }
        }
        // Refusals are decided before the request id is marked as sent.
        super::Api::of(shared).check_request(&req)?;
        match store
            .mark_request(&shared.org_id, &request_id, &entry.id)
            .await?
        {
            Mark::New => {}
            Mark::SameEntry => {
                return Err(DeviceError::OutcomeUnknown(
                    "the engine stopped while this request was in flight".into(),
                ));
            }
            Mark::OtherEntry(first) => {
                return Err(DeviceError::Refused(AccessError::Invalid(format!(
                    "request id already used by entry {first}; not run again"
                ))));
            }
        }
        super::Api::of(shared).send_checked(&req).await
    }
    .await;
    let metrics = &shared.deps().metrics();
    match outcome {
        Ok(result) => {
            metrics.device_request("stream", "ok");
            out.push(("status".into(), "ok".into()));
            out.push(("result".into(), result.to_string()));
        }
        Err(e) => {
            let tracking = TrackingId::new();
            metrics.device_request("stream", if e.is_refusal() { "refused" } else { "error" });
            tracing::warn!(trackingId = %tracking, tenant = %shared.tenant_id, request = %request_id, code = e.code(), error = %e, "device request failed");
            out.push(("status".into(), "error".into()));
            out.push(("error".into(), e.code().into()));
            out.push(("description".into(), e.to_string()));
            if let DeviceError::Webex { status, .. } = &e {
                out.push(("http_status".into(), status.to_string()));
            }
            out.push(("trackingId".into(), tracking.to_string()));
        }
    }
    out.push((
        "ts".into(),
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    ));
    out.push((
        "duration_ms".into(),
        started.elapsed().as_millis().to_string(),
    ));
    out
}

/// The consumer child. Redis errors end it (the supervisor restarts it with backoff); a stop
/// lets the batch in hand finish — its requests may have reached Webex — before returning.
///
/// Idle, it costs nothing: it waits for the command bell (a keyspace notification of a new
/// entry), reading anyway every `devices.commands_sweep_secs`, or — while the bell is silent —
/// every `devices.commands_poll_ms`. Entries another consumer left pending (a previous owner)
/// are claimed every `commands_claim_idle_secs` until none are left.
pub async fn run(shared: Arc<TenantShared>, stop: Shutdown) -> Result<(), ChildError> {
    let cfg = &shared.deps().config().devices;
    let store = DeviceStore::new(shared.deps().store().clone());
    let org = shared.org_id.clone();
    // The replica id: a restarted replica (same pod name) finds its own pending entries.
    let consumer = shared.deps().config().scaling.replica_id();
    let poll = Duration::from_millis(cfg.commands_poll_ms);
    let sweep = Duration::from_secs_f64(cfg.commands_sweep_secs);
    let claim_every = Duration::from_secs(cfg.commands_claim_idle_secs.max(1));
    let claim_idle_ms = cfg.commands_claim_idle_secs * 1000;
    let maxlen = cfg.results_maxlen;
    let fail = |doing: &'static str, e: crate::store::StoreError| ChildError::new(doing, e);
    let bell = &shared.deps().bell();
    let door = Door::open(bell, &org);
    store
        .ensure_group(&org, GROUP)
        .await
        .map_err(|e| fail("command stream: creating the consumer group", e))?;
    // First this consumer's own pending entries (left by a previous run), then new ones.
    let mut own_pending = true;
    // Whether other consumers have entries pending (checked once their own are done).
    let mut others_pending = true;
    let mut next_claim = tokio::time::Instant::now();
    loop {
        if stop.is_fired() {
            return Ok(());
        }
        let from = if own_pending { "0" } else { ">" };
        let mut entries = store
            .read_commands(&org, GROUP, &consumer, from, BATCH)
            .await
            .map_err(|e| fail("command stream: reading", e))?;
        if own_pending && entries.is_empty() {
            own_pending = false;
            continue;
        }
        let now = tokio::time::Instant::now();
        if entries.is_empty() && others_pending && now >= next_claim {
            next_claim = now + claim_every;
            entries = store
                .claim_stale(&org, GROUP, &consumer, claim_idle_ms, BATCH)
                .await
                .map_err(|e| fail("command stream: claiming stale entries", e))?;
            if entries.is_empty() {
                others_pending = store
                    .pending_of_others(&org, GROUP, &consumer)
                    .await
                    .map_err(|e| fail("command stream: counting pending entries", e))?
                    > 0;
            }
        }
        if entries.is_empty() {
            let ringing = bell.is_ringing();
            // Sweeps jittered ±10 %: consumers started together do not read together.
            let mut wake = now
                + if ringing {
                    sweep.mul_f64(0.9 + 0.2 * rand::random::<f64>())
                } else {
                    poll
                };
            if others_pending {
                wake = wake.min(next_claim);
            }
            tokio::select! {
                _ = stop.wait() => return Ok(()),
                _ = door.0.notified(), if ringing => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            continue;
        }
        let results: Vec<(String, Vec<(String, String)>)> = futures::future::join_all(
            entries
                .iter()
                .map(|e| async { (e.id.clone(), handle(&shared, &store, e).await) }),
        )
        .await;
        store
            .finish_commands(&org, GROUP, &results, maxlen)
            .await
            .map_err(|e| fail("command stream: writing results", e))?;
    }
}

/// The consumer's door on the command bell, closed when the consumer ends.
struct Door<'a>(
    Arc<tokio::sync::Notify>,
    &'a crate::store::bell::Bell,
    &'a str,
);

impl<'a> Door<'a> {
    fn open(bell: &'a crate::store::bell::Bell, org: &'a str) -> Self {
        Self(bell.door(org), bell, org)
    }
}

impl Drop for Door<'_> {
    fn drop(&mut self) {
        self.1.close(self.2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_each_kind() {
        let c = parse(&fields(&[
            ("id", "r1"),
            ("device", "D"),
            ("name", "Message.Send"),
            ("arguments", r#"{"Text": "hi"}"#),
            ("body", "line 1\nline 2"),
        ]))
        .unwrap();
        match c {
            DeviceRequest::Command {
                name,
                arguments,
                body,
                ..
            } => {
                assert_eq!(name, "Message.Send");
                assert_eq!(arguments.unwrap()["Text"], "hi");
                assert_eq!(body.as_deref(), Some("line 1\nline 2"));
            }
            other => panic!("{other:?}"),
        }
        let s = parse(&fields(&[
            ("device", "D"),
            ("kind", "status"),
            ("names", "A.B, C.D"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            DeviceRequest::Status {
                device: "D".into(),
                names: vec!["A.B".into(), "C.D".into()]
            }
        );
        let s = parse(&fields(&[
            ("device", "D"),
            ("kind", "status"),
            ("names", r#"["A.B"]"#),
        ]))
        .unwrap();
        assert_eq!(
            s,
            DeviceRequest::Status {
                device: "D".into(),
                names: vec!["A.B".into()]
            }
        );
        assert!(matches!(
            parse(&fields(&[
                ("device", "D"),
                ("kind", "config_patch"),
                ("patch", "[]")
            ]))
            .unwrap(),
            DeviceRequest::ConfigPatch { .. }
        ));
    }

    #[test]
    fn refuses_malformed_requests() {
        for f in [
            fields(&[("name", "Message.Send")]),
            fields(&[("device", "D")]),
            fields(&[("device", "D"), ("name", "X"), ("arguments", "[1]")]),
            fields(&[("device", "D"), ("name", "X"), ("arguments", "{oops")]),
            fields(&[("device", "D"), ("kind", "reboot")]),
            fields(&[("device", "D"), ("kind", "config_patch")]),
        ] {
            let e = parse(&f).unwrap_err();
            assert_eq!(e.code(), "invalid_request", "{f:?}");
        }
    }

    #[test]
    fn expiry_formats() {
        assert!(parse_expiry("2020-01-01T00:00:00Z").is_some());
        assert!(parse_expiry("1600000000000").is_some());
        assert!(parse_expiry("tomorrow").is_none());
    }
}

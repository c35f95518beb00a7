//! Per-message CPU cost of the ingest path without I/O: HMAC verification, JSON parsing,
//! fingerprinting, and the status diff — what every webhook pays before its Redis round trip.
use std::collections::BTreeMap;

use actors::protocol::message::{self, Body, DeviceState};
use actors::protocol::webhook::{self, Presented, WebhookAuth};
use actors::secret::Secret;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const SECRET: &str = "bench-secret-0123456789abcdefghij";

fn body(n: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "appId": "ac6b6972-538e-11ec-bf63-0242ac130002",
        "deviceId": "Y2lzY29zcGFyazovL3VybjpURUFNOnVzLWVhc3QtMl9hL0RFVklDRS9iYmVmMmU0OS0xNDU2",
        "workspaceId": "Y2lzY29zcGFyazovL3VybjpURUFNOnVzLWVhc3QtMl9hL1dPUktTUEFDRS9hODg0NjE5Ni1l",
        "orgId": "Y2lzY29zcGFyazovL3VybjpURUFNOnVzLWVhc3QtMl9hL09SR0FOSVpBVElPTi8zYzEwOWVk",
        "timestamp": "2026-11-22T09:00:10.123Z",
        "type": "status",
        "changes": { "updated": { "Standby.State": "Halfwake", "RoomAnalytics.PeopleCount.Current": n },
                     "removed": ["Audio.Microphones.Mute"] },
        "isFullSync": false
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let auth = WebhookAuth::Hmac(Secret::new(SECRET));
    let bodies: Vec<(Vec<u8>, String)> = (0..64)
        .map(|n| {
            let b = body(n);
            let sig = webhook::sign(SECRET, &b);
            (b, sig)
        })
        .collect();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("verify_parse_normalize", |b| {
        let mut state = DeviceState::default();
        b.iter(|| {
            let (body, sig) = &bodies[i % bodies.len()];
            i += 1;
            let presented = Presented {
                signature: Some(sig),
                authorization: None,
            };
            let v = webhook::verify(&auth, presented, body).expect("valid signature");
            let m = message::parse(v.body()).expect("valid message");
            let fp = m.fingerprint();
            let records = match &m.body {
                Body::Status {
                    updated,
                    removed,
                    full_sync,
                } => state.apply(updated, removed, *full_sync, i as i64),
                _ => Vec::new(),
            };
            (fp, records)
        })
    });
    g.bench_function("verify_only", |b| {
        let (body, sig) = &bodies[0];
        b.iter(|| {
            webhook::verify(
                &auth,
                Presented {
                    signature: Some(sig),
                    authorization: None,
                },
                body,
            )
            .is_ok()
        })
    });
    g.bench_function("parse_only", |b| {
        let (body, _) = &bodies[0];
        b.iter(|| message::parse(body).expect("valid"))
    });
    g.bench_function("normalize_only", |b| {
        let updated: BTreeMap<String, serde_json::Value> = [
            ("Standby.State".to_string(), json!("Halfwake")),
            ("RoomAnalytics.PeopleCount.Current".to_string(), json!(2)),
        ]
        .into();
        let mut state = DeviceState::default();
        let mut t = 0;
        b.iter(|| {
            t += 1;
            state.apply(&updated, &[], false, t)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

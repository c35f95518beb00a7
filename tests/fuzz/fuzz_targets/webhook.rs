//! A webhook delivery: headers, a blank line, the body (like an HTTP request without its
//! request line). The headers that carry credentials (`X-Spark-Signature`, `Authorization`,
//! any case, first one wins) are checked with `webhook::verify` against each `WebhookAuth`
//! variant and with `verify_any` during rotation overlaps (other credentials, other schemes); the body goes
//! through `message::parse` (and `from_value`), and a parsed status message through
//! `DeviceState::apply`.
//!
//! Besides "never panics", it checks that credentials made for the body always verify (HMAC in
//! lower and upper case, the header secret, Basic) and that the fuzzed ones verify only when
//! they equal them.
#![no_main]

use std::collections::BTreeMap;

use actors::protocol::message::{self, Body, DeviceState};
use actors::protocol::webhook::{self, BASIC_USERNAME, Credentials, Presented, WebhookAuth};
use actors::secret::Secret;
use base64::Engine as _;
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;

const HMAC_SECRET: &str = "fuzz-hmac-secret-0123456789abcdefghijklmnop";
const HEADER_SECRET: &str = "fuzz-header-secret-0123456789abcdefghijklm";
const BASIC_PASSWORD: &str = "fuzz-basic-password-0123456789abcdefghijk";

/// Splits at the first empty line (`\n\n` or `\r\n\r\n`); no empty line: no headers.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    for i in 0..data.len() {
        if data[i..].starts_with(b"\r\n\r\n") {
            return (&data[..i], &data[i + 4..]);
        }
        if data[i..].starts_with(b"\n\n") {
            return (&data[..i], &data[i + 2..]);
        }
    }
    (&[], data)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim_start())
    })
}

fn auths() -> [WebhookAuth; 3] {
    [
        WebhookAuth::Hmac(Secret::new(HMAC_SECRET)),
        WebhookAuth::Header(Secret::new(HEADER_SECRET)),
        WebhookAuth::Basic {
            username: BASIC_USERNAME.to_string(),
            password: Secret::new(BASIC_PASSWORD),
        },
    ]
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn credentials_and_headers(headers: &str, body: &[u8]) {
    let presented = Presented {
        signature: header(headers, "X-Spark-Signature"),
        authorization: header(headers, "Authorization"),
    };
    let [hmac, hdr, bas] = auths();
    for auth in [&hmac, &hdr, &bas] {
        match webhook::verify(auth, presented, body) {
            Ok(v) => assert_eq!(v.body(), body),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    // A fuzzed header secret verifies only if it is the secret.
    if let Some(a) = presented.authorization {
        assert_eq!(webhook::verify(&hdr, presented, body).is_ok(), a == HEADER_SECRET);
    }
    // Rotations: the current credentials and others of the same or another scheme.
    for creds in [
        Credentials { current: bas.clone(), also: vec![] },
        Credentials { current: bas.clone(), also: vec![hmac.clone()] },
        Credentials { current: hmac.clone(), also: vec![hdr.clone(), bas.clone()] },
    ] {
        let any = webhook::verify_any(&creds, presented, body);
        let each = webhook::verify(&creds.current, presented, body).is_ok()
            || creds.also.iter().any(|a| webhook::verify(a, presented, body).is_ok());
        assert_eq!(any.is_ok(), each, "verify_any disagrees with verify");
        if let Err(e) = any {
            // The error is the current credentials' one.
            assert_eq!(Err(e), webhook::verify(&creds.current, presented, body).map(|_| ()));
        }
    }

    // Credentials made for this body always verify.
    let sig = webhook::sign(HMAC_SECRET, body);
    assert_eq!(sig.len(), webhook::SIGNATURE_HEX_LEN);
    for s in [sig.clone(), sig.to_uppercase(), format!(" {sig}\t")] {
        let p = Presented { signature: Some(&s), authorization: None };
        assert!(webhook::verify(&hmac, p, body).is_ok(), "own HMAC refused");
    }
    let good_basic = basic(BASIC_USERNAME, BASIC_PASSWORD);
    let p = Presented { signature: None, authorization: Some(&good_basic) };
    assert!(webhook::verify(&bas, p, body).is_ok(), "own Basic refused");
    let p = Presented { signature: None, authorization: Some(HEADER_SECRET) };
    assert!(webhook::verify(&hdr, p, body).is_ok(), "own header secret refused");
}

fn parse(body: &[u8]) {
    let parsed = message::parse(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let _ = message::from_value(v);
    }
    let Ok(m) = parsed else { return };
    assert!(!m.app_id.is_empty());
    let _ = (m.type_str(), m.fingerprint());
    let t0 = DateTime::from_timestamp(1_796_119_200, 0).unwrap();
    let _ = m.check_fresh(t0);
    let _ = m.check_fresh(m.ts);
    if let Body::Status { updated, removed, full_sync } = &m.body {
        let ts_ms = m.ts.timestamp_millis();
        let mut state = DeviceState::default();
        let mut seeded = BTreeMap::new();
        seeded.insert("Standby.State".to_string(), serde_json::json!("Standby"));
        state.apply(&seeded, &[], false, ts_ms.saturating_sub(1));
        state.apply(updated, removed, *full_sync, ts_ms);
        let again = state.clone().apply(updated, removed, *full_sync, ts_ms);
        assert!(again.is_empty(), "second apply wrote {again:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = split(data);
    let headers = String::from_utf8_lossy(headers);
    credentials_and_headers(&headers, body);
    parse(body);
});

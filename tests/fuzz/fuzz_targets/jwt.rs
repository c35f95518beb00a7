//! The JWT path of `/provision` and the action endpoints, on an arbitrary token:
//! `peek` (header and region read before verification), the JWKS URL chosen from configuration,
//! then — for tokens that peek — `verify_signature` with a fixed ES256 key and `check_policy`
//! on the verified claims. The unverified payload also goes through `check_policy` (both
//! expectations), so the claim policy sees arbitrary claims and not only the few signed seeds.
//!
//! The key is `keys/es256-public.pem` (its JWK twin is `keys/es256-public.jwk.json`); the seeds
//! `corpus-seeds/jwt/*.jwt` were signed by its private key, which was not kept.
#![no_main]

use std::sync::LazyLock;

use actors::config::WebexConfig;
use actors::protocol::jwt::{self, Expect, Verified};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::DecodingKey;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const APP_ID: &str = "ac6b6972-538e-11ec-bf63-0242ac130002";
/// 2026-12-01T10:00:00Z: a fixed "now", so that a run is reproducible.
const NOW: i64 = 1_796_119_200;

static KEY: LazyLock<DecodingKey> = LazyLock::new(|| {
    DecodingKey::from_ec_pem(include_bytes!("../keys/es256-public.pem")).expect("fixed P-256 key")
});

static JWKS: LazyLock<WebexConfig> = LazyLock::new(|| WebexConfig {
    jwks: [
        ("us-west-2_r", "https://xapi-r.wbx2.com/jwks"),
        ("us-east-2_a", "https://xapi-a.wbx2.com/jwks"),
        ("eu-central-1_k", "https://xapi-k.wbx2.com/jwks"),
        ("me-central-1_d", "https://xapi-d.wbx2.com/jwks"),
        ("us-gov-west-1_a1", "https://xapi.gov.ciscospark.com/jwks"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect(),
    default_region: "us-east-2_a".into(),
    gov_region: "us-gov-west-1_a1".into(),
    allow_http: false,
    plain_http2: false,
    http_timeout_secs: 10,
    jwks_refetch_cooldown_secs: 30,
    jwks_max_age_secs: 3600,
});

/// Once, before the first input: the signed seeds verify with the key and pass the policy, so
/// the verified-claims path is reachable (a key and seeds that do not match would hide it).
static SELF_TEST: LazyLock<()> = LazyLock::new(|| {
    for (token, expect) in [
        (include_str!("../corpus-seeds/jwt/activation.jwt"), Expect::Activation),
        (include_str!("../corpus-seeds/jwt/action-healthcheck.jwt"), Expect::Action),
        (include_str!("../corpus-seeds/jwt/action-update-approved.jwt"), Expect::Action),
    ] {
        let claims = jwt::verify_signature(token, &KEY).expect("a signed seed verifies");
        jwt::check_policy(claims, expect, APP_ID, now()).expect("a signed seed passes the policy");
    }
});

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("valid")
}

fn policy(claims: Value) {
    for expect in [Expect::Activation, Expect::Action] {
        match jwt::check_policy(claims.clone(), expect, APP_ID, now()) {
            Ok(Verified::Activation(c)) => {
                assert_eq!(c.app_id, APP_ID);
                assert_eq!(expect, Expect::Activation);
                let _ = c.scopes_list();
            }
            Ok(Verified::Action(c)) => {
                assert_eq!(c.app_id, APP_ID);
                assert_eq!(expect, Expect::Action);
                let _ = c.action.as_str();
            }
            Err(r) => {
                let _ = (r.reason(), r.http_status(), r.to_string());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    LazyLock::force(&SELF_TEST);
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let peeked = match jwt::peek(token) {
        Ok(p) => p,
        Err(r) => {
            let _ = (r.reason(), r.http_status(), r.to_string());
            return;
        }
    };
    assert_eq!(peeked.alg, "ES256");
    assert!(!peeked.kid.is_empty());
    let url = jwt::jwks_url_for(peeked.region.as_deref(), &*JWKS);
    assert!(url.starts_with("https://"), "JWKS URL {url:?} not from configuration");

    match jwt::verify_signature(token, &KEY) {
        Ok(claims) => policy(claims),
        Err(r) => {
            let _ = (r.reason(), r.http_status(), r.to_string());
        }
    }

    // The claim policy on the payload as sent (peek decoded it, so it is base64url JSON).
    if let Some(payload) = token.trim().split('.').nth(1)
        && let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
        && let Ok(claims) = serde_json::from_slice::<Value>(&bytes)
    {
        policy(claims);
    }
});

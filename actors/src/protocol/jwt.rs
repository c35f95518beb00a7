//! JWT rules of the protocol, pure: reading the header and region before verification,
//! choosing the JWKS URL from configuration (never from the token), ES256-only signature
//! verification, and the claim policy (activation `expiryTime`, action `iat` age, `appId`,
//! action type). The jti check needs storage and lives in `auth`.
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::Secret;

/// Action JWTs older than this are refused.
pub const ACTION_MAX_AGE: chrono::Duration = chrono::Duration::minutes(5);
/// Allowed clock difference for an `iat` in the future.
pub const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(30);
/// Larger tokens are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a JWT asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionKind {
    #[serde(rename = "provision")]
    Provision,
    #[serde(rename = "healthCheck")]
    HealthCheck,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "updateApproved")]
    UpdateApproved,
    #[serde(rename = "deprovision")]
    Deprovision,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::HealthCheck => "healthCheck",
            Self::Update => "update",
            Self::UpdateApproved => "updateApproved",
            Self::Deprovision => "deprovision",
        }
    }
}

/// Accepts `xapiAccess` as the seed sends it (a JSON string) or as an object.
fn xapi_access<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::String(s) => serde_json::from_str(&s).map_err(serde::de::Error::custom),
        other => Ok(other),
    }
}

fn opt_xapi_access<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    xapi_access(d).map(|v| (!v.is_null()).then_some(v))
}

/// `manifestVersion` as a string whether sent as "3" or 3.
fn opt_string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// The claims of an activation JWT (action `provision`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationClaims {
    pub sub: String,
    pub oauth_url: String,
    pub org_name: String,
    pub app_url: String,
    #[serde(default)]
    pub user_id: Option<String>,
    pub manifest_url: String,
    pub app_id: String,
    pub expiry_time: String,
    pub action: ActionKind,
    pub webexapis_base_url: String,
    pub scopes: String,
    pub region: String,
    pub iat: i64,
    pub jti: String,
    pub refresh_token: Secret,
    #[serde(deserialize_with = "xapi_access")]
    pub xapi_access: Value,
}

impl ActivationClaims {
    /// The granted scopes as a list.
    pub fn scopes_list(&self) -> Vec<String> {
        split_scopes(&self.scopes)
    }
}

/// A comma-separated scope list as a list.
pub fn split_scopes(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The claims of an action JWT; action-specific fields are optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionClaims {
    pub sub: String,
    pub iat: i64,
    pub jti: String,
    pub app_id: String,
    pub action: ActionKind,
    #[serde(default)]
    pub app_url: Option<String>,
    #[serde(default)]
    pub manifest_url: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub manifest_version: Option<String>,
    #[serde(default)]
    pub scopes: Option<String>,
    #[serde(default, deserialize_with = "opt_xapi_access")]
    pub xapi_access: Option<Value>,
    #[serde(default)]
    pub interactive: Option<bool>,
}

/// A verified token.
#[derive(Debug, Clone)]
pub enum Verified {
    Activation(ActivationClaims),
    Action(ActionClaims),
}

impl Verified {
    pub fn jti(&self) -> &str {
        match self {
            Self::Activation(c) => &c.jti,
            Self::Action(c) => &c.jti,
        }
    }
}

/// Which kind of token an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Activation,
    Action,
}

/// Why a JWT is refused. `reason()` is the metric label; `Display` the error description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed JWT: {0}")]
    Malformed(String),
    #[error("JWT algorithm {0:?} is not allowed (only ES256)")]
    Algorithm(String),
    #[error("JWT signed with an unknown key id {0:?}")]
    UnknownKid(String),
    #[error("JWT signature is invalid")]
    Signature,
    #[error("activation JWT expired at {0}")]
    Expired(String),
    #[error("action JWT issued at {0} is older than 5 minutes or in the future")]
    Stale(i64),
    #[error("JWT is for another integration (appId {0:?})")]
    AppId(String),
    #[error("JWT id was already used")]
    Replay,
    #[error("JWT action {0:?} is not accepted at this endpoint")]
    WrongAction(String),
    #[error("the key set to verify the JWT is unavailable: {0}")]
    JwksUnavailable(String),
}

impl Rejection {
    /// The `jwt_rejections_total{reason}` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Algorithm(_) => "algorithm",
            Self::UnknownKid(_) => "unknown_kid",
            Self::Signature => "signature",
            Self::Expired(_) => "expired",
            Self::Stale(_) => "stale",
            Self::AppId(_) => "app_id",
            Self::Replay => "replay",
            Self::WrongAction(_) => "wrong_action",
            Self::JwksUnavailable(_) => "jwks_unavailable",
        }
    }

    /// 400 for a token that is not a JWT of the right kind, 401 for one we do not trust or
    /// that is no longer (or never was) valid for us, 503 when we cannot check it now.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Malformed(_) | Self::WrongAction(_) => 400,
            Self::JwksUnavailable(_) => 503,
            _ => 401,
        }
    }
}

/// What can be read before verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub kid: String,
    pub alg: String,
    pub region: Option<String>,
    pub action: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct PeekClaims {
    region: Option<String>,
    action: Option<String>,
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, Rejection> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| Rejection::Malformed(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed(format!("{what} is not JSON")))
}

/// Reads header and payload WITHOUT verifying: only to pick the JWKS URL and key.
pub fn peek(token: &str) -> Result<Peeked, Rejection> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Rejection::Malformed("token too large".into()));
    }
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 3 {
        return Err(Rejection::Malformed("not three dot-separated parts".into()));
    }
    let header: Header = decode_part(parts[0], "header")?;
    let alg = header
        .alg
        .ok_or_else(|| Rejection::Malformed("header has no alg".into()))?;
    if alg != "ES256" {
        return Err(Rejection::Algorithm(alg));
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Rejection::Malformed("header has no kid".into()))?;
    let claims: PeekClaims = decode_part(parts[1], "payload")?;
    Ok(Peeked {
        kid,
        alg,
        region: claims.region,
        action: claims.action,
    })
}

/// Region → JWKS URL as configured, with the two fallback regions.
pub trait JwksTable {
    /// The configured URL of `region`, if any.
    fn jwks_url(&self, region: &str) -> Option<&str>;
    /// The region of a JWT naming an unknown region.
    fn default_region(&self) -> &str;
    /// The region of a JWT naming an unknown `us-gov-*` region.
    fn gov_region(&self) -> &str;
}

/// The JWKS URL for a region: the configured one, else the gov default for `us-gov-*`, else
/// the default region's. Never a URL from the token.
pub fn jwks_url_for<'a>(region: Option<&str>, table: &'a impl JwksTable) -> &'a str {
    if let Some(url) = region.and_then(|r| table.jwks_url(r)) {
        return url;
    }
    let fallback = match region {
        Some(r) if r.starts_with("us-gov-") => table.gov_region(),
        _ => table.default_region(),
    };
    table.jwks_url(fallback).unwrap_or_default()
}

/// Verifies an ES256 signature and returns the claims as JSON.
pub fn verify_signature(token: &str, key: &DecodingKey) -> Result<Value, Rejection> {
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    match jsonwebtoken::decode::<Value>(token.trim(), key, &v) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => Rejection::Signature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                Rejection::Algorithm("mismatch".into())
            }
            jsonwebtoken::errors::ErrorKind::Json(_)
            | jsonwebtoken::errors::ErrorKind::Base64(_) => {
                Rejection::Malformed("unreadable token".into())
            }
            _ => Rejection::Signature,
        }),
    }
}

/// The claim policy, applied to signature-verified claims.
pub fn check_policy(
    claims: Value,
    expect: Expect,
    app_id: &str,
    now: DateTime<Utc>,
) -> Result<Verified, Rejection> {
    let action = claims
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::Malformed("no action claim".into()))?
        .to_string();
    let is_activation = action == "provision";
    match expect {
        Expect::Activation if !is_activation => return Err(Rejection::WrongAction(action)),
        Expect::Action if is_activation => return Err(Rejection::WrongAction(action)),
        _ => {}
    }
    let verified = if is_activation {
        let c: ActivationClaims = serde_json::from_value(claims)
            .map_err(|e| Rejection::Malformed(format!("activation claims: {e}")))?;
        let expiry = DateTime::parse_from_rfc3339(&c.expiry_time)
            .map_err(|_| Rejection::Malformed("expiryTime is not ISO 8601".into()))?;
        if now > expiry {
            return Err(Rejection::Expired(c.expiry_time));
        }
        Verified::Activation(c)
    } else {
        let c: ActionClaims = serde_json::from_value(claims)
            .map_err(|e| Rejection::Malformed(format!("action claims: {e}")))?;
        let iat = DateTime::from_timestamp(c.iat, 0).ok_or(Rejection::Stale(c.iat))?;
        if iat < now - ACTION_MAX_AGE || iat > now + CLOCK_SKEW {
            return Err(Rejection::Stale(c.iat));
        }
        Verified::Action(c)
    };
    let claimed = match &verified {
        Verified::Activation(c) => &c.app_id,
        Verified::Action(c) => &c.app_id,
    };
    if claimed != app_id {
        return Err(Rejection::AppId(claimed.clone()));
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const APP: &str = "ac6b6972-538e-11ec-bf63-0242ac130002";

    use crate::config::WebexConfig;

    fn webex_cfg() -> WebexConfig {
        WebexConfig {
            jwks: [
                ("us-east-2_a", "https://a/jwks"),
                ("us-gov-west-1_a1", "https://gov/jwks"),
                ("eu-central-1_k", "https://k/jwks"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            default_region: "us-east-2_a".into(),
            gov_region: "us-gov-west-1_a1".into(),
            allow_http: false,
            plain_http2: false,
            http_timeout_secs: 5,
            jwks_refetch_cooldown_secs: 30,
            jwks_max_age_secs: 3600,
        }
    }

    fn activation(now: DateTime<Utc>) -> Value {
        json!({
            "sub": "org", "oauthUrl": "https://o", "orgName": "Org", "appUrl": "https://a",
            "manifestUrl": "https://m", "appId": APP, "expiryTime": (now + chrono::Duration::hours(24)).to_rfc3339(),
            "action": "provision", "webexapisBaseUrl": "https://w", "scopes": "a,b", "region": "us-east-2_a",
            "iat": now.timestamp(), "jti": "j1", "refreshToken": "rt",
            "xapiAccess": "{\"commands\":[\"Message.Send\"],\"statuses\":[],\"events\":[]}"
        })
    }

    fn action(now: DateTime<Utc>, iat_offset: i64) -> Value {
        json!({ "sub": "org", "iat": now.timestamp() + iat_offset, "jti": "j2", "appId": APP, "action": "healthCheck" })
    }

    #[test]
    fn region_selection_never_uses_the_token() {
        let c = webex_cfg();
        assert_eq!(jwks_url_for(Some("eu-central-1_k"), &c), "https://k/jwks");
        assert_eq!(jwks_url_for(Some("xx-north-9_z"), &c), "https://a/jwks");
        assert_eq!(
            jwks_url_for(Some("us-gov-east-9_q"), &c),
            "https://gov/jwks"
        );
        assert_eq!(jwks_url_for(None, &c), "https://a/jwks");
    }

    fn b64(v: Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn peek_errors() {
        let claims = b64(json!({"region": "us-east-2_a"}));
        assert!(matches!(peek("garbage"), Err(Rejection::Malformed(_))));
        assert!(matches!(peek("a.b"), Err(Rejection::Malformed(_))));
        let none = format!("{}.{claims}.", b64(json!({"alg": "none", "kid": "k"})));
        assert_eq!(peek(&none).unwrap_err().reason(), "algorithm");
        let hs = format!("{}.{claims}.sig", b64(json!({"alg": "HS256", "kid": "k"})));
        assert_eq!(peek(&hs).unwrap_err().reason(), "algorithm");
        let nokid = format!("{}.{claims}.sig", b64(json!({"alg": "ES256"})));
        assert_eq!(peek(&nokid).unwrap_err().reason(), "malformed");
        let ok = format!("{}.{claims}.sig", b64(json!({"alg": "ES256", "kid": "k1"})));
        let p = peek(&ok).unwrap();
        assert_eq!(
            (p.kid.as_str(), p.region.as_deref()),
            ("k1", Some("us-east-2_a"))
        );
        assert!(peek(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn policy_rules() {
        let now = Utc::now();
        let v = check_policy(activation(now), Expect::Activation, APP, now).unwrap();
        let Verified::Activation(c) = v else { panic!() };
        assert_eq!(c.xapi_access["commands"][0], "Message.Send");
        assert_eq!(c.scopes_list(), vec!["a", "b"]);
        let later = now + chrono::Duration::hours(25);
        assert_eq!(
            check_policy(activation(now), Expect::Activation, APP, later)
                .unwrap_err()
                .reason(),
            "expired"
        );
        assert_eq!(
            check_policy(activation(now), Expect::Action, APP, now)
                .unwrap_err()
                .reason(),
            "wrong_action"
        );
        assert_eq!(
            check_policy(action(now, 0), Expect::Activation, APP, now)
                .unwrap_err()
                .reason(),
            "wrong_action"
        );
        assert!(check_policy(action(now, -240), Expect::Action, APP, now).is_ok());
        assert_eq!(
            check_policy(action(now, -360), Expect::Action, APP, now)
                .unwrap_err()
                .reason(),
            "stale"
        );
        assert_eq!(
            check_policy(action(now, 120), Expect::Action, APP, now)
                .unwrap_err()
                .reason(),
            "stale"
        );
        assert_eq!(
            check_policy(
                action(now, 0),
                Expect::Action,
                "00000000-0000-4000-8000-000000000000",
                now
            )
            .unwrap_err()
            .reason(),
            "app_id"
        );
        let mut obj = activation(now);
        obj["xapiAccess"] = json!({"statuses": ["A"]});
        assert!(check_policy(obj, Expect::Activation, APP, now).is_ok());
        let mut missing = activation(now);
        missing.as_object_mut().unwrap().remove("refreshToken");
        assert_eq!(
            check_policy(missing, Expect::Activation, APP, now)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        let mut approved = action(now, 0);
        approved["action"] = json!("updateApproved");
        approved["manifestVersion"] = json!("3");
        approved["xapiAccess"] = json!({"commands": []});
        let Verified::Action(a) = check_policy(approved, Expect::Action, APP, now).unwrap() else {
            panic!()
        };
        assert_eq!(a.manifest_version.as_deref(), Some("3"));
    }

    #[test]
    fn signature_and_key_confusion() {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let sk = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pub_pem = sk.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let now = Utc::now();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            &activation(now),
            &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let key = DecodingKey::from_ec_pem(pub_pem.as_bytes()).unwrap();
        let claims = verify_signature(&token, &key).unwrap();
        assert_eq!(claims["orgName"], "Org");
        // Tampered payload.
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = activation(now);
        c["orgName"] = json!("Evil");
        let forged = format!("{}.{}.{}", parts[0], b64(c), parts[2]);
        assert_eq!(
            verify_signature(&forged, &key).unwrap_err().reason(),
            "signature"
        );
        // HS256 "signed" with the public key: refused before any key is used.
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &activation(now),
            &jsonwebtoken::EncodingKey::from_secret(pub_pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(peek(&hs).unwrap_err().reason(), "algorithm");
        assert!(verify_signature(&hs, &key).is_err());
    }
}

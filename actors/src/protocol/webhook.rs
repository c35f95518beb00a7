//! Webhook authentication, per the tenant's scheme: `hmac_signature` (hex HMAC-SHA1 of the raw
//! body in `X-Spark-Signature`, compared in constant time), `authorization_header` (the secret
//! itself in `Authorization`), `basic_authentication`. During a secret rotation both the new and
//! the previous credentials verify ([`Credentials`], [`verify_any`]). Handlers past the edge only
//! see [`Verified`] bodies.
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::secret::Secret;

/// Length of a hex HMAC-SHA1.
pub const SIGNATURE_HEX_LEN: usize = 40;

/// The authentication scheme of a tenant's webhook (the PATCH's `webhook.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// `X-Spark-Signature`: hex HMAC-SHA1 of the body with the secret.
    #[default]
    HmacSignature,
    /// `Authorization`: the secret itself.
    AuthorizationHeader,
    /// `Authorization: Basic base64(username:password)`; the password is the secret.
    BasicAuthentication,
}

impl Scheme {
    /// The name Webex knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::HmacSignature => "hmac_signature",
            Scheme::AuthorizationHeader => "authorization_header",
            Scheme::BasicAuthentication => "basic_authentication",
        }
    }

    /// The credentials of this scheme made from a tenant's secret.
    pub fn with_secret(self, secret: Secret) -> WebhookAuth {
        match self {
            Scheme::HmacSignature => WebhookAuth::Hmac(secret),
            Scheme::AuthorizationHeader => WebhookAuth::Header(secret),
            Scheme::BasicAuthentication => WebhookAuth::Basic {
                username: BASIC_USERNAME.to_string(),
                password: secret,
            },
        }
    }
}

/// The username of `basic_authentication` webhooks (the password, the tenant's secret, is what
/// is unique per tenant).
pub const BASIC_USERNAME: &str = "xapi-stream";

/// A tenant's webhook credentials: the current ones, and those also accepted during a
/// rotation (the previous ones while the overlap lasts, a new one offered to Webex and not yet
/// confirmed), perhaps of another scheme.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub current: WebhookAuth,
    pub also: Vec<WebhookAuth>,
}

/// Checks `body` against every credential in `creds` (all are always checked, so timing does
/// not reveal which matched). The error is the current credentials' one.
pub fn verify_any<'a>(
    creds: &Credentials,
    presented: Presented<'_>,
    body: &'a [u8],
) -> Result<Verified<'a>, AuthError> {
    let current = verify(&creds.current, presented, body);
    let other = creds
        .also
        .iter()
        .fold(false, |ok, a| verify(a, presented, body).is_ok() | ok);
    match current {
        Ok(v) => Ok(v),
        Err(_) if other => Ok(Verified { body }),
        Err(e) => Err(e),
    }
}

/// One set of webhook credentials (a rotation's others are in [`Credentials::also`]).
#[derive(Debug, Clone)]
pub enum WebhookAuth {
    Hmac(Secret),
    Header(Secret),
    Basic { username: String, password: Secret },
}

/// The headers that carry credentials.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    pub signature: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// A body whose authenticity was checked. Only [`verify`] makes one.
#[derive(Debug)]
pub struct Verified<'a> {
    body: &'a [u8],
}

impl<'a> Verified<'a> {
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// The body is not from Webex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing webhook signature")]
    Missing,
    #[error("webhook signature is not 40 hex digits")]
    Malformed,
    #[error("webhook signature does not match")]
    Mismatch,
}

/// Lowercase hex HMAC-SHA1 of `body` with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_matches(secret: &Secret, body: &[u8], sig: &[u8; 20]) -> bool {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes()).expect("any key length");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(sig).is_ok()
}

/// Checks `body` against the tenant's scheme.
pub fn verify<'a>(
    auth: &WebhookAuth,
    presented: Presented<'_>,
    body: &'a [u8],
) -> Result<Verified<'a>, AuthError> {
    let ok = match auth {
        WebhookAuth::Hmac(secret) => {
            let sig = presented.signature.ok_or(AuthError::Missing)?.trim();
            if sig.len() != SIGNATURE_HEX_LEN {
                return Err(AuthError::Malformed);
            }
            let mut raw = [0u8; 20];
            // Accepts lower- and uppercase hex.
            hex::decode_to_slice(sig, &mut raw).map_err(|_| AuthError::Malformed)?;
            hmac_matches(secret, body, &raw)
        }
        WebhookAuth::Header(secret) => {
            let got = presented.authorization.ok_or(AuthError::Missing)?;
            secret.ct_eq(got)
        }
        WebhookAuth::Basic { username, password } => {
            use base64::Engine as _;
            let got = presented.authorization.ok_or(AuthError::Missing)?;
            let encoded = got.strip_prefix("Basic ").ok_or(AuthError::Malformed)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| AuthError::Malformed)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
            let (u, p) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
            let user_ok = Secret::new(username.clone()).ct_eq(u);
            user_ok & password.ct_eq(p)
        }
    };
    if ok {
        Ok(Verified { body })
    } else {
        Err(AuthError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac(current: &str, previous: Option<&str>) -> Credentials {
        Credentials {
            current: WebhookAuth::Hmac(Secret::new(current)),
            also: previous
                .map(|p| WebhookAuth::Hmac(Secret::new(p)))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn known_vector() {
        // RFC 2202 test case 2 for HMAC-SHA1.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn hmac_accepts_either_case_and_the_previous_secret() {
        let body = br#"{"type":"status"}"#;
        let sig = sign("new-secret-new-secret-new", body);
        let auth = hmac(
            "new-secret-new-secret-new",
            Some("old-secret-old-secret-old"),
        );
        fn p(s: &str) -> Presented<'_> {
            Presented {
                signature: Some(s),
                authorization: None,
            }
        }
        assert!(verify_any(&auth, p(&sig), body).is_ok());
        assert!(verify_any(&auth, p(&sig.to_uppercase()), body).is_ok());
        let old = sign("old-secret-old-secret-old", body);
        assert!(verify_any(&auth, p(&old), body).is_ok());
        assert_eq!(
            verify_any(&hmac("new-secret-new-secret-new", None), p(&old), body).unwrap_err(),
            AuthError::Mismatch
        );
        assert_eq!(
            verify_any(&auth, p(&sig[..39]), body).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(
            verify_any(&auth, p(&format!("{}zz", &sig[..38])), body).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(
            verify_any(&auth, Presented::default(), body).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            verify_any(&auth, p(&sig), b"{}").unwrap_err(),
            AuthError::Mismatch
        );
    }

    #[test]
    fn header_and_basic() {
        let auth = WebhookAuth::Header(Secret::new("tok-123456789012345678"));
        fn p(a: &str) -> Presented<'_> {
            Presented {
                signature: None,
                authorization: Some(a),
            }
        }
        assert!(verify(&auth, p("tok-123456789012345678"), b"x").is_ok());
        assert!(verify(&auth, p("tok-12345678901234567"), b"x").is_err());
        let auth = WebhookAuth::Basic {
            username: "u".into(),
            password: Secret::new("p"),
        };
        assert!(verify(&auth, p("Basic dTpw"), b"x").is_ok());
        assert!(verify(&auth, p("Basic dTpx"), b"x").is_err());
        assert!(verify(&auth, p("Bearer dTpw"), b"x").is_err());
    }

    #[test]
    fn credentials_of_two_schemes_during_an_overlap() {
        let body = b"{}";
        let creds = Credentials {
            current: Scheme::BasicAuthentication.with_secret(Secret::new("new-secret-of-20-chars")),
            also: vec![Scheme::HmacSignature.with_secret(Secret::new("old-secret-of-20-chars"))],
        };
        use base64::Engine as _;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{BASIC_USERNAME}:new-secret-of-20-chars"))
        );
        let new = Presented {
            signature: None,
            authorization: Some(&basic),
        };
        assert!(verify_any(&creds, new, body).is_ok());
        let sig = sign("old-secret-of-20-chars", body);
        let old = Presented {
            signature: Some(&sig),
            authorization: None,
        };
        assert!(
            verify_any(&creds, old, body).is_ok(),
            "the previous scheme still verifies"
        );
        let without_previous = Credentials {
            also: vec![],
            ..creds.clone()
        };
        assert_eq!(
            verify_any(&without_previous, old, body).unwrap_err(),
            AuthError::Missing,
            "the current scheme's error"
        );
        let header = Scheme::AuthorizationHeader.with_secret(Secret::new("s3cret-s3cret-s3cret"));
        let creds = Credentials {
            current: header,
            also: vec![],
        };
        let p = |a| Presented {
            signature: None,
            authorization: Some(a),
        };
        assert!(verify_any(&creds, p("s3cret-s3cret-s3cret"), body).is_ok());
        assert_eq!(
            verify_any(&creds, p("s3cret-s3cret-s3creT"), body).unwrap_err(),
            AuthError::Mismatch
        );
    }
}

//! The simulator's signing keys: P-256 keys published as a JWKS, used to sign ES256 JWTs with
//! a `kid` header, exactly as Webex's regional key sets are.
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::rand_core::OsRng;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};

/// One signing key.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
    pub public_pem: String,
}

impl SigningKey {
    /// A fresh random key with a random 24-character kid (like Webex's).
    pub fn generate() -> Self {
        let sk = p256::SecretKey::random(&mut OsRng);
        let pem = sk
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 encoding of a fresh key");
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).expect("our own PEM parses");
        let public = sk.public_key();
        let point = public.to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid: String = b64(&rand::random::<[u8; 18]>());
        let jwk = json!({
            "kty": "EC", "use": "sig", "crv": "P-256", "kid": kid, "key_ops": ["verify"],
            "x": b64(point.x().expect("uncompressed point has x")),
            "y": b64(point.y().expect("uncompressed point has y")),
            "alg": "ES256",
        });
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("SPKI encoding");
        Self {
            kid,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// Signs `claims` ES256; `kid` overrides the header's kid (for tests of unknown kids).
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.unwrap_or(&self.kid).to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("ES256 signing of JSON claims")
    }
}

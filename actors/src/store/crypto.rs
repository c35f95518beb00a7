//! Encryption at rest: AES-256-GCM with a random 96-bit nonce per write, bound to where the
//! value lives by associated data, so a ciphertext copied to another tenant or field does not
//! decrypt. Stored form: `v1:` + base64(nonce ‖ ciphertext+tag).
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

/// Version tag of the stored form, so the scheme can change without ambiguity.
const VERSION: &str = "v1:";
const NONCE_LEN: usize = 12;

/// Seals and opens secrets with the engine's `security.encryption_key`.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

/// The ciphertext is not ours: wrong key, wrong place, or tampered.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt stored secret (wrong encryption key, moved or tampered value)")]
pub struct OpenError;

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Encrypts `plaintext` bound to `context` (e.g. `tenant:<org>:secrets`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        format!(
            "{VERSION}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Decrypts a value produced by [`seal`](Self::seal) with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, OpenError> {
        let body = sealed.strip_prefix(VERSION).ok_or(OpenError)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| OpenError)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(OpenError);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(&[7u8; 32]);
        let sealed = s.seal(b"refresh-token-123", "tenant:A:secrets");
        assert!(!sealed.contains("refresh-token"));
        assert_eq!(
            s.open(&sealed, "tenant:A:secrets").unwrap(),
            b"refresh-token-123"
        );
        // Fresh nonce each time.
        assert_ne!(sealed, s.seal(b"refresh-token-123", "tenant:A:secrets"));
        // Bound to its place.
        assert!(s.open(&sealed, "tenant:B:secrets").is_err());
        // Wrong key.
        assert!(
            Sealer::new(&[8u8; 32])
                .open(&sealed, "tenant:A:secrets")
                .is_err()
        );
        // Tampered.
        let mut t = sealed.clone().into_bytes();
        let n = t.len() - 3;
        t[n] = if t[n] == b'A' { b'B' } else { b'A' };
        assert!(
            s.open(std::str::from_utf8(&t).unwrap(), "tenant:A:secrets")
                .is_err()
        );
        assert!(s.open("garbage", "tenant:A:secrets").is_err());
    }
}

//! HTTPS at the edge (`server.tls_cert`, `server.tls_key`): rustls with the ring provider, the
//! certificate served through a resolver whose key pair is swapped on SIGHUP, so renewed files
//! take effect without a restart or a dropped connection — once something sends the SIGHUP
//! (certbot's deploy hook, say; nothing watches the files). A reload that
//! fails (missing file, bad PEM, key not matching) keeps the certificate in use and says why.
use std::sync::{Arc, RwLock};

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate in use, replaceable.
#[derive(Debug)]
pub struct CertStore {
    cert_path: String,
    key_path: String,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Reads both files; errors name the file and the problem.
    pub fn load(cert_path: &str, key_path: &str) -> anyhow::Result<Self> {
        Ok(Self {
            cert_path: cert_path.to_string(),
            key_path: key_path.to_string(),
            current: RwLock::new(Arc::new(read(cert_path, key_path)?)),
        })
    }

    /// Reads the files again and serves the new pair to new connections.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = read(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// A server configuration over this store (ALPN: h2, http/1.1).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read(cert_path: &str, key_path: &str) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| anyhow::anyhow!("{cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{cert_path}: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "{cert_path}: no certificate in the file");
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| anyhow::anyhow!("{key_path}: {e}"))?;
    let signing =
        provider::sign::any_supported_type(&key).map_err(|e| anyhow::anyhow!("{key_path}: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| anyhow::anyhow!("{key_path} does not belong to {cert_path}: {e}"))?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    fn serving(store: &CertStore) -> Vec<u8> {
        store.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_in_use_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let store = CertStore::load(&cert, &key).unwrap();
        let before = serving(&store);
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = store.reload().unwrap_err().to_string();
        assert!(e.contains(&cert) && e.contains("no certificate"), "{e}");
        assert_eq!(serving(&store), before);
        // A key of another certificate is refused as well.
        let (other_cert, other_key) = pair(dir.path(), "b");
        std::fs::copy(&other_cert, &cert).unwrap();
        let e = store.reload().unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert_eq!(serving(&store), before);
        std::fs::copy(&other_key, &key).unwrap();
        store.reload().unwrap();
        assert_ne!(serving(&store), before, "a good pair is taken");
        let missing = CertStore::load("/nonexistent.crt", &key)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent.crt"), "{missing}");
    }
}

//! The JWKS cache: one entry per URL, fetched once at a time (callers of one URL wait for the
//! same fetch), refreshed after `webex.jwks_max_age_secs`, and refetched on an unknown `kid` at
//! most once per `webex.jwks_refetch_cooldown_secs` — so a flood of tokens with random kids
//! cannot make us hammer Webex. Only EC P-256 (ES256) keys are kept.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::config::WebexConfig;
use crate::telemetry::Metrics;

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("no key with that kid")]
    UnknownKid,
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Default)]
struct Entry {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// Cached key sets by URL.
pub struct JwksCache {
    http: reqwest::Client,
    allow_http: bool,
    max_age: Duration,
    cooldown: Duration,
    timeout: Duration,
    entries: DashMap<String, Arc<tokio::sync::Mutex<Entry>>>,
    metrics: Metrics,
}

impl JwksCache {
    pub fn new(http: reqwest::Client, cfg: &WebexConfig, metrics: Metrics) -> Self {
        Self {
            http,
            allow_http: cfg.allow_http,
            max_age: Duration::from_secs(cfg.jwks_max_age_secs),
            cooldown: Duration::from_secs(cfg.jwks_refetch_cooldown_secs),
            timeout: cfg.http_timeout(),
            entries: DashMap::new(),
            metrics,
        }
    }

    /// The key `kid` of the set at `url`.
    pub async fn key(&self, url: &str, kid: &str) -> Result<DecodingKey, JwksError> {
        let entry = self.entries.entry(url.to_string()).or_default().clone();
        let mut e = entry.lock().await;
        let age = e.fetched_at.map(|t| t.elapsed());
        let fresh = age.is_some_and(|a| a < self.max_age);
        if fresh && let Some(k) = e.keys.get(kid) {
            return Ok(k.clone());
        }
        // Stale set, or an unknown kid: refetch — but an unknown kid only once per cooldown.
        let may_fetch = !fresh || age.is_none_or(|a| a >= self.cooldown);
        if !may_fetch {
            return Err(JwksError::UnknownKid);
        }
        match self.fetch(url).await {
            Ok(keys) => {
                e.keys = keys;
                e.fetched_at = Some(Instant::now());
                e.keys.get(kid).cloned().ok_or(JwksError::UnknownKid)
            }
            Err(why) => {
                // Availability over freshness: a stale set that has the kid still verifies.
                if let Some(k) = e.keys.get(kid) {
                    tracing::warn!(url, error = %why, "JWKS refetch failed; using the cached set");
                    return Ok(k.clone());
                }
                Err(JwksError::Unavailable(why))
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, DecodingKey>, String> {
        let result = self.fetch_inner(url).await;
        self.metrics
            .jwks_fetch(if result.is_ok() { "ok" } else { "error" });
        result
    }

    async fn fetch_inner(&self, url: &str) -> Result<HashMap<String, DecodingKey>, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("JWKS URL {url}: {e}"))?;
        if !(parsed.scheme() == "https" || (parsed.scheme() == "http" && self.allow_http)) {
            return Err(format!("JWKS URL {url}: scheme not allowed"));
        }
        let resp = self
            .http
            .get(parsed)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| format!("JWKS fetch failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("JWKS fetch answered {}", resp.status()));
        }
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| format!("JWKS unreadable: {}", e.without_url()))?;
        Ok(set.keys.into_iter().filter_map(es256_key).collect())
    }
}

/// An EC P-256 key usable for ES256, with its kid; anything else is ignored.
fn es256_key(jwk: serde_json::Value) -> Option<(String, DecodingKey)> {
    let s = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    if s("kty") != Some("EC") || s("crv") != Some("P-256") {
        return None;
    }
    if let Some(alg) = s("alg")
        && alg != "ES256"
    {
        return None;
    }
    let kid = s("kid")?.to_string();
    let key = DecodingKey::from_ec_components(s("x")?, s("y")?).ok()?;
    Some((kid, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP server answering every request with `body()`; counts requests.
    async fn serve(body: Arc<std::sync::Mutex<String>>) -> (String, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                h.fetch_add(1, Ordering::SeqCst);
                let b = body.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                        b.len()
                    );
                    let _ = s.write_all(r.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}/jwks"), hits)
    }

    fn jwk(kid: &str) -> serde_json::Value {
        use base64::Engine as _;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let sk = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let p = sk.public_key().to_encoded_point(false);
        let b = |x: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(x);
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b(p.x().unwrap()), "y": b(p.y().unwrap())})
    }

    fn cfg(cooldown: u64) -> WebexConfig {
        WebexConfig {
            jwks: Default::default(),
            default_region: String::new(),
            gov_region: String::new(),
            allow_http: true,
            plain_http2: false,
            http_timeout_secs: 2,
            jwks_refetch_cooldown_secs: cooldown,
            jwks_max_age_secs: 3600,
        }
    }

    #[tokio::test]
    async fn caches_refetches_on_unknown_kid_once_per_cooldown_and_is_single_flight() {
        let set = |kids: &[&str]| {
            let mut keys: Vec<_> = kids.iter().map(|k| jwk(k)).collect();
            keys.push(serde_json::json!({"kty": "RSA", "kid": "rsa", "n": "x", "e": "AQAB"}));
            keys.push(
                serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "x", "y": "y"}),
            );
            serde_json::json!({ "keys": keys }).to_string()
        };
        let body = Arc::new(std::sync::Mutex::new(set(&["a"])));
        let (url, hits) = serve(body.clone()).await;
        let cache = Arc::new(JwksCache::new(
            reqwest::Client::new(),
            &cfg(3600),
            Metrics::new(),
        ));
        // Concurrent first callers share one fetch.
        let results = futures::future::join_all((0..10).map(|_| {
            let c = cache.clone();
            let u = url.clone();
            async move { c.key(&u, "a").await.is_ok() }
        }))
        .await;
        assert!(results.iter().all(|ok| *ok));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Cached.
        cache.key(&url, "a").await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Non-EC / other-curve keys are ignored.
        assert_eq!(
            cache.key(&url, "rsa").await.err(),
            Some(JwksError::UnknownKid)
        );
        assert_eq!(
            cache.key(&url, "p384").await.err(),
            Some(JwksError::UnknownKid)
        );
        // Within the cooldown an unknown kid does not refetch.
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        // With no cooldown, a rotated key is found after one refetch.
        let cache = JwksCache::new(reqwest::Client::new(), &cfg(0), Metrics::new());
        cache.key(&url, "a").await.unwrap();
        let before = hits.load(Ordering::SeqCst);
        *body.lock().unwrap() = set(&["a", "b"]);
        cache.key(&url, "b").await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn unreachable_is_unavailable() {
        let cache = JwksCache::new(reqwest::Client::new(), &cfg(0), Metrics::new());
        let e = cache.key("http://127.0.0.1:9/jwks", "a").await.unwrap_err();
        assert!(matches!(e, JwksError::Unavailable(_)));
        let strict = WebexConfig {
            allow_http: false,
            ..cfg(0)
        };
        let cache = JwksCache::new(reqwest::Client::new(), &strict, Metrics::new());
        assert!(matches!(
            cache.key("http://127.0.0.1:9/jwks", "a").await,
            Err(JwksError::Unavailable(_))
        ));
    }
}

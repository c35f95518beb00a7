//! `JwtVerifier`: the whole check of an activation or action JWT, in the protocol's order —
//! peek the region, pick the JWKS URL from configuration, find the key by kid, verify the ES256
//! signature, apply the claim policy, and only then record the jti (so an invalid token never
//! burns a jti). Every rejection is counted once in `jwt_rejections_total{reason}`.
use crate::config::Config;
use crate::protocol::jwt::{self, Expect, Rejection, Verified};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::webex::jwks::{JwksCache, JwksError};

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The jti could not be recorded: answer 503, nothing was stored.
    #[error("jti store unavailable: {0}")]
    StoreUnavailable(StoreError),
}

/// Verifies JWTs for the engine.
pub struct JwtVerifier {
    webex: crate::config::WebexConfig,
    app_id: String,
    jwks: JwksCache,
    store: Store,
    metrics: Metrics,
}

impl JwtVerifier {
    pub fn new(cfg: &Config, http: reqwest::Client, store: Store, metrics: Metrics) -> Self {
        Self {
            webex: cfg.webex.clone(),
            app_id: cfg.integration.app_id.clone(),
            jwks: JwksCache::new(http, &cfg.webex, metrics.clone()),
            store,
            metrics,
        }
    }

    pub async fn verify(&self, token: &str, expect: Expect) -> Result<Verified, VerifyError> {
        let result = self.check(token, expect).await;
        if let Err(VerifyError::Rejected(r)) = &result {
            self.metrics.jwt_rejected(r.reason());
            tracing::warn!(reason = r.reason(), error = %r, "JWT rejected");
        }
        result
    }

    async fn check(&self, token: &str, expect: Expect) -> Result<Verified, VerifyError> {
        let peeked = jwt::peek(token)?;
        let url = jwt::jwks_url_for(peeked.region.as_deref(), &self.webex);
        let key = self.jwks.key(url, &peeked.kid).await.map_err(|e| match e {
            JwksError::UnknownKid => Rejection::UnknownKid(peeked.kid.clone()),
            JwksError::Unavailable(why) => Rejection::JwksUnavailable(why),
        })?;
        let claims = jwt::verify_signature(token, &key)?;
        let verified = jwt::check_policy(claims, expect, &self.app_id, chrono::Utc::now())?;
        match self.store.record_jti(verified.jti()).await {
            Ok(true) => Ok(verified),
            Ok(false) => Err(Rejection::Replay.into()),
            Err(e) => Err(VerifyError::StoreUnavailable(e)),
        }
    }
}

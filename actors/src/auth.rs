//! `JwtVerifier`: the whole check of an activation or action JWT, in the protocol's order —
//! peek the region, pick the JWKS URL from configuration, find the key by kid, verify the ES256
//! signature, apply the claim policy, and only then record the jti (so an invalid token never
//! burns a jti). Every rejection is counted once in `jwt_rejections_total{reason}`.
use crate::config::Config;
use crate::protocol::jwt::{self, Expect, Rejection, Verified};
use crate::store::jti::JtiClaim;
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
    /// The same token is being acted on by an earlier attempt (see [`JtiClaim::Held`]): answer
    /// 503 with this many seconds to wait.
    #[error("an earlier attempt with this token may still be running")]
    InFlight(u64),
}

/// An activation token verified and its jti claimed (not yet used): act on it, then
/// [`JwtVerifier::commit`]. `resumed` when an earlier attempt with this token was answered
/// 503: what it did may be there already.
#[derive(Debug)]
pub struct Claimed {
    pub verified: Verified,
    pub resumed: bool,
    jti: String,
    digest: String,
    /// This attempt's, in the claim: only the attempt holding the claim commits.
    nonce: String,
}

impl Claimed {
    /// The token's jti (unique per token: a key for what the token creates).
    pub fn jti(&self) -> &str {
        &self.jti
    }
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

    /// Like [`JwtVerifier::verify`], but the jti is only claimed, for work that must take
    /// effect before the token counts as used (see `store::jti`). A claim is held for `hold`
    /// against concurrent attempts with the same token.
    pub async fn verify_claim(
        &self,
        token: &str,
        expect: Expect,
        hold: std::time::Duration,
    ) -> Result<Claimed, VerifyError> {
        let result = async {
            let verified = self.check_token(token, expect).await?;
            let digest = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            };
            let jti = verified.jti().to_string();
            match self.store.claim_jti(&jti, &digest, hold).await {
                Ok(JtiClaim::Claimed(nonce)) => Ok(Claimed {
                    verified,
                    resumed: false,
                    jti,
                    digest,
                    nonce,
                }),
                Ok(JtiClaim::Resumed(nonce)) => Ok(Claimed {
                    verified,
                    resumed: true,
                    jti,
                    digest,
                    nonce,
                }),
                Ok(JtiClaim::Held(ms)) => Err(VerifyError::InFlight(ms.div_ceil(1000).max(1))),
                Ok(JtiClaim::Replay) => Err(Rejection::Replay.into()),
                Err(e) => Err(VerifyError::StoreUnavailable(e)),
            }
        }
        .await;
        if let Err(VerifyError::Rejected(r)) = &result {
            self.metrics.jwt_rejected(r.reason());
            tracing::warn!(reason = r.reason(), error = %r, "JWT rejected");
        }
        result
    }

    /// Marks a claimed token used, once its work took effect. An error: answer 503 (the
    /// token's retry resumes the claim).
    pub async fn commit(&self, claimed: &Claimed) -> Result<(), StoreError> {
        self.store
            .commit_jti(&claimed.jti, &claimed.digest, &claimed.nonce)
            .await
    }

    async fn check(&self, token: &str, expect: Expect) -> Result<Verified, VerifyError> {
        let verified = self.check_token(token, expect).await?;
        match self.store.record_jti(verified.jti()).await {
            Ok(true) => Ok(verified),
            Ok(false) => Err(Rejection::Replay.into()),
            Err(e) => Err(VerifyError::StoreUnavailable(e)),
        }
    }

    /// Everything but the jti: region, key, ES256 signature, claim policy.
    async fn check_token(&self, token: &str, expect: Expect) -> Result<Verified, VerifyError> {
        let peeked = jwt::peek(token)?;
        let url = jwt::jwks_url_for(peeked.region.as_deref(), &self.webex);
        let key = self.jwks.key(url, &peeked.kid).await.map_err(|e| match e {
            JwksError::UnknownKid => Rejection::UnknownKid(peeked.kid.clone()),
            JwksError::Unavailable(why) => Rejection::JwksUnavailable(why),
        })?;
        let claims = jwt::verify_signature(token, &key)?;
        Ok(jwt::check_policy(
            claims,
            expect,
            &self.app_id,
            chrono::Utc::now(),
        )?)
    }
}

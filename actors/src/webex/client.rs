//! The Webex REST calls the engine makes for a tenant: the OAuth refresh-token exchange and
//! GET/PATCH of the appUrl. Errors are classified the way callers must react: the refresh token
//! is dead (`InvalidGrant`), the integration is gone (`Gone`), the token is rejected
//! (`Unauthorized`), or try again later (`Transient`, with the server's `Retry-After`).
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::secret::Secret;

/// An OAuth grant from the refresh-token exchange.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: Secret,
    pub expires_in: Duration,
    /// Present when the server rotated the refresh token: adopt it.
    pub refresh_token: Option<Secret>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The refresh token was rejected: only an `update` action can bring a new one.
    #[error("refresh token rejected: {0}")]
    InvalidGrant(String),
    /// Our client id/secret were rejected: a configuration problem.
    #[error("OAuth client rejected: {0}")]
    BadClient(String),
    /// Worth retrying after `retry_after` (or a backoff of our choosing).
    #[error("token endpoint unavailable: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The URL is not allowed (http without `webex.allow_http`) or not a URL.
    #[error("refusing URL {0}")]
    Url(UrlError),
    /// The request may have reached the token endpoint but no complete answer came back (a
    /// timeout, a connection lost mid-way, an unreadable 200): the refresh token may have been
    /// redeemed. Worth retrying, but Webex may refuse that token now.
    #[error("token endpoint gave no answer: {0}")]
    Unanswered(String),
}

impl OAuthError {
    /// Whether the token endpoint may have redeemed the refresh token although we do not know
    /// the result.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, OAuthError::Unanswered(_))
    }
}

/// Why a call to the appUrl failed.
#[derive(Debug, thiserror::Error)]
pub enum AppUrlError {
    #[error("appUrl rejected the access token ({0})")]
    Unauthorized(u16),
    #[error("integration removed on the Webex side ({0})")]
    Gone(u16),
    #[error("appUrl answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("appUrl unreachable: {0}")]
    Network(String),
    #[error("refusing URL {0}")]
    Url(UrlError),
}

/// Why a URL Webex handed us is not called.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{url}: {source}")]
    Invalid {
        url: String,
        #[source]
        source: url::ParseError,
    },
    /// Not https (http is allowed only with `webex.allow_http`, for simulators).
    #[error("{0}: scheme not allowed")]
    Scheme(String),
}

/// Largest error body kept for a log line or last_error.
const ERROR_BODY_LIMIT: usize = 512;

/// HTTP client for Webex, with the engine's URL policy.
#[derive(Clone, Debug)]
pub struct WebexClient {
    http: reqwest::Client,
    allow_http: bool,
}

impl WebexClient {
    pub fn new(http: reqwest::Client, allow_http: bool) -> Self {
        Self { http, allow_http }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Only https URLs (http too when `webex.allow_http` is set, for simulators).
    pub fn check_url(&self, url: &str) -> Result<url::Url, UrlError> {
        let u = url::Url::parse(url).map_err(|source| UrlError::Invalid {
            url: url.to_string(),
            source,
        })?;
        match u.scheme() {
            "https" => Ok(u),
            "http" if self.allow_http => Ok(u),
            _ => Err(UrlError::Scheme(url.to_string())),
        }
    }

    /// `POST {oauthUrl}` with `grant_type=refresh_token`.
    pub async fn refresh(
        &self,
        oauth_url: &str,
        client_id: &str,
        client_secret: &Secret,
        refresh_token: &Secret,
    ) -> Result<TokenGrant, OAuthError> {
        let url = self.check_url(oauth_url).map_err(OAuthError::Url)?;
        let resp = self
            .http
            .post(url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("client_secret", client_secret.expose()),
                ("refresh_token", refresh_token.expose()),
            ])
            .send()
            .await
            .map_err(|e| {
                let connect = e.is_connect();
                let message = e.without_url().to_string();
                if connect {
                    // Never reached the server: nothing was redeemed.
                    OAuthError::Transient {
                        message,
                        retry_after: None,
                    }
                } else {
                    OAuthError::Unanswered(message)
                }
            })?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        if status.is_success() {
            let body: TokenResponse = resp.json().await.map_err(|e| {
                OAuthError::Unanswered(format!("unreadable token response: {}", e.without_url()))
            })?;
            return Ok(TokenGrant {
                access_token: Secret::new(body.access_token),
                expires_in: Duration::from_secs(body.expires_in),
                refresh_token: body
                    .refresh_token
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
            });
        }
        let body = short_body(resp).await;
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => OAuthError::Transient {
                message: format!("{status}: {body}"),
                retry_after,
            },
            s if s.is_server_error() => OAuthError::Transient {
                message: format!("{status}: {body}"),
                retry_after,
            },
            StatusCode::UNAUTHORIZED if body.contains("invalid_client") => {
                OAuthError::BadClient(format!("{status}: {body}"))
            }
            _ => OAuthError::InvalidGrant(format!("{status}: {body}")),
        })
    }

    /// `GET {appUrl}`: the integration's current state on the Webex side.
    pub async fn get_app(
        &self,
        app_url: &str,
        token: &Secret,
    ) -> Result<serde_json::Value, AppUrlError> {
        let url = self.check_url(app_url).map_err(AppUrlError::Url)?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| AppUrlError::Network(e.without_url().to_string()))?;
        app_response(resp).await
    }

    /// `PATCH {appUrl}` with `body`; returns the integration details Webex answers.
    pub async fn patch_app(
        &self,
        app_url: &str,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, AppUrlError> {
        let url = self.check_url(app_url).map_err(AppUrlError::Url)?;
        let resp = self
            .http
            .patch(url)
            .bearer_auth(token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| AppUrlError::Network(e.without_url().to_string()))?;
        app_response(resp).await
    }
}

async fn app_response(resp: reqwest::Response) -> Result<serde_json::Value, AppUrlError> {
    let status = resp.status();
    if status.is_success() {
        let text = resp
            .text()
            .await
            .map_err(|e| AppUrlError::Network(e.without_url().to_string()))?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        return serde_json::from_str(&text).map_err(|e| AppUrlError::Status {
            status: status.as_u16(),
            body: format!("unreadable JSON: {e}"),
        });
    }
    let code = status.as_u16();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(AppUrlError::Unauthorized(code)),
        StatusCode::NOT_FOUND | StatusCode::GONE => Err(AppUrlError::Gone(code)),
        _ => Err(AppUrlError::Status {
            status: code,
            body: short_body(resp).await,
        }),
    }
}

/// The `Retry-After` of a response, in seconds form.
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The start of an error body, for messages and logs.
pub(crate) async fn short_body(resp: reqwest::Response) -> String {
    let mut text = resp.text().await.unwrap_or_default();
    if text.len() > ERROR_BODY_LIMIT {
        let mut cut = ERROR_BODY_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

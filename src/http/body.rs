//! Request bodies read under `server.max_body_bytes`, so an oversized body is refused with the
//! contract's error JSON (413) instead of actix's plain-text default, and JSON is parsed with a
//! clear 400.
use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut, Payload};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Reads the whole body, refusing more than `limit` bytes (checked against Content-Length
/// first, then while streaming).
pub async fn read(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("unreadable request body: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The largest HTML form the setup page and the console's sign-in accept: a code or a token
/// and little else (a browser sends well under 1 KiB).
pub const SMALL_FORM: usize = 4096;

/// Reads an HTML form (`application/x-www-form-urlencoded`) of at most `limit` bytes: 413 when
/// larger (by Content-Length or while reading), 400 when it is not such a form or does not
/// parse. Neither is ever taken for a wrong code or token.
pub async fn form<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read(req, payload, limit).await?;
    let malformed = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "malformed", why);
    let is_form = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(malformed(
            "expected an HTML form (application/x-www-form-urlencoded)".into(),
        ));
    }
    serde_urlencoded::from_bytes(&bytes).map_err(|e| malformed(format!("malformed form: {e}")))
}

/// Parses a JSON body, with a 400 naming the problem.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("malformed JSON body: {e}"),
        )
    })
}

/// Parses a body that must be a JSON object, with a 400 otherwise. (serde also reads a struct
/// from a JSON array of its fields in order: `["eyJ…"]` would pass for `{"jwt": "eyJ…"}`, and
/// `[null]` for a command without arguments.)
pub fn object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "malformed JSON body: expected a JSON object",
        ));
    }
    json(bytes)
}

/// `{"jwt": "..."}`, the body of provisioning, activation and action requests.
#[derive(serde::Deserialize)]
pub struct JwtBody {
    pub jwt: String,
}

//! `POST /tenants/<tenant_id>/webhook`: the edge of the ingest pipeline. It reads the body
//! (size limit) and maps the pipeline's outcome to a status code and a `webhooks_total` label;
//! everything else — tenant, signature, parse, freshness, the write — is `actors::ingest`.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::ingest::Rejected;
use actors::protocol::webhook::Presented;

use super::{ApiError, AppState, body};

/// `Retry-After` for a saturated or Redis-less engine.
const RETRY_AFTER_SECS: u64 = 2;

pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    tenant_id: String,
    payload: web::Payload,
) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (label, resp) = match body::read(&req, payload, state.config.server.max_body_bytes).await {
        Err(e) if e.status == StatusCode::PAYLOAD_TOO_LARGE => ("too_large", e.into()),
        Err(e) => ("malformed", e.into()),
        Ok(bytes) => {
            let presented = Presented {
                signature: header("X-Spark-Signature"),
                authorization: header("Authorization"),
            };
            match state.ingest.webhook(&tenant_id, presented, &bytes).await {
                Ok(done) => (done.label(), HttpResponse::Ok().finish()),
                Err(e) => (e.label(), rejection(e).into()),
            }
        }
    };
    state.metrics.webhook(label);
    resp
}

/// The contract's error answer for a rejected webhook.
fn rejection(e: Rejected) -> ApiError {
    let (status, code) = match &e {
        Rejected::UnknownTenant(t) => return ApiError::not_found(&format!("tenant {t}")),
        Rejected::Overloaded(why) => {
            return ApiError::unavailable(why).retry_after(RETRY_AFTER_SECS);
        }
        Rejected::Gone => (StatusCode::GONE, "gone"),
        Rejected::BadSignature(_) => (StatusCode::UNAUTHORIZED, "bad_signature"),
        Rejected::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
        Rejected::Stale(_) => (StatusCode::BAD_REQUEST, "stale"),
    };
    ApiError::new(status, code, e.to_string())
}

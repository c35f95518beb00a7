//! `POST /tenants/<tenant_id>/webhook`: xAPI status, events and health checks from Webex.
//! Order of checks: size → tenant → signature → JSON → health check → organization →
//! freshness → write. A 200 is answered only once the records are durable in Redis.
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::protocol::message::{self, Source};
use actors::protocol::webhook::{self, Presented};
use actors::store::tenants::ProvisioningState;
use actors::store::writer::{Applied, WriteError};

use super::{ApiError, AppState, body};

/// The longest a webhook waits for its write before answering 503 (a bound, so a hung Redis
/// never hangs Webex's request).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// A failed signature check reloads the tenant's secrets at most this often.
const SECRET_RELOAD_EVERY: Duration = Duration::from_secs(1);
/// `Retry-After` for a saturated or Redis-less engine.
const RETRY_AFTER_SECS: u64 = 2;

pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let result = handle(&state, &req, &path, payload).await;
    let (label, resp) = match result {
        Ok(label) => (label, HttpResponse::Ok().finish()),
        Err((label, e)) => (label, actix_web::ResponseError::error_response(&e)),
    };
    state
        .metrics
        .webhooks_total
        .with_label_values(&[label])
        .inc();
    resp
}

type Rejected = (&'static str, ApiError);

async fn handle(
    state: &AppState,
    req: &HttpRequest,
    tenant_id: &str,
    payload: web::Payload,
) -> Result<&'static str, Rejected> {
    let started = Instant::now();
    let bytes = body::read(req, payload, state.config.server.max_body_bytes)
        .await
        .map_err(|e| {
            (
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "malformed"
                },
                e,
            )
        })?;
    let tenant = match state.registry.get(tenant_id) {
        Some(t) => t,
        // Perhaps activated on another replica a moment ago: ask Redis before answering 404.
        None => match state.registry.lookup(tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err((
                    "unknown_tenant",
                    ApiError::not_found(&format!("tenant {tenant_id}")),
                ));
            }
            Err(e) => {
                return Err((
                    "overloaded",
                    ApiError::unavailable(&format!("could not look the tenant up: {e}")),
                ));
            }
        },
    };
    if tenant.shared.state() == ProvisioningState::Deprovisioned {
        return Err((
            "gone",
            ApiError::new(StatusCode::GONE, "gone", "tenant deprovisioned"),
        ));
    }
    let bad_sig = |what: &str| {
        (
            "bad_signature",
            ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", what),
        )
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let presented = Presented {
        signature: header("X-Spark-Signature"),
        authorization: header("Authorization"),
    };
    let t = Instant::now();
    let verify = || {
        let auth = tenant
            .shared
            .tokens
            .webhook_auth()
            .ok_or_else(|| "tenant has no webhook secret yet".to_string())?;
        webhook::verify(&auth, presented, &bytes).map_err(|e| e.to_string())
    };
    let verified = match verify() {
        Ok(v) => v,
        // The secret may have been rotated by another replica a moment ago: read it again
        // (at most once a second per tenant, so bad signatures cannot hammer Redis).
        Err(_) if tenant.shared.claim_reload(SECRET_RELOAD_EVERY) => {
            let _ = state.registry.refresh(&tenant.shared.org_id).await;
            verify().map_err(|e| bad_sig(&e))?
        }
        Err(e) => return Err(bad_sig(&e)),
    };
    state.metrics.stage("verify", t);
    let t = Instant::now();
    let msg = message::parse(verified.body()).map_err(|e| {
        (
            "malformed",
            ApiError::new(StatusCode::BAD_REQUEST, "malformed", e.to_string()),
        )
    })?;
    state.metrics.stage("parse", t);
    if matches!(msg.body, message::Body::HealthCheck) {
        return Ok("health_check");
    }
    if msg.org_id != tenant.shared.org_id {
        return Err((
            "malformed",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "orgId does not belong to this tenant",
            ),
        ));
    }
    msg.check_fresh(chrono::Utc::now()).map_err(|e| {
        (
            "stale",
            ApiError::new(StatusCode::BAD_REQUEST, "stale", e.to_string()),
        )
    })?;
    let kind = msg.type_str();
    let overloaded = |why: &str| {
        state.metrics.backpressure_rejections_total.inc();
        (
            "overloaded",
            ApiError::unavailable(why).retry_after(RETRY_AFTER_SECS),
        )
    };
    let t = Instant::now();
    let written = tokio::time::timeout(
        WRITE_DEADLINE,
        state.writer.write(Arc::new(msg), Source::Webhook),
    )
    .await
    .map_err(|_| overloaded("write to redis timed out"))?;
    state.metrics.stage("redis_write", t);
    match written {
        Ok(Applied::Written(_)) => {
            state.metrics.stage("end_to_end", started);
            state
                .metrics
                .messages_total
                .with_label_values(&["webhook", kind])
                .inc();
            Ok("accepted")
        }
        Ok(Applied::Duplicate) => Ok("duplicate"),
        Err(WriteError::Overloaded) => Err(overloaded("ingest saturated")),
        Err(e) => Err(overloaded(&format!("cannot write: {e}"))),
    }
}

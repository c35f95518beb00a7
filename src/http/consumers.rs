//! Consumer credentials of a tenant: `POST`, `GET /admin/tenants/<id>/consumers` and
//! `DELETE …/consumers/<name>` (the console's tenant page calls the same use case).
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::consumers::ConsumerError;

use super::admin::authorize;
use super::{ApiError, AppState};

/// The body of a grant.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    name: String,
    #[serde(default)]
    commands: bool,
}

/// A refused or failed change as the contract's error JSON.
pub fn error(e: &ConsumerError) -> ApiError {
    let (status, reason) = match e {
        ConsumerError::InvalidName(_) | ConsumerError::UnsafeOrg => {
            (StatusCode::BAD_REQUEST, "invalid_consumer")
        }
        ConsumerError::Exists(_) => (StatusCode::CONFLICT, "consumer_exists"),
        ConsumerError::RevokedMeanwhile(_) => (StatusCode::CONFLICT, "consumer_changed"),
        ConsumerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        ConsumerError::Refused(_) => (StatusCode::BAD_GATEWAY, "acl_refused"),
        ConsumerError::Unreachable(_) | ConsumerError::Store(_) => {
            return ApiError::unavailable(&e.to_string()).retry_after(1);
        }
    };
    ApiError::new(status, reason, e.to_string())
}

/// `POST /admin/tenants/<id>/consumers` with `{"name", "commands": false}`: 201 with the user,
/// its password (shown this once) and the keys it may read.
pub async fn grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let id = path.into_inner();
    let h = super::live_tenant(&state, &id).await?;
    let bytes = super::body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let body: GrantBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("expected {{\"name\": \"…\", \"commands\": false}}: {e}"),
        )
    })?;
    match state
        .consumers
        .grant(&id, &h.shared.org_id, &body.name, body.commands)
        .await
    {
        Ok(_) if h.shared.is_deprovisioned() => {
            Err(deprovisioned_meanwhile(&state, &id, &body.name).await)
        }
        Ok(granted) => Ok(HttpResponse::Created()
            .insert_header(("Cache-Control", "no-store"))
            .json(granted)),
        Err(e) => Err(error(&e)),
    }
}

/// A grant that raced the tenant's deprovisioning (which revokes what it finds): undone, 410.
pub async fn deprovisioned_meanwhile(state: &AppState, id: &str, name: &str) -> ApiError {
    if let Err(e) = state.consumers.revoke(id, name).await {
        tracing::warn!(tenant = %id, error = %e, "a grant that raced a deprovision not undone yet; the sync removes it once its record is gone");
    }
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "tenant deprovisioned while the consumer was being granted; nothing granted",
    )
}

/// `GET /admin/tenants/<id>/consumers`: the tenant's consumers (never a password).
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let id = path.into_inner();
    super::find_tenant(&state, &id).await?;
    match state.consumers.list(&id).await {
        Ok(list) => Ok(HttpResponse::Ok().json(list)),
        Err(e) => Err(error(&e)),
    }
}

/// `DELETE /admin/tenants/<id>/consumers/<name>`: 204 once the user is gone (its connections
/// closed); 404 if unknown.
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (id, name) = path.into_inner();
    super::find_tenant(&state, &id).await?;
    match state.consumers.revoke(&id, &name).await {
        Ok(_) => Ok(HttpResponse::NoContent().finish()),
        Err(e) => Err(error(&e)),
    }
}

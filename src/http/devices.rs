//! The admin API's device routes: inventory (from Redis, or a sync on demand), xAPI status
//! queries, xAPI commands and device configurations, run through the tenant's device API
//! (grants, rate limits, token). Errors are the contract's JSON with a trackingId; a request
//! refused by the tenant's grants never reaches Webex.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::devices::{Api, DeviceError, DeviceRequest, InventoryKind};
use actors::supervisor::TenantHandle;
use serde_json::Value;

use super::admin::authorize;
use super::{ApiError, AppState, body, live_tenant};

/// The contract error for a failed device request (counted by the caller).
fn device_error(e: DeviceError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut err = ApiError::new(status, e.code(), e.to_string());
    if let Some(secs) = e.retry_after_secs() {
        err = err.retry_after(secs);
    }
    err
}

/// Runs a request for the HTTP source, counting its outcome.
async fn run(
    state: &AppState,
    h: &TenantHandle,
    req: DeviceRequest,
) -> Result<HttpResponse, ApiError> {
    match Api::of(&h.shared).request(&req).await {
        Ok(v) => {
            state.metrics.device_request("http", "ok");
            Ok(HttpResponse::Ok().json(v))
        }
        Err(e) => {
            let result = if e.is_refusal() { "refused" } else { "error" };
            state.metrics.device_request("http", result);
            Err(device_error(e))
        }
    }
}

/// Every value of a repeated query parameter; comma-separated values are split.
fn query_values(req: &HttpRequest, key: &str) -> Vec<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `GET /admin/tenants/<id>/devices` and `/workspaces`: the stored inventory, by display name.
async fn inventory(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    kind: InventoryKind,
) -> Result<HttpResponse, ApiError> {
    authorize(state, req)?;
    let h = live_tenant(state, id).await?;
    let items = actors::devices::inventory::stored(&h.shared, kind)
        .await
        .map_err(|e| ApiError::unavailable(&format!("inventory not readable from Redis: {e}")))?;
    Ok(HttpResponse::Ok().json(items))
}

pub async fn list_devices(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    inventory(&state, &req, &path, InventoryKind::Device).await
}

pub async fn list_workspaces(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    inventory(&state, &req, &path, InventoryKind::Workspace).await
}

/// `POST /admin/tenants/<id>/inventory/sync`: a sync now; answers its report.
pub async fn sync(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let h = live_tenant(&state, &path).await?;
    match Api::of(&h.shared).sync_inventory().await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(e) => Err(device_error(e)),
    }
}

/// Body of a command: `{"arguments": {...}, "body": "multiline text"}`, both optional.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    #[serde(default)]
    arguments: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    body: Option<String>,
}

/// `POST /admin/tenants/<id>/devices/<deviceId>/commands/<Name>`.
pub async fn command(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (id, device, name) = path.into_inner();
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let h = live_tenant(&state, &id).await?;
    let cmd: CommandBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        CommandBody::default()
    } else {
        body::object(&bytes)?
    };
    let request = DeviceRequest::Command {
        device,
        name,
        arguments: cmd.arguments,
        body: cmd.body,
    };
    run(&state, &h, request).await
}

/// `GET /admin/tenants/<id>/devices/<deviceId>/status?name=A&name=B` (or `name=A,B`).
pub async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (id, device) = path.into_inner();
    let h = live_tenant(&state, &id).await?;
    let names = query_values(&req, "name");
    run(&state, &h, DeviceRequest::Status { device, names }).await
}

/// `GET /admin/tenants/<id>/devices/<deviceId>/configurations[?key=…]`.
pub async fn config_get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (id, device) = path.into_inner();
    let h = live_tenant(&state, &id).await?;
    let key = query_values(&req, "key").into_iter().next();
    run(&state, &h, DeviceRequest::ConfigGet { device, key }).await
}

/// `PATCH /admin/tenants/<id>/devices/<deviceId>/configurations` with a JSON-patch array.
pub async fn config_patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (id, device) = path.into_inner();
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let h = live_tenant(&state, &id).await?;
    let ops: Value = body::json(&bytes)?;
    run(&state, &h, DeviceRequest::ConfigPatch { device, ops }).await
}

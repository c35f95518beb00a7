//! The operator's admin API: bearer `server.admin_token` (empty disables it), tenant listing.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{ApiError, AppState};

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Constant-time check of a presented admin token; always false when the admin API is off.
pub fn token_ok(state: &AppState, presented: Option<&str>) -> bool {
    let expected = &state.config.server.admin_token;
    !expected.is_empty() && presented.is_some_and(|p| expected.ct_eq(p))
}

/// The admin token check of the API and the console's sign-in: 403 when the admin API is
/// disabled; 429 with `Retry-After` while the client's address is throttled (the token is not
/// even compared); 401 for a wrong or missing token, counted toward that address's limit.
pub fn check_token(
    state: &AppState,
    req: &HttpRequest,
    presented: Option<&str>,
) -> Result<(), ApiError> {
    if state.config.server.admin_token.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is disabled (server.admin_token is empty)",
        ));
    }
    let addr = super::client_addr(state, req);
    if let Err(wait) = state.throttle.check(&addr) {
        state.metrics.admin_auth_failure("throttled");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "admin_throttled",
            "too many wrong admin tokens from this address",
        )
        .retry_after(wait));
    }
    if token_ok(state, presented) {
        state.throttle.succeeded(&addr);
        return Ok(());
    }
    state.metrics.admin_auth_failure("refused");
    if state.throttle.failed(&addr) {
        tracing::warn!(
            client = %addr,
            limit = state.config.security.admin_failures_per_address,
            window_secs = state.config.security.admin_failure_window_secs,
            "admin token: too many wrong tokens from one address; throttled until the window ends"
        );
    }
    Err(ApiError::unauthorized("wrong or missing admin token"))
}

/// 403 when the admin API is disabled, 429 while throttled, 401 for a wrong or missing token.
pub fn authorize(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    check_token(state, req, bearer(req))
}

/// Wrong admin tokens per client address, within a fixed window: past the limit the address
/// is refused without a comparison until its window ends. IPv6 addresses count per /64 (one
/// host usually has a whole /64). Held in memory (per replica), so it works whatever Redis
/// does; at most [`THROTTLE_ADDRESSES`] addresses are tracked (expired windows are swept at
/// most once a second), and beyond them new addresses share one window, so filling the table
/// throttles newcomers instead of freeing them.
pub struct Throttle {
    windows: dashmap::DashMap<String, Window>,
    limit: u32,
    window: std::time::Duration,
    swept: std::sync::Mutex<std::time::Instant>,
}

struct Window {
    started: std::time::Instant,
    failures: u32,
}

/// Addresses tracked at most.
const THROTTLE_ADDRESSES: usize = 100_000;
/// The window addresses share once the table is full.
const SHARED: &str = "*";

impl Throttle {
    pub fn new(cfg: &actors::config::SecurityConfig) -> Self {
        Self {
            windows: dashmap::DashMap::new(),
            limit: cfg.admin_failures_per_address,
            window: std::time::Duration::from_secs(cfg.admin_failure_window_secs),
            swept: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// The window `addr` counts in: its own (IPv6 by /64), or the shared one when the table
    /// is full.
    fn key(&self, addr: &str) -> String {
        let own = match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            _ => addr.to_string(),
        };
        if self.windows.len() >= THROTTLE_ADDRESSES && !self.windows.contains_key(&own) {
            self.sweep();
            if self.windows.len() >= THROTTLE_ADDRESSES {
                return SHARED.to_string();
            }
        }
        own
    }

    /// Drops expired windows, at most once a second.
    fn sweep(&self) {
        let mut at = self.swept.lock().expect("sweep lock");
        if at.elapsed() >= std::time::Duration::from_secs(1) {
            *at = std::time::Instant::now();
            self.windows
                .retain(|_, w| w.started.elapsed() < self.window);
        }
    }

    /// `Err(seconds to wait)` while `addr` is over its limit.
    pub fn check(&self, addr: &str) -> Result<(), u64> {
        match self.windows.get(&self.key(addr)) {
            Some(w) if w.failures >= self.limit => {
                let left = self.window.saturating_sub(w.started.elapsed());
                if left.is_zero() {
                    Ok(())
                } else {
                    Err(left.as_secs().max(1))
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `addr`; true when this one reached the limit (log it once).
    pub fn failed(&self, addr: &str) -> bool {
        let mut w = self.windows.entry(self.key(addr)).or_insert(Window {
            started: std::time::Instant::now(),
            failures: 0,
        });
        if w.started.elapsed() >= self.window {
            *w = Window {
                started: std::time::Instant::now(),
                failures: 0,
            };
        }
        w.failures += 1;
        w.failures == self.limit
    }

    /// A right token: the address starts over (not the shared window).
    pub fn succeeded(&self, addr: &str) {
        let key = self.key(addr);
        if key != SHARED {
            self.windows.remove(&key);
        }
    }
}

/// `GET /admin/tenants`.
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let handles = state.registry.list();
    let tenants = futures::future::join_all(handles.iter().map(|h| h.to_json())).await;
    Ok(HttpResponse::Ok().json(tenants))
}

/// `GET /admin/tenants/<id>`.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let id = path.into_inner();
    let h = super::find_tenant(&state, &id).await?;
    Ok(HttpResponse::Ok().json(h.to_json().await))
}

/// `POST /admin/tenants/<id>/manifest-update`: body is a manifest; it is checked against every
/// rule, then PATCHed to the tenant's appUrl as an `updateRequest`.
pub async fn manifest_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let id = path.into_inner();
    let bytes = super::body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let manifest: serde_json::Value = super::body::object(&bytes)?;
    let problems = actors::protocol::manifest::check(&manifest);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_manifest",
            format!("invalid manifest: {}", list.join("; ")),
        ));
    }
    let handle = state
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::not_found(&format!("tenant {id}")))?;
    match actors::actions::request_manifest_update(&handle.shared, manifest).await {
        Ok(answer) => Ok(HttpResponse::Ok().json(answer)),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "webex",
            format!("Webex refused the update request: {e}"),
        )),
    }
}

/// `POST /admin/tenants/<id>/webhook-secret/rotate`: a new webhook secret now (offered, PATCHed
/// to the appUrl, confirmed); the replaced one verifies for `security.webhook_secret_overlap_secs`.
/// 409 while another rotation is in flight or the last one's overlap runs; 502 when Webex did not
/// take the new secret (the current one stays in force).
pub async fn rotate_webhook_secret(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    use actors::tenant::rotation::{self, RotateError};
    authorize(&state, &req)?;
    let id = path.into_inner();
    let h = super::live_tenant(&state, &id).await?;
    match rotation::rotate(&h.shared, rotation::Why::Operator).await {
        Ok(r) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "tenant_id": id,
            "rotated_at": r.rotated_at,
            "previous_valid_until": r.previous_valid_until,
            "scheme": r.scheme.as_str(),
        }))),
        Err(e) => {
            let (status, reason) = match &e {
                RotateError::NoWebhook | RotateError::NotActive(_) => {
                    (StatusCode::CONFLICT, "not_applicable")
                }
                RotateError::InFlight(_) | RotateError::Overlap(_) => {
                    (StatusCode::CONFLICT, "rotation_busy")
                }
                RotateError::Store { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                RotateError::Token(_) | RotateError::Webex(_) => (StatusCode::BAD_GATEWAY, "webex"),
            };
            let mut err = ApiError::new(status, reason, format!("webhook secret not rotated: {e}"));
            if status == StatusCode::SERVICE_UNAVAILABLE {
                err = err.retry_after(1);
            }
            Err(err)
        }
    }
}

/// The body of `PATCH /admin/tenants/<id>`: what may be changed of a tenant.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    ingest: actors::config::IngestMode,
}

/// `PATCH /admin/tenants/<id>` with `{"ingest": "webhook" | "queue" | "both"}`: starts a
/// transport switch (see `actors::tenant::transport`) and answers 202 with the tenant, whose
/// `transport_switch` shows the target and the phase. Asking for the current mode, or for the
/// switch under way, changes nothing (202). 409 while another switch runs or the activation is
/// not completed; 502 when Webex refused (4xx) or did not take the PATCH enabling the new
/// transport (the tenant stays as it was; `last_error` says why).
pub async fn patch_tenant(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let id = path.into_inner();
    let bytes = super::body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let patch: TenantPatch = super::body::object(&bytes)?;
    let h = switch_ingest(&state, &id, patch.ingest).await?;
    Ok(HttpResponse::Accepted().json(h.to_json().await))
}

/// Starts switching tenant `id` to `mode` (the admin API's PATCH and the console's form).
pub async fn switch_ingest(
    state: &AppState,
    id: &str,
    mode: actors::config::IngestMode,
) -> Result<actors::supervisor::TenantHandle, ApiError> {
    use actors::tenant::transport::{self, SwitchError};
    let h = super::live_tenant(state, id).await?;
    // In a task of its own: a caller that goes away does not cut the switch short between the
    // PATCH and recording what Webex answered. Whatever happened, the owner (perhaps this
    // replica) then starts what the tenant reads now.
    let task = {
        let h = h.clone();
        actix_web::rt::spawn(async move {
            let result = transport::request(&h.shared, mode).await;
            h.transport_changed().await;
            result
        })
    };
    let result = task
        .await
        .map_err(|e| ApiError::internal(&format!("transport switch: {e}")))?;
    match result {
        Ok(_) => Ok(h),
        Err(e) => {
            let (status, reason) = match &e {
                SwitchError::NotActive(_) => (StatusCode::CONFLICT, "not_applicable"),
                SwitchError::Busy(_) => (StatusCode::CONFLICT, "switch_busy"),
                SwitchError::Refused(_) => (StatusCode::BAD_GATEWAY, "webex_refused"),
                SwitchError::Webex(_) => (StatusCode::BAD_GATEWAY, "webex"),
                SwitchError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            let description = match &e {
                // Perhaps after Webex took the PATCH: the record may hold the switch, which
                // the owner then finishes.
                SwitchError::Store(_) => format!(
                    "transport switch: {e}; GET the tenant to see whether the switch is under way"
                ),
                _ => format!("transport not switched: {e}"),
            };
            let mut err = ApiError::new(status, reason, description);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                err = err.retry_after(1);
            }
            Err(err)
        }
    }
}

/// `GET /admin/errors/<trackingId>`: the error answered with that trackingId (time, endpoint,
/// tenant, reason, description) from the support log, or a tenant's last error (a failed
/// activation, a dead refresh token) carrying it. 404 when neither knows it.
pub async fn find_error(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let id = path.into_inner().to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "a trackingId is 32 hex digits",
        ));
    }
    match lookup_error(&state, &id).await {
        Ok(Some(record)) => Ok(HttpResponse::Ok().json(record)),
        Ok(None) => Err(ApiError::not_found(&format!(
            "trackingId {id} (errors are kept {} s)",
            state.config.support.errors_retention_secs
        ))),
        Err(e) => Err(ApiError::unavailable(&format!(
            "could not read the support log: {e}"
        ))),
    }
}

/// The error answered with trackingId `id` (lowercase hex): from the support log, else a
/// tenant's last error carrying it (a failed activation, a dead refresh token). The one lookup
/// behind `GET /admin/errors/<id>` and the console's error page.
pub async fn lookup_error(
    state: &AppState,
    id: &str,
) -> Result<Option<serde_json::Value>, actors::StoreError> {
    if let Some(rec) = state.errors.find(id).await? {
        return Ok(Some(serde_json::to_value(rec).unwrap_or_default()));
    }
    Ok(state.registry.list().into_iter().find_map(|h| {
        let r = h.record();
        r.last_error.filter(|e| e.tracking_id == id).map(|e| {
            serde_json::json!({
                "trackingId": e.tracking_id,
                "time": e.at,
                "status": null,
                "endpoint": "background (the tenant's last error)",
                "tenant": r.tenant_id,
                "reason": "tenant_error",
                "description": e.description,
            })
        })
    }))
}

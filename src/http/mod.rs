//! The HTTP edge: routes, size limits and the mapping of outcomes to status codes. Handlers
//! read requests, call engine handles (`Registry`, `TenantHandle`, `Ingest`, `Onboarding`,
//! `console::Sessions`, `JwtVerifier`, metrics) and render what they answer; they never talk
//! to Redis or Webex directly (`tests/it/walls.rs` checks it).
pub mod actions;
pub mod activation;
pub mod admin;
pub mod body;
pub mod console;
pub mod consumers;
pub mod devices;
pub mod error;
pub mod html;
mod probes;
pub mod tls;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::web;
use actors::auth::JwtVerifier;
use actors::config::Config;
use actors::ingest::Ingest;
use actors::registry::Registry;
use actors::supervisor::TenantHandle;
use actors::telemetry::Metrics;

pub use error::ApiError;

/// What every handler can reach. Built once, before `HttpServer::new`, and shared by workers.
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub verifier: Arc<JwtVerifier>,
    /// The webhook path of the ingest pipeline.
    pub ingest: Ingest<Registry>,
    /// Cleared first on shutdown so the readiness probe sends traffic elsewhere.
    pub accepting: AtomicBool,
    /// Every error answered with a trackingId, findable by it (`GET /admin/errors/<id>`).
    pub errors: Arc<actors::support::ErrorLog>,
    /// Wrong admin tokens per client address (see [`admin::Throttle`]).
    pub throttle: admin::Throttle,
    /// Invitations, pending activations, the setup page's code, the operator's decision.
    pub onboarding: actors::onboarding::Onboarding,
    /// The console's sessions (kept in Redis, so that signing out holds on every replica).
    pub sessions: actors::console::Sessions,
    /// Consumer credentials: Redis ACL users that read one organization.
    pub consumers: actors::consumers::Consumers,
}

impl AppState {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }
}

/// Client address for the per-address limit: the TCP peer, or behind a trusted proxy
/// (`server.trusted_proxies`) the client it names (see [`forwarded_client`]).
pub fn client_addr(state: &AppState, req: &actix_web::HttpRequest) -> String {
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else {
        return "unknown".into();
    };
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    forwarded_client(peer, &forwarded, &state.config.server.trusted_proxy_nets()).to_string()
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy; then the nearest
/// address of `X-Forwarded-For` (read from the right, as each proxy appends the address it
/// saw) that is not a trusted proxy. Entries left of it are the client's to write, so they are
/// never believed; an unreadable entry ends the walk at the last address read.
pub(crate) fn forwarded_client(
    peer: std::net::IpAddr,
    forwarded: &[&str],
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer;
    let hops = forwarded.iter().flat_map(|v| v.split(',')).rev();
    for hop in hops {
        if !is_trusted(&client) {
            break;
        }
        let hop = hop.trim();
        let Some(ip) = hop
            .parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        client = ip;
    }
    client
}

/// The tenant a route names (loaded from Redis if another replica just created it), or 404.
pub async fn find_tenant(state: &AppState, id: &str) -> Result<TenantHandle, ApiError> {
    match state.registry.lookup(id).await {
        Ok(Some(h)) => Ok(h),
        Ok(None) => Err(ApiError::not_found(&format!("tenant {id}"))),
        Err(e) => Err(ApiError::unavailable(&format!(
            "could not look the tenant up: {e}"
        ))),
    }
}

/// The tenant a per-tenant route names: 404 when unknown, 410 once deprovisioned.
pub async fn live_tenant(state: &AppState, id: &str) -> Result<TenantHandle, ApiError> {
    let h = find_tenant(state, id).await?;
    if h.shared.is_deprovisioned() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::GONE,
            "gone",
            "tenant deprovisioned",
        ));
    }
    Ok(h)
}

/// One listener's app: the shared state, the body limit, `routes`, and the error JSON for
/// any other path.
pub fn mount(
    cfg: &mut web::ServiceConfig,
    state: web::Data<AppState>,
    max_body: usize,
    routes: fn(&mut web::ServiceConfig),
) {
    cfg.app_data(state)
        .app_data(web::PayloadConfig::new(max_body))
        .configure(routes)
        .default_service(web::to(not_found));
}

/// `X-Content-Type-Options: nosniff` on every answer: no browser takes an error JSON or a page
/// for something else.
pub fn nosniff() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new().add(("X-Content-Type-Options", "nosniff"))
}

/// Records every error answer (an [`ApiError`] leaves its details in the response's
/// extensions) in the support log, off the request path.
pub async fn record_errors(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let res = next.call(req).await?;
    if let Some(info) = res.response().extensions().get::<error::Answered>()
        && let Some(state) = res.request().app_data::<web::Data<AppState>>()
    {
        let path = res.request().path();
        let tenant = tenant_of(path);
        let known = tenant.is_some_and(|id| state.registry.get(id).is_some());
        let class = actors::support::ErrorClass::of(res.status().as_u16(), known);
        state.errors.record(
            actors::support::ErrorRecord {
                tracking_id: info.tracking_id.to_string(),
                time: chrono::Utc::now(),
                status: res.status().as_u16(),
                endpoint: format!("{} {}", res.request().method(), truncate(path, 200)),
                tenant: tenant.map(str::to_string),
                reason: info.reason.to_string(),
                description: truncate(&info.description, 300).to_string(),
            },
            class,
        );
    }
    Ok(res)
}

/// The tenant id a path names (`/tenants/<id>/…`, `/admin/tenants/<id>…`).
fn tenant_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/tenants/")
        .or_else(|| path.strip_prefix("/admin/tenants/"))?;
    let id = rest.split('/').next()?;
    (!id.is_empty() && id.len() <= 64).then_some(id)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Every route, on one listener.
pub fn routes(cfg: &mut web::ServiceConfig) {
    public_routes(cfg);
    admin_routes(cfg);
}

/// What faces the internet: the routes Webex and customers' admins call. The routes Webex
/// calls per tenant come first, as a static prefix with the rest of the path split by hand: a
/// `{tenant_id}` pattern is a regex match per request, and the webhook carries the load
/// (measured: matching it as the last pattern cost ~12 % of the engine's CPU under load, as the
/// first one ~10 %).
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/tenants").default_service(web::to(tenant_route)))
        .route("/provision", web::post().to(activation::provision))
        .route(
            "/setup/removed/{tenant_id}",
            web::get().to(actions::removed_page),
        )
        .route("/setup", web::get().to(activation::invitation_landing))
        .route("/setup/style.css", web::get().to(html::stylesheet))
        .route("/setup/{session}", web::get().to(activation::setup_page))
        .route("/setup/{session}", web::post().to(activation::setup_submit));
}

/// The operator's side: the admin API, metrics and probes (on `server.admin_bind` when set).
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(probes::healthz))
        .route("/readyz", web::get().to(probes::readyz))
        .route("/metrics", web::get().to(probes::metrics))
        .route("/openapi.json", web::get().to(openapi))
        .configure(console::routes)
        .route(
            "/admin/activations",
            web::post().to(activation::admin_activate),
        )
        .route("/admin/tenants", web::get().to(admin::list))
        .route("/admin/tenants/{tenant_id}", web::get().to(admin::get))
        .route(
            "/admin/tenants/{tenant_id}",
            web::patch().to(admin::patch_tenant),
        )
        .route(
            "/admin/tenants/{tenant_id}/devices",
            web::get().to(devices::list_devices),
        )
        .route(
            "/admin/tenants/{tenant_id}/workspaces",
            web::get().to(devices::list_workspaces),
        )
        .route(
            "/admin/tenants/{tenant_id}/inventory/sync",
            web::post().to(devices::sync),
        )
        .route(
            "/admin/tenants/{tenant_id}/devices/{device_id}/commands/{name}",
            web::post().to(devices::command),
        )
        .route(
            "/admin/tenants/{tenant_id}/devices/{device_id}/status",
            web::get().to(devices::status),
        )
        .route(
            "/admin/tenants/{tenant_id}/devices/{device_id}/configurations",
            web::get().to(devices::config_get),
        )
        .route(
            "/admin/tenants/{tenant_id}/devices/{device_id}/configurations",
            web::patch().to(devices::config_patch),
        )
        .route(
            "/admin/tenants/{tenant_id}/manifest-update",
            web::post().to(admin::manifest_update),
        )
        .route(
            "/admin/errors/{tracking_id}",
            web::get().to(admin::find_error),
        )
        .route(
            "/admin/invitations",
            web::post().to(activation::create_invitation),
        )
        .route(
            "/admin/invitations",
            web::get().to(activation::list_invitations),
        )
        .route(
            "/admin/tenants/{tenant_id}/webhook-secret/rotate",
            web::post().to(admin::rotate_webhook_secret),
        )
        .route(
            "/admin/tenants/{tenant_id}/consumers",
            web::post().to(consumers::grant),
        )
        .route(
            "/admin/tenants/{tenant_id}/consumers",
            web::get().to(consumers::list),
        )
        .route(
            "/admin/tenants/{tenant_id}/consumers/{name}",
            web::delete().to(consumers::revoke),
        );
}

/// The OpenAPI 3.1 document of every endpoint (docs/openapi.json, built in).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `GET /openapi.json`.
async fn openapi() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Any other path: the contract's error JSON.
async fn not_found(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    ApiError::not_found(req.path()).into()
}

/// `POST /tenants/<tenant_id>/webhook` and `POST /tenants/<tenant_id>/actions`.
async fn tenant_route(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> actix_web::HttpResponse {
    let rest = req.path().strip_prefix("/tenants/").unwrap_or_default();
    let post = req.method() == actix_web::http::Method::POST;
    match rest.split_once('/') {
        Some((id, "webhook")) if post && !id.is_empty() => {
            let id = id.to_string();
            webhook::receive(state, req, id, payload).await
        }
        Some((id, "actions")) if post && !id.is_empty() => {
            let id = id.to_string();
            match actions::receive(state, req, id, payload).await {
                Ok(r) => r,
                Err(e) => e.into(),
            }
        }
        _ => ApiError::not_found(req.path()).into(),
    }
}

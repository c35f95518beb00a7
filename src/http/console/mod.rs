//! The operator console at `/console/` (on the admin listener): server-rendered HTML, no
//! front-end build. Sign-in with the admin token gives an HttpOnly, SameSite=Strict session
//! cookie: an expiry and a nonce, signed with HMAC-SHA256 under a key derived from
//! `security.encryption_key` and the admin token (changing either signs everyone out), and
//! checked against its server-side record in Redis (`actors::console::Sessions`), so signing
//! out holds on every replica. Every form carries a CSRF token derived from the session. Pages: tenants (filters, search by org id, tenant id, name or trackingId; paged),
//! one tenant (record, lifecycle history, inventory counts, health check now, secret rotation,
//! manifest update request), invitations and pending activations (approve, reject), an error
//! found by its trackingId.
mod invitations;
mod overview;
mod pages;
mod session;

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::html::{esc, see_other};
use super::{ApiError, AppState};
use invitations::{create_invitation, decide_pending, invitations};
use pages::{error, tenant, tenant_action, tenants};
use session::{csrf, end_sessions, login, logout, page_session};

/// An error page of the console that the support log records like an error JSON (see
/// `super::record_errors`), with its `Retry-After` if it has one.
fn error_page(
    state: &AppState,
    e: ApiError,
    session: Option<&str>,
    title: &str,
    html: &str,
) -> HttpResponse {
    let mut resp = layout(
        e.status,
        title,
        session,
        state,
        &format!(
            "{html}<p>Reference: <code id=tracking>{}</code></p>",
            e.tracking_id
        ),
    );
    if let Some(secs) = e.retry_after {
        resp.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(secs),
        );
    }
    resp.extensions_mut().insert(super::error::Answered {
        tracking_id: e.tracking_id,
        reason: e.reason,
        description: e.description,
    });
    resp
}

/// The 503 page of a console request Redis could not serve.
fn unavailable(state: &AppState, e: &actors::StoreError) -> HttpResponse {
    error_page(
        state,
        ApiError::unavailable(&format!("console: storage unavailable: {e}")),
        None,
        "Try again shortly",
        "<p class=err>Storage is unavailable; nothing was changed. Try again in a moment.</p>",
    )
}

/// A console page with the navigation, and the session's CSRF token in its forms.
fn layout(
    status: StatusCode,
    title: &str,
    session: Option<&str>,
    state: &AppState,
    body: &str,
) -> HttpResponse {
    let nav = match session {
        Some(s) => format!(
            r#"<header class=bar><nav><span class=brand>xapi-stream</span><a href="/console/">Overview</a><a href="/console/tenants">Tenants</a><a href="/console/invitations">Invitations</a>
<form class=search method=get action="/console/tenants"><input name=q placeholder="org id, tenant id, name or trackingId" aria-label=search><button>Search</button></form>
<form method=post action="/console/logout"><input type=hidden name=csrf value="{c}"><button>Sign out</button></form>
<form method=post action="/console/sessions/end"><input type=hidden name=csrf value="{c}"><button title="Ends every console session, on every replica">Sign out everywhere</button></form></nav></header>"#,
            c = csrf(state, s)
        ),
        None => "<header class=bar><nav><span class=brand>xapi-stream</span></nav></header>".into(),
    };
    super::html::document(
        status,
        &format!("{title} · xapi-stream"),
        "/console/style.css",
        "",
        &nav,
        &format!("<h1>{}</h1>{body}", esc(title)),
    )
}

fn query(req: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

fn is_tracking_id(q: &str) -> bool {
    q.len() == 32 && q.bytes().all(|b| b.is_ascii_hexdigit())
}

fn notice(q: &HashMap<String, String>) -> String {
    match (q.get("done"), q.get("failed")) {
        (Some(d), _) => format!("<p class=ok id=notice>{}</p>", esc(d)),
        (_, Some(f)) => format!("<p class=err id=notice>{}</p>", esc(f)),
        _ => String::new(),
    }
}

/// A console page (GET): the request's session — else the sign-in page, or a 503 when Redis
/// cannot say — then `render` with it, all within [`within`]'s bound.
async fn page<F: std::future::Future<Output = HttpResponse>>(
    state: &AppState,
    req: &HttpRequest,
    render: impl FnOnce(String) -> F,
) -> HttpResponse {
    within(state, async {
        match page_session(state, req).await {
            Ok(s) => render(s).await,
            Err(resp) => resp,
        }
    })
    .await
}

/// A console page (GET) answers within `redis.command_timeout_ms`, whatever Redis does: a page
/// reads Redis several times, and each read alone may take that long in a stall. Past it, a
/// 503 page. (A POST is not cut short: its work — a decision, a rotation, a health check with
/// its own bound — must not stop half-way; its first step, the session check, is one bounded
/// Redis read, so in a stall it is answered after one timeout too.)
async fn within(
    state: &AppState,
    handler: impl std::future::Future<Output = HttpResponse>,
) -> HttpResponse {
    let budget = std::time::Duration::from_millis(state.config.redis.command_timeout_ms);
    match tokio::time::timeout(budget, handler).await {
        Ok(resp) => resp,
        Err(_) => {
            let what = "<p class=err>Storage is slow to answer. Try again in a moment.</p>";
            let e = ApiError::unavailable(&format!(
                "console: no answer within {} ms (redis.command_timeout_ms)",
                budget.as_millis()
            ));
            error_page(state, e, None, "Try again shortly", what)
        }
    }
}

/// The console's routes (on the admin listener); each page answers within [`within`]'s bound.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/console",
        web::get().to(|| async { see_other("/console/") }),
    )
    .route("/console/", web::get().to(overview::overview))
    .route("/console/tenants", web::get().to(tenants))
    .route("/console/style.css", web::get().to(super::html::stylesheet))
    .route("/console/login", web::post().to(login))
    .route("/console/logout", web::post().to(logout))
    .route("/console/sessions/end", web::post().to(end_sessions))
    .route("/console/tenants/{tenant_id}", web::get().to(tenant))
    .route(
        "/console/tenants/{tenant_id}/{action}",
        web::post().to(tenant_action),
    )
    .route("/console/errors/{tracking_id}", web::get().to(error))
    .route("/console/invitations", web::get().to(invitations))
    .route("/console/invitations", web::post().to(create_invitation))
    .route(
        "/console/pending/{session}/{decision}",
        web::post().to(decide_pending),
    );
}

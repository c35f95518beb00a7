//! Activation endpoints: `POST /provision` (Webex's HTTPS activation), the setup page an admin
//! completes it on, and `POST /admin/activations` (manual activation). Activation runs in the
//! background: these answer "started", the tenant then shows `completed` or `error`.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::auth::VerifyError;
use actors::protocol::jwt::{ActivationClaims, Expect, Verified};
use actors::registry::ActivateError;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, admin, body};

/// A pending HTTPS activation, stored sealed until its setup page is completed.
#[derive(Serialize, Deserialize)]
struct Pending {
    claims: ActivationClaims,
    /// Set once the admin completed the setup.
    tenant_id: Option<String>,
}

/// Verifies an activation JWT (counting any rejection) and maps failures to responses.
pub async fn verify_activation(
    state: &AppState,
    token: &str,
) -> Result<ActivationClaims, ApiError> {
    match state.verifier.verify(token, Expect::Activation).await {
        Ok(Verified::Activation(c)) => Ok(c),
        Ok(Verified::Action(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wrong_action",
            "an action JWT was sent where an activation is expected",
        )),
        Err(e) => Err(verify_error(e)),
    }
}

/// The response for a failed verification.
pub fn verify_error(e: VerifyError) -> ApiError {
    match e {
        VerifyError::Rejected(r) => {
            let status = StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let err = ApiError::new(status, r.reason(), r.to_string());
            if status == StatusCode::SERVICE_UNAVAILABLE {
                err.retry_after(5)
            } else {
                err
            }
        }
        VerifyError::StoreUnavailable(e) => ApiError::unavailable(&format!(
            "cannot record the JWT id: storage unavailable ({e})"
        )),
    }
}

fn activate_error(state: &AppState, e: ActivateError) -> ApiError {
    state.metrics.activation("error");
    match e {
        ActivateError::Store(e) if e.is_unavailable() => {
            ApiError::unavailable("storage unavailable; the activation was not started")
        }
        other => ApiError::internal(&format!("activation could not start: {other}")),
    }
}

fn rejected(state: &AppState, e: ApiError) -> ApiError {
    if e.status.is_client_error() {
        state.metrics.activation("rejected");
    }
    e
}

/// `POST /provision`: verify, keep the activation for the setup page (24 h), answer its URL.
/// With `activation.auto_complete` the activation starts at once.
pub async fn provision(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let jwt: body::JwtBody = body::json(&bytes).map_err(|e| rejected(&state, e))?;
    let claims = verify_activation(&state, &jwt.jwt)
        .await
        .map_err(|e| rejected(&state, e))?;
    let session = uuid::Uuid::new_v4().to_string();
    let mut pending = Pending {
        claims,
        tenant_id: None,
    };
    if state.config.activation.auto_complete {
        let (handle, _) = state
            .registry
            .activate(&pending.claims)
            .await
            .map_err(|e| activate_error(&state, e))?;
        pending.tenant_id = Some(handle.tenant_id().to_string());
    }
    store_pending(&state, &session, &pending).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "redirectUrl": format!("{}/setup/{session}", state.config.public_base())
    })))
}

async fn store_pending(state: &AppState, session: &str, p: &Pending) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(p).expect("pending activation serializes");
    state
        .registry
        .put_pending(session, &bytes, state.config.activation.pending_ttl_secs)
        .await
        .map_err(|e| {
            if e.is_unavailable() {
                ApiError::unavailable("storage unavailable; activation not stored")
            } else {
                ApiError::internal(&format!("activation not stored: {e}"))
            }
        })
}

async fn load_pending(state: &AppState, session: &str) -> Result<Pending, HttpResponse> {
    match state.registry.get_pending(session).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|_| {
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Activation unreadable",
                "<p>This activation cannot be read. Ask Webex to activate again.</p>",
            )
        }),
        Ok(None) => Err(page(
            StatusCode::NOT_FOUND,
            "Activation not found",
            "<p>This activation link is unknown or expired (links are kept 24 hours). Activate the integration again in Control Hub.</p>",
        )),
        Err(e) => {
            let err = ApiError::unavailable(&format!("storage unavailable: {e}"));
            Err(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                &format!(
                    "<p>Storage is unavailable. Reference: <code>{}</code></p>",
                    err.tracking_id
                ),
            ))
        }
    }
}

/// `GET /setup/<session>`: what is being activated, its state, and the form to complete it.
pub async fn setup_page(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let session = path.into_inner();
    let pending = match load_pending(&state, &session).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let c = &pending.claims;
    let (state_text, error) = match pending
        .tenant_id
        .as_deref()
        .and_then(|id| state.registry.get(id))
    {
        Some(h) => {
            let r = h.record();
            (
                r.provisioning_state.as_str().to_string(),
                r.last_error
                    .map(|e| {
                        format!(
                            "<p class=err>Last error: {} (trackingId <code>{}</code>)</p>",
                            esc(&e.description),
                            e.tracking_id
                        )
                    })
                    .unwrap_or_default(),
            )
        }
        None => ("awaiting confirmation".to_string(), String::new()),
    };
    let form = if pending.tenant_id.is_none() {
        format!(
            r#"<form method="post" action="/setup/{s}">
<label>Operator admin token <input type="password" name="admin_token" autocomplete="off" required></label>
<button type="submit">Complete activation</button></form>"#,
            s = esc(&session)
        )
    } else {
        "<p>Activation started. Reload this page to follow its state.</p>".to_string()
    };
    let scopes: Vec<String> = c
        .scopes_list()
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", esc(s)))
        .collect();
    page(
        StatusCode::OK,
        "Activate xapi-stream",
        &format!(
            "<dl><dt>Organization</dt><dd>{org}</dd><dt>Region</dt><dd>{region}</dd>\
<dt>State</dt><dd id=state>{state_text}</dd><dt>Scopes</dt><dd><ul>{scopes}</ul></dd></dl>{error}{form}",
            org = esc(&c.org_name),
            region = esc(&c.region),
            scopes = scopes.join(""),
        ),
    )
}

#[derive(Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    admin_token: String,
}

/// `POST /setup/<session>`: the admin confirms; the activation starts.
pub async fn setup_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<SetupForm>>,
) -> HttpResponse {
    let session = path.into_inner();
    let presented = form
        .map(|f| f.into_inner().admin_token)
        .filter(|t| !t.is_empty())
        .or_else(|| admin::bearer(&req).map(str::to_string));
    if !admin::token_ok(&state, presented.as_deref()) {
        let e = ApiError::unauthorized("setup form: wrong or missing admin token");
        return page(
            StatusCode::UNAUTHORIZED,
            "Not authorized",
            &format!(
                "<p>The admin token is wrong or missing. Nothing was changed. Reference: <code>{}</code></p>",
                e.tracking_id
            ),
        );
    }
    let mut pending = match load_pending(&state, &session).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    if pending.tenant_id.is_none() {
        match state.registry.activate(&pending.claims).await {
            Ok((h, _)) => pending.tenant_id = Some(h.tenant_id().to_string()),
            Err(e) => {
                let e = activate_error(&state, e);
                return page(
                    e.status,
                    "Activation failed",
                    &format!(
                        "<p>{}. Reference: <code>{}</code></p>",
                        esc(&e.description),
                        e.tracking_id
                    ),
                );
            }
        }
        if let Err(e) = store_pending(&state, &session, &pending).await {
            tracing::warn!(trackingId = %e.tracking_id, "setup state not stored; activation continues");
        }
    }
    HttpResponse::SeeOther()
        .insert_header(("Location", format!("/setup/{session}")))
        .finish()
}

/// `POST /admin/activations`: manual activation with the JWT an admin copied from Control Hub.
pub async fn admin_activate(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin::authorize(&state, &req)?;
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let jwt: body::JwtBody = body::json(&bytes).map_err(|e| rejected(&state, e))?;
    let claims = verify_activation(&state, &jwt.jwt)
        .await
        .map_err(|e| rejected(&state, e))?;
    let (_, started) = state
        .registry
        .activate(&claims)
        .await
        .map_err(|e| activate_error(&state, e))?;
    // The tenant as the activation started; it moves on to completed/error in the background.
    Ok(HttpResponse::Accepted().json(actors::tenant::tenant_json(&started, &Default::default())))
}

/// A small, self-contained HTML page.
pub fn page(status: StatusCode, title: &str, body_html: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"))
        .body(format!(
            "<!doctype html><html><head><meta charset=utf-8><title>{t}</title>\
<style>body{{font-family:sans-serif;max-width:40em;margin:3em auto}}dt{{font-weight:bold}}.err{{color:#a00}}</style>\
</head><body><h1>{t}</h1>{body_html}</body></html>",
            t = esc(title)
        ))
}

/// HTML escaping for text from JWTs and records.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

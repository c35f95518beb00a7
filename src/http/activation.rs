//! Activation endpoints: `POST /provision` (Webex's HTTPS activation), the setup page an admin
//! completes it on, and `POST /admin/activations` (manual activation). Activation runs in the
//! background: these answer "started", the tenant then shows `completed` or `error`.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::auth::{Claimed, VerifyError};
use actors::onboarding::{Pending, PendingError, SubmitError, Submitted};
use actors::protocol::jwt::{ActivationClaims, Expect, Verified};
use actors::registry::ActivateError;
use serde::Deserialize;

use super::html::{esc, page};
use super::{ApiError, AppState, admin, body, client_addr};

/// Verifies an activation JWT (counting any rejection) and claims its jti: the token counts
/// as used only once [`confirm`] follows the work it starts. An earlier attempt with the same
/// token that was answered 503 is resumed (`Claimed::resumed`); one still running holds the
/// claim for [`claim_hold`].
pub async fn claim_activation(
    state: &AppState,
    token: &str,
) -> Result<(ActivationClaims, Claimed), ApiError> {
    let claimed = state
        .verifier
        .verify_claim(token, Expect::Activation, claim_hold(state))
        .await
        .map_err(verify_error)?;
    match &claimed.verified {
        Verified::Activation(c) => Ok((c.clone(), claimed)),
        Verified::Action(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wrong_action",
            "an action JWT was sent where an activation is expected",
        )),
    }
}

/// Marks the activation token used once its work took effect; 503 otherwise (its retry with
/// the same token resumes and finds that work).
pub async fn confirm(state: &AppState, claimed: &Claimed) -> Result<(), ApiError> {
    state.verifier.commit(claimed).await.map_err(|e| {
        ApiError::unavailable(&format!(
            "activation stored but not confirmed ({e}); send the same JWT again"
        ))
    })
}

/// The tenant record an earlier attempt with this token (answered 503) activated, if its
/// activation took effect; `None` for a first attempt. 503 when Redis cannot say.
async fn earlier_activation(
    state: &AppState,
    claimed: &Claimed,
    claims: &ActivationClaims,
) -> Result<Option<actors::tenant::TenantRecord>, ApiError> {
    if !claimed.resumed {
        return Ok(None);
    }
    state.registry.activated_by(claims).await.map_err(|e| {
        ApiError::unavailable(&format!(
            "cannot tell whether the activation took effect: {e}"
        ))
    })
}

/// How long an activation token's claim holds off a second attempt with it: the time an
/// attempt's Redis work may take in a stall (a few bounded commands).
fn claim_hold(state: &AppState) -> std::time::Duration {
    std::time::Duration::from_millis(2 * state.config.redis.command_timeout_ms)
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
        VerifyError::InFlight(secs) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "in_flight",
            "an earlier attempt with this JWT may still be running; send it again shortly",
        )
        .retry_after(secs),
    }
}

/// The setup session of the activation a token starts: derived from its jti (keyed with
/// `security.encryption_key`, so it cannot be guessed from the token), so that a retry of a
/// `POST /provision` answered 503 finds what the first attempt stored.
fn pending_session_for(state: &AppState, jti: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(
        state.config.security.encryption_key.expose().as_bytes(),
    )
    .expect("any key length");
    m.update(b"xapi-stream pending session\0");
    m.update(jti.as_bytes());
    let bytes: [u8; 16] = m.finalize().into_bytes()[..16]
        .try_into()
        .expect("16 of 32 bytes");
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

pub fn activate_error(state: &AppState, e: ActivateError) -> ApiError {
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
    let jwt: body::JwtBody = body::object(&bytes).map_err(|e| rejected(&state, e))?;
    let (claims, claimed) = claim_activation(&state, &jwt.jwt)
        .await
        .map_err(|e| rejected(&state, e))?;
    let session = pending_session_for(&state, claimed.jti());
    let url = format!("{}/setup/{session}", state.config.public_base());
    // A retry after a 503: what the first attempt stored may be there (same session).
    let stored = claimed.resumed && matches!(state.onboarding.is_pending(&session).await, Ok(true));
    if !stored {
        let mut pending = Pending::new(claims);
        if state.config.activation.auto_complete {
            let tenant_id = match earlier_activation(&state, &claimed, &pending.claims).await? {
                Some(record) => record.tenant_id,
                None => {
                    let (handle, _) = state
                        .registry
                        .activate(&pending.claims, None)
                        .await
                        .map_err(|e| activate_error(&state, e))?;
                    handle.tenant_id().to_string()
                }
            };
            pending.tenant_id = Some(tenant_id);
        }
        store_pending(&state, &session, &pending).await?;
    }
    confirm(&state, &claimed).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "redirectUrl": url })))
}

pub async fn store_pending(state: &AppState, session: &str, p: &Pending) -> Result<(), ApiError> {
    state.onboarding.keep(session, p).await.map_err(|e| {
        if e.is_unavailable() {
            ApiError::unavailable("storage unavailable; activation not stored")
        } else {
            ApiError::internal(&format!("activation not stored: {e}"))
        }
    })
}

pub async fn load_pending(state: &AppState, session: &str) -> Result<Pending, HttpResponse> {
    state
        .onboarding
        .pending(session)
        .await
        .map_err(|e| pending_page(&e))
}

/// The page of a pending activation that cannot be shown or acted on.
fn pending_page(e: &PendingError) -> HttpResponse {
    match e {
        PendingError::Unreadable => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Activation unreadable",
            "<p>This activation cannot be read. Ask Webex to activate again.</p>",
        ),
        PendingError::NotFound => page(
            StatusCode::NOT_FOUND,
            "Activation not found",
            "<p>This activation link is unknown or expired (links are kept 24 hours). Activate the integration again in Control Hub.</p>",
        ),
        PendingError::Store(e) => {
            let err = ApiError::unavailable(&format!("storage unavailable: {e}"));
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                &format!(
                    "<p>Storage is unavailable. Reference: <code>{}</code></p>",
                    err.tracking_id
                ),
            )
        }
    }
}

/// The cookie the invitation link leaves, so the setup page Webex redirects to later knows the
/// code (HttpOnly, SameSite=Lax: sent on the redirect from Control Hub, a top-level GET).
const INVITATION_COOKIE: &str = "xapi_invitation";

/// `GET /setup?code=<code>`: the invitation link a partner sends a customer's admin. Explains
/// the next steps and keeps the code in a cookie for the setup page.
pub async fn invitation_landing(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let code =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("code").cloned())
            // Only what a code can hold (base32, dashes, spaces) reaches the page and the cookie.
            .filter(|c| {
                !c.trim().is_empty()
                    && c.len() <= 64
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == ' ')
            });
    let Some(code) = code else {
        return page(
            StatusCode::OK,
            "Connect your organization",
            "<p>To connect your Webex organization, ask your service provider for an invitation \
             link or code, then activate the integration in Control Hub.</p>",
        );
    };
    let mut resp = page(
        StatusCode::OK,
        "You are invited to connect your organization",
        &format!(
            "<ol><li>In <b>Control Hub</b>, open <b>Workspaces → Integrations</b> and activate the \
             integration your service provider named.</li><li>Control Hub brings you back to a page \
             of this service showing your organization, region and the access it asks for.</li>\
             <li>Confirm there with your invitation code: <code id=code>{}</code> (this browser \
             remembers it).</li></ol><p>The code works once and expires; it links your \
             organization to your service provider's customer record.</p>",
            esc(&code)
        ),
    );
    let secure = state.config.public_base().starts_with("https://");
    let cookie = actix_web::cookie::Cookie::build(INVITATION_COOKIE, code)
        .path("/setup")
        .http_only(true)
        .secure(secure)
        .same_site(actix_web::cookie::SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(state.config.activation.invitation_ttl_secs).unwrap_or(i64::MAX),
        ))
        .finish();
    let _ = resp.add_cookie(&cookie);
    resp
}

/// `GET /setup/<session>`: what is being activated, its state, and the form that completes it
/// with the customer's invitation code.
pub async fn setup_page(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
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
    let failures = state
        .onboarding
        .setup_failures(&session, &client_addr(&state, &req))
        .await;
    let form = if pending.rejected {
        "<p class=err id=rejected>Your service provider declined this activation. Nothing was \
         set up; ask them for an invitation, then activate the integration again.</p>"
            .to_string()
    } else if pending.tenant_id.is_some() {
        "<p>Activation started. Reload this page to follow its state.</p>".to_string()
    } else if failures >= state.config.activation.setup_max_attempts {
        "<p class=err id=locked>This activation is locked after too many wrong invitation codes. \
         Ask your service provider for help, or activate the integration again in Control Hub.</p>"
            .to_string()
    } else {
        let prefill = req
            .cookie(INVITATION_COOKIE)
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        format!(
            r#"<form method="post" action="/setup/{s}">
<label>Invitation code <input name="code" value="{v}" autocomplete="one-time-code" spellcheck="false" required></label>
<button type="submit">Complete activation</button></form>
<p>Your service provider gave you this code with your invitation. Completing the activation lets this
service receive the status and events of your devices within the scopes above, and tells Control
Hub that provisioning is complete.</p>"#,
            s = esc(&session),
            v = esc(&prefill)
        )
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
            "<dl><dt>Organization</dt><dd id=org>{org}</dd><dt>Region</dt><dd>{region}</dd>\
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
    code: String,
}

/// An error page that the support log records like an error JSON (see `super::record_errors`).
fn error_page(e: ApiError, title: &str, html: &str) -> HttpResponse {
    let mut resp = page(
        e.status,
        title,
        &format!(
            "{html}<p>Reference: <code id=tracking>{}</code></p>",
            e.tracking_id
        ),
    );
    resp.extensions_mut().insert(super::error::Answered {
        tracking_id: e.tracking_id,
        reason: e.reason,
        description: e.description,
    });
    resp
}

/// `POST /setup/<session>`: the customer's admin confirms with their invitation code; the
/// activation starts with the invitation's customer. A wrong, used or expired code: 401, nothing
/// changed; `activation.setup_max_attempts` of them lock the session (429).
pub async fn setup_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let session = path.into_inner();
    // A form too large or not a form is no attempt at a code: 413/400, nothing counted.
    let form: SetupForm = match body::form(&req, payload, body::SMALL_FORM).await {
        Ok(f) => f,
        Err(e) => {
            return error_page(
                e,
                "Not a setup form",
                "<p>That was not the setup form; nothing was changed and no attempt was counted.</p>",
            );
        }
    };
    let see_page = || {
        HttpResponse::SeeOther()
            .insert_header(("Location", format!("/setup/{session}")))
            .finish()
    };
    let addr = client_addr(&state, &req);
    match state
        .onboarding
        .submit_code(&session, &addr, &form.code)
        .await
    {
        Ok(Submitted::Settled | Submitted::Completed { .. }) => see_page(),
        Ok(Submitted::Locked) => error_page(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "setup_locked",
                "setup session locked after too many wrong invitation codes",
            ),
            "Activation locked",
            "<p>Too many wrong invitation codes were entered for this activation. Nothing was changed. \
             Activate the integration again in Control Hub, or ask your service provider for help.</p>",
        ),
        Ok(Submitted::Limited) => error_page(
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "setup_limited",
                "too many wrong invitation codes from this address",
            )
            .retry_after(3600),
            "Too many attempts",
            "<p>Too many wrong invitation codes came from your network. Nothing was changed. Try again in an hour.</p>",
        ),
        Ok(Submitted::Refused { why, left }) => {
            let e = ApiError::unauthorized(&format!("setup form: invitation code refused ({why})"));
            let html = if left == 0 {
                "<p>The invitation code is wrong, used or expired. Nothing was changed. This activation \
                 is now locked: activate the integration again in Control Hub, or ask your service \
                 provider for help.</p>"
                    .to_string()
            } else {
                format!(
                    "<p>The invitation code is wrong, used or expired. Nothing was changed. \
                     {left} attempt(s) left. <a href=\"/setup/{}\">Back</a></p>",
                    esc(&session)
                )
            };
            error_page(e, "Invitation code refused", &html)
        }
        Err(SubmitError::Pending(PendingError::Store(e))) => error_page(
            ApiError::unavailable(&format!("setup: storage unavailable: {e}")),
            "Try again shortly",
            "<p>Storage is unavailable; nothing was changed.</p>",
        ),
        Err(SubmitError::Pending(e)) => pending_page(&e),
        Err(SubmitError::Activation(e)) => {
            let e = activate_error(&state, e);
            let html = format!(
                "<p>{}. Your invitation code was not used.</p>",
                esc(&e.description)
            );
            error_page(e, "Activation failed", &html)
        }
    }
}

/// `POST /admin/invitations`: body `{"customer_id", "name"}` (and optionally `expires_in_secs`);
/// 201 with the one-time `code` and the `link` for the customer's admin. The code is shown this
/// once: only its digest is stored.
pub async fn create_invitation(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin::authorize(&state, &req)?;
    #[derive(Deserialize)]
    struct Body {
        customer_id: String,
        name: String,
        expires_in_secs: Option<u64>,
    }
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let b: Body = body::object(&bytes)?;
    let bad = |what: &str| ApiError::new(StatusCode::BAD_REQUEST, "malformed", what.to_string());
    let (id, name) = (b.customer_id.trim(), b.name.trim());
    if id.is_empty() || id.len() > 200 {
        return Err(bad("customer_id must be 1 to 200 characters"));
    }
    if name.is_empty() || name.len() > 200 {
        return Err(bad("name must be 1 to 200 characters"));
    }
    let max = state.config.activation.invitation_ttl_secs;
    let ttl = b.expires_in_secs.unwrap_or(max);
    if ttl < 60 || ttl > max {
        return Err(bad(&format!(
            "expires_in_secs must be between 60 and {max}"
        )));
    }
    let customer = actors::onboarding::Customer {
        id: id.to_string(),
        name: name.to_string(),
    };
    let (inv, code) = state
        .onboarding
        .invite(customer, std::time::Duration::from_secs(ttl))
        .await
        .map_err(|e| ApiError::unavailable(&format!("invitation not stored: {e}")))?;
    let link = format!("{}/setup?code={code}", state.config.public_base());
    Ok(HttpResponse::Created().json(serde_json::json!({
        "code": code,
        "link": link,
        "customer_id": inv.customer.id,
        "name": inv.customer.name,
        "created_at": inv.created_at,
        "expires_at": inv.expires_at,
    })))
}

/// `GET /admin/invitations`: the newest invitations (never their codes) and their state.
pub async fn list_invitations(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin::authorize(&state, &req)?;
    let list = invitations_json(&state, 500).await?;
    Ok(HttpResponse::Ok().json(list))
}

/// The newest `limit` invitations as JSON (`state`: open, used or expired).
pub async fn invitations_json(
    state: &AppState,
    limit: usize,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let list = state
        .onboarding
        .invitations(limit)
        .await
        .map_err(|e| ApiError::unavailable(&format!("invitations unavailable: {e}")))?;
    let now = chrono::Utc::now();
    Ok(list
        .into_iter()
        .map(|(inv, used)| {
            let st = match (&used, inv.expires_at <= now) {
                (Some(_), _) => "used",
                (None, true) => "expired",
                (None, false) => "open",
            };
            serde_json::json!({
                "customer_id": inv.customer.id,
                "name": inv.customer.name,
                "created_at": inv.created_at,
                "expires_at": inv.expires_at,
                "state": st,
                "used_at": used.as_ref().map(|u| u.used_at),
                "session": used.as_ref().map(|u| u.session.clone()),
            })
        })
        .collect())
}

/// `POST /admin/activations`: manual activation with the JWT an admin copied from Control Hub.
pub async fn admin_activate(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin::authorize(&state, &req)?;
    let bytes = body::read(&req, payload, state.config.server.max_body_bytes).await?;
    let jwt: body::JwtBody = body::object(&bytes).map_err(|e| rejected(&state, e))?;
    let (claims, claimed) = claim_activation(&state, &jwt.jwt)
        .await
        .map_err(|e| rejected(&state, e))?;
    // A retry after a 503: the first attempt's activation may have taken effect (and its
    // completion rotated the refresh token since); then it is not done again.
    let started = match earlier_activation(&state, &claimed, &claims).await? {
        Some(record) => record,
        None => {
            state
                .registry
                .activate(&claims, None)
                .await
                .map_err(|e| activate_error(&state, e))?
                .1
        }
    };
    confirm(&state, &claimed).await?;
    // The tenant as the activation started; it moves on to completed/error in the background.
    Ok(HttpResponse::Accepted().json(actors::tenant::tenant_json(
        &started,
        &Default::default(),
        &state.config.integration.app_id,
    )))
}

#[cfg(test)]
mod tests {
    use crate::http::forwarded_client;

    #[test]
    fn the_client_is_the_nearest_address_no_trusted_proxy_wrote() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let lb: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // No trusted proxies: the header is ignored.
        assert_eq!(
            forwarded_client(ip("10.1.1.1"), &["203.0.113.7"], &[]),
            ip("10.1.1.1")
        );
        // From a trusted proxy: the address it saw.
        assert_eq!(
            forwarded_client(ip("10.1.1.1"), &["203.0.113.7"], &lb),
            ip("203.0.113.7")
        );
        // A client-written entry left of the real one is not believed; a chain of trusted
        // proxies is walked through (values split over headers too).
        assert_eq!(
            forwarded_client(ip("10.1.1.1"), &["1.2.3.4, 198.51.100.9", "10.2.2.2"], &lb),
            ip("198.51.100.9")
        );
        // From an untrusted peer the header counts for nothing.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &["10.9.9.9"], &lb),
            ip("198.51.100.1")
        );
        // Ports and IPv6; garbage ends the walk at the last address read.
        assert_eq!(
            forwarded_client(ip("10.1.1.1"), &["203.0.113.7:4711"], &lb),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(ip("10.1.1.1"), &["2001:db8::1"], &lb),
            ip("2001:db8::1")
        );
        assert_eq!(
            forwarded_client(ip("10.1.1.1"), &["unknown"], &lb),
            ip("10.1.1.1")
        );
    }
}

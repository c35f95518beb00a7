//! Console sessions: the signed cookie, its server-side record (`actors::console::Sessions`),
//! CSRF tokens, sign-in and sign-out.
use actix_web::cookie::{Cookie, SameSite};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{error_page, layout, unavailable};
use crate::http::body;
use crate::http::html::see_other;
use crate::http::{ApiError, AppState, admin};

pub(super) const COOKIE: &str = "xapi_console";

/// A session lasts this long.
pub(super) const SESSION_SECS: i64 = 8 * 3600;

pub(super) type HmacSha256 = Hmac<Sha256>;

pub(super) fn mac(state: &AppState, purpose: &str, payload: &str) -> Vec<u8> {
    let mut m =
        HmacSha256::new_from_slice(state.config.security.encryption_key.expose().as_bytes())
            .expect("any key length");
    m.update(b"xapi-stream console\0");
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m.update(state.config.server.admin_token.expose().as_bytes());
    m.update(b"\0");
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new signed session: the cookie's value `<expiry>.<nonce>.<mac>` and the digest it is
/// stored under in Redis (see [`session`]).
pub(super) fn new_session(state: &AppState) -> (String, String) {
    let expiry = chrono::Utc::now().timestamp() + SESSION_SECS;
    let nonce: [u8; 16] = rand::random();
    let payload = format!("{expiry}.{}", b64(&nonce));
    let value = format!("{payload}.{}", b64(&mac(state, "session", &payload)));
    (value, stored_as(&payload))
}

/// What Redis keeps of a session: the SHA-256 of the cookie's signed part, never the cookie.
pub(super) fn stored_as(payload: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(payload.as_bytes()))
}

/// A request's session cookie, if its signature and expiry hold: its value and the digest the
/// session is stored under. Whether it is still open is Redis's to say ([`session`]).
pub(super) fn signed_session(state: &AppState, req: &HttpRequest) -> Option<(String, String)> {
    if state.config.server.admin_token.is_empty() {
        return None;
    }
    let c = req.cookie(COOKIE)?;
    let value = c.value();
    let (payload, sig) = value.rsplit_once('.')?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .ok()?;
    use subtle::ConstantTimeEq;
    if !bool::from(sig.ct_eq(&mac(state, "session", payload))) {
        return None;
    }
    let expiry: i64 = payload.split('.').next()?.parse().ok()?;
    (expiry > chrono::Utc::now().timestamp()).then(|| (value.to_string(), stored_as(payload)))
}

/// The open session of a request: `Ok(None)` without one (no cookie, a forged or expired one,
/// or one signed out); `Err` with a 503 page when Redis cannot say.
pub(super) async fn session(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Option<String>, HttpResponse> {
    let Some((value, digest)) = signed_session(state, req) else {
        return Ok(None);
    };
    match state.sessions.is_open(&digest).await {
        Ok(true) => Ok(Some(value)),
        Ok(false) => Ok(None),
        Err(e) => Err(unavailable(state, &e)),
    }
}

/// The session of a console page, or what to answer instead: the sign-in page, or a 503.
pub(super) async fn page_session(
    state: &AppState,
    req: &HttpRequest,
) -> Result<String, HttpResponse> {
    match session(state, req).await? {
        Some(s) => Ok(s),
        None => Err(sign_in(state, StatusCode::OK, "")),
    }
}

/// The CSRF token of a session (what every form of the console carries).
pub(super) fn csrf(state: &AppState, session: &str) -> String {
    b64(&mac(state, "csrf", session))
}

pub(super) fn csrf_ok(state: &AppState, session: &str, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let want = csrf(state, session);
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(want.as_bytes())))
}

pub(super) fn cookie(state: &AppState, value: String, max_age: i64) -> Cookie<'static> {
    Cookie::build(COOKIE, value)
        .path("/console")
        .http_only(true)
        .secure(state.config.public_base().starts_with("https://"))
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age))
        .finish()
}

/// The sign-in page (also what any console URL shows without a session).
pub(super) fn sign_in(state: &AppState, status: StatusCode, message: &str) -> HttpResponse {
    if state.config.server.admin_token.is_empty() {
        return layout(
            StatusCode::FORBIDDEN,
            "Console disabled",
            None,
            state,
            "<p>The console is disabled: server.admin_token is empty.</p>",
        );
    }
    layout(
        status,
        "Sign in",
        None,
        state,
        &format!(
            r#"{message}<form method=post action="/console/login"><label>Admin token <input type=password name=token autocomplete=current-password required></label> <button type=submit>Sign in</button></form>"#
        ),
    )
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /console/login`. A form too large or not a form is answered 413/400 and counts as no
/// attempt; a wrong token counts toward the address's limit (see `admin::Throttle`).
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let form: LoginForm = match body::form(&req, payload, body::SMALL_FORM).await {
        Ok(f) => f,
        Err(e) => {
            return error_page(
                &state,
                e,
                None,
                "Sign in",
                "<p class=err>That was not a sign-in form.</p>",
            );
        }
    };
    if let Err(e) = admin::check_token(&state, &req, Some(&form.token)) {
        let html = match e.status {
            StatusCode::TOO_MANY_REQUESTS => {
                "<p class=err>Too many wrong admin tokens from your address; try again later.</p>"
            }
            _ => "<p class=err>Wrong admin token.</p>",
        };
        let mut resp = error_page(&state, e, None, "Sign in", html);
        if state.config.server.admin_token.is_empty() {
            resp = sign_in(&state, StatusCode::FORBIDDEN, "");
        }
        return resp;
    }
    let (value, digest) = new_session(&state);
    if let Err(e) = state.sessions.open(&digest, SESSION_SECS as u64).await {
        return unavailable(&state, &e);
    }
    let mut resp = see_other("/console/");
    let _ = resp.add_cookie(&cookie(&state, value, SESSION_SECS));
    resp
}

#[derive(serde::Deserialize, Default)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub(super) customer_id: String,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) manifest: String,
    /// The transport a tenant is switched to (webhook, queue, both).
    #[serde(default)]
    pub(super) ingest: String,
    /// A checkbox: present ("on") when ticked.
    #[serde(default)]
    pub(super) commands: String,
}

/// The form of a console POST with its session and a checked CSRF token, or the answer to
/// give: 413/400 for a form too large or malformed, the sign-in page without a session, 403
/// for a missing or wrong CSRF token, 503 when Redis cannot say.
pub(super) async fn post_form(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(String, CsrfForm), HttpResponse> {
    let form: CsrfForm = body::form(req, payload, state.config.server.max_body_bytes)
        .await
        .map_err(|e| {
            error_page(
                state,
                e,
                None,
                "Refused",
                "<p class=err>Nothing was changed.</p>",
            )
        })?;
    let Some(s) = session(state, req).await? else {
        return Err(sign_in(
            state,
            StatusCode::UNAUTHORIZED,
            "<p class=err>Your session ended; sign in again.</p>",
        ));
    };
    if !csrf_ok(state, &s, Some(&form.csrf)) {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "console form without a valid CSRF token",
        );
        return Err(error_page(
            state,
            e,
            Some(&s),
            "Refused",
            "<p class=err>This form is stale or forged; nothing was changed.</p>",
        ));
    }
    Ok((s, form))
}

/// `POST /console/logout`: ends this session for every replica.
pub async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    if let Err(resp) = post_form(&state, &req, payload).await {
        return resp;
    }
    if let Some((_, digest)) = signed_session(&state, &req)
        && let Err(e) = state.sessions.close(&digest).await
    {
        return unavailable(&state, &e);
    }
    let mut resp = see_other("/console/");
    let _ = resp.add_cookie(&cookie(&state, String::new(), 0));
    resp
}

/// `POST /console/sessions/end`: ends every console session (this one too), on every replica.
pub async fn end_sessions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    if let Err(resp) = post_form(&state, &req, payload).await {
        return resp;
    }
    if let Err(e) = state.sessions.end_all().await {
        return unavailable(&state, &e);
    }
    tracing::warn!("console: every session ended by an operator");
    let mut resp = see_other("/console/");
    let _ = resp.add_cookie(&cookie(&state, String::new(), 0));
    resp
}

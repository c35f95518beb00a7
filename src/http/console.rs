//! The operator console at `/console/` (on the admin listener): server-rendered HTML, no
//! front-end build. Sign-in with the admin token gives an HttpOnly, SameSite=Strict session
//! cookie: an expiry and a nonce, signed with HMAC-SHA256 under a key derived from
//! `security.encryption_key` and the admin token (changing either signs everyone out), so any
//! replica checks it without shared state. Every form carries a CSRF token derived from the
//! session. Pages: tenants (filters, search by org id, tenant id, name or trackingId; paged),
//! one tenant (record, lifecycle history, inventory counts, health check now, secret rotation,
//! manifest update request), invitations and pending activations (approve, reject), an error
//! found by its trackingId.
use std::collections::HashMap;
use std::fmt::Write as _;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use hmac::{Hmac, Mac};

use sha2::Sha256;

use super::activation::{self, esc};
use super::{ApiError, AppState, admin, body};

const COOKIE: &str = "xapi_console";
/// A session lasts this long.
const SESSION_SECS: i64 = 8 * 3600;
/// Tenants per page.
const PAGE: usize = 50;
/// Lifecycle entries read to find one tenant's history.
const HISTORY_SCAN: usize = 5000;

type HmacSha256 = Hmac<Sha256>;

fn mac(state: &AppState, purpose: &str, payload: &str) -> Vec<u8> {
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

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new signed session: the cookie's value `<expiry>.<nonce>.<mac>` and the digest it is
/// stored under in Redis (see [`session`]).
fn new_session(state: &AppState) -> (String, String) {
    let expiry = chrono::Utc::now().timestamp() + SESSION_SECS;
    let nonce: [u8; 16] = rand::random();
    let payload = format!("{expiry}.{}", b64(&nonce));
    let value = format!("{payload}.{}", b64(&mac(state, "session", &payload)));
    (value, stored_as(&payload))
}

/// What Redis keeps of a session: the SHA-256 of the cookie's signed part, never the cookie.
fn stored_as(payload: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(payload.as_bytes()))
}

/// A request's session cookie, if its signature and expiry hold: its value and the digest the
/// session is stored under. Whether it is still open is Redis's to say ([`session`]).
fn signed_session(state: &AppState, req: &HttpRequest) -> Option<(String, String)> {
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
async fn session(state: &AppState, req: &HttpRequest) -> Result<Option<String>, HttpResponse> {
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
async fn page_session(state: &AppState, req: &HttpRequest) -> Result<String, HttpResponse> {
    match session(state, req).await? {
        Some(s) => Ok(s),
        None => Err(sign_in(state, StatusCode::OK, "")),
    }
}

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

/// The CSRF token of a session (what every form of the console carries).
fn csrf(state: &AppState, session: &str) -> String {
    b64(&mac(state, "csrf", session))
}

fn csrf_ok(state: &AppState, session: &str, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let want = csrf(state, session);
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(want.as_bytes())))
}

fn cookie(state: &AppState, value: String, max_age: i64) -> Cookie<'static> {
    Cookie::build(COOKIE, value)
        .path("/console")
        .http_only(true)
        .secure(state.config.public_base().starts_with("https://"))
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age))
        .finish()
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
            r#"<nav><a href="/console/">Tenants</a> · <a href="/console/invitations">Invitations &amp; pending activations</a>
<form class=inline method=get action="/console/"><input name=q placeholder="org id, tenant id, name or trackingId" size=40 aria-label=search> <button>Search</button></form>
<form class=inline method=post action="/console/logout"><input type=hidden name=csrf value="{c}"><button>Sign out</button></form>
<form class=inline method=post action="/console/sessions/end"><input type=hidden name=csrf value="{c}"><button title="Ends every console session, on every replica">Sign out everywhere</button></form></nav>"#,
            c = csrf(state, s)
        ),
        None => String::new(),
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .body(format!(
            "<!doctype html><html><head><meta charset=utf-8><title>{t} · xapi-stream</title><style>\
body{{font-family:sans-serif;margin:1.5em 2em}}table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}}\
.inline{{display:inline;margin-left:1em}}.err{{color:#a00}}.ok{{color:#070}}code{{background:#f4f4f4}}nav{{margin-bottom:1em}}dt{{font-weight:bold}}\
</style></head><body>{nav}<h1>{t}</h1>{body}</body></html>",
            t = esc(title)
        ))
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", to.to_string()))
        .finish()
}

/// The sign-in page (also what any console URL shows without a session).
fn sign_in(state: &AppState, status: StatusCode, message: &str) -> HttpResponse {
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
    if let Err(e) = state
        .sessions
        .open(&digest, SESSION_SECS as u64)
        .await
    {
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
    customer_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    manifest: String,
}

/// The form of a console POST with its session and a checked CSRF token, or the answer to
/// give: 413/400 for a form too large or malformed, the sign-in page without a session, 403
/// for a missing or wrong CSRF token, 503 when Redis cannot say.
async fn post_form(
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

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `GET /console/`: the tenants, filtered (`state`, `tokens`, `q`) and paged (`page`). A `q`
/// that is a trackingId opens that error.
pub async fn tenants(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let bound = state.clone();
    within(&bound, async move {
    let s = match page_session(&state, &req).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let q = query(&req);
    let search = q.get("q").map(|v| v.trim().to_string()).unwrap_or_default();
    if is_tracking_id(&search) {
        return see_other(&format!("/console/errors/{}", search.to_ascii_lowercase()));
    }
    let want_state = q.get("state").cloned().unwrap_or_default();
    let want_tokens = q.get("tokens").cloned().unwrap_or_default();
    let needle = search.to_lowercase();
    let mut rows: Vec<_> = state
        .registry
        .list()
        .into_iter()
        .map(|h| (h.record(), h))
        .filter(|(r, _)| want_state.is_empty() || r.provisioning_state.as_str() == want_state)
        .filter(|(r, _)| want_tokens.is_empty() || r.tokens_state.as_str() == want_tokens)
        .filter(|(r, _)| {
            needle.is_empty()
                || r.org_id.to_lowercase().contains(&needle)
                || r.tenant_id.to_lowercase().contains(&needle)
                || r.org_name.to_lowercase().contains(&needle)
                || r.customer.as_ref().is_some_and(|c| {
                    c.id.to_lowercase().contains(&needle) || c.name.to_lowercase().contains(&needle)
                })
        })
        .collect();
    rows.sort_by(|a, b| {
        a.0.org_name
            .cmp(&b.0.org_name)
            .then(a.0.tenant_id.cmp(&b.0.tenant_id))
    });
    let total = rows.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let mut html = notice(&q);
    let select = |name: &str, current: &str, options: &[&str]| {
        let mut out = format!("<select name={name}><option value=\"\">any {name}</option>");
        for o in options {
            let sel = if *o == current { " selected" } else { "" };
            let _ = write!(out, "<option{sel}>{o}</option>");
        }
        out + "</select>"
    };
    let _ = write!(
        html,
        r#"<form method=get action="/console/">{} {} <input name=q value="{}" placeholder="search" aria-label=filter> <button>Filter</button></form>
<p id=count>{total} tenant(s); page {page} of {pages}.</p>
<table id=tenants><tr><th>Organization</th><th>Org id</th><th>Tenant</th><th>Customer</th><th>Region</th><th>Provisioning</th><th>Tokens</th><th>Ingest</th><th>Msgs/min</th><th>Last error</th></tr>"#,
        select(
            "state",
            &want_state,
            &["provisioning", "completed", "error", "deprovisioned"]
        ),
        select("tokens", &want_tokens, &["valid", "invalid", "unknown"]),
        esc(&search)
    );
    for (r, h) in rows.iter().skip((page - 1) * PAGE).take(PAGE) {
        let err = r
            .last_error
            .as_ref()
            .map(|e| {
                format!(
                    "<span class=err>{}</span> <a href=\"/console/errors/{}\"><code>{}</code></a>",
                    esc(&truncate(&e.description, 80)),
                    e.tracking_id,
                    e.tracking_id
                )
            })
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td><a href=\"/console/tenants/{id}\">{name}</a></td><td><code>{org}</code></td><td><code>{id}</code></td><td>{cust}</td><td>{region}</td><td>{ps}</td><td>{ts}</td><td>{ingest}</td><td>{rate}</td><td>{err}</td></tr>",
            id = esc(&r.tenant_id),
            name = esc(&r.org_name),
            org = esc(&truncate(&r.org_id, 40)),
            cust = r
                .customer
                .as_ref()
                .map(|c| format!("{} ({})", esc(&c.name), esc(&c.id)))
                .unwrap_or_default(),
            region = esc(&r.region),
            ps = r.provisioning_state.as_str(),
            ts = r.tokens_state.as_str(),
            ingest = ingest_str(r.ingest),
            rate = h.shared.messages_last_minute(),
        );
    }
    html.push_str("</table>");
    let link = |p: usize| {
        format!(
            "/console/?state={}&tokens={}&q={}&page={p}",
            enc(&want_state),
            enc(&want_tokens),
            enc(&search)
        )
    };
    if page > 1 {
        let _ = write!(
            html,
            "<a href=\"{}\" id=prev>← previous</a> ",
            esc(&link(page - 1))
        );
    }
    if page < pages {
        let _ = write!(
            html,
            "<a href=\"{}\" id=next>next →</a>",
            esc(&link(page + 1))
        );
    }
    html.push_str("<p><small>Msgs/min: messages this replica wrote for the tenant in the last full minute.</small></p>");
    layout(StatusCode::OK, "Tenants", Some(&s), &state, &html)
    })
    .await
}

fn ingest_str(m: actors::config::IngestMode) -> &'static str {
    match (m.webhook(), m.queue()) {
        (true, true) => "both",
        (true, false) => "webhook",
        _ => "queue",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

/// `GET /console/tenants/<id>`.
pub async fn tenant(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let bound = state.clone();
    within(&bound, async move {
    let s = match page_session(&state, &req).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let id = path.into_inner();
    let Some(h) = state.registry.get(&id) else {
        return layout(
            StatusCode::NOT_FOUND,
            "Tenant not found",
            Some(&s),
            &state,
            &format!("<p>No tenant <code>{}</code>.</p>", esc(&id)),
        );
    };
    let q = query(&req);
    let json = h.to_json().await;
    let r = h.record();
    let inventory = match state.registry.inventory_counts(&r.org_id).await {
        Ok((d, w)) => format!("{d} devices, {w} workspaces"),
        Err(e) => format!("unavailable ({})", esc(&e.to_string())),
    };
    let history = match state.registry.history(&id, HISTORY_SCAN).await {
        Ok(entries) => {
            let mut t = String::from(
                "<table id=history><tr><th>Time</th><th>Event</th><th>Reason</th></tr>",
            );
            for e in entries.iter().take(50) {
                let f = |k: &str| esc(e.get(k).map(String::as_str).unwrap_or(""));
                let _ = write!(
                    t,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    f("ts"),
                    f("event"),
                    f("reason")
                );
            }
            t + "</table>"
        }
        Err(e) => format!(
            "<p class=err>History unavailable: {}</p>",
            esc(&e.to_string())
        ),
    };
    let err = r
        .last_error
        .as_ref()
        .map(|e| format!("<p class=err id=last_error>{} — {} — <a href=\"/console/errors/{t}\"><code>{t}</code></a></p>", e.at, esc(&e.description), t = e.tracking_id))
        .unwrap_or_else(|| "<p>No error.</p>".into());
    let received = &json["messages_received"];
    let token = csrf(&state, &s);
    let action = |path: &str, label: &str, extra: &str| {
        format!(
            r#"<form method=post action="/console/tenants/{id}/{path}">{extra}<input type=hidden name=csrf value="{token}"><button>{label}</button></form>"#,
            id = esc(&id)
        )
    };
    let html = format!(
        r#"{notice}<dl id=record><dt>Organization</dt><dd>{name} (<code>{org}</code>)</dd><dt>Tenant</dt><dd><code>{id}</code></dd>
<dt>Customer</dt><dd>{cust}</dd><dt>Region</dt><dd>{region}</dd><dt>Provisioning</dt><dd id=provisioning>{ps}</dd><dt>Tokens</dt><dd>{ts}</dd>
<dt>Ingest</dt><dd>{ingest}</dd><dt>Scopes</dt><dd>{scopes}</dd><dt>Manifest version</dt><dd>{mv}</dd><dt>Messages</dt><dd>{total} received ({wh} webhook, {qu} queue); {rate} in the last minute on this replica</dd>
<dt>Inventory</dt><dd id=inventory>{inventory}</dd><dt>Created</dt><dd>{created}</dd></dl>
<h2>Last error</h2>{err}
<h2>Actions</h2>{health}{rotate}
<h3>Request a manifest update</h3>{manifest}
<h2>Lifecycle</h2>{history}"#,
        notice = notice(&q),
        name = esc(&r.org_name),
        org = esc(&r.org_id),
        id = esc(&id),
        cust = r
            .customer
            .as_ref()
            .map(|c| format!("{} ({})", esc(&c.name), esc(&c.id)))
            .unwrap_or_else(|| "—".into()),
        region = esc(&r.region),
        ps = r.provisioning_state.as_str(),
        ts = r.tokens_state.as_str(),
        ingest = ingest_str(r.ingest),
        scopes = esc(&r.scopes.join(" ")),
        mv = esc(r.manifest_version.as_deref().unwrap_or("—")),
        total = received["total"],
        wh = received["webhook"],
        qu = received["queue"],
        rate = h.shared.messages_last_minute(),
        created = r.created_at,
        health = action("health", "Health check now", ""),
        rotate = action("rotate", "Rotate webhook secret", ""),
        manifest = action(
            "manifest-update",
            "Send update request",
            "<textarea name=manifest rows=6 cols=80 placeholder=\"the new manifest (JSON)\" required></textarea><br>"
        ),
    );
    layout(
        StatusCode::OK,
        &format!("Tenant {}", r.org_name),
        Some(&s),
        &state,
        &html,
    )
    })
    .await
}

/// `POST /console/tenants/<id>/<action>`: health, rotate, manifest-update.
pub async fn tenant_action(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match post_form(&state, &req, payload).await {
        Ok((_, form)) => form,
        Err(resp) => return resp,
    };
    let (id, action) = path.into_inner();
    let Some(h) = state.registry.get(&id) else {
        return see_other("/console/?failed=unknown+tenant");
    };
    let back = |ok: bool, msg: String| {
        see_other(&format!(
            "/console/tenants/{}?{}={}",
            enc(&id),
            if ok { "done" } else { "failed" },
            enc(&msg)
        ))
    };
    match action.as_str() {
        "health" => match actors::actions::health_check(&h.shared).await {
            actors::actions::ActionOutcome::Health {
                operational_state,
                tokens_state,
            } => back(
                true,
                format!("Health check: {operational_state}, tokens {tokens_state}"),
            ),
            _ => back(false, "health check gave no answer".into()),
        },
        "rotate" => match actors::tenant::rotation::rotate(
            &h.shared,
            actors::tenant::rotation::Why::Operator,
        )
        .await
        {
            Ok(r) => back(
                true,
                format!(
                    "Webhook secret rotated; the previous one is accepted until {}",
                    r.previous_valid_until
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "now".into())
                ),
            ),
            Err(e) => back(false, format!("Not rotated: {e}")),
        },
        "manifest-update" => {
            let manifest: serde_json::Value = match serde_json::from_str(&form.manifest) {
                Ok(v) => v,
                Err(e) => return back(false, format!("The manifest is not JSON: {e}")),
            };
            let problems = actors::protocol::manifest::check(&manifest);
            if !problems.is_empty() {
                let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                return back(false, format!("Invalid manifest: {}", list.join("; ")));
            }
            match actors::actions::request_manifest_update(&h.shared, manifest).await {
                Ok(_) => back(
                    true,
                    "Update request sent: the customer's admin can approve the new manifest".into(),
                ),
                Err(e) => back(false, format!("Webex refused the update request: {e}")),
            }
        }
        _ => see_other(&format!("/console/tenants/{}", enc(&id))),
    }
}

/// `GET /console/errors/<trackingId>`.
pub async fn error(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let bound = state.clone();
    within(&bound, async move {
    let s = match page_session(&state, &req).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let id = path.into_inner().to_ascii_lowercase();
    if !is_tracking_id(&id) {
        return layout(
            StatusCode::BAD_REQUEST,
            "Not a trackingId",
            Some(&s),
            &state,
            "<p>A trackingId is 32 hex digits.</p>",
        );
    }
    let found = match admin::lookup_error(&state, &id).await {
        Ok(found) => found,
        Err(e) => {
            return layout(
                StatusCode::SERVICE_UNAVAILABLE,
                "Support log unavailable",
                Some(&s),
                &state,
                &format!("<p class=err>{}</p>", esc(&e.to_string())),
            );
        }
    };
    let Some(e) = found else {
        return layout(
            StatusCode::NOT_FOUND,
            "trackingId not found",
            Some(&s),
            &state,
            &format!(
                "<p>No error with trackingId <code>{}</code> in the last {} s.</p>",
                esc(&id),
                state.config.support.errors_retention_secs
            ),
        );
    };
    let f = |k: &str| match &e[k] {
        serde_json::Value::String(v) => esc(v),
        serde_json::Value::Null => "—".into(),
        v => esc(&v.to_string()),
    };
    let tenant = match e["tenant"].as_str() {
        Some(t) => format!(
            "<a href=\"/console/tenants/{t}\" id=tenant>{t}</a>",
            t = esc(t)
        ),
        None => "—".into(),
    };
    let html = format!(
        "<dl id=error><dt>trackingId</dt><dd><code>{}</code></dd><dt>Time</dt><dd>{}</dd><dt>Endpoint</dt><dd>{}</dd><dt>Status</dt><dd>{}</dd><dt>Tenant</dt><dd>{tenant}</dd><dt>Reason</dt><dd id=reason>{}</dd><dt>Description</dt><dd id=description>{}</dd></dl>",
        f("trackingId"),
        f("time"),
        f("endpoint"),
        f("status"),
        f("reason"),
        f("description")
    );
    layout(StatusCode::OK, "Error", Some(&s), &state, &html)
    })
    .await
}

/// `GET /console/invitations`: invitations (and the form for a new one), pending activations.
pub async fn invitations(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let bound = state.clone();
    within(&bound, async move {
        let s = match page_session(&state, &req).await {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        let q = query(&req);
        render_invitations(&state, &s, &notice(&q)).await
    })
    .await
}

async fn render_invitations(state: &AppState, s: &str, top: &str) -> HttpResponse {
    let token = csrf(state, s);
    let mut html = format!(
        r#"{top}<h2>Invite a customer</h2><form method=post action="/console/invitations"><input type=hidden name=csrf value="{token}">
<label>Customer id <input name=customer_id required maxlength=200></label> <label>Name <input name=name required maxlength=200></label> <button>Create invitation</button></form>
<h2>Pending activations</h2>"#
    );
    match state.onboarding.pending_list(100).await {
        Ok(list) if list.is_empty() => html.push_str("<p id=pending>None.</p>"),
        Ok(list) => {
            html.push_str("<table id=pending><tr><th>Organization</th><th>Region</th><th>Scopes</th><th>State</th><th></th></tr>");
            for (session, p) in list {
                let st = if p.rejected {
                    "rejected".to_string()
                } else if let Some(t) = &p.tenant_id {
                    format!(
                        "activated: <a href=\"/console/tenants/{t}\">{t}</a>",
                        t = esc(t)
                    )
                } else {
                    "awaiting the customer's code".into()
                };
                let buttons = if p.rejected || p.tenant_id.is_some() {
                    String::new()
                } else {
                    format!(
                        r#"<form class=inline method=post action="/console/pending/{ss}/approve"><input type=hidden name=csrf value="{token}"><input name=customer_id placeholder="customer id (optional)" maxlength=200> <input name=name placeholder="customer name" maxlength=200> <button>Approve</button></form>
<form class=inline method=post action="/console/pending/{ss}/reject"><input type=hidden name=csrf value="{token}"><button>Reject</button></form>"#,
                        ss = esc(&session)
                    )
                };
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{st}</td><td>{buttons}</td></tr>",
                    esc(&p.claims.org_name),
                    esc(&p.claims.region),
                    esc(&p.claims.scopes_list().join(" "))
                );
            }
            html.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=err>Unavailable: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    html.push_str("<h2>Invitations</h2>");
    match activation::invitations_json(state, 200).await {
        Ok(list) => {
            html.push_str("<table id=invitations><tr><th>Customer</th><th>Name</th><th>State</th><th>Created</th><th>Expires</th><th>Used</th></tr>");
            for i in list {
                let f = |k: &str| esc(i[k].as_str().unwrap_or("—"));
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    f("customer_id"),
                    f("name"),
                    f("state"),
                    f("created_at"),
                    f("expires_at"),
                    f("used_at")
                );
            }
            html.push_str("</table>");
        }
        Err(e) => {
            let _ = write!(
                html,
                "<p class=err>Unavailable: {}</p>",
                esc(&e.description)
            );
        }
    }
    layout(
        StatusCode::OK,
        "Invitations & pending activations",
        Some(s),
        state,
        &html,
    )
}

/// `POST /console/invitations`: a new invitation; its code and link are shown once.
pub async fn create_invitation(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (s, form) = match post_form(&state, &req, payload).await {
        Ok(sf) => sf,
        Err(resp) => return resp,
    };
    let (id, name) = (form.customer_id.trim(), form.name.trim());
    if id.is_empty() || name.is_empty() || id.len() > 200 || name.len() > 200 {
        return see_other(
            "/console/invitations?failed=customer+id+and+name+are+1+to+200+characters",
        );
    }
    let customer = actors::onboarding::Customer {
        id: id.into(),
        name: name.into(),
    };
    let ttl = std::time::Duration::from_secs(state.config.activation.invitation_ttl_secs);
    match state.onboarding.invite(customer, ttl).await {
        Ok((inv, code)) => {
            let link = format!("{}/setup?code={code}", state.config.public_base());
            let top = format!(
                "<p class=ok id=created>Invitation for <b>{}</b> created, valid until {}. Send this link to the customer's Control Hub admin (shown once): <br><code id=link>{}</code><br>Code: <code id=code>{}</code></p>",
                esc(&inv.customer.name),
                inv.expires_at,
                esc(&link),
                esc(&code)
            );
            render_invitations(&state, &s, &top).await
        }
        Err(e) => see_other(&format!(
            "/console/invitations?failed={}",
            enc(&format!("Invitation not stored: {e}"))
        )),
    }
}

/// `POST /console/pending/<session>/approve|reject`: the operator decides a pending HTTPS
/// activation (approve: with an optional customer id and name).
pub async fn decide_pending(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let form = match post_form(&state, &req, payload).await {
        Ok((_, form)) => form,
        Err(resp) => return resp,
    };
    let (session, decision) = path.into_inner();
    use actors::onboarding::{DecideError, Decision, PendingError};
    let decision = match decision.as_str() {
        "reject" => Decision::Reject,
        "approve" => Decision::Approve {
            customer_id: form.customer_id,
            name: form.name,
        },
        _ => return see_other("/console/invitations"),
    };
    let rejecting = matches!(decision, Decision::Reject);
    // First decider wins: the customer may be entering their invitation code right now.
    let failed = |why: &str| see_other(&format!("/console/invitations?failed={}", enc(why)));
    match state.onboarding.decide(&session, decision).await {
        Ok(org) => {
            let msg = if rejecting {
                "Activation rejected".to_string()
            } else {
                format!("Activation of {org} approved")
            };
            see_other(&format!("/console/invitations?done={}", enc(&msg)))
        }
        Err(DecideError::Pending(PendingError::Store(e))) => {
            failed(&format!("storage unavailable: {e}"))
        }
        Err(DecideError::Pending(_)) => failed("unknown or expired activation"),
        Err(DecideError::AlreadyDecided) => failed("already decided"),
        Err(DecideError::Activation(e)) => {
            failed(&activation::activate_error(&state, e).to_string())
        }
    }
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
    .route("/console/", web::get().to(tenants))
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

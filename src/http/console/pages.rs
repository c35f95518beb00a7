//! The console's tenant pages: the list (filters, search, paging), one tenant (record,
//! history, inventory, actions), an error found by its trackingId.
use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::session::{csrf, post_form};
use super::{is_tracking_id, layout, notice, page, query};
use crate::http::html::{badge, enc, esc, see_other, truncate};
use crate::http::{AppState, admin};

/// Tenants per page.
pub(super) const PAGE: usize = 50;

/// Lifecycle entries read to find one tenant's history.
pub(super) const HISTORY_SCAN: usize = 5000;

/// `GET /console/`: the tenants, filtered (`state`, `tokens`, `q`) and paged (`page`). A `q`
/// that is a trackingId opens that error.
pub async fn tenants(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    page(&state, &req, |s| tenants_page(&state, &req, s)).await
}

async fn tenants_page(state: &AppState, req: &HttpRequest, s: String) -> HttpResponse {
    let q = query(req);
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
        r#"<form method=get action="/console/tenants">{} {} <input name=q value="{}" placeholder="search" aria-label=filter> <button>Filter</button></form>
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
            ps = badge(r.provisioning_state.as_str()),
            ts = badge(r.tokens_state.as_str()),
            ingest = ingest_str(r.ingest),
            rate = h.shared.messages_last_minute(),
        );
    }
    html.push_str("</table>");
    let link = |p: usize| {
        format!(
            "/console/tenants?state={}&tokens={}&q={}&page={p}",
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
    layout(StatusCode::OK, "Tenants", Some(&s), state, &html)
}

pub(super) fn ingest_str(m: actors::config::IngestMode) -> &'static str {
    match (m.webhook(), m.queue()) {
        (true, true) => "both",
        (true, false) => "webhook",
        _ => "queue",
    }
}

/// `GET /console/tenants/<id>`.
pub async fn tenant(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    page(&state, &req, |s| {
        tenant_page(&state, &req, path.into_inner(), s)
    })
    .await
}

async fn tenant_page(state: &AppState, req: &HttpRequest, id: String, s: String) -> HttpResponse {
    let Some(h) = state.registry.get(&id) else {
        return layout(
            StatusCode::NOT_FOUND,
            "Tenant not found",
            Some(&s),
            state,
            &format!("<p>No tenant <code>{}</code>.</p>", esc(&id)),
        );
    };
    let q = query(req);
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
    let token = csrf(state, &s);
    let consumers = match state.consumers.list(&id).await {
        Ok(list) => {
            let mut t = String::from(
                "<table id=consumers><tr><th>Name</th><th>Redis user</th><th>Commands</th><th>Since</th><th></th></tr>",
            );
            for c in &list {
                let _ = write!(
                    t,
                    r#"<tr><td>{name}</td><td><code>{user}</code></td><td>{cmds}</td><td>{since}</td><td><form method=post action="/console/tenants/{id}/revoke-consumer"><input type=hidden name=name value="{name}"><input type=hidden name=csrf value="{token}"><button>Revoke</button></form></td></tr>"#,
                    name = esc(&c.name),
                    user = esc(&c.user),
                    cmds = if c.commands { "may add" } else { "read only" },
                    since = c.created_at.format("%Y-%m-%d %H:%M UTC"),
                    id = esc(&id),
                );
            }
            if list.is_empty() {
                t.push_str("<tr><td colspan=5>None: analytics of this organization cannot read Redis yet.</td></tr>");
            }
            t + "</table>"
        }
        Err(e) => format!(
            "<p class=err>Consumers unavailable: {}</p>",
            esc(&e.to_string())
        ),
    };
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
    <h2>Consumers</h2><p>Redis users that read this organization's streams, device state and inventory only.</p>{consumers}{grant}
    <h2>Transport</h2>{transport}
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
        ps = badge(r.provisioning_state.as_str()),
        ts = badge(r.tokens_state.as_str()),
        ingest = ingest_str(r.ingest),
        scopes = esc(&r.scopes.join(" ")),
        mv = esc(r.manifest_version.as_deref().unwrap_or("—")),
        total = received["total"],
        wh = received["webhook"],
        qu = received["queue"],
        rate = h.shared.messages_last_minute(),
        created = r.created_at,
        transport = transport_section(&r, &action),
        health = action("health", "Health check now", ""),
        rotate = action("rotate", "Rotate webhook secret", ""),
        grant = action(
            "grant-consumer",
            "Grant",
            "<label>Name <input name=name required maxlength=32 pattern=\"[a-z0-9][a-z0-9_-]*\" placeholder=analytics></label> <label><input type=checkbox name=commands> may add commands</label> "
        ),
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
        state,
        &html,
    )
}

/// The tenant page's transport: what it reads, the switch under way, and the form to switch.
fn transport_section(
    r: &actors::tenant::TenantRecord,
    action: &dyn Fn(&str, &str, &str) -> String,
) -> String {
    let now = match &r.transport_switch {
        Some(sw) => format!(
            "<p id=transport>Switching {} → {}: {}{}. Both transports are read until the old one is removed; a message both deliver is written once.</p>",
            ingest_str(sw.from),
            ingest_str(sw.to),
            badge(sw.phase.as_str()),
            sw.overlap_until
                .map(|t| format!(
                    ", old transport removed after {}",
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                ))
                .unwrap_or_default()
        ),
        None => format!("<p id=transport>Reads {}.</p>", ingest_str(r.ingest)),
    };
    let options: String = ["webhook", "queue", "both"]
        .iter()
        .map(|m| {
            // During a switch its target is preselected (asking for it again changes nothing).
            let shown = r.transport_switch.as_ref().map_or(r.ingest, |sw| sw.to);
            let selected = if *m == shown.as_str() {
                " selected"
            } else {
                ""
            };
            format!("<option value={m}{selected}>{m}</option>")
        })
        .collect();
    let form = action(
        "ingest",
        "Switch",
        &format!("<label>Transport <select name=ingest>{options}</select></label> "),
    );
    format!(
        "{now}<p>The new transport is enabled first and both are read for activation.transport_overlap_secs (Webex takes up to 10 minutes to apply a change); then the old one is removed.</p>{form}"
    )
}

/// `POST /console/tenants/<id>/<action>`: health, rotate, manifest-update.
pub async fn tenant_action(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let (session, form) = match post_form(&state, &req, payload).await {
        Ok(sf) => sf,
        Err(resp) => return resp,
    };
    let (id, action) = path.into_inner();
    let Some(h) = state.registry.get(&id) else {
        return see_other("/console/tenants?failed=unknown+tenant");
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
        "ingest" => {
            let Some(mode) = actors::config::IngestMode::parse(form.ingest.trim()) else {
                return back(false, "Choose webhook, queue or both".into());
            };
            match crate::http::admin::switch_ingest(&state, &id, mode).await {
                Ok(h) => {
                    let r = h.record();
                    let msg = match &r.transport_switch {
                        Some(sw) if sw.phase.as_str() == "overlap" => format!(
                            "Switching {} → {}: the new transport is enabled; the old one is removed after the overlap",
                            sw.from.as_str(),
                            sw.to.as_str()
                        ),
                        Some(sw) => format!(
                            "Switching {} → {}: {}",
                            sw.from.as_str(),
                            sw.to.as_str(),
                            sw.phase.as_str()
                        ),
                        None => format!("The tenant reads {}", r.ingest.as_str()),
                    };
                    back(true, msg)
                }
                Err(e) => back(false, e.to_string()),
            }
        }
        "grant-consumer" if h.shared.is_deprovisioned() => {
            back(false, "Not granted: the tenant is deprovisioned".into())
        }
        "grant-consumer" => {
            let commands = !form.commands.is_empty();
            let name = form.name.trim();
            match state
                .consumers
                .grant(&id, &h.shared.org_id, name, commands)
                .await
            {
                Ok(_) if h.shared.is_deprovisioned() => {
                    let e =
                        crate::http::consumers::deprovisioned_meanwhile(&state, &id, name).await;
                    back(false, format!("Not granted: {e}"))
                }
                Ok(g) => granted_page(&state, &session, &id, &g),
                Err(e) => back(false, format!("Not granted: {e}")),
            }
        }
        "revoke-consumer" => match state.consumers.revoke(&id, form.name.trim()).await {
            Ok(_) => back(
                true,
                format!(
                    "Consumer {} revoked: its Redis user is gone",
                    form.name.trim()
                ),
            ),
            Err(e) => back(false, format!("Not revoked: {e}")),
        },
        _ => see_other(&format!("/console/tenants/{}", enc(&id))),
    }
}

/// The answer to a grant: its password, this once (the page is not stored by the browser).
fn granted_page(
    state: &AppState,
    session: &str,
    id: &str,
    g: &actors::consumers::Granted,
) -> HttpResponse {
    let keys = serde_json::to_value(&g.info.keys).unwrap_or_default();
    let mut rows = String::new();
    for (kind, key) in keys.as_object().into_iter().flatten() {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            esc(kind),
            esc(key.as_str().unwrap_or(""))
        );
    }
    let html = format!(
        r#"<p class=ok>Consumer <b>{name}</b> granted on {nodes} Redis node(s).</p>
    <dl id=granted><dt>User</dt><dd><code id=user>{user}</code></dd><dt>Password</dt><dd><code id=password>{password}</code></dd></dl>
    <p><b>Shown once:</b> the engine keeps no copy. Give it to the customer's analytics team; if it is lost, revoke the consumer and grant it again.</p>
    <table id=keys><tr><th>What</th><th>Key</th></tr>{rows}</table>
    <p><a href="/console/tenants/{id}">Back to the tenant</a></p>"#,
        name = esc(&g.info.name),
        nodes = g.nodes.len(),
        user = esc(&g.info.user),
        password = esc(&g.password),
        id = esc(id),
    );
    let mut resp = layout(
        StatusCode::OK,
        "Consumer granted",
        Some(session),
        state,
        &html,
    );
    resp.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `GET /console/errors/<trackingId>`.
pub async fn error(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    page(&state, &req, |s| {
        error_page_of(&state, path.into_inner(), s)
    })
    .await
}

async fn error_page_of(state: &AppState, id: String, s: String) -> HttpResponse {
    let id = id.to_ascii_lowercase();
    if !is_tracking_id(&id) {
        return layout(
            StatusCode::BAD_REQUEST,
            "Not a trackingId",
            Some(&s),
            state,
            "<p>A trackingId is 32 hex digits.</p>",
        );
    }
    let found = match admin::lookup_error(state, &id).await {
        Ok(found) => found,
        Err(e) => {
            return layout(
                StatusCode::SERVICE_UNAVAILABLE,
                "Support log unavailable",
                Some(&s),
                state,
                &format!("<p class=err>{}</p>", esc(&e.to_string())),
            );
        }
    };
    let Some(e) = found else {
        return layout(
            StatusCode::NOT_FOUND,
            "trackingId not found",
            Some(&s),
            state,
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
    layout(StatusCode::OK, "Error", Some(&s), state, &html)
}

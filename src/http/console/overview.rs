//! The console's home: the fleet at a glance. Tenants by provisioning and token state (from
//! this replica's registry, which holds every tenant), messages per minute and webhook answers
//! over the last hour (every replica's, from the `{stats}` hashes their counter flushes add to
//! once a second), the queue tenants whose polls fail (reported by their owners on the change),
//! and the latest errors of the support log. Nothing here is computed per message.
use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::super::html::{badge, esc, truncate};
use super::{AppState, layout, page, query};

/// Rows of each "needs attention" list and of the latest errors.
const ROWS: usize = 10;

/// `GET /console/`: the overview; with a tenant filter or search (`q`, `state`, `tokens`,
/// `page`: the links of earlier versions) the tenant list.
pub async fn overview(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let q = query(&req);
    if ["q", "state", "tokens", "page"]
        .iter()
        .any(|k| q.contains_key(*k))
    {
        return super::pages::tenants(state, req).await;
    }
    page(&state, &req, |s| overview_page(&state, s)).await
}

async fn overview_page(state: &AppState, s: String) -> HttpResponse {
    let handles = state.registry.list();
    let mut by_state = [0usize; 4];
    let mut by_tokens = [0usize; 3];
    let mut invalid = Vec::new();
    let mut names = std::collections::HashMap::with_capacity(handles.len());
    for h in &handles {
        let r = h.record();
        by_state[PROVISIONING
            .iter()
            .position(|p| *p == r.provisioning_state.as_str())
            .unwrap_or(2)] += 1;
        let tokens = r.tokens_state.as_str();
        by_tokens[TOKENS.iter().position(|t| *t == tokens).unwrap_or(2)] += 1;
        if tokens == "invalid" && r.provisioning_state.as_str() != "deprovisioned" {
            invalid.push(r.clone());
        }
        let polled = r.provisioning_state.as_str() == "completed" && r.ingest.queue();
        names.insert(r.tenant_id.clone(), (r.org_name, polled));
    }
    invalid.sort_by(|a, b| a.org_name.cmp(&b.org_name));
    let view = match state.registry.fleet_view(ROWS * 3).await {
        Ok(v) => v,
        Err(e) => return super::unavailable(state, &e),
    };

    let mut html = String::new();
    let card = |html: &mut String, id: &str, label: &str, n: usize, link: &str| {
        let _ = write!(
            html,
            r#"<div class=card><a href="{link}"><div class=figure id="{id}">{n}</div>{label}</a></div>"#
        );
    };
    html.push_str("<h2>Tenants</h2><div class=cards>");
    card(
        &mut html,
        "tenants-total",
        "tenants",
        handles.len(),
        "/console/tenants",
    );
    for (i, p) in PROVISIONING.iter().enumerate() {
        card(
            &mut html,
            &format!("tenants-{p}"),
            &badge(p),
            by_state[i],
            &format!("/console/tenants?state={p}"),
        );
    }
    html.push_str("</div><div class=cards>");
    for (i, t) in TOKENS.iter().enumerate() {
        card(
            &mut html,
            &format!("tokens-{t}"),
            &format!("tokens {}", badge(t)),
            by_tokens[i],
            &format!("/console/tenants?tokens={t}"),
        );
    }
    html.push_str("</div>");

    let hour = &view.hour;
    let last_hour: u64 = hour.per_minute.iter().sum::<u64>() + hour.this_minute;
    let _ = write!(
        html,
        r#"<div class=grid2><section><h2>Messages per minute</h2>
<p><b id=msgs-last-minute>{last}</b> in the last full minute, <b id=msgs-this-minute>{now}</b> so far in this one; <b id=msgs-hour>{last_hour}</b> in the last hour.</p>
<div class=chart>{chart}</div></section>"#,
        last = hour.per_minute.last().copied().unwrap_or(0),
        now = hour.this_minute,
        chart = chart(&hour.per_minute, hour.this_minute),
    );
    html.push_str("<section><h2>Webhook answers, last hour</h2><table id=webhooks><tr><th>Result</th><th class=num>Answers</th></tr>");
    if hour.webhooks.is_empty() {
        html.push_str("<tr><td colspan=2 class=muted>No webhook answered.</td></tr>");
    }
    let mut answers = hour.webhooks.clone();
    answers.sort_by_key(|a| std::cmp::Reverse(a.1));
    for (result, n) in &answers {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=num id=\"webhooks-{r}\">{n}</td></tr>",
            badge(result),
            r = esc(result)
        );
    }
    html.push_str("</table></section></div>");

    html.push_str("<h2>Needs attention</h2><div class=grid2><section><h3>Tokens invalid</h3><table id=invalid><tr><th>Organization</th><th>Last error</th></tr>");
    if invalid.is_empty() {
        html.push_str("<tr><td colspan=2 class=muted>None.</td></tr>");
    }
    for r in invalid.iter().take(ROWS) {
        let since = r
            .last_error
            .as_ref()
            .map(|e| {
                format!(
                    "{} <a href=\"/console/errors/{t}\"><code>{t}</code></a>",
                    e.at.format("%Y-%m-%d %H:%M UTC"),
                    t = esc(&e.tracking_id)
                )
            })
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td><a href=\"/console/tenants/{id}\">{name}</a></td><td>{since}</td></tr>",
            id = esc(&r.tenant_id),
            name = esc(&r.org_name)
        );
    }
    if invalid.len() > ROWS {
        let _ = write!(
            html,
            "<tr><td colspan=2><a href=\"/console/tenants?tokens=invalid\">all {}</a></td></tr>",
            invalid.len()
        );
    }
    html.push_str("</table></section><section><h3>Queue polls failing</h3><table id=polls><tr><th>Organization</th><th>Since</th><th>Error</th></tr>");
    // Reported by owners; a tenant gone since, deprovisioned or no longer on the queue is not
    // listed (what its owner reported last may outlive that).
    let mut failing: Vec<_> = view
        .polls_failing
        .iter()
        .filter_map(|(id, f)| {
            let (name, polled) = names.get(id)?;
            polled.then_some((id, name, f))
        })
        .collect();
    failing.sort_by_key(|(_, _, f)| f.since);
    if failing.is_empty() {
        html.push_str("<tr><td colspan=3 class=muted>None.</td></tr>");
    }
    for (id, name, f) in failing.iter().take(ROWS) {
        let _ = write!(
            html,
            "<tr><td><a href=\"/console/tenants/{id}\">{name}</a></td><td>{since}</td><td>{err}</td></tr>",
            id = esc(id),
            name = esc(name),
            since = f.since.format("%Y-%m-%d %H:%M:%S UTC"),
            err = esc(&truncate(&f.error, 80)),
        );
    }
    html.push_str("</table></section></div>");

    html.push_str("<h2>Latest errors</h2><table id=errors><tr><th>Time</th><th>Answer</th><th>Reason</th><th>Tenant</th><th>trackingId</th></tr>");
    let errors: Vec<_> = view
        .recent_errors
        .iter()
        .filter(|e| e.status >= 400)
        .take(ROWS)
        .collect();
    if errors.is_empty() {
        html.push_str("<tr><td colspan=5 class=muted>None recorded.</td></tr>");
    }
    for e in errors {
        let tenant = e
            .tenant
            .as_deref()
            .map(|t| {
                let label = names.get(t).map(|(n, _)| n.as_str()).unwrap_or(t);
                format!(
                    "<a href=\"/console/tenants/{}\">{}</a>",
                    esc(t),
                    esc(&truncate(label, 40))
                )
            })
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{time}</td><td><span class=\"badge {class}\">{status}</span> {endpoint}</td><td>{reason}</td><td>{tenant}</td><td><a href=\"/console/errors/{t}\"><code>{t}</code></a></td></tr>",
            time = e.time.format("%H:%M:%S"),
            class = if e.status >= 500 { "bad" } else { "warn" },
            status = e.status,
            endpoint = esc(&truncate(&e.endpoint, 60)),
            reason = esc(&e.reason),
            t = esc(&e.tracking_id),
        );
    }
    html.push_str("</table>");
    let _ = write!(
        html,
        "<p><small>Where the figures come from: tenants from this replica's registry (every replica holds every tenant); \
messages and webhook answers from every replica's once-a-second counter flush into <code>{p}:{{stats}}</code>; failing queue polls \
as the owning replica reported them; errors from the support log. <a href=\"/console/tenants\">Search</a> by organization, \
tenant, customer or trackingId from the bar above.</small></p>",
        p = esc(&state.config.redis.key_prefix),
    );
    layout(StatusCode::OK, "Overview", Some(&s), state, &html)
}

const PROVISIONING: [&str; 4] = ["completed", "provisioning", "error", "deprovisioned"];
const TOKENS: [&str; 3] = ["valid", "invalid", "unknown"];

/// Messages per minute of the last hour as bars, oldest left, then the current minute so far
/// (paler): an SVG in the page (no script, no image request). Each bar's tooltip says its count.
fn chart(per_minute: &[u64], this_minute: u64) -> String {
    let (w, h, top, bottom) = (600.0, 150.0, 14.0, 18.0);
    let bars: Vec<u64> = per_minute.iter().copied().chain([this_minute]).collect();
    let max = bars.iter().copied().max().unwrap_or(0).max(1);
    let step = w / bars.len() as f64;
    let mut out = format!(
        r#"<svg id=chart viewBox="0 0 {w} {h}" role=img aria-label="messages per minute over the last hour, highest {max}">"#
    );
    let _ = write!(
        out,
        r#"<line class=axis x1=0 y1="{y}" x2="{w}" y2="{y}"/><text x=0 y=11>{max}/min</text><text x=0 y="{ty}">−60 min</text><text x="{tx}" y="{ty}" text-anchor=end>now</text>"#,
        y = h - bottom,
        ty = h - 4.0,
        tx = w,
    );
    for (i, n) in bars.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let bar = (h - top - bottom) * (*n as f64) / (max as f64);
        let ago = bars.len() - 1 - i;
        let (class, when) = if ago == 0 {
            ("bar now", "this minute so far".to_string())
        } else {
            ("bar", format!("{ago} min ago"))
        };
        let _ = write!(
            out,
            r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bar:.1}"><title>{when}: {n}</title></rect>"#,
            x = i as f64 * step + 0.5,
            y = h - bottom - bar,
            bw = (step - 1.0).max(1.0),
        );
    }
    out + "</svg>"
}

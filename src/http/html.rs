//! HTML helpers shared by the customer-facing setup pages and the operator console: escaping,
//! a small self-contained page, redirects, URL encoding.
use actix_web::HttpResponse;
use actix_web::http::StatusCode;

/// The stylesheet of the console and the setup pages (one file, served by the engine).
pub const STYLESHEET: &str = include_str!("style.css");

/// The pages' Content-Security-Policy: nothing but the same-origin stylesheet (no script at
/// all, no inline style), forms posting to the engine only, never framed.
pub const CSP: &str =
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// `GET /console/style.css` and `GET /setup/style.css`.
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .body(STYLESHEET)
}

/// Wraps every table of `html` in a frame that scrolls sideways on a narrow screen, so that a
/// page itself never does.
pub fn framed_tables(html: &str) -> String {
    html.replace("<table", "<div class=scroll><table")
        .replace("</table>", "</table></div>")
}

/// A page of the engine: `head` and `header` around `body`, with the stylesheet at `css`.
pub fn document(
    status: StatusCode,
    title: &str,
    css: &str,
    body_class: &str,
    header: &str,
    body: &str,
) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Content-Security-Policy", CSP))
        .body(format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{t}</title>\
<link rel=stylesheet href=\"{css}\"></head><body class=\"{body_class}\">{header}<main>{body}</main></body></html>",
            t = esc(title),
            body = framed_tables(body),
        ))
}

/// A small customer-facing page (the setup pages): a narrow column, the same look as the
/// console.
pub fn page(status: StatusCode, title: &str, body_html: &str) -> HttpResponse {
    document(
        status,
        title,
        "/setup/style.css",
        "narrow",
        "<header class=bar><nav><span class=brand>xapi-stream</span></nav></header>",
        &format!("<h1>{}</h1>{body_html}", esc(title)),
    )
}

/// A state as a badge: its word, in a colour by how it stands (the word alone says it too).
pub fn badge(state: &str) -> String {
    let class = match state {
        "completed" | "valid" | "accepted" | "health_check" | "operational" => "ok",
        "provisioning" | "unknown" | "duplicate" | "impaired" => "warn",
        "deprovisioned" => "idle",
        _ => "bad",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(state))
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

/// A redirect after a POST (303).
pub fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", to.to_string()))
        .finish()
}

/// A query-string value, percent-encoded.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// At most `max` characters of `s` (an ellipsis when cut).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

//! HTML helpers shared by the customer-facing setup pages and the operator console: escaping,
//! a small self-contained page, redirects, URL encoding.
use actix_web::HttpResponse;
use actix_web::http::StatusCode;

/// A small, self-contained HTML page.
pub fn page(status: StatusCode, title: &str, body_html: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
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

//! Paged listings: the next page from a `Link` header, followed only on the origin of the
//! current page (the tenant's bearer token never goes to another host).

/// The next page of a listing, from its `Link` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextPage {
    /// The last page.
    None,
    /// The next page, on the origin of the current one.
    Follow(String),
    /// A next page on another origin: not followed (the tenant's bearer token never goes to
    /// another host), so the listing is incomplete.
    Refused(String),
}

/// The `rel="next"` target of a `Link` header, followed only when it stays on the origin of
/// `current`.
pub(super) fn next_link(resp: &reqwest::Response, current: &url::Url) -> NextPage {
    let Some(header) = resp
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|h| h.to_str().ok())
    else {
        return NextPage::None;
    };
    match parse_next_link(header, current) {
        Some(next) => NextPage::Follow(next),
        None => match any_next_link(header) {
            Some(target) => NextPage::Refused(target),
            None => NextPage::None,
        },
    }
}

/// The raw `rel="next"` target of a `Link` header, wherever it points.
pub(super) fn any_next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        pieces
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| target.to_string())
    })
}

/// Parses `<url>; rel="next", <url>; rel="prev"` and keeps a same-origin `next`.
pub fn parse_next_link(header: &str, current: &url::Url) -> Option<String> {
    header.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        let is_next = pieces.any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            return None;
        }
        let next = current.join(target).ok()?;
        (next.origin() == current.origin()).then(|| next.to_string())
    })
}

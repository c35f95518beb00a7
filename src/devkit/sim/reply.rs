//! What both of the simulator's HTTP surfaces (the integration protocol and the public API)
//! share: the Webex-style error body and the bearer-token check.
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use super::Sim;

pub(super) fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR))
        .json(json!({ "error": code, "message": message, "trackingId": format!("SIM_{}", hex::encode(rand::random::<[u8; 8]>())) }))
}

/// The organization of the request's bearer token, when it is known and unexpired.
fn token_org(sim: &Sim, req: &HttpRequest) -> Option<usize> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    sim.state()
        .access
        .get(token)
        .filter(|a| a.expires > Instant::now())
        .map(|a| a.org)
}

fn count_bad_bearer(sim: &Sim) {
    sim.inner
        .expired_bearer_calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The organization of a valid bearer token (the public API is org-agnostic). Failures are
/// counted.
pub(super) fn bearer_org(sim: &Sim, req: &HttpRequest) -> Option<usize> {
    let org = token_org(sim, req);
    if org.is_none() {
        count_bad_bearer(sim);
    }
    org
}

/// Checks the bearer: known, unexpired, of org `i`. Failures are counted.
pub(super) fn bearer_ok(sim: &Sim, req: &HttpRequest, i: usize) -> bool {
    let ok = token_org(sim, req) == Some(i);
    if !ok {
        count_bad_bearer(sim);
    }
    ok
}

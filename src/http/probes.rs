//! Kubernetes probes and the Prometheus scrape endpoint.
use actix_web::{HttpResponse, web};

use super::AppState;

/// Liveness: the process is able to serve.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness: Redis answers a PING and the engine is accepting work.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if !state.is_accepting() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining\n");
    }
    if state.ingest.saturated() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("ingest saturated\n");
    }
    match state.registry.ping_store().await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(e) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("redis: {e}\n")),
    }
}

/// Prometheus text exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.registry.compute_gauges();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

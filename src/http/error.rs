//! The contract's error response: `{"description": "...", "trackingId": "<32 hex>"}`. Building
//! one logs it with the same trackingId, so support can find the line a caller quotes.
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::protocol::tracking::TrackingId;
use serde::Serialize;

/// An error answered to a caller. `reason` is a short fixed word for logs and metrics.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub description: String,
    pub reason: &'static str,
    pub tracking_id: TrackingId,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    description: &'a str,
    #[serde(rename = "trackingId")]
    tracking_id: TrackingId,
}

impl ApiError {
    /// Creates the error and writes its log line.
    pub fn new(status: StatusCode, reason: &'static str, description: impl Into<String>) -> Self {
        let e = Self {
            status,
            description: description.into(),
            reason,
            tracking_id: TrackingId::new(),
            retry_after: None,
        };
        if status.is_server_error() {
            tracing::error!(trackingId = %e.tracking_id, status = status.as_u16(), reason, description = %e.description, "request failed");
        } else {
            tracing::warn!(trackingId = %e.tracking_id, status = status.as_u16(), reason, description = %e.description, "request rejected");
        }
        e
    }

    /// Adds `Retry-After` (seconds) for 503/429 answers.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", description)
    }

    pub fn unavailable(description: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", description).retry_after(1)
    }

    pub fn internal(description: &str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", description)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (trackingId {})", self.description, self.tracking_id)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            resp.insert_header(("Retry-After", secs.to_string()));
        }
        // For the support log (see `super::record_errors`).
        resp.extensions_mut().insert(Answered {
            tracking_id: self.tracking_id,
            reason: self.reason,
            description: self.description.clone(),
        });
        resp.json(Body {
            description: &self.description,
            tracking_id: self.tracking_id,
        })
    }
}

/// What an error answer leaves in its response's extensions for the support log.
#[derive(Debug, Clone)]
pub struct Answered {
    pub tracking_id: TrackingId,
    pub reason: &'static str,
    pub description: String,
}

impl From<ApiError> for HttpResponse {
    fn from(e: ApiError) -> Self {
        e.error_response()
    }
}

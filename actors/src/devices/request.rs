//! What is asked of a device and what can go wrong: [`DeviceRequest`] (status, command,
//! configuration read or patch) and [`DeviceError`] (with its code, HTTP status and whether a
//! retry could help).
use std::time::Duration;

use serde_json::Value;

use super::access::{AccessError, CallKind};
use crate::store::StoreError;
use crate::tenant::TokenError;

/// A request for one device, from the admin API or the command stream.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceRequest {
    /// `GET /xapi/status?deviceId=&name=…` (batched by 10 names).
    Status { device: String, names: Vec<String> },
    /// `POST /xapi/command/<Name>` with `arguments` and an optional multiline `body`.
    Command {
        device: String,
        name: String,
        arguments: Option<serde_json::Map<String, Value>>,
        body: Option<String>,
    },
    /// `GET /deviceConfigurations?deviceId=&key=`.
    ConfigGet { device: String, key: Option<String> },
    /// `PATCH /deviceConfigurations?deviceId=` with JSON-patch operations.
    ConfigPatch { device: String, ops: Value },
}

impl DeviceRequest {
    pub fn kind(&self) -> CallKind {
        match self {
            Self::Status { .. } => CallKind::Status,
            Self::Command { .. } => CallKind::Command,
            Self::ConfigGet { .. } => CallKind::ConfigGet,
            Self::ConfigPatch { .. } => CallKind::ConfigPatch,
        }
    }

    pub fn device(&self) -> &str {
        match self {
            Self::Status { device, .. }
            | Self::Command { device, .. }
            | Self::ConfigGet { device, .. }
            | Self::ConfigPatch { device, .. } => device,
        }
    }

    /// The command name, status names or configuration key (for results and logs).
    pub fn name(&self) -> Option<String> {
        match self {
            Self::Status { names, .. } => Some(names.join(",")),
            Self::Command { name, .. } => Some(name.clone()),
            Self::ConfigGet { key, .. } => key.clone(),
            Self::ConfigPatch { .. } => None,
        }
    }
}

/// Why a device request failed. [`code`](Self::code) is the stable word downstream systems
/// and the HTTP edge use.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Refused(#[from] AccessError),
    #[error("the tenant is {0}; device calls need a completed activation")]
    NotActive(&'static str),
    #[error("Webex answered {status}: {message}")]
    Webex { status: u16, message: String },
    #[error("rate limited by Webex; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("Webex unavailable: {0}")]
    Unavailable(String),
    #[error("no usable access token: {0}")]
    Token(#[from] TokenError),
    #[error("the command's outcome is unknown ({0}); it was not sent again")]
    OutcomeUnknown(String),
    #[error("no answer within devices.call_deadline_secs")]
    Deadline,
    #[error("storage unavailable: {0}")]
    Store(#[from] StoreError),
}

impl DeviceError {
    /// Stable error code: in `command_results` entries and the HTTP edge's log lines.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(e) if e.is_forbidden() => "forbidden",
            Self::Refused(_) => "invalid_request",
            Self::NotActive(_) => "tenant_not_active",
            Self::Webex { status: 404, .. } => "not_found",
            Self::Webex { status: 401, .. } => "unauthorized",
            Self::Webex { status: 403, .. } => "webex_forbidden",
            Self::Webex { .. } => "webex_rejected",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "webex_unavailable",
            Self::Token(_) => "no_token",
            Self::OutcomeUnknown(_) => "outcome_unknown",
            Self::Deadline => "timeout",
            Self::Store(_) => "storage_unavailable",
        }
    }

    /// The HTTP status the admin API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Refused(e) if e.is_forbidden() => 403,
            Self::Refused(_) => 400,
            Self::NotActive(_) => 409,
            Self::Webex { status, .. } if (400..500).contains(status) && *status != 401 => *status,
            Self::Webex { .. } => 502,
            Self::RateLimited { .. } => 429,
            Self::Unavailable(_) => 502,
            Self::Token(_) | Self::Store(_) => 503,
            Self::OutcomeUnknown(_) | Self::Deadline => 504,
        }
    }

    /// Seconds a caller should wait before trying again, when that is known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => Some(retry_after.as_secs().max(1)),
            Self::Token(_) | Self::Store(_) | Self::Unavailable(_) => Some(5),
            _ => None,
        }
    }

    /// Refused before anything reached Webex.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::NotActive(_))
    }

    /// Worth trying again later (the inventory child restarts with backoff on these).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Unavailable(_)
                | Self::Deadline
                | Self::Store(_)
                | Self::Token(TokenError::Transient { .. })
        )
    }
}

pub(super) fn check_device_id(device: &str) -> Result<(), AccessError> {
    if device.is_empty()
        || device.len() > MAX_DEVICE_ID_LEN
        || device.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AccessError::Invalid(format!(
            "device id {device:?} is empty, too long or has spaces"
        )));
    }
    Ok(())
}

/// Longest accepted device id.
pub(super) const MAX_DEVICE_ID_LEN: usize = 512;

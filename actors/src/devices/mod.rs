//! The device API of a tenant: inventory (devices, workspaces), xAPI status queries, xAPI
//! commands and device configurations, called on Webex with the tenant's token. Every call is
//! checked locally against the tenant's granted scopes and `xapiAccess` first; calls of one
//! tenant share a concurrency bound and a rate-limit gate (a 429's `Retry-After` holds back
//! every call of that tenant, not just the one that got it); 5xx and network errors are
//! retried with backoff, other 4xx are not, and a command whose outcome is unknown is never
//! sent twice.
//!
//! # Layout
//! - [`access`]: pure rules — scopes per call kind, xAPI path patterns, name/key/patch syntax.
//! - [`inventory`]: listing with paging, normalization, the sync into Redis hashes + stream.
//! - [`commands`]: the consumer of `<p>:{<org>}:commands` writing `command_results`.
//! - this file: [`Api`] (one tenant's device API over its gate, `crate::tenant::gate`) and the
//!   HTTP call with its retry policy; `request`: [`DeviceRequest`], [`DeviceError`]; `paging`:
//!   the next page of a listing.
pub mod access;
pub mod commands;
pub mod inventory;
mod paging;
mod request;

pub use crate::store::devices::InventoryKind;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::store::tenants::ProvisioningState;
use crate::tenant::{Refusal, TenantShared, WithToken};
use crate::webex::client::{retry_after, short_body};
use access::{AccessError, CallKind, Grants};
use paging::next_link;
pub use paging::{NextPage, parse_next_link};
use request::check_device_id;
pub use request::{DeviceError, DeviceRequest};

/// Wait after a 429 that carries no `Retry-After`.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);
/// A `Retry-After` is honoured up to this (a huge value must not overflow the clock).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// First pause before retrying a 5xx or network error (doubling, capped, jittered ±20 %).
const RETRY_BASE: Duration = Duration::from_millis(250);
const RETRY_CAP: Duration = Duration::from_secs(8);

/// A request body.
enum Body {
    Json(Value),
    JsonPatch(Value),
}

/// A successful answer: the JSON body and the `Link: <…>; rel="next"` of a paged listing.
struct Answer {
    body: Value,
    next: NextPage,
}

/// The device API of one tenant.
#[derive(Clone, Copy)]
pub struct Api<'a> {
    tenant: &'a TenantShared,
}

impl<'a> Api<'a> {
    pub fn of(tenant: &'a TenantShared) -> Self {
        Self { tenant }
    }

    /// Runs a device request through the tenant's grants, gate and token.
    pub async fn request(&self, req: &DeviceRequest) -> Result<Value, DeviceError> {
        self.check_request(req)?;
        self.send_checked(req).await
    }

    /// Sends a request that passed [`check_request`](Self::check_request).
    pub async fn send_checked(&self, req: &DeviceRequest) -> Result<Value, DeviceError> {
        let device = req.device();
        let base = self.api_base(&self.tenant.record().webexapis_base_url)?;
        let deadline = self.call_deadline();
        match req {
            DeviceRequest::Status { names, .. } => {
                let batches = access::status_batches(names)?;
                let calls = batches.iter().map(|batch| {
                    let mut url = base.join("xapi/status").expect("relative path joins");
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("deviceId", device);
                        for n in batch {
                            q.append_pair("name", n);
                        }
                    }
                    self.device_call(CallKind::Status, Method::GET, url, None, deadline)
                });
                let mut merged = json!({});
                for answer in futures::future::join_all(calls).await {
                    let body = answer?.body;
                    access::merge_json(
                        &mut merged,
                        body.get("result").cloned().unwrap_or(json!({})),
                    );
                }
                Ok(json!({ "deviceId": device, "result": merged }))
            }
            DeviceRequest::Command {
                name,
                arguments,
                body,
                ..
            } => {
                // The name was checked to be dotted letters/digits: safe as a path segment.
                let url = base
                    .join(&format!("xapi/command/{name}"))
                    .expect("checked name joins");
                let mut payload = json!({ "deviceId": device });
                if let Some(a) = arguments {
                    payload["arguments"] = Value::Object(a.clone());
                }
                if let Some(b) = body {
                    payload["body"] = Value::String(b.clone());
                }
                let answer = self
                    .device_call(
                        CallKind::Command,
                        Method::POST,
                        url,
                        Some(Body::Json(payload)),
                        deadline,
                    )
                    .await?;
                Ok(answer.body)
            }
            DeviceRequest::ConfigGet { key, .. } => {
                let mut url = base.join("deviceConfigurations").expect("joins");
                {
                    // form-urlencoding percent-encodes the brackets of `Service[1].Name`.
                    let mut q = url.query_pairs_mut();
                    q.append_pair("deviceId", device);
                    if let Some(k) = key {
                        q.append_pair("key", k);
                    }
                }
                let answer = self
                    .device_call(CallKind::ConfigGet, Method::GET, url, None, deadline)
                    .await?;
                Ok(answer.body)
            }
            DeviceRequest::ConfigPatch { ops, .. } => {
                let mut url = base.join("deviceConfigurations").expect("joins");
                url.query_pairs_mut().append_pair("deviceId", device);
                let answer = self
                    .device_call(
                        CallKind::ConfigPatch,
                        Method::PATCH,
                        url,
                        Some(Body::JsonPatch(ops.clone())),
                        deadline,
                    )
                    .await?;
                Ok(answer.body)
            }
        }
    }

    /// Every local check of a request — the tenant is active, the scope and the xAPI path are
    /// granted, names, keys and patches are well formed — without calling Webex.
    pub fn check_request(&self, req: &DeviceRequest) -> Result<(), DeviceError> {
        let record = self.tenant.record();
        if record.provisioning_state != ProvisioningState::Completed {
            return Err(DeviceError::NotActive(record.provisioning_state.as_str()));
        }
        let grants = Grants::new(&record.scopes, &record.xapi_access);
        grants.check_scope(req.kind())?;
        check_device_id(req.device())?;
        match req {
            DeviceRequest::Status { names, .. } => {
                for n in names {
                    grants.check_status(n)?;
                }
                access::status_batches(names)?;
            }
            DeviceRequest::Command { name, .. } => grants.check_command(name)?,
            DeviceRequest::ConfigGet { key, .. } => {
                if let Some(k) = key {
                    access::check_config_key(k)?;
                }
            }
            DeviceRequest::ConfigPatch { ops, .. } => {
                access::check_config_patch(ops)?;
            }
        }
        Ok(())
    }

    /// `webexapisBaseUrl` as a base for joining (trailing slash), checked against the URL
    /// policy (https, or http with `webex.allow_http`).
    fn api_base(&self, raw: &str) -> Result<url::Url, DeviceError> {
        let with_slash = format!("{}/", raw.trim_end_matches('/'));
        self.tenant
            .deps()
            .webex()
            .check_url(&with_slash)
            .map_err(|e| {
                DeviceError::Refused(AccessError::Invalid(format!("webexapisBaseUrl {e}")))
            })
    }

    fn call_deadline(&self) -> Instant {
        Instant::now()
            + Duration::from_secs_f64(self.tenant.deps().config().devices.call_deadline_secs)
    }

    /// One device-API call with the tenant's policy: gate, bounded concurrency, token (one
    /// refresh after a 401), retries after 429/5xx/network errors with backoff, none after
    /// other 4xx, and never a second send of a command whose outcome is unknown.
    async fn device_call(
        &self,
        kind: CallKind,
        method: Method,
        url: url::Url,
        body: Option<Body>,
        deadline: Instant,
    ) -> Result<Answer, DeviceError> {
        // Attempts are counted across the refresh: a 401 does not use one up.
        let attempts = AtomicU32::new(0);
        let call = Call {
            kind,
            method: &method,
            url: &url,
            body: body.as_ref(),
            deadline,
        };
        self.tenant
            .with_token(|token| self.attempts(&call, token, &attempts))
            .await
            .map_err(|e| match e {
                WithToken::Token(t) => DeviceError::Token(t),
                WithToken::Call(e) => e,
            })
    }

    /// The attempts of `call` with `token`, until an answer, a refusal, or a 401 (returned as
    /// `Webex { status: 401 }` for [`TenantShared::with_token`] to refresh on).
    async fn attempts(
        &self,
        call: &Call<'_>,
        token: crate::secret::Secret,
        attempts: &AtomicU32,
    ) -> Result<Answer, DeviceError> {
        let Call {
            kind,
            method,
            url,
            body,
            deadline,
        } = *call;
        let gate = &self.tenant.devices;
        let metrics = &self.tenant.deps().metrics();
        let max_attempts = self.tenant.deps().config().devices.max_attempts;
        let label = kind.as_str();
        loop {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            gate.wait(deadline)
                .await
                .map_err(|retry_after| DeviceError::RateLimited { retry_after })?;
            let _permit = tokio::time::timeout_at(deadline, gate.permits.acquire())
                .await
                .map_err(|_| DeviceError::Deadline)?
                .expect("the semaphore is never closed");
            // A 429 may have arrived while this call waited for its permit.
            gate.wait(deadline)
                .await
                .map_err(|retry_after| DeviceError::RateLimited { retry_after })?;
            let started = std::time::Instant::now();
            let mut rb = self
                .tenant
                .deps()
                .webex()
                .http()
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose());
            match body {
                Some(Body::Json(v)) => rb = rb.json(v),
                Some(Body::JsonPatch(v)) => {
                    rb = rb
                        .header(reqwest::header::CONTENT_TYPE, "application/json-patch+json")
                        .body(serde_json::to_vec(v).expect("JSON serializes"))
                }
                None => {}
            }
            let resp = match tokio::time::timeout_at(deadline, rb.send()).await {
                Err(_) => {
                    metrics.device_call(label, "network", started);
                    return Err(if kind.idempotent() {
                        DeviceError::Deadline
                    } else {
                        DeviceError::OutcomeUnknown("no answer before the deadline".into())
                    });
                }
                Ok(Err(e)) => {
                    metrics.device_call(label, "network", started);
                    let connect = e.is_connect();
                    let message = e.without_url().to_string();
                    // A command that may have left is never sent again.
                    if !kind.idempotent() && !connect {
                        return Err(DeviceError::OutcomeUnknown(message));
                    }
                    if attempt >= max_attempts {
                        return Err(DeviceError::Unavailable(message));
                    }
                    retry_pause(attempt, None, deadline).await?;
                    continue;
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            let retry_after = retry_after(&resp);
            if status.is_success() {
                let next = next_link(&resp, url);
                let text = match tokio::time::timeout_at(deadline, resp.text()).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        metrics.device_call(label, "network", started);
                        return Err(DeviceError::Unavailable(e.without_url().to_string()));
                    }
                    Err(_) => {
                        metrics.device_call(label, "network", started);
                        return Err(DeviceError::Deadline);
                    }
                };
                metrics.device_call(label, "ok", started);
                let body = if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).map_err(|e| {
                        DeviceError::Unavailable(format!("unreadable JSON from Webex: {e}"))
                    })?
                };
                return Ok(Answer { body, next });
            }
            let message = short_body(resp).await;
            match status.as_u16() {
                401 => {
                    metrics.device_call(label, "unauthorized", started);
                    attempts.fetch_sub(1, Ordering::Relaxed);
                    return Err(DeviceError::Webex {
                        status: 401,
                        message,
                    });
                }
                429 => {
                    metrics.device_call(label, "rate_limited", started);
                    let wait = retry_after
                        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
                        .min(MAX_RETRY_AFTER);
                    let until = Instant::now() + wait;
                    gate.block_until(until);
                    tracing::info!(tenant = %self.tenant.tenant_id, kind = label, ?wait, "rate limited by Webex; holding back the tenant's calls");
                    if attempt >= max_attempts || until > deadline {
                        return Err(DeviceError::RateLimited { retry_after: wait });
                    }
                }
                s if s >= 500 => {
                    metrics.device_call(label, "server_error", started);
                    // Only a 503 says the request was not processed; any other 5xx on a
                    // command may come after it ran on the device: never send it again.
                    if !kind.idempotent() && s != 503 {
                        return Err(DeviceError::OutcomeUnknown(format!(
                            "Webex answered {status}: {message}"
                        )));
                    }
                    if attempt >= max_attempts {
                        return Err(DeviceError::Unavailable(format!("{status}: {message}")));
                    }
                    drop(_permit);
                    retry_pause(attempt, retry_after, deadline).await?;
                }
                s => {
                    metrics.device_call(label, "client_error", started);
                    return Err(DeviceError::Webex { status: s, message });
                }
            }
        }
    }
}

/// One device-API call's fixed parts.
#[derive(Clone, Copy)]
struct Call<'a> {
    kind: CallKind,
    method: &'a Method,
    url: &'a url::Url,
    body: Option<&'a Body>,
    deadline: Instant,
}

impl Refusal for DeviceError {
    fn token_refused(&self) -> bool {
        matches!(self, DeviceError::Webex { status: 401, .. })
    }
}

/// Sleeps before retry `attempt + 1`: `Retry-After` when given, else a doubling, jittered
/// pause; refuses when that would pass the deadline.
async fn retry_pause(
    attempt: u32,
    retry_after: Option<Duration>,
    deadline: Instant,
) -> Result<(), DeviceError> {
    let backoff = RETRY_BASE
        .saturating_mul(1 << (attempt - 1).min(6))
        .min(RETRY_CAP)
        .mul_f64(0.8 + 0.4 * rand::random::<f64>());
    let wait = retry_after.unwrap_or(backoff).min(MAX_RETRY_AFTER);
    let at = Instant::now() + wait;
    if at > deadline {
        return Err(DeviceError::Deadline);
    }
    tokio::time::sleep_until(at).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_same_origin_only() {
        let cur = url::Url::parse("https://webexapis.com/v1/devices?max=100").unwrap();
        assert_eq!(
            parse_next_link(
                r#"<https://webexapis.com/v1/devices?max=100&start=100>; rel="next""#,
                &cur
            )
            .as_deref(),
            Some("https://webexapis.com/v1/devices?max=100&start=100")
        );
        assert_eq!(
            parse_next_link(
                r#"<https://webexapis.com/v1/devices?start=0>; rel="prev", </v1/devices?start=200>; rel="next""#,
                &cur
            )
            .as_deref(),
            Some("https://webexapis.com/v1/devices?start=200")
        );
        assert_eq!(
            parse_next_link(r#"<https://evil.example/steal>; rel="next""#, &cur),
            None
        );
        assert_eq!(
            parse_next_link(r#"<http://webexapis.com/v1/devices>; rel="next""#, &cur),
            None
        );
        assert_eq!(parse_next_link("garbage", &cur), None);
    }

    #[test]
    fn error_codes_and_statuses() {
        let forbidden = DeviceError::Refused(AccessError::NotGranted {
            what: "command",
            path: "SystemUnit.Boot".into(),
            granted: "Message.Send".into(),
        });
        assert_eq!(
            (forbidden.code(), forbidden.http_status()),
            ("forbidden", 403)
        );
        assert!(forbidden.is_refusal());
        let nf = DeviceError::Webex {
            status: 404,
            message: String::new(),
        };
        assert_eq!((nf.code(), nf.http_status()), ("not_found", 404));
        let rl = DeviceError::RateLimited {
            retry_after: Duration::from_secs(2),
        };
        assert_eq!((rl.http_status(), rl.retry_after_secs()), (429, Some(2)));
        assert!(rl.is_transient());
        assert!(!nf.is_transient());
    }
}

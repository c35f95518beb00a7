//! Ingest: one pipeline for both transports. A webhook body (bytes, as the edge read them) and
//! a queue poll's batch go through the same steps — the tenant, its webhook secret (current or
//! previous, reloaded once when another replica rotated it), parse, organization check,
//! freshness (webhooks), the idempotent write, counting — and come out as an [`Accepted`] or a
//! [`Rejected`] the edge maps to a status code and a metric label.
//!
//! # Layout
//! - [`Ingest`]: the webhook path, over a [`Directory`] of tenants (the registry).
//! - [`poller`]: the queue poller of one tenant, a supervised child; its batches go through
//!   [`polled`]. Its HTTP clients live beside the Webex client: `webex::http1` (the default)
//!   and `webex::polls`.
pub mod poller;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::message::{self, Message, Source};
use crate::protocol::webhook::{self, Presented};
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use crate::store::tenants::ProvisioningState;
use crate::store::writer::{Applied, StreamWriter, WriteError};
use crate::telemetry::{Metrics, Stage};
use crate::tenant::TenantShared;

/// The longest a webhook waits for its write before answering 503 (a bound, so a hung Redis
/// never hangs Webex's request).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// A failed signature check reloads the tenant's secrets at most this often.
const SECRET_RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Pause between retries of a polled batch Redis refused.
const WRITE_RETRY: Duration = Duration::from_millis(500);

/// Where the webhook path finds tenants.
pub trait Directory: Send + Sync + 'static {
    /// The tenant with this id, looked up in Redis when another replica created it a moment
    /// ago.
    fn find(
        &self,
        tenant_id: &str,
    ) -> impl Future<Output = Result<Option<Arc<TenantShared>>, StoreError>> + Send;
    /// Reads again what Redis holds for `org` (another replica may have rotated its secret).
    fn reload(&self, org: &str) -> impl Future<Output = ()> + Send;
}

/// A message taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Its records are durable in Redis.
    Written,
    /// The same content was written before: nothing written again.
    Duplicate,
    /// A health check: nothing to write.
    HealthCheck,
}

impl Accepted {
    /// The `webhooks_total{result}` label.
    pub fn label(self) -> &'static str {
        match self {
            Accepted::Written => "accepted",
            Accepted::Duplicate => "duplicate",
            Accepted::HealthCheck => "health_check",
        }
    }
}

/// Why a message was not taken. Nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("tenant {0}")]
    UnknownTenant(String),
    #[error("tenant deprovisioned")]
    Gone,
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Stale(String),
    /// Saturated, or Redis unavailable: try again after `retry_after`.
    #[error("{0}")]
    Overloaded(String),
}

impl Rejected {
    /// The `webhooks_total{result}` label.
    pub fn label(&self) -> &'static str {
        match self {
            Rejected::UnknownTenant(_) => "unknown_tenant",
            Rejected::Gone => "gone",
            Rejected::BadSignature(_) => "bad_signature",
            Rejected::Malformed(_) => "malformed",
            Rejected::Stale(_) => "stale",
            Rejected::Overloaded(_) => "overloaded",
        }
    }
}

/// The webhook path of the pipeline.
pub struct Ingest<D> {
    directory: Arc<D>,
    writer: StreamWriter,
    metrics: Metrics,
}

impl<D: Directory> Ingest<D> {
    pub fn new(directory: Arc<D>, writer: StreamWriter, metrics: Metrics) -> Self {
        Self {
            directory,
            writer,
            metrics,
        }
    }

    /// One webhook `body` for `tenant_id`, with the credentials `presented` in its headers.
    /// Order: tenant → signature → JSON → health check → organization → freshness → write.
    /// `Ok` only once the records are durable.
    pub async fn webhook(
        &self,
        tenant_id: &str,
        presented: Presented<'_>,
        body: &[u8],
    ) -> Result<Accepted, Rejected> {
        let started = Instant::now();
        let tenant = match self.directory.find(tenant_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(Rejected::UnknownTenant(tenant_id.to_string())),
            Err(e) => {
                return Err(Rejected::Overloaded(format!(
                    "could not look the tenant up: {e}"
                )));
            }
        };
        if tenant.state() == ProvisioningState::Deprovisioned {
            return Err(Rejected::Gone);
        }
        let t = Instant::now();
        let verify = || {
            let auth = tenant
                .webhook
                .credentials()
                .ok_or_else(|| "tenant has no webhook secret yet".to_string())?;
            webhook::verify_any(&auth, presented, body).map_err(|e| e.to_string())
        };
        let verified = match verify() {
            Ok(v) => v,
            // The secret may have been rotated by another replica a moment ago: read it again
            // (at most once a second per tenant, so bad signatures cannot hammer Redis).
            Err(_) if tenant.claim_reload(SECRET_RELOAD_EVERY) => {
                self.directory.reload(&tenant.org_id).await;
                verify().map_err(Rejected::BadSignature)?
            }
            Err(e) => return Err(Rejected::BadSignature(e)),
        };
        self.metrics.ingest_stage(Stage::Verify, t);
        let t = Instant::now();
        let msg =
            message::parse(verified.body()).map_err(|e| Rejected::Malformed(e.to_string()))?;
        self.metrics.ingest_stage(Stage::Parse, t);
        if matches!(msg.body, message::Body::HealthCheck) {
            return Ok(Accepted::HealthCheck);
        }
        if msg.org_id != tenant.org_id {
            return Err(Rejected::Malformed(
                "orgId does not belong to this tenant".into(),
            ));
        }
        msg.check_fresh(chrono::Utc::now())
            .map_err(|e| Rejected::Stale(e.to_string()))?;
        let t = Instant::now();
        let written = tokio::time::timeout(
            WRITE_DEADLINE,
            write(
                &self.writer.on_this_thread(),
                &self.metrics,
                &tenant,
                Arc::new(msg),
                Source::Webhook,
            ),
        )
        .await;
        self.metrics.ingest_stage(Stage::RedisWrite, t);
        let refused = |why: String| {
            self.metrics.backpressure_rejections_total.inc();
            Rejected::Overloaded(why)
        };
        match written {
            Err(_) => Err(refused("write to redis timed out".into())),
            Ok(Ok(Applied::Written(_))) => {
                self.metrics.ingest_stage(Stage::EndToEnd, started);
                Ok(Accepted::Written)
            }
            Ok(Ok(Applied::Duplicate)) => Ok(Accepted::Duplicate),
            Ok(Err(WriteError::Overloaded)) => Err(refused("ingest saturated".into())),
            Ok(Err(e)) => Err(refused(format!("cannot write: {e}"))),
        }
    }

    /// Whether a webhook could be taken now: room in the writer's queue.
    pub fn saturated(&self) -> bool {
        self.writer.capacity() == 0
    }
}

/// The shared last step: the idempotent write of one message, counted when written.
async fn write(
    writer: &StreamWriter,
    metrics: &Metrics,
    tenant: &TenantShared,
    msg: Arc<Message>,
    source: Source,
) -> Result<Applied, WriteError> {
    let res = writer.write(msg.clone(), source).await;
    if let Ok(Applied::Written(_)) = res {
        metrics.message_written(source.as_str(), msg.type_str());
        tenant.count_received(source);
    }
    res
}

/// One polled batch of `tenant`: parsed, checked, and written — retried until durable or we
/// stop, because those messages are no longer in the Webex queue (giving up would lose them).
/// Health checks are skipped; messages of another organization and malformed ones are dropped
/// with a warning (there is nobody to answer).
pub async fn polled(tenant: &TenantShared, raw: Vec<serde_json::Value>, stop: &Shutdown) {
    let (writer, metrics) = (tenant.writer(), tenant.metrics());
    let mut pending = Vec::with_capacity(raw.len());
    for v in raw {
        match message::from_value(v) {
            Ok(m) if matches!(m.body, message::Body::HealthCheck) => {}
            Ok(m) if m.org_id != tenant.org_id => {
                tracing::warn!(tenant = %tenant.tenant_id, "queue message for another organization dropped");
            }
            Ok(m) => {
                let lag = (chrono::Utc::now() - m.ts).num_milliseconds().max(0) as f64 / 1000.0;
                metrics.queue_poll_lag_seconds.observe(lag);
                pending.push(Arc::new(m));
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant.tenant_id, error = %e, "malformed queue message dropped")
            }
        }
    }
    while !pending.is_empty() {
        let results = futures::future::join_all(
            pending
                .iter()
                .map(|m| write(writer, metrics, tenant, m.clone(), Source::Queue)),
        )
        .await;
        pending = pending
            .into_iter()
            .zip(results)
            .filter_map(|(m, r)| r.is_err().then_some(m))
            .collect();
        if !pending.is_empty() {
            // After stop, keep trying for a moment: the drain flushes accepted work.
            if stop.is_fired() && tenant.engine_stopping() {
                tracing::error!(tenant = %tenant.tenant_id, lost = pending.len(), "shutting down with unwritten queue messages");
                return;
            }
            tokio::time::sleep(WRITE_RETRY).await;
        }
    }
}

//! Support by trackingId: errors answered to callers are recorded off the request path (a
//! bounded queue drained in batches into `store::errors`), capped per hour, and found again by
//! their trackingId.
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use crate::config::SupportConfig;
/// One error answered with a trackingId, as the support log keeps it.
pub use crate::store::errors::ErrorRecord;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// Records waiting to be written, at most; beyond it they are dropped (and counted).
const QUEUE: usize = 4096;
/// Records per Redis pipeline, at most.
const BATCH: usize = 256;

/// The engine's support log. Cheap to share (`Arc`).
pub struct ErrorLog {
    tx: mpsc::Sender<ErrorRecord>,
    store: Store,
    retention: Duration,
    per_hour: u32,
    /// The hour, and the records queued this hour by class ([`ErrorClass`] order).
    budget: Mutex<(i64, [u32; 4])>,
    metrics: Metrics,
}

/// What an error is about, for the support log's budgets: each class has its own, so that
/// what anyone on the internet can cause (unauthenticated 4xx, 404s from scanners) never
/// crowds out the errors support is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// About a tenant the engine knows (its webhook, its actions, its admin routes):
    /// `support.errors_per_hour`.
    Tenant,
    /// Any 5xx: the engine's own trouble: `support.errors_per_hour`.
    Server,
    /// Any other 4xx but 404 (no or a wrong token, junk JWTs, malformed bodies):
    /// `support.errors_per_hour`.
    Anonymous,
    /// 404s: a tenth of `support.errors_per_hour`.
    NotFound,
}

impl ErrorClass {
    /// The class of an answer with `status`, about a known tenant or not.
    pub fn of(status: u16, known_tenant: bool) -> Self {
        match status {
            _ if known_tenant => Self::Tenant,
            500.. => Self::Server,
            404 => Self::NotFound,
            _ => Self::Anonymous,
        }
    }
}

impl ErrorLog {
    /// Starts the writer task (it ends once every sender is dropped, after writing what it has).
    pub fn start(store: Store, cfg: &SupportConfig, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::channel::<ErrorRecord>(QUEUE);
        let retention = Duration::from_secs(cfg.errors_retention_secs);
        let (writer_store, writer_metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let n = batch.len() as u64;
                match writer_store.record_errors(&batch, retention).await {
                    Ok(()) => writer_metrics.support_errors("recorded", n),
                    Err(e) => {
                        writer_metrics.support_errors("failed", n);
                        tracing::warn!(error = %e, records = n, "support log: errors not recorded");
                    }
                }
                batch.clear();
            }
        });
        Self {
            tx,
            store,
            retention,
            per_hour: cfg.errors_per_hour,
            budget: Mutex::new((0, [0; 4])),
            metrics,
        }
    }

    /// Queues `record` (never waits): dropped when its class's budget for this hour is spent
    /// or the queue is full.
    pub fn record(&self, record: ErrorRecord, class: ErrorClass) {
        let hour = record.time.timestamp().div_euclid(3600);
        let cap = match class {
            ErrorClass::NotFound => (self.per_hour / 10).max(1),
            _ => self.per_hour,
        };
        let within = {
            let mut b = self.budget.lock().expect("budget lock");
            if b.0 != hour {
                *b = (hour, [0; 4]);
            }
            let used = &mut b.1[class as usize];
            *used += 1;
            *used <= cap
        };
        if !within || self.tx.try_send(record).is_err() {
            self.metrics.support_errors("dropped", 1);
        }
    }

    /// The error answered with `tracking_id`, if it was recorded within the retention.
    pub async fn find(&self, tracking_id: &str) -> Result<Option<ErrorRecord>, StoreError> {
        self.store
            .find_error(tracking_id, self.retention, Utc::now())
            .await
    }
}

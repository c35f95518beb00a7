//! Support by trackingId: errors answered to callers are recorded off the request path (a
//! bounded queue drained in batches into `store::errors`), capped per hour, and found again by
//! their trackingId.
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use crate::config::SupportConfig;
use crate::store::errors::ErrorRecord;
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
    /// (hour, errors recorded, 404s recorded) this hour.
    budget: Mutex<(i64, u32, u32)>,
    metrics: Metrics,
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
            budget: Mutex::new((0, 0, 0)),
            metrics,
        }
    }

    /// Queues `record` (never waits): dropped when this hour's budget is spent or the queue is
    /// full.
    pub fn record(&self, record: ErrorRecord) {
        let hour = record.time.timestamp().div_euclid(3600);
        let within = {
            let mut b = self.budget.lock().expect("budget lock");
            if b.0 != hour {
                *b = (hour, 0, 0);
            }
            // 404s (anyone can send them, a scanner by the thousand) have a tenth of the budget
            // of their own, so they never crowd out the errors support is asked about.
            if record.status == 404 {
                b.2 += 1;
                b.2 <= (self.per_hour / 10).max(1)
            } else {
                b.1 += 1;
                b.1 <= self.per_hour
            }
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

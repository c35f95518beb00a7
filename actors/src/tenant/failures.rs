//! What a tenant records when something goes wrong: its last error (with a trackingId) and
//! lifecycle entries, written at once, or later while Redis is unreachable (one deferred write
//! per tenant and kind, with a deadline, never twice).
use std::sync::Arc;

use chrono::Utc;

use super::{RECORD_CAS_ATTEMPTS, TenantRecord, TenantShared};
use crate::protocol::tracking::TrackingId;
use crate::store::StoreError;
use crate::store::tenants::{LastError, ProvisioningState};

/// A write waiting for Redis, marked in its tenant's set while it waits (see
/// `TenantShared::deferred`); the mark goes when it is dropped.
struct Deferred {
    set: Arc<dashmap::DashSet<String>>,
    what: String,
}

impl Deferred {
    /// The mark for `what`, unless one is already waiting.
    fn start(set: &Arc<dashmap::DashSet<String>>, what: &str) -> Option<Self> {
        set.insert(what.to_string()).then(|| Self {
            set: set.clone(),
            what: what.to_string(),
        })
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.set.remove(&self.what);
    }
}

/// How long a write Redis could not take is tried again (with backoff up to
/// [`LATER_PAUSE_MAX`]) before it is given up (and logged).
const LATER_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

const LATER_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `write` until it succeeds or fails other than for Redis being unreachable, for at most
/// [`LATER_FOR`].
async fn retry_while_unavailable<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let until = std::time::Instant::now() + LATER_FOR;
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        tokio::time::sleep(pause).await;
        match write().await {
            Err(e) if e.is_unavailable() && std::time::Instant::now() < until => {
                pause = (pause * 2).min(LATER_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// Stores a tenant error that Redis could not take when it happened, once Redis is back —
/// unless the record changed after it (a newer state wins over an old error). The replicas
/// pick the change up like any other record change.
fn store_error_later(
    tenants: crate::store::tenants::Tenants,
    org: String,
    err: LastError,
    apply: impl Fn(&mut TenantRecord) + Send + Sync + 'static,
    done: Deferred,
) {
    tokio::spawn(async move {
        let _done = done;
        let stored = retry_while_unavailable(|| async {
            for _ in 0..RECORD_CAS_ATTEMPTS {
                let Some((mut r, version)) = tenants.load_record(&org).await? else {
                    return Ok(false);
                };
                if r.last_error.as_ref() == Some(&err) || r.updated_at > err.at {
                    // Stored after all (a write that landed late), or overtaken.
                    return Ok(false);
                }
                apply(&mut r);
                r.updated_at = Utc::now();
                if tenants.save_record(&r, version).await?.is_some() {
                    return Ok(true);
                }
            }
            Err(StoreError::Conflict("the tenant record kept changing"))
        })
        .await;
        match stored {
            Ok(true) => {
                tracing::info!(trackingId = %err.tracking_id, org, "tenant error stored after Redis came back")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(trackingId = %err.tracking_id, org, error = %e, "tenant error not stored")
            }
        }
    });
}
impl TenantShared {
    /// Records a failure with a fresh trackingId (also in the log line); returns the id.
    pub async fn fail(&self, state: Option<ProvisioningState>, description: String) -> TrackingId {
        self.record_error(description, move |r| {
            if let Some(s) = state {
                r.provisioning_state = s;
            }
        })
        .await
    }

    /// Stores `description` as the tenant's `last_error` with a fresh trackingId (also in the
    /// log line), together with `change`; returns the id. When Redis cannot be reached it is
    /// stored once Redis is back ([`store_error_later`]).
    pub(super) async fn record_error(
        &self,
        description: String,
        change: impl Fn(&mut TenantRecord) + Send + Sync + 'static,
    ) -> TrackingId {
        let tracking = TrackingId::new();
        tracing::error!(trackingId = %tracking, tenant = %self.tenant_id, %description, "tenant error");
        let err = LastError {
            tracking_id: tracking.to_string(),
            description,
            at: Utc::now(),
        };
        let apply = {
            let err = err.clone();
            move |r: &mut TenantRecord| {
                change(r);
                r.last_error = Some(err.clone());
            }
        };
        match self.update(&apply).await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => {
                if let Some(done) = Deferred::start(&self.deferred, "error") {
                    tracing::warn!(trackingId = %tracking, tenant = %self.tenant_id, error = %e, "tenant error not stored yet: Redis unavailable; storing it once Redis is back");
                    store_error_later(
                        self.deps.tenants.clone(),
                        self.org_id.clone(),
                        err,
                        apply,
                        done,
                    );
                }
            }
            Err(e) => {
                tracing::error!(trackingId = %tracking, tenant = %self.tenant_id, error = %e, "could not store the tenant error");
            }
        }
        tracking
    }

    /// Appends a lifecycle entry; failures are logged, not fatal.
    pub async fn lifecycle(&self, event: &str) {
        self.lifecycle_because(event, None).await
    }

    /// Appends a lifecycle entry with a `reason` field. When Redis cannot be reached it is
    /// written once Redis is back (with the time it happened; never twice: each attempt
    /// carries a write deadline).
    pub async fn lifecycle_because(&self, event: &str, reason: Option<&str>) {
        let ts = Utc::now();
        let tenants = &self.deps.tenants;
        match tenants
            .lifecycle_at(&self.tenant_id, &self.org_id, event, reason, ts)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => {
                tracing::warn!(tenant = %self.tenant_id, event, error = %e, "lifecycle entry not written yet: Redis unavailable; writing it once Redis is back");
                let (tenants, tenant, org) =
                    (tenants.clone(), self.tenant_id.clone(), self.org_id.clone());
                let (event, reason) = (event.to_string(), reason.map(str::to_string));
                tokio::spawn(async move {
                    let written = retry_while_unavailable(|| {
                        tenants.lifecycle_at(&tenant, &org, &event, reason.as_deref(), ts)
                    })
                    .await;
                    match written {
                        Ok(()) => tracing::info!(
                            tenant,
                            event,
                            "lifecycle entry written after Redis came back"
                        ),
                        Err(e) => {
                            tracing::warn!(tenant, event, error = %e, "lifecycle entry not written")
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant_id, event, error = %e, "lifecycle entry not written");
            }
        }
    }
}

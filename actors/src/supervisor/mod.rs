//! The supervisor of each tenant and the handle the rest of the engine holds. The actor owns the
//! tenant's lifecycle on this replica (owned work while the lease is held, children restarted
//! with backoff); callers never see an `Addr`: [`TenantHandle`] sends the messages, with
//! backpressure, and awaits a stop.
//!
//! # Layout
//! - [`actor`]: `TenantSupervisor`, its messages and children.
mod actor;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::shutdown::{self, Shutdown};
use crate::store::tenants::TenantRecord;
use crate::tenant::{TenantShared, tenant_json};

pub use actor::ChildKind;
use actor::{
    Deprovision, RestartChildren, StartOwnedWork, Stop, StopOwnedWork, TenantSupervisor,
    TransportChanged,
};

/// The handle on one tenant: its shared state and its supervisor.
#[derive(Clone)]
pub struct TenantHandle {
    pub shared: Arc<TenantShared>,
    addr: Addr<TenantSupervisor>,
    /// Fires once the supervisor has stopped.
    finished: Shutdown,
}

impl TenantHandle {
    /// Starts the supervisor of `shared` on `arbiter`.
    pub fn start(shared: Arc<TenantShared>, arbiter: &ArbiterHandle) -> Self {
        let (finished_trigger, finished) = shutdown::channel();
        let sup_shared = shared.clone();
        let addr = TenantSupervisor::start_in_arbiter(arbiter, move |_| {
            TenantSupervisor::new(sup_shared, finished_trigger)
        });
        Self {
            shared,
            addr,
            finished,
        }
    }

    pub fn tenant_id(&self) -> &str {
        &self.shared.tenant_id
    }

    pub fn record(&self) -> TenantRecord {
        self.shared.record()
    }

    /// The tenant as the admin API shows it.
    pub async fn to_json(&self) -> serde_json::Value {
        let r = self.record();
        let mut received = match self.shared.deps().tenants().load(&r.org_id).await {
            Ok(Some(t)) => t.received,
            _ => Default::default(),
        };
        // Plus what this replica wrote in the last second and has not added yet.
        let [webhook, queue] = self.shared.peek_unflushed();
        *received.entry("webhook".into()).or_default() += webhook;
        *received.entry("queue".into()).or_default() += queue;
        tenant_json(
            &r,
            &received,
            &self.shared.deps().config().integration.app_id,
        )
    }

    /// This replica now holds the tenant's lease. `false` when the supervisor's mailbox is full
    /// (the coordinator offers it again next round) or it has stopped.
    pub fn start_owned_work(&self) -> bool {
        self.addr.try_send(StartOwnedWork).is_ok()
    }

    /// The lease is lost or being handed over; resolves once the supervisor took it in (its
    /// children then finish their current step).
    pub async fn stop_owned_work(&self) {
        let _ = self.addr.send(StopOwnedWork).await;
    }

    /// After an update: the owner restarts its URL-bound children.
    pub async fn restart_children(&self) {
        let _ = self.addr.send(RestartChildren).await;
    }

    /// The tenant's transport switch moved on (or its `ingest` changed): the owner starts what
    /// the tenant reads now (the queue poller, the switch's next step).
    pub async fn transport_changed(&self) {
        let _ = self.addr.send(TransportChanged).await;
    }

    /// Stops every child; the supervisor stays (the tenant answers 410).
    pub async fn deprovision(&self) {
        let _ = self.addr.send(Deprovision).await;
    }

    /// Asks the supervisor to stop its children and itself; resolves when it has (children
    /// finish their current work first, bounded by `server.shutdown_grace_secs`).
    pub async fn stop(&self) {
        let _ = self.addr.send(Stop).await;
        let grace = Duration::from_secs(self.shared.deps().config().server.shutdown_grace_secs + 1);
        if tokio::time::timeout(grace, self.finished.wait())
            .await
            .is_err()
        {
            tracing::warn!(tenant = %self.shared.tenant_id, "supervisor did not stop within the grace");
        }
    }
}

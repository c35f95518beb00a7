//! `TenantSupervisor`: the actor that owns one tenant's lifecycle on this replica. Every replica
//! has one per tenant (webhooks and actions are served anywhere), but only the replica holding
//! the tenant's lease runs the *owned* work: completing an activation (token exchange, PATCH of
//! the appUrl) and the children — token refresher, appUrl reconciler, queue poller, inventory,
//! command consumer. The ownership coordinator says [`StartOwnedWork`] and [`StopOwnedWork`];
//! a child that failed is restarted with capped exponential backoff while the lease is held.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::store::tenants::ProvisioningState;
use crate::tenant::appurl::{complete_activation, relearn_poll_url, run_reconciler};
use crate::tenant::{ChildError, TenantShared};

/// Bounded mailbox: lifecycle messages are rare; a full mailbox means something is stuck.
const MAILBOX_CAPACITY: usize = 64;
/// Backoff of child restarts: first delay, doubling, capped.
const RESTART_BASE: Duration = Duration::from_millis(500);
const RESTART_CAP: Duration = Duration::from_secs(30);

/// The background work a tenant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    TokenRefresher,
    Reconciler,
    QueuePoller,
    Inventory,
    CommandConsumer,
    TransportSwitch,
}

impl ChildKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::TokenRefresher => "token_refresher",
            Self::Reconciler => "reconciler",
            Self::QueuePoller => "queue_poller",
            Self::Inventory => "inventory",
            Self::CommandConsumer => "command_consumer",
            Self::TransportSwitch => "transport_switch",
        }
    }
}

/// Stop every child and the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Restart the children (after an `update`: new URLs, new tokens): the owner exchanges the
/// token, learns the pollUrl of the (new) appUrl, and restarts its URL-bound children.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartChildren;

/// The tenant's transport switch moved on, or its `ingest` changed: start what it reads now
/// (nothing running is cancelled: a poller whose queue was removed ends after its last poll).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TransportChanged;

/// This replica now holds the tenant's lease: start the owned work (completing a pending
/// activation first).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartOwnedWork;

/// The lease is lost or being handed over: owned children finish their current work and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopOwnedWork;

/// The tenant is being deprovisioned: stop every child, keep the actor (its handle answers 410).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deprovision;

/// The supervisor of one tenant.
pub struct TenantSupervisor {
    shared: Arc<TenantShared>,
    /// Fired on [`Stop`] or engine shutdown.
    trigger: ShutdownTrigger,
    stop: Shutdown,
    /// While the lease is held: fired on [`Released`], [`Stop`] or [`Deprovision`]; every
    /// child races it.
    owned: Option<(ShutdownTrigger, Shutdown)>,
    /// Running children and the ownership period (generation) each was started in: a child of
    /// an earlier period may still be finishing its last step when the lease is won back.
    children: HashMap<ChildKind, (SpawnHandle, u64)>,
    /// Bumped on every [`Acquired`].
    generation: u64,
    restarts: HashMap<ChildKind, u32>,
    /// Set by [`Stop`]: the actor stops once every child has finished its current work.
    stopping: bool,
    /// Fired (dropped) when the actor has stopped: what [`super::TenantHandle::stop`] awaits.
    _finished: ShutdownTrigger,
}

impl TenantSupervisor {
    /// A supervisor; `finished` fires once it has stopped.
    pub fn new(shared: Arc<TenantShared>, finished: ShutdownTrigger) -> Self {
        let (trigger, stop) = shutdown::channel();
        Self {
            _finished: finished,
            shared,
            trigger,
            stop,
            owned: None,
            children: HashMap::new(),
            generation: 0,
            restarts: HashMap::new(),
            stopping: false,
        }
    }

    /// Stops the owned work (children finish their current step).
    fn release(&mut self) {
        if let Some((trigger, _)) = self.owned.take() {
            trigger.fire();
        }
        self.shared.claim.set_owning(false);
    }

    fn spawn_child(&mut self, kind: ChildKind, ctx: &mut Context<Self>) {
        let Some((_, owned_stop)) = &self.owned else {
            return;
        };
        if self.stop.is_fired() || owned_stop.is_fired() || self.children.contains_key(&kind) {
            return;
        }
        let shared = self.shared.clone();
        let stop = owned_stop.clone();
        let guard = shared.claim.child_guard();
        let generation = self.generation;
        // Each child is boxed at its own size: one future matching over all kinds would be as
        // large as the largest (4.4 KB, the inventory) for every child of every tenant.
        type Child = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ChildError>>>>;
        let child: Child = match kind {
            ChildKind::TokenRefresher => Box::pin(async move {
                shared.run_refresher(stop).await;
                Ok(())
            }),
            ChildKind::Reconciler => Box::pin(run_reconciler(shared, stop)),
            ChildKind::QueuePoller => Box::pin(crate::ingest::poller::run(shared, stop)),
            ChildKind::Inventory => Box::pin(crate::devices::inventory::run(shared, stop)),
            ChildKind::CommandConsumer => Box::pin(crate::devices::commands::run(shared, stop)),
            ChildKind::TransportSwitch => Box::pin(crate::tenant::transport::run(shared, stop)),
        };
        let fut = async move {
            let _guard = guard;
            child.await
        };
        // The exit is handled right in the actor's context when the future ends: it cannot be
        // lost, and no mailbox is involved.
        let handle = ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| act.child_exited(kind, generation, result, ctx)),
        );
        self.children.insert(kind, (handle, generation));
    }

    fn start_children(&mut self, ctx: &mut Context<Self>) {
        self.spawn_child(ChildKind::TokenRefresher, ctx);
        if self.shared.state() == ProvisioningState::Completed {
            self.spawn_child(ChildKind::Reconciler, ctx);
            self.spawn_child(ChildKind::Inventory, ctx);
            self.spawn_child(ChildKind::CommandConsumer, ctx);
            let r = self.shared.record();
            if r.ingest.queue() && r.poll_url.is_some() {
                self.spawn_child(ChildKind::QueuePoller, ctx);
            }
            if r.transport_switch.is_some() {
                self.spawn_child(ChildKind::TransportSwitch, ctx);
            }
        }
    }
}

impl Actor for TenantSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // Engine shutdown stops this tenant too.
        let engine = self.shared.deps().shutdown().clone();
        ctx.spawn(
            async move { engine.wait().await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.notify(Stop)),
        );
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.trigger.fire();
        self.release();
        Running::Stop
    }
}

impl Handler<StartOwnedWork> for TenantSupervisor {
    type Result = ();

    /// Starts the owned work; a tenant caught mid-activation (new, re-activated, or its owner
    /// died) completes it first.
    fn handle(&mut self, _: StartOwnedWork, ctx: &mut Self::Context) {
        if self.owned.is_some()
            || self.stop.is_fired()
            || self.shared.state() == ProvisioningState::Deprovisioned
        {
            return;
        }
        let (trigger, owned_stop) = shutdown::channel();
        self.owned = Some((trigger, owned_stop.clone()));
        self.generation += 1;
        self.shared.claim.set_owning(true);
        tracing::debug!(tenant = %self.shared.tenant_id, "lease acquired; starting owned work");
        self.spawn_child(ChildKind::TokenRefresher, ctx);
        if self.shared.state() == ProvisioningState::Provisioning {
            let shared = self.shared.clone();
            let guard = shared.claim.child_guard();
            let owned = owned_stop.clone();
            ctx.spawn(
                async move {
                    let _guard = guard;
                    complete_activation(&shared, &owned).await
                }
                .into_actor(self)
                .map(move |ok, act, ctx| {
                    if ok && !owned_stop.is_fired() {
                        act.start_children(ctx);
                    }
                }),
            );
        } else {
            self.start_children(ctx);
        }
    }
}

impl Handler<StopOwnedWork> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, _: StopOwnedWork, _: &mut Self::Context) {
        if self.owned.is_some() {
            tracing::debug!(tenant = %self.shared.tenant_id, "lease released; stopping owned work");
        }
        self.release();
    }
}

impl Handler<Stop> for TenantSupervisor {
    type Result = ();

    /// Cooperative: children see the stop signal and exit at a safe point (a queue poller
    /// finishes its in-flight poll and writes that batch: Webex has already removed those
    /// messages from its queue). Whatever is still running after the shutdown grace is cancelled.
    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        self.trigger.fire();
        self.release();
        if self.stopping {
            return;
        }
        self.stopping = true;
        if self.children.is_empty() {
            ctx.stop();
            return;
        }
        let grace = Duration::from_secs(self.shared.deps().config().server.shutdown_grace_secs);
        ctx.run_later(grace, |act, ctx| {
            for (kind, (h, _)) in act.children.drain() {
                tracing::warn!(tenant = %act.shared.tenant_id, child = kind.as_str(), "child did not stop within the grace; cancelled");
                ctx.cancel_future(h);
            }
            ctx.stop();
        });
    }
}

impl Handler<RestartChildren> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, _: RestartChildren, ctx: &mut Self::Context) {
        if self.owned.is_none() {
            // Not ours: the owner hears of the change (pub/sub) and restarts its own.
            return;
        }
        // The refresher keeps running (it follows the token state); URL-bound children restart
        // once the (new) appUrl told us the queue's pollUrl.
        for kind in [ChildKind::QueuePoller, ChildKind::Reconciler] {
            if let Some((h, _)) = self.children.remove(&kind) {
                ctx.cancel_future(h);
            }
        }
        let shared = self.shared.clone();
        let guard = shared.claim.child_guard();
        ctx.spawn(
            async move {
                let _guard = guard;
                relearn_poll_url(&shared).await
            }
            .into_actor(self)
            .map(|_, act, ctx| act.start_children(ctx)),
        );
    }
}

impl Handler<TransportChanged> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, _: TransportChanged, ctx: &mut Self::Context) {
        // Not ours: nothing to start (spawn_child needs the lease).
        self.start_children(ctx);
    }
}

impl Handler<Deprovision> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, _: Deprovision, ctx: &mut Self::Context) {
        self.trigger.fire();
        self.release();
        for (_, (h, _)) in self.children.drain() {
            ctx.cancel_future(h);
        }
    }
}

impl TenantSupervisor {
    /// A child ended: restart it unless it ended cleanly or we are stopping.
    fn child_exited(
        &mut self,
        kind: ChildKind,
        generation: u64,
        result: Result<(), ChildError>,
        ctx: &mut Context<Self>,
    ) {
        if self
            .children
            .get(&kind)
            .is_some_and(|(_, g)| *g == generation)
        {
            self.children.remove(&kind);
        }
        if self.stopping && self.children.is_empty() {
            ctx.stop();
            return;
        }
        if self.stop.is_fired() || self.owned.is_none() {
            return;
        }
        if generation != self.generation {
            // A child of an earlier ownership period finished after the lease was won back:
            // start the current period's children it was standing in for.
            self.start_children(ctx);
            return;
        }
        match result {
            Ok(()) => {
                self.restarts.remove(&kind);
                if matches!(kind, ChildKind::TransportSwitch | ChildKind::QueuePoller) {
                    // A step of the switch changed what the tenant reads: start it (a poller
                    // of a new queue), and the next step while the switch lasts. A poller
                    // that ended as its queue was removed is started again if a new switch
                    // brought a queue back meanwhile.
                    self.start_children(ctx);
                }
            }
            Err(e) => {
                let n = self.restarts.entry(kind).or_default();
                *n += 1;
                let delay = RESTART_BASE
                    .saturating_mul(1 << (*n).min(6))
                    .min(RESTART_CAP);
                tracing::warn!(tenant = %self.shared.tenant_id, child = kind.as_str(), error = %e, ?delay, "child failed; restarting");
                self.shared
                    .metrics()
                    .actor_restarts_total
                    .with_label_values(&[kind.as_str()])
                    .inc();
                ctx.run_later(delay, move |act, ctx| act.spawn_child(kind, ctx));
            }
        }
    }
}

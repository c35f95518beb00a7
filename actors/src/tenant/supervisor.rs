//! `TenantSupervisor`: the actor that owns one tenant's lifecycle on this replica. Every replica
//! has one per tenant (webhooks and actions are served anywhere), but only the replica holding
//! the tenant's lease runs the *owned* work: completing an activation (token exchange, PATCH of
//! the appUrl) and the children — token refresher, appUrl reconciler, queue poller, inventory,
//! command consumer. The ownership coordinator says [`Acquired`] and [`Released`]; a child
//! that failed is restarted with capped exponential backoff while the lease is held.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use base64::Engine as _;
use chrono::Utc;
use serde_json::{Value, json};

use super::{TenantShared, TokenError};
use crate::secret::Secret;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::store::tenants::{ProvisioningState, TokensState};
use crate::webex::client::AppUrlError;

/// Bounded mailbox: lifecycle messages are rare; a full mailbox means something is stuck.
const MAILBOX_CAPACITY: usize = 64;
/// Backoff of child restarts: first delay, doubling, capped.
const RESTART_BASE: Duration = Duration::from_millis(500);
const RESTART_CAP: Duration = Duration::from_secs(30);
/// A webhook secret is this many random bytes (base64url: 43 characters, ≥ 32 required).
const WEBHOOK_SECRET_BYTES: usize = 32;
/// After a secret rotation the old one still verifies this long (the protocol's 5 minutes).
pub const SECRET_ROTATION_GRACE: Duration = Duration::from_secs(5 * 60);
/// The reconciler's interval varies by ±this fraction so tenants do not call Webex in step.
const RECONCILE_JITTER: f64 = 0.1;

/// The background work a tenant runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    TokenRefresher,
    Reconciler,
    QueuePoller,
    Inventory,
    CommandConsumer,
}

impl ChildKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::TokenRefresher => "token_refresher",
            Self::Reconciler => "reconciler",
            Self::QueuePoller => "queue_poller",
            Self::Inventory => "inventory",
            Self::CommandConsumer => "command_consumer",
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

/// This replica now holds the tenant's lease: start the owned work (completing a pending
/// activation first).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acquired;

/// The lease is lost or being handed over: owned children finish their current work and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Released;

/// The tenant is being deprovisioned: stop every child, keep the actor (its handle answers 410).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deprovision;

/// A child ended: restart it unless it ended cleanly or we are stopping.
#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited {
    kind: ChildKind,
    /// The ownership period the child was started in.
    generation: u64,
    result: Result<(), String>,
}

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
}

impl TenantSupervisor {
    pub fn new(shared: Arc<TenantShared>) -> Self {
        let (trigger, stop) = shutdown::channel();
        Self {
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
        self.shared
            .lease
            .owning
            .store(false, std::sync::atomic::Ordering::Release);
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
        let me = ctx.address();
        let guard = shared.lease.child_guard();
        let generation = self.generation;
        let fut = async move {
            let _guard = guard;
            let result = match kind {
                ChildKind::TokenRefresher => {
                    shared.run_refresher(stop).await;
                    Ok(())
                }
                ChildKind::Reconciler => run_reconciler(shared, stop).await,
                ChildKind::QueuePoller => super::poller::run(shared, stop).await,
                ChildKind::Inventory => crate::devices::inventory::run(shared, stop).await,
                ChildKind::CommandConsumer => crate::devices::commands::run(shared, stop).await,
            };
            // do_send: an exit must never be lost (a stale entry would block a respawn).
            me.do_send(ChildExited {
                kind,
                generation,
                result,
            });
        };
        let handle = ctx.spawn(fut.into_actor(self));
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
        }
    }
}

impl Actor for TenantSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // Engine shutdown stops this tenant too.
        let engine = self.shared.deps.shutdown.clone();
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

impl Handler<Acquired> for TenantSupervisor {
    type Result = ();

    /// Starts the owned work; a tenant caught mid-activation (new, re-activated, or its owner
    /// died) completes it first.
    fn handle(&mut self, _: Acquired, ctx: &mut Self::Context) {
        if self.owned.is_some()
            || self.stop.is_fired()
            || self.shared.state() == ProvisioningState::Deprovisioned
        {
            return;
        }
        let (trigger, owned_stop) = shutdown::channel();
        self.owned = Some((trigger, owned_stop.clone()));
        self.generation += 1;
        self.shared
            .lease
            .owning
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(tenant = %self.shared.tenant_id, "lease acquired; starting owned work");
        self.spawn_child(ChildKind::TokenRefresher, ctx);
        if self.shared.state() == ProvisioningState::Provisioning {
            let shared = self.shared.clone();
            let guard = shared.lease.child_guard();
            ctx.spawn(
                async move {
                    let _guard = guard;
                    complete_activation(&shared).await
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

impl Handler<Released> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, _: Released, _: &mut Self::Context) {
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
        let grace = Duration::from_secs(self.shared.deps.config.server.shutdown_grace_secs);
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
        let guard = shared.lease.child_guard();
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

impl Handler<ChildExited> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        if self
            .children
            .get(&msg.kind)
            .is_some_and(|(_, g)| *g == msg.generation)
        {
            self.children.remove(&msg.kind);
        }
        if self.stopping && self.children.is_empty() {
            ctx.stop();
            return;
        }
        if self.stop.is_fired() || self.owned.is_none() {
            return;
        }
        if msg.generation != self.generation {
            // A child of an earlier ownership period finished after the lease was won back:
            // start the current period's children it was standing in for.
            self.start_children(ctx);
            return;
        }
        match msg.result {
            Ok(()) => {
                self.restarts.remove(&msg.kind);
            }
            Err(e) => {
                let n = self.restarts.entry(msg.kind).or_default();
                *n += 1;
                let delay = RESTART_BASE
                    .saturating_mul(1 << (*n).min(6))
                    .min(RESTART_CAP);
                tracing::warn!(tenant = %self.shared.tenant_id, child = msg.kind.as_str(), error = %e, ?delay, "child failed; restarting");
                self.shared
                    .deps
                    .metrics
                    .actor_restarts_total
                    .with_label_values(&[msg.kind.as_str()])
                    .inc();
                let kind = msg.kind;
                ctx.run_later(delay, move |act, ctx| act.spawn_child(kind, ctx));
            }
        }
    }
}

/// After an update: exchange the (possibly new) refresh token now, so a dead one shows at once,
/// and learn the queue's pollUrl from the (possibly moved) appUrl.
async fn relearn_poll_url(shared: &TenantShared) {
    let Ok(token) = shared.access_token().await else {
        return;
    };
    if !shared.record().ingest.queue() {
        return;
    }
    let app_url = shared.record().app_url;
    let poll_url = match shared.deps.webex.get_app(&app_url, &token).await {
        Ok(app) => app
            .pointer("/queue/pollUrl")
            .and_then(Value::as_str)
            .map(str::to_string),
        Err(e) => {
            tracing::warn!(tenant = %shared.tenant_id, error = %e, "could not read the appUrl after an update");
            None
        }
    };
    if let Some(url) = poll_url
        && shared.record().poll_url.as_deref() != Some(url.as_str())
        && let Err(e) = shared.update(|r| r.poll_url = Some(url.clone())).await
    {
        tracing::warn!(tenant = %shared.tenant_id, error = %e, "new pollUrl not stored");
    }
}

/// A fresh webhook secret: 32 random bytes, base64url.
pub fn new_webhook_secret() -> Secret {
    let bytes: [u8; WEBHOOK_SECRET_BYTES] = rand::random();
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Completes an activation: token exchange (adopting a rotated refresh token), a fresh webhook
/// secret stored before Webex learns it, the PATCH of the appUrl, and the tenant's final
/// state. On failure the tenant shows `error` with a trackingId and Webex is told
/// `provisioningState: error` when a token is at hand. Returns whether it completed.
pub async fn complete_activation(shared: &TenantShared) -> bool {
    let metrics = &shared.deps.metrics;
    match try_complete(shared).await {
        Ok(()) => {
            metrics.activation("completed");
            shared.lifecycle("activated").await;
            tracing::info!(tenant = %shared.tenant_id, org = %shared.org_id, "activation completed");
            true
        }
        Err((description, _)) if !shared.still_in_charge() => {
            // The lease moved on (or a re-activation replaced this supervisor) meanwhile: the
            // new owner completes the activation; reporting an error would undo its work.
            tracing::info!(tenant = %shared.tenant_id, %description, "activation handed to the new owner");
            false
        }
        Err((description, token)) => {
            metrics.activation("error");
            let tracking = shared
                .fail(Some(ProvisioningState::Error), description)
                .await;
            if let Some(token) = token {
                let body = json!({ "provisioningState": "error" });
                let app_url = shared.record().app_url;
                if let Err(e) = shared.deps.webex.patch_app(&app_url, &token, &body).await {
                    tracing::warn!(trackingId = %tracking, error = %e, "could not report the error to Webex");
                }
            }
            false
        }
    }
}

type Failure = (String, Option<Secret>);

async fn try_complete(shared: &TenantShared) -> Result<(), Failure> {
    let deps = &shared.deps;
    let token = shared.access_token().await.map_err(|e| {
        let why = match e {
            TokenError::Invalid => "the activation's refresh token was rejected by Webex".into(),
            other => format!("could not exchange the refresh token: {other}"),
        };
        (why, None)
    })?;
    let record = shared.record();
    let ingest = record.ingest;
    let mut body = json!({
        "provisioningState": "completed",
        "actionsUrl": deps.actions_url(&shared.tenant_id),
        "customer": { "id": shared.tenant_id, "name": record.org_name },
    });
    if ingest.webhook() {
        // Rotate: a new secret, with the old one honoured for the grace period.
        let secret = new_webhook_secret();
        let grace = chrono::Duration::from_std(SECRET_ROTATION_GRACE).unwrap_or_default();
        let new = secret.clone();
        shared
            .tokens
            .update_secrets(move |s| {
                if let Some(old) = s.webhook_secret.take() {
                    s.previous_webhook_secret = Some(old);
                    s.previous_valid_until = Some(Utc::now() + grace);
                }
                s.webhook_secret = Some(new.clone());
            })
            .await
            .map_err(|e| {
                (
                    format!("could not store the webhook secret: {e}"),
                    Some(token.clone()),
                )
            })?;
        body["webhook"] = json!({
            "targetUrl": deps.webhook_url(&shared.tenant_id),
            "type": "hmac_signature",
            "secret": secret.expose(),
        });
    }
    if ingest.queue() {
        body["queue"] = json!({ "state": "enabled" });
    }
    let answer = match deps.webex.patch_app(&record.app_url, &token, &body).await {
        Err(AppUrlError::Unauthorized(_)) => {
            // The token may have been revoked between exchange and PATCH: one fresh try.
            let fresh = shared.refresh_after_rejection(&token).await.map_err(|e| {
                (
                    format!("appUrl rejected our token and refresh failed: {e}"),
                    None,
                )
            })?;
            deps.webex.patch_app(&record.app_url, &fresh, &body).await
        }
        other => other,
    }
    .map_err(|e| {
        (
            format!("PATCH of the appUrl failed: {e}"),
            Some(token.clone()),
        )
    })?;
    let poll_url = answer
        .pointer("/queue/pollUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    if ingest.queue() {
        match &poll_url {
            Some(u) => {
                deps.webex
                    .check_url(u)
                    .map_err(|e| (format!("pollUrl refused: {e}"), Some(token.clone())))?;
            }
            None => {
                return Err((
                    "Webex did not return a queue pollUrl".into(),
                    Some(token.clone()),
                ));
            }
        }
    }
    if !shared.still_in_charge() {
        return Err(("superseded while completing".into(), None));
    }
    shared
        .update(|r| {
            r.provisioning_state = ProvisioningState::Completed;
            r.tokens_state = TokensState::Valid;
            r.poll_url = poll_url.clone();
            r.last_error = None;
        })
        .await
        .map_err(|e| {
            (
                format!("could not store the completed activation: {e}"),
                None,
            )
        })?;
    Ok(())
}

/// Periodically reads the appUrl: granted scopes, xAPI access and manifest version follow
/// what Webex says; a removed integration is reported. Interval from
/// `activation.reconcile_interval_secs`, jittered.
async fn run_reconciler(shared: Arc<TenantShared>, stop: Shutdown) -> Result<(), String> {
    let every = shared.deps.config.activation.reconcile_interval_secs;
    loop {
        let jitter = 1.0 + RECONCILE_JITTER * (rand::random::<f64>() * 2.0 - 1.0);
        let wait = Duration::from_secs_f64((every * jitter).max(0.01));
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        reconcile_once(&shared).await?;
    }
}

/// One reconciliation. Errors that a restart could mend are returned; Webex being down is not
/// one of them (logged, next round).
pub async fn reconcile_once(shared: &TenantShared) -> Result<(), String> {
    let deps = &shared.deps;
    let app_url = shared.record().app_url;
    let token = match shared.access_token().await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(tenant = %shared.tenant_id, error = %e, "reconcile skipped: no token");
            return Ok(());
        }
    };
    let answer = match deps.webex.get_app(&app_url, &token).await {
        Err(AppUrlError::Unauthorized(_)) => match shared.refresh_after_rejection(&token).await {
            Ok(fresh) => deps.webex.get_app(&app_url, &fresh).await,
            Err(_) => return Ok(()),
        },
        other => other,
    };
    match answer {
        Ok(app) => {
            let scopes: Option<Vec<String>> =
                app.get("scopes").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                });
            let access = app.get("xapiAccessKeys").cloned();
            let version = app.get("manifestVersion").map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            shared
                .update(|r| {
                    if let Some(s) = &scopes {
                        r.scopes = s.clone();
                    }
                    if let Some(a) = access.as_ref().filter(|a| !a.is_null()) {
                        r.xapi_access = a.clone();
                    }
                    if version.is_some() {
                        r.manifest_version = version.clone();
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(AppUrlError::Gone(code)) => {
            shared
                .fail(
                    None,
                    format!("the integration was removed on the Webex side ({code}); cleaning up"),
                )
                .await;
            // Cleaned up as if deprovisioned (by the registry, which stops this reconciler too).
            let _ = shared.deps.gone.send(shared.tenant_id.clone());
            Ok(())
        }
        Err(e) => {
            tracing::warn!(tenant = %shared.tenant_id, error = %e, "reconcile: appUrl unavailable");
            Ok(())
        }
    }
}

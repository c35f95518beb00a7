//! Following what other replicas change: a tenant looked up by an id this replica does not
//! know, an organization announced on the changes channel (pub/sub), and a periodic resync of
//! the organizations whose announced-change count moved (messages published while the
//! subscription was down are lost).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Registry;
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use crate::store::tenants::StoredTenant;
use crate::supervisor::TenantHandle;

/// How many tenants a resync loads at once.
const RESYNC_CONCURRENCY: usize = 64;

/// Applies the changes other replicas announce on `<p>:changes` (one org per message). The
/// subscription reconnects by itself; after a gap every tenant is reloaded, since messages
/// published meanwhile are lost.
pub async fn follow_changes(registry: Arc<Registry>, stop: Shutdown) {
    use futures::StreamExt;
    let deps = registry.deps().clone();
    let channel = deps.store().keys().changes_channel();
    let mut gap = false;
    loop {
        // Under Sentinel a new master means subscribing there (announcements are published on
        // the master; a demoted one may hear nothing).
        let mut master = deps.store().master_watch();
        let attempt = async {
            let mut pubsub = deps
                .store()
                .pubsub_client()
                .await?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, StoreError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(pubsub)) => {
                if gap {
                    tracing::info!("change announcements resubscribed; reloading every tenant");
                    let _ = registry.resync().await;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop.wait() => return,
                        _ = master.changed() => break,
                        m = messages.next() => match m {
                            Some(m) => {
                                let Ok(org) = m.get_payload::<String>() else { continue };
                                let registry = registry.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = registry.refresh(&org).await {
                                        tracing::warn!(org, error = %e, "announced change not loaded; the next resync will");
                                    }
                                });
                            }
                            None => break,
                        }
                    }
                }
                tracing::warn!("change announcements: subscription lost; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "change announcements: cannot subscribe yet"),
            Err(_) => tracing::debug!("change announcements: subscribe timed out"),
        }
        gap = true;
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The safety net for missed announcements: every `scaling.resync_secs` reloads the tenants
/// whose change count moved, every `scaling.full_resync_secs` all of them.
pub async fn resync_loop(registry: Arc<Registry>, stop: Shutdown) {
    let scaling = &registry.deps().config().scaling;
    let every = Duration::from_secs_f64(scaling.resync_secs);
    let full_every = Duration::from_secs_f64(scaling.full_resync_secs);
    let mut last_full = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let full = last_full.elapsed() >= full_every;
        let result = if full {
            last_full = tokio::time::Instant::now();
            registry.resync().await
        } else {
            registry.resync_changed().await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, full, "tenant resync failed; next round");
        }
    }
}
impl Registry {
    /// The tenant with this id, loading it from Redis when another replica created it and the
    /// announcement has not arrived yet.
    pub async fn lookup(&self, tenant_id: &str) -> Result<Option<TenantHandle>, StoreError> {
        if let Some(h) = self.get(tenant_id) {
            return Ok(Some(h));
        }
        let Some(org) = self.deps.tenants().org_of(tenant_id).await? else {
            return Ok(None);
        };
        self.refresh(&org).await?;
        Ok(self.get(tenant_id))
    }

    /// Follows what Redis holds for `org` (after another replica changed it): loads an unknown
    /// tenant, adopts new record and secrets, stops a deprovisioned one's work, restarts the
    /// owned work after a re-activation or an update.
    pub async fn refresh(&self, org: &str) -> Result<(), StoreError> {
        if self.follow(org).await? {
            self.update_gauges();
        }
        Ok(())
    }

    /// [`Registry::refresh`] without the gauges; returns whether anything changed.
    pub(super) async fn follow(&self, org: &str) -> Result<bool, StoreError> {
        // Read under the org's lock: an activation on this replica cannot interleave.
        let lock = self.org_lock(org);
        let _guard = lock.lock().await;
        // Known and nothing newer stored (this replica's own announcement, most often): the
        // versions say so in one small read, without loading and decrypting the tenant.
        if let Some(h) = self.by_org(org) {
            let (record, token) = self.deps.tenants().versions(org).await?;
            if record <= h.shared.record_version() && token <= h.shared.tokens.version().await {
                return Ok(false);
            }
        }
        let stored = match self.deps.tenants().load(org).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(false),
            Err(StoreError::Corrupt(e)) => {
                tracing::error!(org, error = %e, "tenant record unreadable; skipped (wrong security.encryption_key?)");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let Some(handle) = self.get(&stored.record.tenant_id) else {
            self.start(stored, None);
            self.kick.notify_one();
            return Ok(true);
        };
        let before = handle.shared.state();
        let changes = handle.shared.reload(stored.clone()).await;
        if changes.deprovisioned {
            handle.deprovision().await;
            handle.shared.tokens.clear().await;
        } else if changes.reactivated {
            self.replace(handle.clone(), stored);
        } else if changes.updated {
            handle.restart_children().await;
        } else if changes.transport {
            handle.transport_changed().await;
        }
        Ok(changes != Default::default() || before != handle.shared.state())
    }

    /// Reloads every stored tenant (the safety net under pub/sub); returns how many exist.
    pub async fn resync(&self) -> Result<usize, StoreError> {
        // Counts first: a change after this read moves its count again.
        let counts = self.deps.tenants().change_counts().await?;
        let ids = self.deps.tenants().all_ids().await?;
        let n = ids.len();
        self.follow_all(ids.into_iter().map(|(_, org)| org)).await?;
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = counts;
        self.update_gauges();
        Ok(n)
    }

    /// Reloads the tenants whose announced-change count moved since the last resync (and
    /// those counted for the first time); returns how many.
    pub async fn resync_changed(&self) -> Result<usize, StoreError> {
        let counts = self.deps.tenants().change_counts().await?;
        let moved: Vec<String> = {
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            counts
                .iter()
                .filter(|(org, n)| seen.get(*org) != Some(n))
                .map(|(org, _)| org.clone())
                .collect()
        };
        let n = moved.len();
        if n > 0 {
            self.follow_all(moved).await?;
            self.update_gauges();
        }
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = counts;
        Ok(n)
    }

    /// Follows `orgs`, [`RESYNC_CONCURRENCY`] at a time; the first error after all were tried.
    pub(super) async fn follow_all(
        &self,
        orgs: impl IntoIterator<Item = String>,
    ) -> Result<(), StoreError> {
        use futures::StreamExt;
        let mut first = None;
        let mut results = futures::stream::iter(orgs)
            .map(|org| async move { self.follow(&org).await })
            .buffer_unordered(RESYNC_CONCURRENCY);
        while let Some(r) = results.next().await {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub(super) fn org_lock(&self, org: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.org_locks
            .entry(org.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Replaces a running supervisor with a fresh one for `stored` (re-activation). The old
    /// one stops first (its poller finishes the poll in flight) before the new one may start
    /// owned work, so two pollers never share the queue.
    pub(super) fn replace(&self, old: TenantHandle, stored: StoredTenant) -> TenantHandle {
        let claim = old.shared.claim.clone();
        claim.set_blocked(true);
        old.shared.superseded.store(true, Ordering::Release);
        let handle = self.start(stored, Some(claim.clone()));
        let registry_kick = self.kick_handle();
        tokio::spawn(async move {
            old.stop().await;
            claim.set_blocked(false);
            registry_kick();
        });
        handle
    }
}

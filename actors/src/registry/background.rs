//! The registry's background work: cleaning up tenants removed on the Webex side, adding
//! message counts to the stored counters, the command bell, consumer-lag sampling.
use std::sync::Arc;
use std::time::Duration;

use super::Registry;
use crate::shutdown::Shutdown;
use crate::store::tenants::ProvisioningState;
use crate::supervisor::TenantHandle;

/// This replica's share of the fleet's figures not yet stored.
#[derive(Default)]
pub(super) struct FleetPending {
    messages: u64,
    webhooks: std::collections::BTreeMap<&'static str, u64>,
    /// `webhooks_total` by result as last read ([`crate::telemetry::WEBHOOK_RESULTS`] order).
    webhook_seen: Vec<u64>,
}

/// How often message counts are added to the stored counters.
const COUNTER_FLUSH: Duration = Duration::from_secs(1);

/// Adds the message counts to the stored counters every second until `stop` (the engine's
/// drain flushes once more), and recomputes the tenant gauges if they are stale.
pub async fn flush_counters_loop(registry: Arc<Registry>, stop: Shutdown) {
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(COUNTER_FLUSH) => {}
        }
        registry.flush_counters().await;
        registry.refresh_gauges();
    }
}
impl Registry {
    /// Cleans up tenants whose integration was removed on the Webex side, as if deprovisioned.
    pub fn spawn_gone_cleaner(
        self: &Arc<Self>,
        mut gone: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(id) = gone.recv().await {
                let Some(reg) = me.upgrade() else { return };
                if let Some(h) = reg.get(&id)
                    && h.shared.state() != ProvisioningState::Deprovisioned
                    && let Err(e) = crate::actions::deprovision(&h, false).await
                {
                    tracing::error!(tenant = %id, error = %e, "cleanup of a removed integration failed");
                }
                reg.update_gauges();
            }
        });
    }

    /// Adds the message counts written since the last flush to the stored counters (one
    /// pipeline); counts that could not be stored are kept for the next flush.
    pub async fn flush_counters(&self) {
        let queued = self.deps.take_to_flush();
        let mut taken: Vec<(TenantHandle, [u64; 2])> = Vec::new();
        for id in queued {
            let Some(h) = self.get(&id) else { continue };
            let counts = h.shared.take_unflushed();
            if counts != [0, 0] {
                h.shared.count_rate(counts[0] + counts[1]);
                taken.push((h, counts));
            }
        }
        let rows: Vec<(String, &str, u64)> = taken
            .iter()
            .flat_map(|(h, [webhook, queue])| {
                [("webhook", *webhook), ("queue", *queue)]
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(source, n)| (h.shared.org_id.clone(), source, n))
            })
            .collect();
        let mut written = 0;
        match self.deps.tenants().add_received(&rows).await {
            // Counted once: what is restored here comes back in a later flush.
            Ok(()) => written = taken.iter().map(|(_, [w, q])| w + q).sum(),
            Err(e) => {
                tracing::debug!(error = %e, "message counters not stored yet; next flush");
                for (h, counts) in &taken {
                    h.shared.restore_unflushed(*counts);
                }
            }
        }
        self.flush_fleet(written).await;
    }

    /// Adds this replica's messages and webhook answers since the last flush to the fleet's
    /// figures per minute (what the console's overview shows); kept for the next flush when
    /// Redis does not take them.
    async fn flush_fleet(&self, written: u64) {
        let metrics = self.deps.metrics();
        // Taken out while written (a flush at shutdown may overlap the loop's), put back if
        // Redis does not take them.
        let counts = {
            let mut p = self.fleet.lock().expect("fleet lock");
            p.messages += written;
            for (i, result) in crate::telemetry::WEBHOOK_RESULTS.iter().enumerate() {
                let now = metrics.webhooks_total.with_label_values(&[result]).get();
                let seen = p.webhook_seen.get(i).copied().unwrap_or(0);
                if p.webhook_seen.len() <= i {
                    p.webhook_seen.resize(i + 1, 0);
                }
                p.webhook_seen[i] = now;
                if now > seen {
                    *p.webhooks.entry(result).or_default() += now - seen;
                }
            }
            crate::store::stats::FleetCounts {
                messages: std::mem::take(&mut p.messages),
                webhooks: std::mem::take(&mut p.webhooks).into_iter().collect(),
            }
        };
        if counts.is_empty() {
            return;
        }
        if let Err(e) = self
            .deps
            .store()
            .add_fleet_counts(chrono::Utc::now(), &counts)
            .await
        {
            tracing::debug!(error = %e, "fleet figures not stored yet; next flush");
            let mut p = self.fleet.lock().expect("fleet lock");
            p.messages += counts.messages;
            for (r, n) in counts.webhooks {
                *p.webhooks.entry(r).or_default() += n;
            }
        }
    }

    /// Starts listening for the command bell (a tenant's command consumer wakes when its
    /// stream gets an entry); call once connected.
    pub fn spawn_command_bell(&self, stop: Shutdown) {
        let deps = &self.deps;
        let listen = deps
            .bell()
            .clone()
            .listen(deps.store().clone(), deps.metrics().clone(), stop);
        tokio::spawn(listen);
    }

    /// Starts the consumer credentials' sync (`redis.acl_sync_secs`; never when 0): every data
    /// node gets the users on record, and loses engine-made users no record names.
    pub fn spawn_consumer_sync(&self, stop: Shutdown) {
        let every = self.deps.config().redis.acl_sync_secs;
        if every == 0 {
            return;
        }
        let consumers = self.deps.consumers().clone();
        tokio::spawn(async move {
            consumers
                .run_sync(Duration::from_secs(every), stop.wait())
                .await
        });
    }

    /// Starts sampling consumer lag (`streams.lag_sample_secs`; the firehose, and the
    /// organizations this replica owns), unless there is nothing to sample.
    pub fn spawn_lag_sampling(self: &Arc<Self>, stop: Shutdown) {
        let streams = &self.deps.config().streams;
        let owned_by = Arc::downgrade(self);
        let lag = crate::store::lag::LagSampling {
            shards: if streams.firehose { streams.shards } else { 0 },
            org_groups: streams.lag_groups.clone(),
            every: Duration::from_secs(streams.lag_sample_secs),
            owned: Arc::new(move || {
                owned_by
                    .upgrade()
                    .map(|r| {
                        r.handles()
                            .into_iter()
                            .filter(|h| h.shared.claim.is_owning())
                            .map(|h| h.shared.org_id.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            }),
        };
        if lag.wanted() {
            let store = self.deps.store().clone();
            tokio::spawn(crate::store::lag::sample_loop(store, lag, stop));
        }
    }
}

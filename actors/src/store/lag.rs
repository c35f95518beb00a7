//! Consumer lag, every `streams.lag_sample_secs`, from `XINFO GROUPS` (`lag`: entries not yet
//! delivered to the group; `pending`: delivered, not acknowledged):
//!
//! * the firehose: every group on each shard, summed over the shards into
//!   `consumer_lag{stream,group}` and `consumer_pending{stream,group}`; the first
//!   [`MAX_GROUPS`] by name. Every replica reports the same figures.
//! * the organizations' streams: the groups named in `streams.lag_groups`, summed over the
//!   organizations *this replica owns* into `org_consumer_lag{stream,group}` and
//!   `org_consumer_pending{stream,group}`, so the fleet's figure is the sum over replicas.
//!
//! `stream` is `status` or `events`; group names label the series, never an organization.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus::IntGaugeVec;

use super::{Conn, Store, StoreError};
use crate::shutdown::Shutdown;

/// Firehose groups reported at most (a label value each).
pub const MAX_GROUPS: usize = 20;

/// Organizations' streams read at once.
const CONCURRENCY: usize = 32;

/// Per (entry type, group): (lag, pending).
type Sample = BTreeMap<(&'static str, String), (i64, i64)>;

/// What is sampled.
#[derive(Clone)]
pub struct LagSampling {
    /// Firehose shards; 0 = no firehose.
    pub shards: u32,
    /// `streams.lag_groups`.
    pub org_groups: Vec<String>,
    /// `streams.lag_sample_secs`; zero = never.
    pub every: Duration,
    /// The organizations this replica owns (whose streams it reports).
    pub owned: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl LagSampling {
    /// Whether there is anything to sample.
    pub fn wanted(&self) -> bool {
        !self.every.is_zero() && (self.shards > 0 || !self.org_groups.is_empty())
    }
}

/// Samples until `stop`.
pub async fn sample_loop(store: Store, what: LagSampling, stop: Shutdown) {
    if !what.wanted() {
        return;
    }
    let m = store.metrics().clone();
    let (mut hose_shown, mut orgs_shown) = (Sample::new(), Sample::new());
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(what.every) => {}
        }
        if what.shards > 0 {
            match firehose(&store, what.shards).await {
                Ok(now) => publish(&m.consumer_lag, &m.consumer_pending, &mut hose_shown, now),
                Err(e) => tracing::debug!(error = %e, "firehose consumer lag not sampled"),
            }
        }
        if !what.org_groups.is_empty() {
            let orgs = (what.owned)();
            match organizations(&store, &orgs, &what.org_groups).await {
                Ok(now) => publish(
                    &m.org_consumer_lag,
                    &m.org_consumer_pending,
                    &mut orgs_shown,
                    now,
                ),
                Err(e) => tracing::debug!(error = %e, "organizations' consumer lag not sampled"),
            }
        }
    }
}

/// Sets the gauges to `now`, removing the series of groups gone since `shown`.
fn publish(lag: &IntGaugeVec, pending: &IntGaugeVec, shown: &mut Sample, now: Sample) {
    for key in shown.keys().filter(|k| !now.contains_key(*k)) {
        let _ = lag.remove_label_values(&[key.0, &key.1]);
        let _ = pending.remove_label_values(&[key.0, &key.1]);
    }
    for ((kind, group), (l, p)) in &now {
        lag.with_label_values(&[*kind, group.as_str()]).set(*l);
        pending.with_label_values(&[*kind, group.as_str()]).set(*p);
    }
    *shown = now;
}

/// One group of a stream: name, lag (None when Redis cannot tell), pending.
type Group = (String, Option<i64>, i64);

/// `XINFO GROUPS stream`; a stream not written yet has no groups.
async fn groups(store: &Store, mut conn: Conn, stream: &str) -> Result<Vec<Group>, StoreError> {
    let reply: Result<Vec<BTreeMap<String, redis::Value>>, _> = store
        .bounded(
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn),
        )
        .await;
    let groups = match reply {
        Ok(g) => g,
        Err(StoreError::Redis(e)) if e.to_string().contains("no such key") => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(groups
        .into_iter()
        .map(|g| {
            let name = match g.get("name") {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            let int = |k: &str| match g.get(k) {
                Some(redis::Value::Int(i)) => Some(*i),
                _ => None,
            };
            // `lag` is unknown (nil) after deletions inside the group's range: the pending
            // entries are counted only then.
            (name, int("lag"), int("pending").unwrap_or(0))
        })
        .collect())
}

const KINDS: [&str; 2] = ["status", "events"];

async fn kind_groups(
    store: &Store,
    conn: Conn,
    kind: usize,
    stream: String,
) -> Result<(usize, Vec<Group>), StoreError> {
    Ok((kind, groups(store, conn, &stream).await?))
}

async fn firehose(store: &Store, shards: u32) -> Result<Sample, StoreError> {
    let keys = store.keys();
    let mut out = Sample::new();
    let conn = store.conn()?;
    for n in 0..shards {
        for (kind, stream) in KINDS
            .into_iter()
            .zip([keys.firehose_status(n), keys.firehose_events(n)])
        {
            for (name, lag, pending) in groups(store, conn.clone(), &stream).await? {
                let entry = (kind, name);
                if !out.contains_key(&entry) && out.len() >= MAX_GROUPS * 2 {
                    continue;
                }
                let e = out.entry(entry).or_default();
                e.0 += lag.unwrap_or(0);
                e.1 += pending;
            }
        }
    }
    Ok(out)
}

/// The groups `wanted` on the streams of `orgs`; every wanted group is reported (0 where no
/// stream has it yet).
async fn organizations(
    store: &Store,
    orgs: &[String],
    wanted: &[String],
) -> Result<Sample, StoreError> {
    let keys = store.keys();
    let conn = store.conn()?;
    let mut out: Sample = KINDS
        .iter()
        .flat_map(|k| wanted.iter().map(move |g| ((*k, g.clone()), (0, 0))))
        .collect();
    // (index in KINDS, stream): a plain index keeps the stream of futures free of borrowed
    // items (a `&'static str` there trips the compiler's Send check of the spawned loop).
    let mut streams: Vec<(usize, String)> = Vec::with_capacity(orgs.len() * 2);
    for org in orgs {
        streams.push((0, keys.status_stream(org)));
        streams.push((1, keys.events_stream(org)));
    }
    let mut replies = futures::stream::iter(streams)
        .map(|(kind, stream)| kind_groups(store, conn.clone(), kind, stream))
        .buffer_unordered(CONCURRENCY);
    while let Some(reply) = replies.next().await {
        let (kind, found) = reply?;
        for (name, lag, pending) in found {
            if let Some(e) = out.get_mut(&(KINDS[kind], name)) {
                e.0 += lag.unwrap_or(0);
                e.1 += pending;
            }
        }
    }
    Ok(out)
}

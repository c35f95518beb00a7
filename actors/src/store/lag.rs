//! Consumer lag of the firehose: every `streams.lag_sample_secs`, `XINFO GROUPS` on each shard,
//! summed per group and entry type into `consumer_lag{stream,group}` (entries not yet delivered
//! to the group) and `consumer_pending{stream,group}` (delivered, not acknowledged). Group
//! names label the series, so at most [`MAX_GROUPS`] are reported (the first by name); no
//! per-organization label ever.
use std::collections::BTreeMap;
use std::time::Duration;

use super::Store;
use crate::shutdown::Shutdown;

/// Groups reported at most (a label value each).
pub const MAX_GROUPS: usize = 20;

/// Per (entry type, group): (lag, pending).
type Sample = BTreeMap<(&'static str, String), (i64, i64)>;

/// Samples until `stop`; does nothing when `every` is zero.
pub async fn sample_loop(store: Store, shards: u32, every: Duration, stop: Shutdown) {
    if every.is_zero() || shards == 0 {
        return;
    }
    let mut shown: Sample = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sample(&store, shards).await {
            Ok(now) => {
                let m = store.metrics();
                for key in shown.keys().filter(|k| !now.contains_key(*k)) {
                    let _ = m.consumer_lag.remove_label_values(&[key.0, &key.1]);
                    let _ = m.consumer_pending.remove_label_values(&[key.0, &key.1]);
                }
                for ((kind, group), (lag, pending)) in &now {
                    m.consumer_lag
                        .with_label_values(&[*kind, group.as_str()])
                        .set(*lag);
                    m.consumer_pending
                        .with_label_values(&[*kind, group.as_str()])
                        .set(*pending);
                }
                shown = now;
            }
            Err(e) => tracing::debug!(error = %e, "consumer lag not sampled"),
        }
    }
}

async fn sample(store: &Store, shards: u32) -> Result<Sample, super::StoreError> {
    let keys = store.keys();
    let mut out = Sample::new();
    let mut conn = store.conn()?;
    for n in 0..shards {
        for (kind, stream) in [
            ("status", keys.firehose_status(n)),
            ("events", keys.firehose_events(n)),
        ] {
            let reply: Result<Vec<BTreeMap<String, redis::Value>>, _> = store
                .bounded(
                    redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&stream)
                        .query_async(&mut conn),
                )
                .await;
            let groups = match reply {
                Ok(g) => g,
                // A shard not written yet has no stream (ERR no such key): no groups.
                Err(super::StoreError::Redis(e)) if e.to_string().contains("no such key") => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            for g in groups {
                let text = |k: &str| match g.get(k) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    _ => String::new(),
                };
                let int = |k: &str| match g.get(k) {
                    Some(redis::Value::Int(i)) => Some(*i),
                    _ => None,
                };
                let name = text("name");
                let entry = (kind, name);
                if !out.contains_key(&entry) && out.len() >= MAX_GROUPS * 2 {
                    continue;
                }
                let e = out.entry(entry).or_default();
                // `lag` is unknown (nil) after deletions inside the group's range: count the
                // pending entries only then.
                e.0 += int("lag").unwrap_or(0);
                e.1 += int("pending").unwrap_or(0);
            }
        }
    }
    Ok(out)
}

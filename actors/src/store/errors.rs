//! The support log: every error the engine answered with a trackingId, findable by that id for
//! `support.errors_retention_secs` (`GET /admin/errors/<trackingId>`, `xapi-stream support`).
//! One hash per hour, `<p>-audit:{errors}:<hour>` (trackingId → JSON record), expiring with
//! the retention (outside `<p>:`, so that a refused request writes nothing among the data); a lookup reads every hour of the retention in one pipeline (169 `HGET`s for 7
//! days, all in the `{errors}` slot).
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// One error answered to a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    #[serde(rename = "trackingId")]
    pub tracking_id: String,
    pub time: DateTime<Utc>,
    pub status: u16,
    /// `METHOD /path` (the path without its query).
    pub endpoint: String,
    /// The tenant the request named, when it named one.
    pub tenant: Option<String>,
    /// A short fixed word (`bad_signature`, `not_found`, …).
    pub reason: String,
    pub description: String,
}

const HOUR: i64 = 3600;
/// Errors the recent list keeps.
const RECENT: usize = 50;

fn hour_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(HOUR)
}

impl Store {
    /// Writes `records` into their hours' hashes (one pipeline per hour).
    pub async fn record_errors(
        &self,
        records: &[ErrorRecord],
        retention: Duration,
    ) -> Result<(), StoreError> {
        let mut by_hour: std::collections::BTreeMap<i64, Vec<&ErrorRecord>> = Default::default();
        for r in records {
            by_hour.entry(hour_of(r.time)).or_default().push(r);
        }
        let ttl = retention.as_secs() + HOUR as u64;
        for (hour, recs) in by_hour {
            let key = self.keys().errors(hour);
            let mut pipe = redis::pipe();
            let hset = pipe.cmd("HSET").arg(&key);
            for r in recs {
                let json = serde_json::to_string(r).expect("a record serializes");
                hset.arg(&r.tracking_id).arg(json);
            }
            pipe.ignore().cmd("EXPIRE").arg(&key).arg(ttl).ignore();
            self.query_pipe::<()>(&pipe).await?;
        }
        // The latest few, newest first, for the console's overview (same slot, `{errors}`).
        let recent = self.keys().errors_recent();
        let mut pipe = redis::pipe();
        let push = pipe.cmd("LPUSH").arg(&recent);
        // LPUSH puts each argument at the head in turn: the batch's newest goes last.
        for r in &records[records.len().saturating_sub(RECENT)..] {
            push.arg(serde_json::to_string(r).expect("a record serializes"));
        }
        pipe.ignore()
            .cmd("LTRIM")
            .arg(&recent)
            .arg(0)
            .arg(RECENT as i64 - 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&recent)
            .arg(ttl)
            .ignore();
        if !records.is_empty() {
            self.query_pipe::<()>(&pipe).await?;
        }
        Ok(())
    }

    /// The latest `n` errors recorded (at most 50), newest first.
    pub async fn recent_errors(&self, n: usize) -> Result<Vec<ErrorRecord>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let list: Vec<String> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(self.keys().errors_recent())
                    .arg(0)
                    .arg(n.min(RECENT) as i64 - 1),
            )
            .await?;
        Ok(list
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// The error answered with `tracking_id` within `retention` of `now`, if recorded.
    pub async fn find_error(
        &self,
        tracking_id: &str,
        retention: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<ErrorRecord>, StoreError> {
        let newest = hour_of(now);
        let hours = retention.as_secs() as i64 / HOUR + 1;
        let mut pipe = redis::pipe();
        for h in (newest - hours..=newest).rev() {
            pipe.cmd("HGET").arg(self.keys().errors(h)).arg(tracking_id);
        }
        let found: Vec<Option<String>> = self.query_pipe(&pipe).await?;
        found
            .into_iter()
            .flatten()
            .next()
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }
}

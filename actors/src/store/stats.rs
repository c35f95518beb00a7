//! Fleet-wide figures for the console's overview, written by every replica's once-a-second
//! counter flush (never on the write path): per minute, the messages written and the webhook
//! answers by result. One hash per hour in the `{stats}` slot, kept three hours.
use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Hours a figure is kept (the overview shows the last one).
const KEEP_SECS: u64 = 3 * 3600;

/// What one replica adds for one flush.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FleetCounts {
    pub messages: u64,
    /// Webhook answers by result label, only those that moved.
    pub webhooks: Vec<(&'static str, u64)>,
}

impl FleetCounts {
    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.webhooks.is_empty()
    }
}

/// The last hour as the overview shows it.
#[derive(Debug, Default, Clone)]
pub struct FleetHour {
    /// Messages written in each of the last 60 full minutes, oldest first, every replica's.
    pub per_minute: Vec<u64>,
    /// Messages written so far in the current minute.
    pub this_minute: u64,
    /// Webhook answers by result over the last 60 full minutes and this one.
    pub webhooks: Vec<(String, u64)>,
}

fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

impl Store {
    /// Adds one flush's figures to the minute of `at` (one transaction in the `{stats}` slot).
    pub async fn add_fleet_counts(
        &self,
        at: DateTime<Utc>,
        counts: &FleetCounts,
    ) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let minute = minute_of(at);
        let hour = minute.div_euclid(60);
        let keys = self.keys();
        let (messages, webhooks) = (keys.fleet_messages(hour), keys.fleet_webhooks(hour));
        let mut pipe = redis::pipe();
        pipe.atomic();
        if counts.messages > 0 {
            pipe.cmd("HINCRBY")
                .arg(&messages)
                .arg(minute)
                .arg(counts.messages)
                .ignore()
                .cmd("EXPIRE")
                .arg(&messages)
                .arg(KEEP_SECS)
                .ignore();
        }
        for (result, n) in &counts.webhooks {
            pipe.cmd("HINCRBY")
                .arg(&webhooks)
                .arg(format!("{minute}:{result}"))
                .arg(*n)
                .ignore();
        }
        if !counts.webhooks.is_empty() {
            pipe.cmd("EXPIRE").arg(&webhooks).arg(KEEP_SECS).ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }

    /// The last hour before `now`, every replica's figures (four `HGETALL`s).
    pub async fn fleet_hour(&self, now: DateTime<Utc>) -> Result<FleetHour, StoreError> {
        let current = minute_of(now);
        let first = current - 60;
        let keys = self.keys();
        let mut pipe = redis::pipe();
        for hour in [first.div_euclid(60), current.div_euclid(60)] {
            pipe.cmd("HGETALL").arg(keys.fleet_messages(hour));
            pipe.cmd("HGETALL").arg(keys.fleet_webhooks(hour));
        }
        let all: Vec<Vec<(String, u64)>> = self.query_pipe(&pipe).await?;
        let mut hour = FleetHour {
            per_minute: vec![0; 60],
            ..Default::default()
        };
        let mut results: std::collections::BTreeMap<String, u64> = Default::default();
        // 61 minutes always span two hours (the first's and the current one's).
        for (i, fields) in all.into_iter().enumerate() {
            let is_messages = i % 2 == 0;
            for (field, n) in fields {
                let (minute, result) = match field.split_once(':') {
                    Some((m, r)) => (m, Some(r)),
                    None => (field.as_str(), None),
                };
                let Ok(minute) = minute.parse::<i64>() else {
                    continue;
                };
                if minute < first || minute > current {
                    continue;
                }
                match (is_messages, result) {
                    (true, _) if minute == current => hour.this_minute += n,
                    (true, _) => hour.per_minute[(minute - first) as usize] += n,
                    (false, Some(r)) => *results.entry(r.to_string()).or_default() += n,
                    (false, None) => {}
                }
            }
        }
        hour.webhooks = results.into_iter().collect();
        Ok(hour)
    }
}

/// A queue tenant whose polls fail, as its owner reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PollsFailing {
    pub since: DateTime<Utc>,
    pub error: String,
}

impl Store {
    /// Reports that `tenant_id`'s queue polls fail (its owner, on the first failure in a row).
    pub async fn set_polls_failing(
        &self,
        tenant_id: &str,
        failing: &PollsFailing,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(failing).expect("serializes");
        self.query(
            redis::cmd("HSET")
                .arg(self.keys().polls_failing())
                .arg(tenant_id)
                .arg(json),
        )
        .await
    }

    /// Reports that `tenant_id`'s queue polls succeed again.
    pub async fn clear_polls_failing(&self, tenant_id: &str) -> Result<(), StoreError> {
        self.query(
            redis::cmd("HDEL")
                .arg(self.keys().polls_failing())
                .arg(tenant_id),
        )
        .await
    }

    /// Every tenant whose queue polls fail, by tenant id.
    pub async fn polls_failing(&self) -> Result<Vec<(String, PollsFailing)>, StoreError> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().polls_failing()))
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(id, j)| Some((id, serde_json::from_str(&j).ok()?)))
            .collect())
    }
}

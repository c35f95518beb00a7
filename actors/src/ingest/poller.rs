//! The queue poller of one tenant: long-polls the `pollUrl` with the tenant's token and hands
//! every message to the stream writer. It never holds more than one batch: the next poll is
//! sent only after the previous batch is durable in Redis (Webex keeps unpolled messages for
//! 10 minutes, so pausing under backpressure loses nothing).
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::shutdown::Shutdown;
use crate::tenant::{ChildError, Refusal, TenantShared, WithToken};
use crate::webex::http1::{self, Connection};
use crate::webex::polls::PollSlot;

/// Largest pause after failed polls; the first is `ingest.poll_retry_secs` (the protocol
/// suggests 10 s), doubling up to this cap, jittered ±20 %.
pub const POLL_RETRY_CAP: Duration = Duration::from_secs(60);
/// A long-poll waits up to 20 s on the server; allow this much more before giving up.
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(35);
/// The most messages one poll answers (the protocol's): fewer means the queue was empty.
const MAX_MESSAGES_PER_POLL: usize = 10;
/// With fewer free places than this in the writer's queue, polling pauses.
const MIN_FREE_PLACES: usize = 64;
/// How often to look again while paused for backpressure.
const BACKPRESSURE_PAUSE: Duration = Duration::from_millis(200);
/// How long a waiting poll is kept once the process shuts down. A server that took messages
/// for it just before has answered by then (the answer is one round trip away); abandoning at
/// once lost such batches in the drain test (30 of 200 messages, 1 run in 6). Only messages
/// the server takes within a round trip of this moment are at risk, as in any crash.
const ABANDON_AFTER: Duration = Duration::from_secs(1);
/// How often to look again while the lease is not fresh enough to poll on.
const LEASE_WAIT: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct PollResponse {
    #[serde(default)]
    messages: Vec<serde_json::Value>,
}

/// Runs until `stop`. Returns `Err` only for failures a restart could mend.
pub async fn run(shared: Arc<TenantShared>, stop: Shutdown) -> Result<(), ChildError> {
    let deps = shared.deps().clone();
    let retry_base = Duration::from_secs_f64(deps.config().ingest.poll_retry_secs);
    let metrics = &deps.metrics();
    let count = |result: &str| metrics.queue_polls_total.with_label_values(&[result]).inc();
    let lease_floor = deps.config().scaling.lease_ttl() / 2;
    let mut failures = 0u32;
    // No poll of this ownership period has succeeded yet (a takeover, a start).
    let mut first = true;
    // Whether the one immediate retry after a success (or the start) is used up.
    let mut retried_at_once = false;
    // A failure reported by an earlier owner (this replica's before a restart, or another's
    // before the lease moved) is withdrawn by this poller's first good poll.
    let mut reported_by_others = true;
    // This poller's failure report was not taken by Redis yet.
    let mut failure_unreported = false;
    // The lean client's connection, kept from one poll to the next.
    let conn = Connection::default();
    loop {
        if stop.is_fired() {
            return Ok(());
        }
        if !shared.reads_queue() {
            // A transport switch removed the queue: this poll loop's work is over (its last
            // batch is written). A failure it reported is withdrawn.
            if shared
                .poller_failing
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                report_polls(&shared, None).await;
            }
            tracing::info!(tenant = %shared.tenant_id, "queue poller stopped: the tenant no longer reads its queue");
            return Ok(());
        }
        if deps.writer().capacity() < MIN_FREE_PLACES {
            count("backpressure");
            metrics.backpressure_rejections_total.inc();
            if sleep_or_stop(BACKPRESSURE_PAUSE, &stop).await {
                return Ok(());
            }
            continue;
        }
        // Poll only on a lease renewed recently (this replica is alive and owns the queue):
        // a poll started on a lapsing lease could overlap with the next owner's first one.
        if shared.claim.valid_for() < lease_floor {
            if sleep_or_stop(LEASE_WAIT, &stop).await {
                return Ok(());
            }
            continue;
        }
        let sent_at = chrono::Utc::now().timestamp_millis();
        let outcome = poll_once(&shared, &stop, &conn).await;
        let delay = match outcome {
            Poll::Skipped => Some(LEASE_WAIT),
            Poll::Messages(n) => {
                if n < MAX_MESSAGES_PER_POLL {
                    shared
                        .queue_drained_at
                        .fetch_max(sent_at, std::sync::atomic::Ordering::Relaxed);
                }
                if shared
                    .poller_failing
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                    || std::mem::take(&mut reported_by_others)
                {
                    failure_unreported = false;
                    // Not taken: the next good poll tries again.
                    reported_by_others = !report_polls(&shared, None).await;
                }
                count(if n == 0 { "empty" } else { "ok" });
                failures = 0;
                first = false;
                retried_at_once = false;
                None
            }
            Poll::Failed(why) if !retried_at_once && (first || why.transport) => {
                // The first poll after taking a tenant over (the previous owner's poll may still
                // be ending; a pooled connection may be stale) and a request that never got an
                // answer are retried at once, once; the backoff starts with the next failure.
                count("error");
                retried_at_once = true;
                tracing::info!(tenant = %shared.tenant_id, error = %why.message, "queue poll failed; retrying at once");
                None
            }
            Poll::Failed(why) => {
                if !shared
                    .poller_failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                    || failure_unreported
                {
                    reported_by_others = false;
                    // Not taken: the next failure tries again.
                    failure_unreported = !report_polls(&shared, Some(&why.message)).await;
                }
                count("error");
                failures += 1;
                let base = retry_base.saturating_mul(1 << (failures - 1).min(4));
                let jitter = 0.8 + 0.4 * rand::random::<f64>();
                let d = base.min(POLL_RETRY_CAP).mul_f64(jitter);
                tracing::warn!(tenant = %shared.tenant_id, failures, error = %why.message, delay = ?d, "queue poll failed");
                Some(d)
            }
        };
        if let Some(d) = delay
            && sleep_or_stop(d, &stop).await
        {
            return Ok(());
        }
    }
}

/// Tells the console's overview (every replica's) that this tenant's polls fail, or succeed
/// again: written on the change only, never per poll. False when Redis did not take it (the
/// caller tries again on its next poll of the same kind).
async fn report_polls(shared: &TenantShared, error: Option<&str>) -> bool {
    let store = shared.deps().store();
    let res = match error {
        Some(e) => {
            let failing = crate::store::stats::PollsFailing {
                since: chrono::Utc::now(),
                error: e.chars().take(200).collect(),
            };
            store.set_polls_failing(&shared.tenant_id, &failing).await
        }
        None => store.clear_polls_failing(&shared.tenant_id).await,
    };
    if let Err(e) = &res {
        tracing::debug!(tenant = %shared.tenant_id, error = %e, "poll state not reported to the overview");
    }
    res.is_ok()
}

enum Poll {
    /// Not sent: the lease is not fresh enough (or we are stopping).
    Skipped,
    Messages(usize),
    Failed(Failure),
}

/// How one poll request ended short of an answer to read.
enum PollCall {
    /// Not sent: the lease is not fresh enough, or we are stopping.
    Skipped,
    Failed(Failure),
    /// 401: the token was refused.
    Unauthorized,
}

impl Refusal for PollCall {
    fn token_refused(&self) -> bool {
        matches!(self, PollCall::Unauthorized)
    }
}

/// A poll's answer, its head read.
enum Answer<'c> {
    Lean(http1::Response<'c>),
    /// The slot is held until the body is read (the poll is in flight on that client).
    Pooled(reqwest::Response, PollSlot),
}

impl Answer<'_> {
    fn status(&self) -> u16 {
        match self {
            Answer::Lean(r) => r.status(),
            Answer::Pooled(r, _) => r.status().as_u16(),
        }
    }

    async fn body(self) -> Result<Vec<u8>, String> {
        match self {
            Answer::Lean(r) => r.body().await.map_err(|e| e.to_string()),
            Answer::Pooled(r, _slot) => r
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| e.without_url().to_string()),
        }
    }
}

/// Why a poll failed.
struct Failure {
    message: String,
    /// No HTTP answer at all (connection refused, reset, closed while sending).
    transport: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            transport: false,
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &Shutdown) -> bool {
    tokio::select! {
        _ = stop.wait() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

async fn poll_once(shared: &Arc<TenantShared>, stop: &Shutdown, conn: &Connection) -> Poll {
    let deps = &shared.deps();
    let Some(poll_url) = shared.poll_url() else {
        return Poll::Failed(String::from("no pollUrl").into());
    };
    let url = match deps.webex().check_url(&poll_url) {
        Ok(u) => u,
        Err(e) => return Poll::Failed(e.to_string().into()),
    };
    let lease_floor = deps.config().scaling.lease_ttl() / 2;
    let sent = shared
        .with_token(|token| {
            let url = url.clone();
            async move {
                // Checked right before each request (the token fetch or a 401 took time): a
                // poll must not start on a lease that could run out while it waits on the
                // server.
                if shared.claim.valid_for() < lease_floor || stop.is_fired() {
                    return Err(PollCall::Skipped);
                }
                // Raced with the process's shutdown only until the answer's headers arrive: a
                // poll that has received nothing by [`ABANDON_AFTER`] into the shutdown is
                // abandoned (the server keeps the messages); one being answered carries
                // messages Webex has removed from its queue, so it is read to the end and its
                // batch written. A handover (this tenant's `stop` alone) lets the poll end by
                // itself: the next owner's first poll waits for it, so one queue never has two
                // pollers.
                let (lean, pooled) = deps.poll_clients();
                let request = async {
                    match lean {
                        Some(lean) => lean
                            .get(conn, &url, token.expose())
                            .await
                            .map(Answer::Lean)
                            .map_err(|e| Failure {
                                transport: e.is_transport(),
                                message: e.to_string(),
                            }),
                        None => {
                            let slot = pooled.slot();
                            slot.client()
                                .get(url)
                                .bearer_auth(token.expose())
                                .timeout(LONG_POLL_TIMEOUT)
                                .send()
                                .await
                                .map(|r| Answer::Pooled(r, slot))
                                .map_err(|e| Failure {
                                    transport: !e.is_timeout(),
                                    message: e.without_url().to_string(),
                                })
                        }
                    }
                };
                let resp = tokio::select! {
                    biased;
                    r = tokio::time::timeout(LONG_POLL_TIMEOUT, request) => match r {
                        Ok(r) => r.map_err(PollCall::Failed)?,
                        Err(_) => return Err(PollCall::Failed(Failure {
                            transport: false,
                            message: format!("no answer within {LONG_POLL_TIMEOUT:?}"),
                        })),
                    },
                    _ = async {
                        deps.shutdown().wait().await;
                        tokio::time::sleep(ABANDON_AFTER).await;
                    } => return Err(PollCall::Skipped),
                };
                if resp.status() == 401 {
                    shared
                        .metrics()
                        .queue_polls_total
                        .with_label_values(&["unauthorized"])
                        .inc();
                    return Err(PollCall::Unauthorized);
                }
                Ok(resp)
            }
        })
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(WithToken::Call(PollCall::Skipped)) => return Poll::Skipped,
        Err(WithToken::Call(PollCall::Failed(f))) => return Poll::Failed(f),
        Err(WithToken::Call(PollCall::Unauthorized)) => {
            return Poll::Failed(String::from("unauthorized twice").into());
        }
        Err(WithToken::Token(e)) => return Poll::Failed(format!("token: {e}").into()),
    };
    let status = resp.status();
    if !(200..300).contains(&status) {
        return Poll::Failed(format!("pollUrl answered {status}").into());
    }
    let body = match tokio::time::timeout(LONG_POLL_TIMEOUT, resp.body()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Poll::Failed(format!("poll response: {e}").into()),
        Err(_) => return Poll::Failed(String::from("poll response: timed out").into()),
    };
    let body: PollResponse = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return Poll::Failed(format!("unreadable poll response: {e}").into()),
    };
    let n = body.messages.len();
    super::polled(shared, body.messages, stop).await;
    Poll::Messages(n)
}

//! The stream writer: applies verified messages to Redis with group commit. Callers submit a
//! message and wait; writer tasks drain the bounded queue in batches, send each batch as one
//! pipeline of script calls (one round trip), and answer every caller once its batch is
//! durable. A full queue is refused at once (backpressure), never queued without bound.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};
use crate::protocol::message::{Body, Message, Source};
use crate::shutdown::Shutdown;

/// How long a message's fingerprint is remembered for deduplication: longer than the queue's
/// 10-minute retention plus the 5-minute webhook freshness window.
pub const DEDUPE_TTL: Duration = Duration::from_secs(20 * 60);
/// Largest number of messages in one pipeline.
pub const MAX_BATCH: usize = 256;

const APPLY_LUA: &str = include_str!("apply.lua");

/// What happened to a submitted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written; the number of stream entries it produced (0 when nothing changed).
    Written(u32),
    /// The same message had been applied before: nothing written.
    Duplicate,
}

/// Why a message was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("ingest saturated")]
    Overloaded,
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("writer stopped")]
    Stopped,
}

struct Job {
    msg: Arc<Message>,
    source: Source,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// Handle for submitting messages. Cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    tx: mpsc::Sender<Job>,
    store: Store,
}

/// Writer tuning.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Messages accepted but not yet durable, at most.
    pub queue_capacity: usize,
    /// Concurrent pipelines (batches in flight).
    pub writers: usize,
    pub stream_maxlen: u64,
}

impl StreamWriter {
    /// Starts the writer tasks; they stop after draining once `stop` fires.
    pub fn start(store: Store, cfg: WriterConfig, stop: Shutdown) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue_capacity.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let script = Arc::new(redis::Script::new(APPLY_LUA));
        for _ in 0..cfg.writers.max(1) {
            let store = store.clone();
            let rx = rx.clone();
            let script = script.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                run(store, rx, script, cfg.stream_maxlen, stop).await;
            });
        }
        Self { tx, store }
    }

    /// Submits `msg` and waits until it is durable in Redis (or refused).
    pub async fn write(&self, msg: Arc<Message>, source: Source) -> Result<Applied, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job { msg, source, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        self.store.metrics().ingest_queue_depth.inc();
        rx.await.unwrap_or(Err(WriteError::Stopped))
    }

    /// Free places in the queue (readiness: saturated when none).
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

async fn run(
    store: Store,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    script: Arc<redis::Script>,
    maxlen: u64,
    stop: Shutdown,
) {
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        {
            let mut rx = rx.lock().await;
            let first = tokio::select! {
                j = rx.recv() => j,
                _ = stop.wait() => {
                    // Drain what is already accepted, then stop.
                    rx.try_recv().ok()
                }
            };
            let Some(first) = first else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
        }
        let n = batch.len() as i64;
        let results = apply_batch(&store, &script, maxlen, &batch).await;
        store.metrics().ingest_queue_depth.sub(n);
        for (job, result) in batch.into_iter().zip(results) {
            match result {
                Ok(c) => {
                    let applied = if c < 0 {
                        Applied::Duplicate
                    } else {
                        Applied::Written(c as u32)
                    };
                    if let Applied::Written(k) = applied
                        && k > 0
                    {
                        let stream = if matches!(job.msg.body, Body::Events(_)) {
                            "events"
                        } else {
                            "status"
                        };
                        store
                            .metrics()
                            .stream_entries_total
                            .with_label_values(&[stream])
                            .inc_by(k as u64);
                    }
                    let _ = job.reply.send(Ok(applied));
                }
                Err(text) => {
                    let _ = job.reply.send(Err(WriteError::Unavailable(text)));
                }
            }
        }
    }
}

/// One pipeline for the whole batch — on Redis Cluster one per organization (a pipeline must
/// stay in one slot), sent concurrently. One result per job, in batch order: a failed group
/// fails only its own jobs.
async fn apply_batch(
    store: &Store,
    script: &redis::Script,
    maxlen: u64,
    batch: &[Job],
) -> Vec<Result<i64, String>> {
    let per_job = |res: Result<Vec<i64>, StoreError>, n: usize| -> Vec<Result<i64, String>> {
        match res {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.to_string()); n],
        }
    };
    if !store.is_cluster() {
        return per_job(
            apply_group(store, script, maxlen, batch.iter()).await,
            batch.len(),
        );
    }
    let mut groups: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, job) in batch.iter().enumerate() {
        groups.entry(job.msg.org_id.as_str()).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = groups.into_values().collect();
    let results = futures::future::join_all(
        groups
            .iter()
            .map(|idx| apply_group(store, script, maxlen, idx.iter().map(|&i| &batch[i]))),
    )
    .await;
    let mut out: Vec<Result<i64, String>> = vec![Ok(0); batch.len()];
    for (idx, res) in groups.iter().zip(results) {
        for (&i, r) in idx.iter().zip(per_job(res, idx.len())) {
            out[i] = r;
        }
    }
    out
}

/// One pipeline of `EVALSHA apply.lua`; NOSCRIPT (a restarted Redis) loads the script and
/// retries once — safe because every message is deduplicated by fingerprint.
async fn apply_group<'a>(
    store: &Store,
    script: &redis::Script,
    maxlen: u64,
    jobs: impl Iterator<Item = &'a Job>,
) -> Result<Vec<i64>, StoreError> {
    let started = Instant::now();
    let mut conn = store.conn()?;
    let mut pipe = redis::pipe();
    for job in jobs {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash());
        add_args(&mut cmd, store, &job.msg, job.source, maxlen);
        pipe.add_command(cmd);
    }
    let res: Result<Vec<i64>, StoreError> = store.bounded(pipe.query_async(&mut conn)).await;
    let res = match res {
        Err(StoreError::Redis(e))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            let _: String = store
                .bounded(
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(APPLY_LUA)
                        .query_async(&mut conn),
                )
                .await?;
            store.bounded(pipe.query_async(&mut conn)).await
        }
        other => other,
    };
    store
        .metrics()
        .redis_write_seconds
        .observe(started.elapsed().as_secs_f64());
    res
}

fn add_args(cmd: &mut redis::Cmd, store: &Store, msg: &Message, source: Source, maxlen: u64) {
    let keys = store.keys();
    let org = &msg.org_id;
    cmd.arg(6)
        .arg(keys.status_stream(org))
        .arg(keys.events_stream(org))
        .arg(keys.device_state(org, &msg.device_id))
        .arg(keys.device_stamps(org, &msg.device_id))
        .arg(keys.seen(org, &msg.fingerprint()))
        .arg(keys.tenant(org));
    let kind = if matches!(msg.body, Body::Events(_)) {
        "events"
    } else {
        "status"
    };
    cmd.arg(kind)
        .arg(DEDUPE_TTL.as_secs())
        .arg(maxlen)
        .arg(org)
        .arg(&msg.workspace_id)
        .arg(&msg.device_id)
        .arg(&msg.timestamp)
        .arg(source.as_str())
        .arg(&msg.app_id)
        .arg(msg.ts.timestamp_millis());
    match &msg.body {
        Body::Status {
            updated,
            removed,
            full_sync,
        } => {
            cmd.arg(if *full_sync { "1" } else { "0" })
                .arg(updated.len());
            for (k, v) in updated {
                cmd.arg(k).arg(v.to_string());
            }
            cmd.arg(removed.len());
            for k in removed {
                cmd.arg(k);
            }
        }
        Body::Events(events) => {
            cmd.arg("0").arg(events.len());
            for e in events {
                cmd.arg(&e.key).arg(e.value.to_string()).arg(&e.timestamp);
            }
        }
        Body::HealthCheck => {
            cmd.arg("0").arg(0).arg(0);
        }
    }
}

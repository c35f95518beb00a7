//! The stream writer: applies verified messages to Redis with group commit. Callers submit a
//! message and wait; writer tasks drain the bounded queue in batches, send each batch as one
//! pipeline of script calls (one round trip), and answer every caller once its batch is
//! durable. A full queue is refused at once (backpressure), never queued without bound.
mod args;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use args::{Expiries, Hex, add_args, add_keys, add_org_keys, dedupe_bucket, dedupe_expiry};

use super::trim::{min_id, trim_by_maxlen_now};
use super::{Conn, Store, StoreError};
use crate::protocol::message::{Body, Message, Source};
use crate::shutdown::Shutdown;

/// Deduplication: the fingerprints of applied messages are kept in one set per organization
/// and time bucket of the *message's* timestamp (both copies of a message — webhook retry,
/// webhook and queue — carry the same timestamp, so they meet in the same bucket). One set per
/// bucket instead of a key per message: no keyspace growth with the message rate, a fraction
/// of the memory (a set member vs a key with its own expiry).
pub const DEDUPE_BUCKET: Duration = Duration::from_secs(5 * 60);
/// A bucket is kept this long after its end: longer than the queue's 10-minute retention plus
/// the 5-minute freshness window, so a copy arriving as late as either allows is still found.
/// (Before buckets, each fingerprint was kept 20 minutes from its first write; for any message
/// accepted within those windows this keeps it at least as long.)
pub const DEDUPE_RETENTION: Duration = Duration::from_secs(30 * 60);

/// Largest number of messages in one pipeline.
pub const MAX_BATCH: usize = 256;
/// Messages applied by one script call: enough to spread the call's fixed cost, few enough
/// that one call does not hold Redis for long (a script runs alone).
const MESSAGES_PER_CALL: usize = 64;
/// Keys of an organization and of one message in a call (see apply.lua).
const KEYS_PER_ORG: usize = 2;
const KEYS_PER_MESSAGE: usize = 3;

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
    /// The batch's write failed (every message of the batch gets the same error).
    #[error("redis unavailable: {0}")]
    Unavailable(Arc<StoreError>),
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
    /// The writer tasks, joined by [`StreamWriter::stopped`].
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    cfg: WriterConfig,
    stop: Shutdown,
    /// Distinguishes this writer (and its clones) from other engines' in the same process.
    id: usize,
    /// Messages accepted and not yet answered, across this writer and those standing in for
    /// it on other threads: `queue_capacity` bounds them all together.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// One place in the shared queue budget, given back when dropped.
struct Place<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Place<'a> {
    fn take(queued: &'a std::sync::atomic::AtomicUsize, capacity: usize) -> Option<Self> {
        use std::sync::atomic::Ordering::AcqRel;
        if queued.fetch_add(1, AcqRel) >= capacity {
            queued.fetch_sub(1, AcqRel);
            return None;
        }
        Some(Place(queued))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Ids of writers (see [`StreamWriter::on_this_thread`]).
static NEXT_WRITER_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// Writers started on this thread's runtime, by the id of the writer they stand in for.
    static LOCAL_WRITERS: std::cell::RefCell<std::collections::HashMap<usize, StreamWriter>> =
        Default::default();
}

/// Writer tuning.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Messages accepted but not yet durable, at most.
    pub queue_capacity: usize,
    /// Concurrent pipelines (batches in flight).
    pub writers: usize,
    pub stream_maxlen: u64,
    /// Where entries go and how long they are kept (`[streams]`).
    pub streams: Streams,
    /// Replicas each batch must reach (`WAIT`) before its callers are answered; 0 = none.
    pub wait_replicas: u32,
    /// How long that `WAIT` may take.
    pub wait_timeout: Duration,
}

/// The streams a message's entries go to, and their retention.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    /// Each organization's `<p>:{<org>}:status|events`.
    pub per_org: bool,
    /// Firehose shards `<p>:{all-<n>}:…`; 0 = no firehose.
    pub firehose_shards: u32,
    /// Entries older than this are trimmed (`MINID ~`); zero = by `stream_maxlen` only.
    pub retention: Duration,
}

impl Streams {
    /// Only the organizations' streams, kept by `stream_maxlen` (the defaults before
    /// `[streams]`).
    pub fn per_org_only() -> Self {
        Self {
            per_org: true,
            firehose_shards: 0,
            retention: Duration::ZERO,
        }
    }

    pub fn from_config(c: &crate::config::StreamsConfig) -> Self {
        Self {
            per_org: c.per_org,
            firehose_shards: if c.firehose { c.shards } else { 0 },
            retention: Duration::from_secs(c.retention_secs),
        }
    }
}

/// How a batch is confirmed durable.
#[derive(Debug, Clone, Copy)]
struct Durability {
    maxlen: u64,
    streams: Streams,
    /// The firehose is relayed after the organization's streams are written (Redis Cluster:
    /// see relay.rs), not written by the same script.
    relay: bool,
    /// `WAIT` for this many replicas, this long (None: the master's answer is enough).
    wait: Option<(u32, Duration)>,
}

impl StreamWriter {
    /// Starts the writer tasks; they stop after draining once `stop` fires.
    pub fn start(store: Store, cfg: WriterConfig, stop: Shutdown) -> Self {
        Self::start_with(store, cfg, stop, false)
    }

    /// A writer of the same configuration whose tasks and Redis connection live on the
    /// calling thread's runtime (one per thread, started on first use): an HTTP worker's
    /// requests are then written without handing each message to another thread and back.
    pub fn on_this_thread(&self) -> StreamWriter {
        LOCAL_WRITERS.with(|local| {
            local
                .borrow_mut()
                .entry(self.id)
                .or_insert_with(|| {
                    let mut cfg = self.cfg;
                    cfg.writers = 1;
                    let mut local =
                        Self::start_with(self.store.clone(), cfg, self.stop.clone(), true);
                    local.queued = self.queued.clone();
                    local
                })
                .clone()
        })
    }

    fn start_with(store: Store, cfg: WriterConfig, stop: Shutdown, own_connection: bool) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue_capacity.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let script = Arc::new(redis::Script::new(APPLY_LUA));
        let durability = Durability {
            maxlen: cfg.stream_maxlen,
            streams: cfg.streams,
            relay: cfg.streams.firehose_shards > 0 && store.is_cluster(),
            wait: (cfg.wait_replicas > 0).then_some((cfg.wait_replicas, cfg.wait_timeout)),
        };
        let tasks = (0..cfg.writers.max(1))
            .map(|_| {
                let store = store.clone();
                let rx = rx.clone();
                let script = script.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    run(store, rx, script, durability, own_connection, stop).await;
                })
            })
            .collect();
        Self {
            tx,
            store,
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
            cfg,
            stop,
            id: NEXT_WRITER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            queued: Default::default(),
        }
    }

    /// Resolves once every writer task has ended (after the stop signal, with what was
    /// accepted written).
    pub async fn stopped(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("writer tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Submits `msg` and waits until it is durable in Redis (or refused). A health check has
    /// nothing to write.
    pub async fn write(&self, msg: Arc<Message>, source: Source) -> Result<Applied, WriteError> {
        if matches!(msg.body, Body::HealthCheck) {
            return Ok(Applied::Written(0));
        }
        // Counted until answered, or until the caller gives up waiting (dropped).
        let place =
            Place::take(&self.queued, self.cfg.queue_capacity).ok_or(WriteError::Overloaded)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job { msg, source, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        self.store.metrics().ingest_queue_depth.inc();
        let answer = rx.await.unwrap_or(Err(WriteError::Stopped));
        drop(place);
        answer
    }

    /// Free places in the queue (readiness: saturated when none).
    pub fn capacity(&self) -> usize {
        let queued = self.queued.load(std::sync::atomic::Ordering::Acquire);
        self.cfg.queue_capacity.saturating_sub(queued)
    }
}

async fn run(
    store: Store,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    script: Arc<redis::Script>,
    durability: Durability,
    own_connection: bool,
    stop: Shutdown,
) {
    // With `WAIT`, a connection of this writer's own: WAIT blocks the connection it is sent on
    // until the replicas answer, and it covers exactly the writes made on that connection.
    let mut own: Option<Conn> = None;
    let expiries = Expiries::default();
    let checkpoints = super::relay::Checkpoints::default();
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
        let conn = match (own_connection || durability.wait.is_some(), &own) {
            (false, _) => store.conn(),
            (true, Some(c)) => Ok(c.clone()),
            (true, None) => store.dedicated().await.inspect(|c| own = Some(c.clone())),
        };
        let results = match conn {
            Ok(conn) => {
                let seen = Seen {
                    expiries: &expiries,
                    checkpoints: &checkpoints,
                };
                apply_batch(&store, conn, &script, durability, seen, &batch).await
            }
            Err(e) => vec![Err(Arc::new(e)); batch.len()],
        };
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
                        store
                            .metrics()
                            .entries_written(job.msg.type_str(), u64::from(k));
                    }
                    let _ = job.reply.send(Ok(applied));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(WriteError::Unavailable(e)));
                }
            }
        }
    }
}

/// What a writer remembers of earlier batches, to send less with the next.
#[derive(Clone, Copy)]
struct Seen<'a> {
    expiries: &'a Expiries,
    checkpoints: &'a super::relay::Checkpoints,
}

/// One pipeline for the whole batch — on Redis Cluster one per organization (a pipeline must
/// stay in one slot), sent concurrently, each followed by the relay of its firehose entries
/// when the firehose is on. One result per job, in batch order: a failed group fails only its
/// own jobs.
async fn apply_batch(
    store: &Store,
    conn: Conn,
    script: &redis::Script,
    durability: Durability,
    seen: Seen<'_>,
    batch: &[Job],
) -> Vec<Result<i64, Arc<StoreError>>> {
    let per_job =
        |res: Result<Vec<i64>, StoreError>, n: usize| -> Vec<Result<i64, Arc<StoreError>>> {
            match res {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(Arc::new(e)); n],
            }
        };
    if !store.is_cluster() {
        // The writes and the WAIT for them must reach the same server, even if a Sentinel
        // failover happens in between (a WAIT on the new master would confirm nothing).
        let conn = match conn.pinned().await {
            Ok(c) => c,
            Err(e) => return per_job(Err(e), batch.len()),
        };
        return per_job(
            apply_group(store, conn, script, durability, seen, batch.iter()).await,
            batch.len(),
        );
    }
    let mut groups: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, job) in batch.iter().enumerate() {
        groups.entry(job.msg.org_id.as_str()).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = groups.into_values().collect();
    let results = futures::future::join_all(groups.iter().map(|idx| {
        let mut conn = conn.clone();
        async move {
            let res = apply_group(
                store,
                conn.clone(),
                script,
                durability,
                seen,
                idx.iter().map(|&i| &batch[i]),
            )
            .await?;
            if durability.relay {
                let org = &batch[idx[0]].msg.org_id;
                if let Err(e) = relay_group(store, &mut conn, durability, seen, org).await {
                    // The organization's entries are written (the retries will be duplicates):
                    // counted now, though their callers get an error.
                    for (&i, &n) in idx.iter().zip(&res) {
                        if n > 0 {
                            let msg = &batch[i].msg;
                            store.metrics().entries_written(msg.type_str(), n as u64);
                        }
                    }
                    return Err(e);
                }
            }
            Ok(res)
        }
    }))
    .await;
    let mut out: Vec<Result<i64, Arc<StoreError>>> = vec![Ok(0); batch.len()];
    for (idx, res) in groups.iter().zip(results) {
        for (&i, r) in idx.iter().zip(per_job(res, idx.len())) {
            out[i] = r;
        }
    }
    out
}

/// Copies what the organization's streams gained to its firehose shard (relay.rs), WAITing
/// for the shard's replicas like [`apply_group`] waits for the organization's.
async fn relay_group(
    store: &Store,
    conn: &mut Conn,
    durability: Durability,
    seen: Seen<'_>,
    org: &str,
) -> Result<(), StoreError> {
    let shards = durability.streams.firehose_shards;
    let trim = super::trim::Trim {
        maxlen: durability.maxlen,
        retention: durability.streams.retention,
    };
    let touch = durability.wait.is_some();
    super::relay::relay(store, conn, org, shards, trim, seen.checkpoints, touch).await?;
    if let Some((wanted, timeout)) = durability.wait {
        let shard = super::keys::firehose_shard(org, shards);
        let route = store.keys().firehose_relayed(shard);
        wait_replicas(store, conn, &route, wanted, timeout).await?;
    }
    Ok(())
}

/// One pipeline of `EVALSHA apply.lua`, each call applying up to [`MESSAGES_PER_CALL`] jobs
/// (jobs of one organization on a cluster); NOSCRIPT (a restarted Redis) loads the script and
/// retries once — safe because every message is deduplicated by fingerprint. With `WAIT`, the
/// group fails unless enough replicas confirm it (its messages are on the master; the retries
/// are duplicates, and are confirmed too).
async fn apply_group<'a>(
    store: &Store,
    mut conn: Conn,
    script: &redis::Script,
    durability: Durability,
    seen: Seen<'_>,
    jobs: impl Iterator<Item = &'a Job>,
) -> Result<Vec<i64>, StoreError> {
    let expiries = seen.expiries;
    let started = Instant::now();
    // An organization's messages side by side (its streams and tenant hash are passed once
    // for them); `order[i]` is the job answered by the i-th result.
    let mut jobs: Vec<(usize, &Job)> = jobs.enumerate().collect();
    jobs.sort_by(|(_, x), (_, y)| x.msg.org_id.cmp(&y.msg.org_id));
    let order: Vec<usize> = jobs.iter().map(|(i, _)| *i).collect();
    let jobs: Vec<&Job> = jobs.into_iter().map(|(_, j)| j).collect();
    let mut pipe = redis::pipe();
    let mut new_expiries = Vec::new();
    for chunk in jobs.chunks(MESSAGES_PER_CALL) {
        let groups: Vec<&[&Job]> = chunk
            .chunk_by(|x, y| x.msg.org_id == y.msg.org_id)
            .collect();
        let streams = durability.streams;
        // The firehose in the same script (one Redis), or relayed after it (a cluster: the
        // organization's relay-start marks, until its checkpoints exist).
        let inline_firehose = streams.firehose_shards > 0 && !durability.relay;
        // ARGV 7 holds one organization's marks: with the relay (a cluster), a call holds one
        // organization (apply_batch groups by organization).
        let marks = if durability.relay {
            assert_eq!(groups.len(), 1, "a relayed call holds one organization");
            seen.checkpoints.marks_wanted(&groups[0][0].msg.org_id)
        } else {
            "00"
        };
        let per_org_keys = KEYS_PER_ORG + if inline_firehose { 2 } else { 0 };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(
            groups.len() * per_org_keys
                + usize::from(marks != "00")
                + chunk.len() * KEYS_PER_MESSAGE,
        );
        for group in &groups {
            let org = &group[0].msg.org_id;
            add_org_keys(&mut cmd, store, streams, inline_firehose, org);
            if marks != "00" {
                cmd.arg(store.keys().relay_from(org, streams.firehose_shards));
            }
            for job in group.iter() {
                add_keys(&mut cmd, store, &job.msg);
            }
        }
        let flag = |on: bool| if on { "1" } else { "0" };
        cmd.arg(durability.maxlen)
            .arg(flag(durability.wait.is_some()))
            .arg(min_id(streams.retention))
            .arg(flag(trim_by_maxlen_now()))
            .arg(flag(streams.per_org))
            .arg(flag(inline_firehose))
            .arg(marks);
        for group in &groups {
            // The organization itself only for the firehose's entries (an organization's own
            // carry none since entry schema 2): a long string less per organization.
            if inline_firehose {
                cmd.arg(&group[0].msg.org_id);
            }
            cmd.arg(Hex(group.len()));
            for job in group.iter() {
                let (bucket, expiry) = (dedupe_bucket(&job.msg), dedupe_expiry(&job.msg));
                let known = expiries.is_set(&job.msg.org_id, bucket);
                if !known {
                    new_expiries.push((job.msg.org_id.as_str(), bucket));
                }
                add_args(
                    &mut cmd,
                    &job.msg,
                    job.source,
                    if known { -expiry } else { expiry },
                );
            }
        }
        pipe.add_command(cmd);
    }
    let org = jobs.first().map(|j| j.msg.org_id.clone());
    let res: Result<Vec<Vec<i64>>, StoreError> = store.bounded(pipe.query_async(&mut conn)).await;
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
    match &res {
        Ok(_) => expiries.note(new_expiries),
        // Redis may have restarted (sets lost, recreated without expiry): set them again.
        Err(_) => expiries.forget(),
    }
    let res = res.map(|calls| {
        let mut answers = vec![0i64; order.len()];
        for (slot, r) in order.iter().zip(calls.into_iter().flatten()) {
            answers[*slot] = r;
        }
        answers
    });
    let res = match (res, durability.wait, org) {
        (Ok(v), Some((wanted, timeout)), Some(org)) => {
            let route = store.keys().tenant(&org);
            wait_replicas(store, &mut conn, &route, wanted, timeout).await?;
            Ok(v)
        }
        (res, _, _) => res,
    };
    store
        .metrics()
        .redis_write_seconds
        .observe(started.elapsed().as_secs_f64());
    res
}

/// `WAIT wanted timeout` on `conn`, the connection the writes went over (on a cluster: to the
/// master serving `route_key`'s slot, over the same node connection).
async fn wait_replicas(
    store: &Store,
    conn: &mut Conn,
    route_key: &str,
    wanted: u32,
    timeout: Duration,
) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(wanted).arg(timeout.as_millis() as u64);
    let got: i64 = match conn {
        Conn::Single(_) | Conn::Sentinel(_) => store.bounded(cmd.query_async(conn)).await?,
        Conn::Cluster(c) => {
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let slot = super::key_slot(route_key);
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                slot,
                SlotAddr::Master,
            )));
            let v = store.bounded(c.route_command(cmd, route)).await?;
            redis::from_redis_value(v)
                .map_err(|e| StoreError::Corrupt(format!("WAIT reply: {e}")))?
        }
    };
    if got < i64::from(wanted) {
        store.metrics().replication_waits("short");
        return Err(StoreError::NotReplicated { wanted, got });
    }
    store.metrics().replication_waits("ok");
    Ok(())
}

//! The firehose on Redis Cluster. A shard (`<p>:{all-<n>}:…`) is in another slot than the
//! organization's keys, so the script that applies a message cannot write it. There, the
//! writer applies a batch to the organization's streams as on one Redis, then *relays* what
//! they gained to the shard before answering anyone:
//!
//! 1. the checkpoint: `<p>:{all-<n>}:relayed`, field `<org>:<kind>` = the id of the last entry
//!    of that stream already in the shard. With none yet, the relay starts at the mark that
//!    apply.lua recorded (`HSETNX`) with the first entry written with the firehose on
//!    (`<p>:{<org>}:relay_from:<shards>`);
//! 2. `XRANGE` of the organization's streams after the checkpoint;
//! 3. relay.lua, in the shard's slot: copies the entries after the checkpoint *it* finds and
//!    moves the checkpoint, in one call.
//!
//! Exactly once: an entry is copied by the call that moves the checkpoint past it, and a call
//! skips what is at or before the checkpoint — so concurrent relays (two replicas, a retry)
//! copy each entry once, in stream order. Nothing is lost: a message's caller is answered
//! only after the relay of its organization succeeded; when it fails (or the engine dies
//! between the two steps), the caller gets no 2xx, and the retry — a duplicate, which writes
//! nothing to the organization's streams — runs the relay again, which copies what is
//! missing. So does the organization's next message.
//!
//! Limits, unlike the firehose written in the same script on one Redis: a relay that falls
//! behind the organization's trimming (its shard's master down longer than the retention)
//! cannot copy what was trimmed; turning the firehose off and on again copies what was
//! written meanwhile (the checkpoint is older), in rounds of [`PER_ROUND`], before answering.
use std::collections::HashSet;
use std::sync::Mutex;

pub use super::trim::Trim;
use super::trim::{min_id, trim_by_maxlen_now};
use super::{Conn, Store, StoreError};

static RELAY: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("relay.lua")));

/// Entries read and copied per round (an organization with a longer backlog takes more rounds).
const PER_ROUND: usize = 500;

/// The streams of an organization whose checkpoint exists (their first entries need no
/// relay-start mark any more). Forgotten beyond [`MAX_KNOWN`] (marks are then recorded again:
/// an `HSETNX` that changes nothing).
#[derive(Default)]
pub struct Checkpoints(Mutex<HashSet<(String, Kind)>>);

const MAX_KNOWN: usize = 100_000;

/// An organization's two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Status,
    Events,
}

const KINDS: [Kind; 2] = [Kind::Status, Kind::Events];

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Events => "events",
        }
    }
}

impl Checkpoints {
    /// apply.lua's ARGV 7 for `org`: "1" for each stream whose first entry must be marked.
    pub fn marks_wanted(&self, org: &str) -> &'static str {
        let known = self.0.lock().expect("checkpoints lock");
        let has = |k| known.contains(&(org.to_string(), k));
        match (has(Kind::Status), has(Kind::Events)) {
            (true, true) => "00",
            (true, false) => "01",
            (false, true) => "10",
            (false, false) => "11",
        }
    }

    fn note(&self, org: &str, kind: Kind) {
        let mut known = self.0.lock().expect("checkpoints lock");
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert((org.to_string(), kind));
    }
}

/// Copies the entries of `org`'s streams not yet in its firehose shard (of `shards`) there;
/// returns how many. See the module's text for why this is exactly once. With `touch` the
/// shard's slot is written even when nothing is copied (the caller WAITs for replicas next).
pub async fn relay(
    store: &Store,
    conn: &mut Conn,
    org: &str,
    shards: u32,
    trim: Trim,
    known: &Checkpoints,
    touch: bool,
) -> Result<u64, StoreError> {
    let keys = store.keys();
    let shard = super::keys::firehose_shard(org, shards);
    let checkpoint_key = keys.firehose_relayed(shard);
    let streams = [keys.status_stream(org), keys.events_stream(org)];
    let fields = KINDS.map(|k| format!("{org}:{}", k.as_str()));
    let checkpoints: Vec<Option<String>> = store
        .bounded(
            redis::cmd("HMGET")
                .arg(&checkpoint_key)
                .arg(&fields[..])
                .query_async(conn),
        )
        .await?;
    // Where each stream's relay starts: after its checkpoint, or at its mark (inclusive);
    // None = nothing written with the firehose on yet.
    let mut from: Vec<Option<String>> = checkpoints
        .iter()
        .map(|c| c.as_ref().map(|id| format!("({id}")))
        .collect();
    if from.iter().any(Option::is_none) {
        let marks: Vec<Option<String>> = store
            .bounded(
                redis::cmd("HMGET")
                    .arg(keys.relay_from(org, shards))
                    .arg(&streams[..])
                    .query_async(conn),
            )
            .await?;
        for (f, m) in from.iter_mut().zip(marks) {
            if f.is_none() {
                *f = m;
            }
        }
    }
    for (kind, c) in KINDS.iter().zip(&checkpoints) {
        if c.is_some() {
            known.note(org, *kind);
        }
    }
    let mut copied = 0u64;
    let mut called = false;
    while from.iter().any(Option::is_some) || (touch && !called) {
        let mut pipe = redis::pipe();
        for (stream, f) in streams.iter().zip(&from) {
            // A stream with nothing to read gets an empty range (keeps the replies aligned).
            pipe.cmd("XRANGE")
                .arg(stream)
                .arg(f.as_deref().unwrap_or("+"))
                .arg(if f.is_some() { "+" } else { "-" })
                .arg("COUNT")
                .arg(PER_ROUND);
        }
        type Range = Vec<(String, Vec<Vec<u8>>)>;
        let ranges: Vec<Range> = store.bounded(pipe.query_async(conn)).await?;
        if ranges.iter().all(Vec::is_empty) && (called || !touch) {
            break;
        }
        called = true;
        let mut call = RELAY.prepare_invoke();
        call.key(&checkpoint_key)
            .key(keys.firehose_status(shard))
            .key(keys.firehose_events(shard))
            .arg(trim.maxlen)
            .arg(min_id(trim.retention))
            .arg(if trim_by_maxlen_now() { "1" } else { "0" })
            .arg(org)
            .arg(if touch { "1" } else { "0" });
        for range in &ranges {
            call.arg(range.len());
            for (id, values) in range {
                call.arg(id).arg(values.len());
                for v in values {
                    call.arg(&v[..]);
                }
            }
        }
        let n: u64 = store.bounded(call.invoke_async(conn)).await?;
        copied += n;
        for ((kind, f), range) in KINDS.iter().zip(from.iter_mut()).zip(&ranges) {
            if let Some((last, _)) = range.last() {
                known.note(org, *kind);
                *f = (range.len() == PER_ROUND).then(|| format!("({last}"));
            } else {
                *f = None;
            }
        }
    }
    Ok(copied)
}

//! How streams are trimmed, the same for an organization's streams (the writer's apply.lua)
//! and the firehose shards (the relay's relay.lua): by `stream_maxlen`, or by age with the
//! cap applied now and then.
use std::time::Duration;

/// How shard streams are trimmed (as apply.lua trims them).
#[derive(Debug, Clone, Copy)]
pub struct Trim {
    pub maxlen: u64,
    /// Retention by age; zero = by `maxlen` only.
    pub retention: Duration,
}

/// With retention by age, every this-many-th call also trims by `stream_maxlen` (`XTRIM`):
/// the cap only matters in a burst, and one XADD carries one trim strategy.
const MAXLEN_EVERY: u64 = 16;

/// Script calls made, for [`MAXLEN_EVERY`].
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether this script call also trims by `stream_maxlen` when retention by age is on (one
/// call in [`MAXLEN_EVERY`]).
pub(super) fn trim_by_maxlen_now() -> bool {
    CALLS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(MAXLEN_EVERY)
}

/// The `MINID` threshold of retention by age (milliseconds of the oldest ID kept); "0" = none.
pub(super) fn min_id(retention: Duration) -> String {
    if retention.is_zero() {
        return "0".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // At least 1: "0" means no retention to the script.
    (now.saturating_sub(retention).as_millis().max(1)).to_string()
}

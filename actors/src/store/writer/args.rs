//! How a batch becomes `apply.lua`'s keys and arguments: an organization's keys, each
//! message's dedupe set and expiry (set once per minute per bucket, remembered here), its
//! fields, and numbers written without allocating.
use std::time::{Duration, Instant};

use super::super::Store;
use super::{DEDUPE_BUCKET, DEDUPE_RETENTION, Streams};
use crate::protocol::message::{Body, Message, Source};

/// The keys of an organization in a call: its status and events streams, then (with the
/// firehose in the same call) its shard's.
pub(super) fn add_org_keys(
    cmd: &mut redis::Cmd,
    store: &Store,
    streams: Streams,
    firehose: bool,
    org: &str,
) {
    let keys = store.keys();
    cmd.arg(keys.status_stream(org))
        .arg(keys.events_stream(org));
    if firehose {
        let shard = super::super::keys::firehose_shard(org, streams.firehose_shards);
        cmd.arg(keys.firehose_status(shard))
            .arg(keys.firehose_events(shard));
    }
}

/// The keys of one message in a call: device state, device stamps, dedupe set.
pub(super) fn add_keys(cmd: &mut redis::Cmd, store: &Store, msg: &Message) {
    let keys = store.keys();
    let org = &msg.org_id;
    cmd.arg(keys.device_state(org, &msg.device_id))
        .arg(keys.device_stamps(org, &msg.device_id))
        .arg(keys.seen(org, dedupe_bucket(msg)));
}

/// The dedupe bucket of a message: its timestamp's.
pub(super) fn dedupe_bucket(msg: &Message) -> i64 {
    msg.ts
        .timestamp_millis()
        .div_euclid(DEDUPE_BUCKET.as_millis() as i64)
}

/// When the dedupe bucket of a message expires (Unix seconds): [`DEDUPE_RETENTION`] after the
/// bucket's end, and never sooner than that from now (a message with an old timestamp — a clock
/// off, a queue message as late as retention allows — must not expire its set at once).
pub(super) fn dedupe_expiry(msg: &Message) -> i64 {
    let bucket_secs = DEDUPE_BUCKET.as_secs() as i64;
    let retention = DEDUPE_RETENTION.as_secs() as i64;
    let after_bucket = (dedupe_bucket(msg) + 1) * bucket_secs + retention;
    after_bucket.max(chrono::Utc::now().timestamp() + retention)
}

/// The dedupe buckets whose expiry a writer has set: each is set once per writer, not once
/// per message (an extra command per message when many organizations share a batch). Forgotten
/// after any failed batch (Redis may have restarted and lost them: a set recreated without an
/// expiry would stay forever), beyond [`MAX_EXPIRIES`] entries, and every [`EXPIRIES_FOR`].
pub(super) struct Expiries(std::sync::Mutex<(std::collections::HashSet<(String, i64)>, Instant)>);

/// Forget them all beyond this many (they are set again once each: harmless).
const MAX_EXPIRIES: usize = 100_000;

/// ... and this often.
const EXPIRIES_FOR: Duration = Duration::from_secs(60);

impl Default for Expiries {
    fn default() -> Self {
        Self(std::sync::Mutex::new((Default::default(), Instant::now())))
    }
}

impl Expiries {
    pub(super) fn is_set(&self, org: &str, bucket: i64) -> bool {
        let mut known = self.0.lock().expect("expiries lock");
        if known.1.elapsed() > EXPIRIES_FOR || known.0.len() > MAX_EXPIRIES {
            *known = (Default::default(), Instant::now());
        }
        known.0.contains(&(org.to_string(), bucket))
    }

    pub(super) fn note(&self, set: Vec<(&str, i64)>) {
        let mut known = self.0.lock().expect("expiries lock");
        known
            .0
            .extend(set.into_iter().map(|(o, b)| (o.to_string(), b)));
    }

    pub(super) fn forget(&self) {
        self.0.lock().expect("expiries lock").0.clear();
    }
}

/// The arguments of one message in a call (see apply.lua); `expiry` of its dedupe set,
/// negative when already set.
pub(super) fn add_args(cmd: &mut redis::Cmd, msg: &Message, source: Source, expiry: i64) {
    cmd.arg(msg.type_str())
        .arg(&msg.workspace_id)
        .arg(&msg.device_id)
        .arg(&msg.timestamp)
        .arg(source.as_str())
        .arg(Stamp(msg.ts.timestamp_millis()))
        .arg(&msg.fingerprint_bytes()[..])
        .arg(expiry);
    match &msg.body {
        Body::Status {
            updated,
            removed,
            full_sync,
        } => {
            cmd.arg(if *full_sync { "1" } else { "0" })
                .arg(Hex(updated.len()));
            for (k, v) in updated {
                cmd.arg(k).arg(v.to_string());
            }
            cmd.arg(Hex(removed.len()));
            for k in removed {
                cmd.arg(k);
            }
        }
        Body::Events(events) => {
            cmd.arg("0").arg(Hex(events.len()));
            for e in events {
                cmd.arg(&e.key).arg(e.value.to_string()).arg(&e.timestamp);
            }
        }
        // Never queued (see `StreamWriter::write`).
        Body::HealthCheck => {}
    }
}

/// A count for apply.lua: hexadecimal, which the script reads with `tonumber(s, 16)` (strtoul)
/// instead of Lua 5.1's decimal `tonumber(s)` (strtod; read that way, a message's counts and
/// stamp cost Redis ≈ 3,500 more instructions).
pub(super) struct Hex(pub(super) usize);

/// A message's millisecond timestamp for apply.lua, which keeps it as the keys' stamp:
/// `0x<hex>` (read with strtoul, see [`Hex`]), decimal when negative.
pub(super) struct Stamp(pub(super) i64);

impl redis::ToRedisArgs for Hex {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        write_formatted(out, format_args!("{:x}", self.0));
    }
}

impl redis::ToRedisArgs for Stamp {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        if self.0 >= 0 {
            write_formatted(out, format_args!("0x{:x}", self.0));
        } else {
            write_formatted(out, format_args!("{}", self.0));
        }
    }
}

/// Formats a number into an argument without allocating (as `.arg(n)` does for a plain number).
pub(super) fn write_formatted<W: ?Sized + redis::RedisWrite>(
    out: &mut W,
    args: std::fmt::Arguments,
) {
    use std::io::Write;
    // "0x" and 16 hex digits, or a sign and 19 decimal ones, at most.
    let mut buf = [0u8; 24];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    cursor.write_fmt(args).expect("a number fits in 24 bytes");
    let len = cursor.position() as usize;
    out.write_arg(&buf[..len]);
}

#[cfg(test)]
mod tests {
    use super::{Hex, Stamp};
    use redis::ToRedisArgs;

    #[test]
    fn counts_and_stamps_are_written_as_apply_lua_reads_them() {
        assert_eq!(Hex(0).to_redis_args(), vec![b"0".to_vec()]);
        assert_eq!(Hex(255).to_redis_args(), vec![b"ff".to_vec()]);
        assert_eq!(
            Stamp(1_734_676_161_976).to_redis_args(),
            vec![b"0x193e2c1a5b8".to_vec()]
        );
        assert_eq!(
            Stamp(i64::MAX).to_redis_args(),
            vec![b"0x7fffffffffffffff".to_vec()]
        );
        assert_eq!(
            Stamp(i64::MIN).to_redis_args(),
            vec![b"-9223372036854775808".to_vec()]
        );
    }
}

//! A tenant's message counts: counted per message on the hot path, flushed to the stored
//! counters by the registry (once a second, for the tenants that received something), and the
//! messages-per-minute rate the console shows.
use chrono::Utc;

use super::TenantShared;

/// Messages counted in the current and the previous minute.
#[derive(Default, Clone, Copy)]
pub(super) struct MinuteRate {
    minute: i64,
    count: u64,
    previous: u64,
}
impl TenantShared {
    /// One message written for this tenant by `source` (counted in its `messages_received`).
    pub(crate) fn count_received(&self, source: crate::protocol::message::Source) {
        use std::sync::atomic::Ordering;
        let i = usize::from(source != crate::protocol::message::Source::Webhook);
        self.unflushed[i].fetch_add(1, Ordering::Relaxed);
        if !self.flush_queued.load(Ordering::Relaxed)
            && !self.flush_queued.swap(true, Ordering::AcqRel)
        {
            self.queue_for_flush();
        }
    }

    pub(super) fn queue_for_flush(&self) {
        self.deps
            .to_flush
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self.tenant_id.clone());
    }

    /// Takes the counts not yet stored: `[webhook, queue]`.
    pub(crate) fn take_unflushed(&self) -> [u64; 2] {
        use std::sync::atomic::Ordering::AcqRel;
        // Unqueued first: a message counted after this queues the tenant again.
        self.flush_queued
            .store(false, std::sync::atomic::Ordering::Release);
        [
            self.unflushed[0].swap(0, AcqRel),
            self.unflushed[1].swap(0, AcqRel),
        ]
    }

    /// Adds `n` messages written now to the per-minute rate.
    pub(crate) fn count_rate(&self, n: u64) {
        let minute = Utc::now().timestamp().div_euclid(60);
        let mut r = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.minute != minute {
            r.previous = if r.minute == minute - 1 { r.count } else { 0 };
            r.minute = minute;
            r.count = 0;
        }
        r.count += n;
    }

    /// Messages this replica wrote for the tenant in the last full minute.
    pub fn messages_last_minute(&self) -> u64 {
        let minute = Utc::now().timestamp().div_euclid(60);
        let r = *self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match minute - r.minute {
            0 => r.previous,
            1 => r.count,
            _ => 0,
        }
    }

    /// Gives counts back that could not be stored (they are added on the next flush).
    pub(crate) fn restore_unflushed(&self, counts: [u64; 2]) {
        use std::sync::atomic::Ordering::AcqRel;
        self.unflushed[0].fetch_add(counts[0], AcqRel);
        self.unflushed[1].fetch_add(counts[1], AcqRel);
        if !self.flush_queued.swap(true, AcqRel) {
            self.queue_for_flush();
        }
    }

    /// The counts not yet stored, without taking them: `[webhook, queue]`.
    pub(crate) fn peek_unflushed(&self) -> [u64; 2] {
        use std::sync::atomic::Ordering::Acquire;
        [
            self.unflushed[0].load(Acquire),
            self.unflushed[1].load(Acquire),
        ]
    }
}

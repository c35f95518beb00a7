//! This replica's claim on one tenant: the lease it holds on it (the fencing epoch and until
//! when it may act on it) and the owned work running under that lease. The view is
//! conservative: validity counts from when the acquiring or renewing request was *sent*, so
//! local time can only run out before Redis expires the key (barring a process pause, which is
//! what the epoch fences — see docs/scaling.md). (The lease itself, in Redis, is
//! `crate::store::lease`; the rounds that acquire and renew it are `crate::ownership`.)
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// This replica's claim on a tenant.
#[derive(Default)]
pub struct Claim {
    held: Mutex<Option<(u64, Instant)>>,
    /// The supervisor runs the owned work (set when it starts it, cleared when it stops it).
    owning: AtomicBool,
    /// Owned work still running (children, an exchange in flight): it finishes its current
    /// step after the work is stopped.
    running: AtomicUsize,
    /// Set while an older supervisor of the tenant is still stopping (re-activation): the new
    /// one must not start owned work before.
    blocked: AtomicBool,
}

impl Claim {
    /// Records a successful acquisition or renewal sent at `sent` for `ttl`.
    pub fn set(&self, epoch: u64, sent: Instant, ttl: Duration) {
        *self.held.lock().expect("claim lock") = Some((epoch, sent + ttl));
    }

    /// Forgets the lease; returns the epoch that was held.
    pub fn clear(&self) -> Option<u64> {
        self.held.lock().expect("claim lock").take().map(|(e, _)| e)
    }

    /// The epoch held, valid or not (to renew or release it).
    pub fn held_epoch(&self) -> Option<u64> {
        self.held.lock().expect("claim lock").map(|(e, _)| e)
    }

    /// The fencing epoch, while the lease is valid for at least `margin` more.
    pub fn epoch_for(&self, margin: Duration) -> Option<u64> {
        let held = *self.held.lock().expect("claim lock");
        held.filter(|(_, until)| until.saturating_duration_since(Instant::now()) >= margin)
            .map(|(e, _)| e)
    }

    /// Time left on the lease (zero when none).
    pub fn valid_for(&self) -> Duration {
        self.held
            .lock()
            .expect("claim lock")
            .map(|(_, until)| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// Whether the supervisor runs the owned work.
    pub fn is_owning(&self) -> bool {
        self.owning.load(Ordering::Acquire)
    }

    /// The supervisor started (`true`) or stopped (`false`) the owned work.
    pub fn set_owning(&self, owning: bool) {
        self.owning.store(owning, Ordering::Release);
    }

    /// Whether owned work must wait for an older supervisor to stop.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// An older supervisor is stopping (`true`), or has stopped (`false`: its owned work is
    /// over, so the flag that it owns is cleared too).
    pub fn set_blocked(&self, blocked: bool) {
        if !blocked {
            self.set_owning(false);
        }
        self.blocked.store(blocked, Ordering::Release);
    }

    /// Counts a piece of owned work for as long as the guard lives (dropped on exit or
    /// cancellation).
    pub fn child_guard(self: &std::sync::Arc<Self>) -> ChildGuard {
        self.running.fetch_add(1, Ordering::AcqRel);
        ChildGuard(self.clone())
    }

    /// Owned work still running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

/// See [`Claim::child_guard`].
pub struct ChildGuard(std::sync::Arc<Claim>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

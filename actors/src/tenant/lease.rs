//! This replica's view of one tenant's lease: the fencing epoch it holds and until when it may
//! act on it. The view is conservative: validity counts from when the acquiring or renewing
//! request was *sent*, so local time can only run out before Redis expires the key (barring
//! a process pause, which is what the epoch fences — see docs/scaling.md).
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The lease of one tenant as this replica sees it.
#[derive(Default)]
pub struct LeaseCell {
    held: Mutex<Option<(u64, Instant)>>,
    /// The supervisor runs the owned work (set on `Acquired`, cleared on `Released`).
    pub owning: AtomicBool,
    /// Owned children still running (they finish their current work after a release).
    pub running: AtomicUsize,
    /// Set while an older supervisor of the tenant is still stopping (re-activation): the new
    /// one must not start owned work before.
    pub blocked: AtomicBool,
}

impl LeaseCell {
    /// Records a successful acquisition or renewal sent at `sent` for `ttl`.
    pub fn set(&self, epoch: u64, sent: Instant, ttl: Duration) {
        *self.held.lock().expect("lease lock") = Some((epoch, sent + ttl));
    }

    /// Forgets the lease; returns the epoch that was held.
    pub fn clear(&self) -> Option<u64> {
        self.held.lock().expect("lease lock").take().map(|(e, _)| e)
    }

    /// The epoch held, valid or not (to renew or release it).
    pub fn held_epoch(&self) -> Option<u64> {
        self.held.lock().expect("lease lock").map(|(e, _)| e)
    }

    /// The fencing epoch, while the lease is valid for at least `margin` more.
    pub fn epoch_for(&self, margin: Duration) -> Option<u64> {
        let held = *self.held.lock().expect("lease lock");
        held.filter(|(_, until)| until.saturating_duration_since(Instant::now()) >= margin)
            .map(|(e, _)| e)
    }

    /// Time left on the lease (zero when none).
    pub fn valid_for(&self) -> Duration {
        self.held
            .lock()
            .expect("lease lock")
            .map(|(_, until)| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    pub fn is_owning(&self) -> bool {
        self.owning.load(Ordering::Acquire)
    }

    /// Counts an owned child for as long as the guard lives (dropped on exit or cancellation).
    pub fn child_guard(self: &std::sync::Arc<Self>) -> ChildGuard {
        self.running.fetch_add(1, Ordering::AcqRel);
        ChildGuard(self.clone())
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

/// See [`LeaseCell::child_guard`].
pub struct ChildGuard(std::sync::Arc<LeaseCell>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

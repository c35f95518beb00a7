//! One tenant's device-API gate: state every device-API call of the tenant shares (the calls
//! themselves are `crate::devices`).
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// One tenant's device-API gate: bounded concurrency, the rate-limit window, and the
/// single-flight lock of inventory syncs.
pub struct DeviceGate {
    pub(crate) permits: Semaphore,
    /// No call of this tenant before this instant (set from a 429's `Retry-After`).
    not_before: StdMutex<Option<Instant>>,
    /// Held for a whole inventory sync: periodic and on-demand syncs never overlap.
    pub(crate) inventory: tokio::sync::Mutex<()>,
}

impl DeviceGate {
    pub fn new(max_concurrency: usize) -> Self {
        Self {
            permits: Semaphore::new(max_concurrency.max(1)),
            not_before: StdMutex::new(None),
            inventory: tokio::sync::Mutex::new(()),
        }
    }

    /// Holds back every call until `until` (later windows win).
    pub(crate) fn block_until(&self, until: Instant) {
        let mut nb = self.not_before.lock().expect("gate lock");
        if nb.is_none_or(|cur| cur < until) {
            *nb = Some(until);
        }
    }

    /// Waits out the rate-limit window; when it outlasts `deadline`, returns at once with
    /// the time still to wait.
    pub(crate) async fn wait(&self, deadline: Instant) -> Result<(), Duration> {
        loop {
            let until = *self.not_before.lock().expect("gate lock");
            let now = Instant::now();
            match until {
                Some(u) if u > now => {
                    if u > deadline {
                        return Err(u - now);
                    }
                    tokio::time::sleep_until(u).await;
                }
                _ => return Ok(()),
            }
        }
    }
}

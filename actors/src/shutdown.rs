//! One shutdown signal that reaches every loop: each long-poll, backoff sleep and blocking read
//! races [`Shutdown::wait`], so the process drains promptly and in order.
use tokio::sync::watch;

/// Fires the shutdown signal. Dropping it fires too, so a lost trigger never leaves loops hanging.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A listener for the shutdown signal; cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A connected trigger/listener pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// True once the signal fired.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when the signal fires (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone, which counts as fired.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_listeners_and_on_drop() {
        let (t, s) = channel();
        assert!(!s.is_fired());
        let s2 = s.clone();
        let h = tokio::spawn(async move { s2.wait().await });
        t.fire();
        h.await.unwrap();
        assert!(s.is_fired());
        let (t, s) = channel();
        drop(t);
        s.wait().await;
    }
}

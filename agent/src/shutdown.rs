//! Graceful shutdown: SIGINT or SIGTERM sets a flag that every loop checks
//! between batches and jobs, and wakes any sleep (backoff, throttle, waiting
//! for the next scheduled job). The batch in flight finishes or stays
//! unacknowledged; nothing is half-recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// A handle that turns on at SIGINT or SIGTERM.
    pub fn on_signals() -> Shutdown {
        let s = Shutdown::default();
        let handle = s.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutdown requested; finishing the batch in flight");
            handle.request();
        });
        s
    }

    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, or less if shutdown is requested meanwhile.
    pub async fn sleep(&self, d: Duration) {
        if self.requested() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.notify.notified() => {}
        }
    }
}

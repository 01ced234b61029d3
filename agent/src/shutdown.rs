//! Graceful shutdown: SIGINT or SIGTERM cancels one
//! [`CancellationToken`] that every loop checks between batches and jobs,
//! and that every wait (backoff, throttle, the next scheduled job) and every
//! long-running task (the metrics endpoint) selects on. The batch in flight
//! finishes or stays unacknowledged; nothing is half-recorded.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
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
                // Nothing to listen for once shut down otherwise.
                _ = handle.cancelled() => return,
            }
            tracing::info!("shutdown requested; finishing the batch in flight");
            handle.request();
        });
        s
    }

    pub fn request(&self) {
        self.token.cancel();
    }

    pub fn requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when shutdown is requested.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Sleeps `d`, or less if shutdown is requested meanwhile.
    pub async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.token.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_wakes_every_sleeper_and_later_ones_return_at_once() {
        let s = Shutdown::default();
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.sleep(Duration::from_secs(3600)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        s.request();
        for h in sleepers {
            h.await.unwrap();
        }
        assert!(s.requested());
        s.sleep(Duration::from_secs(3600)).await;
        s.cancelled().await;
    }
}

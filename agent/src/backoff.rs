//! Exponential backoff with full jitter: the n-th wait is a random duration in
//! `[0, min(cap, initial * 2^n)]`, so that many devices retrying after the same
//! outage spread out instead of arriving together.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// A random wait in `[0, ceiling(attempt)]`.
    pub fn wait(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.gen_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        assert_eq!(b.ceiling(500), Duration::from_secs(2));
    }

    #[test]
    fn waits_stay_within_the_ceiling() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..10 {
            for _ in 0..100 {
                assert!(b.wait(attempt, &mut rng) <= b.ceiling(attempt));
            }
        }
    }
}

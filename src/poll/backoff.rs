//! Exponential back-off with "full jitter" for a failing upstream.
//!
//! The n-th consecutive failure waits a random time in
//! `[base·2ⁿ⁻¹ / 2, base·2ⁿ⁻¹]`, capped at `max`: the spread keeps many
//! resources on one failing host from retrying in lock-step, and the lower
//! half-bound keeps the back-off from collapsing to zero. A success resets it.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            max: max.max(base),
            failures: 0,
        }
    }

    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling();
        let floor = ceiling / 2;
        let spread = (ceiling - floor).as_micros() as u64;
        floor + Duration::from_micros(rand::random_range(0..=spread))
    }

    /// The un-jittered delay for the current failure count.
    fn ceiling(&self) -> Duration {
        // 2^20 × 100 ms is already beyond any sensible cap.
        let exp = self.failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << exp).min(self.max)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let mut b = Backoff::new(base, max);
        for n in 1..=40u32 {
            let d = b.next_delay();
            let ceiling = base.saturating_mul(1 << (n - 1).min(20)).min(max);
            assert!(
                d <= ceiling && d >= ceiling / 2,
                "failure {n}: {d:?} vs {ceiling:?}"
            );
        }
        assert_eq!(b.failures(), 40);
        b.reset();
        let d = b.next_delay();
        assert!(d <= base && d >= base / 2);
    }

    #[test]
    fn jitter_spreads() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            b.next_delay();
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "only {} distinct delays", seen.len());
    }
}

//! The retry schedule: after the n-th failed attempt of a message, wait the
//! n-th step (±10 % jitter), or what the receiver's `Retry-After` asks if
//! that is longer (bounded); after the last step the webhook is disabled.

use std::time::Duration;

/// The contract's default steps.
pub const DEFAULT_STEPS: [Duration; 10] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(12 * 3600),
    Duration::from_secs(24 * 3600),
];

/// The longest wait a `Retry-After` can impose when it exceeds the
/// schedule's longest step.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// `webhooks.retry`: the waits between attempts of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    steps: Vec<Duration>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            steps: DEFAULT_STEPS.to_vec(),
        }
    }
}

impl Schedule {
    /// A schedule of `steps` (possibly empty: the first failure disables).
    pub fn new(steps: Vec<Duration>) -> Schedule {
        Schedule { steps }
    }

    /// The steps.
    pub fn steps(&self) -> &[Duration] {
        &self.steps
    }

    /// The wait after failed attempt `failed` (1-based), `None` once the
    /// schedule is exhausted. `retry_after` (the receiver's header) wins
    /// when longer, up to the longer of the schedule's longest step and
    /// [`RETRY_AFTER_CAP`]. `jitter` in [0, 1) picks the point in ±10 %.
    pub fn wait(
        &self,
        failed: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let i = usize::try_from(failed).ok()?.checked_sub(1)?;
        let step = *self.steps.get(i)?;
        let factor = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
        let jittered = step.mul_f64(factor);
        let cap = self
            .steps
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .max(RETRY_AFTER_CAP);
        Some(match retry_after {
            Some(r) if r > jittered => r.min(cap),
            _ => jittered,
        })
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (as a delay from
/// `now_ms`). `None` when it is neither.
pub fn parse_retry_after(v: &str, now_ms: u64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let at = u64::try_from(t.unix_timestamp()).ok()?.saturating_mul(1000);
    Some(Duration::from_millis(at.saturating_sub(now_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_with_jitter_then_exhausted() {
        let s = Schedule::default();
        assert_eq!(s.wait(0, None, 0.5), None);
        assert_eq!(s.wait(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(s.wait(1, None, 0.0), Some(Duration::from_millis(4500)));
        assert_eq!(
            s.wait(2, None, 0.99999),
            Some(Duration::from_secs(30).mul_f64(0.9 + 0.2 * 0.99999))
        );
        assert_eq!(s.wait(10, None, 0.5), Some(Duration::from_secs(86400)));
        assert_eq!(s.wait(11, None, 0.5), None);
        assert_eq!(Schedule::new(vec![]).wait(1, None, 0.5), None);
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_bounded() {
        let s = Schedule::new(vec![Duration::from_millis(100)]);
        let ms = Duration::from_millis;
        assert_eq!(s.wait(1, Some(ms(2000)), 0.5), Some(ms(2000)));
        assert_eq!(s.wait(1, Some(ms(10)), 0.5), Some(ms(100)));
        assert_eq!(
            s.wait(1, Some(Duration::from_secs(1 << 40)), 0.5),
            Some(RETRY_AFTER_CAP)
        );
        assert_eq!(parse_retry_after(" 7 ", 0), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1_445_412_470_000),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("-1", 0), None);
    }
}

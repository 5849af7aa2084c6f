//! Exponential backoff with jitter between attempts to reach something (an upstream, a
//! broker, a serial port); shared by the forwarders and the sources, knows none of them.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": each delay is drawn from the upper half of the
/// current step, so gateways that lost the same cluster at the same moment do not retry in
/// lockstep, yet no delay collapses to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// Starts again from `initial` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_the_jitter_band() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut prev_step = Duration::ZERO;
        for i in 0..12 {
            let d = b.next_delay();
            let step =
                (Duration::from_millis(100) * 2u32.pow(i.min(5))).min(Duration::from_secs(2));
            assert!(
                d >= step / 2 && d <= step,
                "attempt {i}: {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            assert!(step >= prev_step);
            prev_step = step;
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

//! The token bucket of one direction of a [`Link`](super::Link), shared by all its
//! connections because a real uplink is one pipe: over any interval of length `t`, at most
//! `capacity + rate × t` bytes are let through.
//!
//! A taker reserves its bytes at once, even if that drives the bucket below zero, and then
//! sleeps until the debt would be paid. Takers are therefore served in the order they asked
//! and the bound above holds whatever the chunk sizes, with no polling loop.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Bytes per second and a burst allowance, for one direction.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens (bytes) available at `at`; negative while takers wait for their reservation.
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` bytes refilled at `rate` bytes per second (both > 0).
    pub(crate) fn new(rate: u64, capacity: u64) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            capacity: capacity as f64,
            state: Mutex::new(State {
                tokens: capacity as f64,
                at: Instant::now(),
            }),
        }
    }

    /// Waits until `n` bytes may pass.
    pub(crate) async fn take(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` tokens at `now` and says how long the taker must wait before using them.
    fn reserve(&self, n: usize, now: Instant) -> Duration {
        // Every update leaves the state whole, so a poisoned lock is used as is.
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.capacity);
        s.at = now;
        s.tokens -= n as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_the_burst_through_then_makes_takers_wait_in_turn() {
        let b = TokenBucket::new(1000, 500);
        let t0 = Instant::now();
        assert_eq!(b.reserve(500, t0), Duration::ZERO);
        // Empty now: 250 bytes cost a quarter of a second, the next 250 half a second.
        assert_eq!(b.reserve(250, t0), Duration::from_millis(250));
        assert_eq!(b.reserve(250, t0), Duration::from_millis(500));
        // A second later the debt of 500 is paid and 500 tokens are back.
        assert_eq!(b.reserve(500, t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn an_idle_bucket_holds_no_more_than_its_capacity() {
        let b = TokenBucket::new(100, 100);
        let t0 = Instant::now();
        assert_eq!(b.reserve(100, t0 + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(
            b.reserve(50, t0 + Duration::from_secs(60)),
            Duration::from_millis(500)
        );
    }
}

//! The token buckets of a link with a `bandwidth`: one for the whole link, one for the live
//! lane's share of it.
//!
//! # Invariant
//!
//! Over any interval of length *T* the bytes charged to the link bucket are at most
//! `burst + rate × T` plus the debt it is in at the end. Tokens are taken *before* a batch
//! is sent (its estimated size), and only when the bucket holds them, so the debt is at most
//! what one batch came out larger than its estimate; [`Limiter::settle`] then charges the
//! difference to the actual bytes written.

use std::time::{Duration, Instant};

/// Which lane of an upstream's link a send belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The ordered, exactly-once history from the cursor.
    Backlog,
    /// The live lane: each topic's newest reading, and urgent readings.
    Live,
}

impl Lane {
    /// The `lane` label of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Lane::Backlog => "backlog",
            Lane::Live => "live",
        }
    }
}

/// A token bucket: `rate` tokens (bytes) per second, holding at most `burst`. Tokens may
/// go below zero (a debt paid off before the next take).
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now.max(self.at);
    }

    /// How long until the bucket holds `need` tokens (zero if it does now).
    pub fn wait_for(&mut self, need: f64, now: Instant) -> Duration {
        self.refill(now);
        let need = need.min(self.burst);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }

    /// Takes `n` tokens (may leave a debt).
    pub fn take(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// Tokens held now.
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// The bucket's size.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

/// The link's buckets and the learned ratio of wire bytes to raw bytes per lane.
#[derive(Debug)]
pub struct Limiter {
    link: Bucket,
    live: Bucket,
    /// Wire bytes per raw byte of the last batches, per lane (backlog, live).
    ratio: [f64; 2],
}

/// What a batch was admitted with, to be settled once it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    lane: Lane,
    estimate: f64,
    raw: u64,
}

/// Wire bytes a batch is assumed to need beyond its raw bytes times the ratio (request
/// framing, the record batch header).
const FIXED_OVERHEAD: f64 = 256.0;
/// Margin on the learned ratio, so that a batch compressing a little worse than the last
/// one still fits its estimate.
const MARGIN: f64 = 1.25;

impl Limiter {
    /// Buckets for `rate` bytes per second with `burst`, the live lane's share of both
    /// being `live_share`.
    pub fn new(rate: u64, burst: u64, live_share: f64, now: Instant) -> Limiter {
        let share = |v: u64| ((v as f64) * live_share).max(1.0) as u64;
        Limiter {
            link: Bucket::new(rate, burst, now),
            live: Bucket::new(share(rate), share(burst), now),
            ratio: [1.0, 1.0],
        }
    }

    /// The most raw bytes a batch of `lane` should hold, so that its estimate fits the
    /// bucket it waits on.
    pub fn max_raw_bytes(&self, lane: Lane) -> usize {
        let room = match lane {
            Lane::Backlog => self.link.burst() - self.live.burst(),
            Lane::Live => self.live.burst(),
        };
        (((room - FIXED_OVERHEAD) / (self.ratio[lane as usize] * MARGIN)).max(1024.0)) as usize
    }

    /// How long `lane` must wait before a batch of `raw` bytes may go, given whether the
    /// live lane is active (then the backlog leaves the live lane's burst in the link
    /// bucket). Zero: take it now with [`Limiter::take`].
    pub fn wait(&mut self, lane: Lane, raw: u64, live_active: bool, now: Instant) -> Duration {
        let estimate = self.estimate(lane, raw);
        match lane {
            Lane::Backlog => {
                let reserve = if live_active { self.live.burst() } else { 0.0 };
                let need = estimate.min(self.link.burst() - reserve).max(0.0) + reserve;
                self.link.wait_for(need, now)
            }
            Lane::Live => self
                .live
                .wait_for(estimate, now)
                .max(self.link.wait_for(estimate.min(self.live.burst()), now)),
        }
    }

    /// Takes a batch's estimated tokens.
    pub fn take(&mut self, lane: Lane, raw: u64, now: Instant) -> Admitted {
        let estimate = self.estimate(lane, raw);
        self.link.take(estimate, now);
        if lane == Lane::Live {
            self.live.take(estimate, now);
        }
        Admitted {
            lane,
            estimate,
            raw,
        }
    }

    /// Charges what an admitted batch really wrote (`sent` wire bytes) instead of its
    /// estimate, and learns the lane's ratio from it.
    pub fn settle(&mut self, admitted: Admitted, sent: u64, now: Instant) {
        let correction = sent as f64 - admitted.estimate;
        self.link.take(correction, now);
        if admitted.lane == Lane::Live {
            self.live.take(correction, now);
        }
        if admitted.raw > 0 && sent > 0 {
            let observed = (sent as f64 - FIXED_OVERHEAD).max(1.0) / admitted.raw as f64;
            let r = &mut self.ratio[admitted.lane as usize];
            *r = (0.7 * *r + 0.3 * observed).clamp(0.01, 4.0);
        }
    }

    /// Charges bytes written outside any admitted batch (a reconnect's metadata requests).
    pub fn charge(&mut self, lane: Lane, sent: u64, now: Instant) {
        self.link.take(sent as f64, now);
        if lane == Lane::Live {
            self.live.take(sent as f64, now);
        }
    }

    fn estimate(&self, lane: Lane, raw: u64) -> f64 {
        raw as f64 * self.ratio[lane as usize] * MARGIN + FIXED_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 500, t0);
        assert_eq!(b.wait_for(500.0, t0), Duration::ZERO);
        b.take(500.0, t0);
        assert_eq!(b.wait_for(250.0, t0), Duration::from_millis(250));
        assert_eq!(
            b.tokens(t0 + Duration::from_secs(10)),
            500.0,
            "capped at burst"
        );
    }

    #[test]
    fn a_debt_is_paid_off_before_the_next_batch_may_go() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 1000, t0);
        b.take(3000.0, t0);
        // 2000 in debt, then 100 needed: 2.1 s.
        assert_eq!(b.wait_for(100.0, t0), Duration::from_millis(2100));
    }

    /// Drives the limiter as the forwarder does, with batches whose wire size is a fixed
    /// share of their raw size, and checks the invariant over every window.
    fn simulate(live_active: bool, lanes: &[Lane], seconds: u64) -> Vec<(Instant, Lane, u64)> {
        let t0 = Instant::now();
        let (rate, burst) = (64 * 1024, 64 * 1024);
        let mut l = Limiter::new(rate, burst, 0.2, t0);
        let mut now = [t0; 2];
        let mut sent = Vec::new();
        let end = t0 + Duration::from_secs(seconds);
        // The lane whose next send is earliest goes next.
        while let Some(&lane) = lanes.iter().min_by_key(|l| now[**l as usize]) {
            let at = &mut now[lane as usize];
            if *at >= end {
                break;
            }
            let raw = l.max_raw_bytes(lane) as u64;
            let wait = l.wait(lane, raw, live_active, *at);
            if !wait.is_zero() {
                *at += wait;
                continue;
            }
            let admitted = l.take(lane, raw, *at);
            // zstd-like: a quarter of the raw bytes on the wire.
            let wire = raw / 4 + 300;
            l.settle(admitted, wire, *at);
            sent.push((*at, lane, wire));
            *at += Duration::from_millis(5);
        }
        sent
    }

    fn max_in_window(sent: &[(Instant, Lane, u64)], lane: Option<Lane>, window: Duration) -> u64 {
        sent.iter()
            .map(|(start, _, _)| {
                sent.iter()
                    .filter(|(t, l, _)| {
                        *t >= *start && *t < *start + window && lane.is_none_or(|x| x == *l)
                    })
                    .map(|(_, _, b)| b)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_link_never_carries_more_than_rate_times_window_plus_burst() {
        let sent = simulate(true, &[Lane::Backlog, Lane::Live], 60);
        let bound = 64 * 1024 * 5 + 64 * 1024;
        let most = max_in_window(&sent, None, Duration::from_secs(5));
        assert!(most <= bound, "{most} bytes in a 5 s window, bound {bound}");
        let total: u64 = sent.iter().map(|s| s.2).sum();
        assert!(
            total >= 64 * 1024 * 55,
            "the link is used, not starved: {total} bytes in 60 s"
        );
    }

    #[test]
    fn the_live_lane_takes_at_most_its_share_and_the_backlog_gets_the_rest() {
        let sent = simulate(true, &[Lane::Backlog, Lane::Live], 60);
        let live: u64 = sent.iter().filter(|s| s.1 == Lane::Live).map(|s| s.2).sum();
        let backlog: u64 = sent
            .iter()
            .filter(|s| s.1 == Lane::Backlog)
            .map(|s| s.2)
            .sum();
        let share = live as f64 / (live + backlog) as f64;
        assert!(share <= 0.22, "live lane share {share:.3}");
        assert!(share >= 0.15, "a busy live lane gets its share: {share:.3}");
    }

    #[test]
    fn the_backlog_alone_may_use_the_whole_link() {
        let sent = simulate(false, &[Lane::Backlog], 60);
        let total: u64 = sent.iter().map(|s| s.2).sum();
        assert!(total >= 64 * 1024 * 57, "{total} bytes in 60 s at 64 KiB/s");
    }

    #[test]
    fn the_ratio_is_learned_so_estimates_follow_compression() {
        let t0 = Instant::now();
        let mut l = Limiter::new(64 * 1024, 64 * 1024, 0.2, t0);
        let before = l.max_raw_bytes(Lane::Backlog);
        for _ in 0..20 {
            let a = l.take(Lane::Backlog, 40_000, t0);
            l.settle(a, 10_000 + 256, t0);
        }
        let after = l.max_raw_bytes(Lane::Backlog);
        assert!(
            after > before * 3,
            "a 4:1 ratio lets batches hold more raw bytes: {before} -> {after}"
        );
    }
}

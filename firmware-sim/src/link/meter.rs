//! What a [`Link`](super::Link) forwarded in one direction, and when: a total and a log of
//! bytes per [`RESOLUTION`] bucket since the link started, from which the window figures
//! (the largest number of bytes in any window of a given length) are computed.
//!
//! The log is compact on purpose: a bucket is one `u64` per 100 ms, 288 KiB a day, however
//! many chunks passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Width of one bucket of the log: the resolution of every window figure.
pub const RESOLUTION: Duration = Duration::from_millis(100);

/// Bytes forwarded in one direction: the total, and per [`RESOLUTION`] bucket since
/// [`Meter::started`].
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    total: AtomicU64,
    /// Bytes written in bucket `i`, i.e. from `started + i × RESOLUTION` for one
    /// `RESOLUTION`. Grows as time passes and chunks arrive.
    buckets: Mutex<Vec<u64>>,
}

impl Meter {
    /// An empty log starting now.
    pub fn new() -> Meter {
        Meter::starting_at(Instant::now())
    }

    /// An empty log whose first bucket starts at `started`.
    pub fn starting_at(started: Instant) -> Meter {
        Meter {
            started,
            total: AtomicU64::new(0),
            buckets: Mutex::new(Vec::new()),
        }
    }

    /// When the first bucket starts.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records `n` bytes written now.
    pub fn record(&self, n: u64) {
        self.record_at(Instant::now(), n);
    }

    /// Records `n` bytes written at `at` (an instant before the start counts in the first
    /// bucket).
    pub fn record_at(&self, at: Instant, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        let i = self.bucket_of(at);
        let mut buckets = self.lock();
        if buckets.len() <= i {
            buckets.resize(i + 1, 0);
        }
        buckets[i] += n;
    }

    /// Every byte recorded.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes recorded from the bucket holding `since` on: up to one [`RESOLUTION`] of bytes
    /// from before `since` may be counted.
    pub fn since(&self, since: Instant) -> u64 {
        let from = self.bucket_of(since);
        self.lock().iter().skip(from).sum()
    }

    /// The largest number of bytes recorded in any `window` (sliding, bucket by bucket).
    /// See [`Meter::max_in_window_since`].
    pub fn max_in_window(&self, window: Duration) -> u64 {
        self.max_in_window_since(window, self.started)
    }

    /// The largest number of bytes recorded in any `window` from the bucket holding `since`
    /// on, sliding one bucket at a time. A window is `window` rounded up to whole buckets,
    /// so the figure never undercounts a window of that length that starts on a bucket
    /// boundary; a window shorter than the log so far sums what there is.
    pub fn max_in_window_since(&self, window: Duration, since: Instant) -> u64 {
        let width = buckets_in(window);
        let from = self.bucket_of(since);
        let buckets = self.lock();
        let log = buckets.get(from..).unwrap_or_default();
        max_window_sum(log, width)
    }

    /// When the first and the last byte were recorded, as offsets of their buckets from
    /// [`Meter::started`] (`None` before any byte).
    pub fn active_span(&self) -> Option<(Duration, Duration)> {
        let buckets = self.lock();
        let first = buckets.iter().position(|&b| b > 0)?;
        let last = buckets.iter().rposition(|&b| b > 0)?;
        Some((bucket_start(first), bucket_start(last)))
    }

    /// The log itself: bytes per [`RESOLUTION`] bucket since [`Meter::started`].
    pub fn buckets(&self) -> Vec<u64> {
        self.lock().clone()
    }

    fn bucket_of(&self, at: Instant) -> usize {
        let offset = at.saturating_duration_since(self.started);
        usize::try_from(offset.as_nanos() / RESOLUTION.as_nanos()).unwrap_or(usize::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // A panic while holding the lock cannot leave the log inconsistent (every update is
        // one addition), so a poisoned lock is used as is.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for Meter {
    fn default() -> Meter {
        Meter::new()
    }
}

/// How many buckets a window of `window` covers: rounded up, at least one.
fn buckets_in(window: Duration) -> usize {
    let n = window.as_nanos().div_ceil(RESOLUTION.as_nanos());
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

fn bucket_start(i: usize) -> Duration {
    RESOLUTION.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX))
}

/// The largest sum of `width` consecutive entries of `log` (the sum of all of it when it is
/// shorter).
pub(crate) fn max_window_sum(log: &[u64], width: usize) -> u64 {
    let width = width.max(1);
    let mut sum: u64 = log.iter().take(width).sum();
    let mut best = sum;
    for i in width..log.len() {
        sum = sum + log[i] - log[i - width];
        best = best.max(sum);
    }
    best
}

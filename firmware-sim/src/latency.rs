//! A small log-linear latency histogram (HDR-style) and its percentile summary.
//!
//! Values are microseconds. Below 128 µs every value has its own bucket; above, each power
//! of two is split into 64 buckets, so a reported percentile is at most 1/64 (1.6 %) above
//! the true value. Buckets are allocated lazily up to the largest value seen, so a device
//! whose PUBACKs all take under 10 ms costs about 5 KiB.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const EXACT: u64 = 128;
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// A mergeable histogram of microsecond values.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

fn index_of(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 7
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..64
    (EXACT + (u64::from(e) - 7) * SUB + mantissa) as usize
}

/// Highest value that falls into bucket `i`.
fn highest_of(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let e = 7 + (i - EXACT) / SUB;
    let mantissa = SUB + (i - EXACT) % SUB;
    let shift = e - u64::from(SUB_BITS);
    let top = (u128::from(mantissa + 1) << shift) - 1;
    u64::try_from(top).unwrap_or(u64::MAX)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Records one value in microseconds.
    pub fn record(&mut self, us: u64) {
        let i = index_of(us);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        if self.total == 0 || us < self.min {
            self.min = us;
        }
        self.max = self.max.max(us);
        self.total += 1;
        self.sum += u128::from(us);
    }

    /// Records a duration.
    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        if self.total == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
        self.sum += other.sum;
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), in microseconds; 0 when empty. Never above the
    /// exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest_of(i).min(self.max);
            }
        }
        self.max
    }

    /// Percentiles and extremes.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.total,
            min_us: self.min,
            mean_us: if self.total == 0 {
                0
            } else {
                (self.sum / u128::from(self.total)) as u64
            },
            p50_us: self.quantile(0.50),
            p90_us: self.quantile(0.90),
            p99_us: self.quantile(0.99),
            p999_us: self.quantile(0.999),
            max_us: self.max,
        }
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_us: u64,
    /// Arithmetic mean.
    pub mean_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// Formats microseconds as milliseconds with three decimals.
pub fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

impl LatencySummary {
    /// The short form of the load report: `p50 …  p99 …  max …`.
    pub fn short(&self) -> String {
        format!(
            "p50 {}  p99 {}  max {}",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us)
        )
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut last = None;
        for v in (0..5_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = index_of(v);
            assert!(highest_of(i) >= v, "v={v} i={i}");
            if v >= EXACT {
                assert!((highest_of(i) - v) as f64 <= v as f64 / 64.0, "v={v}");
            }
            if let Some(l) = last {
                assert!(i >= l);
            }
            last = Some(i);
        }
    }

    #[test]
    fn quantiles_of_a_uniform_distribution() {
        let mut h = Histogram::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!((s.min_us, s.max_us), (1, 10_000));
        assert!((5_000..=5_080).contains(&s.p50_us), "{s:?}");
        assert!((9_900..=10_000).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.mean_us, 5_000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..1000u64 {
            let x = v * v % 7919;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
    }
}

//! What the journal keeps: the size cap, the map size, and when to log drops.
//!
//! `journal.max_size` bounds the *accounted* size of the records held (see
//! [`super::store::accounted_size`]). The LMDB map starts small and doubles on
//! `MDB_MAP_FULL` up to a ceiling with headroom over `max_size` for LMDB's copy-on-write
//! pages and free list; if even the ceiling is reached, the commit is treated as full and
//! the `on_full` policy applies, so disk use stays bounded whatever the fragmentation.

use std::time::{Duration, Instant};

use crate::config::JournalConfig;

const MIB: u64 = 1024 * 1024;

/// Largest map the journal grows to.
pub fn map_ceiling(config: &JournalConfig) -> usize {
    let max = config.journal_max();
    round_to_page(max + max / 2 + 16 * MIB)
}

/// Map size at open: small, so a fresh gateway does not reserve a large sparse file.
pub fn initial_map_size(config: &JournalConfig) -> usize {
    round_to_page((64 * MIB).min(map_ceiling(config) as u64))
}

/// The next map size after `MDB_MAP_FULL`, or `None` at the ceiling.
pub fn grown_map_size(current: usize, config: &JournalConfig) -> Option<usize> {
    let ceiling = map_ceiling(config);
    (current < ceiling)
        .then(|| round_to_page((current as u64 * 2).min(ceiling as u64)).min(ceiling))
}

fn round_to_page(n: u64) -> usize {
    (n.div_ceil(4096) * 4096) as usize
}

impl JournalConfig {
    /// `max_size` in bytes.
    pub fn journal_max(&self) -> u64 {
        self.max_size.as_u64()
    }
}

/// Folds repeated events (drops, rejections) into one log line per interval, so a full
/// journal does not log once per commit.
#[derive(Debug)]
pub struct Summarizer {
    interval: Duration,
    last: Option<Instant>,
    /// Events since the last line.
    pub pending: u64,
    /// Lowest and highest sequence involved since the last line.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

impl Summarizer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            pending: 0,
            first_seq: None,
            last_seq: None,
        }
    }

    /// Adds `count` events covering `first..=last`.
    pub fn add(&mut self, count: u64, first: Option<u64>, last: Option<u64>) {
        self.pending += count;
        if self.first_seq.is_none() {
            self.first_seq = first;
        }
        if last.is_some() {
            self.last_seq = last;
        }
    }

    /// Whether a line is due now: the first event logs at once, later ones once per interval.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.pending == 0 {
            return false;
        }
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.interval);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// Clears the pending totals after they were logged.
    pub fn reset(&mut self) {
        self.pending = 0;
        self.first_seq = None;
        self.last_seq = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    #[test]
    fn the_map_grows_by_doubling_and_stops_at_the_ceiling() {
        let config = JournalConfig {
            max_size: ByteSize::mib(100),
            ..JournalConfig::default()
        };
        let ceiling = map_ceiling(&config);
        let mut size = initial_map_size(&config);
        assert_eq!(size, 64 * 1024 * 1024);
        let mut steps = 0;
        while let Some(next) = grown_map_size(size, &config) {
            assert!(next > size && next <= ceiling && next % 4096 == 0);
            size = next;
            steps += 1;
        }
        assert_eq!(size, ceiling);
        assert!(steps >= 1);
    }

    #[test]
    fn repeated_events_log_once_per_interval_with_totals() {
        let mut s = Summarizer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        s.add(5, Some(1), Some(5));
        assert!(s.due(t0), "first event logs at once");
        s.reset();
        s.add(3, Some(6), Some(8));
        assert!(!s.due(t0 + Duration::from_secs(1)));
        s.add(2, Some(9), Some(10));
        assert!(s.due(t0 + Duration::from_secs(11)));
        assert_eq!((s.pending, s.first_seq, s.last_seq), (5, Some(6), Some(10)));
    }
}

//! What the journal keeps: the size cap, the age limit, the map size, and when to log
//! drops.
//!
//! `journal.max_size` bounds the *accounted* size of the records held (see
//! [`super::store::accounted_size`]). The LMDB map starts small and doubles on
//! `MDB_MAP_FULL` up to a ceiling with headroom over `max_size` for LMDB's copy-on-write
//! pages and free list; if even the ceiling is reached, the commit is treated as full and
//! the `on_full` policy applies, so disk use stays bounded whatever the fragmentation.
//!
//! `journal.max_age` bounds the age of the readings held, by their `ingest_ms`. The writer
//! checks it at most every [`EXPIRE_EVERY`] ([`ExpirySchedule`]), inside an ordinary commit
//! (or an idle one when nothing arrives), and removes from the front, as `drop-oldest`
//! does, at most [`EXPIRE_MAX_RECORDS`] per commit; a check that finds nothing to remove
//! reads one record. Removing only from the front keeps the records held one contiguous
//! range (journal invariant 3), which relies on ingest time growing with the sequence. It
//! does, except across a step of the system clock:
//!
//! * a step **back** stamps later readings older than earlier ones: removal stops at the
//!   first reading still young enough, so readings behind it may be held longer than
//!   `max_age` (until the front catches up), never removed out of order;
//! * a step **forward** ages every reading held by the step: on a gateway without a
//!   real-time clock that boots in the past and is then set by NTP, readings stamped
//!   before the correction look that much older and go at the next check if the step
//!   exceeds `max_age`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// How often the writer checks `journal.max_age`: a reading is held at most this much
/// longer than the limit (clock steps aside, see the module docs).
pub const EXPIRE_EVERY: Duration = Duration::from_secs(10);

/// Most readings one commit removes for `journal.max_age`, so that a large expired span
/// (after a restart, or a clock step) does not make one commit long; the next commit
/// goes on at once.
pub const EXPIRE_MAX_RECORDS: u64 = 10_000;

/// Environment variable naming a file that holds a number of milliseconds added to the
/// system clock for `journal.max_age` only (a test hook: readings journaled before the file
/// says `172800000` look two days older; removing the file ends the shift). Read at each
/// check while set; ignored when absent or unreadable.
pub const TEST_AGE_SHIFT_ENV: &str = "TIDEGATE_TEST_AGE_SHIFT_FILE";

/// Where the journal takes "now" from for `journal.max_age`: the system clock, or a clock
/// set by hand (unit tests), or the system clock shifted by [`TEST_AGE_SHIFT_ENV`]'s file
/// (integration tests).
#[derive(Debug, Clone, Default)]
pub struct AgeClock {
    manual: Option<Arc<AtomicU64>>,
    shift_file: Option<std::path::PathBuf>,
}

impl AgeClock {
    /// The system clock, as ingest stamps readings with it.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock, shifted when [`TEST_AGE_SHIFT_ENV`] names a file.
    pub fn from_env() -> Self {
        Self {
            manual: None,
            shift_file: std::env::var_os(TEST_AGE_SHIFT_ENV).map(Into::into),
        }
    }

    /// A clock that shows `start_ms` until [`AgeClock::set`] moves it.
    pub fn manual(start_ms: u64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicU64::new(start_ms))),
            shift_file: None,
        }
    }

    /// Moves a manual clock to `ms` (either way); no effect on the system clock.
    pub fn set(&self, ms: u64) {
        if let Some(m) = &self.manual {
            m.store(ms, Ordering::Relaxed);
        }
    }

    /// Now, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        if let Some(m) = &self.manual {
            return m.load(Ordering::Relaxed);
        }
        let shift = self
            .shift_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        super::now_ms().saturating_add(shift)
    }
}

/// When the next commit also removes readings older than `journal.max_age`.
///
/// Due every [`EXPIRE_EVERY`] by the [`AgeClock`], at once again while a commit hit
/// [`EXPIRE_MAX_RECORDS`], and at once after the clock stepped back past the last check
/// (so a step back cannot put the next check off).
#[derive(Debug)]
pub(super) struct ExpirySchedule {
    max_age: Option<Duration>,
    clock: AgeClock,
    last_ms: Option<u64>,
    more: bool,
}

impl ExpirySchedule {
    pub(super) fn new(max_age: Option<Duration>, clock: AgeClock) -> Self {
        Self {
            max_age,
            clock,
            last_ms: None,
            more: false,
        }
    }

    /// The cut-off (readings ingested before it are removed) if a check is due now.
    pub(super) fn due(&self) -> Option<u64> {
        let max_age = self.max_age?;
        let now = self.clock.now_ms();
        let every = EXPIRE_EVERY.as_millis() as u64;
        let due = self.more
            || self
                .last_ms
                .is_none_or(|last| now < last || now >= last.saturating_add(every));
        due.then(|| now.saturating_sub(max_age.as_millis() as u64))
    }

    /// After a commit that checked as of the clock's `now`; `more` when it stopped at
    /// [`EXPIRE_MAX_RECORDS`] with expired readings left.
    pub(super) fn checked(&mut self, more: bool) {
        self.last_ms = Some(self.clock.now_ms());
        self.more = more;
    }

    /// How long the writer may wait idle before the next check is due (`None`: no limit
    /// set, wait for requests only).
    pub(super) fn idle_wait(&self) -> Option<Duration> {
        self.max_age?;
        if self.more {
            return Some(Duration::ZERO);
        }
        Some(EXPIRE_EVERY)
    }

    /// The configured limit.
    pub(super) fn max_age(&self) -> Option<Duration> {
        self.max_age
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
    fn expiry_is_due_every_interval_at_once_while_more_is_left_and_after_a_step_back() {
        let day = Duration::from_secs(24 * 3600);
        let clock = AgeClock::manual(10 * 86_400_000);
        let mut s = ExpirySchedule::new(Some(day), clock.clone());
        assert_eq!(
            s.due(),
            Some(9 * 86_400_000),
            "the first check is due at once"
        );
        s.checked(false);
        assert_eq!(s.due(), None);
        clock.set(10 * 86_400_000 + 9_999);
        assert_eq!(s.due(), None);
        clock.set(10 * 86_400_000 + 10_000);
        assert_eq!(s.due(), Some(9 * 86_400_000 + 10_000));
        s.checked(true);
        assert!(
            s.due().is_some(),
            "a commit that stopped at the bound goes on"
        );
        assert_eq!(s.idle_wait(), Some(Duration::ZERO));
        s.checked(false);
        assert_eq!(s.due(), None);
        clock.set(5 * 86_400_000);
        assert_eq!(s.due(), Some(4 * 86_400_000), "a step back checks at once");
        assert_eq!(
            ExpirySchedule::new(None, clock).due(),
            None,
            "no limit, no check"
        );
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

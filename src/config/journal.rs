//! `[journal]`: where the durable log lives, its size cap and its commit pacing.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// What the journal does when it holds `max_size` and a new reading arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFull {
    /// Delete the oldest readings (counted and logged) to make room: newest data wins.
    DropOldest,
    /// Refuse new readings: QoS 1 publishes are not acknowledged, so devices keep them.
    Reject,
    /// Halve the resolution of the oldest part of the history some upstream has not sent
    /// (per topic, every other reading), again and again up to `thin_max_factor`; only
    /// then delete the oldest readings.
    Thin,
}

/// How the journal stores readings at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalCompression {
    /// Page-sized blocks of readings compressed together with zstd.
    Zstd,
    /// One uncompressed record per reading, as journals before compression held them.
    None,
}

impl std::fmt::Display for JournalCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JournalCompression::Zstd => "zstd",
            JournalCompression::None => "none",
        })
    }
}

impl std::fmt::Display for OnFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFull::DropOldest => "drop-oldest",
            OnFull::Reject => "reject",
            OnFull::Thin => "thin",
        })
    }
}

/// `[journal]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Directory holding the LMDB environment. Created if missing.
    #[serde(default = "default_journal_dir")]
    pub dir: PathBuf,
    /// Cap on the readings held (encoded bytes plus per-record overhead).
    #[serde(
        default = "default_max_size",
        deserialize_with = "crate::config::units::size"
    )]
    pub max_size: ByteSize,
    /// Policy once `max_size` is reached.
    #[serde(default = "default_on_full")]
    pub on_full: OnFull,
    /// Readings older than this (by ingest time) are removed as `drop-oldest` removes
    /// them, sent or not. Unset (the default): no age limit.
    #[serde(
        default,
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::option_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Longest a reading waits for other readings to share its commit. 0 (the default)
    /// commits as soon as the writer is free; the writer always takes everything already
    /// queued, so readings arriving during a sync share the next one. A few ms trades
    /// latency for fewer syncs on slow storage.
    #[serde(
        default = "default_commit_interval",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub commit_interval: Duration,
    /// Most readings in one commit; bounds a transaction's memory and latency.
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: usize,
    /// How readings are stored at rest: `zstd` (the default) or `none`.
    #[serde(default = "default_compression")]
    pub compression: JournalCompression,
    /// zstd level for `compression = "zstd"`, 1 (fastest, the default) to 19.
    #[serde(default = "default_compression_level")]
    pub compression_level: i32,
    /// Topic filters (MQTT wildcards) whose readings thinning never removes: alarms,
    /// state changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_whole: Vec<String>,
    /// The coarsest resolution thinning goes to (1 reading in N kept) before the oldest
    /// readings are deleted instead. A power of two from 2 to 1024; default 64.
    #[serde(default = "default_thin_max_factor")]
    pub thin_max_factor: u32,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            dir: default_journal_dir(),
            max_size: default_max_size(),
            on_full: default_on_full(),
            max_age: None,
            commit_interval: default_commit_interval(),
            commit_max_records: default_commit_max_records(),
            compression: default_compression(),
            compression_level: default_compression_level(),
            keep_whole: Vec::new(),
            thin_max_factor: default_thin_max_factor(),
        }
    }
}

/// Shortest `journal.max_age`: the journal checks the limit every 10 s, so a shorter one
/// would be kept only approximately.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);

fn default_journal_dir() -> PathBuf {
    PathBuf::from("./tidegate-data")
}
fn default_max_size() -> ByteSize {
    ByteSize::gib(1)
}
fn default_on_full() -> OnFull {
    OnFull::DropOldest
}
fn default_commit_interval() -> Duration {
    // Adaptive group commit: while one commit syncs, the next batch gathers by itself.
    // Measured here, a 2ms linger raised PUBACK p50 from 1.1ms to 4.9ms at 19k readings/s
    // and did not raise the saturated rate.
    Duration::ZERO
}
fn default_commit_max_records() -> usize {
    10_000
}
fn default_compression() -> JournalCompression {
    JournalCompression::Zstd
}
fn default_compression_level() -> i32 {
    // Level 1: on page-sized blocks higher levels gained at most 4 % for 5-20 % more CPU
    // (benches/journal_compression.rs, docs/design.md).
    1
}
fn default_thin_max_factor() -> u32 {
    64
}

/// Highest `journal.compression_level` accepted (zstd's own maximum is 22; 20 and up need
/// far more memory than a gateway should spend on its journal).
const MAX_COMPRESSION_LEVEL: i32 = 19;

impl JournalConfig {
    /// Pushes every problem of `[journal]`, keyed `journal.field`.
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if self.dir.as_os_str().is_empty() {
            p.push("journal.dir: must not be empty".to_owned());
        }
        if self.max_size < ByteSize::mib(1) {
            p.push(format!(
                "journal.max_size: {} is below the 1 MiB minimum",
                self.max_size
            ));
        }
        if let Some(age) = self.max_age.filter(|a| *a < MIN_MAX_AGE) {
            p.push(format!(
                "journal.max_age: {} is below the 1 minute minimum; use e.g. max_age = \"30d\", or leave it unset for no limit",
                humantime::format_duration(age),
            ));
        }
        if self.commit_interval > Duration::from_secs(1) {
            p.push(format!(
                "journal.commit_interval: {} holds every acknowledgement that long; use at most 1s",
                humantime::format_duration(self.commit_interval)
            ));
        }
        if self.commit_max_records == 0 {
            p.push("journal.commit_max_records: must be at least 1".to_owned());
        }
        if !(1..=MAX_COMPRESSION_LEVEL).contains(&self.compression_level) {
            p.push(format!(
                "journal.compression_level: {} is outside 1..={MAX_COMPRESSION_LEVEL}; use e.g. compression_level = 1 (fastest) or 3",
                self.compression_level
            ));
        }
        if !(2..=1024).contains(&self.thin_max_factor) || !self.thin_max_factor.is_power_of_two() {
            p.push(format!(
                "journal.thin_max_factor: {} is not a power of two from 2 to 1024; use e.g. thin_max_factor = 64",
                self.thin_max_factor
            ));
        }
    }
}

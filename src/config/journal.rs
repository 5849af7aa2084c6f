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
}

impl std::fmt::Display for OnFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFull::DropOldest => "drop-oldest",
            OnFull::Reject => "reject",
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
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Policy once `max_size` is reached.
    #[serde(default = "default_on_full")]
    pub on_full: OnFull,
    /// Readings older than this (by ingest time) are removed as `drop-oldest` removes
    /// them, sent or not. Unset (the default): no age limit.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Longest a reading waits for other readings to share its commit. 0 (the default)
    /// commits as soon as the writer is free; the writer always takes everything already
    /// queued, so readings arriving during a sync share the next one. A few ms trades
    /// latency for fewer syncs on slow storage.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most readings in one commit; bounds a transaction's memory and latency.
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: usize,
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
    }
}

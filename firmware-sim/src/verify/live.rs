//! The live topic's check (`verify --live-topic`): per device, the newest reading the live
//! lane delivered and when it was read ([`LiveTable`]), and whether every device's newest
//! is younger than a bound ([`LiveReport`]).
//!
//! The live lane is best effort: it samples, so nothing here counts holes, duplicates or
//! order. A device's newest reading is the highest counter of its newest boot (boot ids
//! grow); its age is the time since the device stamped it (`ts`), on this machine's clock.
//! Records without `tidegate-live: 1` are counted: every record of a live lane carries it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::telemetry::{now_ms, ReadingId};

use super::reader::{StartAt, TopicReader};
use super::{KafkaReading, VerifyError};

/// Header (Kafka) or MQTT 5 user property marking a record of the live lane, value `1`.
pub const LIVE_HEADER: &str = "tidegate-live";

/// One reading of a device delivered by the live lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveReading {
    /// Boot id.
    pub boot: u64,
    /// Per-boot counter.
    pub seq: u64,
    /// When the device sampled it, ms since the Unix epoch.
    pub ts: u64,
    /// When it was first read from the live lane, ms since the Unix epoch.
    pub read_at: u64,
}

impl LiveReading {
    /// How old the reading is at `now_ms` (zero for a `ts` in the future).
    pub fn age_at(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.ts))
    }
}

/// Per device, the readings of a live lane that were newer than every one before them, in
/// the order read; fed record by record ([`LiveTable::add`], [`LiveTable::add_payload`]).
#[derive(Debug, Clone, Default)]
pub struct LiveTable {
    devices: BTreeMap<String, Vec<LiveReading>>,
    records: u64,
    unparseable: u64,
    unmarked: u64,
}

impl LiveTable {
    /// An empty table.
    pub fn new() -> LiveTable {
        LiveTable::default()
    }

    /// Takes one Kafka record of the live topic, read at `read_at` (ms since the epoch).
    pub fn add(&mut self, r: &KafkaReading, read_at: u64) -> Option<ReadingId> {
        self.add_payload(&r.payload, r.header(LIVE_HEADER) == Some(b"1"), read_at)
    }

    /// Takes one payload of a live lane (a Kafka record's value, an MQTT publish's payload)
    /// read at `read_at`; `marked` says whether it carried `tidegate-live: 1`. Returns its
    /// identity, `None` if it is not a reading.
    pub fn add_payload(&mut self, payload: &[u8], marked: bool, read_at: u64) -> Option<ReadingId> {
        self.records += 1;
        if !marked {
            self.unmarked += 1;
        }
        let Some(id) = ReadingId::parse(payload) else {
            self.unparseable += 1;
            return None;
        };
        let seen = self.devices.entry(id.device.clone()).or_default();
        let newer = seen
            .last()
            .is_none_or(|last| (id.boot, id.seq) > (last.boot, last.seq));
        if newer {
            seen.push(LiveReading {
                boot: id.boot,
                seq: id.seq,
                ts: id.ts,
                read_at,
            });
        }
        Some(id)
    }

    /// Each device's newest reading so far.
    pub fn newest(&self) -> BTreeMap<String, LiveReading> {
        self.devices
            .iter()
            .filter_map(|(d, seen)| Some((d.clone(), *seen.last()?)))
            .collect()
    }

    /// `device`'s newest reading so far.
    pub fn newest_of(&self, device: &str) -> Option<LiveReading> {
        self.devices.get(device)?.last().copied()
    }

    /// When `device` first had a reading stamped at or after `ts` on the lane: the
    /// `read_at` of the first such reading read (ms since the epoch).
    pub fn first_read_since(&self, device: &str, ts: u64) -> Option<u64> {
        self.devices
            .get(device)?
            .iter()
            .filter(|r| r.ts >= ts)
            .map(|r| r.read_at)
            .min()
    }

    /// Since when every one of `devices` has had a reading stamped at or after `ts` on the
    /// lane (the latest of their [`LiveTable::first_read_since`]); otherwise the devices
    /// that have none yet.
    pub fn all_fresh_since<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a str>,
        ts: u64,
    ) -> Result<u64, Vec<String>> {
        let mut since = 0;
        let mut stale = Vec::new();
        for d in devices {
            match self.first_read_since(d, ts) {
                Some(at) => since = since.max(at),
                None => stale.push(d.to_owned()),
            }
        }
        if stale.is_empty() {
            Ok(since)
        } else {
            Err(stale)
        }
    }

    /// Records taken.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records whose payload is not a reading.
    pub fn unparseable(&self) -> u64 {
        self.unparseable
    }

    /// Records without `tidegate-live: 1`.
    pub fn unmarked(&self) -> u64 {
        self.unmarked
    }

    /// Checks that every device of `expected` (and every other device on the lane) has a
    /// newest reading no older than `max_age` at `now_ms`.
    pub fn check<'a>(
        &self,
        expected: impl IntoIterator<Item = &'a str>,
        max_age: Duration,
        now_ms: u64,
    ) -> LiveReport {
        let mut devices: BTreeMap<String, Option<LiveReading>> =
            expected.into_iter().map(|d| (d.to_owned(), None)).collect();
        for (d, newest) in self.newest() {
            devices.insert(d, Some(newest));
        }
        LiveReport {
            devices,
            max_age,
            now_ms,
            records: self.records,
            unparseable: self.unparseable,
            unmarked: self.unmarked,
        }
    }
}

/// The verdict on a live lane at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveReport {
    /// Per device, its newest reading on the lane (`None`: it has none).
    pub devices: BTreeMap<String, Option<LiveReading>>,
    /// The bound on a newest reading's age.
    pub max_age: Duration,
    /// When the ages were taken, ms since the epoch.
    pub now_ms: u64,
    /// Records read.
    pub records: u64,
    /// Records whose payload is not a reading (tidegate forwards what devices send, so a
    /// device's garbage is no fault of the lane: counted, not failed).
    pub unparseable: u64,
    /// Records without `tidegate-live: 1`.
    pub unmarked: u64,
}

impl LiveReport {
    /// The devices without a reading on the lane.
    pub fn missing(&self) -> Vec<&str> {
        self.devices
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(d, _)| d.as_str())
            .collect()
    }

    /// The devices whose newest reading is older than the bound, with its age.
    pub fn stale(&self) -> Vec<(&str, Duration)> {
        self.devices
            .iter()
            .filter_map(|(d, r)| {
                let age = r.as_ref()?.age_at(self.now_ms);
                (age > self.max_age).then_some((d.as_str(), age))
            })
            .collect()
    }

    /// Whether every device is fresh and every record is marked live.
    pub fn is_ok(&self) -> bool {
        self.unmarked == 0 && self.missing().is_empty() && self.stale().is_empty()
    }

    /// Every failure, one line each, naming the device.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .missing()
            .into_iter()
            .map(|d| format!("{d}: no reading on the live lane"))
            .collect();
        for (d, age) in self.stale() {
            p.push(format!(
                "{d}: newest live reading is {:.1} s old, over {}",
                age.as_secs_f64(),
                humantime::format_duration(self.max_age)
            ));
        }
        if self.unmarked > 0 {
            p.push(format!(
                "{} records without {LIVE_HEADER}: 1",
                self.unmarked
            ));
        }
        p
    }
}

impl fmt::Display for LiveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>14} {:>8} {:>10}  problems",
            "device", "boot", "counter", "age"
        )?;
        for (d, r) in &self.devices {
            match r {
                Some(r) => {
                    let age = r.age_at(self.now_ms);
                    let verdict = if age > self.max_age { "STALE" } else { "" };
                    writeln!(
                        f,
                        "{d:<10} {:>14} {:>8} {:>9.1}s  {verdict}",
                        r.boot,
                        r.seq,
                        age.as_secs_f64()
                    )?;
                }
                None => writeln!(f, "{d:<10} {:>14} {:>8} {:>10}  MISSING", "-", "-", "-")?,
            }
        }
        write!(
            f,
            "live: {} records, {} devices, {} missing, {} older than {}, {} without {LIVE_HEADER}: 1, {} unparseable",
            self.records,
            self.devices.len(),
            self.missing().len(),
            self.stale().len(),
            humantime::format_duration(self.max_age),
            self.unmarked,
            self.unparseable
        )
    }
}

/// Reads a live topic incrementally, stamping each record with the time it was read.
pub struct LiveWatcher {
    reader: TopicReader,
    table: LiveTable,
}

impl LiveWatcher {
    /// Connects to `topic` and positions on the oldest record of every partition (fails with
    /// [`VerifyError::TopicNotFound`] until tidegate has created it).
    pub async fn connect(brokers: &[String], topic: &str) -> Result<LiveWatcher, VerifyError> {
        Ok(LiveWatcher {
            reader: TopicReader::connect(brokers, topic, StartAt::Earliest).await?,
            table: LiveTable::new(),
        })
    }

    /// Reads what was appended since the last poll into the table, and returns it.
    pub async fn poll(&mut self) -> Result<&LiveTable, VerifyError> {
        let records = self.reader.poll().await?;
        let read_at = now_ms();
        for r in &records {
            self.table.add(r, read_at);
        }
        Ok(&self.table)
    }

    /// The table so far.
    pub fn table(&self) -> &LiveTable {
        &self.table
    }
}

/// Reads a live topic from the oldest record to the high watermark, once.
pub async fn read_live(brokers: &[String], topic: &str) -> Result<LiveTable, VerifyError> {
    let mut w = LiveWatcher::connect(brokers, topic).await?;
    w.poll().await?;
    Ok(w.table)
}

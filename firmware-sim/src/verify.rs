//! Reading a Kafka topic back and checking it against what a fleet was told was stored.
//!
//! The rules, per device (and boot):
//! - **missing**: a counter the broker acknowledged with PUBACK that is not in the topic —
//!   the one thing a gateway must never do;
//! - **duplicates**: a counter seen before. At-least-once delivery replays a contiguous
//!   range after a crash; that is duplicates only, never reordering;
//! - **out of order**: after dropping the duplicates, the counters must strictly increase in
//!   offset order;
//! - every record must carry the `tidegate-gateway` and `tidegate-seq` (decimal) headers, have
//!   key `turbines/<device>/telemetry`, and all of a device's records must sit in one partition
//!   (otherwise Kafka cannot keep them in order).
//!
//! Two more things are counted over the whole topic:
//! - **gap markers**: records with a `tidegate-gap` header (`first..last`), which tidegate
//!   sends where `drop-oldest` removed readings before they were forwarded; they are not
//!   readings and are counted apart, with the readings they stand for;
//! - **replays**: records whose (`tidegate-gateway`, `tidegate-epoch`, `tidegate-seq`) was
//!   seen before — the gateway sent one journal record twice. A device that re-sends a
//!   reading whose PUBACK it never got makes a duplicate with a *new* journal sequence,
//!   which is not a replay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

use crate::fleet::FleetReport;
use crate::seqset::{fmt_ranges, SeqSet};
use crate::telemetry::{topic_for, ReadingId};

/// Header carrying the gateway id.
pub const GATEWAY_HEADER: &str = "tidegate-gateway";
/// Header carrying the journal sequence number (decimal ASCII).
pub const SEQ_HEADER: &str = "tidegate-seq";
/// Header carrying the journal's epoch (decimal ASCII).
pub const EPOCH_HEADER: &str = "tidegate-epoch";
/// Header of a gap marker: `first..last`, the journal sequences dropped unsent.
pub const GAP_HEADER: &str = "tidegate-gap";

/// How many reordering examples a report keeps per device.
const MAX_EXAMPLES: usize = 5;

/// One record read from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaReading {
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Record headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

impl KafkaReading {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Errors of reading Kafka.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rskafka::client::error::Error),
    /// The topic does not exist (yet).
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
}

/// Where a [`TopicReader`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still in each partition.
    Earliest,
    /// The current end of each partition: only records written from now on.
    Latest,
}

struct PartitionCursor {
    client: PartitionClient,
    next: i64,
}

/// Sets up the verifier's Kafka client beyond the brokers: `tls_config`, `sasl_config`.
pub type ClientOptions = dyn Fn(ClientBuilder) -> ClientBuilder + Sync;

/// Reads every partition of a topic incrementally: each [`TopicReader::poll`] returns what
/// was appended since the last one, up to each partition's high watermark.
pub struct TopicReader {
    _client: Client,
    partitions: Vec<PartitionCursor>,
}

/// Largest fetch response asked for.
const FETCH_MAX_BYTES: i32 = 8 * 1024 * 1024;

impl TopicReader {
    /// Connects and positions a cursor on every partition of `topic`.
    pub async fn connect(
        brokers: &[String],
        topic: &str,
        start: StartAt,
    ) -> Result<TopicReader, VerifyError> {
        TopicReader::connect_with(brokers, topic, start, &|b| b).await
    }

    /// [`TopicReader::connect`] with the client builder passed through `client` first: a
    /// cluster that asks for TLS (`tls_config`) or SASL (`sasl_config`).
    pub async fn connect_with(
        brokers: &[String],
        topic: &str,
        start: StartAt,
        client: &ClientOptions,
    ) -> Result<TopicReader, VerifyError> {
        let builder = ClientBuilder::new(brokers.to_vec()).client_id("firmware-sim-verify");
        let client = client(builder).build().await?;
        let meta = client
            .list_topics()
            .await?
            .into_iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| VerifyError::TopicNotFound(topic.to_owned()))?;
        let mut partitions = Vec::new();
        for p in meta.partitions {
            let pc = client
                .partition_client(topic.to_owned(), p, UnknownTopicHandling::Error)
                .await?;
            let at = match start {
                StartAt::Earliest => OffsetAt::Earliest,
                StartAt::Latest => OffsetAt::Latest,
            };
            let next = pc.get_offset(at).await?;
            partitions.push(PartitionCursor { client: pc, next });
        }
        Ok(TopicReader {
            _client: client,
            partitions,
        })
    }

    /// Number of partitions read.
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// One reader per partition, to consume partitions concurrently.
    pub fn split(self) -> Vec<PartitionReader> {
        let client = Arc::new(self._client);
        self.partitions
            .into_iter()
            .map(|cursor| PartitionReader {
                _client: client.clone(),
                cursor,
            })
            .collect()
    }

    /// Everything appended since the last call, per partition in offset order.
    pub async fn poll(&mut self) -> Result<Vec<KafkaReading>, VerifyError> {
        let mut out = Vec::new();
        for cursor in &mut self.partitions {
            cursor.read_to_high_watermark(10, &mut out).await?;
        }
        Ok(out)
    }
}

/// Reads one partition of a topic; see [`TopicReader::split`].
pub struct PartitionReader {
    _client: Arc<Client>,
    cursor: PartitionCursor,
}

impl PartitionReader {
    /// The partition read.
    pub fn partition(&self) -> i32 {
        self.cursor.client.partition()
    }

    /// Everything appended since the last call; when nothing is, waits up to `max_wait` for
    /// something to arrive.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<KafkaReading>, VerifyError> {
        let mut out = Vec::new();
        let ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        self.cursor.read_to_high_watermark(ms, &mut out).await?;
        Ok(out)
    }
}

impl PartitionCursor {
    async fn read_to_high_watermark(
        &mut self,
        max_wait_ms: i32,
        out: &mut Vec<KafkaReading>,
    ) -> Result<(), VerifyError> {
        let cursor = self;
        {
            loop {
                let (records, high_watermark) = cursor
                    .client
                    .fetch_records(cursor.next, 1..FETCH_MAX_BYTES, max_wait_ms)
                    .await?;
                let before = cursor.next;
                for r in records {
                    // A compressed batch may start before the requested offset.
                    if r.offset < cursor.next {
                        continue;
                    }
                    cursor.next = r.offset + 1;
                    out.push(KafkaReading {
                        partition: cursor.client.partition(),
                        offset: r.offset,
                        key: r.record.key,
                        payload: r.record.value.unwrap_or_default(),
                        headers: r.record.headers.into_iter().collect(),
                        timestamp_ms: r.record.timestamp.timestamp_millis(),
                    });
                }
                if cursor.next >= high_watermark || cursor.next == before {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Reads every record of every partition of `topic`, from the earliest to the high watermark.
pub async fn read_topic(brokers: &[String], topic: &str) -> Result<Vec<KafkaReading>, VerifyError> {
    TopicReader::connect(brokers, topic, StartAt::Earliest)
        .await?
        .poll()
        .await
}

/// The checks of one device's stream (one boot).
#[derive(Debug, Clone, Default)]
struct Stream {
    seen: SeqSet,
    /// Highest counter seen that was not a duplicate.
    last_new: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    reorder_examples: Vec<(u64, u64)>,
    missing_gateway_header: u64,
    missing_seq_header: u64,
    bad_seq_header: u64,
    wrong_key: u64,
    partitions: BTreeSet<i32>,
}

/// Incremental checker: feed it records in offset order (per partition) with
/// [`Checker::add`], ask for a [`VerifyReport`] whenever.
#[derive(Debug, Default)]
pub struct Checker {
    streams: HashMap<(String, u64), Stream>,
    readings: u64,
    unparseable: u64,
    gap_markers: u64,
    gap_readings: u64,
    /// (gateway, epoch, seq) header values seen, to count replays.
    journal_ids: std::collections::HashSet<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    replays: u64,
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Checks one record; returns its parsed identity (`None` if the payload is not a reading).
    pub fn add(&mut self, r: &KafkaReading) -> Option<ReadingId> {
        self.readings += 1;
        if let Some(gap) = r.header(GAP_HEADER) {
            let range = std::str::from_utf8(gap).ok().and_then(|g| {
                let (a, b) = g.split_once("..")?;
                Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
            });
            match range {
                Some((first, last)) if first <= last => {
                    self.gap_markers += 1;
                    self.gap_readings += last - first + 1;
                }
                _ => self.unparseable += 1,
            }
            return None;
        }
        if let (Some(g), Some(s)) = (r.header(GATEWAY_HEADER), r.header(SEQ_HEADER)) {
            let e = r.header(EPOCH_HEADER).unwrap_or_default();
            if !self
                .journal_ids
                .insert((g.to_vec(), e.to_vec(), s.to_vec()))
            {
                self.replays += 1;
            }
        }
        let Some(id) = ReadingId::parse(&r.payload) else {
            self.unparseable += 1;
            return None;
        };
        let s = self
            .streams
            .entry((id.device.clone(), id.boot))
            .or_default();
        s.received += 1;
        s.partitions.insert(r.partition);
        match r.header(GATEWAY_HEADER) {
            Some(v) if !v.is_empty() => {}
            _ => s.missing_gateway_header += 1,
        }
        match r.header(SEQ_HEADER) {
            None => s.missing_seq_header += 1,
            Some(v) => {
                let decimal =
                    !v.is_empty() && std::str::from_utf8(v).is_ok_and(|t| t.parse::<u64>().is_ok());
                if !decimal {
                    s.bad_seq_header += 1;
                }
            }
        }
        if r.key.as_deref() != Some(topic_for(&id.device).as_bytes()) {
            s.wrong_key += 1;
        }
        if !s.seen.insert(id.seq) {
            s.duplicates += 1;
        } else {
            if id.seq < s.last_new {
                s.out_of_order += 1;
                if s.reorder_examples.len() < MAX_EXAMPLES {
                    s.reorder_examples.push((s.last_new, id.seq));
                }
            }
            s.last_new = s.last_new.max(id.seq);
        }
        Some(id)
    }

    fn device_verify(s: &Stream, boot: u64, expected: &SeqSet) -> DeviceVerify {
        let missing = expected.difference_ranges(&s.seen);
        DeviceVerify {
            boot,
            received: s.received,
            distinct: s.seen.len(),
            expected: expected.len(),
            missing_count: missing.iter().map(|(a, b)| b - a + 1).sum(),
            missing,
            duplicates: s.duplicates,
            out_of_order: s.out_of_order,
            reorder_examples: s.reorder_examples.clone(),
            missing_gateway_header: s.missing_gateway_header,
            missing_seq_header: s.missing_seq_header,
            bad_seq_header: s.bad_seq_header,
            wrong_key: s.wrong_key,
            partitions: s.partitions.clone(),
            unacked_received: 0,
        }
    }

    /// The report so far. With `expected`, every boot of every device in the fleet report
    /// is checked (the last under the device id, earlier ones under `device@boot`) and
    /// "missing" means acknowledged but absent; readings of other devices or boots are
    /// counted as foreign. Without, each device's stream is its highest boot id (the
    /// latest run) and "missing" means a hole in `1..=highest counter seen`.
    pub fn report(&self, expected: Option<&FleetReport>) -> VerifyReport {
        let mut devices = BTreeMap::new();
        let mut counted = 0u64;
        let empty = Stream::default();
        match expected {
            Some(fleet) => {
                for (device, d) in &fleet.devices {
                    for b in d.boots() {
                        let s = self
                            .streams
                            .get(&(device.clone(), b.boot))
                            .unwrap_or(&empty);
                        counted += s.received;
                        let mut v = Checker::device_verify(s, b.boot, &b.acked);
                        v.unacked_received = s.seen.difference_len(&b.acked);
                        // The last boot under the device id, earlier ones (a device the
                        // fault plan rebooted) under `device@boot`.
                        let key = if b.boot == d.boot {
                            device.clone()
                        } else {
                            format!("{device}@{}", b.boot)
                        };
                        devices.insert(key, v);
                    }
                }
            }
            None => {
                let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
                for (device, boot) in self.streams.keys() {
                    let b = latest.entry(device.as_str()).or_insert(*boot);
                    *b = (*b).max(*boot);
                }
                for (device, boot) in latest {
                    let key = (device.to_owned(), boot);
                    let s = self.streams.get(&key).unwrap_or(&empty);
                    counted += s.received;
                    let mut expected = SeqSet::new();
                    if let Some(max) = s.seen.last() {
                        expected.insert_range(1, max);
                    }
                    devices.insert(
                        device.to_owned(),
                        Checker::device_verify(s, boot, &expected),
                    );
                }
            }
        }
        VerifyReport {
            devices,
            readings: self.readings,
            unparseable: self.unparseable,
            foreign: self.readings - self.unparseable - self.gap_markers - counted,
            gap_markers: self.gap_markers,
            gap_readings: self.gap_readings,
            replays: self.replays,
        }
    }
}

/// The verdict for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceVerify {
    /// Boot id checked.
    pub boot: u64,
    /// Records of this device and boot.
    pub received: u64,
    /// Distinct counters among them.
    pub distinct: u64,
    /// Counters that had to be there (acknowledged ones, or `1..=max` without a fleet report).
    pub expected: u64,
    /// Expected counters not found, as inclusive ranges.
    pub missing: Vec<(u64, u64)>,
    /// Number of expected counters not found.
    pub missing_count: u64,
    /// Records whose counter had been seen before.
    pub duplicates: u64,
    /// New counters lower than one seen before.
    pub out_of_order: u64,
    /// Up to five `(highest so far, counter)` pairs of reordering.
    pub reorder_examples: Vec<(u64, u64)>,
    /// Records without a `tidegate-gateway` header.
    pub missing_gateway_header: u64,
    /// Records without a `tidegate-seq` header.
    pub missing_seq_header: u64,
    /// `tidegate-seq` headers that are not a decimal number.
    pub bad_seq_header: u64,
    /// Records whose key is not `turbines/<device>/telemetry`.
    pub wrong_key: u64,
    /// Partitions the device's records were found in (must be one).
    pub partitions: BTreeSet<i32>,
    /// Distinct counters delivered that the fleet never saw acknowledged (allowed:
    /// at-least-once).
    pub unacked_received: u64,
}

impl DeviceVerify {
    /// Whether the device's stream broke no rule.
    pub fn is_ok(&self) -> bool {
        self.missing_count == 0
            && self.out_of_order == 0
            && self.missing_gateway_header == 0
            && self.missing_seq_header == 0
            && self.bad_seq_header == 0
            && self.wrong_key == 0
            && self.partitions.len() <= 1
    }

    /// The broken rules, as sentences.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.missing_count > 0 {
            p.push(format!(
                "{} missing {}",
                self.missing_count,
                fmt_ranges(&self.missing, 10)
            ));
        }
        if self.out_of_order > 0 {
            p.push(format!(
                "{} out of order, e.g. (after, got) {:?}",
                self.out_of_order, self.reorder_examples
            ));
        }
        for (n, what) in [
            (
                self.missing_gateway_header,
                "without tidegate-gateway header",
            ),
            (self.missing_seq_header, "without tidegate-seq header"),
            (
                self.bad_seq_header,
                "with a non-decimal tidegate-seq header",
            ),
            (self.wrong_key, "with the wrong key"),
        ] {
            if n > 0 {
                p.push(format!("{n} records {what}"));
            }
        }
        if self.partitions.len() > 1 {
            p.push(format!("split over partitions {:?}", self.partitions));
        }
        p
    }
}

/// The verdict for a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per device id (with a fleet report, a device's earlier boots as `device@boot`).
    pub devices: BTreeMap<String, DeviceVerify>,
    /// Records read.
    pub readings: u64,
    /// Records whose payload is not a reading.
    pub unparseable: u64,
    /// Readings of devices or boots not checked (other runs sharing the topic).
    pub foreign: u64,
    /// Gap markers (`tidegate-gap` header): not readings, counted apart.
    pub gap_markers: u64,
    /// Readings the gap markers say were dropped before they were forwarded.
    pub gap_readings: u64,
    /// Records whose (gateway, epoch, journal sequence) was seen before: the gateway sent a
    /// journal record twice (a device's own re-send has a new journal sequence).
    pub replays: u64,
}

impl VerifyReport {
    /// Whether every expected counter was found.
    pub fn is_complete(&self) -> bool {
        self.devices.values().all(|d| d.missing_count == 0)
    }

    /// Whether no rule was broken anywhere.
    pub fn is_ok(&self) -> bool {
        self.unparseable == 0 && self.devices.values().all(DeviceVerify::is_ok)
    }

    /// Expected counters missing, all devices.
    pub fn missing(&self) -> u64 {
        self.devices.values().map(|d| d.missing_count).sum()
    }

    /// Duplicate records, all devices.
    pub fn duplicates(&self) -> u64 {
        self.devices.values().map(|d| d.duplicates).sum()
    }

    /// Reordered counters, all devices.
    pub fn out_of_order(&self) -> u64 {
        self.devices.values().map(|d| d.out_of_order).sum()
    }

    /// Records of the checked devices.
    pub fn received(&self) -> u64 {
        self.devices.values().map(|d| d.received).sum()
    }

    /// Every broken rule, one line per device (for assertion messages).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| !d.is_ok())
            .map(|(id, d)| format!("{id}: {}", d.problems().join("; ")))
            .collect();
        if self.unparseable > 0 {
            out.push(format!("{} records are not readings", self.unparseable));
        }
        out
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}  problems",
            "device", "received", "expected", "missing", "dups", "reorder", "parts"
        )?;
        for (id, d) in &self.devices {
            writeln!(
                f,
                "{:<10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}  {}",
                id,
                d.received,
                d.expected,
                d.missing_count,
                d.duplicates,
                d.out_of_order,
                d.partitions.len(),
                d.problems().join("; ")
            )?;
        }
        write!(
            f,
            "{} records: {} of {} devices, {} missing, {} duplicates ({} replayed by the gateway), {} out of order, {} unparseable, {} foreign, {} gap markers for {} dropped readings",
            self.readings,
            self.received(),
            self.devices.len(),
            self.missing(),
            self.duplicates(),
            self.replays,
            self.out_of_order(),
            self.unparseable,
            self.foreign,
            self.gap_markers,
            self.gap_readings
        )
    }
}

fn sorted(readings: &[KafkaReading]) -> Vec<&KafkaReading> {
    let mut v: Vec<&KafkaReading> = readings.iter().collect();
    v.sort_by_key(|r| (r.partition, r.offset));
    v
}

/// Checks records (any order; they are sorted by partition and offset) against a fleet run.
pub fn check(readings: &[KafkaReading], report: &FleetReport) -> VerifyReport {
    let mut c = Checker::new();
    for r in sorted(readings) {
        c.add(r);
    }
    c.report(Some(report))
}

/// Checks records without a fleet report: per device (latest boot), holes in the counters,
/// duplicates, reordering, headers and keys.
pub fn check_stream(readings: &[KafkaReading]) -> VerifyReport {
    let mut c = Checker::new();
    for r in sorted(readings) {
        c.add(r);
    }
    c.report(None)
}

/// Reads `topic` until every reading `report` says was acknowledged is there, or `timeout`
/// passes; returns the last report either way. Connection errors (the topic not existing
/// yet, the cluster restarting) are retried until the timeout.
pub async fn wait_until_complete(
    brokers: &[String],
    topic: &str,
    report: &FleetReport,
    timeout: Duration,
) -> Result<VerifyReport, VerifyError> {
    wait_until_complete_with(brokers, topic, report, timeout, &|b| b).await
}

/// [`wait_until_complete`], with the client builder passed through `client` (TLS, SASL).
pub async fn wait_until_complete_with(
    brokers: &[String],
    topic: &str,
    report: &FleetReport,
    timeout: Duration,
    client: &ClientOptions,
) -> Result<VerifyReport, VerifyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut checker = Checker::new();
    let mut reader: Option<TopicReader> = None;
    loop {
        let result = async {
            if reader.is_none() {
                reader = Some(
                    TopicReader::connect_with(brokers, topic, StartAt::Earliest, client).await?,
                );
            }
            if let Some(r) = reader.as_mut() {
                for rec in r.poll().await? {
                    checker.add(&rec);
                }
            }
            Ok::<(), VerifyError>(())
        }
        .await;
        let now = tokio::time::Instant::now();
        match result {
            Ok(()) => {
                let v = checker.report(Some(report));
                if v.is_complete() || now >= deadline {
                    return Ok(v);
                }
            }
            Err(e) => {
                if now >= deadline {
                    return Err(e);
                }
                tracing::debug!(error = %e, "reading Kafka failed; retrying");
                // Keep the cursor if we had one: a transient fetch error must not make us
                // read (and count) everything twice.
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{DeviceReport, Protocol, Qos};
    use crate::latency::Histogram;
    use crate::telemetry::Turbine;

    const BOOT: u64 = 77;

    fn reading(device_n: usize, seq: u64, offset: i64) -> KafkaReading {
        let mut t = Turbine::new(1, device_n, BOOT, 1.0);
        let mut r = t.step(1_000);
        r.seq = seq;
        KafkaReading {
            partition: device_n as i32 % 3,
            offset,
            key: Some(topic_for(&r.device).into_bytes()),
            payload: r.to_json(),
            headers: vec![
                (GATEWAY_HEADER.into(), b"gw-test".to_vec()),
                (SEQ_HEADER.into(), offset.to_string().into_bytes()),
            ],
            timestamp_ms: 1_000,
        }
    }

    fn stream(device_n: usize, seqs: &[u64]) -> Vec<KafkaReading> {
        seqs.iter()
            .enumerate()
            .map(|(i, &s)| reading(device_n, s, i as i64))
            .collect()
    }

    fn fleet(acked: &[(usize, std::ops::RangeInclusive<u64>)]) -> FleetReport {
        let devices = acked
            .iter()
            .map(|(n, r)| {
                let d = DeviceReport {
                    boot: BOOT,
                    topic: topic_for(&crate::device_id(*n)),
                    published: *r.end(),
                    acked: r.clone().collect(),
                    ..DeviceReport::default()
                };
                (crate::device_id(*n), d)
            })
            .collect();
        FleetReport {
            broker: "test".into(),
            qos: Qos::AtLeastOnce,
            protocol: Protocol::V4,
            devices,
            puback_latency: Default::default(),
            elapsed: Duration::from_secs(1),
            publish_elapsed: Duration::from_secs(1),
            puback_histogram: Histogram::new(),
        }
    }

    #[test]
    fn a_complete_ordered_stream_passes() {
        let v = check(&stream(1, &[1, 2, 3, 4, 5]), &fleet(&[(1, 1..=5)]));
        assert!(v.is_ok() && v.is_complete(), "{v}");
        assert_eq!(v.devices["wt-0001"].received, 5);
        assert_eq!((v.duplicates(), v.foreign), (0, 0));
    }

    #[test]
    fn every_boot_of_a_rebooted_device_is_checked_with_binary_payloads_too() {
        use crate::fleet::BootReport;
        // Boot 77 wrote 1..=3 (JSON), boot 78 wrote 1..=4 (binary); counter 2 of the first
        // boot never arrived.
        let mut records = Vec::new();
        let mut t = Turbine::new(1, 1, BOOT, 1.0);
        for seq in [1, 3] {
            let mut r = t.step(1_000);
            r.seq = seq;
            records.push(r.to_json());
        }
        t.reboot(BOOT + 1);
        for _ in 1..=4 {
            records.push(t.step(2_000).to_binary());
        }
        let readings: Vec<KafkaReading> = records
            .into_iter()
            .enumerate()
            .map(|(i, payload)| KafkaReading {
                payload,
                ..reading(1, 0, i as i64)
            })
            .collect();
        let mut f = fleet(&[(1, 1..=4)]);
        if let Some(d) = f.devices.get_mut("wt-0001") {
            d.boot = BOOT + 1;
            d.earlier_boots.push(BootReport {
                boot: BOOT,
                published: 3,
                acked: (1..=3).collect(),
                unacked: SeqSet::new(),
            });
        }
        let v = check(&readings, &f);
        assert_eq!(v.devices["wt-0001"].boot, BOOT + 1);
        assert!(v.devices["wt-0001"].is_ok(), "{v}");
        assert_eq!(v.devices["wt-0001"].received, 4);
        let first = &v.devices[&format!("wt-0001@{BOOT}")];
        assert_eq!(first.missing, vec![(2, 2)], "{v}");
        assert!(!v.is_complete());
        assert_eq!((v.foreign, v.unparseable), (0, 0));
    }

    #[test]
    fn a_planted_gap_is_reported_as_missing() {
        let v = check(&stream(1, &[1, 2, 4, 5]), &fleet(&[(1, 1..=5)]));
        assert!(!v.is_complete() && !v.is_ok());
        assert_eq!(v.devices["wt-0001"].missing, vec![(3, 3)]);
        assert_eq!(v.devices["wt-0001"].out_of_order, 0);
    }

    #[test]
    fn unacknowledged_readings_may_be_absent() {
        // 5 was published but its PUBACK never came: not missing.
        let v = check(&stream(1, &[1, 2, 3, 4]), &fleet(&[(1, 1..=4)]));
        assert!(v.is_ok(), "{v}");
        // ...and present is fine too.
        let v = check(&stream(1, &[1, 2, 3, 4, 5]), &fleet(&[(1, 1..=4)]));
        assert!(v.is_ok(), "{v}");
        assert_eq!(v.devices["wt-0001"].unacked_received, 1);
    }

    #[test]
    fn a_planted_duplicate_is_counted() {
        let v = check(&stream(1, &[1, 2, 2, 3]), &fleet(&[(1, 1..=3)]));
        assert_eq!(v.devices["wt-0001"].duplicates, 1);
        assert_eq!(v.devices["wt-0001"].out_of_order, 0);
        assert!(v.is_ok(), "duplicates are allowed: {v}");
    }

    #[test]
    fn a_planted_reordering_is_caught() {
        let v = check(&stream(1, &[1, 2, 4, 3, 5]), &fleet(&[(1, 1..=5)]));
        let d = &v.devices["wt-0001"];
        assert_eq!(d.out_of_order, 1);
        assert_eq!(d.reorder_examples, vec![(4, 3)]);
        assert_eq!(d.missing_count, 0);
        assert!(!v.is_ok());
    }

    #[test]
    fn a_contiguous_replay_after_a_crash_is_duplicates_only() {
        // Crash after 7 was forwarded but before the cursor moved past 4: 5..=7 replayed.
        let v = check(
            &stream(1, &[1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9]),
            &fleet(&[(1, 1..=9)]),
        );
        let d = &v.devices["wt-0001"];
        assert_eq!((d.duplicates, d.out_of_order, d.missing_count), (3, 0, 0));
        assert!(v.is_ok(), "{v}");
    }

    #[test]
    fn missing_headers_wrong_keys_and_split_partitions_are_reported() {
        let mut s = stream(2, &[1, 2, 3, 4]);
        s[0].headers.retain(|(k, _)| k != GATEWAY_HEADER);
        s[1].headers.retain(|(k, _)| k != SEQ_HEADER);
        s[2].headers[1].1 = b"x1".to_vec();
        s[3].key = Some(b"turbines/wt-9999/telemetry".to_vec());
        let v = check(&s, &fleet(&[(2, 1..=4)]));
        let d = &v.devices["wt-0002"];
        assert_eq!(
            (
                d.missing_gateway_header,
                d.missing_seq_header,
                d.bad_seq_header,
                d.wrong_key
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(d.problems().len(), 4, "{:?}", d.problems());

        let mut s = stream(2, &[1, 2]);
        s[1].partition = 9;
        let v = check(&s, &fleet(&[(2, 1..=2)]));
        assert!(!v.is_ok());
    }

    #[test]
    fn other_boots_and_devices_are_foreign_and_a_silent_device_is_all_missing() {
        let mut s = stream(1, &[1, 2]);
        let mut old = reading(1, 1, 10);
        old.payload = String::from_utf8(old.payload)
            .expect("utf8")
            .replace("\"boot\":77", "\"boot\":5")
            .into_bytes();
        s.push(old);
        s.extend(stream(3, &[1]));
        s.push(KafkaReading {
            payload: b"not json".to_vec(),
            ..reading(1, 1, 20)
        });
        let v = check(&s, &fleet(&[(1, 1..=2), (2, 1..=3)]));
        assert_eq!(v.foreign, 2);
        assert_eq!(v.unparseable, 1);
        assert_eq!(v.devices["wt-0002"].missing, vec![(1, 3)]);
    }

    #[test]
    fn gap_markers_are_counted_apart_and_a_resent_journal_record_is_a_replay() {
        let mut s = stream(1, &[1, 2, 3]);
        // The gateway sends journal record 2 again (same gateway, epoch, seq): a replay.
        s.push(reading(1, 2, 1));
        s.push(KafkaReading {
            key: Some(b"$tidegate/gap".to_vec()),
            payload: Vec::new(),
            headers: vec![
                (GATEWAY_HEADER.into(), b"gw-test".to_vec()),
                (SEQ_HEADER.into(), b"40".to_vec()),
                (GAP_HEADER.into(), b"17..40".to_vec()),
            ],
            ..reading(1, 0, 9)
        });
        let v = check(&s, &fleet(&[(1, 1..=3)]));
        assert_eq!((v.gap_markers, v.gap_readings), (1, 24));
        assert_eq!(
            (v.replays, v.duplicates(), v.unparseable, v.foreign),
            (1, 1, 0, 0)
        );
        assert!(v.is_ok(), "{v}");
    }

    #[test]
    fn without_a_fleet_report_holes_below_the_highest_counter_are_gaps() {
        let mut s = stream(1, &[1, 2, 5, 3]);
        s.extend(stream(2, &[1, 2, 3]));
        let v = check_stream(&s);
        assert_eq!(v.devices["wt-0001"].missing, vec![(4, 4)]);
        assert_eq!(v.devices["wt-0001"].out_of_order, 1);
        assert!(v.devices["wt-0002"].is_ok());
    }
}

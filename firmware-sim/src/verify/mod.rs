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
//! - **thinned markers**: records with a `tidegate-thinned` header (`first..last`, journal
//!   sequences) and a `tidegate-thin-factor` header (`N`), which tidegate sends in front of a
//!   span of the journal that `on_full = "thin"` kept at about 1/N per topic; they are not
//!   readings and are counted apart, with the journal sequences they announce and the
//!   largest factor. A device's counters missing between two of its delivered readings are
//!   **thinned**, not missing, when some journal sequence between the two `tidegate-seq`
//!   values never arrived and every one that never arrived was announced (those that did
//!   arrive are other devices' readings, or readings a forwarder had read before thinning
//!   took them); they are reported apart, with the widest such hole per device. Sequences
//!   are compared within one journal (`tidegate-gateway` and `tidegate-epoch`);
//! - **replays**: records whose (`tidegate-gateway`, `tidegate-epoch`, `tidegate-seq`) was
//!   seen before — the gateway sent one journal record twice. A device that re-sends a
//!   reading whose PUBACK it never got makes a duplicate with a *new* journal sequence,
//!   which is not a replay.
//!
//! `reader` reads the topic, `checker` applies the rules; this module ties them to a fleet's
//! report. `live` checks a live topic instead: every device's newest reading there, and
//! whether it is younger than a bound; `live_mqtt` reads an MQTT upstream's live lane into
//! the same table.

mod checker;
mod live;
mod live_mqtt;
#[cfg(test)]
mod live_tests;
mod reader;
#[cfg(test)]
mod tests;

pub use checker::{Checker, DeviceVerify, Replay, VerifyReport};
pub use live::{read_live, LiveReading, LiveReport, LiveTable, LiveWatcher, LIVE_HEADER};
pub use live_mqtt::MqttLiveWatcher;
pub use reader::{read_topic, ClientOptions, PartitionReader, StartAt, TopicReader};

use std::time::Duration;

use crate::fleet::FleetReport;

/// Header carrying the gateway id.
pub const GATEWAY_HEADER: &str = "tidegate-gateway";
/// Header carrying the journal sequence number (decimal ASCII).
pub const SEQ_HEADER: &str = "tidegate-seq";
/// Header carrying the journal's epoch (decimal ASCII).
pub const EPOCH_HEADER: &str = "tidegate-epoch";
/// Header of a gap marker: `first..last`, the journal sequences dropped unsent.
pub const GAP_HEADER: &str = "tidegate-gap";

/// Header of a thinned marker: `first..last`, the journal sequences of a span kept at about
/// 1/factor per topic.
pub const THINNED_HEADER: &str = "tidegate-thinned";
/// Header of a thinned marker: the factor `N` of the span (decimal ASCII).
pub const THIN_FACTOR_HEADER: &str = "tidegate-thin-factor";

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

    /// The value of header `name` as text, if present and UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.header(name)?).ok()
    }

    /// The record's journal sequence (`tidegate-seq`), if it is a decimal number.
    pub fn journal_seq(&self) -> Option<u64> {
        self.header_str(SEQ_HEADER)?.parse().ok()
    }

    /// The `first..last` range (decimal, inclusive) in header `name`: a gap marker's
    /// ([`GAP_HEADER`]) or a thinned marker's ([`THINNED_HEADER`]).
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        let (a, b) = self.header_str(name)?.split_once("..")?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// A thinned marker's span and factor, if this record is one and both parse.
    pub fn thinned(&self) -> Option<(u64, u64, u64)> {
        let (first, last) = self.range(THINNED_HEADER)?;
        let factor = self.header_str(THIN_FACTOR_HEADER)?.parse().ok()?;
        Some((first, last, factor))
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
    /// An MQTT broker address that is not `host:port`.
    #[error("MQTT broker {0:?} is not host:port")]
    BadBroker(String),
    /// The MQTT connection failed.
    #[error("mqtt: {0}")]
    Mqtt(#[from] rumqttc::v5::ConnectionError),
    /// The MQTT client could not take a request.
    #[error("mqtt client: {0}")]
    MqttClient(#[from] rumqttc::v5::ClientError),
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

//! Producing ordered batches: a batch is split by partition in journal order, each
//! partition's share goes in size-bounded requests strictly one after another (at most one
//! request in flight per partition), and what the cluster acknowledged of a failed batch
//! is remembered so its retry sends only the rest. Keeps *ordered per key* and *a retry
//! never resends what was acknowledged* (see the [module docs](super)).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression as KafkaCompression, PartitionClient};
use rskafka::record::Record as KafkaRecord;
use tracing::debug;

use super::errors::{Failure, Severity};
use super::{
    partition_for_key, KafkaSink, GAP_KEY, HEADER_EPOCH, HEADER_GAP, HEADER_GATEWAY, HEADER_LIVE,
    HEADER_SEQ, HEADER_THINNED, HEADER_THIN_FACTOR, THINNED_KEY,
};
use crate::config::Compression;
use crate::record::{Item, Position};
use crate::sinks::SinkError;

/// Most estimated bytes in one produce request. Brokers refuse a record batch above
/// `message.max.bytes` (1 MiB by default) with MESSAGE_TOO_LARGE, which tidegate must treat
/// as fatal; staying under it with uncompressed sizes means a large partition share is
/// split into several requests instead of being refused.
pub(super) const MAX_REQUEST_BYTES: usize = 960 * 1024;

/// Upper bound of the Kafka v2 per-record framing (length, attributes, deltas, key/value
/// lengths, header count and header lengths as varints), added to each record's size
/// estimate for [`MAX_REQUEST_BYTES`].
pub(super) const RECORD_OVERHEAD_BYTES: usize = 64;

/// The positions (see [`Position`]) of one batch the cluster has acknowledged, so the retry
/// of that batch sends only the rest. Keyed by position, not sequence number: a thinned
/// marker shares its number with the reading after it.
#[derive(Debug, Default)]
pub(super) struct AckedMemory {
    /// Where the batch the set belongs to starts.
    pub(super) batch_first: Option<Position>,
    /// Acknowledged positions of that batch.
    pub(super) seqs: HashSet<Position>,
}

impl AckedMemory {
    /// Forgets everything unless `first` starts the batch the memory belongs to.
    pub(super) fn start_batch(&mut self, first: Position) {
        if self.batch_first != Some(first) {
            self.batch_first = Some(first);
            self.seqs.clear();
        }
    }

    pub(super) fn clear(&mut self) {
        self.batch_first = None;
        self.seqs.clear();
    }
}

impl KafkaSink {
    /// Sends `batch` (minus what is already acknowledged) over `partitions` clients.
    pub(super) async fn deliver(
        &mut self,
        batch: &[Item],
        partitions: Vec<Arc<PartitionClient>>,
    ) -> Result<(), SinkError> {
        self.skip_delivered(batch, partitions.len());
        let plan = plan(batch, &self.acked.seqs, partitions.len());
        let (gateway, epoch, live) = (&self.gateway_id, self.epoch, self.live);
        let sends = plan
            .into_iter()
            .zip(partitions)
            .enumerate()
            .filter(|(_, (records, _))| !records.is_empty())
            .map(|(partition, (records, client))| {
                let records = records
                    .into_iter()
                    .map(|item| {
                        let mut record = to_kafka_record(item, gateway, epoch);
                        if live {
                            record.headers.insert(HEADER_LIVE.to_owned(), b"1".to_vec());
                        }
                        (item.position(), record)
                    })
                    .collect();
                produce_partition(
                    partition,
                    client,
                    records,
                    self.compression,
                    self.request_timeout,
                )
            })
            .collect::<Vec<_>>();
        let outcomes = futures::future::join_all(sends).await;

        let mut failures = Vec::new();
        for outcome in outcomes {
            self.acked.seqs.extend(outcome.acked);
            if let Some(failure) = outcome.failure {
                failures.push((outcome.partition, outcome.unacked, failure));
            }
        }
        if failures.is_empty() {
            self.acked.clear();
            return Ok(());
        }
        // Whatever failed may or may not be in the topic: read the tails before resending.
        self.delivered = None;
        self.unsettled_since = std::time::Instant::now();

        if failures.iter().any(|(_, _, f)| f.verdict().reconnect) {
            debug!(upstream = %self.target.upstream, "Dropping the Kafka connection after a connection-level error.");
            self.connection = None;
            self.delivered = None;
        }
        // Report a fatal failure if there is one: it is what an operator must act on.
        failures.sort_by_key(|(_, _, f)| f.verdict().severity != Severity::Fatal);
        let acked = batch
            .iter()
            .filter(|item| self.acked.seqs.contains(&item.position()))
            .count();
        let failed = failures.len();
        let Some((partition, unacked, failure)) = failures.into_iter().next() else {
            return Ok(());
        };
        let more = match failed - 1 {
            0 => String::new(),
            n => format!(" (and {n} more partitions failed)"),
        };
        let verdict = failure.verdict();
        let message = format!(
            "{}: producing {unacked} records to partition {partition} failed: {}{}{more}; \
             {acked} of the batch's {} records are acknowledged and will not be sent again",
            self.target,
            failure.describe(self.request_timeout),
            verdict.hint.map(|h| format!("; {h}")).unwrap_or_default(),
            batch.len(),
        );
        Err(failure.into_error(verdict.severity, message))
    }
}

/// Splits `batch` into one list per partition, in journal order, leaving out the items
/// in `acked`.
pub(super) fn plan<'a>(
    batch: &'a [Item],
    acked: &HashSet<Position>,
    partitions: usize,
) -> Vec<Vec<&'a Item>> {
    let mut plan = vec![Vec::new(); partitions.max(1)];
    for item in batch
        .iter()
        .filter(|item| !acked.contains(&item.position()))
    {
        let partition = partition_for_key(key(item), partitions);
        plan[partition].push(item);
    }
    plan
}

/// The Kafka key of an item: a reading's topic, [`GAP_KEY`] for a gap, [`THINNED_KEY`] for
/// a thinned marker. It decides the partition, so every gap of this journal goes to one
/// partition, in order, and every thinned marker to one.
pub(super) fn key(item: &Item) -> &[u8] {
    match item {
        Item::Reading(r) => r.reading.topic.as_bytes(),
        Item::Gap(_) => GAP_KEY.as_bytes(),
        Item::Thinned(_) => THINNED_KEY.as_bytes(),
    }
}

/// Splits one partition's records into produce requests of at most [`MAX_REQUEST_BYTES`]
/// (estimated); a single larger record goes alone and the broker decides.
pub(super) fn chunk(records: Vec<(Position, KafkaRecord)>) -> Vec<Vec<(Position, KafkaRecord)>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (seq, record) in records {
        let size = record.approximate_size() + RECORD_OVERHEAD_BYTES;
        if !current.is_empty() && bytes + size > MAX_REQUEST_BYTES {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push((seq, record));
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// What happened to one partition's share of a batch.
pub(super) struct PartitionOutcome {
    partition: usize,
    /// Positions the broker acknowledged.
    acked: Vec<Position>,
    /// Records not acknowledged (the failed request and every later one).
    unacked: usize,
    failure: Option<Failure>,
}

/// Produces `records` to one partition, chunk after chunk, stopping at the first failure
/// so nothing later overtakes what failed.
pub(super) async fn produce_partition(
    partition: usize,
    client: Arc<PartitionClient>,
    records: Vec<(Position, KafkaRecord)>,
    compression: KafkaCompression,
    timeout: Duration,
) -> PartitionOutcome {
    let total = records.len();
    let mut acked = Vec::with_capacity(total);
    for chunk in chunk(records) {
        let (seqs, records): (Vec<Position>, Vec<KafkaRecord>) = chunk.into_iter().unzip();
        let count = records.len();
        let failure =
            match tokio::time::timeout(timeout, client.produce(records, compression)).await {
                Ok(Ok(offsets)) => {
                    debug!(
                        topic = client.topic(),
                        partition,
                        records = count,
                        first_offset = offsets.first().copied(),
                        "Produced records."
                    );
                    acked.extend(seqs);
                    continue;
                }
                Ok(Err(e)) => Failure::Kafka(e),
                Err(_) => Failure::TimedOut,
            };
        return PartitionOutcome {
            partition,
            unacked: total - acked.len(),
            acked,
            failure: Some(failure),
        };
    }
    PartitionOutcome {
        partition,
        acked,
        unacked: 0,
        failure: None,
    }
}

/// Maps one batch item to the Kafka record tidegate sends: a reading keyed by its topic
/// with its payload as value; a gap keyed [`GAP_KEY`] with an empty value and the range in
/// the [`HEADER_GAP`] header as `first..last`; a thinned marker keyed [`THINNED_KEY`] with
/// an empty value, the range in [`HEADER_THINNED`] and the factor in [`HEADER_THIN_FACTOR`].
pub(super) fn to_kafka_record(item: &Item, gateway_id: &str, epoch: Option<u64>) -> KafkaRecord {
    let mut headers = BTreeMap::new();
    headers.insert(HEADER_GATEWAY.to_owned(), gateway_id.as_bytes().to_vec());
    headers.insert(HEADER_SEQ.to_owned(), item.seq().to_string().into_bytes());
    if let Some(epoch) = epoch {
        headers.insert(HEADER_EPOCH.to_owned(), epoch.to_string().into_bytes());
    }
    let value = match item {
        Item::Reading(r) => r.reading.payload.to_vec(),
        Item::Gap(g) => {
            headers.insert(
                HEADER_GAP.to_owned(),
                format!("{}..{}", g.first, g.last).into_bytes(),
            );
            Vec::new()
        }
        Item::Thinned(t) => {
            headers.insert(
                HEADER_THINNED.to_owned(),
                format!("{}..{}", t.first, t.last).into_bytes(),
            );
            headers.insert(
                HEADER_THIN_FACTOR.to_owned(),
                t.factor.to_string().into_bytes(),
            );
            Vec::new()
        }
    };
    KafkaRecord {
        key: Some(key(item).to_vec()),
        value: Some(value),
        headers,
        timestamp: ingest_time(item.ingest_ms()),
    }
}

/// The record timestamp for an ingest time. A time chrono cannot represent (beyond the
/// year 262143) cannot come from a real clock; it is replaced by now rather than refused.
pub(super) fn ingest_time(ingest_ms: u64) -> DateTime<Utc> {
    i64::try_from(ingest_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}

pub(super) fn kafka_compression(compression: Compression) -> KafkaCompression {
    match compression {
        Compression::None => KafkaCompression::NoCompression,
        Compression::Gzip => KafkaCompression::Gzip,
        Compression::Snappy => KafkaCompression::Snappy,
        Compression::Lz4 => KafkaCompression::Lz4,
        Compression::Zstd => KafkaCompression::Zstd,
    }
}

//! Producing ordered batches: a batch is split by partition in journal order, each
//! partition's share goes in size-bounded requests strictly one after another (at most one
//! request in flight per partition), and what the cluster acknowledged of a failed batch
//! is remembered so its retry sends only the rest. Keeps *ordered per key* and *a retry
//! never resends what was acknowledged* (see the [module docs](super)).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression as KafkaCompression, PartitionClient};
use rskafka::record::EncodedRecords;
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
        let mut sends = Vec::with_capacity(partitions.len());
        for (partition, (items, client)) in plan.into_iter().zip(partitions).enumerate() {
            if items.is_empty() {
                continue;
            }
            let chunks = encode_chunks(&items, gateway, epoch, live).map_err(|position| {
                SinkError::fatal(format!(
                    "{}: journal record {} cannot be encoded as a Kafka record (a field longer \
                     than Kafka's 2 GiB limit); it is held and nothing after it is sent",
                    self.target, position.seq
                ))
            })?;
            sends.push(produce_partition(
                partition,
                client,
                chunks,
                self.compression,
                self.request_timeout,
            ));
        }
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

/// One produce request's worth of a partition's share: the records, encoded, and their
/// positions in the same order.
pub(super) struct Chunk {
    pub(super) positions: Vec<Position>,
    pub(super) records: EncodedRecords,
}

/// Encodes one partition's items (in journal order) as Kafka records, split into produce
/// requests of at most [`MAX_REQUEST_BYTES`] (estimated with [`RECORD_OVERHEAD_BYTES`] per
/// record); a single larger record goes alone and the broker decides. Each record is
/// written straight from the item's fields: no allocation per record. `Err` names an item
/// that cannot be encoded (a field beyond Kafka's 32-bit lengths).
pub(super) fn encode_chunks(
    items: &[&Item],
    gateway_id: &str,
    epoch: Option<u64>,
    live: bool,
) -> Result<Vec<Chunk>, Position> {
    let empty = || Chunk {
        positions: Vec::new(),
        records: EncodedRecords::default(),
    };
    let mut chunks = Vec::new();
    let mut current = empty();
    let mut estimated = 0;
    let mut fields = RecordFields::new(gateway_id, epoch, live);
    for item in items {
        let size = fields.estimated_size(item) + RECORD_OVERHEAD_BYTES;
        if !current.positions.is_empty() && estimated + size > MAX_REQUEST_BYTES {
            chunks.push(std::mem::replace(&mut current, empty()));
            estimated = 0;
        }
        estimated += size;
        fields
            .push_to(&mut current.records, item)
            .map_err(|_| item.position())?;
        current.positions.push(item.position());
    }
    if !current.positions.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}

/// What every record of a partition's share carries, and buffers for the header values
/// formatted per record, reused from record to record.
struct RecordFields<'a> {
    gateway_id: &'a str,
    epoch: Option<String>,
    live: bool,
    seq: itoa::Buffer,
    factor: itoa::Buffer,
    range: String,
}

impl<'a> RecordFields<'a> {
    fn new(gateway_id: &'a str, epoch: Option<u64>, live: bool) -> Self {
        RecordFields {
            gateway_id,
            epoch: epoch.map(|e| e.to_string()),
            live,
            seq: itoa::Buffer::new(),
            factor: itoa::Buffer::new(),
            range: String::new(),
        }
    }

    /// Key, value and header bytes of `item`'s record, at most (numbers counted at their
    /// widest); [`RECORD_OVERHEAD_BYTES`] covers the framing.
    fn estimated_size(&self, item: &Item) -> usize {
        const NUMBER: usize = 20;
        let mut size = key(item).len()
            + HEADER_GATEWAY.len()
            + self.gateway_id.len()
            + HEADER_SEQ.len()
            + NUMBER;
        if let Some(e) = &self.epoch {
            size += HEADER_EPOCH.len() + e.len();
        }
        if self.live {
            size += HEADER_LIVE.len() + 1;
        }
        size + match item {
            Item::Reading(r) => r.reading.payload.len(),
            Item::Gap(_) => HEADER_GAP.len() + 2 * NUMBER + 2,
            Item::Thinned(_) => {
                HEADER_THINNED.len() + 2 * NUMBER + 2 + HEADER_THIN_FACTOR.len() + NUMBER
            }
        }
    }

    /// Writes the record [`to_kafka_record`] maps `item` to (plus `tidegate-live` on the
    /// live lane), headers in the same key order, so the bytes are those `produce` sends
    /// for that record.
    fn push_to(
        &mut self,
        records: &mut EncodedRecords,
        item: &Item,
    ) -> Result<(), rskafka::record::EncodeError> {
        use std::fmt::Write;
        self.range.clear();
        let value: &[u8] = match item {
            Item::Reading(r) => &r.reading.payload,
            // Writing to a String cannot fail.
            Item::Gap(g) => {
                let _ = write!(self.range, "{}..{}", g.first, g.last);
                b""
            }
            Item::Thinned(t) => {
                let _ = write!(self.range, "{}..{}", t.first, t.last);
                b""
            }
        };
        let seq = self.seq.format(item.seq());
        let mut headers: [(&str, &[u8]); 7] = [("", b""); 7];
        let mut n = 0;
        macro_rules! add {
            ($k:expr, $v:expr) => {{
                headers[n] = ($k, $v);
                n += 1;
            }};
        }
        // In key order, as the BTreeMap of a `Record` gives them: tidegate-epoch,
        // tidegate-gap, tidegate-gateway, tidegate-live, tidegate-seq, tidegate-thin-factor,
        // tidegate-thinned.
        if let Some(e) = &self.epoch {
            add!(HEADER_EPOCH, e.as_bytes());
        }
        if let Item::Gap(_) = item {
            add!(HEADER_GAP, self.range.as_bytes());
        }
        add!(HEADER_GATEWAY, self.gateway_id.as_bytes());
        if self.live {
            add!(HEADER_LIVE, b"1");
        }
        add!(HEADER_SEQ, seq.as_bytes());
        if let Item::Thinned(t) = item {
            add!(HEADER_THIN_FACTOR, self.factor.format(t.factor).as_bytes());
            add!(HEADER_THINNED, self.range.as_bytes());
        }
        records.push(
            Some(key(item)),
            Some(value),
            &headers[..n],
            ingest_time(item.ingest_ms()),
        )
    }
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
    chunks: Vec<Chunk>,
    compression: KafkaCompression,
    timeout: Duration,
) -> PartitionOutcome {
    let total: usize = chunks.iter().map(|c| c.positions.len()).sum();
    let mut acked = Vec::with_capacity(total);
    for Chunk { positions, records } in chunks {
        let count = positions.len();
        let failure =
            match tokio::time::timeout(timeout, client.produce_encoded(records, compression)).await
            {
                Ok(Ok(offsets)) => {
                    debug!(
                        topic = client.topic(),
                        partition,
                        records = count,
                        first_offset = offsets.first().copied(),
                        "Produced records."
                    );
                    acked.extend(positions);
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

/// Maps one batch item to the Kafka record tidegate sends (the reference the encoder,
/// [`encode_chunks`], is tested against byte for byte): a reading keyed by its topic
/// with its payload as value; a gap keyed [`GAP_KEY`] with an empty value and the range in
/// the [`HEADER_GAP`] header as `first..last`; a thinned marker keyed [`THINNED_KEY`] with
/// an empty value, the range in [`HEADER_THINNED`] and the factor in [`HEADER_THIN_FACTOR`].
#[cfg(test)]
pub(super) fn to_kafka_record(
    item: &Item,
    gateway_id: &str,
    epoch: Option<u64>,
) -> rskafka::record::Record {
    let mut headers = std::collections::BTreeMap::new();
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
    rskafka::record::Record {
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

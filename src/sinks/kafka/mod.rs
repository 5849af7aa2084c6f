//! The Kafka sink: delivers journal batches to one topic of a Kafka-protocol cluster.
//!
//! # What it owns
//!
//! [`KafkaSink`] owns the connection to one upstream's cluster (an `rskafka` client and one
//! `PartitionClient` per partition of the topic), the mapping of a batch [`Item`] to a Kafka
//! record, the choice of partition, and the memory of which part of a failed batch the
//! cluster already acknowledged. It does no retrying or backoff of its own beyond what one
//! request needs: the forwarder ([`crate::forward`]) calls [`Sink::send`] again.
//!
//! # Layout
//!
//! * this file: the sink, its settings and state, and the [`Sink`] impl that ties the rest
//!   together (connect if needed, read the tails if unknown, deliver);
//! * `connection`: clients, topic metadata and creation, partitions;
//! * `produce`: planning a batch by partition, the record mapping, written straight into
//!   size-bounded produce requests (no allocation per record), sent in order;
//! * `tail`: the tail read behind exactly-once delivery;
//! * `errors`: classification of failures into retryable or fatal;
//! * [`partitioner`](partition_for_key): Kafka's murmur2 partitioner; [`security`]: TLS and SASL.
//!
//! # Record mapping
//!
//! | Kafka            | from the record                                   |
//! |------------------|---------------------------------------------------|
//! | key              | `reading.topic` (the MQTT topic / serial topic)   |
//! | value            | `reading.payload`, byte for byte                  |
//! | timestamp        | `reading.ingest_ms` (CreateTime)                  |
//! | header `tidegate-gateway` | the gateway id                           |
//! | header `tidegate-epoch`   | the journal's epoch, decimal ASCII       |
//! | header `tidegate-seq`     | the journal sequence, decimal ASCII      |
//! | header `tidegate-live`    | `1`, on the live lane's records only     |
//!
//! A gap ([`Item::Gap`]) becomes a record with key `$tidegate/gap` ([`GAP_KEY`]),
//! an empty value, the same three headers (`tidegate-seq` = the last reading it stands for)
//! and `tidegate-gap` = `first..last`, the inclusive range of readings `drop-oldest` removed
//! before this upstream sent them.
//!
//! A thinned marker ([`Item::Thinned`]) becomes a record with key `$tidegate/thinned`
//! ([`THINNED_KEY`]), an empty value, the same three headers (`tidegate-seq` = the first
//! sequence it announces), `tidegate-thinned` = `first..last` (the inclusive range
//! `on_full = "thin"` holds at a lower resolution) and `tidegate-thin-factor` = `N` (about
//! one reading in `N` per topic kept), timestamped with the ingest time of the reading it
//! stands in front of. It goes before the range's first reading this upstream gets, which
//! may carry the same `tidegate-seq`: a consumer tells them apart by the key.
//!
//! # The live lane
//!
//! [`KafkaSink::live`] is the same sink for an upstream's live lane: it sends to
//! `live_topic`, adds `tidegate-live: 1` ([`HEADER_LIVE`]) to every record, and creates a
//! missing topic with `cleanup.policy=compact`, so the topic reads as the latest reading
//! per key (device topic). Ordering and the tail read work as for the history: the live
//! lane hands it readings in increasing sequence order per partition. What it delivers is
//! best effort (the forwarder may skip a reading there, never in the history).
//!
//! The partition is Kafka's default for keyed records,
//! `toPositive(murmur2(key)) % partitions` ([`partition_for_key`]), so tidegate places a
//! key exactly where a Java or librdkafka producer would.
//!
//! # Invariants
//!
//! * **Ordered per key.** A batch is split by partition keeping journal order; each
//!   partition's share is produced in order, in chunks that go strictly one after another,
//!   with at most one produce request in flight per partition. Partitions go concurrently:
//!   they hold different keys.
//! * **Acknowledged means acknowledged.** `send` returns `Ok` only when every record of the
//!   batch has been acknowledged with `acks=all`; that is the forwarder's only reason to
//!   advance its cursor.
//! * **Records are told apart by position.** Every rule below compares an item's
//!   [`Position`](crate::record::Position): its `tidegate-seq` and whether it is a thinned
//!   marker, which stands just before the reading of the same number. A marker and a
//!   reading that share a number are two records, ordered marker first, in the acknowledged
//!   memory and in the tail read alike (the tail read knows a marker by its
//!   `tidegate-thinned` header).
//! * **A retry never resends what was acknowledged.** When some partitions succeed and
//!   others fail, the acknowledged positions are remembered for that batch (keyed by
//!   its first sequence number); the retry of the same batch skips them. What is skipped
//!   is always a prefix of each key's records, so skipping never reorders. The memory is
//!   cleared on success and whenever a batch with another first sequence arrives.
//!
//! * **Nothing already in the topic is sent again** (exactly once across crashes). Before
//!   the first send, and after any send whose outcome is unknown (timeout, connection lost,
//!   any failed produce), the sink reads the tail of every partition
//!   ([`highest_delivered`]) for the highest position carrying this gateway's id *and* the
//!   journal's epoch, and skips every record at or below it for that partition. That is
//!   sound because the sink writes each partition in increasing position order
//!   (see the first rule), so what a partition holds of this journal is a prefix of what
//!   was meant for it. Produce requests are never retried inside rskafka (the producing
//!   client has a zero retry deadline), so no request is repeated behind this check, and
//!   the read waits until [`tail::TAIL_SETTLE`] has passed since the start or the failure, so a
//!   request already on its way is applied (or not) before the tail is read.
//!
//! The limits of that rule (another writer with the same gateway id, retention deleting
//! the tail, a changed partition count, the bounded tail read) are in the README's
//! "Delivery guarantees under faults".
//!
//! # Connection
//!
//! [`KafkaSink::new`] does no I/O. The first `send` connects, reads the topic's metadata,
//! creates the topic if it is missing and `create_topic` allows it, and opens one client per
//! partition. Any connection-level error (refused, reset, timed out, leader moved, metadata
//! stale) drops all of it, so the next `send` starts over from the bootstrap brokers and
//! re-reads the partition count. Every network call is bounded by `request_timeout`.

mod connection;
mod errors;
mod partitioner;
mod produce;
pub mod security;
mod tail;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::Compression as KafkaCompression;

use crate::config::UpstreamConfig;
use crate::record::Item;
use crate::sinks::{Attachment, Sink, SinkError};
use crate::telemetry::ForwardCounters;

use connection::Connection;
pub use partitioner::{murmur2, partition_for_key};
use produce::{kafka_compression, AckedMemory};
pub use security::SaslMechanism;
use security::Security;
pub use tail::highest_delivered;

/// Header carrying the gateway id, so a consumer knows which gateway a record came from.
pub const HEADER_GATEWAY: &str = "tidegate-gateway";
/// Header carrying the journal sequence number in decimal ASCII; with the gateway id it
/// identifies a reading uniquely, so a consumer can drop duplicates.
pub const HEADER_SEQ: &str = "tidegate-seq";
/// Header carrying the journal's epoch in decimal ASCII: a journal created again restarts
/// its sequence at 1 under a new epoch, so de-duplication compares only the same epoch.
pub const HEADER_EPOCH: &str = "tidegate-epoch";
/// Header of a gap marker: `first..last`, the readings `drop-oldest` removed unsent.
pub const HEADER_GAP: &str = "tidegate-gap";
/// Header `1` on every record of the live lane ([`KafkaSink::live`]), so a consumer of a
/// shared topic can tell a sampled current value from the complete history.
pub const HEADER_LIVE: &str = "tidegate-live";

/// Header of a thinned marker: `first..last`, the readings `on_full = "thin"` holds at a
/// lower resolution, from the first this upstream had not sent.
pub const HEADER_THINNED: &str = "tidegate-thinned";
/// Header of a thinned marker: `N`, decimal; about one reading in `N` per topic of the
/// range is held (and delivered).
pub const HEADER_THIN_FACTOR: &str = "tidegate-thin-factor";

/// Key of the Kafka record that carries a gap. Reserved: ingest refuses every `$` topic, so
/// no reading has this key.
pub const GAP_KEY: &str = "$tidegate/gap";
/// Key of the Kafka record that carries a thinned marker; reserved like [`GAP_KEY`].
pub const THINNED_KEY: &str = "$tidegate/thinned";

/// Delivers batches to one Kafka topic. See the [module docs](self) for the guarantees.
pub struct KafkaSink {
    /// Who we talk to, for every log line and error message.
    target: Target,
    /// TLS and SASL settings; files and the password are read at every connect.
    security: Security,
    /// Batch compression, as configured.
    compression: KafkaCompression,
    /// Whether a missing topic may be created.
    create_topic: bool,
    /// Partition count for a topic tidegate creates.
    partitions: i32,
    /// Replication factor for a topic tidegate creates.
    replication_factor: i16,
    /// Bound on every network call; past it the call counts as failed (retryable).
    request_timeout: Duration,
    /// Value of the `tidegate-gateway` header.
    gateway_id: String,
    /// The live lane's sink ([`KafkaSink::live`]): `tidegate-live` header, compacted topic.
    live: bool,
    /// Value of the `tidegate-epoch` header, from [`Sink::attach`]. Without it (a sink
    /// never attached) records go without the header and nothing is de-duplicated.
    epoch: Option<u64>,
    /// `max_batch` of the upstream: with two batches unconfirmed at most, it bounds how far
    /// back the tail read must look.
    max_batch: usize,
    /// Per partition, the highest position of this gateway and epoch the last tail read
    /// found there: records at or below it are in the topic already and are skipped.
    /// `None` when the topic's state is unknown (start, after a failure): read the tails
    /// before sending anything.
    delivered: Option<Vec<Option<crate::record::Position>>>,
    /// The upstream's counters, from [`Sink::attach`].
    counters: Option<Arc<ForwardCounters>>,
    /// Since when requests whose outcome is unknown may still be applied by the broker
    /// (start, or the last failure): the tail read waits [`tail::TAIL_SETTLE`] from here.
    unsettled_since: std::time::Instant,
    /// The live connection; `None` until the first send and after connection errors.
    connection: Option<Connection>,
    /// What the cluster acknowledged of the batch currently being retried.
    acked: AckedMemory,
}

/// The upstream's identity as errors and logs name it.
struct Target {
    upstream: String,
    brokers: Vec<String>,
    topic: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upstream {:?} (Kafka brokers {}, topic {:?})",
            self.upstream,
            self.brokers.join(","),
            self.topic
        )
    }
}

impl KafkaSink {
    /// A sink for `config`'s brokers and topic, stamping records with `gateway_id`.
    ///
    /// Does no I/O: the cluster is contacted by the first [`Sink::send`], so a cluster that
    /// is down at start only delays delivery.
    pub fn new(config: &UpstreamConfig, gateway_id: &str) -> KafkaSink {
        KafkaSink::to_topic(config, gateway_id, &config.topic, false)
    }

    /// The sink of `config`'s live lane: as [`KafkaSink::new`], but to
    /// `config.uplink.live_topic`, with the `tidegate-live: 1` header on every record, and
    /// a topic it creates is compacted (see the [module docs](self#the-live-lane)).
    pub fn live(config: &UpstreamConfig, gateway_id: &str) -> KafkaSink {
        KafkaSink::to_topic(config, gateway_id, &config.uplink.live_topic, true)
    }

    fn to_topic(config: &UpstreamConfig, gateway_id: &str, topic: &str, live: bool) -> KafkaSink {
        let security = Security::from_config(config);
        // Said once per upstream, by the history sink.
        if let Some(s) = security.sasl.as_ref().filter(|_| !live) {
            if s.mechanism == SaslMechanism::Plain && security.tls.is_none() {
                // Allowed (Kafka's SASL_PLAINTEXT), as on a trusted network, but the
                // password crosses the wire as is.
                tracing::warn!(upstream = %config.name, "sasl_mechanism = \"plain\" without tls = true sends the Kafka password unencrypted; set tls = true or use scram-sha-512.");
            }
        }
        KafkaSink {
            target: Target {
                upstream: config.name.clone(),
                brokers: config.brokers.clone(),
                topic: topic.to_owned(),
            },
            security,
            compression: kafka_compression(config.compression()),
            create_topic: config.create_topic,
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            request_timeout: config.request_timeout,
            gateway_id: gateway_id.to_owned(),
            live,
            epoch: None,
            max_batch: config.max_batch,
            delivered: None,
            counters: None,
            unsettled_since: std::time::Instant::now(),
            connection: None,
            acked: AckedMemory::default(),
        }
    }

    /// Sets the journal epoch, as the forwarder's [`Sink::attach`] does (tests).
    pub fn with_epoch(mut self, epoch: u64) -> KafkaSink {
        self.epoch = Some(epoch);
        self
    }

    /// The partition count of the connected topic, or `None` while disconnected.
    pub fn partition_count(&self) -> Option<usize> {
        self.connection.as_ref().map(|c| c.partitions.len())
    }
}

impl Sink for KafkaSink {
    async fn send(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        self.acked.start_batch(first.position());
        let partitions = match &self.connection {
            Some(connection) => connection.partitions.clone(),
            None => {
                let connection = self.connect().await?;
                let partitions = connection.partitions.clone();
                self.connection = Some(connection);
                partitions
            }
        };
        if self.delivered.as_ref().map(Vec::len) != Some(partitions.len()) {
            self.delivered = Some(self.read_tails(&partitions).await?);
        }
        self.deliver(batch, partitions).await
    }

    fn attach(&mut self, attachment: Attachment) {
        self.epoch = attachment.epoch;
        self.counters = Some(attachment.counters);
    }

    fn wants_gap_markers(&self) -> bool {
        true
    }
}

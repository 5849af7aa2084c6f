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
//!
//! A gap ([`Item::Gap`]) becomes a record with key `$tidegate/gap` ([`GAP_KEY`]),
//! an empty value, the same three headers (`tidegate-seq` = the last reading it stands for)
//! and `tidegate-gap` = `first..last`, the inclusive range of readings `drop-oldest` removed
//! before this upstream sent them.
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
//! * **A retry never resends what was acknowledged.** When some partitions succeed and
//!   others fail, the acknowledged sequence numbers are remembered for that batch (keyed by
//!   its first sequence number); the retry of the same batch skips them. What is skipped
//!   is always a prefix of each key's records, so skipping never reorders. The memory is
//!   cleared on success and whenever a batch with another first sequence arrives.
//!
//! * **Nothing already in the topic is sent again** (exactly once across crashes). Before
//!   the first send, and after any send whose outcome is unknown (timeout, connection lost,
//!   any failed produce), the sink reads the tail of every partition
//!   ([`highest_delivered`]) for the highest `tidegate-seq` carrying this gateway's id
//!   *and* the journal's epoch, and skips every record at or below it for that partition.
//!   That is sound because the sink writes each partition in increasing sequence order
//!   (see the first rule), so what a partition holds of this journal is a prefix of what
//!   was meant for it. Produce requests are never retried inside rskafka (the producing
//!   client has a zero retry deadline), so no request is repeated behind this check, and
//!   the read waits until [`TAIL_SETTLE`] has passed since the start or the failure, so a
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

mod partitioner;
pub mod security;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::error::{Error as KafkaError, ProtocolError, RequestError};
use rskafka::client::partition::{
    Compression as KafkaCompression, OffsetAt, PartitionClient, UnknownTopicHandling,
};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record as KafkaRecord;
use rskafka::BackoffConfig;
use tracing::{debug, info};

use crate::config::{Compression, UpstreamConfig};
use crate::record::Item;
use crate::sinks::{Attachment, Sink, SinkError};
use crate::telemetry::{add, ForwardCounters};

pub use partitioner::{murmur2, partition_for_key};
pub use security::SaslMechanism;
use security::Security;

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

/// Key of the Kafka record that carries a gap. Reserved: ingest refuses every `$` topic, so
/// no reading has this key.
pub const GAP_KEY: &str = "$tidegate/gap";

/// Records past the newest one of this journal that the tail read may step over in one
/// partition (others' records, when the topic is shared), on top of two batches' worth.
/// See [`KafkaSink::tail_limit`].
const TAIL_SCAN_MARGIN: i64 = 10_000;

/// Records the tail read looks at first; each further window is four times larger. A topic
/// this gateway writes alone has its newest record last, found by the first fetch.
const TAIL_FIRST_WINDOW: i64 = 64;

/// How long after its start, or after a failed send, the sink waits before reading the
/// tails. A request the previous process (or the failed attempt) had already written to
/// the socket may still be applied by the broker after the sender is gone; reading the
/// tail too early would miss it and send its records again. Capped at `request_timeout`.
const TAIL_SETTLE: Duration = Duration::from_secs(1);

/// Most bytes asked for in one fetch of the tail read.
const TAIL_FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// `max_wait_ms` of the tail read's fetches. The offsets read are below the end, so the
/// broker answers at once; Tansu answers a wait of 0 with no topic at all, hence not 0.
const TAIL_FETCH_WAIT_MS: i32 = 10;

/// Most estimated bytes in one produce request. Brokers refuse a record batch above
/// `message.max.bytes` (1 MiB by default) with MESSAGE_TOO_LARGE, which tidegate must treat
/// as fatal; staying under it with uncompressed sizes means a large partition share is
/// split into several requests instead of being refused.
const MAX_REQUEST_BYTES: usize = 960 * 1024;

/// Upper bound of the Kafka v2 per-record framing (length, attributes, deltas, key/value
/// lengths, header count and header lengths as varints), added to each record's size
/// estimate for [`MAX_REQUEST_BYTES`].
const RECORD_OVERHEAD_BYTES: usize = 64;

/// How often the topic's metadata is read again while waiting for a topic tidegate just
/// created to become visible.
const TOPIC_POLL_INTERVAL: Duration = Duration::from_millis(100);

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
    /// Value of the `tidegate-epoch` header, from [`Sink::attach`]. Without it (a sink
    /// never attached) records go without the header and nothing is de-duplicated.
    epoch: Option<u64>,
    /// `max_batch` of the upstream: with two batches unconfirmed at most, it bounds how far
    /// back the tail read must look.
    max_batch: usize,
    /// Per partition, the highest sequence of this gateway and epoch the last tail read
    /// found there: records at or below it are in the topic already and are skipped.
    /// `None` when the topic's state is unknown (start, after a failure): read the tails
    /// before sending anything.
    delivered: Option<Vec<Option<u64>>>,
    /// The upstream's counters, from [`Sink::attach`].
    counters: Option<Arc<ForwardCounters>>,
    /// Since when requests whose outcome is unknown may still be applied by the broker
    /// (start, or the last failure): the tail read waits [`TAIL_SETTLE`] from here.
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

/// A connected cluster: one client per partition, indexed by partition id.
struct Connection {
    /// Held so the cluster-wide clients live exactly as long as the partition clients.
    _client: Client,
    /// The client the partition clients come from: no retries inside rskafka, so a
    /// produce request whose answer was lost is never sent again behind the tail read.
    _producer: Client,
    /// `partitions[p]` produces to partition `p`; the length is the partition count.
    partitions: Vec<Arc<PartitionClient>>,
}

/// The sequence numbers of one batch the cluster has acknowledged, so the retry of that
/// batch sends only the rest.
#[derive(Debug, Default)]
struct AckedMemory {
    /// First sequence number of the batch the set belongs to.
    batch_first_seq: Option<u64>,
    /// Acknowledged sequence numbers of that batch.
    seqs: HashSet<u64>,
}

impl AckedMemory {
    /// Forgets everything unless `first_seq` starts the batch the memory belongs to.
    fn start_batch(&mut self, first_seq: u64) {
        if self.batch_first_seq != Some(first_seq) {
            self.batch_first_seq = Some(first_seq);
            self.seqs.clear();
        }
    }

    fn clear(&mut self) {
        self.batch_first_seq = None;
        self.seqs.clear();
    }
}

impl KafkaSink {
    /// A sink for `config`'s brokers and topic, stamping records with `gateway_id`.
    ///
    /// Does no I/O: the cluster is contacted by the first [`Sink::send`], so a cluster that
    /// is down at start only delays delivery.
    pub fn new(config: &UpstreamConfig, gateway_id: &str) -> KafkaSink {
        let security = Security::from_config(config);
        if let Some(s) = &security.sasl {
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
                topic: config.topic.clone(),
            },
            security,
            compression: kafka_compression(config.compression),
            create_topic: config.create_topic,
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            request_timeout: config.request_timeout,
            gateway_id: gateway_id.to_owned(),
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

    /// How many records back from a partition's end the tail read looks at most.
    ///
    /// Of this journal, at most two batches can be in the topic past the stored cursor: the
    /// one acknowledged whose cursor store was still in progress, and the one being sent.
    /// When the topic is this gateway's alone, the newest record is ours and one small
    /// fetch finds it; when others write too, their records lie between ours, and the
    /// margin lets the read step over [`TAIL_SCAN_MARGIN`] of them.
    pub fn tail_limit(&self) -> i64 {
        2 * self.max_batch as i64 + TAIL_SCAN_MARGIN
    }

    /// The partition count of the connected topic, or `None` while disconnected.
    pub fn partition_count(&self) -> Option<usize> {
        self.connection.as_ref().map(|c| c.partitions.len())
    }

    /// Retry policy for rskafka's own retries inside one call. The deadline keeps them
    /// well inside `request_timeout`, so a refused connection is reported with its cause
    /// rather than as a bare timeout.
    fn backoff_config(&self) -> BackoffConfig {
        BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 3.0,
            deadline: Some(self.request_timeout / 2),
        }
    }

    /// Runs one network call with the request timeout, turning any failure into a
    /// [`SinkError`] that names the upstream and what was being done.
    async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(what, Failure::Kafka(e))),
            Err(_) => Err(self.error(what, Failure::TimedOut)),
        }
    }

    /// The error for `failure` while doing `what`.
    fn error(&self, what: &str, failure: Failure) -> SinkError {
        let verdict = failure.verdict();
        let message = format!(
            "{}: {what} failed: {}{}",
            self.target,
            failure.describe(self.request_timeout),
            verdict.hint.map(|h| format!("; {h}")).unwrap_or_default()
        );
        failure.into_error(verdict.severity, message)
    }

    /// Connects to the cluster, makes sure the topic exists and opens its partitions.
    async fn connect(&self) -> Result<Connection, SinkError> {
        debug!(upstream = %self.target.upstream, brokers = %self.target.brokers.join(","), security = %self.security.describe(), "Connecting to the Kafka cluster.");
        // Read now, not at start: a renewed CA or rotated password is used by the next
        // connect. A file that cannot be used needs an operator: fatal (retried slowly).
        let problem = |e: security::SecurityError| {
            SinkError::fatal(format!("{}: cannot connect: {e}", self.target)).caused_by(e)
        };
        let tls = self.security.tls_config().map_err(problem)?;
        let sasl = self.security.sasl_config().map_err(problem)?;
        let builder = |backoff: BackoffConfig| {
            let mut b = ClientBuilder::new(self.target.brokers.clone())
                .client_id(format!("tidegate-{}", self.gateway_id))
                .backoff_config(backoff);
            if let Some(tls) = &tls {
                b = b.tls_config(tls.clone());
            }
            if let Some(sasl) = &sasl {
                b = b.sasl_config(sasl.clone());
            }
            b
        };
        let client = match self
            .within(
                "connecting to the bootstrap brokers",
                builder(self.backoff_config()).build(),
            )
            .await
        {
            Ok(client) => client,
            Err(e) => return Err(self.explain_connect_failure(e, tls.as_ref()).await),
        };
        // A deadline of zero: rskafka gives up at the first failure instead of sending the
        // request again itself. The forwarder retries, after the tail read.
        let producer = self
            .within(
                "connecting to the bootstrap brokers",
                builder(BackoffConfig {
                    deadline: Some(Duration::ZERO),
                    ..self.backoff_config()
                })
                .build(),
            )
            .await?;

        let count = match self.topic_partitions(&client).await? {
            Some(count) => count,
            None if self.create_topic => self.create_missing_topic(&client).await?,
            None => return Err(self.missing_topic_error()),
        };

        let topic = &self.target.topic;
        let opening = (0..count).map(|p| {
            let client = &producer;
            async move {
                let id = i32::try_from(p).unwrap_or(i32::MAX);
                let partition = self
                    .within(
                        &format!("opening partition {p}"),
                        client.partition_client(topic.clone(), id, UnknownTopicHandling::Retry),
                    )
                    .await?;
                Ok::<_, SinkError>(Arc::new(partition))
            }
        });
        let partitions = futures::future::try_join_all(opening).await?;
        info!(
            upstream = %self.target.upstream,
            brokers = %self.target.brokers.join(","),
            topic = %self.target.topic,
            partitions = partitions.len(),
            compression = ?self.compression,
            security = %self.security.describe(),
            "Connected to the Kafka cluster."
        );
        Ok(Connection {
            _client: client,
            _producer: producer,
            partitions,
        })
    }

    /// The error for a failed connect to the bootstrap brokers. rskafka keeps a TLS
    /// handshake's cause only as text inside its retry error, so with TLS on, one bare
    /// handshake per bootstrap broker finds which broker refused and why; a certificate
    /// problem is fatal (the operator must fix `ca_file` or the broker's certificate) and
    /// so retried at `backoff_max`, never in a hot loop.
    async fn explain_connect_failure(
        &self,
        error: SinkError,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> SinkError {
        if let Some(tls) = tls {
            for broker in &self.target.brokers {
                let probe =
                    security::handshake_failure(broker, tls.clone(), self.request_timeout / 2);
                if let Some(cause) = probe.await {
                    let hint = if self
                        .security
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.ca_file.is_some())
                    {
                        format!(
                            "is ca_file of upstream {:?} the CA that signed the broker's certificate, and does the certificate name {:?}?",
                            self.target.upstream,
                            broker.rsplit_once(':').map_or(broker.as_str(), |(host, _)| host)
                        )
                    } else {
                        format!(
                            "upstream {:?} has no ca_file, so the system's CAs are trusted; set ca_file to the CA that signed the broker's certificate",
                            self.target.upstream
                        )
                    };
                    return error.into_fatal(format!(
                        "upstream {}: TLS handshake with {broker} failed: {cause} ({hint})",
                        self.target.upstream
                    ));
                }
            }
        }
        // A refused login surfaces from rskafka's retries as text as well.
        match &self.security.sasl {
            Some(s)
                if error.is_retryable() && error.message().contains("Sasl handshake failed") =>
            {
                let message = format!(
                    "{}; check username, password_file / password_env and sasl_mechanism ({}) of upstream {:?}",
                    error.message(),
                    s.mechanism,
                    self.target.upstream
                );
                error.into_fatal(message)
            }
            _ => error,
        }
    }

    /// The topic's partition count, `None` if the cluster does not know the topic.
    async fn topic_partitions(&self, client: &Client) -> Result<Option<usize>, SinkError> {
        let topics = self
            .within("reading the cluster metadata", client.list_topics())
            .await?;
        let Some(topic) = topics.into_iter().find(|t| t.name == self.target.topic) else {
            return Ok(None);
        };
        // A BTreeSet: sorted and free of duplicates.
        let ids = topic.partitions;
        let contiguous = ids
            .iter()
            .enumerate()
            .all(|(i, &id)| usize::try_from(id).is_ok_and(|id| id == i));
        if ids.is_empty() || !contiguous {
            // Seen while a topic is being created or reassigned; metadata settles.
            return Err(SinkError::retryable(format!(
                "{}: the cluster metadata lists partitions {ids:?} for the topic, not 0..n; \
                 waiting for it to settle",
                self.target
            )));
        }
        Ok(Some(ids.len()))
    }

    /// Creates the topic (tolerating a concurrent creator) and waits until its metadata
    /// shows; returns the partition count it actually has.
    async fn create_missing_topic(&self, client: &Client) -> Result<usize, SinkError> {
        let controller = client
            .controller_client()
            .map_err(|e| self.error("finding the cluster controller", Failure::Kafka(e)))?;
        let timeout_ms = i32::try_from(self.request_timeout.as_millis()).unwrap_or(i32::MAX);
        let created = controller.create_topic(
            self.target.topic.clone(),
            self.partitions,
            self.replication_factor,
            timeout_ms,
        );
        match tokio::time::timeout(self.request_timeout, created).await {
            Ok(Ok(())) => info!(
                upstream = %self.target.upstream,
                topic = %self.target.topic,
                partitions = self.partitions,
                replication_factor = self.replication_factor,
                "Created the Kafka topic."
            ),
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            })) => debug!(
                upstream = %self.target.upstream,
                topic = %self.target.topic,
                "The topic was created by someone else meanwhile."
            ),
            Ok(Err(e)) => return Err(self.error("creating the topic", Failure::Kafka(e))),
            Err(_) => return Err(self.error("creating the topic", Failure::TimedOut)),
        }

        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let last = match self.topic_partitions(client).await {
                Ok(Some(count)) => return Ok(count),
                Ok(None) => None,
                Err(e) if e.is_retryable() => Some(e),
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last.unwrap_or_else(|| {
                    SinkError::retryable(format!(
                        "{}: the topic was created but the cluster metadata does not show it \
                         after {}",
                        self.target,
                        humantime::format_duration(self.request_timeout)
                    ))
                }));
            }
            tokio::time::sleep(TOPIC_POLL_INTERVAL).await;
        }
    }

    fn missing_topic_error(&self) -> SinkError {
        let topic = &self.target.topic;
        SinkError::fatal(format!(
            "{}: topic {topic:?} does not exist and create_topic is false for this upstream; \
             create the topic on the cluster (for example `kafka-topics.sh --create --topic \
             {topic} --partitions {} --replication-factor {} --bootstrap-server {}`) or set \
             create_topic = true for upstream {:?}",
            self.target,
            self.partitions,
            self.replication_factor,
            self.target
                .brokers
                .first()
                .map(String::as_str)
                .unwrap_or("HOST:PORT"),
            self.target.upstream,
        ))
    }

    /// Sends `batch` (minus what is already acknowledged) over `partitions` clients.
    async fn deliver(
        &mut self,
        batch: &[Item],
        partitions: Vec<Arc<PartitionClient>>,
    ) -> Result<(), SinkError> {
        // Records the tail read found in the topic count as acknowledged (once per batch).
        if let Some(delivered) = &self.delivered {
            let count = partitions.len();
            let mut skipped = 0;
            for item in batch {
                let p = partition_for_key(key(item), count);
                if delivered
                    .get(p)
                    .copied()
                    .flatten()
                    .is_some_and(|d| item.seq() <= d)
                    && self.acked.seqs.insert(item.seq())
                {
                    skipped += 1;
                }
            }
            if skipped > 0 {
                info!(upstream = %self.target.upstream, skipped, first_seq = batch.first().map(Item::seq), "Skipping readings the topic already holds (sent before a restart or an unknown outcome).");
                if let Some(c) = &self.counters {
                    add(&c.duplicates_skipped, skipped);
                }
            }
        }
        let plan = plan(batch, &self.acked.seqs, partitions.len());
        let (gateway, epoch) = (&self.gateway_id, self.epoch);
        let sends = plan
            .into_iter()
            .zip(partitions)
            .enumerate()
            .filter(|(_, (records, _))| !records.is_empty())
            .map(|(partition, (records, client))| {
                let records = records
                    .into_iter()
                    .map(|item| (item.seq(), to_kafka_record(item, gateway, epoch)))
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
            .filter(|item| self.acked.seqs.contains(&item.seq()))
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

impl Sink for KafkaSink {
    async fn send(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        self.acked.start_batch(first.seq());
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

impl KafkaSink {
    /// The highest sequence of this gateway and epoch in each partition; see the module
    /// docs. A failure drops the connection, like a failed produce.
    async fn read_tails(
        &mut self,
        partitions: &[Arc<PartitionClient>],
    ) -> Result<Vec<Option<u64>>, SinkError> {
        let Some(epoch) = self.epoch else {
            return Ok(vec![None; partitions.len()]);
        };
        let settle = TAIL_SETTLE.min(self.request_timeout);
        let waited = self.unsettled_since.elapsed();
        if waited < settle {
            debug!(upstream = %self.target.upstream, wait = ?(settle - waited), "Letting requests of unknown outcome settle before reading the tails.");
            tokio::time::sleep(settle - waited).await;
        }
        let limit = self.tail_limit();
        let started = std::time::Instant::now();
        let this = &*self;
        let reads = partitions.iter().enumerate().map(|(p, client)| async move {
            this.within(
                &format!("reading the tail of partition {p}"),
                highest_delivered(client, &this.gateway_id, epoch, limit),
            )
            .await
        });
        let outcome = futures::future::try_join_all(reads).await;
        match outcome {
            Ok(found) => {
                info!(upstream = %self.target.upstream, epoch, highest_delivered = ?found, took = ?started.elapsed(), "Read the topic's tail: records at or below these sequences (per partition) are there already and will not be sent again.");
                Ok(found)
            }
            Err(e) => {
                self.connection = None;
                Err(e)
            }
        }
    }
}

/// Whose a Kafka record is, as far as de-duplication cares.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// This gateway and epoch, with its sequence number.
    Ours(u64),
    /// This gateway under another epoch (or none: an older build). Epochs of one gateway
    /// follow each other in time, so nothing of the current epoch lies before it.
    OurGatewayEarlier,
    /// Anyone else.
    Other,
}

fn owner(record: &KafkaRecord, gateway: &str, epoch: u64) -> Owner {
    if record.headers.get(HEADER_GATEWAY).map(Vec::as_slice) != Some(gateway.as_bytes()) {
        return Owner::Other;
    }
    let epoch_matches = record
        .headers
        .get(HEADER_EPOCH)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        == Some(epoch);
    if !epoch_matches {
        return Owner::OurGatewayEarlier;
    }
    match record
        .headers
        .get(HEADER_SEQ)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
    {
        Some(seq) => Owner::Ours(seq),
        None => Owner::Other,
    }
}

/// Reads one partition backwards from its end, in growing windows, for the highest
/// `tidegate-seq` of `gateway` under `epoch`. Stops at the first window holding one (the
/// partition holds this journal's records in sequence order, so the newest is the
/// highest), at a record of this gateway under an earlier epoch, at the partition's start,
/// or `limit` records back (`None` then: nothing of ours within reach).
pub async fn highest_delivered(
    client: &PartitionClient,
    gateway: &str,
    epoch: u64,
    limit: i64,
) -> Result<Option<u64>, KafkaError> {
    let latest = client.get_offset(OffsetAt::Latest).await?;
    let start_offset = client.get_offset(OffsetAt::Earliest).await?;
    // The high watermark a fetch reports is the authority: Tansu answers ListOffsets
    // "latest" with the start of the last record batch, not the end of the partition.
    let (_, high_watermark) = client
        .fetch_records(latest, 1..TAIL_FETCH_BYTES, TAIL_FETCH_WAIT_MS)
        .await?;
    let end_offset = latest.max(high_watermark);
    let floor = start_offset.max(end_offset.saturating_sub(limit));
    let mut end = end_offset;
    let mut window = TAIL_FIRST_WINDOW;
    while end > floor {
        let start = end.saturating_sub(window).max(floor);
        let mut offset = start;
        let mut highest: Option<u64> = None;
        let mut earlier_epoch = false;
        while offset < end {
            let (records, _) = client
                .fetch_records(offset, 1..TAIL_FETCH_BYTES, TAIL_FETCH_WAIT_MS)
                .await?;
            let before = offset;
            for r in records {
                // A compressed batch may start before the offset asked for.
                if r.offset < offset {
                    continue;
                }
                if r.offset >= end {
                    offset = end;
                    break;
                }
                offset = r.offset + 1;
                match owner(&r.record, gateway, epoch) {
                    Owner::Ours(seq) => highest = highest.max(Some(seq)),
                    Owner::OurGatewayEarlier => earlier_epoch = true,
                    Owner::Other => {}
                }
            }
            if offset == before {
                // Nothing readable there (deleted under us): treat the window as read.
                break;
            }
        }
        if highest.is_some() || earlier_epoch {
            return Ok(highest);
        }
        end = start;
        window = window.saturating_mul(4);
    }
    Ok(None)
}

/// Splits `batch` into one list per partition, in journal order, leaving out the items
/// in `acked`.
fn plan<'a>(batch: &'a [Item], acked: &HashSet<u64>, partitions: usize) -> Vec<Vec<&'a Item>> {
    let mut plan = vec![Vec::new(); partitions.max(1)];
    for item in batch.iter().filter(|item| !acked.contains(&item.seq())) {
        let partition = partition_for_key(key(item), partitions);
        plan[partition].push(item);
    }
    plan
}

/// The Kafka key of an item: a reading's topic, or [`GAP_KEY`] for a gap. It decides the
/// partition, so every gap of this journal goes to one partition, in order.
fn key(item: &Item) -> &[u8] {
    match item {
        Item::Reading(r) => r.reading.topic.as_bytes(),
        Item::Gap(_) => GAP_KEY.as_bytes(),
    }
}

/// Splits one partition's records into produce requests of at most [`MAX_REQUEST_BYTES`]
/// (estimated); a single larger record goes alone and the broker decides.
fn chunk(records: Vec<(u64, KafkaRecord)>) -> Vec<Vec<(u64, KafkaRecord)>> {
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
struct PartitionOutcome {
    partition: usize,
    /// Sequence numbers the broker acknowledged.
    acked: Vec<u64>,
    /// Records not acknowledged (the failed request and every later one).
    unacked: usize,
    failure: Option<Failure>,
}

/// Produces `records` to one partition, chunk after chunk, stopping at the first failure
/// so nothing later overtakes what failed.
async fn produce_partition(
    partition: usize,
    client: Arc<PartitionClient>,
    records: Vec<(u64, KafkaRecord)>,
    compression: KafkaCompression,
    timeout: Duration,
) -> PartitionOutcome {
    let total = records.len();
    let mut acked = Vec::with_capacity(total);
    for chunk in chunk(records) {
        let (seqs, records): (Vec<u64>, Vec<KafkaRecord>) = chunk.into_iter().unzip();
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
/// the [`HEADER_GAP`] header as `first..last`.
fn to_kafka_record(item: &Item, gateway_id: &str, epoch: Option<u64>) -> KafkaRecord {
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
fn ingest_time(ingest_ms: u64) -> DateTime<Utc> {
    i64::try_from(ingest_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}

fn kafka_compression(compression: Compression) -> KafkaCompression {
    match compression {
        Compression::None => KafkaCompression::NoCompression,
        Compression::Gzip => KafkaCompression::Gzip,
        Compression::Snappy => KafkaCompression::Snappy,
        Compression::Lz4 => KafkaCompression::Lz4,
        Compression::Zstd => KafkaCompression::Zstd,
    }
}

/// A failed network call.
#[derive(Debug)]
enum Failure {
    Kafka(KafkaError),
    /// No answer within `request_timeout`.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Retryable,
    Fatal,
}

impl Severity {
    fn error(self, message: String) -> SinkError {
        match self {
            Severity::Retryable => SinkError::retryable(message),
            Severity::Fatal => SinkError::fatal(message),
        }
    }
}

/// How to treat a failure.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    severity: Severity,
    /// Whether the cached connection and partition clients must be dropped.
    reconnect: bool,
    /// What an operator should do, for fatal errors.
    hint: Option<&'static str>,
}

impl Verdict {
    const RETRY: Verdict = Verdict {
        severity: Severity::Retryable,
        reconnect: false,
        hint: None,
    };
    const RECONNECT: Verdict = Verdict {
        severity: Severity::Retryable,
        reconnect: true,
        hint: None,
    };

    fn fatal(hint: &'static str) -> Verdict {
        Verdict {
            severity: Severity::Fatal,
            reconnect: false,
            hint: Some(hint),
        }
    }
}

impl Failure {
    fn describe(&self, timeout: Duration) -> String {
        match self {
            Failure::Kafka(e) => e.to_string(),
            Failure::TimedOut => format!(
                "no answer within request_timeout ({})",
                humantime::format_duration(timeout)
            ),
        }
    }

    fn verdict(&self) -> Verdict {
        match self {
            Failure::TimedOut => Verdict::RECONNECT,
            Failure::Kafka(e) => classify(e),
        }
    }

    /// The [`SinkError`] of `severity` saying `message`, keeping the Kafka error as its
    /// source.
    fn into_error(self, severity: Severity, message: String) -> SinkError {
        let error = severity.error(message);
        match self {
            Failure::Kafka(e) => error.caused_by(e),
            Failure::TimedOut => error,
        }
    }
}

/// Sorts an rskafka error into retryable or fatal, and says whether the connection must be
/// rebuilt.
fn classify(error: &KafkaError) -> Verdict {
    match error {
        KafkaError::ServerError { protocol_error, .. } => classify_protocol(protocol_error),
        KafkaError::Request(e) => classify_request(e),
        KafkaError::Connection(e) => match e {
            rskafka::ConnectionError::SyncVersions(_) => Verdict {
                reconnect: true,
                ..Verdict::fatal(
                    "the broker does not support the Kafka API versions tidegate needs \
                     (Kafka 0.11 or later)",
                )
            },
            rskafka::ConnectionError::SaslFailed(_) => Verdict {
                reconnect: true,
                ..Verdict::fatal("check the upstream's credentials")
            },
            _ => Verdict::RECONNECT,
        },
        // rskafka gave up retrying errors it considers transient.
        KafkaError::RetryFailed(_) | KafkaError::Timeout | KafkaError::InvalidResponse(_) => {
            Verdict::RECONNECT
        }
        _ => Verdict::RECONNECT,
    }
}

fn classify_request(error: &RequestError) -> Verdict {
    match error {
        RequestError::NoVersionMatch { .. } => Verdict {
            reconnect: true,
            ..Verdict::fatal(
                "the broker does not support a Kafka API version tidegate needs \
                 (Kafka 0.11 or later)",
            )
        },
        RequestError::Poisoned(inner) => classify_request(inner),
        // I/O, framing and decoding errors: the connection is unusable.
        _ => Verdict::RECONNECT,
    }
}

fn classify_protocol(error: &ProtocolError) -> Verdict {
    use ProtocolError as P;
    match error {
        // Metadata is stale: leadership moved or the topic is (re)appearing.
        P::UnknownTopicOrPartition
        | P::LeaderNotAvailable
        | P::NotLeaderOrFollower
        | P::BrokerNotAvailable
        | P::ReplicaNotAvailable
        | P::NetworkException
        | P::NotController
        | P::FencedLeaderEpoch
        | P::UnknownLeaderEpoch
        | P::ListenerNotFound
        | P::PreferredLeaderNotAvailable
        | P::EligibleLeadersNotAvailable => Verdict::RECONNECT,
        // Transient on the broker side; the connection is fine.
        P::UnknownServerError
        | P::CorruptMessage
        | P::RequestTimedOut
        | P::NotEnoughReplicas
        | P::NotEnoughReplicasAfterAppend
        | P::KafkaStorageError
        | P::CoordinatorLoadInProgress
        | P::CoordinatorNotAvailable
        | P::NotCoordinator
        | P::OffsetNotAvailable
        | P::ReassignmentInProgress
        | P::ThrottlingQuotaExceeded
        | P::ConcurrentTransactions
        | P::OperationNotAttempted => Verdict::RETRY,
        P::TopicAuthorizationFailed
        | P::ClusterAuthorizationFailed
        | P::TransactionalIdAuthorizationFailed => Verdict::fatal(
            "grant this client WRITE (and DESCRIBE, plus CREATE if create_topic is set) on \
             the topic",
        ),
        P::SaslAuthenticationFailed | P::UnsupportedSaslMechanism | P::IllegalSaslState => {
            Verdict::fatal("check the upstream's authentication settings")
        }
        P::MessageTooLarge | P::RecordListTooLarge => Verdict::fatal(
            "a reading is larger than the cluster accepts; raise the topic's \
             max.message.bytes (and the broker's message.max.bytes) or lower \
             mqtt.max_packet",
        ),
        P::InvalidTopicException => Verdict::fatal("fix the upstream's topic name"),
        P::InvalidReplicationFactor | P::InvalidPartitions | P::InvalidReplicaAssignment => {
            Verdict::fatal(
                "the cluster refuses the upstream's partitions / replication_factor; create \
                 the topic by hand or change those settings",
            )
        }
        P::PolicyViolation | P::InvalidConfig => {
            Verdict::fatal("the cluster's policy refuses this request; ask its operator")
        }
        P::UnsupportedVersion | P::UnsupportedForMessageFormat => Verdict::fatal(
            "the broker does not support the request tidegate sends (Kafka 0.11 or later)",
        ),
        P::UnsupportedCompressionType => Verdict::fatal(
            "the broker does not support the configured compression; choose another codec",
        ),
        P::InvalidTimestamp => Verdict::fatal(
            "the broker refuses the record timestamps; check this gateway's clock and the \
             topic's message.timestamp.*.max.ms",
        ),
        _ => Verdict::fatal("the cluster refuses the request; see the error"),
    }
}

//! The Kafka sink's connection: the clients of one upstream's cluster, the topic's
//! partitions (created when missing and allowed), and the errors an operator sees when a
//! connect fails (TLS handshake, refused login, missing topic).

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, TransportMeter};
use rskafka::BackoffConfig;
use tracing::{debug, info};

use super::errors::Failure;
use super::security;
use super::KafkaSink;
use crate::sinks::SinkError;
use crate::telemetry::ForwardCounters;

/// How often the topic's metadata is read again while waiting for a topic tidegate just
/// created to become visible.
pub(super) const TOPIC_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A connected cluster: one client per partition, indexed by partition id.
pub(super) struct Connection {
    /// Held so the cluster-wide clients live exactly as long as the partition clients.
    _client: Client,
    /// The client the partition clients come from: no retries inside rskafka, so a
    /// produce request whose answer was lost is never sent again behind the tail read.
    _producer: Client,
    /// `partitions[p]` produces to partition `p`; the length is the partition count.
    pub(super) partitions: Vec<Arc<PartitionClient>>,
}

/// Adds the bytes of every broker connection to the upstream's `wire_sent` /
/// `wire_received`, counted by the (patched) rskafka at the TCP stream.
#[derive(Debug)]
struct WireMeter(Arc<ForwardCounters>);

impl TransportMeter for WireMeter {
    fn sent(&self, bytes: usize) {
        self.0
            .wire_sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn received(&self, bytes: usize) {
        self.0
            .wire_received
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl KafkaSink {
    /// Retry policy for rskafka's own retries inside one call. The deadline keeps them
    /// well inside `request_timeout`, so a refused connection is reported with its cause
    /// rather than as a bare timeout.
    pub(super) fn backoff_config(&self) -> BackoffConfig {
        BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 3.0,
            deadline: Some(self.request_timeout / 2),
        }
    }

    /// Connects to the cluster, makes sure the topic exists and opens its partitions.
    pub(super) async fn connect(&self) -> Result<Connection, SinkError> {
        debug!(upstream = %self.target.upstream, brokers = %self.target.brokers.join(","), security = %self.security.describe(), "Connecting to the Kafka cluster.");
        // Read now, not at start: a renewed CA or rotated password is used by the next
        // connect. A file that cannot be used needs an operator: fatal (retried slowly).
        let problem = |e: security::SecurityError| {
            SinkError::fatal(format!("{}: cannot connect: {e}", self.target)).caused_by(e)
        };
        let tls = self.security.tls_config().map_err(problem)?;
        let sasl = self.security.sasl_config().map_err(problem)?;
        // Both clients count: metadata, topic creation and tail reads use the wire too.
        let meter = self
            .counters
            .as_ref()
            .map(|c| Arc::new(WireMeter(c.clone())) as Arc<dyn TransportMeter>);
        let builder = |backoff: BackoffConfig| {
            let mut b = ClientBuilder::new(self.target.brokers.clone())
                .client_id(format!("tidegate-{}", self.gateway_id))
                .backoff_config(backoff);
            if let Some(meter) = &meter {
                b = b.transport_meter(meter.clone());
            }
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
    pub(super) async fn explain_connect_failure(
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
    pub(super) async fn topic_partitions(
        &self,
        client: &Client,
    ) -> Result<Option<usize>, SinkError> {
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
    pub(super) async fn create_missing_topic(&self, client: &Client) -> Result<usize, SinkError> {
        let controller = client
            .controller_client()
            .map_err(|e| self.error("finding the cluster controller", Failure::Kafka(e)))?;
        let timeout_ms = i32::try_from(self.request_timeout.as_millis()).unwrap_or(i32::MAX);
        // The live topic is a "latest reading per device" table: compaction keeps the
        // newest record of each key (topic) and lets the rest go.
        let configs: &[(&str, &str)] = if self.live {
            &[("cleanup.policy", "compact")]
        } else {
            &[]
        };
        let created = controller.create_topic_with_configs(
            self.target.topic.clone(),
            self.partitions,
            self.replication_factor,
            timeout_ms,
            configs,
        );
        match tokio::time::timeout(self.request_timeout, created).await {
            Ok(Ok(())) => info!(
                upstream = %self.target.upstream,
                topic = %self.target.topic,
                partitions = self.partitions,
                replication_factor = self.replication_factor,
                compacted = self.live,
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

    pub(super) fn missing_topic_error(&self) -> SinkError {
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
}

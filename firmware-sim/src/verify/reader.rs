//! Reading a Kafka topic, every partition from the earliest (or latest) offset to the high
//! watermark, into [`KafkaReading`]s.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

use super::{KafkaReading, VerifyError};

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

//! Tests of the Kafka sink, one file per part of it: `produce` (mapping, planning,
//! chunking, ordered delivery), `errors` (retryable or fatal, against absent and silent
//! brokers too) and `tail` (exactly once after a restart). Unit tests need no broker; the
//! others run against a real Kafka-protocol broker (firmware-sim's test bed Tansu, in
//! memory), started per test on a free loopback port. This file holds the shared helpers.

mod errors;
mod live;
mod produce;
mod tail;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use firmware_sim::testbed::{self, Tansu};
use rskafka::client::error::{Error as KafkaError, ProtocolError, RequestError};
use rskafka::record::{EncodedRecords, Record as KafkaRecord};

use super::errors::*;
use super::produce::*;
use super::tail::*;
use super::*;
use crate::config::{Compression, UpstreamConfig, UpstreamKind};
use crate::record::{Gap, Item, Position, Reading, Record, Slot, SourceKind, Thinned};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const GATEWAY: &str = "gw-test-01";

fn upstream(broker: &str, topic: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: "test-cluster".into(),
        kind: UpstreamKind::Kafka,
        brokers: vec![broker.into()],
        topic: topic.into(),
        max_batch: 5000,
        linger: Duration::from_millis(10),
        compression_setting: Some(Compression::None),
        create_topic: true,
        partitions: 1,
        replication_factor: 1,
        request_timeout: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        ..UpstreamConfig::new("test-cluster", UpstreamKind::Kafka)
    }
}

/// Where a reading (or gap) of sequence `seq` stands.
fn at(seq: u64) -> Position {
    Position {
        seq,
        slot: Slot::Record,
    }
}

fn record(seq: u64, topic: &str, payload: impl Into<Bytes>) -> Record {
    Record {
        seq,
        reading: Reading {
            ingest_ms: 1_764_000_000_000 + seq * 7,
            source_kind: SourceKind::MqttListener,
            source: "wt-0001".into(),
            topic: topic.into(),
            payload: payload.into(),
            qos: 1,
            retain: false,
        },
    }
}

/// `records` as the items of a batch.
fn items(records: &[Record]) -> Vec<Item> {
    records.iter().cloned().map(Item::Reading).collect()
}

/// `count` records from `first_seq` on, cycling through `keys`.
fn batch(first_seq: u64, count: u64, keys: &[String]) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let seq = first_seq + i;
            let key = &keys[(i as usize) % keys.len()];
            let mut payload =
                format!("{{\"seq\":{seq},\"key\":\"{key}\",\"wind\":7.5}}").into_bytes();
            payload.extend_from_slice(&[0, 0xff, (seq % 251) as u8]);
            record(seq, key, payload)
        })
        .collect()
}

/// Every record in `partition` of `topic`, read from offset 0 to the high watermark.
async fn read_partition(broker: &str, topic: &str, partition: i32) -> Vec<KafkaRecord> {
    let reader = testbed::partition_client(&[broker.to_owned()], topic, partition)
        .await
        .expect("reader opens the partition");
    let mut records = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (batch, high_watermark) = reader
            .fetch_records(offset, 1..10_000_000, 200)
            .await
            .expect("fetch");
        for r in batch {
            offset = r.offset + 1;
            records.push(r.record);
        }
        if offset >= high_watermark {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic}/{partition} took over 20s"
        );
    }
}

fn header_str<'a>(record: &'a KafkaRecord, name: &str) -> &'a str {
    let value = record
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"));
    std::str::from_utf8(value).expect("header is UTF-8")
}

/// Checks that `read` are exactly `sent`, mapped as the sink documents.
fn assert_records_match(read: &[KafkaRecord], sent: &HashMap<u64, &Record>) {
    for r in read {
        let seq: u64 = header_str(r, HEADER_SEQ).parse().expect("seq is decimal");
        let original = sent
            .get(&seq)
            .unwrap_or_else(|| panic!("seq {seq} read back but never sent"));
        assert_eq!(header_str(r, HEADER_GATEWAY), GATEWAY);
        assert_eq!(r.headers.len(), 2, "only the two tidegate headers");
        assert_eq!(
            r.key.as_deref(),
            Some(original.reading.topic.as_bytes()),
            "key of seq {seq}"
        );
        assert_eq!(
            r.value.as_deref(),
            Some(&original.reading.payload[..]),
            "value of seq {seq}"
        );
        assert_eq!(
            r.timestamp.timestamp_millis(),
            original.reading.ingest_ms as i64,
            "timestamp of seq {seq}"
        );
    }
}

/// Reads partitions `0..partitions` of `topic` and checks that together they hold every
/// record of `sent` exactly once, mapped as the sink documents, each partition in journal
/// order. Returns what each partition holds.
async fn assert_each_sent_once_in_order(
    broker: &str,
    topic: &str,
    partitions: i32,
    sent: &HashMap<u64, &Record>,
) -> Vec<Vec<KafkaRecord>> {
    let mut held = Vec::new();
    for partition in 0..partitions {
        let read = read_partition(broker, topic, partition).await;
        assert_records_match(&read, sent);
        let seqs = seqs_of(&read);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: no duplicates, journal order: {seqs:?}"
        );
        held.push(read);
    }
    let total: usize = held.iter().map(Vec::len).sum();
    assert_eq!(total, sent.len(), "every record arrived exactly once");
    held
}

fn seqs_of(read: &[KafkaRecord]) -> Vec<u64> {
    read.iter()
        .map(|r| header_str(r, HEADER_SEQ).parse().expect("seq is decimal"))
        .collect()
}

const EPOCH: u64 = 4_242;

/// Like [`batch`], but the key follows the sequence number, as in a journal: the same
/// record read again (after a restart) lands on the same partition.
fn journal(first_seq: u64, count: u64, keys: &[String]) -> Vec<Record> {
    let mut records = batch(first_seq, count, keys);
    for r in &mut records {
        r.reading.topic = keys[(r.seq as usize) % keys.len()].clone();
    }
    records
}

fn counters_of(sink: &mut KafkaSink, epoch: u64) -> Arc<ForwardCounters> {
    let counters = Arc::new(ForwardCounters::default());
    sink.attach(Attachment {
        epoch: Some(epoch),
        counters: counters.clone(),
    });
    counters
}

#[tokio::test]
async fn constructing_a_sink_does_no_io_and_an_empty_batch_needs_no_cluster() {
    let port = testbed::free_port().expect("a free port");
    let mut sink = KafkaSink::new(&upstream(&format!("127.0.0.1:{port}"), "t"), GATEWAY);
    assert_eq!(sink.partition_count(), None);
    sink.send(&[])
        .await
        .expect("an empty batch is trivially delivered");
    assert_eq!(sink.partition_count(), None);
}

//! Tests of the Kafka sink: pure unit tests of planning, chunking, mapping and error
//! classification, and tests against a real Kafka-protocol broker (firmware-sim's test bed
//! Tansu, in memory), started per test on a free loopback port.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use firmware_sim::testbed::{self, Tansu};
use rskafka::client::error::{Error as KafkaError, ProtocolError, RequestError};
use rskafka::record::Record as KafkaRecord;

use super::errors::*;
use super::produce::*;
use super::tail::*;
use super::*;
use crate::config::{Compression, UpstreamConfig, UpstreamKind};
use crate::record::{Gap, Item, Reading, Record, SourceKind};

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
        compression: Compression::None,
        create_topic: true,
        partitions: 1,
        replication_factor: 1,
        request_timeout: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        ..UpstreamConfig::new("test-cluster", UpstreamKind::Kafka)
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

// ---------------------------------------------------------------------------------------
// Unit tests (no broker)
// ---------------------------------------------------------------------------------------

#[test]
fn a_record_maps_to_key_value_timestamp_and_headers() {
    let r = record(
        42,
        "turbines/wt-0001/telemetry",
        &b"\x00{\"wind\":7.5}\xff"[..],
    );
    let k = to_kafka_record(&Item::Reading(r), GATEWAY, None);
    assert_eq!(k.key.as_deref(), Some(&b"turbines/wt-0001/telemetry"[..]));
    assert_eq!(k.value.as_deref(), Some(&b"\x00{\"wind\":7.5}\xff"[..]));
    assert_eq!(k.timestamp.timestamp_millis(), 1_764_000_000_000 + 42 * 7);
    assert_eq!(
        k.headers.get(HEADER_GATEWAY).map(Vec::as_slice),
        Some(GATEWAY.as_bytes())
    );
    assert_eq!(
        k.headers.get(HEADER_SEQ).map(Vec::as_slice),
        Some(&b"42"[..])
    );
}

#[test]
fn an_unrepresentable_ingest_time_becomes_now_instead_of_failing() {
    let before = Utc::now().timestamp_millis();
    let t = ingest_time(u64::MAX).timestamp_millis();
    assert!(t >= before);
    assert_eq!(ingest_time(0).timestamp_millis(), 0);
}

#[test]
fn a_batch_is_split_by_partition_in_journal_order() {
    let keys: Vec<String> = (0..10).map(|i| format!("dev/{i}")).collect();
    let b = items(&batch(1, 100, &keys));
    let plan = plan(&b, &HashSet::new(), 3);
    assert_eq!(plan.len(), 3);
    assert_eq!(plan.iter().map(Vec::len).sum::<usize>(), 100);
    for (p, records) in plan.iter().enumerate() {
        assert!(
            records.windows(2).all(|w| w[0].seq() < w[1].seq()),
            "partition {p} out of order"
        );
        for r in records {
            assert_eq!(partition_for_key(key(r), 3), p);
        }
    }
}

#[test]
fn a_retry_skips_what_was_acknowledged_and_keeps_every_keys_order() {
    let keys: Vec<String> = (0..6).map(|i| format!("dev/{i}")).collect();
    let b = items(&batch(500, 60, &keys));
    let first = plan(&b, &HashSet::new(), 3);
    // Partition 0 was acknowledged in full, partition 1 half of it, partition 2 not at all.
    let mut acked: HashSet<u64> = first[0].iter().map(|r| r.seq()).collect();
    acked.extend(first[1].iter().take(first[1].len() / 2).map(|r| r.seq()));

    let retry = plan(&b, &acked, 3);
    assert!(
        retry[0].is_empty(),
        "an acknowledged partition is not resent"
    );
    let expected_1: Vec<u64> = first[1]
        .iter()
        .skip(first[1].len() / 2)
        .map(|r| r.seq())
        .collect();
    assert_eq!(
        retry[1].iter().map(|r| r.seq()).collect::<Vec<_>>(),
        expected_1
    );
    assert_eq!(
        retry[2].iter().map(|r| r.seq()).collect::<Vec<_>>(),
        first[2].iter().map(|r| r.seq()).collect::<Vec<_>>()
    );
    let resent: HashSet<u64> = retry.iter().flatten().map(|r| r.seq()).collect();
    assert!(
        resent.is_disjoint(&acked),
        "nothing acknowledged is sent twice"
    );
}

#[test]
fn the_acknowledged_memory_is_forgotten_when_a_new_batch_arrives() {
    let mut memory = AckedMemory::default();
    memory.start_batch(10);
    memory.seqs.extend([10, 11, 12]);
    memory.start_batch(10);
    assert_eq!(
        memory.seqs.len(),
        3,
        "a retry of the same batch keeps the memory"
    );
    memory.start_batch(13);
    assert!(
        memory.seqs.is_empty(),
        "a new batch starts with nothing acknowledged"
    );
    assert_eq!(memory.batch_first_seq, Some(13));
}

#[test]
fn large_partition_shares_are_split_into_ordered_chunks_under_the_request_limit() {
    let payload = Bytes::from(vec![b'x'; 100 * 1024]);
    let records: Vec<(u64, KafkaRecord)> = (0..25)
        .map(|seq| {
            (
                seq,
                to_kafka_record(
                    &Item::Reading(record(seq, "k", payload.clone())),
                    GATEWAY,
                    None,
                ),
            )
        })
        .collect();
    let chunks = chunk(records);
    assert!(chunks.len() > 1);
    let flattened: Vec<u64> = chunks.iter().flatten().map(|(s, _)| *s).collect();
    assert_eq!(
        flattened,
        (0..25).collect::<Vec<_>>(),
        "order is kept across chunks"
    );
    for c in &chunks {
        let bytes: usize = c
            .iter()
            .map(|(_, r)| r.approximate_size() + RECORD_OVERHEAD_BYTES)
            .sum();
        assert!(bytes <= MAX_REQUEST_BYTES, "chunk of {bytes} bytes");
    }
    // A record above the limit still goes, alone.
    let huge = vec![(
        0,
        to_kafka_record(
            &Item::Reading(record(0, "k", vec![0u8; 2 << 20])),
            GATEWAY,
            None,
        ),
    )];
    assert_eq!(chunk(huge).len(), 1);
}

#[test]
fn broker_errors_are_sorted_into_retryable_and_fatal() {
    let server = |protocol_error| {
        Failure::Kafka(KafkaError::ServerError {
            protocol_error,
            error_message: None,
            request: rskafka::client::error::RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: false,
        })
    };
    use ProtocolError as P;
    use Severity::{Fatal, Retryable};
    // (error, severity, whether the connection is rebuilt)
    for (error, severity, reconnect) in [
        (P::LeaderNotAvailable, Retryable, true),
        (P::NotLeaderOrFollower, Retryable, true),
        (P::UnknownTopicOrPartition, Retryable, true),
        (P::RequestTimedOut, Retryable, false),
        (P::NotEnoughReplicas, Retryable, false),
        (P::TopicAuthorizationFailed, Fatal, false),
        (P::MessageTooLarge, Fatal, false),
        (P::RecordListTooLarge, Fatal, false),
        (P::InvalidTopicException, Fatal, false),
        (P::UnsupportedVersion, Fatal, false),
        (P::UnsupportedCompressionType, Fatal, false),
    ] {
        let v = server(error).verdict();
        assert_eq!(
            (v.severity, v.reconnect),
            (severity, reconnect),
            "{error:?}"
        );
        assert_eq!(
            v.hint.is_some(),
            severity == Fatal,
            "{error:?}: a fatal error, and only that, tells the operator what to do"
        );
    }
    let refused = Failure::Kafka(KafkaError::Request(RequestError::IO(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    ))));
    assert_eq!(refused.verdict().severity, Severity::Retryable);
    assert!(refused.verdict().reconnect);
    assert_eq!(Failure::TimedOut.verdict().severity, Severity::Retryable);
    assert!(Failure::TimedOut.verdict().reconnect);
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

// ---------------------------------------------------------------------------------------
// Against a real broker
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lands_on_the_partitions_murmur2_chooses_in_journal_order_with_headers() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "readings");
    config.partitions = 3;
    config.compression = Compression::Lz4;
    let mut sink = KafkaSink::new(&config, GATEWAY);

    let keys: Vec<String> = (1..=9)
        .map(|i| format!("turbines/wt-{i:04}/telemetry"))
        .collect();
    let used: BTreeSet<usize> = keys
        .iter()
        .map(|k| partition_for_key(k.as_bytes(), 3))
        .collect();
    assert_eq!(used.len(), 3, "the test keys must cover every partition");

    let first = batch(1000, 90, &keys);
    let second = batch(1090, 45, &keys);
    sink.send(&items(&first))
        .await
        .expect("first batch delivered");
    assert_eq!(
        sink.partition_count(),
        Some(3),
        "the sink created 3 partitions"
    );
    sink.send(&items(&second))
        .await
        .expect("second batch delivered over the same connection");

    let sent: HashMap<u64, &Record> = first.iter().chain(&second).map(|r| (r.seq, r)).collect();
    let held = assert_each_sent_once_in_order(&tansu.addr(), "readings", 3, &sent).await;
    for (partition, read) in held.iter().enumerate() {
        for r in read {
            let key = r.key.as_deref().unwrap_or_default();
            assert_eq!(
                partition_for_key(key, 3),
                partition,
                "key {:?} is on the partition murmur2 chooses",
                String::from_utf8_lossy(key)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips() {
    let tansu = Tansu::start().expect("tansu starts");
    let keys: Vec<String> = (0..4).map(|i| format!("plant/line-{i}/power")).collect();
    for (i, codec) in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("codec-{codec:?}").to_lowercase();
        let mut config = upstream(&tansu.addr(), &topic);
        config.compression = codec;
        let mut sink = KafkaSink::new(&config, GATEWAY);
        let mut records = batch(1 + 100 * i as u64, 40, &keys);
        // A highly compressible payload and an empty one, besides the small ones.
        records[3].reading.payload = Bytes::from("wind=7.5;".repeat(2000));
        records[7].reading.payload = Bytes::new();
        sink.send(&items(&records))
            .await
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));

        let read = read_partition(&tansu.addr(), &topic, 0).await;
        let sent: HashMap<u64, &Record> = records.iter().map(|r| (r.seq, r)).collect();
        assert_records_match(&read, &sent);
        assert_eq!(
            seqs_of(&read),
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            "{codec:?}: all records, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_retryable_within_the_request_timeout_and_the_same_sink_recovers()
{
    let port = testbed::free_port().expect("a free port");
    let address = format!("127.0.0.1:{port}");
    let mut config = upstream(&address, "late-cluster");
    config.request_timeout = Duration::from_secs(2);
    let mut sink = KafkaSink::new(&config, GATEWAY);
    let keys = vec!["dev/a".to_owned(), "dev/b".to_owned()];
    let records = batch(1, 10, &keys);

    let started = Instant::now();
    let err = sink
        .send(&items(&records))
        .await
        .expect_err("nothing listens yet");
    let took = started.elapsed();
    assert!(
        err.is_retryable(),
        "a cluster that is down is retryable: {err}"
    );
    assert!(
        took <= config.request_timeout + Duration::from_millis(500),
        "gave up after {took:?}, over request_timeout"
    );
    let text = err.to_string();
    for needle in ["test-cluster", address.as_str(), "late-cluster"] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }

    let tansu = Tansu::start_on(port).expect("tansu starts");
    sink.send(&items(&records))
        .await
        .expect("the same sink delivers once the cluster is up");
    let read = read_partition(&tansu.addr(), "late-cluster", 0).await;
    assert_eq!(seqs_of(&read), (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_without_create_topic_is_fatal_and_names_the_topic() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "never-created");
    config.create_topic = false;
    let mut sink = KafkaSink::new(&config, GATEWAY);
    let err = sink
        .send(&items(&batch(1, 3, &["dev/a".to_owned()])))
        .await
        .expect_err("the topic does not exist");
    assert!(
        matches!(err, SinkError::Fatal { .. }),
        "must be fatal: {err}"
    );
    let text = err.to_string();
    for needle in [
        "never-created",
        "test-cluster",
        "create_topic",
        &tansu.addr(),
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_times_out_as_retryable_within_the_request_timeout() {
    // Accepts TCP connections (the kernel completes the handshake) but never speaks Kafka.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let address = silent.local_addr().expect("local addr").to_string();
    let mut config = upstream(&address, "silent");
    config.request_timeout = Duration::from_millis(800);
    let mut sink = KafkaSink::new(&config, GATEWAY);

    let started = Instant::now();
    let err = sink
        .send(&items(&batch(1, 2, &["dev/a".to_owned()])))
        .await
        .expect_err("nothing answers");
    let took = started.elapsed();
    assert!(err.is_retryable(), "a silent broker is retryable: {err}");
    assert!(
        took <= config.request_timeout + Duration::from_millis(500),
        "gave up after {took:?}"
    );
    let text = err.to_string();
    assert!(text.contains("request_timeout"), "{text}");
    assert!(text.contains(&address), "{text}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_share_over_the_request_limit_arrives_complete_and_in_order() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "big-share");
    config.compression = Compression::Zstd;
    let mut sink = KafkaSink::new(&config, GATEWAY);
    // 24 readings of 100 KiB each: about 2.4 MiB for one partition, over several requests.
    let mut records = batch(1, 24, &["dev/camera".to_owned()]);
    for (i, r) in records.iter_mut().enumerate() {
        let mut payload = vec![0u8; 100 * 1024];
        for (j, b) in payload.iter_mut().enumerate() {
            *b = (i * 31 + j * 7) as u8;
        }
        r.reading.payload = Bytes::from(payload);
    }
    sink.send(&items(&records)).await.expect("delivered");

    let read = read_partition(&tansu.addr(), "big-share", 0).await;
    let sent: HashMap<u64, &Record> = records.iter().map(|r| (r.seq, r)).collect();
    assert_records_match(&read, &sent);
    assert_eq!(seqs_of(&read), (1..=24).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_partial_failure_resends_only_what_was_not_acknowledged() {
    let healthy = Tansu::start().expect("tansu starts");
    let doomed = Tansu::start().expect("tansu starts");
    let mut config = upstream(&healthy.addr(), "partial");
    config.partitions = 3;
    config.request_timeout = Duration::from_secs(2);
    let mut sink = KafkaSink::new(&config, GATEWAY);
    let keys: Vec<String> = (1..=9)
        .map(|i| format!("turbines/wt-{i:04}/telemetry"))
        .collect();
    let warmup = batch(1, 9, &keys);
    sink.send(&items(&warmup))
        .await
        .expect("connects and delivers");

    // Point the sink's partition 2 at a second broker and stop that broker: in the next
    // send partitions 0 and 1 succeed and partition 2 fails.
    testbed::create_topic(&doomed.brokers(), "partial", 3)
        .await
        .expect("topic on the second broker");
    let stray = testbed::partition_client(&doomed.brokers(), "partial", 2)
        .await
        .expect("partition 2 on the second broker");
    sink.connection.as_mut().expect("connected").partitions[2] = Arc::new(stray);
    drop(doomed);

    let records = batch(100, 60, &keys);
    let on_2 = records
        .iter()
        .filter(|r| partition_for_key(r.reading.topic.as_bytes(), 3) == 2)
        .count();
    assert!(on_2 > 0 && on_2 < records.len());
    let err = sink
        .send(&items(&records))
        .await
        .expect_err("partition 2's broker is gone");
    assert!(err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains("partition 2"), "{text}");
    assert!(
        text.contains(&format!(
            "{} of the batch's 60 records are acknowledged",
            60 - on_2
        )),
        "{text}"
    );
    assert_eq!(sink.partition_count(), None, "the connection was dropped");

    sink.send(&items(&records))
        .await
        .expect("the retry reconnects and delivers the rest");

    let sent: HashMap<u64, &Record> = warmup.iter().chain(&records).map(|r| (r.seq, r)).collect();
    assert_each_sent_once_in_order(&healthy.addr(), "partial", 3, &sent).await;
}

// ---------------------------------------------------------------------------------------
// De-duplication after a restart, and gap markers
// ---------------------------------------------------------------------------------------

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

#[test]
fn a_gap_marker_maps_to_the_reserved_key_an_empty_value_and_the_gap_header() {
    let marker = Item::Gap(Gap {
        first: 17,
        last: 40,
        ingest_ms: 1_764_000_000_000,
    });
    let k = to_kafka_record(&marker, GATEWAY, Some(EPOCH));
    assert_eq!(k.key.as_deref(), Some(&b"$tidegate/gap"[..]));
    assert_eq!(k.value.as_deref(), Some(&b""[..]));
    let header = |n: &str| {
        k.headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(HEADER_GAP).as_deref(), Some("17..40"));
    assert_eq!(
        header(HEADER_SEQ).as_deref(),
        Some("40"),
        "the last reading it stands for"
    );
    assert_eq!(header(HEADER_EPOCH).as_deref(), Some("4242"));
    assert_eq!(header(HEADER_GATEWAY).as_deref(), Some(GATEWAY));
    // A reading carries no gap header.
    let plain = to_kafka_record(
        &Item::Reading(record(3, "dev/1", "x")),
        GATEWAY,
        Some(EPOCH),
    );
    assert!(!plain.headers.contains_key(HEADER_GAP));
}

#[test]
fn only_records_of_this_gateway_and_epoch_count_as_ours() {
    let mut r = to_kafka_record(
        &Item::Reading(record(9, "dev/1", "x")),
        GATEWAY,
        Some(EPOCH),
    );
    assert_eq!(owner(&r, GATEWAY, EPOCH), Owner::Ours(9));
    assert_eq!(owner(&r, GATEWAY, EPOCH + 1), Owner::OurGatewayEarlier);
    assert_eq!(owner(&r, "gw-other", EPOCH), Owner::Other);
    r.headers.remove(HEADER_EPOCH);
    assert_eq!(
        owner(&r, GATEWAY, EPOCH),
        Owner::OurGatewayEarlier,
        "an older build"
    );
}

/// Every record of `topic` (all partitions): per partition, the sequence numbers of
/// `gateway` under `epoch` in offset order.
async fn ours_by_partition(
    broker: &str,
    topic: &str,
    partitions: i32,
    gateway: &str,
    epoch: u64,
) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let read = read_partition(broker, topic, p).await;
        out.push(
            read.iter()
                .filter_map(|r| match owner(r, gateway, epoch) {
                    Owner::Ours(seq) => Some(seq),
                    _ => None,
                })
                .collect(),
        );
    }
    out
}

/// Sends `batches` in order through a new sink of this gateway under [`EPOCH`], as after a
/// restart, and returns how many readings it skipped as already in the topic.
async fn send_from_a_new_sink<const N: usize>(
    config: &UpstreamConfig,
    batches: [Vec<Record>; N],
) -> u64 {
    let mut sink = KafkaSink::new(config, GATEWAY);
    let counters = counters_of(&mut sink, EPOCH);
    for b in batches {
        sink.send(&items(&b)).await.expect("delivered");
    }
    crate::telemetry::get(&counters.duplicates_skipped)
}

fn counters_of(sink: &mut KafkaSink, epoch: u64) -> Arc<ForwardCounters> {
    let counters = Arc::new(ForwardCounters::default());
    sink.attach(Attachment {
        epoch: Some(epoch),
        counters: counters.clone(),
    });
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_records_already_in_the_topic_are_skipped_and_the_rest_arrive_once() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "restart");
    config.partitions = 3;
    let keys: Vec<String> = (1..=9)
        .map(|i| format!("turbines/wt-{i:04}/telemetry"))
        .collect();
    // Before the "crash": 1..=300 delivered in three batches, but the cursor was stored
    // only after the first one.
    let mut before = KafkaSink::new(&config, GATEWAY);
    counters_of(&mut before, EPOCH);
    for b in [
        journal(1, 100, &keys),
        journal(101, 100, &keys),
        journal(201, 100, &keys),
    ] {
        before.send(&items(&b)).await.expect("delivered");
    }
    drop(before);

    // After the restart: a new sink, same gateway and epoch, resumes at cursor 101.
    let skipped = send_from_a_new_sink(
        &config,
        [journal(101, 150, &keys), journal(251, 150, &keys)],
    )
    .await;
    assert_eq!(skipped, 200, "101..=300 were in the topic already");
    let per_partition = ours_by_partition(&tansu.addr(), "restart", 3, GATEWAY, EPOCH).await;
    let mut all: Vec<u64> = Vec::new();
    for (p, seqs) in per_partition.iter().enumerate() {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: no duplicate, journal order: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=400).collect::<Vec<_>>(),
        "every record exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_other_gateways_and_other_epochs_are_not_taken_for_ours() {
    let tansu = Tansu::start().expect("tansu starts");
    let config = upstream(&tansu.addr(), "shared");
    let keys = vec!["dev/1".to_owned(), "dev/2".to_owned()];
    // Another gateway, and this gateway's previous journal (epoch - 1), both up to seq 500.
    let mut other = KafkaSink::new(&config, "gw-other").with_epoch(EPOCH);
    other
        .send(&items(&journal(1, 500, &keys)))
        .await
        .expect("other gateway");
    let mut old = KafkaSink::new(&config, GATEWAY).with_epoch(EPOCH - 1);
    old.send(&items(&journal(1, 500, &keys)))
        .await
        .expect("previous epoch");

    // The new journal starts at 1: nothing of it is there, so nothing is skipped.
    assert_eq!(
        send_from_a_new_sink(&config, [journal(1, 50, &keys)]).await,
        0
    );

    // Others write after ours; a restart still finds ours behind them.
    other
        .send(&items(&journal(501, 300, &keys)))
        .await
        .expect("other gateway");
    assert_eq!(
        send_from_a_new_sink(&config, [journal(1, 80, &keys)]).await,
        50
    );

    let ours = ours_by_partition(&tansu.addr(), "shared", 1, GATEWAY, EPOCH).await;
    assert_eq!(ours[0], (1..=80).collect::<Vec<_>>());
    let theirs = ours_by_partition(&tansu.addr(), "shared", 1, "gw-other", EPOCH).await;
    assert_eq!(
        theirs[0].len(),
        800,
        "the other gateway's records are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_topic_skips_nothing() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "empty");
    config.partitions = 2;
    testbed::create_topic(&tansu.brokers(), "empty", 2)
        .await
        .expect("topic created empty");
    let keys: Vec<String> = (0..6).map(|i| format!("dev/{i}")).collect();
    assert_eq!(
        send_from_a_new_sink(&config, [journal(7, 40, &keys)]).await,
        0
    );
    let mut all: Vec<u64> = ours_by_partition(&tansu.addr(), "empty", 2, GATEWAY, EPOCH)
        .await
        .concat();
    all.sort_unstable();
    assert_eq!(all, (7..47).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_read_steps_over_others_records_up_to_its_limit_and_no_further() {
    let tansu = Tansu::start().expect("tansu starts");
    let config = upstream(&tansu.addr(), "bounded");
    let keys = vec!["dev/1".to_owned()];
    let mut ours = KafkaSink::new(&config, GATEWAY).with_epoch(EPOCH);
    ours.send(&items(&journal(1, 30, &keys)))
        .await
        .expect("ours");
    let mut other = KafkaSink::new(&config, "gw-other").with_epoch(EPOCH);
    for i in 0..5 {
        other
            .send(&items(&journal(1 + i * 100, 100, &keys)))
            .await
            .expect("others");
    }
    let client = testbed::partition_client(&tansu.brokers(), "bounded", 0)
        .await
        .expect("partition client");
    // 500 of others' records after our last: found within 1000, not within 400.
    assert_eq!(
        highest_delivered(&client, GATEWAY, EPOCH, 1000)
            .await
            .expect("tail read"),
        Some(30)
    );
    assert_eq!(
        highest_delivered(&client, GATEWAY, EPOCH, 400)
            .await
            .expect("tail read"),
        None
    );
    // Unknown epoch of a known gateway: the scan ends at the first record of it.
    assert_eq!(
        highest_delivered(&client, GATEWAY, EPOCH + 1, 1000)
            .await
            .expect("tail read"),
        None
    );
}

//! Producing: the record mapping, planning by partition, chunking, and ordered delivery
//! to a real broker (every codec, large shares, a retry after a partial failure).

use super::*;

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
    let mut acked: HashSet<Position> = first[0].iter().map(|r| r.position()).collect();
    acked.extend(
        first[1]
            .iter()
            .take(first[1].len() / 2)
            .map(|r| r.position()),
    );

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
    let resent: HashSet<Position> = retry.iter().flatten().map(|r| r.position()).collect();
    assert!(
        resent.is_disjoint(&acked),
        "nothing acknowledged is sent twice"
    );
}

#[test]
fn the_acknowledged_memory_is_forgotten_when_a_new_batch_arrives() {
    let mut memory = AckedMemory::default();
    memory.start_batch(at(10));
    memory.seqs.extend([at(10), at(11), at(12)]);
    memory.start_batch(at(10));
    assert_eq!(
        memory.seqs.len(),
        3,
        "a retry of the same batch keeps the memory"
    );
    memory.start_batch(at(13));
    assert!(
        memory.seqs.is_empty(),
        "a new batch starts with nothing acknowledged"
    );
    assert_eq!(memory.batch_first, Some(at(13)));
}

#[test]
fn large_partition_shares_are_split_into_ordered_chunks_under_the_request_limit() {
    let payload = Bytes::from(vec![b'x'; 100 * 1024]);
    let items: Vec<Item> = (0..25)
        .map(|seq| Item::Reading(record(seq, "k", payload.clone())))
        .collect();
    let refs: Vec<&Item> = items.iter().collect();
    let chunks = encode_chunks(&refs, GATEWAY, Some(EPOCH), false).expect("encodes");
    assert!(chunks.len() > 1);
    let flattened: Vec<u64> = chunks
        .iter()
        .flat_map(|c| c.positions.iter().map(|p| p.seq))
        .collect();
    assert_eq!(
        flattened,
        (0..25).collect::<Vec<_>>(),
        "order is kept across chunks"
    );
    for c in &chunks {
        assert_eq!(c.records.len(), c.positions.len());
        assert!(
            c.records.bytes_len() <= MAX_REQUEST_BYTES,
            "chunk of {} bytes",
            c.records.bytes_len()
        );
    }
    // A record above the limit still goes, alone.
    let huge = Item::Reading(record(0, "k", vec![0u8; 2 << 20]));
    assert_eq!(
        encode_chunks(&[&huge], GATEWAY, None, false)
            .expect("encodes")
            .len(),
        1
    );
}

/// The records the sink writes straight from the items are, byte for byte, those rskafka
/// sends for the mapped records ([`to_kafka_record`], plus `tidegate-live` on the live
/// lane): every kind of item, with and without an epoch, history and live lane.
#[test]
fn encoded_records_are_byte_for_byte_those_of_the_record_mapping() {
    let items = [
        Item::Reading(record(
            7,
            "turbines/wt-0001/telemetry",
            &b"\x00{\"wind\":7.5}\xff"[..],
        )),
        Item::Gap(Gap {
            first: 17,
            last: 40,
            ingest_ms: 1_764_000_000_100,
        }),
        Item::Thinned(Thinned {
            first: 41,
            last: 940,
            factor: 8,
            ingest_ms: 1_764_000_000_050,
        }),
        Item::Reading(record(941, "dev/2", "")),
        Item::Reading(record(123_456_789_012_345, "dev/3", vec![b'y'; 300])),
    ];
    let refs: Vec<&Item> = items.iter().collect();
    for epoch in [None, Some(EPOCH), Some(u64::MAX)] {
        for live in [false, true] {
            let chunks = encode_chunks(&refs, GATEWAY, epoch, live).expect("encodes");
            assert_eq!(chunks.len(), 1);
            let mapped: Vec<KafkaRecord> = items
                .iter()
                .map(|item| {
                    let mut r = to_kafka_record(item, GATEWAY, epoch);
                    if live {
                        r.headers.insert(HEADER_LIVE.to_owned(), b"1".to_vec());
                    }
                    r
                })
                .collect();
            let reference = EncodedRecords::from_records(mapped).expect("reference encodes");
            assert_eq!(chunks[0].records, reference, "epoch {epoch:?}, live {live}");
            assert_eq!(
                chunks[0].positions,
                items.iter().map(Item::position).collect::<Vec<_>>()
            );
        }
    }
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
fn a_thinned_marker_maps_to_the_reserved_key_an_empty_value_and_its_range_and_factor() {
    let marker = Item::Thinned(Thinned {
        first: 17,
        last: 940,
        factor: 8,
        ingest_ms: 1_764_000_000_000,
    });
    let k = to_kafka_record(&marker, GATEWAY, Some(EPOCH));
    assert_eq!(k.key.as_deref(), Some(&b"$tidegate/thinned"[..]));
    assert_eq!(k.value.as_deref(), Some(&b""[..]));
    assert_eq!(k.timestamp.timestamp_millis(), 1_764_000_000_000);
    let header = |n: &str| {
        k.headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(HEADER_THINNED).as_deref(), Some("17..940"));
    assert_eq!(header(HEADER_THIN_FACTOR).as_deref(), Some("8"));
    assert_eq!(
        header(HEADER_SEQ).as_deref(),
        Some("17"),
        "the first sequence it announces"
    );
    assert_eq!(header(HEADER_EPOCH).as_deref(), Some("4242"));
    assert_eq!(header(HEADER_GATEWAY).as_deref(), Some(GATEWAY));
    assert!(!k.headers.contains_key(HEADER_GAP));
    let plain = to_kafka_record(
        &Item::Reading(record(17, "dev/1", "x")),
        GATEWAY,
        Some(EPOCH),
    );
    assert!(!plain.headers.contains_key(HEADER_THINNED));
    assert!(!plain.headers.contains_key(HEADER_THIN_FACTOR));
}

#[test]
fn a_marker_acknowledged_alone_does_not_hide_the_reading_of_its_sequence_from_the_retry() {
    // One partition: the marker and the reading it announces share it and a sequence.
    let marker = Item::Thinned(Thinned {
        first: 5,
        last: 90,
        factor: 2,
        ingest_ms: 0,
    });
    let b = vec![
        Item::Reading(record(4, "dev/1", "x")),
        marker,
        Item::Reading(record(5, "dev/1", "x")),
        Item::Reading(record(7, "dev/1", "x")),
    ];
    let acked: HashSet<Position> = b[..2].iter().map(Item::position).collect();
    let retry = plan(&b, &acked, 1);
    assert_eq!(
        retry[0]
            .iter()
            .map(|i| (i.seq(), i.as_reading().is_some()))
            .collect::<Vec<_>>(),
        vec![(5, true), (7, true)],
        "the reading 5 goes; the marker 5 does not go again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lands_on_the_partitions_murmur2_chooses_in_journal_order_with_headers() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "readings");
    config.partitions = 3;
    config.compression_setting = Some(Compression::Lz4);
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
        config.compression_setting = Some(codec);
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
async fn a_partition_share_over_the_request_limit_arrives_complete_and_in_order() {
    let tansu = Tansu::start().expect("tansu starts");
    let mut config = upstream(&tansu.addr(), "big-share");
    config.compression_setting = Some(Compression::Zstd);
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

//! The tail read behind exactly-once delivery: what counts as ours, and what a new sink
//! skips after a restart, beside other gateways and epochs, and up to its limit.

use super::*;

#[test]
fn only_records_of_this_gateway_and_epoch_count_as_ours() {
    let mut r = to_kafka_record(
        &Item::Reading(record(9, "dev/1", "x")),
        GATEWAY,
        Some(EPOCH),
    );
    assert_eq!(owner(&r, GATEWAY, EPOCH), Owner::Ours(at(9)));
    assert_eq!(owner(&r, GATEWAY, EPOCH + 1), Owner::OurGatewayEarlier);
    assert_eq!(owner(&r, "gw-other", EPOCH), Owner::Other);
    r.headers.remove(HEADER_EPOCH);
    assert_eq!(
        owner(&r, GATEWAY, EPOCH),
        Owner::OurGatewayEarlier,
        "an older build"
    );
}

#[test]
fn a_thinned_marker_of_ours_stands_just_before_the_reading_of_its_sequence() {
    let marker = to_kafka_record(
        &Item::Thinned(Thinned {
            first: 9,
            last: 20,
            factor: 4,
            ingest_ms: 0,
        }),
        GATEWAY,
        Some(EPOCH),
    );
    let Owner::Ours(m) = owner(&marker, GATEWAY, EPOCH) else {
        panic!("a marker of this gateway and epoch is ours")
    };
    assert_eq!(
        m,
        Position {
            seq: 9,
            slot: Slot::Thinned
        }
    );
    assert!(m < at(9) && m > at(8));
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
                    Owner::Ours(p) => Some(p.seq),
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

/// Readings 1..=40 with 11..=30 thinned to every other one, a marker announcing 11..30 in
/// front of reading 11, as the forwarder sends them.
fn thinned_batch(keys: &[String]) -> Vec<Item> {
    let mut out = Vec::new();
    for r in journal(1, 40, keys) {
        if (11..=30).contains(&r.seq) && r.seq % 2 == 0 {
            continue;
        }
        if r.seq == 11 {
            out.push(Item::Thinned(Thinned {
                first: 11,
                last: 30,
                factor: 2,
                ingest_ms: r.reading.ingest_ms,
            }));
        }
        out.push(Item::Reading(r));
    }
    out
}

/// The records of ours in `topic`'s one partition, as (seq, is a thinned marker).
async fn ours_with_markers(broker: &str, topic: &str) -> Vec<(u64, bool)> {
    read_partition(broker, topic, 0)
        .await
        .iter()
        .filter_map(|r| match owner(r, GATEWAY, EPOCH) {
            Owner::Ours(p) => Some((p.seq, p.slot == Slot::Thinned)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_between_a_marker_and_its_reading_both_arrive_exactly_once() {
    let tansu = Tansu::start().expect("tansu starts");
    // One partition, so the marker and the reading sharing its sequence sit side by side.
    let config = upstream(&tansu.addr(), "thinned");
    let keys = vec!["dev/1".to_owned(), "dev/2".to_owned()];
    let whole = thinned_batch(&keys);
    let marker_at = whole
        .iter()
        .position(|i| matches!(i, Item::Thinned(_)))
        .expect("the batch has a marker");
    // Before the "crash", the batch got as far as the marker, not the reading 11 after it.
    let mut before = KafkaSink::new(&config, GATEWAY);
    counters_of(&mut before, EPOCH);
    before.send(&whole[..=marker_at]).await.expect("delivered");
    drop(before);

    // After the restart the whole batch is sent again: only the reading 11 and later go.
    let mut after = KafkaSink::new(&config, GATEWAY);
    let counters = counters_of(&mut after, EPOCH);
    after.send(&whole).await.expect("delivered");
    assert_eq!(
        crate::telemetry::get(&counters.duplicates_skipped),
        marker_at as u64 + 1
    );
    let expected: Vec<(u64, bool)> = whole
        .iter()
        .map(|i| (i.seq(), matches!(i, Item::Thinned(_))))
        .collect();
    assert_eq!(
        ours_with_markers(&tansu.addr(), "thinned").await,
        expected,
        "every reading and the marker exactly once, the marker just before reading 11"
    );

    // A crash after the reading 11 too: nothing of the batch goes again.
    let mut again = KafkaSink::new(&config, GATEWAY);
    let counters = counters_of(&mut again, EPOCH);
    again.send(&whole).await.expect("delivered");
    assert_eq!(
        crate::telemetry::get(&counters.duplicates_skipped),
        whole.len() as u64
    );
    assert_eq!(ours_with_markers(&tansu.addr(), "thinned").await, expected);
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
        Some(at(30))
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

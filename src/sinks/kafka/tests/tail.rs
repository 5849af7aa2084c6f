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

//! `verify` against a real Kafka-protocol broker (the test bed's Tansu, on a free loopback
//! port): readings produced the way tidegate forwards them are read back from every
//! partition and checked, and `wait_until_complete` waits for late ones.
//!
//! Needs the Tansu binary: `scripts/test.sh` installs it (or set `TIDEGATE_TANSU_BIN`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use firmware_sim::fleet::{DeviceReport, FleetReport, Protocol, Qos};
use firmware_sim::testbed::{self, Tansu};
use firmware_sim::verify::{self, GATEWAY_HEADER, SEQ_HEADER};
use firmware_sim::{device_id, topic_for, Histogram, Turbine};
use rskafka::client::partition::Compression;
use rskafka::record::Record;

const BOOT: u64 = 4242;

/// Produces readings `seqs` of device `n` to `partition`, as tidegate would.
async fn produce(brokers: &[String], topic: &str, partition: i32, n: usize, seqs: &[u64]) {
    let pc = testbed::partition_client(brokers, topic, partition)
        .await
        .expect("partition client");
    let mut t = Turbine::new(3, n, BOOT, 1.0);
    let records: Vec<Record> = seqs
        .iter()
        .map(|&seq| {
            let mut r = t.step(1_700_000_000_000);
            r.seq = seq;
            Record {
                key: Some(topic_for(&r.device).into_bytes()),
                value: Some(r.to_json()),
                headers: BTreeMap::from([
                    (GATEWAY_HEADER.to_owned(), b"gw-test".to_vec()),
                    (SEQ_HEADER.to_owned(), seq.to_string().into_bytes()),
                ]),
                timestamp: chrono_now(),
            }
        })
        .collect();
    pc.produce(records, Compression::NoCompression)
        .await
        .expect("produce");
}

fn chrono_now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    use rskafka::chrono::TimeZone;
    rskafka::chrono::Utc
        .timestamp_millis_opt(1_700_000_000_000)
        .single()
        .expect("valid timestamp")
}

fn fleet(devices: &[(usize, u64)]) -> FleetReport {
    FleetReport {
        broker: "test".into(),
        qos: Qos::AtLeastOnce,
        protocol: Protocol::V4,
        devices: devices
            .iter()
            .map(|&(n, acked)| {
                (
                    device_id(n),
                    DeviceReport {
                        boot: BOOT,
                        topic: topic_for(&device_id(n)),
                        published: acked,
                        acked: (1..=acked).collect(),
                        ..DeviceReport::default()
                    },
                )
            })
            .collect(),
        puback_latency: Default::default(),
        elapsed: Duration::from_secs(1),
        publish_elapsed: Duration::from_secs(1),
        puback_histogram: Histogram::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_every_partition_and_waits_for_late_readings() {
    let tansu = Tansu::start().expect("tansu starts");
    let brokers = tansu.brokers();
    let topic = "telemetry";
    testbed::create_topic(&brokers, topic, 3)
        .await
        .expect("create topic");

    // Device 1 on partition 0 with a replay (duplicates only), device 2 on partition 2.
    produce(&brokers, topic, 0, 1, &[1, 2, 3, 4, 3, 4, 5]).await;
    produce(&brokers, topic, 2, 2, &[1, 2, 3]).await;

    let readings = verify::read_topic(&brokers, topic).await.expect("read");
    assert_eq!(readings.len(), 10);
    assert!(readings.iter().all(|r| r.header(SEQ_HEADER).is_some()));
    let expected = fleet(&[(1, 5), (2, 4)]);
    let v = verify::check(&readings, &expected);
    assert_eq!(v.devices["wt-0001"].duplicates, 2);
    assert!(v.devices["wt-0001"].is_ok(), "{v}");
    assert_eq!(v.devices["wt-0002"].missing, vec![(4, 4)]);

    // Reading 4 of device 2 arrives late: wait_until_complete sees it.
    let late = tokio::spawn({
        let brokers = brokers.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            produce(&brokers, topic, 2, 2, &[4]).await;
        }
    });
    let v = verify::wait_until_complete(&brokers, topic, &expected, Duration::from_secs(15))
        .await
        .expect("verify");
    late.await.expect("late producer");
    assert!(v.is_complete() && v.is_ok(), "{v}");
    assert_eq!(v.received(), 11);

    // Without a fleet report, holes below the highest counter are gaps.
    produce(&brokers, topic, 1, 3, &[1, 3]).await;
    let v = verify::check_stream(&verify::read_topic(&brokers, topic).await.expect("read"));
    assert_eq!(v.devices["wt-0003"].missing, vec![(2, 2)]);
    assert!(!v.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_complete_gives_up_at_the_timeout_with_what_is_missing() {
    let tansu = Tansu::start().expect("tansu starts");
    let brokers = tansu.brokers();
    // The topic never appears: the last error is returned at the timeout.
    let started = Instant::now();
    let r = verify::wait_until_complete(
        &brokers,
        "nothing-here",
        &fleet(&[(1, 3)]),
        Duration::from_secs(1),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

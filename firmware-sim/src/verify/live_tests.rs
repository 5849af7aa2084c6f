//! The live topic's check on hand-made records: the newest reading per device, its age
//! against the bound, devices missing, records without the live marker, and "since when";
//! and an MQTT live lane read back from a real Mosquitto.

use std::time::Duration;

use super::*;
use crate::telemetry::{now_ms, topic_for, Turbine};

const BOOT: u64 = 1_000;

/// A live record of turbine `n`, counter `seq`, stamped `ts`, from boot `boot`.
fn live(n: usize, boot: u64, seq: u64, ts: u64, marked: bool) -> KafkaReading {
    let mut t = Turbine::new(1, n, boot, 1.0);
    let mut r = t.step(ts);
    r.seq = seq;
    let mut headers = vec![(GATEWAY_HEADER.into(), b"gw".to_vec())];
    if marked {
        headers.push((LIVE_HEADER.into(), b"1".to_vec()));
    }
    KafkaReading {
        partition: 0,
        offset: 0,
        key: Some(topic_for(&r.device).into_bytes()),
        payload: r.to_json(),
        headers,
        timestamp_ms: ts as i64,
    }
}

fn devices(n: usize) -> Vec<String> {
    (1..=n).map(crate::device_id).collect()
}

#[test]
fn the_newest_reading_is_the_highest_counter_of_the_newest_boot() {
    let mut t = LiveTable::new();
    t.add(&live(1, BOOT, 5, 50_000, true), 60_000);
    // Compaction and retries can deliver an older reading after a newer one.
    t.add(&live(1, BOOT, 3, 30_000, true), 61_000);
    // A reboot restarts the counter under a higher boot id.
    t.add(&live(1, BOOT + 1, 1, 55_000, true), 62_000);
    let newest = t.newest_of(&crate::device_id(1)).expect("a reading");
    assert_eq!((newest.boot, newest.seq, newest.ts), (BOOT + 1, 1, 55_000));
    assert_eq!(newest.read_at, 62_000);
    assert_eq!(t.records(), 3);
}

#[test]
fn every_device_fresh_and_marked_passes() {
    let mut t = LiveTable::new();
    for n in 1..=3 {
        t.add(&live(n, BOOT, 10, 100_000, true), 100_500);
    }
    let ids = devices(3);
    let r = t.check(
        ids.iter().map(String::as_str),
        Duration::from_secs(10),
        105_000,
    );
    assert!(r.is_ok(), "{:?}", r.problems());
    assert_eq!(r.devices.len(), 3);
}

#[test]
fn a_device_missing_or_too_old_fails_by_name() {
    let mut t = LiveTable::new();
    t.add(&live(1, BOOT, 10, 100_000, true), 100_100);
    t.add(&live(2, BOOT, 10, 80_000, true), 100_100);
    let ids = devices(3);
    let r = t.check(
        ids.iter().map(String::as_str),
        Duration::from_secs(10),
        105_000,
    );
    assert!(!r.is_ok());
    assert_eq!(r.missing(), ["wt-0003"]);
    assert_eq!(r.stale(), [("wt-0002", Duration::from_secs(25))]);
    let problems = r.problems().join("\n");
    assert!(problems.contains("wt-0003: no reading"), "{problems}");
    assert!(
        problems.contains("wt-0002: newest live reading is 25.0 s old"),
        "{problems}"
    );
    assert!(!problems.contains("wt-0001"), "{problems}");
}

#[test]
fn records_without_the_live_marker_fail_the_check_and_garbage_is_counted() {
    let mut t = LiveTable::new();
    t.add(&live(1, BOOT, 10, 100_000, false), 100_100);
    t.add_payload(b"not a reading", true, 100_100);
    let r = t.check(["wt-0001"], Duration::from_secs(10), 100_200);
    assert_eq!((r.unmarked, r.unparseable, r.records), (1, 1, 2));
    assert!(!r.is_ok());
    assert!(r
        .problems()
        .iter()
        .any(|p| p.contains("without tidegate-live: 1")));
}

#[test]
fn since_when_every_device_had_a_reading_from_after_a_moment() {
    let mut t = LiveTable::new();
    // Before the link came up at 200 s: old readings from the backlog.
    t.add(&live(1, BOOT, 1, 150_000, true), 150_500);
    t.add(&live(2, BOOT, 1, 150_000, true), 150_500);
    // After it: device 1 fresh at 203 s, device 2 at 207 s, then both again.
    t.add(&live(1, BOOT, 2, 201_000, true), 203_000);
    t.add(&live(2, BOOT, 2, 205_000, true), 207_000);
    t.add(&live(1, BOOT, 3, 210_000, true), 211_000);
    let both = ["wt-0001", "wt-0002"];
    assert_eq!(t.first_read_since("wt-0001", 200_000), Some(203_000));
    assert_eq!(t.all_fresh_since(both, 200_000), Ok(207_000));
    assert_eq!(
        t.all_fresh_since(["wt-0001", "wt-0002", "wt-0009"], 200_000),
        Err(vec!["wt-0009".to_owned()])
    );
    assert_eq!(
        t.all_fresh_since(both, 206_000),
        Err(vec!["wt-0002".to_owned()])
    );
}

/// Publishes turbine `n`'s reading `seq` stamped `ts` to `topic`, retained, QoS 1, with the
/// live marker as a user property if `marked`; waits for the PUBACK.
async fn publish_live(broker: &str, topic: &str, n: usize, seq: u64, ts: u64, marked: bool) {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (host, port) = broker.rsplit_once(':').expect("host:port");
    let port: u16 = port.parse().expect("a port");
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(format!("pub-{n}-{seq}"), host, port), 8);
    let mut r = Turbine::new(1, n, BOOT, 1.0).step(ts);
    r.seq = seq;
    let props = PublishProperties {
        user_properties: if marked {
            vec![(LIVE_HEADER.to_owned(), "1".to_owned())]
        } else {
            Vec::new()
        },
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, true, r.to_json(), props)
        .await
        .expect("queued");
    loop {
        match events.poll().await.expect("connected") {
            Event::Incoming(Packet::PubAck(_)) => return,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn the_mqtt_watcher_reads_retained_and_new_live_readings_with_their_marker() {
    let mosquitto = crate::testbed::Mosquitto::start().unwrap_or_else(|e| panic!("{e}"));
    let broker = mosquitto.addr();
    let now = now_ms();
    // Retained before the watcher subscribes: what a dashboard connecting now would get.
    publish_live(&broker, "live/turbines/wt-0001/telemetry", 1, 7, now, true).await;
    publish_live(&broker, "live/turbines/wt-0002/telemetry", 2, 3, now, false).await;
    // Not under the prefix: not the live lane.
    publish_live(&broker, "turbines/wt-0003/telemetry", 3, 9, now, true).await;
    let watcher = MqttLiveWatcher::connect(&broker, "live/")
        .await
        .expect("subscribed");
    publish_live(
        &broker,
        "live/turbines/wt-0001/telemetry",
        1,
        8,
        now + 1,
        true,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let table = loop {
        let t = watcher.table();
        if t.records() >= 3 || tokio::time::Instant::now() >= deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(table.records(), 3);
    assert_eq!(table.unmarked(), 1, "wt-0002's reading has no marker");
    assert_eq!(table.newest_of("wt-0001").map(|r| r.seq), Some(8));
    assert_eq!(table.newest_of("wt-0003"), None);
    let r = table.check(["wt-0001", "wt-0002"], Duration::from_secs(60), now);
    assert_eq!(r.missing(), Vec::<&str>::new());
}

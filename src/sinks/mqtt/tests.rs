//! Tests of the MQTT sink against a real Mosquitto (firmware-sim's test bed) on a free
//! loopback port: mapping and order of what arrives, and how failures are classified.

use std::time::Duration;

use bytes::Bytes;
use firmware_sim::testbed::{self, Mosquitto, MosquittoSetup};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as Ev5, MqttOptions};

use super::*;
use crate::config::{MqttClientConfig, UpstreamConfig, UpstreamKind};
use crate::record::{Gap, Item, Reading, SourceKind};

const GATEWAY: &str = "gw-test-01";

fn upstream(url: String) -> UpstreamConfig {
    UpstreamConfig {
        topic_prefix: "site-7/".into(),
        request_timeout: Duration::from_secs(5),
        client: MqttClientConfig {
            max_inflight: 10,
            ..MqttClientConfig::with_url(url)
        },
        ..UpstreamConfig::new("test-cloud", UpstreamKind::Mqtt)
    }
}

fn batch(first_seq: u64, count: u64) -> Vec<Item> {
    (0..count)
        .map(|i| {
            let seq = first_seq + i;
            let mut payload = format!("{{\"seq\":{seq}}}").into_bytes();
            payload.extend_from_slice(&[0, 0xff]);
            Item::Reading(Record {
                seq,
                reading: Reading {
                    ingest_ms: 1_764_000_000_000 + seq,
                    source_kind: SourceKind::MqttListener,
                    source: "wt-0001".into(),
                    topic: format!("turbines/wt-{:04}/telemetry", seq % 3),
                    payload: Bytes::from(payload),
                    qos: 1,
                    retain: false,
                },
            })
        })
        .collect()
}

/// A subscriber of `filter`, subscribed (SUBACK seen) before it is returned.
async fn subscriber(port: u16, filter: &str) -> rumqttc::v5::EventLoop {
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("sink-test-reader", "127.0.0.1", port), 10);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Ev5::Incoming(Packet::SubAck(_)))) => {
                std::mem::forget(client); // keep the request channel open
                return events;
            }
            Ok(Ok(_)) => {}
            other => panic!("subscriber: {other:?}"),
        }
    }
}

/// A fresh Mosquitto, a subscriber of `site-7/#` on it, and a sink publishing there.
async fn broker_reader_and_sink() -> (Mosquitto, rumqttc::v5::EventLoop, MqttSink) {
    let broker = Mosquitto::start().expect("mosquitto");
    let reader = subscriber(broker.port(), "site-7/#").await;
    let sink = MqttSink::new(
        &upstream(format!("mqtt://127.0.0.1:{}", broker.port())),
        GATEWAY,
    )
    .expect("sink");
    (broker, reader, sink)
}

/// The next `count` publishes `reader` receives; fails the test after 10 s of silence.
async fn receive(reader: &mut rumqttc::v5::EventLoop, count: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    while got.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), reader.poll()).await {
            Ok(Ok(Ev5::Incoming(Packet::Publish(p)))) => got.push(p),
            Ok(Ok(_)) => {}
            other => panic!("reader after {} messages: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn a_batch_arrives_in_journal_order_with_the_prefix_the_payload_and_both_properties() {
    let (_broker, mut reader, mut sink) = broker_reader_and_sink().await;
    let records = batch(41, 250);
    // Two sends on one connection: the window (10) is refilled many times per batch.
    sink.send(&records[..120]).await.expect("first half");
    sink.send(&records[120..]).await.expect("second half");

    let got = receive(&mut reader, records.len()).await;
    for (r, p) in records.iter().filter_map(Item::as_reading).zip(&got) {
        assert_eq!(
            &p.topic[..],
            format!("site-7/{}", r.reading.topic).as_bytes()
        );
        assert_eq!(p.payload, r.reading.payload);
        let props = p
            .properties
            .as_ref()
            .expect("properties")
            .user_properties
            .clone();
        assert_eq!(
            props,
            vec![
                (
                    crate::mqtt_client::PROP_GATEWAY.to_owned(),
                    GATEWAY.to_owned()
                ),
                (crate::mqtt_client::PROP_SEQ.to_owned(), r.seq.to_string()),
            ]
        );
    }
}

#[tokio::test]
async fn a_gap_in_a_batch_publishes_nothing_and_the_readings_around_it_arrive_in_order() {
    let (_broker, mut reader, mut sink) = broker_reader_and_sink().await;
    let mut items = batch(1, 10);
    items.push(Item::Gap(Gap {
        first: 11,
        last: 20,
        ingest_ms: 1_764_000_000_021,
    }));
    items.extend(batch(21, 10));
    sink.send(&items).await.expect("the batch with a gap");
    sink.send(&batch(31, 1)).await.expect("the next batch");

    let seqs: Vec<u64> = receive(&mut reader, 21)
        .await
        .into_iter()
        .map(|p| {
            let props = p.properties.expect("properties").user_properties;
            let seq = props
                .iter()
                .find(|(k, _)| k == crate::mqtt_client::PROP_SEQ)
                .map(|(_, v)| v.clone())
                .expect("tidegate-seq");
            seq.parse::<u64>().expect("decimal")
        })
        .collect();
    let expected: Vec<u64> = (1..=10).chain(21..=31).collect();
    assert_eq!(
        seqs, expected,
        "every reading once, in order, nothing for the gap"
    );
}

#[tokio::test]
async fn an_unreachable_broker_is_retryable_and_the_error_names_the_upstream() {
    let port = testbed::free_port().expect("port");
    let mut sink =
        MqttSink::new(&upstream(format!("mqtt://127.0.0.1:{port}")), GATEWAY).expect("sink");
    let err = sink.send(&batch(1, 3)).await.expect_err("nothing listens");
    assert!(err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains("\"test-cloud\""), "{text}");
    assert!(text.contains(&format!("mqtt://127.0.0.1:{port}")), "{text}");
}

#[tokio::test]
async fn refused_credentials_and_a_missing_password_file_are_fatal() {
    let mut setup = MosquittoSetup::default();
    setup.users = vec![("tidegate".into(), "right".into())];
    let broker = Mosquitto::start_with(&setup).expect("mosquitto with passwords");
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong\n").expect("write");
    let right = dir.path().join("right");
    std::fs::write(&right, "right\n").expect("write");
    for protocol in [4, 5] {
        let mut config = upstream(format!("mqtt://127.0.0.1:{}", broker.port()));
        config.client.protocol = protocol;
        config.client.username = Some("tidegate".into());
        config.client.password_file = Some(wrong.clone());
        let mut sink = MqttSink::new(&config, GATEWAY).expect("sink");
        let err = sink.send(&batch(1, 3)).await.expect_err("wrong password");
        assert!(!err.is_retryable(), "protocol {protocol}: {err}");

        config.client.password_file = Some(dir.path().join("missing"));
        let mut sink = MqttSink::new(&config, GATEWAY).expect("sink");
        let err = sink.send(&batch(1, 3)).await.expect_err("no file");
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains("password_file"), "{err}");

        // The trailing newline of the file is not part of the password.
        config.client.password_file = Some(right.clone());
        let mut sink = MqttSink::new(&config, GATEWAY).expect("sink");
        sink.send(&batch(1, 3)).await.expect("right password");
    }
}

#[tokio::test]
async fn an_idle_connection_is_kept_alive_and_one_lost_while_idle_is_replaced_without_a_failure() {
    let mut broker = Mosquitto::start().expect("mosquitto");
    let mut config = upstream(format!("mqtt://127.0.0.1:{}", broker.port()));
    config.client.keep_alive = Duration::from_secs(5);
    let mut sink = MqttSink::new(&config, GATEWAY).expect("sink");
    sink.send(&batch(1, 5)).await.expect("first batch");
    // Idle for three keep-alive periods: the broker closes a silent client after 1.5.
    tokio::time::sleep(Duration::from_secs(9)).await;
    sink.send(&batch(6, 5)).await.expect("after idling");
    assert_eq!(sink.connects, 1, "the pings kept the connection open");
    // The broker restarts while the sink is idle: the next batch goes out on a new
    // connection, without an error for the forwarder to back off from.
    broker.restart().expect("restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.send(&batch(11, 5)).await.expect("after the restart");
    assert_eq!(sink.connects, 2);
}

#[tokio::test]
async fn the_live_sink_publishes_retained_marked_readings_beside_the_history_connection() {
    let (broker, mut history_reader, mut history) = broker_reader_and_sink().await;
    let mut config = upstream(format!("mqtt://127.0.0.1:{}", broker.port()));
    config.uplink.live_topic_prefix = "live/".into();
    let mut live = MqttSink::live(&config, GATEWAY).expect("live sink");
    let counters = crate::sinks::attach_counters(&mut live, None);

    history.send(&batch(1, 6)).await.expect("history batch");
    // Six readings over three topics: the broker keeps the last of each, retained.
    let readings = batch(7, 6);
    live.send(&readings).await.expect("live batch");
    history
        .send(&batch(13, 6))
        .await
        .expect("history batch after the live one");
    assert_eq!(
        (history.connects, live.connects),
        (1, 1),
        "the live connection (its own client id) did not take the history one's place"
    );
    assert_eq!(
        receive(&mut history_reader, 12).await.len(),
        12,
        "the history topics got the history alone"
    );

    // A subscriber arriving later gets each topic's newest reading at once.
    let mut late = subscriber(broker.port(), "live/#").await;
    let mut got = receive(&mut late, 3).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let mut newest: Vec<&Record> = readings
        .iter()
        .filter_map(Item::as_reading)
        .skip(3)
        .collect();
    newest.sort_by(|a, b| a.reading.topic.cmp(&b.reading.topic));
    for (p, r) in got.iter().zip(newest) {
        assert_eq!(&p.topic[..], format!("live/{}", r.reading.topic).as_bytes());
        assert!(p.retain, "delivered as a retained message");
        assert_eq!(p.payload, r.reading.payload);
        assert_eq!(
            p.properties.as_ref().expect("properties").user_properties,
            crate::mqtt_client::user_properties(GATEWAY, r.seq, true),
            "gateway, sequence and the live marker"
        );
    }

    let sizes: u64 = readings
        .iter()
        .filter_map(Item::as_reading)
        .map(|r| {
            let topic = format!("live/{}", r.reading.topic);
            wire::publish_size(5, &topic, r.reading.payload.len(), GATEWAY, r.seq, true) as u64
        })
        .sum();
    assert_eq!(
        (
            crate::telemetry::get(&counters.wire_sent),
            crate::telemetry::get(&counters.wire_received)
        ),
        (sizes, 6 * wire::puback_size(5) as u64),
        "six publishes out, six PUBACKs in"
    );
}

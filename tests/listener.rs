//! The MQTT listener against real MQTT clients and raw sockets, with a real journal.
//!
//! Each test runs tidegate's listener in-process on a loopback port with an LMDB journal in
//! a temporary directory, so it can check what the journal holds after each exchange.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytesize::ByteSize;
use rumqttc::mqttbytes::v4;
use tidegate::config::{JournalConfig, MqttConfig, OnFull};
use tidegate::ingest::listener;
use tidegate::ingest::local_bus::LocalBus;
use tidegate::journal::{Journal, WriterHandle};
use tidegate::record::Record;
use tidegate::telemetry::{get, IngestCounters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Harness {
    addr: std::net::SocketAddr,
    journal: Journal,
    counters: Arc<IngestCounters>,
    stop: CancellationToken,
    tracker: TaskTracker,
    writer: Option<WriterHandle>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(max_size: ByteSize, on_full: OnFull, max_packet: ByteSize) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let jc = JournalConfig {
            dir: dir.path().to_owned(),
            max_size,
            on_full,
            max_age: None,
            commit_interval: Duration::from_millis(1),
            commit_max_records: 10_000,
            // Stored as sent, so the sizes the tests publish fill the journal.
            compression: tidegate::config::JournalCompression::None,
            ..JournalConfig::default()
        };
        let (journal, writer) = Journal::open(&jc, &["k".to_string()]).expect("journal");
        let mc = MqttConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_packet,
            ..MqttConfig::default()
        };
        let listener = listener::bind(mc.listen).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(IngestCounters::default());
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bus = Arc::new(LocalBus::start().expect("local bus"));
        tracker.spawn(listener::serve(
            listener,
            mc,
            journal.clone(),
            Some(bus),
            counters.clone(),
            stop.clone(),
            tracker.clone(),
        ));
        Harness {
            addr,
            journal,
            counters,
            stop,
            tracker,
            writer: Some(writer),
            _dir: dir,
        }
    }

    async fn default() -> Harness {
        Self::start(ByteSize::mib(64), OnFull::DropOldest, ByteSize::kib(64)).await
    }

    fn records(&self) -> Vec<Record> {
        self.journal
            .read_from(0, usize::MAX, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|r| r.expect("decodes"))
            .collect()
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let writer = self.writer.take().unwrap();
        drop(self.journal);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap();
    }
}

/// A raw 3.1.1 client: CONNECT, then whatever bytes the test writes.
async fn raw_v4(addr: std::net::SocketAddr, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = BytesMut::new();
    let mut connect = v4::Connect::new(client_id);
    connect.clean_session = true;
    connect.write(&mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.expect("connack");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    s
}

fn publish_bytes(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> BytesMut {
    let mut buf = BytesMut::new();
    let q = match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    };
    let mut p = v4::Publish::new(topic, q, payload.to_vec());
    p.pkid = pkid;
    p.write(&mut buf).unwrap();
    buf
}

/// Reads everything the server sends until it closes or goes quiet.
async fn read_until_quiet(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test]
async fn v4_and_v5_devices_get_every_qos1_publish_journaled_in_order_and_acknowledged() {
    let h = Harness::default().await;
    let n = 200u64;
    let mut handles = Vec::new();
    for (i, v5) in [(0, false), (1, true)] {
        let addr = h.addr;
        handles.push(tokio::spawn(async move {
            let id = format!("dev-{i}");
            let topic = format!("turbines/{id}/telemetry");
            let mut acked = 0u64;
            if v5 {
                let mut o = rumqttc::v5::MqttOptions::new(&id, addr.ip().to_string(), addr.port());
                o.set_clean_start(true);
                let (c, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
                let t = topic.clone();
                tokio::spawn(async move {
                    for k in 1..=n {
                        c.publish(
                            &t,
                            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                            false,
                            k.to_string(),
                        )
                        .await
                        .unwrap();
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
                while acked < n {
                    if let rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::PubAck(a),
                    ) = el.poll().await.expect("poll")
                    {
                        assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                        acked += 1;
                    }
                }
            } else {
                let mut o = rumqttc::MqttOptions::new(&id, addr.ip().to_string(), addr.port());
                o.set_clean_session(true);
                let (c, mut el) = rumqttc::AsyncClient::new(o, 100);
                let t = topic.clone();
                tokio::spawn(async move {
                    for k in 1..=n {
                        c.publish(&t, rumqttc::QoS::AtLeastOnce, false, k.to_string())
                            .await
                            .unwrap();
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
                while acked < n {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                        el.poll().await.expect("poll")
                    {
                        acked += 1;
                    }
                }
            }
            acked
        }));
    }
    for t in handles {
        assert_eq!(t.await.unwrap(), n);
    }
    let records = h.records();
    assert_eq!(records.len() as u64, 2 * n);
    for dev in ["dev-0", "dev-1"] {
        let mine: Vec<u64> = records
            .iter()
            .filter(|r| r.reading.source == dev)
            .map(|r| {
                std::str::from_utf8(&r.reading.payload)
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            mine,
            (1..=n).collect::<Vec<_>>(),
            "{dev}: every reading, in order"
        );
        assert!(records
            .iter()
            .filter(|r| r.reading.source == dev)
            .all(|r| r.reading.topic == format!("turbines/{dev}/telemetry") && r.reading.qos == 1));
    }
    assert_eq!(get(&h.counters.readings_acknowledged), 2 * n);
    h.shutdown().await;
}

#[tokio::test]
async fn a_malformed_packet_closes_the_connection_but_the_good_readings_before_it_are_kept() {
    let h = Harness::default().await;
    let mut s = raw_v4(h.addr, "noisy").await;
    let mut bytes = publish_bytes("t/noisy", b"good-1", 1, 1);
    bytes.extend_from_slice(&publish_bytes("t/noisy", b"good-2", 1, 2));
    // A PUBLISH with QoS 3, which no version allows.
    bytes.extend_from_slice(&[0x36, 0x05, 0x00, 0x01, b'x', 0x00, 0x03]);
    s.write_all(&bytes).await.unwrap();
    let (reply, closed) = read_until_quiet(&mut s).await;
    assert!(closed, "connection closed after the malformed packet");
    assert_eq!(
        reply,
        [0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x02],
        "both good publishes acknowledged"
    );
    let payloads: Vec<_> = h
        .records()
        .iter()
        .map(|r| r.reading.payload.clone())
        .collect();
    assert_eq!(payloads, vec!["good-1", "good-2"]);
    assert_eq!(get(&h.counters.rejected_malformed), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn an_oversized_publish_is_refused_counted_and_never_journaled() {
    let h = Harness::start(ByteSize::mib(64), OnFull::DropOldest, ByteSize::kib(1)).await;
    let mut s = raw_v4(h.addr, "big").await;
    let mut bytes = publish_bytes("t/big", b"small", 1, 1);
    bytes.extend_from_slice(&publish_bytes("t/big", &vec![b'x'; 4096], 1, 2));
    s.write_all(&bytes).await.unwrap();
    let (reply, closed) = read_until_quiet(&mut s).await;
    assert!(closed);
    assert_eq!(reply, [0x40, 0x02, 0x00, 0x01]);
    assert_eq!(h.records().len(), 1);
    assert_eq!(get(&h.counters.rejected_oversized), 1);
    // The listener is still serving others.
    let mut other = raw_v4(h.addr, "next").await;
    other
        .write_all(&publish_bytes("t/next", b"ok", 1, 7))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    other.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x40, 0x02, 0x00, 0x07]);
    h.shutdown().await;
}

#[tokio::test]
async fn system_topics_and_wildcard_topics_are_not_journaled() {
    let h = Harness::default().await;
    let mut s = raw_v4(h.addr, "sys").await;
    s.write_all(&publish_bytes("$SYS/foo", b"x", 1, 1))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(
        ack,
        [0x40, 0x02, 0x00, 0x01],
        "acknowledged so the device does not resend it"
    );
    s.write_all(&publish_bytes("a/+/b", b"x", 1, 2))
        .await
        .unwrap();
    let (_, closed) = read_until_quiet(&mut s).await;
    assert!(closed, "a wildcard in a publish topic is a protocol error");
    assert!(h.records().is_empty());
    assert_eq!(get(&h.counters.rejected_system_topic), 1);
    assert_eq!(get(&h.counters.rejected_topic), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_qos2_publish_resent_before_release_is_journaled_once() {
    let h = Harness::default().await;
    let mut s = raw_v4(h.addr, "q2").await;
    s.write_all(&publish_bytes("t/q2", b"once", 2, 9))
        .await
        .unwrap();
    let mut rec = [0u8; 4];
    s.read_exact(&mut rec).await.unwrap();
    assert_eq!(rec, [0x50, 0x02, 0x00, 0x09], "PUBREC");
    let mut dup = publish_bytes("t/q2", b"once", 2, 9);
    dup[0] |= 0x08;
    s.write_all(&dup).await.unwrap();
    s.read_exact(&mut rec).await.unwrap();
    assert_eq!(
        rec,
        [0x50, 0x02, 0x00, 0x09],
        "PUBREC again for the duplicate"
    );
    s.write_all(&[0x62, 0x02, 0x00, 0x09]).await.unwrap(); // PUBREL
    let mut comp = [0u8; 4];
    s.read_exact(&mut comp).await.unwrap();
    assert_eq!(comp, [0x70, 0x02, 0x00, 0x09], "PUBCOMP");
    assert_eq!(h.records().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn with_reject_a_full_journal_refuses_v5_publishes_with_quota_exceeded() {
    let h = Harness::start(ByteSize::mib(1), OnFull::Reject, ByteSize::kib(64)).await;
    let mut o = rumqttc::v5::MqttOptions::new("v5dev", h.addr.ip().to_string(), h.addr.port());
    o.set_clean_start(true);
    let (c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let payload = vec![b'x'; 32 * 1024];
    let total = 64u16; // 2 MiB of payload into a 1 MiB journal
    tokio::spawn(async move {
        for _ in 0..total {
            c.publish(
                "t/full",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
        }
        // Keep the client alive until the test ends.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    // rumqttc reports a negative PUBACK as an error of the event loop.
    let mut ok = 0u64;
    let refused_reason = loop {
        match el.poll().await {
            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a))) => {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                ok += 1;
            }
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::PubAckFail {
                reason,
            })) => {
                break reason;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    };
    assert_eq!(
        refused_reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded
    );
    assert!(ok > 0 && ok < total as u64, "ok {ok}");
    // rumqttc drops events read in the same batch as the failure, so count on the server:
    // exactly the readings acknowledged with success are held.
    let held = h.records().len() as u64;
    assert!(ok <= held);
    assert_eq!(held, get(&h.counters.readings_acknowledged));
    assert!(get(&h.counters.rejected_full) >= 1);
    h.shutdown().await;
}

#[tokio::test]
async fn with_reject_a_full_journal_withholds_v4_acks_and_closes_the_connection() {
    let h = Harness::start(ByteSize::mib(1), OnFull::Reject, ByteSize::kib(64)).await;
    let mut s = raw_v4(h.addr, "v4full").await;
    let payload = vec![b'y'; 32 * 1024];
    let mut acks = 0u16;
    let mut closed = false;
    for pkid in 1..=64u16 {
        if s.write_all(&publish_bytes("t/full4", &payload, 1, pkid))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut ack = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack)).await {
            Ok(Ok(_)) => {
                assert_eq!(ack, [0x40, 0x02, (pkid >> 8) as u8, pkid as u8]);
                acks += 1;
            }
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the connection is closed instead of acknowledging");
    assert!(acks > 0);
    assert_eq!(
        h.records().len() as u64,
        acks as u64,
        "every acknowledged reading is held, nothing else"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_local_subscriber_receives_committed_readings_and_bad_filters_are_refused() {
    let h = Harness::default().await;
    let mut o = rumqttc::MqttOptions::new("dashboard", h.addr.ip().to_string(), h.addr.port());
    o.set_clean_session(true);
    let (sub, mut sub_el) = rumqttc::AsyncClient::new(o, 100);
    sub.subscribe("turbines/+/telemetry", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    sub.subscribe("a/#/b", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) =
            sub_el.poll().await.expect("poll")
        {
            codes.extend(a.return_codes);
        }
    }
    assert_eq!(
        codes,
        vec![
            rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce),
            rumqttc::SubscribeReasonCode::Failure
        ],
        "granted at QoS 0; an invalid filter is refused"
    );

    let mut dev = raw_v4(h.addr, "wt-0042").await;
    let mut bytes = BytesMut::new();
    for pkid in 1..=50u16 {
        bytes.extend_from_slice(&publish_bytes(
            "turbines/wt-0042/telemetry",
            pkid.to_string().as_bytes(),
            1,
            pkid,
        ));
        bytes.extend_from_slice(&publish_bytes("other/topic", b"x", 1, 1000 + pkid));
    }
    dev.write_all(&bytes).await.unwrap();

    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 50 {
        let ev = tokio::time::timeout_at(deadline, sub_el.poll())
            .await
            .expect("readings reach the subscriber")
            .expect("poll");
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
            assert_eq!(
                p.topic, "turbines/wt-0042/telemetry",
                "only matching topics"
            );
            got.push(
                String::from_utf8(p.payload.to_vec())
                    .unwrap()
                    .parse::<u16>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(got, (1..=50).collect::<Vec<_>>(), "in publish order");
    assert_eq!(
        h.records().len(),
        100,
        "every reading journaled, subscribed or not"
    );
    h.shutdown().await;
}

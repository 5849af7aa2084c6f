//! End to end, the MQTT bridge against real Mosquitto (and Tansu), all on loopback ports:
//!
//! * upstream: simulated turbines → `tidegate` → an upstream Mosquitto, read back by a
//!   subscriber of that broker and checked with firmware-sim's verifier (every acknowledged
//!   reading, in order per device, with the `tidegate-gateway` / `tidegate-seq` user
//!   properties in place of Kafka headers);
//! * downstream: turbines → a local Mosquitto → `tidegate` (`[[mqtt_subscribe]]`) → Kafka.
//!
//! Brokers are stopped gracefully (SIGTERM) where a test restarts them: Mosquitto writes its
//! persistence file only then, and what a killed Mosquitto loses is not tidegate's to keep.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fleet::assert_arrived;
use common::metrics::scrape;
use common::pki::TestPki;
use common::status::{backlog, eventually, wait_for_log};
use common::{free_port, status_json, wait_for_backlog, Fleet, Gateway, Mosquitto, Tansu};
use firmware_sim::testbed::MosquittoSetup;
use firmware_sim::{CancellationToken, FleetReport, KafkaReading, Protocol, VerifyReport};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// Time allowed for every acknowledged reading to arrive.
const ARRIVAL: Duration = Duration::from_secs(90);

const PREFIX: &str = "site-7/";

/// The usual test fleet ([`Fleet`]) of `devices` turbines sending `count` readings each
/// to `broker`, reconnecting quickly after a restart.
fn fleet(broker: String, devices: usize, count: u64) -> Fleet {
    Fleet::new(broker, devices)
        .count(count)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
}

/// Waits until the gateway's subscription has every topic filter confirmed (no figure
/// tells a connected subscription from an active one, so the log line does).
async fn wait_for_subscription(gw: &Gateway) {
    wait_for_log(gw, &["MQTT subscription active"]).await;
}

fn gateway_section(mqtt_port: u16, dir: &Path) -> String {
    gateway_section_with(mqtt_port, dir, "")
}

fn gateway_section_with(mqtt_port: u16, dir: &Path, journal_extra: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-e2e\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n{journal_extra}\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\nmax_packet = \"64KiB\"\n",
        dir.join("journal").display()
    )
}

fn mqtt_upstream(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nkind = \"mqtt\"\nurl = \"{url}\"\ntopic_prefix = \"{PREFIX}\"\nmax_batch = 500\nlinger = \"5ms\"\nrequest_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n{extra}\n"
    )
}

fn kafka_upstream(name: &str, port: u16, topic: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{port}\"]\ntopic = \"{topic}\"\npartitions = 3\nmax_batch = 500\nlinger = \"5ms\"\nrequest_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n"
    )
}

fn subscription(url: &str, extra: &str) -> String {
    format!(
        "[[mqtt_subscribe]]\nurl = \"{url}\"\ntopics = [\"turbines/#\"]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n{extra}\n"
    )
}

/// A subscriber of the upstream broker (MQTT 5, persistent session, QoS 1) that records
/// every message under `site-7/#` as the verifier's [`KafkaReading`]: key = the topic
/// without the prefix, user properties as headers, offset = arrival order.
struct Collector {
    received: Arc<Mutex<Vec<KafkaReading>>>,
    stop: CancellationToken,
}

impl Collector {
    /// Connects, subscribes and waits for the SUBACK, so nothing published afterwards is
    /// missed; then keeps collecting (reconnecting through broker restarts) until dropped.
    async fn start(broker: &Mosquitto, creds: Option<(&str, &str)>) -> Collector {
        let mut o = MqttOptions::new("e2e-collector", "127.0.0.1", broker.port());
        o.set_clean_start(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(1 << 20));
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(3600);
        props.max_packet_size = Some(1 << 20);
        o.set_connect_properties(props);
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let (client, mut events) = AsyncClient::new(o, 100);
        client
            .subscribe(format!("{PREFIX}#"), QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        wait_for_packet(&mut events, "the collector's SUBACK", |p| {
            matches!(p, Packet::SubAck(_))
        })
        .await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (sink, done) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let _client = client;
            loop {
                let polled = tokio::select! {
                    _ = done.cancelled() => return,
                    p = events.poll() => p,
                };
                match polled {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let key = topic.strip_prefix(PREFIX).map(str::to_owned);
                        let headers = p
                            .properties
                            .map(|props| {
                                props
                                    .user_properties
                                    .into_iter()
                                    .map(|(k, v)| (k, v.into_bytes()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let mut all = sink.lock().unwrap();
                        let offset = all.len() as i64;
                        all.push(KafkaReading {
                            partition: 0,
                            offset,
                            key: key.map(String::into_bytes),
                            payload: p.payload.to_vec(),
                            headers,
                            timestamp_ms: 0,
                        });
                    }
                    Ok(_) => {}
                    // The broker is restarting: rumqttc reconnects on the next poll.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Collector { received, stop }
    }

    fn snapshot(&self) -> Vec<KafkaReading> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until every reading `report` says was acknowledged has arrived.
    async fn wait_until_complete(&self, report: &FleetReport, gw: &Gateway) -> VerifyReport {
        self.wait_until_complete_as(report, gw, |_| {}).await
    }

    /// [`Collector::wait_until_complete`], with `stand_in` applied to what arrived before
    /// it is checked.
    async fn wait_until_complete_as(
        &self,
        report: &FleetReport,
        gw: &Gateway,
        stand_in: impl Fn(&mut Vec<KafkaReading>),
    ) -> VerifyReport {
        let v = eventually(gw, "every reading upstream", ARRIVAL, async || {
            let mut received = self.snapshot();
            stand_in(&mut received);
            let v = firmware_sim::check(&received, report);
            if v.is_complete() {
                Ok(v)
            } else {
                Err(format!("{v}\nproblems: {:?}", v.problems()))
            }
        })
        .await;
        assert!(
            v.is_ok(),
            "{v}\nproblems: {:?}\ngateway log:\n{}",
            v.problems(),
            gw.log()
        );
        v
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `events` until a packet `want` accepts comes in; fails on an error or after 10 s.
async fn wait_for_packet(
    events: &mut rumqttc::v5::EventLoop,
    what: &str,
    want: impl Fn(&Packet) -> bool,
) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(p))) if want(&p) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("waiting for {what}: {e}"),
            Err(_) => panic!("no {what} within 10 s"),
        }
    }
}

/// SIGTERM (Mosquitto saves its persistence file), wait for the exit, start again.
fn restart_gracefully(broker: &mut Mosquitto) {
    let pid = broker.pid().expect("mosquitto runs");
    signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    broker
        .wait_for_exit(Duration::from_secs(30))
        .expect("mosquitto exits on SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_reaches_the_upstream_broker_in_order_with_gateway_and_sequence_properties() {
    let upstream = Mosquitto::start();
    let collector = Collector::start(&upstream, None).await;
    let url = format!("mqtt://127.0.0.1:{}", upstream.port());
    let gw = Gateway::start_fresh(|port, dir| {
        gateway_section(port, dir) + &mqtt_upstream("cloud", &url, "")
    });
    let v4 = fleet(gw.mqtt_addr(), 6, 300).run();
    let v5 = fleet(gw.mqtt_addr(), 6, 300)
        .first_device(7)
        .protocol(Protocol::V5)
        .run();
    let (v4, v5) = tokio::join!(v4, v5);
    assert!(v4.all_acked() && v5.all_acked());
    let a = collector.wait_until_complete(&v4, &gw).await;
    let b = collector.wait_until_complete(&v5, &gw).await;
    assert_eq!(
        a.duplicates() + b.duplicates(),
        0,
        "no failure, no duplicate"
    );
    // Every publish names this gateway, and the journal sequence only grows: one
    // connection, journal order.
    let all = collector.snapshot();
    assert_eq!(all.len(), 12 * 300);
    let mut last = 0;
    for r in &all {
        assert_eq!(r.header("tidegate-gateway"), Some(&b"gw-e2e"[..]));
        let seq: u64 = std::str::from_utf8(r.header("tidegate-seq").expect("seq"))
            .expect("ASCII")
            .parse()
            .expect("decimal");
        assert!(seq > last, "seq went from {last} to {seq}");
        last = seq;
    }
    wait_for_backlog(&gw, "cloud", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_broker_restarting_mid_stream_loses_nothing() {
    let mut upstream = Mosquitto::start();
    let collector = Collector::start(&upstream, None).await;
    let url = format!("mqtt://127.0.0.1:{}", upstream.port());
    // MQTT 3.1.1 towards the upstream this time: no user properties, same guarantees.
    let gw = Gateway::start_fresh(|port, dir| {
        gateway_section(port, dir) + &mqtt_upstream("cloud", &url, "protocol = 4")
    });
    // ~4 s of readings: the restarts land mid-stream.
    let run = fleet(gw.mqtt_addr(), 10, 1000).rate(250.0).spawn();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        restart_gracefully(&mut upstream);
    }
    let report = run.await.expect("join").expect("fleet");
    assert!(report.all_acked());
    // 3.1.1 carries no properties: stand in the gateway's headers for the checker.
    collector
        .wait_until_complete_as(&report, &gw, |received| {
            for r in received {
                r.headers = vec![
                    ("tidegate-gateway".into(), b"gw-e2e".to_vec()),
                    ("tidegate-seq".into(), b"0".to_vec()),
                ];
            }
        })
        .await;
    assert!(
        scrape(&gw).await.count(
            "tidegate_upstream_send_failures_total",
            &[("upstream", "cloud")]
        ) > 0,
        "the forwarder saw the outage:\n{}",
        gw.log()
    );
    wait_for_backlog(&gw, "cloud", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_broker_is_journaled_through_a_subscription_and_reaches_kafka() {
    let local = Mosquitto::start();
    let tansu = Tansu::start();
    let url = format!("mqtt://127.0.0.1:{}", local.port());
    let gw = Gateway::start_fresh(|port, dir| {
        gateway_section(port, dir)
            + &subscription(&url, "")
            + &kafka_upstream("cluster", tansu.port(), "bridged")
    });
    wait_for_subscription(&gw).await;
    let v4 = fleet(local.addr(), 5, 300).run();
    let v5 = fleet(local.addr(), 5, 300)
        .first_device(6)
        .protocol(Protocol::V5)
        .run();
    let (v4, v5) = tokio::join!(v4, v5);
    for report in [v4, v5] {
        assert!(report.all_acked());
        let v = assert_arrived(&tansu.brokers(), "bridged", &report, ARRIVAL, &gw).await;
        assert_eq!(v.duplicates(), 0, "{v}");
    }
    wait_for_backlog(&gw, "cluster", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidegate_restarting_while_the_local_broker_keeps_receiving_loses_nothing() {
    let local = Mosquitto::start();
    let tansu = Tansu::start();
    let url = format!("mqtt://127.0.0.1:{}", local.port());
    // MQTT 3.1.1 this time (the other subscription tests use 5): manual acknowledgements
    // and the persistent session work the same.
    let mut gw = Gateway::start_fresh(|port, dir| {
        gateway_section(port, dir)
            + &subscription(&url, "protocol = 4")
            + &kafka_upstream("cluster", tansu.port(), "restarts")
    });
    wait_for_subscription(&gw).await;
    // ~4 s of readings: tidegate is down for part of them.
    let run = fleet(local.addr(), 10, 1000).rate(250.0).spawn();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // SIGKILL: the broker queues what arrives meanwhile in tidegate's session and
        // redelivers what was delivered but never acknowledged.
        gw.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        gw.restart();
    }
    let report = run.await.expect("join").expect("fleet");
    assert!(report.all_acked(), "the local broker took every reading");
    let v = assert_arrived(&tansu.brokers(), "restarts", &report, ARRIVAL, &gw).await;
    assert_eq!(v.out_of_order(), 0);
    assert!(
        gw.log().contains("session_present=true"),
        "the restarted gateway resumed its session:\n{}",
        gw.log()
    );
    eprintln!("after two SIGKILLs: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_under_reject_leaves_the_messages_with_the_broker_until_there_is_room() {
    let local = Mosquitto::start();
    let kafka_port = free_port();
    let url = format!("mqtt://127.0.0.1:{}", local.port());
    let gw = Gateway::start_fresh(|port, dir| {
        gateway_section_with(
            port,
            dir,
            "max_size = \"1MiB\"\non_full = \"reject\"\ncompression = \"none\"",
        ) + &subscription(&url, "")
            + &kafka_upstream("cluster", kafka_port, "full")
    });
    wait_for_subscription(&gw).await;
    // ~2.4 MB of readings into a 1 MiB journal while the cluster is down.
    let report = fleet(local.addr(), 10, 600).payload_size(400).run().await;
    assert!(report.all_acked(), "the local broker took every reading");
    let full = [("source", "mqtt_subscribe"), ("reason", "full")];
    common::metrics::scrape_until(&gw, "a refusal of the full journal", ARRIVAL, |m| {
        m.find("tidegate_readings_rejected_total", &full) > Some(0.0)
    })
    .await;
    let held = status_json(&gw)["records"].as_u64().expect("records");
    assert!(held < report.acked(), "the journal is full at {held}");
    // The cluster comes up: the journal drains, the subscription reconnects and the broker
    // redelivers everything that was refused, in order.
    let tansu = Tansu::start_on(kafka_port);
    let v = assert_arrived(&tansu.brokers(), "full", &report, ARRIVAL, &gw).await;
    assert_eq!(v.out_of_order(), 0);
    assert_eq!(status_json(&gw)["dropped_total"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_kafka_does_not_hold_back_the_mqtt_upstream() {
    let upstream = Mosquitto::start();
    let collector = Collector::start(&upstream, None).await;
    let url = format!("mqtt://127.0.0.1:{}", upstream.port());
    let kafka_port = free_port();
    let gw = Gateway::start_fresh(|port, dir| {
        gateway_section(port, dir)
            + &kafka_upstream("cluster", kafka_port, "later")
            + &mqtt_upstream("cloud", &url, "")
    });
    let report = fleet(gw.mqtt_addr(), 8, 250).run().await;
    assert!(report.all_acked());
    collector.wait_until_complete(&report, &gw).await;
    wait_for_backlog(&gw, "cloud", 0).await;
    let status = status_json(&gw);
    assert_eq!(backlog(&status, "cluster"), report.acked(), "{status}");
    let tansu = Tansu::start_on(kafka_port);
    assert_arrived(&tansu.brokers(), "later", &report, ARRIVAL, &gw).await;
    wait_for_backlog(&gw, "cluster", 0).await;
    assert_eq!(status_json(&gw)["records"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_tidegate_forwarded_itself_are_never_journaled_again() {
    // One broker is both the subscription's and the upstream's: named differently
    // (localhost / 127.0.0.1) so the config check cannot see it, and without a prefix, so
    // every forward matches the subscription. The MQTT 5 gateway property breaks the loop.
    let broker = Mosquitto::start_with(&{
        let mut s = MosquittoSetup::default();
        s.users = vec![("tidegate".into(), "s3cret".into())];
        s
    });
    let port = broker.port();
    let gw = Gateway::start_fresh(|mqtt_port, dir| {
        std::fs::write(dir.join("password"), "s3cret\n").expect("write password");
        format!(
            "{}[[upstream]]\nname = \"echo\"\nkind = \"mqtt\"\nurl = \"mqtt://localhost:{port}\"\nusername = \"tidegate\"\npassword_file = \"{}\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n{}",
            gateway_section(mqtt_port, dir),
            dir.join("password").display(),
            subscription(
                &format!("mqtt://127.0.0.1:{port}"),
                &format!(
                    "username = \"tidegate\"\npassword_file = \"{}\"",
                    dir.join("password").display()
                )
            ),
        )
    });
    wait_for_subscription(&gw).await;
    let report = fleet(broker.addr(), 4, 200)
        .credentials("tidegate", "s3cret")
        .run()
        .await;
    assert!(report.all_acked());
    // Each reading is journaled once (from the subscription), forwarded once, seen again
    // on the subscription and dropped there.
    wait_for_next_seq(&gw, 800 + 1).await;
    wait_for_backlog(&gw, "echo", 0).await;
    // Every forward is with the broker. A marker published now reaches the subscription
    // after all of them (one broker, one subscriber connection, in order): once it is
    // journaled, every echo before it has been seen, and none was journaled.
    publish_marker(port).await;
    wait_for_next_seq(&gw, 800 + 2).await;
    wait_for_backlog(&gw, "echo", 0).await;
    let status = status_json(&gw);
    assert_eq!(
        status["next_seq"].as_u64(),
        Some(800 + 2),
        "only the fleet's readings and the marker were journaled: {status}"
    );
}

/// Waits until the journal's next sequence is `want`, failing if it passes it.
async fn wait_for_next_seq(gw: &Gateway, want: u64) {
    eventually(gw, format_args!("next_seq {want}"), ARRIVAL, async || {
        let status = status_json(gw);
        let next = status["next_seq"].as_u64().expect("next_seq");
        assert!(
            next <= want,
            "journal went past {want}: {status}\n{}",
            gw.log()
        );
        if next == want {
            Ok(())
        } else {
            Err(format!("next_seq {next}"))
        }
    })
    .await
}

/// Publishes one QoS 1 message to `turbines/marker` (no tidegate property) and waits for
/// its PUBACK.
async fn publish_marker(port: u16) {
    let mut o = MqttOptions::new("e2e-marker", "127.0.0.1", port);
    o.set_credentials("tidegate", "s3cret");
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish("turbines/marker", QoS::AtLeastOnce, false, "marker")
        .await
        .expect("queue publish");
    wait_for_packet(&mut events, "the marker's PUBACK", |p| {
        matches!(p, Packet::PubAck(_))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_work_over_tls_with_a_client_certificate_and_a_password() {
    use firmware_sim::fleet::{TlsFiles, TlsOptions};
    use firmware_sim::testbed::MosquittoTls;
    let certs = TestPki::with_client("client");
    let mut setup = MosquittoSetup::default();
    setup.tls = Some(
        MosquittoTls::new(
            certs.path("ca.pem"),
            certs.path("server.pem"),
            certs.path("server.key"),
        )
        .require_client_cert(),
    );
    setup.users = vec![("tidegate".into(), "s3cret".into())];
    let broker = Mosquitto::start_with(&setup);
    let tansu = Tansu::start();
    let url = format!("mqtts://127.0.0.1:{}", broker.port());
    let tls_keys = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nusername = \"tidegate\"\n",
        certs.path("ca.pem").display(),
        certs.path("client.pem").display(),
        certs.path("client.key").display(),
    );
    // Downstream: the TLS broker → subscription → Kafka; upstream: back to the same TLS
    // broker under site-7/ (which the subscription's filter does not match).
    let gw = Gateway::start_fresh(|port, dir| {
        std::fs::write(dir.join("password"), "s3cret\n").expect("write password");
        let auth = format!(
            "{tls_keys}password_file = \"{}\"\n",
            dir.join("password").display()
        );
        gateway_section(port, dir)
            + &subscription(&url, &auth)
            + &kafka_upstream("cluster", tansu.port(), "secure")
            + &mqtt_upstream("cloud", &url, &auth)
    });
    wait_for_subscription(&gw).await;
    let tls = TlsOptions::load(
        TlsFiles::new(certs.path("ca.pem"))
            .with_client_cert(certs.path("client.pem"), certs.path("client.key")),
    )
    .expect("fleet TLS");
    let report = fleet(broker.addr(), 4, 200)
        .protocol(Protocol::V5)
        .credentials("tidegate", "s3cret")
        .with(|o| o.tls = Some(tls))
        .run()
        .await;
    assert!(report.all_acked(), "{report:#?}");
    assert_arrived(&tansu.brokers(), "secure", &report, ARRIVAL, &gw).await;
    // Every reading was PUBACKed by the TLS broker on the upstream connection.
    wait_for_backlog(&gw, "cloud", 0).await;
    assert_eq!(
        status_json(&gw)["next_seq"].as_u64(),
        Some(800 + 1),
        "the forwards under site-7/ were not taken in again"
    );
}

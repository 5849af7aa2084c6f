//! End to end: simulated turbines → the real `tidegate` binary → a real Kafka-protocol
//! broker (Tansu), all on loopback. Each test checks with firmware-sim's verifier that every
//! reading a device saw acknowledged is in Kafka, in order per turbine, with both headers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fleet::assert_arrived;
use common::metrics::scrape;
use common::status::{backlog, wait_for_backlog};
use common::status::{eventually, SETTLE};
use common::{free_port, status_json, Fleet, Gateway, Tansu};
use firmware_sim::{FleetReport, Protocol};

/// Time allowed for every acknowledged reading to become readable in Kafka.
const ARRIVAL: Duration = Duration::from_secs(90);

struct Upstream<'a> {
    name: &'a str,
    port: u16,
    topic: &'a str,
}

impl<'a> Upstream<'a> {
    /// The one upstream most tests have, named `cluster`.
    fn cluster(port: u16, topic: &'a str) -> Upstream<'a> {
        Upstream {
            name: "cluster",
            port,
            topic,
        }
    }
}

fn config(mqtt_port: u16, dir: &Path, journal_extra: &str, upstreams: &[Upstream<'_>]) -> String {
    let mut c = format!(
        "[gateway]\nid = \"gw-e2e\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n{journal_extra}\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\nmax_packet = \"64KiB\"\n",
        dir.join("journal").display()
    );
    for u in upstreams {
        c.push_str(&format!(
            "[[upstream]]\nname = \"{}\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{}\"]\ntopic = \"{}\"\npartitions = 3\nmax_batch = 500\nlinger = \"5ms\"\nrequest_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n",
            u.name, u.port, u.topic
        ));
    }
    c
}

/// The gateway under test, on a free MQTT port with its journal in a fresh temp dir.
/// The usual test fleet ([`Fleet`]) of `devices` turbines sending `count` readings each.
fn fleet(gw: &Gateway, devices: usize, count: u64) -> Fleet {
    Fleet::new(gw.mqtt_addr(), devices).count(count)
}

fn start_gateway(journal_extra: &str, upstreams: &[Upstream<'_>]) -> Gateway {
    Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, journal_extra, upstreams))
}

/// Every reading `report` saw acknowledged is in `topic`, in order ([`assert_arrived`]).
async fn assert_all_arrived(
    tansu: &Tansu,
    topic: &str,
    report: &FleetReport,
    gw: &Gateway,
) -> firmware_sim::VerifyReport {
    assert_arrived(&tansu.brokers(), topic, report, ARRIVAL, gw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cluster_up_every_acknowledged_reading_arrives_in_order_and_sigterm_exits_cleanly()
{
    let tansu = Tansu::start();
    let mut gw = start_gateway("", &[Upstream::cluster(tansu.port(), "up")]);
    // MQTT 3.1.1 and MQTT 5 turbines side by side.
    let v4 = fleet(&gw, 6, 300).run();
    let v5 = fleet(&gw, 6, 300)
        .first_device(7)
        .protocol(Protocol::V5)
        .run();
    let (v4, v5) = tokio::join!(v4, v5);
    assert!(
        v4.all_acked() && v5.all_acked(),
        "every reading acknowledged"
    );
    assert_eq!(v4.acked() + v5.acked(), 12 * 300);
    let a = assert_all_arrived(&tansu, "up", &v4, &gw).await;
    let b = assert_all_arrived(&tansu, "up", &v5, &gw).await;
    assert_eq!(
        a.duplicates() + b.duplicates(),
        0,
        "no crash, so no duplicate"
    );
    // Every record names this gateway, and within a partition the journal sequence only
    // grows: batches reach each partition in journal order.
    let records = firmware_sim::verify::read_topic(&tansu.brokers(), "up")
        .await
        .expect("read topic");
    assert_eq!(records.len() as u64, 12 * 300);
    let mut last_seq: std::collections::BTreeMap<i32, u64> = Default::default();
    for r in &records {
        assert_eq!(r.header("tidegate-gateway"), Some(&b"gw-e2e"[..]));
        let seq: u64 = std::str::from_utf8(r.header("tidegate-seq").expect("seq header"))
            .expect("ASCII")
            .parse()
            .expect("decimal");
        let prev = last_seq.insert(r.partition, seq).unwrap_or(0);
        assert!(
            seq > prev,
            "partition {} went from seq {prev} to {seq}",
            r.partition
        );
    }
    wait_for_backlog(&gw, "cluster", 0).await;
    let status = gw.terminate();
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status:?}\n{}",
        gw.log()
    );
    let after = status_json(&gw);
    assert_eq!(after["next_seq"].as_u64(), Some(12 * 300 + 1), "{after}");
    assert_eq!(
        after["records"].as_u64(),
        Some(0),
        "everything delivered was removed: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_taken_while_the_cluster_is_down_are_held_and_arrive_when_it_comes_up() {
    let kafka_port = free_port();
    let gw = start_gateway("", &[Upstream::cluster(kafka_port, "outage")]);
    let report = fleet(&gw, 10, 200).run().await;
    assert!(report.all_acked());
    // Nothing could be sent: the whole run is the backlog.
    assert_eq!(backlog(&status_json(&gw), "cluster"), report.acked());
    let tansu = Tansu::start_on(kafka_port);
    let v = assert_all_arrived(&tansu, "outage", &report, &gw).await;
    assert_eq!(v.received(), report.acked());
    wait_for_backlog(&gw, "cluster", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_reading() {
    let tansu = Tansu::start();
    let mut gw = start_gateway("", &[Upstream::cluster(tansu.port(), "crash")]);
    // ~4000 readings/s for ~7.5 s: the kills land mid-stream.
    let run = fleet(&gw, 20, 1500)
        .rate(200.0)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .spawn();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        gw.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.restart();
    }
    let report = run.await.unwrap().expect("fleet");
    assert!(
        report.all_acked(),
        "devices resend what was not acknowledged: {} left",
        report.unacked()
    );
    assert!(
        report.devices.values().map(|d| d.connects).sum::<u64>() > 20,
        "the kills forced reconnects"
    );
    let v = assert_all_arrived(&tansu, "crash", &report, &gw).await;
    assert_eq!(v.out_of_order(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_at_a_tiny_max_size_counts_every_drop_and_reports_what_the_upstream_lost() {
    let kafka_port = free_port();
    let gw = start_gateway(
        "max_size = \"1MiB\"\non_full = \"drop-oldest\"\ncompression = \"none\"",
        &[Upstream::cluster(kafka_port, "dropped")],
    );
    // ~2.4 MB into a 1 MiB journal with the cluster down.
    let report = fleet(&gw, 10, 600).payload_size(400).run().await;
    assert!(report.all_acked(), "drop-oldest accepts every reading");
    let status = status_json(&gw);
    let dropped = status["dropped_total"].as_u64().expect("dropped_total");
    let held = status["records"].as_u64().expect("records");
    assert!(dropped > 0, "{status}");
    assert_eq!(
        held + dropped,
        report.acked(),
        "every reading is held or counted as dropped: {status}"
    );
    assert_eq!(
        scrape(&gw)
            .await
            .count("tidegate_journal_dropped_full_total", &[]),
        dropped,
        "the metric counts what the status counts"
    );

    let tansu = Tansu::start_on(kafka_port);
    wait_for_backlog(&gw, "cluster", 0).await;
    let v = firmware_sim::verify::read_topic(&tansu.brokers(), "dropped")
        .await
        .expect("read topic");
    let v = firmware_sim::check(&v, &report);
    // What this upstream lost is what its forwarder reported as skipped; a batch it had
    // already read before the drop is still delivered, so that can be less than dropped.
    let lost = scrape(&gw)
        .await
        .count("tidegate_upstream_lost_total", &[("upstream", "cluster")]);
    assert!(lost > 0, "the forwarder counts its loss:\n{}", gw.log());
    assert_eq!(
        v.missing(),
        lost,
        "exactly the reported readings are missing: {v}"
    );
    assert!(lost <= dropped);
    assert_eq!(v.out_of_order(), 0);
    // Drop-oldest keeps the newest: each device has one gap and everything after it.
    for (id, d) in &v.devices {
        assert!(
            d.missing.len() <= 1,
            "{id}: one gap at most: {:?}",
            d.missing
        );
        if let Some(&(_, last)) = d.missing.first() {
            assert!(
                last < 600,
                "{id}: the newest readings are kept: {:?}",
                d.missing
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_at_a_tiny_max_size_refuses_publishes_and_devices_deliver_them_later() {
    reject_then_deliver(Protocol::V4, "rejected").await;
}

/// MQTT 5 devices get PUBACK 0x97 for the refused reading and re-send it before anything
/// later: order holds through the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_mqtt_5_refuses_with_0x97_and_devices_deliver_in_order_later() {
    reject_then_deliver(Protocol::V5, "rejected5").await;
}

async fn reject_then_deliver(protocol: Protocol, topic: &str) {
    let kafka_port = free_port();
    let gw = start_gateway(
        "max_size = \"1MiB\"\non_full = \"reject\"\ncompression = \"none\"",
        &[Upstream::cluster(kafka_port, topic)],
    );
    let run = fleet(&gw, 10, 600)
        .protocol(protocol)
        .payload_size(400)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .drain_timeout(Duration::from_secs(120))
        .spawn();
    // While the cluster is down the journal fills and stays full: once it refuses, what
    // it holds does not grow while the devices' retries are refused again and again.
    let rejected = async || {
        scrape(&gw)
            .await
            .count("tidegate_journal_rejected_full_total", &[])
    };
    let first = eventually(
        &gw,
        "the full journal to refuse readings",
        SETTLE,
        async || match rejected().await {
            0 => Err("no refusal".into()),
            n => Ok(n),
        },
    )
    .await;
    let held_while_full = status_json(&gw)["records"].as_u64();
    eventually(&gw, "more refusals", SETTLE, async || {
        match rejected().await {
            n if n >= first + 50 => Ok(()),
            n => Err(format!("{n} refusals")),
        }
    })
    .await;
    assert_eq!(
        status_json(&gw)["records"].as_u64(),
        held_while_full,
        "nothing more is taken in while full"
    );
    // The cluster comes back: the journal drains, and the devices' kept readings get in.
    let tansu = Tansu::start_on(kafka_port);
    let report = run.await.unwrap().expect("fleet");
    assert!(
        report.all_acked(),
        "every reading was eventually accepted: {} left",
        report.unacked()
    );
    if protocol == Protocol::V5 {
        assert!(
            report.devices.values().any(|d| d.rejected > 0),
            "{report:#?}"
        );
    }
    let v = assert_all_arrived(&tansu, topic, &report, &gw).await;
    assert_eq!(
        v.received() - v.duplicates(),
        10 * 600,
        "no reading lost at all"
    );
    assert_eq!(status_json(&gw)["dropped_total"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_does_not_hold_back_a_live_one_and_drains_when_it_returns() {
    let live = Tansu::start();
    let dead_port = free_port();
    let gw = start_gateway(
        "",
        &[
            Upstream {
                name: "live",
                port: live.port(),
                topic: "both",
            },
            Upstream {
                name: "dead",
                port: dead_port,
                topic: "both",
            },
        ],
    );
    let report = fleet(&gw, 8, 250).run().await;
    assert!(report.all_acked());
    assert_all_arrived(&live, "both", &report, &gw).await;
    wait_for_backlog(&gw, "live", 0).await;
    let status = status_json(&gw);
    assert_eq!(
        backlog(&status, "dead"),
        report.acked(),
        "the dead upstream's backlog is kept: {status}"
    );
    assert_eq!(
        status["records"].as_u64(),
        Some(report.acked()),
        "held until every upstream has them"
    );
    let revived = Tansu::start_on(dead_port);
    assert_all_arrived(&revived, "both", &report, &gw).await;
    wait_for_backlog(&gw, "dead", 0).await;
    assert_eq!(
        status_json(&gw)["records"].as_u64(),
        Some(0),
        "removed once both have them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebooting_and_flapping_devices_in_both_payload_forms_lose_nothing_and_keep_order() {
    use firmware_sim::telemetry::PayloadFormat;
    use firmware_sim::FaultPlan;
    let tansu = Tansu::start();
    let gw = start_gateway("", &[Upstream::cluster(tansu.port(), "flaky")]);
    // Every device reboots twice (before readings 151 and 301) and drops its connection
    // before every 40th reading; JSON over MQTT 3.1.1, the binary form over MQTT 5.
    let plan = FaultPlan {
        reboot_every: Some(150),
        flap_every: Some(40),
        ..FaultPlan::default()
    };
    let json = fleet(&gw, 4, 400)
        .rate(400.0)
        .faults(plan)
        .reconnect(Duration::from_millis(20), Duration::from_secs(2));
    let binary = json
        .clone()
        .first_device(5)
        .protocol(Protocol::V5)
        .payload_format(PayloadFormat::Binary);
    let (json, binary) = tokio::join!(json.run(), binary.run());
    for r in [json, binary] {
        assert!(r.all_acked() && r.anomalies() == 0, "{r:#?}");
        assert_eq!(r.acked(), 4 * 400);
        for d in r.devices.values() {
            assert_eq!((d.injected.reboot, d.injected.flap), (2, 9), "{d:#?}");
            assert_eq!(d.earlier_boots.len(), 2);
        }
        let v = assert_all_arrived(&tansu, "flaky", &r, &gw).await;
        // Three boots per device, each checked on its own.
        assert_eq!(v.devices.len(), 4 * 3, "{v}");
        assert_eq!(v.devices.keys().filter(|k| k.contains('@')).count(), 4 * 2);
    }
}

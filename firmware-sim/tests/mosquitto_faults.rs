//! Fault injection over MQTT against a real broker (the test bed's Mosquitto): the fleet
//! reports exactly the duplicates and garbage its seed decides, the readings' PUBACK
//! accounting stays exact, and a subscriber sees every good reading, each duplicate once
//! more, and one unparseable payload per garbage fault. Reboots and flapping connections
//! keep the accounting exact per boot, and every acknowledged reading of every boot reaches
//! a subscriber.
//!
//! Needs the `mosquitto` binary: `scripts/test.sh` installs it (or set
//! `TIDEGATE_MOSQUITTO_BIN`).

use std::collections::BTreeMap;
use std::time::Duration;

use firmware_sim::faults::FaultPlan;
use firmware_sim::fleet::{FleetOptions, Protocol};
use firmware_sim::telemetry::PayloadFormat;
use firmware_sim::testbed::Mosquitto;
use firmware_sim::{device_id, run_fleet, CancellationToken, FaultCounts, ReadingId};

/// What a subscriber to every turbine topic received.
#[derive(Debug, Default)]
struct Seen {
    /// Copies of each (device, boot, counter).
    copies: BTreeMap<(String, u64, u64), u64>,
    /// Payloads that are not readings.
    garbage: u64,
}

impl Seen {
    fn messages(&self) -> u64 {
        self.copies.values().sum::<u64>() + self.garbage
    }
}

/// When the subscriber stops: at `want` messages in all, or at `want` distinct readings
/// (when re-sends make the number of copies unknowable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    Messages,
    Distinct,
}

async fn subscriber(
    broker: &str,
    ready: tokio::sync::oneshot::Sender<()>,
    mut want: tokio::sync::watch::Receiver<u64>,
    until: Until,
    stop: CancellationToken,
) -> Seen {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (host, port) = broker.rsplit_once(':').expect("host:port");
    let mut o = MqttOptions::new("fault-verifier", host, port.parse().expect("port"));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    client
        .subscribe("turbines/+/telemetry", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut ready = Some(ready);
    let mut seen = Seen::default();
    loop {
        let w = *want.borrow();
        let got = match until {
            Until::Messages => seen.messages(),
            Until::Distinct => seen.copies.len() as u64,
        };
        if w > 0 && got >= w {
            break;
        }
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            changed = want.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            ev = eventloop.poll() => ev,
        };
        match ev.expect("verifier connection") {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Event::Incoming(Packet::Publish(p)) => match ReadingId::parse(&p.payload) {
                Some(id) => *seen.copies.entry((id.device, id.boot, id.seq)).or_default() += 1,
                None => seen.garbage += 1,
            },
            _ => {}
        }
    }
    seen
}

async fn faults_are_reported_exactly(protocol: Protocol) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (devices, count, seed) = (4usize, 300u64, 11u64);
    let stop_sub = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (want_tx, want_rx) = tokio::sync::watch::channel(0u64);
    let sub = tokio::spawn({
        let b = broker.addr();
        let s = stop_sub.clone();
        async move { subscriber(&b, ready_tx, want_rx, Until::Messages, s).await }
    });
    ready_rx.await.expect("subscribed");

    let plan = FaultPlan {
        duplicate_rate: 0.1,
        malformed_json_rate: 0.05,
        oversized_rate: 0.02,
        oversized_bytes: 100_000,
        clock_skew_ms: 3_600_000,
        ..FaultPlan::default()
    };
    let mut o = FleetOptions::default();
    o.broker = broker.addr();
    o.protocol = protocol;
    o.workload.devices = devices;
    o.workload.count = Some(count);
    // Paced, so a QoS 0 extra never outruns the subscriber's queue at the broker.
    o.workload.rate = Some(500.0);
    o.window = 16;
    o.workload.seed = seed;
    o.drain_timeout = Duration::from_secs(20);
    o.workload.faults = plan.clone();
    let r = run_fleet(o, CancellationToken::new()).await.expect("fleet");

    // The readings' accounting is untouched by the extra publishes.
    assert_eq!(r.anomalies(), 0, "{r:#?}");
    assert!(r.all_acked(), "{r:#?}");
    let mut want = FaultCounts::default();
    for n in 1..=devices {
        let d = &r.devices[&device_id(n)];
        assert_eq!(d.published, count);
        // Exactly the faults the seed decides, all handed to the client.
        assert_eq!(
            d.injected,
            plan.expected(seed, n, count),
            "{}",
            device_id(n)
        );
        want.merge(&d.injected);
    }
    assert_eq!(r.injected(), want);
    assert!(want.duplicate > 0 && want.garbage() > 0, "{want}");

    // The broker passed on every good reading, each duplicate once more, and the garbage.
    let total = devices as u64 * count + want.duplicate + want.garbage();
    want_tx.send(total).expect("subscriber alive");
    let seen = tokio::time::timeout(Duration::from_secs(20), sub)
        .await
        .expect("the subscriber receives everything")
        .expect("subscriber task");
    stop_sub.cancel();
    assert_eq!(seen.garbage, want.garbage());
    assert_eq!(seen.copies.len() as u64, devices as u64 * count);
    let twice = seen.copies.values().filter(|&&c| c == 2).count() as u64;
    assert_eq!(twice, want.duplicate);
    assert!(seen.copies.values().all(|&c| c == 1 || c == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v4_fleet_reports_the_faults_it_injected() {
    faults_are_reported_exactly(Protocol::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v5_fleet_reports_the_faults_it_injected() {
    faults_are_reported_exactly(Protocol::V5).await;
}

/// Reboots (every 70 readings) and flapping connections (before every 25th reading), with
/// duplicates and malformed payloads, in the given payload format.
async fn reboots_and_flaps_keep_every_boot_exact(protocol: Protocol, format: PayloadFormat) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (devices, count, seed, boot) = (3usize, 200u64, 5u64, 1_000u64);
    let stop_sub = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (want_tx, want_rx) = tokio::sync::watch::channel(0u64);
    let sub = tokio::spawn({
        let b = broker.addr();
        let s = stop_sub.clone();
        async move { subscriber(&b, ready_tx, want_rx, Until::Distinct, s).await }
    });
    ready_rx.await.expect("subscribed");

    let plan = FaultPlan {
        reboot_every: Some(70),
        flap_every: Some(25),
        duplicate_rate: 0.05,
        malformed_json_rate: 0.03,
        ..FaultPlan::default()
    };
    let mut o = FleetOptions::default();
    o.broker = broker.addr();
    o.protocol = protocol;
    o.workload.payload_format = format;
    o.workload.devices = devices;
    o.workload.count = Some(count);
    o.workload.rate = Some(400.0);
    o.window = 16;
    o.workload.seed = seed;
    o.workload.boot = Some(boot);
    o.reconnect_min = Duration::from_millis(20);
    o.drain_timeout = Duration::from_secs(20);
    o.workload.faults = plan.clone();
    let r = run_fleet(o, CancellationToken::new()).await.expect("fleet");

    assert_eq!(r.anomalies(), 0, "{r:#?}");
    assert!(r.all_acked(), "{r:#?}");
    assert_eq!(r.published(), devices as u64 * count);
    let mut garbage = 0;
    for n in 1..=devices {
        let d = &r.devices[&device_id(n)];
        let expected = plan.expected(seed, n, count);
        assert_eq!(d.injected, expected, "{}", device_id(n));
        // Reboots before readings 71 and 141; a flap before readings 26, 51, …, 176.
        assert_eq!((expected.reboot, expected.flap), (2, 7));
        let boots: Vec<(u64, u64)> = d.boots().iter().map(|b| (b.boot, b.published)).collect();
        assert_eq!(boots, vec![(1_000, 70), (1_001, 70), (1_002, 60)], "{d:#?}");
        // One connection per boot and one more per flap (and possibly a retry or two).
        assert!(d.connects >= 3 + 7, "{d:#?}");
        garbage += d.injected.garbage();
    }

    // Every reading of every boot reaches the subscriber (flaps may add copies).
    want_tx
        .send(devices as u64 * count)
        .expect("subscriber alive");
    let mut sub = sub;
    let seen = match tokio::time::timeout(Duration::from_secs(20), &mut sub).await {
        Ok(seen) => seen.expect("subscriber task"),
        Err(_) => {
            // Stop waiting and say what is missing.
            stop_sub.cancel();
            sub.await.expect("subscriber task")
        }
    };
    stop_sub.cancel();
    for (device, d) in &r.devices {
        for b in d.boots() {
            for seq in 1..=b.published {
                assert!(
                    seen.copies.contains_key(&(device.clone(), b.boot, seq)),
                    "{device} boot {} counter {seq} never arrived",
                    b.boot
                );
            }
        }
    }
    assert_eq!(seen.copies.len() as u64, devices as u64 * count);
    // Garbage goes out at QoS 0: what a flap catches unsent is lost, as QoS 0 is.
    assert!(
        seen.garbage > 0 && seen.garbage <= garbage,
        "{} of {garbage}",
        seen.garbage
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v4_reboots_and_flaps_keep_every_boot_exact_json() {
    reboots_and_flaps_keep_every_boot_exact(Protocol::V4, PayloadFormat::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v5_reboots_and_flaps_keep_every_boot_exact_binary() {
    reboots_and_flaps_keep_every_boot_exact(Protocol::V5, PayloadFormat::Binary).await;
}

#[tokio::test]
async fn serial_only_faults_are_refused_by_the_fleet() {
    for plan in [
        FaultPlan {
            noise_rate: 0.1,
            ..FaultPlan::default()
        },
        FaultPlan {
            bad_crc_rate: 0.1,
            ..FaultPlan::default()
        },
        FaultPlan {
            truncated_rate: 0.1,
            ..FaultPlan::default()
        },
    ] {
        let mut o = FleetOptions::default();
        o.workload.faults = plan;
        let err = run_fleet(o, CancellationToken::new()).await.unwrap_err();
        assert!(err.to_string().contains("invalid fleet options"), "{err}");
    }
}

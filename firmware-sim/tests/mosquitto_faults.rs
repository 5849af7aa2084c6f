//! Fault injection over MQTT against a real broker (the test bed's Mosquitto): the fleet
//! reports exactly the duplicates and garbage its seed decides, the readings' PUBACK
//! accounting stays exact, and a subscriber sees every good reading, each duplicate once
//! more, and one unparseable payload per garbage fault. Reboots and flapping connections
//! keep the accounting exact per boot, and every acknowledged reading of every boot reaches
//! a subscriber.
//!
//! Needs the `mosquitto` binary: `scripts/test.sh` installs it (or set
//! `TIDEGATE_MOSQUITTO_BIN`).

#[macro_use]
mod common;

use std::time::Duration;

use common::{Subscriber, Until};

use firmware_sim::faults::FaultPlan;
use firmware_sim::fleet::{FleetOptions, Protocol};
use firmware_sim::telemetry::PayloadFormat;
use firmware_sim::testbed::Mosquitto;
use firmware_sim::{device_id, run_fleet, CancellationToken, FaultCounts};

async fn faults_are_reported_exactly(protocol: Protocol) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (devices, count, seed) = (4usize, 300u64, 11u64);
    let sub = Subscriber::start(&broker.addr(), "fault-verifier", Until::Messages).await;

    let plan = FaultPlan {
        duplicate_rate: 0.1,
        malformed_json_rate: 0.05,
        oversized_rate: 0.02,
        oversized_bytes: 100_000,
        clock_skew_ms: 3_600_000,
        ..FaultPlan::default()
    };
    let mut o = common::options(broker.addr(), protocol);
    o.workload.devices = devices;
    o.workload.count = Some(count);
    // Paced, so a QoS 0 extra never outruns the subscriber's queue at the broker.
    o.workload.rate = Some(500.0);
    o.window = 16;
    o.workload.seed = seed;
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
    let seen = sub.wait_for(total, Duration::from_secs(20)).await;
    assert_eq!(seen.messages(), total, "the subscriber receives everything");
    assert_eq!(seen.garbage, want.garbage());
    assert_eq!(seen.copies.len() as u64, devices as u64 * count);
    let twice = seen.copies.values().filter(|&&c| c == 2).count() as u64;
    assert_eq!(twice, want.duplicate);
    assert!(seen.copies.values().all(|&c| c == 1 || c == 2));
}

test_both_versions!(
    faults_are_reported_exactly,
    mqtt_v4_fleet_reports_the_faults_it_injected,
    mqtt_v5_fleet_reports_the_faults_it_injected
);

/// Reboots (every 70 readings) and flapping connections (before every 25th reading), with
/// duplicates and malformed payloads, in the given payload format.
async fn reboots_and_flaps_keep_every_boot_exact(protocol: Protocol, format: PayloadFormat) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (devices, count, seed, boot) = (3usize, 200u64, 5u64, 1_000u64);
    let sub = Subscriber::start(&broker.addr(), "fault-verifier", Until::Distinct).await;

    let plan = FaultPlan {
        reboot_every: Some(70),
        flap_every: Some(25),
        duplicate_rate: 0.05,
        malformed_json_rate: 0.03,
        ..FaultPlan::default()
    };
    let mut o = common::options(broker.addr(), protocol);
    o.workload.payload_format = format;
    o.workload.devices = devices;
    o.workload.count = Some(count);
    o.workload.rate = Some(400.0);
    o.window = 16;
    o.workload.seed = seed;
    o.workload.boot = Some(boot);
    o.reconnect_min = Duration::from_millis(20);
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
    let seen = sub
        .wait_for(devices as u64 * count, Duration::from_secs(20))
        .await;
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

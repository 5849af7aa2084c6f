//! The fleet against a real MQTT broker (the test bed's Mosquitto, on a free loopback port):
//! PUBACK accounting is exact, and a fleet survives the broker being SIGKILLed and restarted
//! mid-run with every reading acknowledged in the end.
//!
//! Needs the `mosquitto` binary: `scripts/test.sh` installs it (or set
//! `TIDEGATE_MOSQUITTO_BIN`).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Subscriber, Until};
use firmware_sim::fleet::{FleetOptions, FleetReport, Protocol, Qos};
use firmware_sim::testbed::Mosquitto;
use firmware_sim::{run_fleet, CancellationToken};

/// A Mosquitto, and the options of a fleet of `protocol` against it that reconnects
/// within 500 ms.
fn broker_and_fleet(protocol: Protocol) -> (Mosquitto, FleetOptions) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let mut o = common::options(broker.addr(), protocol);
    o.reconnect_max = Duration::from_millis(500);
    (broker, o)
}

fn assert_exactly_acked(r: &FleetReport, devices: usize, per_device: Option<u64>) {
    assert_eq!(r.devices.len(), devices);
    assert_eq!(r.anomalies(), 0, "accounting anomalies: {r:#?}");
    for (id, d) in &r.devices {
        if let Some(m) = per_device {
            assert_eq!(d.published, m, "{id}");
        }
        assert!(d.published > 0, "{id} published nothing");
        assert!(d.unacked.is_empty(), "{id}: unacked {:?}", d.unacked);
        assert_eq!(
            d.acked.ranges().collect::<Vec<_>>(),
            vec![(1, d.published)],
            "{id}: acked must be exactly 1..={}",
            d.published
        );
    }
    assert!(r.all_acked());
    assert_eq!(r.puback_latency.count, r.acked());
}

async fn accounting_is_exact(protocol: Protocol) {
    exact_accounting(protocol, false).await;
}

/// Fixed payloads (`load --fixed-payload`: one payload per boot, its counter and ts
/// patched per reading) carry each reading's own identity: the accounting and what the
/// broker passes on are as exact as with the model's payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_payloads_are_accounted_exactly() {
    exact_accounting(Protocol::V4, true).await;
}

async fn exact_accounting(protocol: Protocol, fixed_payload: bool) {
    let (broker, mut o) = broker_and_fleet(protocol);
    o.fixed_payload = fixed_payload;
    let (devices, per_device) = (12, 400);
    let sub = Subscriber::start(&broker.addr(), "verifier", Until::Messages).await;

    o.workload.devices = devices;
    o.workload.count = Some(per_device);
    o.workload.rate = None;
    o.window = 16;
    o.workload.payload_size = Some(100);
    let r = run_fleet(o, CancellationToken::new()).await.expect("fleet");
    assert_exactly_acked(&r, devices, Some(per_device));
    assert_eq!(r.retransmits(), 0);
    assert_eq!(r.connection_errors(), 0);

    // What the broker passed on is exactly what the fleet says was acknowledged: every
    // reading once (no re-sends), nothing else.
    let seen = sub.wait_for(r.acked(), Duration::from_secs(10)).await;
    assert_eq!(seen.garbage, 0);
    assert_eq!(seen.messages(), r.acked());
    let seen = seen.counters();
    for (id, d) in &r.devices {
        let got = seen.get(id).cloned().unwrap_or_default();
        assert_eq!(
            got,
            d.acked.iter().collect::<BTreeSet<_>>(),
            "{id}: delivered vs acknowledged"
        );
    }
}

test_both_versions!(
    accounting_is_exact,
    puback_accounting_is_exact_for_every_device_mqtt_3_1_1,
    puback_accounting_is_exact_for_every_device_mqtt_5
);

async fn survives_broker_kills(protocol: Protocol) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (mut broker, mut o) = broker_and_fleet(protocol);
    o.workload.devices = 10;
    o.workload.rate = Some(300.0);
    o.window = 50;
    o.workload.duration = Some(Duration::from_secs(4));
    let stop = CancellationToken::new();
    let fleet = tokio::spawn(run_fleet(o, stop));

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        broker.kill();
        // Readings pile up in the devices' windows while the broker is down.
        tokio::time::sleep(Duration::from_millis(400)).await;
        broker.restart().expect("mosquitto restarts");
    }
    let r = fleet.await.expect("fleet task").expect("fleet");
    assert_exactly_acked(&r, 10, None);
    for (id, d) in &r.devices {
        assert!(d.connects >= 3, "{id} connected {} times", d.connects);
        assert!(d.connection_errors >= 2, "{id}");
        // ~1,200 readings at 300/s over 4 s, minus what the outages held back.
        assert!(d.published > 500, "{id} published {}", d.published);
    }
    assert!(
        r.retransmits() > 0,
        "a kill mid-stream leaves readings in flight"
    );
    drop(broker);
}

test_both_versions!(
    survives_broker_kills,
    fleet_reconnects_after_broker_sigkill_and_every_reading_is_acked_mqtt_3_1_1,
    fleet_reconnects_after_broker_sigkill_and_every_reading_is_acked_mqtt_5
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_fleet_publishes_its_count_and_expects_no_acks() {
    let (_broker, mut o) = broker_and_fleet(Protocol::V4);
    o.workload.devices = 3;
    o.workload.count = Some(50);
    o.workload.rate = None;
    o.qos = Qos::AtMostOnce;
    let r = run_fleet(o, CancellationToken::new()).await.expect("fleet");
    for d in r.devices.values() {
        assert_eq!(d.published, 50);
        assert_eq!(d.sent, 50);
        assert!(d.acked.is_empty() && d.unacked.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_token_ends_an_open_ended_run_and_drains() {
    let (_broker, mut o) = broker_and_fleet(Protocol::V4);
    o.workload.devices = 4;
    o.workload.rate = Some(100.0);
    let stop = CancellationToken::new();
    let fleet = tokio::spawn(run_fleet(o, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.cancel();
    let r = tokio::time::timeout(Duration::from_secs(10), fleet)
        .await
        .expect("fleet stops promptly")
        .expect("fleet task")
        .expect("fleet");
    assert_exactly_acked(&r, 4, None);
}

//! Network faults between tidegate and its Kafka cluster: a fault proxy of the test's own
//! ([`support::proxy`]) sits between the daemon and a real Tansu broker, and goes through
//! every fault while a fleet publishes: the cluster down (connections refused and cut),
//! high latency, packet loss (connections cut or stalled at random), and a broker that
//! hangs without closing its connections. Afterwards every acknowledged reading must be in
//! Kafka, in order per device, and the backlog drained; duplicates are counted and shown.
//!
//! Tansu advertises the proxy's port, so clients that follow the cluster's metadata (the
//! daemon's rskafka client and the verifier) reconnect through the proxy too.

mod common;
mod support;

use std::time::Duration;

use common::brokers::{retry_on_port_clash, tansu_behind};
use common::status::{backlog, eventually};
use common::{free_port, status_json, Fleet, Gateway};
use firmware_sim::wait_until_complete;
use support::proxy::{FaultProxy, Mode};

const TOPIC: &str = "faults";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_refused_slow_lossy_and_hung_connections_nothing_is_lost_or_reordered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_tansu, tansu_port, proxy_port) = retry_on_port_clash(|| {
        let (tansu_port, proxy_port) = (free_port(), free_port());
        tansu_behind(tansu_port, proxy_port, dir.path()).map(|t| (t, tansu_port, proxy_port))
    });
    let proxy = FaultProxy::start_on(
        proxy_port,
        format!("127.0.0.1:{tansu_port}").parse().unwrap(),
    )
    .await;
    let gw = Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-net\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
             [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{proxy_port}\"]\ntopic = \"{TOPIC}\"\npartitions = 3\n\
             max_batch = 200\nlinger = \"5ms\"\nrequest_timeout = \"3s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n",
            dir.join("journal").display()
        )
    });

    let fleet = Fleet::new(gw.mqtt_addr(), 6)
        .window(10)
        .rate(40.0)
        .count(1400)
        .spawn();

    // Each fault for a few seconds, with normal traffic in between, while the fleet runs.
    let plan = [
        (Mode::Pass, 3),
        (Mode::Down, 4),
        (Mode::Pass, 3),
        (Mode::Latency(Duration::from_millis(400)), 4),
        (Mode::Pass, 2),
        (Mode::Lossy(0.1), 6),
        (Mode::Pass, 2),
        (Mode::Hang, 8),
        (Mode::Pass, 0),
    ];
    for (mode, secs) in plan {
        eprintln!("proxy: {mode:?} for {secs}s");
        proxy.set(mode);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let report = fleet.await.unwrap().expect("fleet");
    assert!(
        report.all_acked(),
        "ingest does not depend on the cluster: {} unacknowledged",
        report.unacked()
    );

    // The backlog drains once the network is healthy again.
    eventually(
        &gw,
        "the backlog to drain",
        Duration::from_secs(120),
        async || match backlog(&status_json(&gw), "cluster") {
            0 => Ok(()),
            left => Err(format!("{left} left")),
        },
    )
    .await;
    let v = wait_until_complete(
        &[format!("127.0.0.1:{proxy_port}")],
        TOPIC,
        &report,
        Duration::from_secs(120),
    )
    .await
    .expect("read Kafka through the proxy");
    assert!(
        v.is_complete() && v.is_ok(),
        "nothing lost, order kept: {v}\nproblems: {:?}\nlog:\n{}",
        v.problems(),
        gw.log()
    );
    let stats = &proxy.stats;
    eprintln!(
        "FAULT network: acknowledged {} delivered {} lost {} duplicated {} out of order {} (proxy: {} connections, {} cut, {} stalled)",
        report.acked(),
        v.received() - v.duplicates(),
        v.missing(),
        v.duplicates(),
        v.out_of_order(),
        stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        stats.cut.load(std::sync::atomic::Ordering::Relaxed),
        stats.stalled.load(std::sync::atomic::Ordering::Relaxed),
    );
}

//! `soak::run_sampled` against the test bed's Mosquitto: the rows of the samples file split
//! the run's acknowledged readings between them (each reading's latency counted in exactly
//! one interval), and a flap rate makes devices reconnect while nothing is lost.
//!
//! Needs the `mosquitto` binary: `scripts/test.sh` installs it (or set
//! `TIDEGATE_MOSQUITTO_BIN`).

#[allow(dead_code, unused_macros)]
mod common;

use std::time::Duration;

use firmware_sim::fleet::Protocol;
use firmware_sim::soak::{run_sampled, CSV_HEADER};
use firmware_sim::testbed::Mosquitto;
use firmware_sim::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_rows_split_the_acknowledged_readings_between_intervals() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let mut o = common::options(broker.addr(), Protocol::V4);
    o.reconnect_max = Duration::from_millis(200);
    o.workload.devices = 4;
    o.workload.rate = Some(100.0);
    o.workload.duration = Some(Duration::from_secs(2));
    o.workload.faults.flap_rate = 0.02;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("samples.csv");

    let soak = run_sampled(
        o,
        &path,
        Duration::from_millis(250),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("fleet runs");
    assert!(soak.kafka.is_none());
    let report = soak.fleet;

    assert!(report.all_acked(), "unacked: {}", report.unacked());
    let flaps = report.injected().flap;
    assert!(flaps > 0, "a flap rate of 2 % over ~800 readings flaps");
    let text = std::fs::read_to_string(&path).expect("samples written");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| {
            l.split(',')
                .map(|f| f.parse().expect("numeric field"))
                .collect()
        })
        .collect();
    assert!(rows.len() >= 4, "a row per 250 ms of a 2 s run: {text}");
    let (mut acked_before, mut in_intervals) = (0.0, 0.0);
    for r in &rows {
        let [_, _, published, acked, _, _, in_interval, p50, p99, max, kafka] = r[..] else {
            panic!("eleven fields: {r:?}");
        };
        // A reading acknowledged between a row's counters and its histogram is in the
        // histogram of that row and the counters of the next: only the sum is exact.
        assert!(acked >= acked_before && acked <= published, "{r:?}");
        assert!(p50 <= p99 && p99 <= max, "{r:?}");
        assert_eq!(kafka, 0.0, "no topic followed: {r:?}");
        acked_before = acked;
        in_intervals += in_interval;
    }
    assert_eq!(in_intervals as u64, report.acked());
    // Flaps show as connection losses (a flap before a reconnect completes drops nothing).
    assert!(
        rows.last().map(|r| r[5]).unwrap_or_default() > 0.0,
        "{text}"
    );
}

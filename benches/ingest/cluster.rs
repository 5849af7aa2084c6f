//! Phases 1 to 3, with a Kafka-protocol cluster (Tansu) as upstream: saturation, latency at
//! a steady rate, and the drain of a backlog journaled while the cluster was down.

use std::time::{Duration, Instant};

use firmware_sim::testbed::{free_port, Tansu};
use firmware_sim::{run_load, CancellationToken};

use crate::support::{backlog, load, p50_p99, rss_mib, run_measured, start_tidegate, tidegate_bin};

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

/// Phase 3: a backlog built while the cluster is down, then drained.
pub(crate) fn backlog_drain(rt: &tokio::runtime::Runtime, secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = free_port().expect("a free port");
    let mqtt = free_port().expect("a free port");
    let _gw = start_tidegate(dir.path(), mqtt, Some((kafka, "drain")), "");
    let opts = load(mqtt, Duration::from_secs(secs / 2 + 1), None);
    let r = rt
        .block_on(run_load(opts, CancellationToken::new()))
        .expect("load run");
    let held = backlog(&tidegate_bin(), dir.path());
    let started = Instant::now();
    let _tansu = Tansu::start_on(kafka).expect("Tansu starts");
    while backlog(&tidegate_bin(), dir.path()) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "backlog did not drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed().as_secs_f64();
    println!("\n== 3. backlog drain: {held} readings journaled while the cluster was down ({:.0}/s ingest)", r.acked_per_sec);
    println!("forwarded             {:>10.0} readings/s (broker start to empty backlog, {took:.2} s, includes connecting)", held as f64 / took);
}

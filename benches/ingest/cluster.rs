//! Phases 1 to 3, with a Kafka-protocol cluster (Tansu) as upstream: saturation, latency at
//! a steady rate, and the drain of a backlog journaled while the cluster was down; each
//! with the same load against Mosquitto (and phase 1 against a journal-only tidegate) in
//! the same run, for the ratios.

use std::time::{Duration, Instant};

use firmware_sim::testbed::{free_port, Tansu};
use firmware_sim::LoadOptions;

use crate::mosquitto::{mosquitto_version, start_mosquitto};
use crate::support::{
    backlog, goal, load, p50_p99, ratio, run_measured, start_tidegate, start_tidegate_with_journal,
    status, tidegate_bin, Measured, Row, RssPeaks, RssSampler,
};

/// Phases 1 and 2: cluster up; each also runs its load against a journal-only tidegate
/// (phase 1) and Mosquitto, one after the other, for the ratios.
pub(crate) fn cluster_up(rt: &tokio::runtime::Runtime, secs: u64, rate: f64, phases: &[u32]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start().expect("Tansu starts");
    let kafka = tansu.port();
    let mqtt = free_port().expect("a free port");
    let gw = start_tidegate(dir.path(), mqtt, Some((kafka, "bench")), "");
    let pid = gw.pid().expect("tidegate is running");

    if phases.contains(&1) {
        // Fixed payloads: at saturation the generator's own encoding would be part of the
        // limit.
        let saturation = |mqtt: u16, kafka: Option<(u16, &str)>| {
            let mut opts = load(mqtt, Duration::from_secs(secs), kafka);
            opts.fleet.fixed_payload = true;
            opts
        };
        let forwarding = run_measured(rt, pid, saturation(mqtt, Some((kafka, "bench"))));
        // The goals' run: the same load against a fresh daemon forwarding to its own topic,
        // with no reader beside the fleet. The reader above shares the two cores with
        // tidegate (it costs more CPU per reading than tidegate does), so with it the
        // acknowledged rate measures the reader as much as the gateway. What this daemon
        // had forwarded by the fleet's last PUBACK is its own count of records Kafka
        // acknowledged (`sent_total`, read as soon as the fleet is done); the run above
        // checks what such a run delivers.
        let (unread, unread_sent) = {
            let dir = tempfile::tempdir().expect("tempdir");
            let mqtt = free_port().expect("a free port");
            let gw = start_tidegate(dir.path(), mqtt, Some((kafka, "bench-unread")), "");
            let measured = run_measured(
                rt,
                gw.pid().expect("tidegate is running"),
                saturation(mqtt, None),
            );
            let sent = status(&tidegate_bin(), dir.path())["daemon"]["upstreams"][0]["sent_total"]
                .as_u64()
                .unwrap_or(0);
            (measured, sent)
        };
        let journal_only = {
            let dir = tempfile::tempdir().expect("tempdir");
            let mqtt = free_port().expect("a free port");
            let gw = start_tidegate(dir.path(), mqtt, None, "");
            run_measured(
                rt,
                gw.pid().expect("tidegate is running"),
                saturation(mqtt, None),
            )
        };
        let mosquitto = {
            let broker = start_mosquitto(rt);
            let pid = broker.pid().expect("Mosquitto is running");
            run_measured(rt, pid, saturation(broker.port(), None))
        };
        println!("\n== 1. saturation: 100 devices x 100 in flight, QoS 1, 100 B fixed payloads, {secs} s per run: tidegate forwarding to Kafka (3 partitions) with a reader reading back and checking every reading, the same without the reader, then the same load against a journal-only tidegate and against Mosquitto {} (persistence, offline QoS 1 subscriber)", mosquitto_version());
        side_by_side(&[
            ("tidegate + Kafka, reader beside", &forwarding),
            ("tidegate + Kafka", &unread),
            ("tidegate, journal only", &journal_only),
            ("Mosquitto", &mosquitto),
        ]);
        let acked = unread.report.acked_per_sec;
        let alone = journal_only.report.acked_per_sec;
        let mq = mosquitto.report.acked_per_sec;
        println!(
            "acknowledged with forwarding / journal only        {}   (goal ≥ 0.85: {}; with the reader beside: {})",
            ratio(acked, alone),
            goal(acked >= 0.85 * alone),
            ratio(forwarding.report.acked_per_sec, alone)
        );
        let unread_acked = unread.report.fleet.acked();
        println!(
            "forwarded during the run / acknowledged           {}   ({} of {}, tidegate's count; goal ≥ 0.95: {})",
            ratio(unread_sent as f64, unread_acked as f64),
            unread_sent,
            unread_acked,
            goal(unread_sent as f64 >= 0.95 * unread_acked as f64)
        );
        if let Some(k) = &forwarding.report.kafka {
            let fleet_acked = forwarding.report.fleet.acked();
            println!(
                "with the reader beside: read back by the last PUBACK / acknowledged   {}   ({} of {})",
                ratio(k.forwarded_during_run as f64, fleet_acked as f64),
                k.forwarded_during_run,
                fleet_acked,
            );
            println!(
                "forwarded                              {:>10.0} readings/s   complete: {}   missing {}   duplicates {}   out of order {}   drain after the run {:.2} s",
                k.forwarded_per_sec,
                k.complete,
                k.verify.missing(),
                k.verify.duplicates(),
                k.verify.out_of_order(),
                k.drain_time.as_secs_f64()
            );
            println!(
                "publish -> Kafka                       {}",
                p50_p99(&k.end_to_end)
            );
        }
        println!(
            "tidegate + Kafka / Mosquitto {}   tidegate journal only / Mosquitto {}",
            ratio(acked, mq),
            ratio(alone, mq)
        );
        println!(
            "goal, RssAnon ≤ 32 MiB at 100-device saturation: {:.1} MiB with Kafka, {:.1} MiB journal only: {}",
            forwarding.rss.anon.max(unread.rss.anon),
            journal_only.rss.anon,
            goal(
                forwarding
                    .rss
                    .anon
                    .max(unread.rss.anon)
                    .max(journal_only.rss.anon)
                    <= 32.0
            )
        );
        println!("legend: acknowledged/s over the whole run; \"reader beside\" = the benchmark's Kafka reader reads every reading back while the fleet runs and checks it (on the same cores: its CPU is in that column's generator CPU), \"tidegate + Kafka\" = the same load with no reader (the goals' run); forwarded during the run = what tidegate counted as acknowledged by Kafka when the fleet had its last PUBACK; broker CPU is tidegate's or Mosquitto's (not Tansu's); RssAnon / RssFile are the broker's peaks sampled every 100 ms (tidegate's RssFile is mostly the journal's LMDB map, page cache).");
    }

    if phases.contains(&2) {
        let steady = |mqtt: u16, kafka: Option<(u16, &str)>| {
            let mut opts = load(mqtt, Duration::from_secs(secs), kafka);
            opts.fleet.workload.rate = Some(rate);
            opts
        };
        let forwarding = run_measured(rt, pid, steady(mqtt, Some((kafka, "bench"))));
        let mosquitto = {
            let broker = start_mosquitto(rt);
            let pid = broker.pid().expect("Mosquitto is running");
            run_measured(rt, pid, steady(broker.port(), None))
        };
        println!("\n== 2. steady rate: 100 devices x {rate}/s = {:.0} readings/s offered, model payloads, {secs} s: tidegate forwarding to Kafka, then Mosquitto with the same load", 100.0 * rate);
        side_by_side(&[("tidegate + Kafka", &forwarding), ("Mosquitto", &mosquitto)]);
        if let Some(k) = &forwarding.report.kafka {
            println!(
                "publish -> Kafka      {}   complete: {}",
                p50_p99(&k.end_to_end),
                k.complete
            );
        }
        println!(
            "tidegate + Kafka / Mosquitto: acknowledged {}, PUBACK p99 {}",
            ratio(
                forwarding.report.acked_per_sec,
                mosquitto.report.acked_per_sec
            ),
            ratio(
                forwarding.report.puback.p99_us as f64,
                mosquitto.report.puback.p99_us as f64
            )
        );
        for (name, m) in [("tidegate", &forwarding), ("Mosquitto", &mosquitto)] {
            let published = m.report.published_per_sec;
            if published < 0.95 * 100.0 * rate {
                println!("!! steady run against {name}: {published:.0} readings/s published of {:.0} offered: the generator could not keep the pace (busy machine?)", 100.0 * rate);
            }
        }
    }
    drop(gw);
}

/// A table of the same figures for each named run of one load, side by side.
fn side_by_side(runs: &[(&str, &Measured)]) {
    let mut header = "| figure |".to_owned();
    let mut rule = "|---|".to_owned();
    for (name, _) in runs {
        header.push_str(&format!(" {name} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    let rows: [Row<Measured>; 8] = [
        ("acknowledged/s", |m| m.report.acked_per_sec, 0),
        (
            "PUBACK p50 (ms)",
            |m| m.report.puback.p50_us as f64 / 1000.0,
            2,
        ),
        (
            "PUBACK p99 (ms)",
            |m| m.report.puback.p99_us as f64 / 1000.0,
            2,
        ),
        ("broker CPU (cores)", |m| m.cores, 2),
        ("generator CPU (cores)", Measured::generator_cores, 2),
        (
            "generator µs/reading",
            |m| m.report.generator_us_per_reading(),
            2,
        ),
        ("broker RssAnon peak (MiB)", |m| m.rss.anon, 1),
        ("broker RssFile peak (MiB)", |m| m.rss.file, 1),
    ];
    for (figure, value, digits) in rows {
        let mut line = format!("| {figure} |");
        for (_, m) in runs {
            line.push_str(&format!(" {:.digits$} |", value(m)));
        }
        println!("{line}");
    }
    for (name, m) in runs {
        let unacked = m.report.fleet.unacked();
        if unacked > 0 {
            println!("!! {name}: {unacked} readings left unacknowledged");
        }
    }
}

/// Phase 3: a backlog of `readings` firmware-sim turbine readings (JSON, unpadded) built
/// while the cluster is down, then drained; `runs` times each with the journal uncompressed
/// (`compression = "none"`) and compressed (`"zstd"`, the default), alternating, so both
/// see the same machine. Then the same backlog load once against Mosquitto, for the ratio
/// of the ingest part (the drain has no Mosquitto equivalent).
pub(crate) fn backlog_drain(rt: &tokio::runtime::Runtime, readings: u64, runs: u32) {
    println!("\n== 3. backlog drain: {readings} turbine JSON readings (model payloads, 100 devices x 100 in flight) journaled while the cluster was down, then forwarded to Kafka (3 partitions); compression none and zstd alternating, {runs} run(s) each; then the same ingest against Mosquitto");
    println!(
        "{:<6} {:<12} {:>10} {:>12} {:>11} {:>13} {:>10} {:>9} {:>9} {:>10} {:>10}",
        "run",
        "compression",
        "backlog",
        "B/reading",
        "ingest /s",
        "drain /s",
        "drain s",
        "gen CPU",
        "tg CPU",
        "RssAnon",
        "RssFile"
    );
    let mut totals: [(f64, f64); 2] = [(0.0, 0.0); 2];
    for run in 1..=runs {
        for (i, compression) in ["none", "zstd"].into_iter().enumerate() {
            let d = drain_once(rt, readings, compression);
            println!(
                "{run:<6} {compression:<12} {:>10} {:>12.1} {:>11.0} {:>13.0} {:>10.2} {:>9.2} {:>9.2} {:>10.1} {:>10.1}",
                d.held,
                d.bytes_per_reading,
                d.ingest.report.acked_per_sec,
                d.drain_per_sec,
                d.took,
                d.ingest.generator_cores(),
                d.ingest.cores,
                d.rss.anon,
                d.rss.file
            );
            totals[i].0 += d.ingest.report.acked_per_sec;
            totals[i].1 += d.drain_per_sec;
        }
    }
    let [(none_in, none_out), (zstd_in, zstd_out)] = totals;
    println!(
        "zstd / none (means over the runs): ingest {:.2}, drain {:.2}",
        zstd_in / none_in,
        zstd_out / none_out
    );
    let mosquitto = {
        let broker = start_mosquitto(rt);
        let pid = broker.pid().expect("Mosquitto is running");
        run_measured(rt, pid, backlog_load(broker.port(), readings))
    };
    let mq = mosquitto.report.acked_per_sec;
    println!(
        "Mosquitto, same ingest: {mq:.0} readings/s, broker CPU {:.2} cores, generator CPU {:.2} cores, RssAnon {:.1} MiB, RssFile {:.1} MiB; tidegate ingest / Mosquitto: none {}, zstd {} (means over the runs)",
        mosquitto.cores,
        mosquitto.generator_cores(),
        mosquitto.rss.anon,
        mosquitto.rss.file,
        ratio(none_in / f64::from(runs), mq),
        ratio(zstd_in / f64::from(runs), mq)
    );
    println!("legend: drain /s = backlog / (broker start to empty backlog, connecting included); B/reading = status bytes_held / records with the backlog built; gen CPU / tg CPU = cores of the generator / of tidegate during the ingest; RssAnon / RssFile = tidegate's peaks (MiB) over ingest and drain, sampled every 100 ms. The drain has no Mosquitto equivalent (it forwards to no upstream): only the ingest is compared.");
}

/// The load that builds phase 3's backlog: `readings` over 100 devices, model payloads
/// (firmware-sim JSON, unpadded), as fast as 100 in flight allow.
fn backlog_load(mqtt: u16, readings: u64) -> LoadOptions {
    let mut opts = load(mqtt, Duration::from_secs(0), None);
    opts.fleet.workload.duration = None;
    opts.fleet.workload.payload_size = None;
    opts.fleet.workload.count = Some(readings.div_ceil(opts.fleet.workload.devices as u64));
    opts
}

/// What one fill-and-drain of phase 3 measured.
struct Drain {
    held: u64,
    bytes_per_reading: f64,
    ingest: Measured,
    drain_per_sec: f64,
    took: f64,
    /// tidegate's peaks over ingest and drain.
    rss: RssPeaks,
}

fn drain_once(rt: &tokio::runtime::Runtime, readings: u64, compression: &str) -> Drain {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = free_port().expect("a free port");
    let mqtt = free_port().expect("a free port");
    let journal = format!("compression = \"{compression}\"");
    let gw = start_tidegate_with_journal(dir.path(), mqtt, Some((kafka, "drain")), &journal);
    let pid = gw.pid().expect("tidegate is running");
    let sampler = RssSampler::start(pid);
    let ingest = run_measured(rt, pid, backlog_load(mqtt, readings));
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
    let mut rss = sampler.finish();
    rss.anon = rss.anon.max(ingest.rss.anon);
    rss.file = rss.file.max(ingest.rss.file);
    Drain {
        held,
        bytes_per_reading: bytes as f64 / records as f64,
        ingest,
        drain_per_sec: held as f64 / took,
        took,
        rss,
    }
}

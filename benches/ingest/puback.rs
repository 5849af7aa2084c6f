//! Phase 9: devices that wait for each PUBACK (1 in flight, as most device firmware
//! publishes), 100 and 10 of them, against tidegate with its journal only, tidegate
//! forwarding to Kafka (Tansu) and Mosquitto, one after the other with the same load:
//! acknowledged rate, PUBACK latency, the ratio to Mosquitto, the CPU of the broker and of
//! the generator, and the broker's peak RssAnon and RssFile.

use std::time::Duration;

use firmware_sim::testbed::{free_port, Tansu};
use firmware_sim::LoadOptions;

use crate::mosquitto::{mosquitto_version, start_mosquitto};
use crate::support::{
    backlog, goal, load, median, print_load_average, ratio, run_measured, start_tidegate,
    tidegate_bin, Measured,
};

/// The brokers of each fleet, in the order they run.
const BROKERS: [&str; 3] = ["tidegate, journal only", "tidegate + Kafka", "Mosquitto"];

/// What one broker did for one fleet; `backlog` is tidegate's unforwarded readings at the
/// end of the run with Kafka.
struct Run {
    measured: Measured,
    backlog: Option<u64>,
}

/// The load of phase 9: `devices` devices, 1 in flight each, fixed payloads, `secs` s.
fn one_in_flight(mqtt: u16, devices: usize, secs: u64) -> LoadOptions {
    let mut opts = load(mqtt, Duration::from_secs(secs), None);
    opts.fleet.workload.devices = devices;
    opts.fleet.window = 1;
    opts.fleet.fixed_payload = true;
    opts
}

/// One fleet against each of [`BROKERS`], each fresh.
fn fleet_runs(rt: &tokio::runtime::Runtime, devices: usize, secs: u64) -> [Run; 3] {
    let journal_only = {
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt = free_port().expect("a free port");
        let gw = start_tidegate(dir.path(), mqtt, None, "");
        let pid = gw.pid().expect("tidegate is running");
        Run {
            measured: run_measured(rt, pid, one_in_flight(mqtt, devices, secs)),
            backlog: None,
        }
    };
    let with_kafka = {
        let dir = tempfile::tempdir().expect("tempdir");
        let tansu = Tansu::start().expect("Tansu starts");
        let mqtt = free_port().expect("a free port");
        let gw = start_tidegate(dir.path(), mqtt, Some((tansu.port(), "bench")), "");
        let pid = gw.pid().expect("tidegate is running");
        let measured = run_measured(rt, pid, one_in_flight(mqtt, devices, secs));
        Run {
            measured,
            backlog: Some(backlog(&tidegate_bin(), dir.path())),
        }
    };
    let mosquitto = {
        let broker = start_mosquitto(rt);
        let pid = broker.pid().expect("Mosquitto is running");
        Run {
            measured: run_measured(rt, pid, one_in_flight(broker.port(), devices, secs)),
            backlog: None,
        }
    };
    [journal_only, with_kafka, mosquitto]
}

/// One round's figures of a fleet that the goals are held against.
struct GoalFigures {
    /// The journal-only tidegate's acknowledged/s and PUBACK p99.
    acked: f64,
    p99_us: u64,
    /// Mosquitto's acknowledged/s.
    mosquitto: f64,
}

/// Phase 9: `fleets` (device counts) × 1 in flight, `secs` s per run, `rounds` times
/// (the brokers alternate within each round; with several rounds the goals are held
/// against the medians, since one run on a shared machine moves a lot).
pub(crate) fn devices_waiting_for_puback(
    rt: &tokio::runtime::Runtime,
    fleets: &[usize],
    secs: u64,
    rounds: u32,
) {
    let version = mosquitto_version();
    println!("\n== 9. devices that wait for each PUBACK: 1 in flight per device, QoS 1, 100 B fixed payloads, {secs} s per run; tidegate journal only, tidegate forwarding to Kafka (Tansu, 3 partitions), Mosquitto {version} (persistence, offline QoS 1 subscriber), one after the other, each fresh; {rounds} round(s)");
    println!("| round | devices × 1 in flight | broker | acknowledged/s | PUBACK p50 / p99 (ms) | / Mosquitto | broker CPU (cores) | generator CPU (cores) | RssAnon peak (MiB) | RssFile peak (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // Per fleet, the figures of each round the goals are held against.
    let mut journal: Vec<(usize, Vec<GoalFigures>)> =
        fleets.iter().map(|&d| (d, Vec::new())).collect();
    for round in 1..=rounds {
        for (devices, rounds_of) in journal.iter_mut() {
            let devices = *devices;
            let runs = fleet_runs(rt, devices, secs);
            let mosquitto = runs[2].measured.report.acked_per_sec;
            for (name, run) in BROKERS.iter().zip(&runs) {
                let m = &run.measured;
                let r = &m.report;
                let backlog = run
                    .backlog
                    .map_or(String::new(), |b| format!(" (backlog at the end: {b})"));
                println!(
                    "| {round} | {devices} | {name}{backlog} | {:.0} | {:.2} / {:.2} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
                    r.acked_per_sec,
                    r.puback.p50_us as f64 / 1000.0,
                    r.puback.p99_us as f64 / 1000.0,
                    ratio(r.acked_per_sec, mosquitto),
                    m.cores,
                    m.generator_cores(),
                    m.rss.anon,
                    m.rss.file,
                );
                let unacked = r.fleet.unacked();
                if unacked > 0 {
                    println!(
                        "!! {name}, {devices} devices: {unacked} readings left unacknowledged"
                    );
                }
            }
            let j = &runs[0].measured.report;
            rounds_of.push(GoalFigures {
                acked: j.acked_per_sec,
                p99_us: j.puback.p99_us,
                mosquitto,
            });
        }
    }
    let of = if rounds > 1 {
        " (medians over the rounds)"
    } else {
        ""
    };
    let mut goals = Vec::new();
    for (devices, r) in journal {
        let acked = median(&mut r.iter().map(|x| x.acked).collect::<Vec<_>>());
        let p99_ms = median(
            &mut r
                .iter()
                .map(|x| x.p99_us as f64 / 1000.0)
                .collect::<Vec<_>>(),
        );
        let mosquitto = median(&mut r.iter().map(|x| x.mosquitto).collect::<Vec<_>>());
        match devices {
            100 => goals.push(format!(
                "goal, 100 x 1 in flight, journal only: acknowledged ≥ Mosquitto's ({acked:.0} vs {mosquitto:.0}/s) and PUBACK p99 ≤ 2 ms ({p99_ms:.2} ms){of}: {}",
                goal(acked >= mosquitto && p99_ms <= 2.0)
            )),
            10 => goals.push(format!(
                "goal, 10 x 1 in flight, journal only: ≥ 40,000 acknowledged/s ({acked:.0}/s){of}: {}",
                goal(acked >= 40_000.0)
            )),
            _ => {}
        }
    }
    for line in goals {
        println!("{line}");
    }
    print_load_average(9);
    println!("legend: acknowledged/s over the whole run (ramp-up and drain included); / Mosquitto = acknowledged/s against Mosquitto's for the same fleet; broker CPU is the process under load (tidegate or Mosquitto; Tansu's is not counted); generator CPU is the benchmark process (the devices) over the fleet's run; RssAnon / RssFile are the broker's peaks, sampled every 100 ms (tidegate's RssFile is mostly the journal's LMDB map, page cache). The backlog with Kafka is what tidegate had not yet forwarded when the fleet finished. Everything shares the same cores: compare within a run only.");
}

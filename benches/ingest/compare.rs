//! Phase 4: tidegate against Mosquitto under the same fleet, at saturation and at one
//! steady rate, side by side with their CPU, memory and the ratio; tidegate twice, with the
//! journal compressed (`compression = "zstd"`, the default) and not (`"none"`).

use std::time::Duration;

use firmware_sim::testbed::free_port;

use crate::mosquitto::{mosquitto_version, start_mosquitto};
use crate::support::{
    load, median, print_load_average, ratio, run_measured, start_tidegate_with_journal,
};

/// Phase 4: the same fleet and load against tidegate and Mosquitto, at saturation and at
/// `rate` readings/s per device; each run gets a fresh broker. Then `pairs - 1` more
/// saturation runs of tidegate with zstd and none, alternating: on a shared machine one
/// pair's ratio moves by ±20 %, so the median of several is the figure to compare.
pub(crate) fn compare_with_mosquitto(
    rt: &tokio::runtime::Runtime,
    secs: u64,
    rate: f64,
    pairs: u32,
) {
    let run_tidegate = |rate: Option<f64>, compression: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt = free_port().expect("a free port");
        let journal = format!("compression = \"{compression}\"");
        let gw = start_tidegate_with_journal(dir.path(), mqtt, None, &journal);
        let mut opts = load(mqtt, Duration::from_secs(secs), None);
        opts.fleet.workload.rate = rate;
        // At saturation the generator's own encoding would be part of the limit.
        opts.fleet.fixed_payload = rate.is_none();
        run_measured(rt, gw.pid().expect("tidegate is running"), opts)
    };
    let run_mosquitto = |rate: Option<f64>| {
        let broker = start_mosquitto(rt);
        let mut opts = load(broker.port(), Duration::from_secs(secs), None);
        opts.fleet.workload.rate = rate;
        opts.fleet.fixed_payload = rate.is_none();
        let side = run_measured(rt, broker.pid().expect("Mosquitto is running"), opts);
        // Killed (SIGKILL) when `broker` drops, as by a power cut: what it had written by
        // then is all that would survive.
        let db = broker.dir().join("mosquitto.db");
        let on_disk = std::fs::metadata(&db).map(|m| m.len()).ok();
        (side, on_disk)
    };
    let tg_sat = run_tidegate(None, "zstd");
    let raw_sat = run_tidegate(None, "none");
    let (mq_sat, mq_sat_db) = run_mosquitto(None);
    let tg_steady = run_tidegate(Some(rate), "zstd");
    let raw_steady = run_tidegate(Some(rate), "none");
    let (mq_steady, mq_steady_db) = run_mosquitto(Some(rate));

    let version = mosquitto_version();
    println!(
        "\n== 4. tidegate vs Mosquitto {version}: 100 devices x 100 in flight, QoS 1, 100 B (fixed payloads at saturation, model payloads at the steady rate), {secs} s per run, no forwarding"
    );
    println!(
        "{:<16} {:<26} {:>12} {:>12} {:>12} {:>8} {:>10}",
        "run", "figure", "tidegate", "tg (none)", "mosquitto", "ratio", "zstd/none"
    );
    let row = |run: &str, figure: &str, t: f64, n: f64, m: f64, digits: usize| {
        println!(
            "{run:<16} {figure:<26} {t:>12.digits$} {n:>12.digits$} {m:>12.digits$} {:>8} {:>10}",
            ratio(t, m),
            ratio(t, n)
        );
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let steady_label = format!("steady {:.0}/s", 100.0 * rate);
    for (run, t, n, m) in [
        ("saturation", &tg_sat, &raw_sat, &mq_sat),
        (steady_label.as_str(), &tg_steady, &raw_steady, &mq_steady),
    ] {
        // (figure, its value for each side, decimals); the run's name on the first row.
        let rows = [
            (
                "acked readings/s",
                [t, n, m].map(|s| s.report.acked_per_sec),
                0,
            ),
            (
                "PUBACK p50 (ms)",
                [t, n, m].map(|s| ms(s.report.puback.p50_us)),
                2,
            ),
            (
                "PUBACK p99 (ms)",
                [t, n, m].map(|s| ms(s.report.puback.p99_us)),
                2,
            ),
            ("broker CPU (cores)", [t, n, m].map(|s| s.cores), 2),
            (
                "generator CPU (cores)",
                [t, n, m].map(|s| s.generator_cores()),
                2,
            ),
            (
                "broker RssAnon peak (MiB)",
                [t, n, m].map(|s| s.rss.anon),
                1,
            ),
            (
                "broker RssFile peak (MiB)",
                [t, n, m].map(|s| s.rss.file),
                1,
            ),
        ];
        for (i, (figure, [tv, nv, mv], digits)) in rows.into_iter().enumerate() {
            row(if i == 0 { run } else { "" }, figure, tv, nv, mv, digits);
        }
        let unacked =
            t.report.fleet.unacked() + n.report.fleet.unacked() + m.report.fleet.unacked();
        if unacked > 0 {
            println!("{:<16} {unacked} readings left unacknowledged", "");
        }
    }
    // A paced device that falls behind does not catch up, so publishing below the offered
    // rate means the generator (or the machine) could not keep the pace: the latencies of
    // that run are not those of a steady load.
    let offered = 100.0 * rate;
    for (name, side) in [
        ("tidegate", &tg_steady),
        ("tidegate (none)", &raw_steady),
        ("Mosquitto", &mq_steady),
    ] {
        let published = side.report.published_per_sec;
        if published < 0.95 * offered {
            println!(
                "!! steady run against {name}: {published:.0} readings/s published of {offered:.0} offered: the generator could not keep the pace (busy machine?)"
            );
        }
    }
    let mut ratios = vec![tg_sat.report.acked_per_sec / raw_sat.report.acked_per_sec];
    for _ in 1..pairs {
        let zstd = run_tidegate(None, "zstd").report.acked_per_sec;
        let none = run_tidegate(None, "none").report.acked_per_sec;
        println!(
            "saturation pair: zstd {zstd:.0}/s, none {none:.0}/s, ratio {:.2}",
            zstd / none
        );
        ratios.push(zstd / none);
    }
    if ratios.len() > 1 {
        let mid = median(&mut ratios);
        println!(
            "saturation, zstd / none over {} pairs: median {:.2} (from {:.2} to {:.2})",
            ratios.len(),
            mid,
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    print_load_average(4);
    let db = |b: Option<u64>| b.map_or("none".to_owned(), |b| format!("{b} bytes"));
    let legend = [
        "legend: tidegate: the default journal (compression = \"zstd\"); tg (none): compression =",
        "  \"none\"; ratio = tidegate / Mosquitto; zstd/none = tidegate / tg (none). Acked",
        "  readings/s over the whole run (ramp-up and drain included). Same load generator, same",
        "  cores as every broker.",
        "  tidegate PUBACKs a reading only after the LMDB commit holding it is fsync'd (group",
        "  commit); with no upstream configured its journal keeps every reading.",
        "  Mosquitto: `persistence true` and a disconnected QoS 1 subscriber on turbines/#, so it",
        "  queues every reading too; but it PUBACKs from memory and writes its database only",
        "  every autosave_interval (default 1800 s) and at a clean shutdown, so a crash loses",
        "  everything acknowledged since the last save. Single-threaded: at most ~1 core.",
    ];
    for line in legend {
        println!("{line}");
    }
    println!(
        "  mosquitto.db on disk at the end of each run: {} (saturation), {} (steady).",
        db(mq_sat_db),
        db(mq_steady_db)
    );
}

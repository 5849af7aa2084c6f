//! Phase 8: readings held per GiB of journal, with `compression = "none"` and `"zstd"`, for
//! the firmware-sim JSON reading and its 48-byte binary form, read off a real daemon's
//! `status --json` (`bytes_held / records`: what `max_size` bounds); and what that means for
//! the outage a 1 GiB journal survives at a fleet's rate.

use std::time::Duration;

use firmware_sim::testbed::free_port;
use firmware_sim::{run_load, CancellationToken, PayloadFormat};

use crate::support::{load, start_tidegate_with_journal, status, tidegate_bin};

/// One GiB, the journal size of the outage figures.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Readings per second of the fleet in the outage figures: 100 turbines, 10 sensors each,
/// once a second.
const FLEET_RATE: f64 = 1_000.0;

/// The thinning factor of the outage figures (`journal.thin_max_factor`'s default).
const THIN_FACTOR: f64 = 64.0;

/// What one daemon held after the fleet.
struct Held {
    records: u64,
    bytes_held: u64,
    disk_bytes: u64,
}

impl Held {
    fn bytes_per_reading(&self) -> f64 {
        self.bytes_held as f64 / self.records.max(1) as f64
    }

    fn per_gib(&self) -> f64 {
        GIB / self.bytes_per_reading()
    }
}

/// A fresh daemon without an upstream (its journal keeps every reading) and `compression`,
/// offered `readings` readings in `format` by 100 turbines, each at `rate` readings/s (as
/// fast as the windows allow without); what `status --json` then says.
fn held_after(
    rt: &tokio::runtime::Runtime,
    (readings, rate): (u64, Option<f64>),
    format: PayloadFormat,
    compression: &str,
) -> Held {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = free_port().expect("a free port");
    let journal = format!("compression = \"{compression}\"");
    let _gw = start_tidegate_with_journal(dir.path(), mqtt, None, &journal);
    let mut opts = load(mqtt, Duration::from_secs(0), None);
    opts.fleet.workload.duration = None;
    opts.fleet.workload.payload_size = None;
    opts.fleet.workload.payload_format = format;
    opts.fleet.workload.rate = rate;
    opts.fleet.workload.count = Some(readings.div_ceil(opts.fleet.workload.devices as u64));
    rt.block_on(run_load(opts, CancellationToken::new()))
        .expect("load run");
    let s = status(&tidegate_bin(), dir.path());
    Held {
        records: s["records"].as_u64().unwrap_or(0),
        bytes_held: s["bytes_held"].as_u64().unwrap_or(0),
        disk_bytes: s["disk_bytes"].as_u64().unwrap_or(0),
    }
}

/// Phase 8: `readings` of each payload form into a journal with each compression, from
/// turbines sending `rate` readings/s each (as fast as their windows allow without: each
/// turbine's readings then come in runs, which compress better than a paced fleet's).
pub(crate) fn journal_density(rt: &tokio::runtime::Runtime, readings: u64, rate: Option<f64>) {
    let pace = rate.map_or("as fast as 100 in flight allow".to_owned(), |r| {
        format!("{r}/s each")
    });
    println!("\n== 8. readings held per GiB: {readings} firmware-sim readings from 100 turbines ({pace}) into a daemon without upstream, status --json bytes_held / records");
    println!(
        "{:<8} {:<12} {:>10} {:>12} {:>11} {:>16} {:>8} {:>12}",
        "payload",
        "compression",
        "records",
        "bytes_held",
        "B/reading",
        "readings/GiB",
        "vs none",
        "disk_bytes"
    );
    let mut outage = Vec::new();
    for (name, format) in [
        ("json", PayloadFormat::Json),
        ("binary", PayloadFormat::Binary),
    ] {
        let none = held_after(rt, (readings, rate), format, "none");
        let zstd = held_after(rt, (readings, rate), format, "zstd");
        for (compression, h) in [("none", &none), ("zstd", &zstd)] {
            println!(
                "{name:<8} {compression:<12} {:>10} {:>12} {:>11.1} {:>16.0} {:>7.2}× {:>12}",
                h.records,
                h.bytes_held,
                h.bytes_per_reading(),
                h.per_gib(),
                h.per_gib() / none.per_gib(),
                h.disk_bytes
            );
        }
        outage.push((name, none.per_gib(), zstd.per_gib()));
    }
    println!(
        "outage a 1 GiB journal survives at {FLEET_RATE:.0} readings/s (100 turbines x 10 sensors at 1 Hz):"
    );
    let hours = |per_gib: f64| per_gib / FLEET_RATE / 3600.0;
    for (name, none, zstd) in outage {
        println!(
            "{name:<8} full resolution: none {:.1} h, zstd {:.1} h; thinned down to 1/{THIN_FACTOR:.0} before anything is dropped: none {:.0} h, zstd {:.0} h",
            hours(none),
            hours(zstd),
            THIN_FACTOR * hours(none),
            THIN_FACTOR * hours(zstd)
        );
    }
}

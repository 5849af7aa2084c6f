//! Phases 6 and 7, constrained uplinks (issue 14): how soon a dashboard sees fresh readings
//! and how soon a backlog drains behind a slow link, today's behaviour against the bandwidth
//! limit with its live lane; and what the limiter costs at full speed when it never binds.
//!
//! Phase 6 puts Tansu behind firmware-sim's shaping [`Link`] (Tansu advertises the link's
//! port, so every Kafka connection, the bench's readers' too, goes through it), builds a
//! backlog of firmware-sim JSON readings from [`DEVICES`] turbines while the link is down,
//! keeps the turbines publishing one reading a second each, and brings the link up once the
//! oldest reading is older than `live_after`. "Fresh" is the first moment every turbine's
//! newest reading on the watched topic (the live topic, or the history for today's
//! behaviour) is no older than 2 × `live_interval`, read with [`LiveWatcher`]; "drained" is
//! the first moment the upstream's backlog is down to at most one second of the turbines'
//! readings.
//!
//! Phase 7 drains the same backlog at full speed (no link, Tansu started once the backlog
//! is in the journal) with three daemons, alternating: the build before the uplink work
//! (`TIDEGATE_BENCH_BASELINE_BIN`, skipped when unset), this build without uplink keys, and
//! this build with a bandwidth that never binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firmware_sim::link::{Link, LinkOptions};
use firmware_sim::telemetry::{device_id, now_ms};
use firmware_sim::testbed::{free_port, Tansu};
use firmware_sim::verify::LiveWatcher;
use firmware_sim::{run_load, CancellationToken, LoadOptions};

use crate::brokers::{retry_on_port_clash, tansu_behind};
use crate::support::{
    backlog, cpu_secs, load, median, print_load_average, start_daemon, tidegate_bin,
};

/// Turbines of both phases.
const DEVICES: usize = 20;
/// `live_after` of the live lane; the link stays down until the backlog is older.
const LIVE_AFTER: Duration = Duration::from_secs(30);
/// `live_interval` of the live lane; fresh means no older than twice this.
const LIVE_INTERVAL: Duration = Duration::from_secs(5);
/// The window the link's largest figure is taken over.
const WINDOW: Duration = Duration::from_secs(5);
/// How long phase 6 waits for fresh data and the drain before reporting neither.
const GIVE_UP: Duration = Duration::from_secs(45 * 60);

/// How the upstream of a phase 6 run is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// No uplink keys: the codec is lz4, nothing is live, the history drains at the link's pace.
    Today,
    /// `bandwidth` = the link's rate, a live topic, the default codec (zstd with a bandwidth).
    LiveLane,
}

/// What one phase 6 run measured, from link-up.
struct DrainBehindLink {
    held: u64,
    fresh: Option<Duration>,
    drained: Option<Duration>,
    bytes_up: u64,
    max_window: u64,
}

/// Fleet options for the turbines of both phases: firmware-sim JSON readings, unpadded.
fn turbines(mqtt: u16) -> LoadOptions {
    let mut opts = load(mqtt, Duration::ZERO, None);
    opts.fleet.workload.devices = DEVICES;
    opts.fleet.workload.payload_size = None;
    opts.fleet.workload.duration = None;
    opts
}

/// Journals `readings` (a multiple of [`DEVICES`]) as fast as the daemon on `mqtt` takes them.
fn build_backlog(rt: &tokio::runtime::Runtime, mqtt: u16, readings: u64) {
    let mut opts = turbines(mqtt);
    opts.fleet.workload.count = Some(readings / DEVICES as u64);
    let r = rt
        .block_on(run_load(opts, CancellationToken::new()))
        .expect("backlog load run");
    assert_eq!(
        r.fleet.acked(),
        readings,
        "every backlog reading acknowledged"
    );
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One phase 6 run: a backlog of `readings` behind a link of `rate` bytes/s.
fn drain_behind_link(
    rt: &tokio::runtime::Runtime,
    rate: u64,
    readings: u64,
    behaviour: Behaviour,
) -> DrainBehindLink {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tansu, tansu_port, link_port) = retry_on_port_clash(|| {
        let (tansu_port, link_port) = (free_port()?, free_port()?);
        tansu_behind(tansu_port, link_port, dir.path()).map(|t| (t, tansu_port, link_port))
    });
    let mut opts = LinkOptions::new(loopback(tansu_port));
    opts.listen = loopback(link_port);
    opts.rate = Some(rate);
    let link = rt.block_on(Link::start(opts)).expect("link starts");
    link.set_up(false);

    let (topic, extra) = match behaviour {
        Behaviour::Today => ("history", String::new()),
        Behaviour::LiveLane => (
            "live",
            format!(
                "bandwidth = \"{}KiB\"\nlive_topic = \"live\"\nlive_after = \"{}s\"\nlive_interval = \"{}s\"\n",
                rate / 1024,
                LIVE_AFTER.as_secs(),
                LIVE_INTERVAL.as_secs()
            ),
        ),
    };
    let bin = tidegate_bin();
    let mqtt = free_port().expect("a free port");
    let _gw = start_daemon(
        &bin,
        dir.path(),
        mqtt,
        Some((link_port, "history")),
        "",
        &extra,
        "",
    );
    let outage = Instant::now();
    build_backlog(rt, mqtt, readings);
    let stop = CancellationToken::new();
    let mut steady = turbines(mqtt);
    steady.fleet.workload.rate = Some(1.0);
    let steady = rt.spawn(run_load(steady, stop.clone()));
    // The live lane starts once the oldest unsent reading is older than live_after.
    let down_for = LIVE_AFTER + Duration::from_secs(5);
    std::thread::sleep(
        down_for
            .saturating_sub(outage.elapsed())
            .max(Duration::from_secs(5)),
    );

    let held = backlog(&bin, dir.path());
    let brokers = vec![link.addr().to_string()];
    let devices: Vec<String> = (1..=DEVICES).map(device_id).collect();
    let up = Instant::now();
    link.set_up(true);
    let (mut fresh, mut drained, mut watcher) = (None, None, None);
    while (fresh.is_none() || drained.is_none()) && up.elapsed() < GIVE_UP {
        std::thread::sleep(Duration::from_millis(250));
        if watcher.is_none() {
            // Fails until tidegate has created the topic.
            watcher = rt.block_on(LiveWatcher::connect(&brokers, topic)).ok();
        }
        if let Some(w) = watcher.as_mut() {
            if let Ok(table) = rt.block_on(w.poll()) {
                let report = table.check(
                    devices.iter().map(String::as_str),
                    2 * LIVE_INTERVAL,
                    now_ms(),
                );
                if fresh.is_none() && report.missing().is_empty() && report.stale().is_empty() {
                    fresh = Some(up.elapsed());
                }
            }
        }
        if drained.is_none() && backlog(&bin, dir.path()) <= DEVICES as u64 {
            drained = Some(up.elapsed());
        }
    }
    stop.cancel();
    let _ = rt.block_on(steady);
    DrainBehindLink {
        held,
        fresh,
        drained,
        bytes_up: link.bytes_up_since(up),
        max_window: link.max_bytes_in_window_since(WINDOW, up),
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not reached".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

/// Phase 6: today's behaviour against the live lane with a bandwidth, behind links of
/// 64 KiB/s (`slow_readings` backlog) and 1 MiB/s (`fast_readings` backlog).
pub(crate) fn constrained_uplinks(
    rt: &tokio::runtime::Runtime,
    slow_readings: u64,
    fast_readings: u64,
) {
    println!("\n== 6. constrained uplinks: {DEVICES} turbines (firmware-sim JSON), backlog journaled with the link down, then 1 reading/s per turbine; Tansu behind firmware-sim's link");
    println!("| link | backlog at link-up | upstream | fresh after | drained after | drain readings/s | up B/reading | largest 5 s window / (rate x 5 s + burst) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (rate, readings) in [(64 * 1024, slow_readings), (1024 * 1024, fast_readings)] {
        for behaviour in [Behaviour::Today, Behaviour::LiveLane] {
            let r = drain_behind_link(rt, rate, readings, behaviour);
            let upstream = match behaviour {
                Behaviour::Today => "today: no uplink keys, lz4, history only",
                Behaviour::LiveLane => "bandwidth = link rate, live_topic, zstd",
            };
            let drain_rate = r.drained.map_or(0.0, |d| r.held as f64 / d.as_secs_f64());
            let bound = rate * WINDOW.as_secs() + rate;
            println!(
                "| {} KiB/s | {} | {upstream} | {} | {} | {drain_rate:.0} | {:.1} | {} / {bound} B ({:.1} %) |",
                rate / 1024,
                r.held,
                secs(r.fresh),
                secs(r.drained),
                r.bytes_up as f64 / r.held as f64,
                r.max_window,
                r.max_window as f64 / bound as f64 * 100.0
            );
        }
    }
    print_load_average(6);
    println!("(fresh: every turbine's newest reading on the live topic, or on the history today, no older than {} s; drained: backlog at most {DEVICES} readings, one second of the turbines' readings; up B/reading: every byte up the link from link-up to the end of the run, readers' requests included, over the backlog)", 2 * LIVE_INTERVAL.as_secs());
}

/// One phase 7 run: (readings/s, daemon CPU seconds) draining `readings` with `bin` and
/// `upstream_extra`.
fn full_speed_drain(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    upstream_extra: &str,
    readings: u64,
) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = free_port().expect("a free port");
    let mqtt = free_port().expect("a free port");
    let gw = start_daemon(
        bin,
        dir.path(),
        mqtt,
        Some((kafka, "drain")),
        "",
        upstream_extra,
        "",
    );
    let pid = gw.pid().expect("tidegate is running");
    build_backlog(rt, mqtt, readings);
    let held = backlog(bin, dir.path());
    assert_eq!(held, readings, "the whole backlog journaled");
    let cpu_before = cpu_secs(pid);
    let _tansu = Tansu::start_on(kafka).expect("Tansu starts");
    // From the first reading out, so the daemon's reconnect back-off is not timed.
    let mut started = None;
    loop {
        let left = backlog(bin, dir.path());
        if left < held && started.is_none() {
            started = Some(Instant::now());
        }
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    (held as f64 / took, cpu_secs(pid) - cpu_before)
}

/// Median and spread (max − min) of `v`.
fn median_spread(v: &mut [f64]) -> (f64, f64) {
    let mid = median(v);
    let spread = match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => hi - lo,
        _ => 0.0,
    };
    (mid, spread)
}

/// Phase 7: the limiter's cost at full speed, `readings` drained `repeats` times by each
/// daemon in turn.
pub(crate) fn limiter_cost(
    rt: &tokio::runtime::Runtime,
    readings: u64,
    repeats: usize,
    baseline: Option<PathBuf>,
) {
    let now = tidegate_bin();
    let mut daemons: Vec<(String, PathBuf, &str)> = Vec::new();
    if let Some(b) = baseline {
        daemons.push((format!("a) {}", b.display()), b, ""));
    }
    daemons.push(("b) this build, no uplink keys".to_owned(), now.clone(), ""));
    daemons.push((
        "c) this build, bandwidth = \"10GiB\", compression = \"lz4\"".to_owned(),
        now,
        "bandwidth = \"10GiB\"\ncompression = \"lz4\"\n",
    ));
    println!("\n== 7. limiter cost: {readings} readings ({DEVICES} turbines, JSON) journaled with Tansu down, then drained at full speed; {repeats} runs of each daemon, alternating");
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); daemons.len()];
    for round in 1..=repeats {
        for (i, (name, bin, extra)) in daemons.iter().enumerate() {
            let (rate, cpu) = full_speed_drain(rt, bin, extra, readings);
            println!("run {round} {name}: {rate:.0} readings/s, tidegate CPU {cpu:.2} s");
            runs[i].push((rate, cpu));
        }
    }
    println!("| daemon | drain readings/s, median (spread) | tidegate CPU s, median (spread) |");
    println!("|---|---|---|");
    for ((name, _, _), r) in daemons.iter().zip(runs) {
        let (rate, rate_spread) = median_spread(&mut r.iter().map(|x| x.0).collect::<Vec<_>>());
        let (cpu, cpu_spread) = median_spread(&mut r.iter().map(|x| x.1).collect::<Vec<_>>());
        println!("| {name} | {rate:.0} ({rate_spread:.0}) | {cpu:.2} ({cpu_spread:.2}) |");
    }
    print_load_average(7);
}

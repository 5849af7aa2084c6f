//! Phase 5: a fleet of 10,000 devices (one MQTT connection each) at one reading per second
//! each, against tidegate and then Mosquitto, with the CPU of the simulator and of the
//! broker to show which one is the bottleneck, and the broker's RssAnon and RssFile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firmware_sim::testbed::free_port;
use firmware_sim::{
    run_fleet_with_progress, CancellationToken, FleetOptions, FleetProgress, FleetReport,
};

use crate::mosquitto::{mosquitto_version, start_mosquitto};
use crate::support::{
    cpu_secs, goal, load, open_fds, print_load_average, ratio, start_tidegate, status_mib, Row,
    RssPeaks, RssSampler,
};

/// Open files phase 5 needs per process beyond one socket per device: the runtime, the
/// journal, logs, the local-subscriber router (tidegate) — a generous allowance.
const FD_HEADROOM: u64 = 1_000;

/// What one broker did under phase 5's fleet.
struct FleetRun {
    report: FleetReport,
    /// Acknowledged readings/s between the end of the ramp-up and a second before the end.
    steady_rate: Option<f64>,
    peak_connected: u64,
    /// The broker's open files at the peak (its device connections plus a few).
    peak_fds: usize,
    /// The broker's CPU and the simulator's (this process) over the run, in cores.
    broker_cores: f64,
    sim_cores: f64,
    /// The broker's peaks over the run.
    rss: RssPeaks,
}

/// Phase 5's fleet (`opts`, `secs` long, first readings spread over `ramp`) against the
/// broker `pid`, sampled once a second, with a line every 5 s.
fn fleet_run(
    rt: &tokio::runtime::Runtime,
    pid: u32,
    opts: FleetOptions,
    secs: u64,
    ramp: Duration,
) -> FleetRun {
    let progress = Arc::new(FleetProgress::default());
    let sampler = RssSampler::start(pid);
    let sim_cpu_before = cpu_secs("self");
    let broker_cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let fleet = rt.spawn(run_fleet_with_progress(
        opts,
        CancellationToken::new(),
        progress.clone(),
    ));
    // Sample once a second: connections (simulator's count and the broker's open files),
    // the acked count at the start and end of the steady part (after the ramp); a line
    // every 5 s shows the ramp.
    let steady_from = ramp + Duration::from_secs(2);
    // A second before publishing stops, so the last sample is still inside the steady part.
    let steady_to = Duration::from_secs(secs.saturating_sub(1));
    let mut peak_connected = 0;
    let mut peak_fds = 0;
    let mut steady_start: Option<(Instant, u64)> = None;
    let mut steady_end: Option<(Instant, u64)> = None;
    let mut last_print = (started, 0u64);
    let mut next_sample = started + Duration::from_secs(1);
    while !fleet.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now < next_sample {
            continue;
        }
        next_sample += Duration::from_secs(1);
        let snap = progress.snapshot();
        let elapsed = now.duration_since(started);
        peak_connected = peak_connected.max(snap.connected);
        peak_fds = peak_fds.max(open_fds(pid));
        if steady_start.is_none() && elapsed >= steady_from {
            steady_start = Some((now, snap.acked));
        }
        if steady_end.is_none() && elapsed >= steady_to {
            steady_end = Some((now, snap.acked));
        }
        if now.duration_since(last_print.0) >= Duration::from_secs(5) {
            println!(
                "[{:>5.1}s] connected {:>6}  acked {:>8.0}/s  acked total {}",
                elapsed.as_secs_f64(),
                snap.connected,
                (snap.acked - last_print.1) as f64 / now.duration_since(last_print.0).as_secs_f64(),
                snap.acked
            );
            last_print = (now, snap.acked);
        }
    }
    let report = rt.block_on(fleet).expect("fleet task").expect("fleet run");
    let elapsed = started.elapsed().as_secs_f64();
    let steady_rate = match (steady_start, steady_end) {
        (Some((t0, a0)), Some((t1, a1))) if t1 > t0 => {
            Some((a1 - a0) as f64 / t1.duration_since(t0).as_secs_f64())
        }
        _ => None,
    };
    FleetRun {
        report,
        steady_rate,
        peak_connected,
        peak_fds,
        broker_cores: (cpu_secs(pid) - broker_cpu_before) / elapsed,
        sim_cores: (cpu_secs("self") - sim_cpu_before) / elapsed,
        rss: sampler.finish(),
    }
}

/// Phase 5: `devices` devices at one reading per second each for `secs` (the first
/// `ramp` spreads their first readings) against a tidegate without upstream, then against
/// Mosquitto.
pub(crate) fn fleet_of_devices(
    rt: &tokio::runtime::Runtime,
    devices: usize,
    secs: u64,
    fd_limit: u64,
) {
    let need = devices as u64 + FD_HEADROOM;
    let devices = if fd_limit < need {
        let fit = fd_limit.saturating_sub(FD_HEADROOM).max(1) as usize;
        println!(
            "\n!! open-file limit {fd_limit} is below the {need} that {devices} devices need \
             (one socket each in this process and in the broker): running {fit} devices instead. \
             Raise the hard limit (`ulimit -Hn`, /etc/security/limits.conf, or LimitNOFILE= \
             in a systemd unit) — scripts/bench.sh does it when run as root."
        );
        fit
    } else {
        devices
    };
    let ramp = Duration::from_secs(10).min(Duration::from_secs(secs / 3));
    let fleet_opts = |port: u16| {
        let mut opts = load(port, Duration::from_secs(secs), None).fleet;
        opts.workload.devices = devices;
        opts.workload.rate = Some(1.0);
        // At one reading a second a window of 10 is never the limit; 100 would only cost memory.
        opts.window = 10;
        opts.ramp_up = ramp;
        opts
    };
    let tidegate = {
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt = free_port().expect("a free port");
        // Room above the fleet: the default cap (10,000) would refuse the test bed's own port
        // probes and a device reconnecting before its old connection is gone.
        let gw = start_tidegate(
            dir.path(),
            mqtt,
            None,
            &format!("max_connections = {}\n", devices + devices / 10 + 100),
        );
        let pid = gw.pid().expect("tidegate is running");
        println!("\n(phase 5: tidegate)");
        fleet_run(rt, pid, fleet_opts(mqtt), secs, ramp)
    };
    let mosquitto = {
        let broker = start_mosquitto(rt);
        let pid = broker.pid().expect("Mosquitto is running");
        println!("(phase 5: Mosquitto)");
        fleet_run(rt, pid, fleet_opts(broker.port()), secs, ramp)
    };
    let target = devices as f64;
    println!(
        "\n== 5. {devices} devices, one MQTT connection each, QoS 1, 100 B model payloads, 1 reading/s each, {secs} s (first readings spread over {} s), no forwarding: tidegate, then Mosquitto {} (persistence, offline QoS 1 subscriber)",
        ramp.as_secs(),
        mosquitto_version()
    );
    println!("| figure | tidegate | Mosquitto | tidegate / Mosquitto |\n|---|---|---|---|");
    let steady = |r: &FleetRun| r.steady_rate.unwrap_or(0.0);
    let rows: [Row<FleetRun>; 11] = [
        ("devices connected at once", |r| r.peak_connected as f64, 0),
        ("broker open files at the peak", |r| r.peak_fds as f64, 0),
        ("acknowledged/s after the ramp-up", steady, 0),
        (
            "acknowledged/s over the whole run",
            |r| r.report.acked_per_sec(),
            0,
        ),
        (
            "PUBACK p50 (ms)",
            |r| r.report.puback_latency.p50_us as f64 / 1000.0,
            2,
        ),
        (
            "PUBACK p99 (ms)",
            |r| r.report.puback_latency.p99_us as f64 / 1000.0,
            2,
        ),
        (
            "PUBACK max (ms)",
            |r| r.report.puback_latency.max_us as f64 / 1000.0,
            1,
        ),
        ("broker CPU (cores)", |r| r.broker_cores, 2),
        ("generator CPU (cores)", |r| r.sim_cores, 2),
        ("broker RssAnon peak (MiB)", |r| r.rss.anon, 1),
        ("broker RssFile peak (MiB)", |r| r.rss.file, 1),
    ];
    for (figure, value, digits) in rows {
        let (t, m) = (value(&tidegate), value(&mosquitto));
        println!(
            "| {figure} | {t:.digits$} | {m:.digits$} | {} |",
            ratio(t, m)
        );
    }
    for (name, r) in [("tidegate", &tidegate), ("Mosquitto", &mosquitto)] {
        let rep = &r.report;
        println!(
            "{name}: {} of {} published acknowledged, {} unacknowledged, connection errors {}; target {target:.0} readings/s, {}",
            rep.acked(),
            rep.published(),
            rep.unacked(),
            rep.connection_errors(),
            r.steady_rate.map_or("steady rate not measured (run too short)".to_owned(), |s| {
                format!("{s:.0}/s after the ramp-up")
            })
        );
        if r.steady_rate.is_some_and(|s| s < 0.95 * target) {
            println!(
                "!! {name} below target: compare the CPU figures and the load average with the core count"
            );
        }
    }
    println!(
        "goal, tidegate RssAnon ≤ 64 MiB with {devices} devices connected: {:.1} MiB: {}",
        tidegate.rss.anon,
        goal(tidegate.rss.anon <= 64.0)
    );
    println!(
        "simulator peak RSS {:.1} MiB (this process: {devices} MQTT clients, their timers and PUBACK bookkeeping)",
        status_mib(std::process::id(), "VmHWM:")
    );
    print_load_average(5);
    println!("legend: generator CPU is this process over each run; broker CPU and RssAnon / RssFile peaks (sampled every 100 ms) are tidegate's or Mosquitto's.");
}

//! Phase 5: a fleet of 10,000 devices (one MQTT connection each) at one reading per second
//! each, with the CPU of the simulator and of tidegate to show which one is the bottleneck.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firmware_sim::testbed::free_port;
use firmware_sim::{run_fleet_with_progress, CancellationToken, FleetProgress};

use crate::support::{
    cpu_secs, load, open_fds, p50_p99, print_load_average, start_tidegate, status_mib,
};

/// Open files phase 5 needs per process beyond one socket per device: the runtime, the
/// journal, logs, the local-subscriber router (tidegate) — a generous allowance.
const FD_HEADROOM: u64 = 1_000;

/// Phase 5: `devices` devices at one reading per second each for `secs` (the first
/// `ramp` spreads their first readings) against a tidegate without upstream.
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
             (one socket each in this process and in tidegate): running {fit} devices instead. \
             Raise the hard limit (`ulimit -Hn`, /etc/security/limits.conf, or LimitNOFILE= \
             in a systemd unit) — scripts/bench.sh does it when run as root."
        );
        fit
    } else {
        devices
    };
    let ramp = Duration::from_secs(10).min(Duration::from_secs(secs / 3));
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

    let mut opts = load(mqtt, Duration::from_secs(secs), None).fleet;
    opts.workload.devices = devices;
    opts.workload.rate = Some(1.0);
    // At one reading a second a window of 10 is never the limit; 100 would only cost memory.
    opts.window = 10;
    opts.ramp_up = ramp;
    let target = devices as f64;

    let progress = Arc::new(FleetProgress::default());
    let sim_cpu_before = cpu_secs("self");
    let tg_cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let fleet = rt.spawn(run_fleet_with_progress(
        opts,
        CancellationToken::new(),
        progress.clone(),
    ));
    // Sample once a second: connections (simulator's count and tidegate's open files), the
    // acked count at the start and end of the steady part (after the ramp), tidegate's RSS
    // while every device is connected; a line every 5 s shows the ramp.
    let steady_from = ramp + Duration::from_secs(2);
    // A second before publishing stops, so the last sample is still inside the steady part.
    let steady_to = Duration::from_secs(secs.saturating_sub(1));
    let mut peak_connected = 0;
    let mut peak_fds = 0;
    let mut peak_rss_connected = 0.0f64;
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
        if elapsed <= steady_to {
            peak_rss_connected = peak_rss_connected.max(status_mib(pid, "VmRSS:"));
        }
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
    let sim_cores = (cpu_secs("self") - sim_cpu_before) / elapsed;
    let tg_cores = (cpu_secs(pid) - tg_cpu_before) / elapsed;
    let steady_rate = match (steady_start, steady_end) {
        (Some((t0, a0)), Some((t1, a1))) if t1 > t0 => {
            Some((a1 - a0) as f64 / t1.duration_since(t0).as_secs_f64())
        }
        _ => None,
    };
    let steady = steady_rate.map_or("not measured (run too short)".to_owned(), |r| {
        format!("{r:.0} readings/s")
    });
    let connected = report.devices.values().filter(|d| d.connects > 0).count();
    println!(
        "\n== 5. {devices} devices, one MQTT connection each, QoS 1, 100 B, 1 reading/s each, {secs} s (first readings spread over {} s), no forwarding",
        ramp.as_secs()
    );
    println!(
        "devices               {connected} connected at least once, {peak_connected} at once at the peak (tidegate peak open files {peak_fds}); connection errors {}",
        report.connection_errors()
    );
    println!("rate                  target {target:.0} readings/s, achieved {steady} after the ramp-up ({:.0}/s over the whole run incl. ramp and drain)", report.acked_per_sec());
    if steady_rate.is_some_and(|r| r < 0.95 * target) {
        println!(
            "!! below target: compare the CPU figures below and the load average with the core count"
        );
    }
    println!(
        "acknowledged          {} of {} published, {} unacknowledged",
        report.acked(),
        report.published(),
        report.unacked()
    );
    println!(
        "publish -> PUBACK     {}   max {:.0} ms",
        p50_p99(&report.puback_latency),
        report.puback_latency.max_us as f64 / 1000.0
    );
    println!(
        "simulator CPU         {sim_cores:.2} cores, peak RSS {:.1} MiB (this process: {devices} MQTT clients, their timers and PUBACK bookkeeping)",
        status_mib(std::process::id(), "VmHWM:")
    );
    println!(
        "tidegate CPU          {tg_cores:.2} cores;  RSS {peak_rss_connected:.1} MiB with every device connected, peak {:.1} MiB (VmHWM)",
        status_mib(pid, "VmHWM:")
    );
    print_load_average(5);
    drop(gw);
}

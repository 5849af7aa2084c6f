//! What every phase of the benchmark shares: the daemon under test and its config, the
//! load a phase puts on it, and the figures read off processes (CPU, memory, open files)
//! and the machine (open-file limit, load average).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use firmware_sim::testbed::{free_port, Process};
use firmware_sim::{
    run_load, CancellationToken, KafkaTarget, LatencySummary, LoadOptions, LoadReport,
};

/// The daemon, `tidegate run`, with a config for this benchmark in `dir`: forwarding to
/// `upstream` (Kafka port, topic) if given, else keeping every reading in the journal (no
/// upstream); `mqtt_extra` is appended to the `[mqtt]` table. Its output goes to
/// `dir/tidegate.log`.
pub(crate) fn start_tidegate(
    dir: &Path,
    mqtt: u16,
    upstream: Option<(u16, &str)>,
    mqtt_extra: &str,
) -> Process {
    start_daemon(&tidegate_bin(), dir, mqtt, upstream, mqtt_extra, "", "")
}

/// [`start_tidegate`] with `journal_extra` appended to the `[journal]` table (e.g.
/// `compression = "none"`).
pub(crate) fn start_tidegate_with_journal(
    dir: &Path,
    mqtt: u16,
    upstream: Option<(u16, &str)>,
    journal_extra: &str,
) -> Process {
    start_daemon(&tidegate_bin(), dir, mqtt, upstream, "", "", journal_extra)
}

/// The `tidegate` binary of this build.
pub(crate) fn tidegate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tidegate"))
}

/// [`start_tidegate`] with another binary `bin` (an older build, for a side-by-side run),
/// `upstream_extra` appended to the `[[upstream]]` table and `journal_extra` to the
/// `[journal]` table (keys an older build does not know make it refuse the config).
pub(crate) fn start_daemon(
    bin: &Path,
    dir: &Path,
    mqtt: u16,
    upstream: Option<(u16, &str)>,
    mqtt_extra: &str,
    upstream_extra: &str,
    journal_extra: &str,
) -> Process {
    let config = dir.join("tidegate.toml");
    // A free port for the HTTP listener: phases run two daemons at once (phase 1), and
    // the default port may be taken by another daemon on the machine.
    let http = free_port().expect("a free port");
    let mut toml = format!(
        "[gateway]\nid = \"gw-bench\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[journal]\ndir = \"{}\"\n{journal_extra}\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n{mqtt_extra}",
        dir.join("journal").display()
    );
    if let Some((kafka, topic)) = upstream {
        toml.push_str(&format!(
            "[[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\n\
             topic = \"{topic}\"\npartitions = 3\nbackoff_max = \"1s\"\n{upstream_extra}"
        ));
    }
    std::fs::write(&config, toml).expect("write config");
    let mut command = Command::new(bin);
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
pub(crate) fn load(mqtt: u16, duration: Duration, kafka: Option<(u16, &str)>) -> LoadOptions {
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

/// What one load run did against one broker process.
pub(crate) struct Measured {
    /// The load's report, with the generator's own CPU.
    pub(crate) report: LoadReport,
    /// The broker's CPU during the run, in cores.
    pub(crate) cores: f64,
    /// The broker's memory over the run.
    pub(crate) rss: RssPeaks,
}

impl Measured {
    /// The generator's CPU during the run, in cores.
    pub(crate) fn generator_cores(&self) -> f64 {
        self.report.generator_cores()
    }
}

/// Runs `opts` against the process `pid` (the broker the load is aimed at): the load's
/// report, and the CPU and peak memory that process used meanwhile.
pub(crate) fn run_measured(rt: &tokio::runtime::Runtime, pid: u32, opts: LoadOptions) -> Measured {
    let sampler = RssSampler::start(pid);
    let cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let report = rt
        .block_on(run_load(opts, CancellationToken::new()))
        .expect("load run");
    let cores = (cpu_secs(pid) - cpu_before) / started.elapsed().as_secs_f64();
    Measured {
        report,
        cores,
        rss: sampler.finish(),
    }
}

/// Peaks of a process's resident memory over a run, MiB, from `/proc/PID/status`:
/// `RssAnon` is the process's own memory (heap, stacks); `RssFile` is file pages mapped
/// into it, for tidegate mostly the journal's LMDB map, which is page cache the kernel can
/// reclaim, not memory the daemon holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RssPeaks {
    pub(crate) anon: f64,
    pub(crate) file: f64,
}

/// Samples a process's `RssAnon` and `RssFile` on a thread of its own every
/// [`RSS_SAMPLE_EVERY`] until [`RssSampler::finish`]: the peaks a run reached, which the
/// figures at its end (or `VmHWM`, which mixes both) would not tell.
pub(crate) struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<RssPeaks>,
}

/// How often [`RssSampler`] reads `/proc/PID/status`.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl RssSampler {
    /// Starts sampling `pid`.
    pub(crate) fn start(pid: u32) -> RssSampler {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = RssPeaks::default();
            loop {
                peaks.anon = peaks.anon.max(status_mib(pid, "RssAnon:"));
                peaks.file = peaks.file.max(status_mib(pid, "RssFile:"));
                if flag.load(Ordering::Relaxed) {
                    return peaks;
                }
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling (after one last sample) and returns the peaks.
    pub(crate) fn finish(self) -> RssPeaks {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A row of a side-by-side table: the figure's name, how to read it off one run, and its
/// decimals.
pub(crate) type Row<T> = (&'static str, fn(&T) -> f64, usize);

/// `a / b` with two decimals, `-` when `b` is zero.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// The median of `v` (the mean of the two middle values when their number is even; 0 when
/// empty). Sorts `v`.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `met` or `NOT met`, for the lines that compare a figure with a goal of issue 16.
pub(crate) fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// A field of `/proc/PID/status` in MiB (the kernel reports kB); 0 if unreadable.
pub(crate) fn status_mib(pid: u32, name: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU seconds (user + system) a process has used; `pid` may be `"self"`.
pub(crate) fn cpu_secs(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12th and 13th after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Open file descriptors of a process (for tidegate: its device connections plus a few).
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit and returns the new soft
/// limit. Phase 5 holds one socket per device here, and the tidegate child, which inherits
/// the limit, holds the other end; the usual soft limit of 1024 would stop at ~1000 devices.
pub(crate) fn raise_fd_limit() -> u64 {
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

/// The first upstream's backlog, as `bin status` reports it for the daemon configured in
/// `dir`; `u64::MAX` if it cannot tell.
pub(crate) fn backlog(bin: &Path, dir: &Path) -> u64 {
    status(bin, dir)["upstreams"][0]["backlog"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// `bin status --json` for the daemon configured in `dir` (`null` if it printed no JSON).
pub(crate) fn status(bin: &Path, dir: &Path) -> serde_json::Value {
    let out = Command::new(bin)
        .args(["status", "--json", "--config"])
        .arg(dir.join("tidegate.toml"))
        .output()
        .expect("tidegate status");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// `p50 … ms   p99 … ms` of a latency summary.
pub(crate) fn p50_p99(l: &LatencySummary) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(l.p50_us),
        ms(l.p99_us)
    )
}

/// The machine's 1-minute load average, as a hint that other processes competed for the
/// cores (the figures are then noisy); `?` if unreadable.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// `load average … at the end of phase N`: with the one printed before starting, a hint
/// whether other processes took CPU from the run (this phase's own processes count too).
pub(crate) fn print_load_average(phase: u32) {
    println!(
        "load average {} at the end of phase {phase}",
        load_average()
    );
}

pub(crate) fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

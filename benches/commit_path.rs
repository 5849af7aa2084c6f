//! The journal's commit path alone, for devices that wait for each acknowledgement: `K`
//! tasks each submit one reading (with its MQTT packet id, as the listener does; ids cycle
//! through 1..65535 as paho-based firmware does, so each client's re-send memory holds its
//! full 1,024 entries) and wait
//! for it to be durable before the next, against a journal in a temporary directory, so
//! the figures are the journal's without the network, MQTT or a load generator.
//!
//! For each `K` (`TIDEGATE_BENCH_DEVICES`, default "1,10,100") and compression (`zstd`,
//! `none`) it prints the acknowledged rate, commits per second, readings per commit, the
//! mean time inside a commit (opening the write transaction to the end of its sync) and
//! the mean cycle between commits, so that what is left of the cycle is the writer's time
//! outside LMDB and the wakeups of the tasks. It also prints the floor this disk sets: a
//! 4 KiB `pwrite` and `fdatasync` in the journal's directory, and two of them (LMDB syncs
//! twice per commit: the data pages, then the meta page).
//!
//! `cargo bench --bench commit_path`; `TIDEGATE_BENCH_SECS` (default 5) the length of each
//! run. It prints figures and asserts nothing about speed. The temporary directory is under
//! `TMPDIR` (the disk under test).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate::config::{JournalCompression, JournalConfig};
use tidegate::journal::{Journal, Packet};
use tidegate::record::{Reading, SourceKind};
use tokio::sync::{mpsc, oneshot};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean µs of a 4 KiB pwrite + fdatasync, `per` syncs in a row, in `dir`.
fn sync_floor(dir: &std::path::Path, per: usize) -> std::io::Result<f64> {
    let path = dir.join("sync-floor");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    f.set_len(4 << 20)?;
    f.sync_all()?;
    let page = [7u8; 4096];
    let n = 2000;
    let started = Instant::now();
    for i in 0..n {
        for k in 0..per {
            f.write_all_at(&page, (((i * per + k) % 1000) * 4096) as u64)?;
            f.sync_data()?;
        }
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(us)
}

fn reading(device: usize, n: u64) -> Reading {
    let mut payload = format!("{{\"device\":\"wt-{device:04}\",\"seq\":{n},\"v\":");
    while payload.len() < 99 {
        payload.push('1');
    }
    payload.push('}');
    Reading {
        ingest_ms: tidegate::journal::now_ms(),
        source_kind: SourceKind::MqttListener,
        source: format!("wt-{device:04}"),
        topic: format!("turbines/wt-{device:04}/telemetry"),
        payload: Bytes::from(payload),
        qos: 1,
        retain: false,
    }
}

/// One group-commit request of the `log` rows.
type LogRequest = (Reading, oneshot::Sender<()>);

/// A preallocated log file of `size` bytes, written once through so that syncing a group
/// needs no block allocation.
fn log_file(path: &std::path::Path, size: u64) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("log file");
    let zeros = vec![0u8; 1 << 20];
    for i in 0..size / zeros.len() as u64 {
        file.write_all_at(&zeros, i * zeros.len() as u64)
            .expect("fill the log");
    }
    file.sync_all().expect("sync the log");
    file
}

/// The `log` rows' writer: gathers what is queued, appends it to `file` with one pwrite
/// and one fdatasync, answers. Returns (groups, seconds inside write + sync).
fn log_writer(file: std::fs::File, size: u64, mut rx: mpsc::Receiver<LogRequest>) -> (u64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (mut groups, mut inside, mut at, mut seq) = (0u64, 0f64, 0u64, 0u64);
    let mut buf = Vec::new();
    while let Some(first) = rt.block_on(rx.recv()) {
        let mut group = vec![first];
        while let Ok(r) = rx.try_recv() {
            group.push(r);
        }
        let started = Instant::now();
        buf.clear();
        for (r, _) in &group {
            tidegate::record::encode_into(seq, r, &mut buf);
            seq += 1;
        }
        if at + buf.len() as u64 > size {
            at = 0;
        }
        file.write_all_at(&buf, at).expect("write the log");
        file.sync_data().expect("sync the log");
        at += buf.len() as u64;
        inside += started.elapsed().as_secs_f64();
        groups += 1;
        for (_, reply) in group {
            let _ = reply.send(());
        }
    }
    (groups, inside)
}

fn run_log(rt: &tokio::runtime::Runtime, devices: usize, secs: u64) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (tx, rx) = mpsc::channel::<LogRequest>(4096);
    let size = 64 << 20;
    let file = log_file(&dir.path().join("log"), size);
    let writer = std::thread::spawn(move || log_writer(file, size, rx));
    let sender = tx.clone();
    let (acked, secs) = fleet(rt, devices, secs, move |d, n| {
        let tx = sender.clone();
        async move {
            let (reply, done) = oneshot::channel();
            tx.send((reading(d, n), reply)).await.expect("writer alive");
            done.await.expect("answered");
        }
    });
    drop(tx);
    let (commits, commit_sum_s) = writer.join().expect("log writer");
    Run {
        acked,
        commits,
        commit_sum_s,
        secs,
    }
}

/// Runs `devices` tasks for `secs`, each sending its readings one at a time through
/// `once(device, n)` and waiting for each; returns the readings acknowledged and the
/// seconds it took.
fn fleet<F, Fut>(rt: &tokio::runtime::Runtime, devices: usize, secs: u64, once: F) -> (u64, f64)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let acked = rt.block_on(async {
        let mut tasks = Vec::new();
        for d in 0..devices {
            let once = once.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    once(d, n).await;
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("device task");
        }
        total
    });
    (acked, started.elapsed().as_secs_f64())
}

struct Run {
    acked: u64,
    commits: u64,
    commit_sum_s: f64,
    secs: f64,
}

fn run(
    rt: &tokio::runtime::Runtime,
    devices: usize,
    compression: JournalCompression,
    secs: u64,
) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = JournalConfig {
        dir: dir.path().join("journal"),
        compression,
        ..JournalConfig::default()
    };
    let (journal, writer) = Journal::open(&config, &[]).expect("open journal");
    let counters = journal.watch();
    let (sum0, commits0) = {
        let c = counters.counters();
        (
            c.commit_latency.snapshot().0,
            c.commits.load(Ordering::Relaxed),
        )
    };
    let handle = journal.clone();
    let (acked, secs) = fleet(rt, devices, secs, move |d, n| {
        let journal = handle.clone();
        async move {
            let pkid = (n % 65_535) as u16 + 1;
            let rx = journal
                .submit_packets(
                    vec![reading(d, n)],
                    vec![Some(Packet { pkid, dup: false })],
                    None,
                )
                .await
                .expect("submit");
            rx.await.expect("writer alive").expect("appended");
        }
    });
    let c = counters.counters();
    let out = Run {
        acked,
        commits: c.commits.load(Ordering::Relaxed) - commits0,
        commit_sum_s: c.commit_latency.snapshot().0 - sum0,
        secs,
    };
    drop(counters);
    drop(journal);
    writer.join();
    out
}

fn main() {
    let secs: u64 = env_or("TIDEGATE_BENCH_SECS", 5);
    let devices: Vec<usize> = std::env::var("TIDEGATE_BENCH_DEVICES")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("temporary directory");
    match (sync_floor(tmp.path(), 1), sync_floor(tmp.path(), 2)) {
        (Ok(one), Ok(two)) => println!(
            "disk floor: pwrite 4 KiB + fdatasync {one:.0} µs; two in a row {two:.0} µs \
             (at most {:.0} commits/s with one sync, {:.0} with two)",
            1e6 / one,
            1e6 / two
        ),
        (Err(e), _) | (_, Err(e)) => println!("disk floor: not measured ({e})"),
    }
    println!(
        "{:>7} {:>5} {:>12} {:>10} {:>9} {:>11} {:>10}",
        "devices", "codec", "acked/s", "commits/s", "per commit", "in commit", "cycle"
    );
    for &k in &devices {
        for name in ["zstd", "none", "log"] {
            let r = match name {
                "zstd" => run(&rt, k, JournalCompression::Zstd, secs),
                "none" => run(&rt, k, JournalCompression::None, secs),
                _ => run_log(&rt, k, secs),
            };
            let cps = r.commits as f64 / r.secs;
            println!(
                "{:>7} {:>5} {:>12.0} {:>10.0} {:>9.1} {:>9.0} µs {:>7.0} µs",
                k,
                name,
                r.acked as f64 / r.secs,
                cps,
                r.acked as f64 / r.commits.max(1) as f64,
                r.commit_sum_s * 1e6 / r.commits.max(1) as f64,
                1e6 / cps.max(1e-9),
            );
            let _ = std::io::stdout().flush();
        }
    }
}

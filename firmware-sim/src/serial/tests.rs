//! Tests of the serial simulation: frames written over a pty and to a plain file decode, in
//! order, to exactly the readings and faults reported.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;

use super::*;
use crate::faults::FaultPlan;
use crate::framing::Decoder;
use crate::telemetry::ReadingId;

/// Reads `path` like a gateway until `want` frames arrived (or EOF); returns the
/// payloads and the count of rejected frames.
fn read_frames(path: &Path, framing: Framing, want: usize) -> (Vec<ReadingId>, usize) {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOCTTY.bits())
        .open(path)
        .expect("open the follower");
    let mut d = Decoder::new(framing, 64 * 1024);
    let (mut got, mut bad) = (Vec::new(), 0);
    let mut buf = [0u8; 4096];
    while got.len() < want {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for r in d.push(&buf[..n]) {
            match r {
                Ok(p) => got.push(ReadingId::parse(&p).expect("a reading")),
                Err(_) => bad += 1,
            }
        }
    }
    (got, bad)
}

fn check_order(got: &[ReadingId], devices: usize, count: u64, boot: u64) {
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    for r in got {
        assert_eq!(r.boot, boot);
        let n = next.entry(&r.device).or_insert(1);
        assert_eq!(r.seq, *n, "{} out of order", r.device);
        *n += 1;
    }
    assert_eq!(next.len(), devices);
    assert!(next.values().all(|&n| n == count + 1), "{next:?}");
}

/// `devices` turbines writing `count` readings each, as fast as the line takes them, as
/// `boot`.
fn fast(devices: usize, count: u64, boot: u64) -> Workload {
    Workload {
        devices,
        count: Some(count),
        rate: None,
        boot: Some(boot),
        ..Workload::default()
    }
}

async fn over_a_pty(framing: Framing, payload_format: PayloadFormat) {
    let mut line = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    let path = line.path().to_path_buf();
    assert!(path.starts_with("/dev/pts"), "{}", path.display());
    let (devices, count) = (3, 200u64);
    let reader = std::thread::spawn({
        let path = path.clone();
        move || read_frames(&path, framing, devices * count as usize)
    });
    let opts = SerialOptions {
        framing,
        workload: Workload {
            payload_format,
            ..fast(devices, count, 7)
        },
    };
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        run_serial(&mut line, opts, CancellationToken::new()),
    )
    .await
    .expect("writes finish")
    .expect("writes succeed");
    assert_eq!(report.total_frames(), devices as u64 * count);
    assert_eq!(report.frames["wt-0002"], count);
    let (got, bad) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || reader.join().expect("reader")),
    )
    .await
    .expect("the reader finishes")
    .expect("join");
    assert_eq!(bad, 0);
    assert_eq!(got.len(), devices * count as usize);
    check_order(&got, devices, count, 7);
    assert!(line.drain(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn lines_readings_arrive_in_order_over_a_pty() {
    over_a_pty(Framing::Lines, PayloadFormat::Json).await;
}

#[tokio::test]
async fn cobs_readings_arrive_in_order_over_a_pty() {
    over_a_pty(Framing::Cobs, PayloadFormat::Json).await;
}

#[tokio::test]
async fn binary_cobs_readings_arrive_in_order_over_a_pty() {
    over_a_pty(Framing::Cobs, PayloadFormat::Binary).await;
}

#[tokio::test]
async fn binary_payloads_over_lines_are_refused() {
    let mut line = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    let opts = SerialOptions {
        framing: Framing::Lines,
        workload: Workload {
            payload_format: PayloadFormat::Binary,
            count: Some(1),
            ..Workload::default()
        },
    };
    let err = run_serial(&mut line, opts, CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("cobs"), "{err}");
}

#[tokio::test]
async fn a_plain_file_target_receives_the_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("line");
    std::fs::write(&path, b"").expect("create");
    let mut line = SerialLine::open(&SerialTarget::Path(path.clone()), 9600).expect("open");
    let opts = SerialOptions {
        framing: Framing::Cobs,
        workload: Workload {
            devices: 2,
            count: Some(5),
            rate: Some(1000.0),
            payload_size: Some(100),
            boot: Some(1),
            ..Workload::default()
        },
    };
    let report = run_serial(&mut line, opts, CancellationToken::new())
        .await
        .expect("run");
    assert_eq!(report.total_frames(), 10);
    let bytes = std::fs::read(&path).expect("read back");
    assert_eq!(bytes.len() as u64, report.bytes);
    let (got, bad) = read_frames(&path, Framing::Cobs, 10);
    assert_eq!(bad, 0);
    check_order(&got, 2, 5, 1);
}

#[tokio::test]
async fn injected_faults_are_counted_and_the_good_readings_all_decode() {
    for framing in [Framing::Lines, Framing::Cobs] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("line");
        std::fs::write(&path, b"").expect("create");
        let mut line = SerialLine::open(&SerialTarget::Path(path.clone()), 9600).expect("open");
        let faults = FaultPlan {
            malformed_json_rate: 0.05,
            oversized_rate: 0.02,
            oversized_bytes: 70_000,
            duplicate_rate: 0.05,
            reboot_every: Some(150),
            flap_every: None,
            flap_rate: 0.0,
            clock_skew_ms: -60_000,
            burst: Some((5, 50)),
            noise_rate: 0.05,
            bad_crc_rate: 0.05,
            truncated_rate: 0.05,
        };
        let (devices, count) = (3usize, 400u64);
        let opts = SerialOptions {
            framing,
            workload: Workload {
                seed: 5,
                faults: faults.clone(),
                ..fast(devices, count, 100)
            },
        };
        let before = now_ms();
        let report = run_serial(&mut line, opts, CancellationToken::new())
            .await
            .expect("run");
        assert_eq!(report.total_frames(), devices as u64 * count);
        for n in 1..=devices {
            let id = crate::telemetry::device_id(n);
            assert_eq!(report.faults[&id], faults.expected(5, n, count), "{id}");
        }
        let injected = report.total_faults();
        assert_eq!(injected.reboot, devices as u64 * 2);
        assert!(injected.garbage() > 50, "{injected}");

        let bytes = std::fs::read(&path).expect("read back");
        assert_eq!(bytes.len() as u64, report.bytes);
        let mut d = Decoder::new(framing, 64 * 1024);
        let mut good: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        let mut rejected = 0u64;
        for r in d.push(&bytes) {
            match r.ok().and_then(|p| ReadingId::parse(&p)) {
                Some(id) => {
                    assert!(id.ts + 50_000 < before, "skewed clock");
                    good.entry((id.device, id.boot)).or_default().push(id.seq);
                }
                None => rejected += 1,
            }
        }
        assert_eq!(rejected, injected.garbage(), "{framing}");
        let total: usize = good.values().map(Vec::len).sum();
        assert_eq!(total as u64, report.total_frames() + injected.duplicate);
        // Each device: boots 101, 102, 103 after the first (100), counters 1..=150,
        // 1..=150, 1..=100 — every one there, in order, duplicates adjacent.
        assert_eq!(good.len(), devices * 3);
        for ((device, boot), mut seqs) in good {
            seqs.dedup();
            let want = if boot == 102 { 100 } else { 150 };
            assert_eq!(seqs, (1..=want).collect::<Vec<_>>(), "{device} boot {boot}");
        }
    }
}

#[tokio::test]
async fn a_missing_path_is_an_open_error_and_is_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ttyUSB9");
    let err = SerialLine::open(&SerialTarget::Path(path.clone()), 115_200).unwrap_err();
    assert!(matches!(err, SerialError::Open { .. }), "{err}");
    assert!(!path.exists());
}

#[tokio::test]
async fn stopping_ends_a_run_blocked_on_a_full_line() {
    // Nobody reads the pty: the kernel buffer fills and writing waits.
    let mut line = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    let stop = CancellationToken::new();
    let opts = SerialOptions {
        workload: Workload {
            rate: None,
            payload_size: Some(4000),
            ..Workload::default()
        },
        ..SerialOptions::default()
    };
    let run = tokio::spawn({
        let stop = stop.clone();
        async move {
            let r = run_serial(&mut line, opts, stop).await;
            // Nobody read it: draining gives up.
            assert!(!line.drain(Duration::from_millis(100)).await);
            r
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stops promptly")
        .expect("join")
        .expect("no error");
    assert!(report.total_frames() > 0);
}

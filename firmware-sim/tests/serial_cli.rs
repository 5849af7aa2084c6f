//! `firmware-sim serial` as tidegate's tests use it: start it, read the pty path it prints,
//! open that path and decode every reading.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use firmware_sim::framing::{Decoder, Framing};
use firmware_sim::telemetry::ReadingId;

#[test]
fn serial_prints_the_pty_path_and_every_reading_arrives_there_in_order() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args(["serial", "--framing", "cobs", "-n", "3", "--rate", "max"])
        .args(["--count", "100", "--boot", "42", "--linger", "10s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start firmware-sim");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let path = first
        .trim_end()
        .strip_prefix("serial: ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
            .open(&path)
            .expect("open the pty");
        let mut decoder = Decoder::new(Framing::Cobs, 4096);
        let mut buf = [0u8; 4096];
        let mut readings = Vec::new();
        while readings.len() < 300 {
            match port.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => readings.extend(decoder.push(&buf[..n])),
            }
        }
        let _ = tx.send(readings);
    });
    let frames = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("readings within 30 s");
    let mut next = std::collections::BTreeMap::new();
    for frame in frames {
        let id = ReadingId::parse(&frame.expect("a good frame")).expect("a reading");
        assert_eq!(id.boot, 42);
        let n = next.entry(id.device.clone()).or_insert(1u64);
        assert_eq!(id.seq, *n, "{} out of order", id.device);
        *n += 1;
    }
    assert_eq!(next.len(), 3);
    assert!(next.values().all(|&n| n == 101), "{next:?}");

    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("rest of stdout");
    assert!(child.wait().expect("exit").success());
    assert!(rest.starts_with("frames 300 "), "{rest}");
}

#[test]
fn serial_fault_flags_inject_exactly_what_the_seed_decides() {
    use firmware_sim::faults::{FaultCounts, FaultPlan};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("line");
    std::fs::write(&path, b"").expect("create");
    let out = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args(["serial", "--framing", "lines", "-n", "2", "--rate", "max"])
        .args(["--count", "300", "--boot", "5", "--seed", "3"])
        .arg("--port")
        .arg(&path)
        .args(["--duplicate-rate", "0.1", "--malformed-rate", "0.05"])
        .args(["--noise-rate", "0.05", "--truncated-rate", "0.05"])
        .args(["--bad-crc-rate", "0.05", "--oversized-rate", "0.02"])
        .args(["--oversized-bytes", "9000", "--reboot-every", "100"])
        .args(["--clock-skew-ms", "-5000", "--burst", "3/30"])
        .output()
        .expect("run firmware-sim");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");

    let plan = FaultPlan {
        duplicate_rate: 0.1,
        malformed_json_rate: 0.05,
        noise_rate: 0.05,
        truncated_rate: 0.05,
        bad_crc_rate: 0.05,
        oversized_rate: 0.02,
        oversized_bytes: 9000,
        reboot_every: Some(100),
        flap_every: None,
        flap_rate: 0.0,
        clock_skew_ms: -5000,
        burst: Some((3, 30)),
    };
    let mut want = FaultCounts::default();
    for n in 1..=2 {
        want.merge(&plan.expected(3, n, 300));
    }
    assert!(
        stdout.contains(&format!("injected faults: {want}")),
        "{stdout}"
    );

    let bytes = std::fs::read(&path).expect("read back");
    let mut decoder = Decoder::new(Framing::Lines, 4096);
    let (mut good, mut rejected) = (0u64, 0u64);
    for r in decoder.push(&bytes) {
        match r.ok().and_then(|p| ReadingId::parse(&p)) {
            Some(_) => good += 1,
            None => rejected += 1,
        }
    }
    assert_eq!(good, 600 + want.duplicate);
    assert_eq!(rejected, want.garbage());
}

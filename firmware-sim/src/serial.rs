//! Turbines that write their readings to a serial line, as RS-485 / UART sensors do.
//!
//! A [`SerialLine`] is where the frames go: either a pseudo-terminal pair the simulator
//! creates ([`SerialTarget::Pty`]; tidegate opens the follower side, whose path
//! [`SerialLine::path`] gives, so tests need no hardware) or an existing device or file
//! ([`SerialTarget::Path`]). [`run_serial`] then writes the JSON readings of N turbines to it,
//! framed as [`Framing::Lines`] or [`Framing::Cobs`] (see [`crate::framing`]), at a rate,
//! and reports how many frames each device wrote. The devices share the line like sensors on
//! one bus: each tick writes one reading per device, whole frames only, in device order.
//!
//! Writes are non-blocking and cancellable: when nobody reads the line the kernel's buffer
//! fills, writing waits, and the stop token still ends the run at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::termios::{self, BaudRate, SetArg};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::faults::{Fault, FaultCounts, FaultRng};
use crate::framing::{EncodeError, Framing};
use crate::telemetry::{now_ms, PayloadFormat, Turbine};
use crate::workload::Workload;

/// Where a serial simulation writes its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// A new pseudo-terminal pair: the simulator writes to the controller side and the
    /// gateway opens the follower, whose path (`/dev/pts/N`) [`SerialLine::path`] gives.
    Pty,
    /// An existing path: a real serial device (put in raw mode at the given baud rate), a
    /// pseudo-terminal someone else made, a FIFO, or a plain file (for tests). It is not
    /// created if missing.
    Path(PathBuf),
}

/// Why the serial simulation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    /// The pseudo-terminal pair could not be created or set up.
    #[error("cannot create a pseudo-terminal")]
    Pty(#[source] nix::Error),
    /// The target path could not be opened.
    #[error("cannot open {path}", path = path.display())]
    Open {
        /// The target.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The terminal settings (raw mode, baud rate) could not be applied.
    #[error("cannot put {path} in raw mode", path = path.display())]
    Configure {
        /// The target.
        path: PathBuf,
        /// What failed.
        #[source]
        source: nix::Error,
    },
    /// The baud rate is not one the terminal interface knows.
    #[error("unsupported baud rate {0}")]
    Baud(u32),
    /// Writing a frame failed (e.g. the device was unplugged).
    #[error("writing to {path} failed", path = path.display())]
    Write {
        /// The target.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A reading could not be framed (cannot happen with the JSON payloads of
    /// [`Turbine`], which never contain a line feed).
    #[error("cannot frame a reading")]
    Encode(#[from] EncodeError),
    /// The fault plan cannot work.
    #[error("invalid fault plan: {0}")]
    Faults(String),
    /// The options cannot work together.
    #[error("invalid serial options: {0}")]
    InvalidOptions(String),
}

/// How frames reach the line.
#[derive(Debug)]
enum Writer {
    /// Terminals, pseudo-terminals and FIFOs: non-blocking writes driven by readiness.
    Fd(AsyncFd<File>),
    /// Plain files, which have no readiness.
    File(tokio::fs::File),
}

/// An open serial line that frames are written to.
#[derive(Debug)]
pub struct SerialLine {
    /// The path the gateway opens (the follower of a pty pair) or the target path.
    path: PathBuf,
    writer: Writer,
    /// The follower side of our own pty, held open so that its raw settings stay and the
    /// line is not hung up while the gateway closes and reopens it.
    _follower: Option<OwnedFd>,
}

impl SerialLine {
    /// Opens `target`. Terminals are put in raw mode (no echo, no line editing, no CR/LF
    /// translation) and, for [`SerialTarget::Path`], set to `baud`. Must be called inside a
    /// Tokio runtime.
    pub fn open(target: &SerialTarget, baud: u32) -> Result<SerialLine, SerialError> {
        match target {
            SerialTarget::Pty => {
                let pty = nix::pty::openpty(None, None).map_err(SerialError::Pty)?;
                let path = nix::unistd::ttyname(&pty.slave).map_err(SerialError::Pty)?;
                make_raw(&pty.slave, None).map_err(|source| SerialError::Configure {
                    path: path.clone(),
                    source,
                })?;
                set_nonblocking(&pty.master).map_err(SerialError::Pty)?;
                let writer =
                    register(File::from(pty.master))
                        .map(Writer::Fd)
                        .map_err(|source| SerialError::Open {
                            path: path.clone(),
                            source,
                        })?;
                Ok(SerialLine {
                    path,
                    writer,
                    _follower: Some(pty.slave),
                })
            }
            SerialTarget::Path(path) => {
                let open_err = |source| SerialError::Open {
                    path: path.clone(),
                    source,
                };
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
                    .open(path)
                    .map_err(open_err)?;
                if nix::unistd::isatty(&file).unwrap_or(false) {
                    let speed = BaudRate::try_from(baud).map_err(|_| SerialError::Baud(baud))?;
                    make_raw(&file, Some(speed)).map_err(|source| SerialError::Configure {
                        path: path.clone(),
                        source,
                    })?;
                }
                let is_file = file.metadata().map_err(open_err)?.is_file();
                let writer = if is_file {
                    Writer::File(tokio::fs::File::from_std(file))
                } else {
                    Writer::Fd(register(file).map_err(open_err)?)
                };
                Ok(SerialLine {
                    path: path.clone(),
                    writer,
                    _follower: None,
                })
            }
        }
    }

    /// The path the gateway should open: `/dev/pts/N` for a pty, else the target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a pty made by [`SerialTarget::Pty`]: waits until the gateway has read everything
    /// written (the follower's input queue is empty), at most `timeout`; returns whether it
    /// did. Call it before dropping the line: closing the controller side hangs the
    /// follower up and the kernel discards what was not yet read. Other targets return
    /// `true` at once (a real tty's driver sends its buffer on close by itself).
    pub async fn drain(&self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Some(follower) = &self._follower else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut empty_checks = 0;
        loop {
            let mut fds = [PollFd::new(follower.as_fd(), PollFlags::POLLIN)];
            let pending = match poll(&mut fds, PollTimeout::ZERO) {
                Ok(n) => n > 0,
                Err(_) => false,
            };
            // Twice empty, a little apart: bytes in flight inside the pty have landed too.
            empty_checks = if pending { 0 } else { empty_checks + 1 };
            if empty_checks >= 2 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes all of `buf`. Cancel-safe only in the sense that dropping the future stops
    /// writing; part of `buf` may have been written.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        match &mut self.writer {
            Writer::File(f) => {
                f.write_all(buf).await?;
                f.flush().await
            }
            Writer::Fd(fd) => {
                while !buf.is_empty() {
                    let mut ready = fd.writable().await?;
                    match ready.try_io(|inner| {
                        let mut f: &File = inner.get_ref();
                        f.write(buf)
                    }) {
                        Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(Ok(n)) => buf = &buf[n..],
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(e),
                        // Not writable after all; readiness was cleared, wait again.
                        Err(_would_block) => {}
                    }
                }
                Ok(())
            }
        }
    }
}

/// Registers `file` with the runtime for readiness-driven writes.
fn register(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: a `File` owns its descriptor, which stays open and the same until the
    // `AsyncFd` (which then owns the `File`) is dropped.
    unsafe { AsyncFd::register(file) }.map_err(io::Error::from)
}

/// Raw mode (and a baud rate) on a terminal.
fn make_raw(fd: impl AsFd, speed: Option<BaudRate>) -> nix::Result<()> {
    let mut t = termios::tcgetattr(&fd)?;
    termios::cfmakeraw(&mut t);
    if let Some(speed) = speed {
        termios::cfsetspeed(&mut t, speed)?;
    }
    termios::tcsetattr(&fd, SetArg::TCSANOW, &t)
}

fn set_nonblocking(fd: impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// What a serial simulation does: the [`Workload`] of the turbines sharing the line, and how
/// their readings are framed on it. Start from [`SerialOptions::default`] and set what
/// differs.
#[derive(Debug, Clone)]
pub struct SerialOptions {
    /// How readings are framed on the line.
    pub framing: Framing,
    /// The turbines sharing the line and what they write. A rate that is not a positive
    /// number writes as fast as the line takes them, like `None`; binary payloads need the
    /// `cobs` framing; flaps are refused (a serial line has no connection).
    pub workload: Workload,
}

impl Default for SerialOptions {
    /// One turbine writing a JSON line a second, until stopped.
    fn default() -> SerialOptions {
        SerialOptions {
            framing: Framing::Lines,
            workload: Workload::default(),
        }
    }
}

/// What a serial simulation wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SerialReport {
    /// The line written to.
    pub path: PathBuf,
    /// Its framing.
    pub framing: Framing,
    /// Boot id of every reading.
    pub boot: u64,
    /// Good readings written completely, per device id (duplicates and garbage not
    /// included). Without reboots, device `d` wrote counters `1..=frames[d]`; with
    /// `reboot_every = k`, each boot `boot + i` (i = 0, 1, …) wrote counters `1..=k`, the last
    /// one fewer.
    pub frames: BTreeMap<String, u64>,
    /// Faults injected with the readings counted in `frames`, per device id.
    #[serde(default)]
    pub faults: BTreeMap<String, FaultCounts>,
    /// Bytes written completely (frames included in `frames`).
    pub bytes: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl SerialReport {
    /// Frames written by all devices.
    pub fn total_frames(&self) -> u64 {
        self.frames.values().sum()
    }

    /// Faults injected by all devices.
    pub fn total_faults(&self) -> FaultCounts {
        let mut c = FaultCounts::default();
        for f in self.faults.values() {
            c.merge(f);
        }
        c
    }
}

/// Writes the readings of the workload's turbines to `line` until `count` readings per
/// device are written, `duration` has passed, or `stop` is cancelled. A failed write
/// ends the run with [`SerialError::Write`]. A stop or the deadline may cut the frames of
/// the tick being written (as a device losing power does); they are not counted. The line
/// stays open: [`SerialLine::drain`] it
/// before dropping it.
pub async fn run_serial(
    line: &mut SerialLine,
    opts: SerialOptions,
    stop: CancellationToken,
) -> Result<SerialReport, SerialError> {
    let work = &opts.workload;
    work.faults
        .validate_for_serial()
        .map_err(SerialError::Faults)?;
    if work.payload_format == PayloadFormat::Binary && opts.framing == Framing::Lines {
        return Err(SerialError::InvalidOptions(
            "binary payloads need the cobs framing: a binary reading may contain a line feed"
                .into(),
        ));
    }
    let started = Instant::now();
    let boot = work.boot_id();
    let plan = &work.faults;
    let mut fault_rngs: Vec<FaultRng> = work.device_numbers().map(|n| work.fault_rng(n)).collect();
    let mut reboots = vec![0u64; work.devices];
    let mut turbines: Vec<Turbine> = work
        .device_numbers()
        .map(|n| work.turbine(n, boot))
        .collect();
    let mut report = SerialReport {
        path: line.path().to_path_buf(),
        framing: opts.framing,
        boot,
        frames: turbines
            .iter()
            .map(|t| (t.device().to_owned(), 0))
            .collect(),
        faults: turbines
            .iter()
            .map(|t| (t.device().to_owned(), FaultCounts::default()))
            .collect(),
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    let mut tick_faults = vec![FaultCounts::default(); work.devices];
    let deadline = work
        .duration
        .map(|d| tokio::time::Instant::from_std(started + d));
    let mut ticks = work.rate.filter(|r| r.is_finite() && *r > 0.0).map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        // A line that stalled does not get a burst to catch up; readings keep their pace.
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let (mut payload, mut batch) = (Vec::new(), Vec::new());
    let mut written = 0u64;
    while work.count.is_none_or(|c| written < c) && !turbines.is_empty() {
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // Readings of a burst go out back-to-back.
        let pace = !plan.in_burst(written + 1);
        if let (Some(ticks), true) = (&mut ticks, pace) {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break,
                () = sleep_until_deadline => break,
            }
        } else if stop.is_cancelled() || deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            break;
        }
        batch.clear();
        let ts = plan.skew(now_ms());
        for (i, t) in turbines.iter_mut().enumerate() {
            let faults = plan.decide(written + 1, &mut fault_rngs[i]);
            tick_faults[i] = FaultCounts::default();
            for &f in &faults {
                tick_faults[i].add(f);
            }
            if faults.contains(&Fault::Reboot) {
                reboots[i] += 1;
                t.reboot(boot.wrapping_add(reboots[i]));
            }
            let reading = t.step(ts);
            reading.encode(work.payload_format, work.payload_size, &mut payload);
            plan.encode_serial(
                opts.framing,
                &faults,
                &reading,
                &payload,
                &mut fault_rngs[i],
                &mut batch,
            )?;
        }
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = line.write_all(&batch) => r.map_err(|source| SerialError::Write {
                path: report.path.clone(),
                source,
            })?,
            () = stop.cancelled() => break,
            () = sleep_until_deadline => break,
        }
        written += 1;
        report.bytes += batch.len() as u64;
        for n in report.frames.values_mut() {
            *n = written;
        }
        for (c, f) in report.faults.values_mut().zip(&tick_faults) {
            c.merge(f);
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultPlan;
    use crate::framing::Decoder;
    use crate::telemetry::ReadingId;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

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
                devices,
                count: Some(count),
                rate: None,
                boot: Some(7),
                payload_format,
                ..Workload::default()
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
                    devices,
                    count: Some(count),
                    rate: None,
                    boot: Some(100),
                    seed: 5,
                    faults: faults.clone(),
                    ..Workload::default()
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
}

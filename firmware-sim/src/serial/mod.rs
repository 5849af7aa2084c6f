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

mod line;
#[cfg(test)]
mod tests;

pub use line::{SerialLine, SerialTarget};

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::faults::{Fault, FaultCounts, FaultRng, InvalidPlan};
use crate::framing::{EncodeError, Framing};
use crate::telemetry::{now_ms, PayloadFormat, Turbine};
use crate::workload::Workload;

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
    Faults(InvalidPlan),
    /// The options cannot work together.
    #[error("invalid serial options: {0}")]
    InvalidOptions(String),
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

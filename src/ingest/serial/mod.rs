//! Serial ingest: readings framed on a UART, RS-485 adapter or pseudo-terminal.
//!
//! Each `[[serial]]` port gets one task ([`run_port`]) that owns the port for the daemon's
//! life: it opens the port, reads whatever bytes arrive, feeds them to the shared streaming
//! [`Decoder`] (`lines` or `cobs`, from the `tidegate-framing` crate) and hands every good
//! frame of one read to the journal as one request, as the MQTT listener does with one
//! socket read. The reading's topic (and so Kafka key) is the port's configured topic, its
//! source the port path, and its payload the frame, byte for byte.
//!
//! # Invariants
//!
//! 1. **Only good frames reach the journal.** A frame over `max_frame`, a `cobs` frame
//!    that is not valid COBS or fails its CRC-16, a `lines` line that is not UTF-8 (line
//!    noise, a wrong baud rate), and a frame cut off by the port vanishing are dropped,
//!    counted by reason in [`SerialCounters`] and logged with the port name; decoding
//!    resumes at the next delimiter, so the good frames around a bad one are all kept.
//! 2. **In order.** Frames are submitted in the order they were read, one request at a
//!    time from this one task, so they are journaled — and forwarded — in that order.
//! 3. **Bounded.** Serial has no acknowledgement to withhold, so instead the task stops
//!    reading while [`MAX_IN_FLIGHT`] requests are waiting for their commit: a slow disk
//!    backs up into the kernel's buffer (and, with flow control, the device) rather than
//!    into memory. Under `on_full = "reject"` a refused frame cannot be handed back to
//!    the device: it is counted as `rejected_full` and logged (at most every 10 s).
//! 4. **Never gives up on a port.** A port missing at start, or that vanishes (USB
//!    adapter unplugged, pseudo-terminal closed: a read error or end of file) is opened
//!    again with exponential backoff (`backoff_initial` doubling to `backoff_max`) until
//!    it returns or the daemon stops. Each change — open, lost, cannot be opened (per
//!    distinct error), back — is logged once, not on every attempt. A port never stops
//!    the daemon or the MQTT listener.
//!
//! `lines` has no checksum: a line that is cut short by line noise but still UTF-8 is
//! journaled as it is. Devices that need integrity use `cobs`.

pub mod config;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_framing::{Decoder, FrameError, Framing};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::{FlowControl, Parity, SerialConfig};

use crate::journal::{now_ms, Appended, Journal, JournalError};
use crate::record::{Reading, SourceKind};
use crate::telemetry::{add, SerialCounters};

/// Most journal requests of one port waiting for their commit before the port is read
/// again. Each holds the frames of one read, so this bounds memory to a few reads.
pub const MAX_IN_FLIGHT: usize = 8;

/// Bytes asked for per read. Frames longer than this span reads; the decoder joins them.
const READ_CHUNK: usize = 16 * 1024;

/// Rejected frames logged one by one per window; the rest are only counted until the
/// window ends (the counters and the progress line have them all).
const REJECT_LOGS_PER_WINDOW: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// How a port's reading session ended.
#[derive(Debug)]
enum End {
    /// Shutdown was requested.
    Stopped,
    /// The port went away (read error or end of file); it is opened again.
    Lost(String),
    /// The journal stopped taking readings; the daemon is stopping.
    JournalGone,
}

/// A journal request waiting for its commit.
struct Pending {
    frames: usize,
    commit: oneshot::Receiver<Result<Appended, JournalError>>,
}

/// Reads `config.port` until `stop` is cancelled, journaling every good frame; see the
/// module documentation for what it guarantees. Returns only on shutdown or when the
/// journal has stopped.
pub async fn run_port(
    config: SerialConfig,
    journal: Journal,
    counters: Arc<SerialCounters>,
    stop: CancellationToken,
) {
    let span = tracing::info_span!("serial", port = %config.port.display());
    Port::new(config, journal, counters)
        .run(stop)
        .instrument(span)
        .await
}

/// One port's task state.
struct Port {
    config: SerialConfig,
    journal: Journal,
    counters: Arc<SerialCounters>,
    /// The readings' topic and source, computed once.
    topic: String,
    source: String,
    decoder: Decoder,
    in_flight: VecDeque<Pending>,
    rejects: LogLimit,
    losses: LossLog,
}

impl Port {
    fn new(config: SerialConfig, journal: Journal, counters: Arc<SerialCounters>) -> Port {
        // max_frame is validated to be at most mqtt.max_packet, so it fits a usize.
        let max_frame = usize::try_from(config.max_frame.as_u64()).unwrap_or(usize::MAX);
        Port {
            topic: config.topic(),
            source: config.source(),
            decoder: Decoder::new(config.framing, max_frame),
            config,
            journal,
            counters,
            in_flight: VecDeque::new(),
            rejects: LogLimit::default(),
            losses: LossLog::default(),
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        tracing::info!(
            framing = %self.config.framing,
            baud = self.config.baud,
            topic = %self.topic,
            "Serial port configured; opening it."
        );
        let mut backoff = self.config.backoff_initial;
        let mut ever_open = false;
        // The open error last logged; `Some("")` right after a loss, which was logged
        // already, so that the usual "no such file" that follows is not logged again.
        let mut reported: Option<String> = None;
        loop {
            match open(&self.config) {
                Ok(stream) => {
                    if ever_open {
                        add(&self.counters.reconnects, 1);
                        tracing::info!("Serial port is back; reading again.");
                    } else if reported.is_some() {
                        tracing::info!("Serial port appeared; reading.");
                    } else {
                        tracing::info!("Serial port open; reading.");
                    }
                    ever_open = true;
                    backoff = self.config.backoff_initial;
                    self.counters
                        .connected
                        .store(1, std::sync::atomic::Ordering::Relaxed);
                    let end = self.read(stream, &stop).await;
                    self.counters
                        .connected
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    // The frame in progress when the port went away has no end.
                    if let Some(e) = self.decoder.finish() {
                        self.reject(&e);
                    }
                    if !self.settle_all().await {
                        return;
                    }
                    match end {
                        End::Stopped => break,
                        End::JournalGone => return,
                        End::Lost(why) => {
                            tracing::warn!(error = %why, retry_max = %humantime::format_duration(self.config.backoff_max), "Serial port lost; opening it again until it returns.");
                            reported = Some(String::new());
                        }
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    match &reported {
                        Some(r) if r == &why => {
                            tracing::debug!(error = %why, "Serial port still cannot be opened.")
                        }
                        Some(r) if r.is_empty() => {
                            // Just lost, and said so: missing now is the expected sequel.
                            tracing::debug!(error = %why, "Serial port cannot be opened yet.");
                            reported = Some(why);
                        }
                        _ => {
                            tracing::warn!(error = %why, retry_max = %humantime::format_duration(self.config.backoff_max), "Serial port cannot be opened; trying again with backoff until it can (logged again only if the error changes).");
                            reported = Some(why);
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2).min(self.config.backoff_max);
        }
        tracing::info!("Serial port closed for shutdown.");
    }

    /// Reads the open port until it is lost, shutdown, or the journal stops.
    async fn read(&mut self, mut stream: SerialStream, stop: &CancellationToken) -> End {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                // Bounded read-ahead: wait for the oldest commit before reading more.
                let (frames, result) = tokio::select! {
                    _ = stop.cancelled() => return End::Stopped,
                    r = next_commit(&mut self.in_flight) => r,
                };
                if !self.settle(frames, result) {
                    return End::JournalGone;
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return End::Stopped,
                (frames, result) = next_commit(&mut self.in_flight) => {
                    if !self.settle(frames, result) {
                        return End::JournalGone;
                    }
                }
                r = stream.read(&mut buf) => match r {
                    Ok(0) => return End::Lost("end of file".into()),
                    Ok(n) => {
                        add(&self.counters.bytes, n as u64);
                        if !self.take(&buf[..n]).await {
                            return End::JournalGone;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // EIO is what a pseudo-terminal whose other side closed, or an
                    // unplugged USB adapter, returns.
                    Err(e) => return End::Lost(e.to_string()),
                },
            }
        }
    }

    /// Decodes `bytes` and submits their good frames as one journal request. `false`
    /// once the journal takes no more readings.
    async fn take(&mut self, bytes: &[u8]) -> bool {
        let ingest_ms = now_ms();
        let mut readings = Vec::new();
        for frame in self.decoder.push(bytes) {
            match frame {
                Ok(payload) => {
                    if self.config.framing == Framing::Lines
                        && std::str::from_utf8(&payload).is_err()
                    {
                        self.reject_reason(
                            "not_utf8",
                            "line is not UTF-8 (line noise or a wrong baud rate?)",
                        );
                        continue;
                    }
                    readings.push(Reading {
                        ingest_ms,
                        source_kind: SourceKind::Serial,
                        source: self.source.clone(),
                        topic: self.topic.clone(),
                        payload,
                        // A serial frame comes with no acknowledgement protocol.
                        qos: 0,
                        retain: false,
                    });
                }
                Err(e) => self.reject(&e),
            }
        }
        if readings.is_empty() {
            return true;
        }
        let frames = readings.len();
        match self.journal.submit(readings).await {
            Ok(commit) => {
                self.in_flight.push_back(Pending { frames, commit });
                true
            }
            Err(e) => {
                tracing::error!(error = %e, frames, "Journal unavailable; serial frames read from the port are lost.");
                false
            }
        }
    }

    /// Accounts for one commit's outcome. `false` once the journal has stopped.
    fn settle(
        &mut self,
        frames: usize,
        result: Result<Result<Appended, JournalError>, oneshot::error::RecvError>,
    ) -> bool {
        match result {
            Ok(Ok(a)) => {
                add(&self.counters.frames_accepted, a.accepted as u64);
                let refused = frames.saturating_sub(a.accepted) as u64;
                if refused > 0 {
                    add(&self.counters.rejected_full, refused);
                    self.losses.add(refused, &self.counters);
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, frames, "Journal commit failed; these serial frames are lost.");
                false
            }
            Err(_) => {
                tracing::error!(
                    frames,
                    "Journal stopped before committing; these serial frames are lost."
                );
                false
            }
        }
    }

    /// Waits for every commit in flight. `false` once the journal has stopped.
    async fn settle_all(&mut self) -> bool {
        while let Some(p) = self.in_flight.pop_front() {
            let result = p.commit.await;
            if !self.settle(p.frames, result) {
                return false;
            }
        }
        true
    }

    fn reject(&mut self, e: &FrameError) {
        self.reject_reason(e.reason(), &e.to_string());
    }

    fn reject_reason(&mut self, reason: &'static str, detail: &str) {
        match self.counters.rejected(reason) {
            Some(c) => add(c, 1),
            // A reason added to the decoder later: still counted, as malformed.
            None => add(&self.counters.rejected_invalid_cobs, 1),
        }
        match self.rejects.allow() {
            Allow::Yes => {
                tracing::warn!(reason, detail, "Rejected a serial frame; the frames around it are kept.")
            }
            Allow::LastOne => tracing::warn!(
                reason,
                detail,
                "Rejected a serial frame; further rejections on this port are counted but not logged for {}s.",
                LOG_WINDOW.as_secs()
            ),
            Allow::No => {}
        }
    }
}

/// Opens the port with its line settings, non-blocking, registered with the runtime.
fn open(c: &SerialConfig) -> Result<SerialStream, tokio_serial::Error> {
    use tokio_serial::{DataBits, StopBits};
    let data_bits = match c.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let stop_bits = if c.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let parity = match c.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let flow = match c.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(c.port.to_string_lossy(), c.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(flow)
        .open_native_async()
}

/// The outcome of the oldest commit in flight; pending while none is. Cancel-safe: the
/// request stays queued unless its outcome is returned.
async fn next_commit(
    q: &mut VecDeque<Pending>,
) -> (
    usize,
    Result<Result<Appended, JournalError>, oneshot::error::RecvError>,
) {
    let Some(front) = q.front_mut() else {
        return std::future::pending().await;
    };
    let result = (&mut front.commit).await;
    let frames = front.frames;
    q.pop_front();
    (frames, result)
}

/// Whether a rejection may be logged.
enum Allow {
    Yes,
    /// The last one of this window.
    LastOne,
    No,
}

/// At most [`REJECT_LOGS_PER_WINDOW`] log lines per [`LOG_WINDOW`].
#[derive(Default)]
struct LogLimit {
    window_start: Option<Instant>,
    logged: u32,
}

impl LogLimit {
    fn allow(&mut self) -> Allow {
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= LOG_WINDOW)
        {
            self.window_start = Some(now);
            self.logged = 0;
        }
        self.logged += 1;
        match self.logged {
            n if n < REJECT_LOGS_PER_WINDOW => Allow::Yes,
            n if n == REJECT_LOGS_PER_WINDOW => Allow::LastOne,
            _ => Allow::No,
        }
    }
}

/// Logs frames refused by a full journal at most every [`LOG_WINDOW`], with the count
/// since the last line.
#[derive(Default)]
struct LossLog {
    last: Option<Instant>,
    pending: u64,
}

impl LossLog {
    fn add(&mut self, n: u64, counters: &SerialCounters) {
        self.pending += n;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= LOG_WINDOW)
        {
            tracing::error!(
                lost = self.pending,
                total = crate::telemetry::get(&counters.rejected_full),
                "Journal full (on_full = \"reject\"): serial frames refused and lost, since a serial device cannot be asked to resend. Free space or use on_full = \"drop-oldest\"."
            );
            self.pending = 0;
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_logged_a_few_times_per_window_then_only_counted() {
        let mut limit = LogLimit::default();
        let allowed: Vec<&str> = (0..8)
            .map(|_| match limit.allow() {
                Allow::Yes => "yes",
                Allow::LastOne => "last",
                Allow::No => "no",
            })
            .collect();
        assert_eq!(
            allowed,
            ["yes", "yes", "yes", "yes", "last", "no", "no", "no"]
        );
        // A new window logs again.
        limit.window_start = Some(Instant::now() - LOG_WINDOW);
        assert!(matches!(limit.allow(), Allow::Yes));
    }

    #[test]
    fn every_decoder_reason_has_a_counter() {
        let c = SerialCounters::default();
        for e in [
            FrameError::Oversized { max_frame: 1 },
            FrameError::BadCrc {
                received: 0,
                computed: 1,
            },
            FrameError::InvalidCobs,
            FrameError::TooShort { len: 1 },
            FrameError::Unterminated { len: 1 },
        ] {
            assert!(c.rejected(e.reason()).is_some(), "{}", e.reason());
        }
        assert!(c.rejected("not_utf8").is_some());
        assert!(c.rejected("full").is_some());
    }
}

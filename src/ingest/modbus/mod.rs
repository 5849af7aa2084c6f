//! Modbus RTU polling: one task per `[[modbus]]` port reads the configured registers of
//! each slave every `interval` and journals each poll as one JSON reading.
//!
//! The protocol is tokio-modbus's RTU client over a tokio-serial port; this module owns
//! what to ask ([`plan`]), how to read the answers ([`decode`]), the port's life (open,
//! fail, reopen with backoff) and the counters and logs of every slave.
//!
//! # Invariants
//!
//! 1. **A bad bus never stops the daemon.** A port that is missing, vanishes or errors is
//!    closed and reopened with jittered backoff (`backoff_initial` doubling up to
//!    `backoff_max`); nothing of it reaches the other inputs. Every change of a port's or a
//!    slave's state is logged once, not once per poll.
//! 2. **One reading per answered poll, in poll order.** A poll that read at least one value
//!    is journaled (awaited before the next poll, so readings of a slave keep their order);
//!    registers that failed appear in its `errors` object. A poll that read nothing is not
//!    journaled: the counters and the log say why, and the gap in `seq` shows it upstream.
//! 3. **Every failed request is counted once, per slave,** as exactly one of timeout, CRC
//!    error, exception or protocol error — except a request cut short by the port itself
//!    failing, which counts as a failure of the port (and ends the poll unjournaled).
//!
//! # The reading
//!
//! Topic: the slave's `topic`, else the port's, else `modbus/<name>`. Source: the serial
//! kind with the name `modbus:<port>:<slave id>`. Payload:
//!
//! ```json
//! {"slave":1,"name":"wt-0001","ts":1764000000000,"seq":42,
//!  "values":{"wind_ms":7.31,"running":true},"errors":{"power_kw":"timeout"}}
//! ```
//!
//! `ts` is when the poll started (ms since the epoch); `seq` counts this slave's polls
//! since the daemon started (1, 2, …), including polls that were not journaled.
//!
//! # Telling CRC errors from timeouts
//!
//! tokio-modbus does not report a bad CRC: its decoder drops bytes to resynchronise and
//! then waits for a frame that never comes. So the transport is wrapped in a [`Tap`] that
//! counts the bytes received since the request was sent: a request that failed after bytes
//! arrived was answered with a corrupt (or cut-short) frame — a CRC error; one that got no
//! byte at all is a timeout.

pub mod config;
pub mod decode;
pub mod plan;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{rtu, Client};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

pub use config::{ModbusConfig, RegisterConfig, SlaveConfig};
use config::{Parity, RegisterKind};
use decode::{decode_registers, to_json, Raw};
use plan::Span;

use crate::backoff::Backoff;
use crate::journal::{now_ms, Journal, JournalError};
use crate::record::{Reading, SourceKind};
use crate::telemetry::{add, ModbusCounters, ModbusSlaveCounters};

/// How one request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Timeout,
    Crc,
    Exception(u8, String),
    Protocol(String),
}

impl Failure {
    /// The text in a reading's `errors` object.
    fn describe(&self) -> String {
        match self {
            Failure::Timeout => "timeout".to_owned(),
            Failure::Crc => "crc error".to_owned(),
            Failure::Exception(code, text) => format!("exception {code:#04x}: {text}"),
            Failure::Protocol(what) => format!("protocol error: {what}"),
        }
    }

    fn count(&self, c: &ModbusSlaveCounters) {
        add(
            match self {
                Failure::Timeout => &c.timeouts,
                Failure::Crc => &c.crc_errors,
                Failure::Exception(..) => &c.exceptions,
                Failure::Protocol(_) => &c.protocol_errors,
            },
            1,
        );
    }
}

/// How a port's polling ended.
enum PortEnd {
    /// Shutdown was asked for.
    Stopped,
    /// The journal no longer takes readings (shutting down or failed).
    JournalClosed,
    /// The port failed; close and reopen it.
    Failed(io::Error),
}

/// Polls in a row that read nothing before a slave is reported as not answering: one
/// lost answer on a noisy bus is counted, not logged.
const DOWN_AFTER: u32 = 3;

/// What has been said in the log about a slave, so that each change is said once.
#[derive(Debug, Default)]
struct Health {
    /// A poll read something since the port opened, and the log said so.
    answered: bool,
    /// Polls in a row that read nothing.
    failed_in_row: u32,
    /// Reported as not answering.
    down: bool,
    /// Registers whose exception has been logged (an exception is usually a wrong address
    /// in the config: it stays until the config is fixed).
    exceptions_logged: HashSet<String>,
}

/// A slave with everything a poll needs, prepared once.
struct Polled {
    config: SlaveConfig,
    spans: Vec<Span>,
    topic: String,
    source: String,
    seq: u64,
    health: Health,
}

/// Polls the port of `config` until `stop`; see the module doc. `counters` must have one
/// entry per slave, in config order (as [`counters_for`] makes them).
pub async fn run(
    config: ModbusConfig,
    journal: Journal,
    counters: Arc<ModbusCounters>,
    stop: CancellationToken,
) {
    let port = config.port.display().to_string();
    let mut slaves: Vec<Polled> = config
        .slave
        .iter()
        .map(|s| Polled {
            config: s.clone(),
            spans: plan::plan(&s.register),
            topic: config.topic_of(s),
            source: format!("modbus:{port}:{}", s.id),
            seq: 0,
            health: Health::default(),
        })
        .collect();
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut open_failure_logged = false;
    loop {
        if stop.is_cancelled() {
            break;
        }
        match open(&config) {
            Ok(stream) => {
                tracing::info!(
                    %port,
                    slaves = slaves.len(),
                    interval = %humantime::format_duration(config.interval),
                    "Modbus port open; polling."
                );
                backoff.reset();
                counters.port_open.store(1, Ordering::Relaxed);
                let end = poll_port(stream, &config, &mut slaves, &journal, &counters, &stop).await;
                counters.port_open.store(0, Ordering::Relaxed);
                for s in &mut slaves {
                    // The port's own state change is logged; each slave's starts afresh.
                    s.health = Health {
                        exceptions_logged: std::mem::take(&mut s.health.exceptions_logged),
                        ..Health::default()
                    };
                }
                match end {
                    PortEnd::Stopped => break,
                    PortEnd::JournalClosed => {
                        tracing::debug!(%port, "Modbus polling stopped: the journal takes no more readings.");
                        return;
                    }
                    PortEnd::Failed(e) => {
                        add(&counters.port_failures, 1);
                        tracing::warn!(%port, error = %e, "Modbus port failed; closing it and reopening with backoff (logged again once it opens).");
                        // Failing to reopen a port that just failed is the same state.
                        open_failure_logged = true;
                    }
                }
            }
            Err(e) => {
                add(&counters.port_failures, 1);
                if open_failure_logged {
                    tracing::debug!(%port, error = %e, "Modbus port still cannot be opened.");
                } else {
                    tracing::warn!(%port, error = %e, "Cannot open the Modbus port; retrying with backoff (logged again once it opens).");
                    open_failure_logged = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    tracing::debug!(%port, "Modbus polling stopped.");
}

/// Zeroed counters for the port and slaves of `config`, in the order [`run`] expects.
pub fn counters_for(config: &ModbusConfig) -> ModbusCounters {
    ModbusCounters::new(
        config.port.display().to_string(),
        config.slave.iter().map(|s| s.name.clone()),
    )
}

/// Opens the serial port with the configured line settings.
fn open(config: &ModbusConfig) -> Result<SerialStream, tokio_serial::Error> {
    let builder = tokio_serial::new(config.port.to_string_lossy(), config.baud)
        .parity(match config.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(if config.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        })
        .stop_bits(if config.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        });
    SerialStream::open(&builder)
}

/// The silence RTU requires between frames: 3.5 characters of 11 bits, and at least
/// 1.75 ms (the spec's fixed value above 19200 baud).
fn frame_gap(baud: u32) -> Duration {
    let chars = Duration::from_secs_f64(3.5 * 11.0 / f64::from(baud.max(1)));
    chars.max(Duration::from_micros(1750))
}

/// Polls every slave each interval until the port fails, the journal closes or `stop`.
async fn poll_port(
    stream: SerialStream,
    config: &ModbusConfig,
    slaves: &mut [Polled],
    journal: &Journal,
    counters: &ModbusCounters,
    stop: &CancellationToken,
) -> PortEnd {
    let tap = Tap::new(stream);
    let received = tap.received.clone();
    let flush = tap.flush_input.clone();
    let Some(first) = slaves.first() else {
        return PortEnd::Stopped;
    };
    let mut ctx = rtu::attach_slave(tap, Slave(first.config.id));
    let gap = frame_gap(config.baud);
    let mut ticks = tokio::time::interval(config.interval);
    // A slow poll (timeouts) delays the next one; polls do not pile up to catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let port = config.port.display().to_string();
    loop {
        tokio::select! {
            () = stop.cancelled() => return PortEnd::Stopped,
            _ = ticks.tick() => {}
        }
        for (slave, (_, c)) in slaves.iter_mut().zip(&counters.slaves) {
            slave.seq += 1;
            add(&c.polls, 1);
            let ts = now_ms();
            let mut values = BTreeMap::new();
            let mut errors = BTreeMap::new();
            ctx.set_slave(Slave(slave.config.id));
            for span in &slave.spans {
                tokio::time::sleep(gap).await;
                received.store(0, Ordering::Relaxed);
                // Whatever a slow slave sent after its timeout must not be taken for the
                // answer to this request.
                flush.store(true, Ordering::Relaxed);
                let request = match span.kind {
                    RegisterKind::Coil => Request::ReadCoils(span.start, span.count),
                    RegisterKind::Discrete => Request::ReadDiscreteInputs(span.start, span.count),
                    RegisterKind::Holding => Request::ReadHoldingRegisters(span.start, span.count),
                    RegisterKind::Input => Request::ReadInputRegisters(span.start, span.count),
                };
                let answer = tokio::select! {
                    () = stop.cancelled() => return PortEnd::Stopped,
                    a = tokio::time::timeout(config.timeout, ctx.call(request)) => a,
                };
                let got_bytes = received.load(Ordering::Relaxed) > 0;
                let outcome = match answer {
                    Err(_elapsed) if got_bytes => Err(Failure::Crc),
                    Err(_elapsed) => Err(Failure::Timeout),
                    Ok(Err(tokio_modbus::Error::Transport(e))) => {
                        // The codec gives up on a long run of garbage with InvalidData;
                        // anything else is the port itself failing.
                        if e.kind() == io::ErrorKind::InvalidData && got_bytes {
                            Err(Failure::Crc)
                        } else {
                            return PortEnd::Failed(e);
                        }
                    }
                    Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                        Err(Failure::Protocol(e.to_string()))
                    }
                    Ok(Ok(Err(code))) => Err(exception(code)),
                    Ok(Ok(Ok(response))) => payload_of(span, response),
                };
                match outcome {
                    Ok(data) => fill_values(&slave.config, span, &data, &mut values, &mut errors),
                    Err(f) => {
                        f.count(c);
                        let text = f.describe();
                        for &i in &span.members {
                            errors.insert(slave.config.register[i].name.clone(), text.clone());
                        }
                    }
                }
            }
            log_health(&port, slave, &values, &errors);
            if values.is_empty() {
                continue;
            }
            let mut payload = serde_json::json!({
                "slave": slave.config.id,
                "name": slave.config.name,
                "ts": ts,
                "seq": slave.seq,
                "values": values,
            });
            if !errors.is_empty() {
                payload["errors"] = serde_json::json!(errors);
            }
            let reading = Reading {
                ingest_ms: now_ms(),
                source_kind: SourceKind::Serial,
                source: slave.source.clone(),
                topic: slave.topic.clone(),
                payload: Bytes::from(payload.to_string()),
                // Journaled durably like an acknowledged QoS 1 publish.
                qos: 1,
                retain: false,
            };
            match journal.append(vec![reading]).await {
                Ok(a) if a.accepted == 1 => add(&c.readings, 1),
                Ok(_) => {
                    if crate::telemetry::get(&c.rejected_full) == 0 {
                        tracing::warn!(%port, slave = slave.config.id, name = %slave.config.name, "The journal is full (on_full = \"reject\"): Modbus readings are lost until there is room (logged once).");
                    }
                    add(&c.rejected_full, 1);
                }
                Err(JournalError::Closed | JournalError::Failed) => return PortEnd::JournalClosed,
                Err(e) => {
                    tracing::error!(%port, error = %e, "Cannot journal a Modbus reading.");
                    return PortEnd::JournalClosed;
                }
            }
        }
    }
}

fn exception(code: ExceptionCode) -> Failure {
    let text = code.to_string().to_lowercase();
    Failure::Exception(u8::from(code), text)
}

/// What a successful answer carries.
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// The data of `response`, if it is the answer `span` asked for with enough items.
fn payload_of(span: &Span, response: Response) -> Result<Data, Failure> {
    let want = usize::from(span.count);
    let data = match (span.kind, response) {
        (RegisterKind::Coil, Response::ReadCoils(b))
        | (RegisterKind::Discrete, Response::ReadDiscreteInputs(b)) => Data::Bits(b),
        (RegisterKind::Holding, Response::ReadHoldingRegisters(w))
        | (RegisterKind::Input, Response::ReadInputRegisters(w)) => Data::Words(w),
        (_, other) => {
            return Err(Failure::Protocol(format!(
                "unexpected answer {:?}",
                other.function_code()
            )))
        }
    };
    // Bits come in whole bytes (so possibly more than asked); registers must match.
    let short = match &data {
        Data::Words(w) => w.len() != want,
        Data::Bits(b) => b.len() < want,
    };
    if short {
        return Err(Failure::Protocol(format!(
            "answer does not hold the {want} items asked for"
        )));
    }
    Ok(data)
}

/// Decodes the members of `span` from its answer into `values` (or `errors`).
fn fill_values(
    slave: &SlaveConfig,
    span: &Span,
    data: &Data,
    values: &mut BTreeMap<String, Value>,
    errors: &mut BTreeMap<String, String>,
) {
    for &i in &span.members {
        let r = &slave.register[i];
        let width = usize::from(r.data_type().width());
        // Members lie inside their span by construction; an offset that does not is
        // decoded as "too short" rather than trusted.
        let at = usize::from(r.address.checked_sub(span.start).unwrap_or(u16::MAX));
        let raw = match data {
            Data::Bits(b) => b
                .get(at)
                .map(|&v| Raw::Bool(v))
                .ok_or(decode::ValueError::Short),
            Data::Words(w) => w
                .get(at..at + width)
                .ok_or(decode::ValueError::Short)
                .and_then(|words| decode_registers(words, r.data_type(), r.byte_order())),
        };
        match raw.and_then(|raw| to_json(raw, r.scale, r.offset)) {
            Ok(v) => {
                values.insert(r.name.clone(), v);
            }
            Err(e) => {
                errors.insert(r.name.clone(), e.to_string());
            }
        }
    }
}

/// Logs a slave's changes of state, each once: answering, not answering (after
/// [`DOWN_AFTER`] empty polls), answering again, and each register's first exception.
fn log_health(
    port: &str,
    slave: &mut Polled,
    values: &BTreeMap<String, Value>,
    errors: &BTreeMap<String, String>,
) {
    let (id, name) = (slave.config.id, &slave.config.name);
    let h = &mut slave.health;
    for (register, e) in errors {
        if e.starts_with("exception") && h.exceptions_logged.insert(register.clone()) {
            tracing::warn!(%port, slave = id, %name, %register, error = %e, "Modbus register answers with an exception; check its kind and address (logged once).");
        }
    }
    if values.is_empty() {
        h.failed_in_row += 1;
        if h.failed_in_row >= DOWN_AFTER && !h.down {
            let first = errors
                .iter()
                .next()
                .map(|(r, e)| format!("{r}: {e}"))
                .unwrap_or_default();
            tracing::warn!(%port, slave = id, %name, polls = h.failed_in_row, error = %first, "Modbus slave does not answer; nothing is journaled for it until it does (logged once).");
            h.down = true;
        }
        return;
    }
    if h.down {
        tracing::info!(%port, slave = id, %name, failed_polls = h.failed_in_row, "Modbus slave answers again.");
    } else if !h.answered {
        tracing::info!(%port, slave = id, %name, values = values.len(), errors = errors.len(), "Modbus slave answers.");
    }
    h.answered = true;
    h.down = false;
    h.failed_in_row = 0;
}

/// The serial port as tokio-modbus sees it, counting the bytes received (see the module
/// doc) and discarding stale input before a request when asked to.
struct Tap {
    inner: SerialStream,
    /// Bytes read since the poller last reset it.
    received: Arc<AtomicU64>,
    /// Set by the poller before a request: discard the port's input queue before writing.
    flush_input: Arc<AtomicBool>,
}

impl Tap {
    fn new(inner: SerialStream) -> Self {
        Self {
            inner,
            received: Arc::new(AtomicU64::new(0)),
            flush_input: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.flush_input.swap(false, Ordering::Relaxed) {
            // Best effort: a port that cannot flush still works, and a real failure shows
            // in the write below.
            let _ = self.inner.clear(tokio_serial::ClearBuffer::Input);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_gap_follows_the_baud_rate_with_the_spec_floor() {
        assert_eq!(frame_gap(9600).as_micros(), 4010);
        assert_eq!(frame_gap(115_200), Duration::from_micros(1750));
        assert!(frame_gap(0) > Duration::ZERO);
    }

    #[test]
    fn a_short_or_mismatched_answer_is_a_protocol_error() {
        let span = Span {
            kind: RegisterKind::Input,
            start: 0,
            count: 3,
            members: vec![],
        };
        assert!(matches!(
            payload_of(&span, Response::ReadInputRegisters(vec![1, 2])),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            payload_of(&span, Response::ReadHoldingRegisters(vec![1, 2, 3])),
            Err(Failure::Protocol(_))
        ));
        assert!(payload_of(&span, Response::ReadInputRegisters(vec![1, 2, 3])).is_ok());
        let bits = Span {
            kind: RegisterKind::Coil,
            start: 0,
            count: 3,
            members: vec![],
        };
        assert!(payload_of(&bits, Response::ReadCoils(vec![true; 8])).is_ok());
    }
}

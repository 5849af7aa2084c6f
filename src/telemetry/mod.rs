//! Logging setup and the daemon's counters.
//!
//! Counters are plain atomics grouped per stage, shared through `Arc`; each stage bumps
//! its own. A periodic summary line reports them, so an operator reading the system
//! journal sees progress without a metrics stack.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the MQTT listener.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Connections that completed CONNECT.
    pub connections_accepted: AtomicU64,
    /// Connections open now.
    pub connections_active: AtomicU64,
    /// Connections refused (over `max_connections`, bad client id, bad CONNECT, failed
    /// TLS handshake or device authentication).
    pub connections_refused: AtomicU64,
    /// Readings handed to the journal.
    pub readings_received: AtomicU64,
    /// QoS 1 and 2 readings acknowledged after commit.
    pub readings_acknowledged: AtomicU64,
    /// Readings the journal refused because it is full (`on_full = "reject"`).
    pub rejected_full: AtomicU64,
    /// Packets that could not be parsed; the connection is closed.
    pub rejected_malformed: AtomicU64,
    /// Packets over `mqtt.max_packet`; the connection is closed.
    pub rejected_oversized: AtomicU64,
    /// Publishes to `$` topics, which are not readings and are not journaled.
    pub rejected_system_topic: AtomicU64,
    /// Publishes with an invalid topic (wildcards, empty, unknown alias).
    pub rejected_topic: AtomicU64,
    /// Publishes outside the device's rights (`[mqtt.auth]`); never journaled.
    pub rejected_not_authorized: AtomicU64,
    /// CONNECTs refused for an unknown device or a wrong or missing password.
    pub auth_bad_credentials: AtomicU64,
    /// CONNECTs refused as not authorized (anonymous while that is off).
    pub auth_not_authorized: AtomicU64,
    /// CONNECTs refused because the client id is not the device's name.
    pub auth_client_id: AtomicU64,
    /// SUBSCRIBE filters refused as outside the device's rights.
    pub subscribe_not_authorized: AtomicU64,
    /// Connections closed because a reload changed or removed their device's entry.
    pub auth_revoked: AtomicU64,
}

/// Counters of one forwarder.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Records the upstream acknowledged.
    pub sent: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Failed send attempts.
    pub failures: AtomicU64,
    /// Records skipped because they failed their checksum in the journal.
    pub corrupt_skipped: AtomicU64,
    /// Records removed by `drop-oldest` or `journal.max_age` before this upstream sent them
    /// (the forwarder sees a hole and cannot tell which).
    pub lost_to_drop_oldest: AtomicU64,
    /// 1 while the last attempt succeeded.
    pub connected: AtomicU64,
    /// Batches sent again after a failed attempt (a failure at shutdown is not retried).
    pub retries: AtomicU64,
    /// Records not sent because the upstream already had them (the Kafka sink's tail read
    /// after a restart or an unknown outcome found them there).
    pub duplicates_skipped: AtomicU64,
    /// Gap markers the upstream acknowledged: each stands for readings `drop-oldest` removed
    /// before this upstream had them.
    pub gap_markers_sent: AtomicU64,
    /// Readings those gap markers stand for.
    pub gap_readings: AtomicU64,
    /// Readings `on_full = "thin"` removed before this upstream sent them (holes inside a
    /// thinned span: a lower resolution, not a loss), counted as the forwarder reads past
    /// them.
    pub thinned_readings: AtomicU64,
    /// Thinned markers the upstream acknowledged: each announces a span of readings held
    /// at a lower resolution.
    pub thinned_markers_sent: AtomicU64,
    /// Bytes tidegate wrote to this upstream's sockets: Kafka requests as sent (compressed,
    /// framed, under TLS as TLS records), for MQTT the encoded PUBLISH packets. What
    /// `bandwidth` limits.
    pub wire_sent: AtomicU64,
    /// Bytes read from this upstream's sockets (Kafka responses, MQTT PUBACKs).
    pub wire_received: AtomicU64,
    /// While the upstream is failing, the last attempt's error (as logged), for
    /// `tidegate status`; cleared by the next delivery.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// The link's lanes, limits, budget and windows (constrained uplinks).
    pub uplink: UplinkCounters,
}

impl UplinkCounters {
    /// The live lane's counters, if the upstream has a live lane now.
    pub fn live_lane(&self) -> Option<&std::sync::Arc<ForwardCounters>> {
        (self.live_configured.load(Ordering::Relaxed) == 1)
            .then(|| self.live.get())
            .flatten()
    }
}

/// The constrained-uplink state of one upstream, for `/metrics`, `tidegate status` and the
/// status page: kept by its forwarder and live lane (`crate::forward::uplink`).
///
/// Times are Unix milliseconds, 0 meaning "none". Limits of 0 mean "not set".
#[derive(Debug, Default)]
pub struct UplinkCounters {
    /// The live lane's own counters (`sent`, `failures`, wire bytes), set once the upstream
    /// has a live lane.
    pub live: std::sync::OnceLock<std::sync::Arc<ForwardCounters>>,
    /// 1 while the upstream's configuration has a live lane (a reload may remove it; its
    /// counters above are kept for when it comes back).
    pub live_configured: AtomicU64,
    /// Urgent readings the live lane delivered (also counted in the live lane's `sent`).
    pub live_urgent_sent: AtomicU64,
    /// Live readings not sent because a newer one of the same topic replaced them before
    /// the interval came, or because the live lane was failing or behind.
    pub live_skipped: AtomicU64,
    /// 1 while the live lane sends (the backlog is behind by more than `live_after`, or
    /// waits for a window or the budget).
    pub live_active: AtomicU64,
    /// `ingest_ms` of the newest reading the backlog lane delivered.
    pub backlog_newest_ms: AtomicU64,
    /// `ingest_ms` of the newest reading the live lane delivered.
    pub live_newest_ms: AtomicU64,
    /// `ingest_ms` of the oldest reading not yet delivered to the history (0: caught up).
    pub oldest_unsent_ms: AtomicU64,
    /// `bandwidth` in bytes per second.
    pub bandwidth: AtomicU64,
    /// `budget` in bytes per period.
    pub budget_limit: AtomicU64,
    /// Bytes used in the current budget period (sent and received, both lanes).
    pub budget_used: AtomicU64,
    /// Bytes left for the backlog before it pauses (the budget minus `live_reserve`).
    pub budget_backlog_limit: AtomicU64,
    /// When the current budget period ends.
    pub budget_period_end_ms: AtomicU64,
    /// When the budget runs out at the rate used so far in the period (0: not in it).
    pub budget_exhaustion_ms: AtomicU64,
    /// 1 while the backlog waits for the next budget period.
    pub budget_spent: AtomicU64,
    /// 1 when send windows are configured.
    pub windows_configured: AtomicU64,
    /// 1 while a send window is open (or none is configured).
    pub window_open: AtomicU64,
    /// When the window state next changes (0: never, or no windows).
    pub window_change_ms: AtomicU64,
    /// Why the backlog waits now, for status ("waiting for window (opens in 3h12m)"); none
    /// while it may send.
    pub backlog_held: std::sync::Mutex<Option<String>>,
}

/// Counters of one serial port (`[[serial]]`).
#[derive(Debug, Default)]
pub struct SerialCounters {
    /// 1 while the port is open.
    pub connected: AtomicU64,
    /// Frames the journal committed.
    pub frames_accepted: AtomicU64,
    /// Bytes read from the port.
    pub bytes: AtomicU64,
    /// Times the port was opened again after it was lost or missing (not the first open).
    pub reconnects: AtomicU64,
    /// Frames over `max_frame`.
    pub rejected_oversized: AtomicU64,
    /// `cobs` frames whose CRC-16 does not match.
    pub rejected_bad_crc: AtomicU64,
    /// `cobs` frames that are not valid COBS (line noise, a frame cut short).
    pub rejected_invalid_cobs: AtomicU64,
    /// `cobs` frames too short to hold a CRC.
    pub rejected_too_short: AtomicU64,
    /// Frames cut off by the port vanishing (or shutdown) before their delimiter.
    pub rejected_unterminated: AtomicU64,
    /// `lines` that are not UTF-8 (line noise, a wrong baud rate).
    pub rejected_not_utf8: AtomicU64,
    /// Frames the journal refused because it is full (`on_full = "reject"`); a serial
    /// device cannot be asked to resend, so these are lost.
    pub rejected_full: AtomicU64,
}

impl SerialCounters {
    /// The counter of a rejection reason (as `FrameError::reason` names it), if it has one.
    pub fn rejected(&self, reason: &str) -> Option<&AtomicU64> {
        Some(match reason {
            "oversized" => &self.rejected_oversized,
            "bad_crc" => &self.rejected_bad_crc,
            "invalid_cobs" => &self.rejected_invalid_cobs,
            "too_short" => &self.rejected_too_short,
            "unterminated" => &self.rejected_unterminated,
            "not_utf8" => &self.rejected_not_utf8,
            "full" => &self.rejected_full,
            _ => return None,
        })
    }

    /// Every rejection reason with its count, in a fixed order.
    pub fn rejections(&self) -> [(&'static str, u64); 7] {
        [
            ("oversized", get(&self.rejected_oversized)),
            ("bad_crc", get(&self.rejected_bad_crc)),
            ("invalid_cobs", get(&self.rejected_invalid_cobs)),
            ("too_short", get(&self.rejected_too_short)),
            ("unterminated", get(&self.rejected_unterminated)),
            ("not_utf8", get(&self.rejected_not_utf8)),
            ("full", get(&self.rejected_full)),
        ]
    }

    /// One line for the progress log: `accepted 120, 9.4 KiB, rejected 2 (bad_crc 2),
    /// reconnects 1, open`.
    pub fn summary(&self) -> String {
        let rejected: Vec<String> = self
            .rejections()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        format!(
            "accepted {}, {}, rejected {}{}, reconnects {}, {}",
            get(&self.frames_accepted),
            bytesize::ByteSize::b(get(&self.bytes)),
            self.rejections().iter().map(|(_, n)| n).sum::<u64>(),
            if rejected.is_empty() {
                String::new()
            } else {
                format!(" ({})", rejected.join(", "))
            },
            get(&self.reconnects),
            if get(&self.connected) == 1 {
                "open"
            } else {
                "not open"
            }
        )
    }
}

/// Counters of one `[[modbus]]` port and its slaves.
#[derive(Debug)]
pub struct ModbusCounters {
    /// The port's path, for the progress line.
    pub port: String,
    /// 1 while the port is open.
    pub port_open: AtomicU64,
    /// Times the port failed while open or could not be opened.
    pub port_failures: AtomicU64,
    /// Per slave, in config order: its name and counters.
    pub slaves: Vec<(String, ModbusSlaveCounters)>,
}

impl ModbusCounters {
    /// Zeroed counters for `port` and the slaves named `slaves`.
    pub fn new(port: String, slaves: impl IntoIterator<Item = String>) -> Self {
        Self {
            port,
            port_open: AtomicU64::new(0),
            port_failures: AtomicU64::new(0),
            slaves: slaves
                .into_iter()
                .map(|n| (n, ModbusSlaveCounters::default()))
                .collect(),
        }
    }
}

impl std::fmt::Display for ModbusCounters {
    /// `PORT (open): NAME: R readings, T timeouts, C crc errors, E exceptions; NAME: …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if get(&self.port_open) == 1 {
            "open"
        } else {
            "not open"
        };
        write!(f, "{} ({state}):", self.port)?;
        for (i, (name, c)) in self.slaves.iter().enumerate() {
            write!(
                f,
                "{} {name}: {} readings, {} timeouts, {} crc errors, {} exceptions",
                if i == 0 { "" } else { ";" },
                get(&c.readings),
                get(&c.timeouts),
                get(&c.crc_errors),
                get(&c.exceptions)
            )?;
        }
        Ok(())
    }
}

/// Counters of one polled Modbus slave.
#[derive(Debug, Default)]
pub struct ModbusSlaveCounters {
    /// Polls made while the port was open.
    pub polls: AtomicU64,
    /// Readings journaled: polls that read at least one value.
    pub readings: AtomicU64,
    /// Requests the slave did not answer within `timeout`.
    pub timeouts: AtomicU64,
    /// Answers that arrived but failed their CRC check (or were cut short).
    pub crc_errors: AtomicU64,
    /// Exception responses (illegal data address, device failure, …).
    pub exceptions: AtomicU64,
    /// Answers with a valid CRC that did not fit the request (other slave, function or
    /// length).
    pub protocol_errors: AtomicU64,
    /// Readings the journal refused because it is full (`on_full = "reject"`); a poll
    /// cannot be repeated, so they are lost.
    pub rejected_full: AtomicU64,
}

/// Counters of one `[[mqtt_subscribe]]` connection.
#[derive(Debug, Default)]
pub struct MqttSubscribeCounters {
    /// 1 while connected to the broker.
    pub connected: AtomicU64,
    /// Messages the broker delivered (each redelivery counts again).
    pub received: AtomicU64,
    /// Messages journaled and then acknowledged to the broker.
    pub acknowledged: AtomicU64,
    /// Messages the journal refused because it is full (`on_full = "reject"`); not
    /// acknowledged, so the broker redelivers them.
    pub rejected_full: AtomicU64,
    /// Messages this gateway forwarded itself (MQTT 5 `tidegate-gateway` property equal
    /// to our id): acknowledged, never journaled.
    pub loop_dropped: AtomicU64,
    /// Messages with an unusable topic (not UTF-8, wildcard, `$`): acknowledged, dropped.
    pub rejected_topic: AtomicU64,
    /// Connection attempts after the first (after a loss, a refusal or a full journal).
    pub reconnects: AtomicU64,
}

impl MqttSubscribeCounters {
    /// One line for the progress log: `received 120, acknowledged 118, rejected 0,
    /// loop_dropped 2, bad topic 0, reconnects 1, connected`.
    pub fn summary(&self) -> String {
        format!(
            "received {}, acknowledged {}, rejected {}, loop_dropped {}, bad topic {}, reconnects {}, {}",
            get(&self.received),
            get(&self.acknowledged),
            get(&self.rejected_full),
            get(&self.loop_dropped),
            get(&self.rejected_topic),
            get(&self.reconnects),
            if get(&self.connected) == 1 {
                "connected"
            } else {
                "not connected"
            }
        )
    }
}

/// Upper bounds, in seconds, of [`LatencyHistogram`]'s buckets: from a fast SSD's fsync
/// (well under a millisecond) to an SD card's worst (seconds).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram of plain atomics, with fixed buckets ([`LATENCY_BUCKETS`]).
///
/// Kept here rather than in a metrics crate so that the code that measures (the journal
/// writer) depends on nothing but atomics; `/metrics` exports it at scrape time.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Observations.
    count: AtomicU64,
    /// Sum of the observations, in microseconds (an f64 sum cannot be an atomic).
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        add(&self.buckets[i], 1);
        add(&self.count, 1);
        add(&self.sum_micros, d.as_micros() as u64);
    }

    /// `(sum in seconds, count, (upper bound, observations) per bucket)`, the buckets not
    /// cumulative and the last one's bound `+Inf`. Read without a lock, so a scrape during
    /// a commit may see the count one off a bucket's; Prometheus tolerates that.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let out = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                    get(b),
                )
            })
            .collect();
        (get(&self.sum_micros) as f64 / 1e6, get(&self.count), out)
    }
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// `level` plus a quieter level for each chatty library it says nothing about:
/// tokio-modbus logs every byte it drops from a corrupt answer at WARN (the Modbus poller
/// already counts CRC errors per slave and logs each slave's state changes once); rskafka
/// and rumqttd log every reconnect attempt, which would repeat for as long as an upstream
/// is down (the forwarder logs the outage itself, then once every 30 s). So a `log.level`
/// of plain `"info"` does not bring their lines back.
fn quiet_libraries(level: &str) -> String {
    let mut spec = level.to_owned();
    for (library, quiet) in [
        ("tokio_modbus", "off"),
        ("rskafka", "error"),
        ("rumqttd", "error"),
    ] {
        if !level.contains(library) {
            spec.push_str(&format!(",{library}={quiet}"));
        }
    }
    spec
}

/// The installed subscriber's filter, swappable at run time (SIGHUP applies `log.level`).
struct LogControl {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    /// `RUST_LOG` was set: it wins over `log.level`, at start and on reload, so an operator
    /// debugging with it is not overridden by the file.
    from_env: bool,
    /// The filter in force now, to log changes only.
    current: std::sync::Mutex<String>,
    /// The `run --log` filter, in force when `log.level` is unset.
    initial: String,
}

static LOG_CONTROL: std::sync::OnceLock<LogControl> = std::sync::OnceLock::new();

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// A terminal: full human format with colours.
    Human,
    /// Under systemd (`JOURNAL_STREAM` set): compact `key=value` lines, no colours and no
    /// timestamp, since journald stamps every line itself.
    Journald,
    /// A pipe or file: compact lines with timestamps, no colours.
    Plain,
}

/// Picks the format for stderr. `JOURNAL_STREAM` is what systemd sets when stderr is
/// connected to journald; it wins over a terminal check (stderr is a socket there).
pub fn log_format() -> LogFormat {
    use std::io::IsTerminal;
    if std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty()) {
        LogFormat::Journald
    } else if std::io::stderr().is_terminal() {
        LogFormat::Human
    } else {
        LogFormat::Plain
    }
}

/// Installs the global tracing subscriber: `RUST_LOG` (or `level`) filters, in the format
/// [`log_format`] picks. The filter can later be replaced with [`set_log_filter`].
pub fn init_logging(level: &str) {
    use tracing_subscriber::layer::{Layered, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{reload, EnvFilter, Layer, Registry};
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let spec = env.clone().unwrap_or_else(|| level.to_owned());
    let (spec, filter) = match tracing_subscriber::EnvFilter::try_new(quiet_libraries(&spec)) {
        Ok(f) => (spec, f),
        Err(_) => (
            level.to_owned(),
            tracing_subscriber::EnvFilter::new(quiet_libraries(level)),
        ),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
    let fmt: Box<dyn Layer<Filtered> + Send + Sync> = match log_format() {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Journald => fmt.with_ansi(false).without_time().compact().boxed(),
        LogFormat::Plain => fmt.with_ansi(false).compact().boxed(),
    };
    // A subscriber may already be installed (tests); keep it, and keep no handle.
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = LOG_CONTROL.set(LogControl {
            handle,
            from_env: env.is_some(),
            current: std::sync::Mutex::new(spec),
            initial: level.to_owned(),
        });
    }
}

/// Why a log filter could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogFilterError {
    #[error("log.level: {spec:?} is not a valid filter: {message}")]
    Invalid { spec: String, message: String },
}

/// Checks a filter (`log.level`) without applying it, for config validation.
pub fn check_log_filter(spec: &str) -> Result<(), LogFilterError> {
    tracing_subscriber::EnvFilter::try_new(quiet_libraries(spec))
        .map(|_| ())
        .map_err(|e| LogFilterError::Invalid {
            spec: spec.to_owned(),
            message: e.to_string(),
        })
}

/// Replaces the log filter of the subscriber [`init_logging`] installed with `log.level`
/// (at start and on SIGHUP); `None` restores the `run --log` filter. Ignored while
/// `RUST_LOG` is set or when no subscriber of ours is installed. A change is logged at
/// INFO once it is in force.
pub fn set_log_filter(spec: Option<&str>) -> Result<(), LogFilterError> {
    let Some(control) = LOG_CONTROL.get() else {
        if let Some(spec) = spec {
            check_log_filter(spec)?;
        }
        return Ok(());
    };
    let spec = spec.unwrap_or(&control.initial);
    check_log_filter(spec)?;
    if control.from_env {
        tracing::info!(
            log_level = spec,
            "RUST_LOG is set; it keeps precedence over log.level."
        );
        return Ok(());
    }
    let mut current = control.current.lock().unwrap_or_else(|p| p.into_inner());
    if *current == spec {
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_new(quiet_libraries(spec)).map_err(|e| {
        LogFilterError::Invalid {
            spec: spec.to_owned(),
            message: e.to_string(),
        }
    })?;
    if control.handle.reload(filter).is_ok() {
        tracing::info!(from = %current, to = spec, "Log level changed.");
        *current = spec.to_owned();
    }
    Ok(())
}

#[cfg(test)]
mod log_filter_tests {
    use super::*;

    #[test]
    fn chatty_libraries_stay_quiet_unless_the_filter_names_them() {
        assert_eq!(
            quiet_libraries("info"),
            "info,tokio_modbus=off,rskafka=error,rumqttd=error"
        );
        assert_eq!(
            quiet_libraries("info,rskafka=debug"),
            "info,rskafka=debug,tokio_modbus=off,rumqttd=error"
        );
        assert!(check_log_filter("debug").is_ok());
        assert!(check_log_filter("tidegate=nonsense-level").is_err());
    }
}

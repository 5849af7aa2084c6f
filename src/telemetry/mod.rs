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
    /// Connections refused (over `max_connections`, bad client id, bad CONNECT).
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
    /// Records dropped by `drop-oldest` before this upstream sent them.
    pub lost_to_drop_oldest: AtomicU64,
    /// 1 while the last attempt succeeded.
    pub connected: AtomicU64,
    /// Records not sent because the upstream already had them (the Kafka sink's tail read
    /// after a restart or an unknown outcome found them there).
    pub duplicates_skipped: AtomicU64,
    /// Gap markers the upstream acknowledged: each stands for readings `drop-oldest` removed
    /// before this upstream had them.
    pub gap_markers_sent: AtomicU64,
    /// Readings those gap markers stand for.
    pub gap_readings: AtomicU64,
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

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// `level` plus `tokio_modbus=off` unless it says something about tokio_modbus itself:
/// tokio-modbus logs every byte it drops from a corrupt answer at WARN, and the Modbus
/// poller already counts CRC errors per slave and logs each slave's state changes once.
fn quiet_libraries(level: &str) -> String {
    if level.contains("tokio_modbus") {
        level.to_owned()
    } else {
        format!("{level},tokio_modbus=off")
    }
}

/// Installs the global tracing subscriber: `RUST_LOG` (or `level`) filters; human format
/// on a terminal, compact lines without ANSI colours otherwise (journald adds timestamps).
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| level.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(quiet_libraries(&spec))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_libraries(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if std::io::stderr().is_terminal() {
        builder.with_writer(std::io::stderr).try_init()
    } else {
        builder
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .compact()
            .try_init()
    };
    // A subscriber may already be installed (tests); keep it.
    let _ = result;
}

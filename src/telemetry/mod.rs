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
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Installs the global tracing subscriber: `RUST_LOG` (or `level`) filters; human format
/// on a terminal, compact lines without ANSI colours otherwise (journald adds timestamps).
pub fn init_logging(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
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

//! Wires the daemon together and takes it apart again in the right order.
//!
//! Start-up: open the journal (refusing a newer format), bind the MQTT listener (a taken
//! port is a start-up error, not a silent retry), start one forwarder per upstream and one
//! task per `[[serial]]` port and per `[[modbus]]` bus (a missing port is waited for, never
//! a start-up error) and per `[[mqtt_subscribe]]` broker (an unreachable broker is retried,
//! never a start-up error). Kafka and MQTT upstreams run side by side from the one journal,
//! each forwarder with its own cursor.
//!
//! Shutdown, on SIGTERM or SIGINT, keeps invariant 1 while stopping:
//! 1. the listener stops accepting and every connection stops reading; each one still
//!    waits for the commits of what it already handed to the journal and writes those
//!    acknowledgements before closing; serial ports stop reading and wait for the commits
//!    of the frames they already handed to the journal; Modbus pollers stop between
//!    requests (a reading already handed to the journal is awaited); MQTT subscriptions
//!    stop taking messages, acknowledge to their broker what was committed and disconnect
//!    (the broker keeps the rest in the persistent session);
//! 2. forwarders finish the batch in flight and store their cursors;
//! 3. the last journal handle is dropped and the writer thread commits whatever is queued,
//!    then exits. Only then does the process exit 0.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, UpstreamKind};
use crate::forward::Forwarder;
use crate::ingest::broker;
use crate::ingest::local_bus::{BusError, LocalBus};
use crate::ingest::modbus;
use crate::ingest::mqtt_subscribe;
use crate::ingest::serial;
use crate::journal::{Journal, JournalError};
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mqtt::MqttSink;
use crate::telemetry::{
    get, ForwardCounters, IngestCounters, ModbusCounters, MqttSubscribeCounters, SerialCounters,
};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Listen(#[from] broker::ListenError),
    #[error("cannot start the local subscription bus: {0} (set mqtt.local_subscriptions = false to run without it)")]
    Bus(#[from] BusError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the journal writer failed; tidegate stopped so that it restarts on a fresh open (see the error above)")]
    JournalFailed,
}

/// Longest the listener's connections get to write their last acknowledgements.
const INGEST_DRAIN: Duration = Duration::from_secs(10);

/// How often the progress line is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the daemon until a signal (or a fatal journal error).
pub async fn run(config: Config) -> Result<(), AppError> {
    let names: Vec<String> = config.upstream.iter().map(|u| u.name.clone()).collect();
    let (journal, writer) = Journal::open(&config.journal, &names)?;
    let listener = broker::bind(config.mqtt.listen).await?;
    let local = listener.local_addr().unwrap_or(config.mqtt.listen);

    let summary = journal.summary()?;
    tracing::info!(
        gateway = %config.gateway.id,
        journal = %config.journal.dir.display(),
        records = summary.records,
        max_size = %config.journal.max_size,
        on_full = %config.journal.on_full,
        mqtt = %local,
        "tidegate started: MQTT listener ready, journal open."
    );
    if config.upstream.is_empty() {
        tracing::warn!("No upstream configured: readings are kept in the journal (up to journal.max_size, then journal.on_full applies) until an [[upstream]] is added.");
    }

    let ingest_stop = CancellationToken::new();
    let forward_stop = CancellationToken::new();
    let ingest_tasks = TaskTracker::new();
    let forward_tasks = TaskTracker::new();
    let ingest_counters = Arc::new(IngestCounters::default());

    let bus = if config.mqtt.local_subscriptions {
        Some(Arc::new(LocalBus::start_with(config.mqtt.max_connections)?))
    } else {
        None
    };
    ingest_tasks.spawn(broker::serve(
        listener,
        config.mqtt.clone(),
        journal.clone(),
        bus,
        ingest_counters.clone(),
        ingest_stop.clone(),
        ingest_tasks.clone(),
    ));

    let mut serial_counters = Vec::new();
    for port in &config.serial {
        let counters = Arc::new(SerialCounters::default());
        serial_counters.push((port.source(), counters.clone()));
        ingest_tasks.spawn(serial::run_port(
            port.clone(),
            journal.clone(),
            counters,
            ingest_stop.clone(),
        ));
    }

    // Modbus buses: like serial ports, a missing port is retried, never a start-up error.
    let mut modbus_counters = Vec::new();
    for bus in &config.modbus {
        let counters = Arc::new(modbus::counters_for(bus));
        modbus_counters.push(counters.clone());
        ingest_tasks.spawn(modbus::run(
            bus.clone(),
            journal.clone(),
            counters,
            ingest_stop.clone(),
        ));
    }

    // MQTT subscriptions: an unreachable broker is retried, never a start-up error.
    let mut subscribe_counters = Vec::new();
    for (index, sub) in config.mqtt_subscribe.iter().enumerate() {
        let counters = Arc::new(MqttSubscribeCounters::default());
        subscribe_counters.push((sub.url.clone(), counters.clone()));
        ingest_tasks.spawn(mqtt_subscribe::run(
            mqtt_subscribe::Subscription {
                index,
                config: sub.clone(),
                gateway_id: config.gateway.id.clone(),
                max_packet: config.mqtt.max_packet.as_u64() as usize,
                journal: journal.clone(),
                counters,
            },
            ingest_stop.clone(),
        ));
    }

    let mut forward_counters = Vec::new();
    for upstream in &config.upstream {
        let counters = Arc::new(ForwardCounters::default());
        forward_counters.push((upstream.name.clone(), counters.clone()));
        match upstream.kind {
            UpstreamKind::Kafka => {
                let sink = KafkaSink::new(upstream, &config.gateway.id);
                let fwd = Forwarder::new(upstream.clone(), journal.clone(), sink, counters);
                forward_tasks.spawn(fwd.run(forward_stop.clone()));
            }
            UpstreamKind::Mqtt => match MqttSink::new(upstream, &config.gateway.id) {
                Ok(sink) => {
                    let fwd = Forwarder::new(upstream.clone(), journal.clone(), sink, counters);
                    forward_tasks.spawn(fwd.run(forward_stop.clone()));
                }
                // Validation refuses such a url; this only guards a hand-built config.
                Err(e) => {
                    tracing::error!(upstream = %upstream.name, error = %e, "MQTT upstream not started: bad url; its readings stay in the journal.")
                }
            },
        }
    }

    let result = wait_for_stop(
        &journal,
        &ingest_counters,
        &forward_counters,
        &serial_counters,
        &modbus_counters,
        &subscribe_counters,
    )
    .await;

    // 1. Ingest: stop reading, write the acks of everything already journaled.
    tracing::info!("Shutting down: no new connections; acknowledging what was received.");
    ingest_stop.cancel();
    ingest_tasks.close();
    if tokio::time::timeout(INGEST_DRAIN, ingest_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("Some device connections did not finish within {INGEST_DRAIN:?}; their unacknowledged readings stay with the devices.");
    }
    // 2. Forwarders: finish the batch in flight.
    forward_stop.cancel();
    forward_tasks.close();
    forward_tasks.wait().await;
    // 3. Journal: the writer exits once the last handle is gone and its queue is empty.
    let appended = get(&journal.counters().appended);
    drop(journal);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!(readings_journaled = appended, "tidegate stopped.");
    result
}

/// Waits for SIGTERM/SIGINT, logging progress, or for the journal to fail.
async fn wait_for_stop(
    journal: &Journal,
    ingest: &IngestCounters,
    upstreams: &[(String, Arc<ForwardCounters>)],
    serial_ports: &[(String, Arc<SerialCounters>)],
    modbus_buses: &[Arc<ModbusCounters>],
    subscriptions: &[(String, Arc<MqttSubscribeCounters>)],
) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_progress = Instant::now();
    let mut last_received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received."); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT received."); return Ok(()); }
            _ = tick.tick() => {}
        }
        if journal.is_failed() {
            return Err(AppError::JournalFailed);
        }
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            let secs = last_progress.elapsed().as_secs_f64();
            last_progress = Instant::now();
            let received = get(&ingest.readings_received);
            let c = journal.counters();
            let next = get(&c.next_seq);
            let per_upstream: Vec<String> = upstreams
                .iter()
                .map(|(name, f)| {
                    format!(
                        "{name}: sent {} ({})",
                        get(&f.sent),
                        if f.connected.load(Ordering::Relaxed) == 1 {
                            "connected"
                        } else {
                            "not connected"
                        }
                    )
                })
                .collect();
            tracing::info!(
                devices = get(&ingest.connections_active),
                received,
                rate_per_s = ((received - last_received) as f64 / secs).round(),
                journal_records = next.saturating_sub(get(&c.first_seq).max(1)),
                journal_bytes = get(&c.bytes_held),
                dropped_full = get(&c.dropped_full),
                rejected_full = get(&c.rejected_full),
                upstreams = %per_upstream.join(", "),
                "Progress."
            );
            last_received = received;
            if !serial_ports.is_empty() {
                let ports: Vec<String> = serial_ports
                    .iter()
                    .map(|(port, c)| format!("{port}: {}", c.summary()))
                    .collect();
                tracing::info!(ports = %ports.join("; "), "Serial progress.");
            }
            for bus in modbus_buses {
                tracing::info!(bus = %bus, "Modbus progress.");
            }
            if !subscriptions.is_empty() {
                let subs: Vec<String> = subscriptions
                    .iter()
                    .map(|(url, c)| format!("{url}: {}", c.summary()))
                    .collect();
                tracing::info!(subscriptions = %subs.join("; "), "MQTT subscription progress.");
            }
        }
    }
}

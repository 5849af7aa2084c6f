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

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::forward::Forwarders;
use crate::health::{supervise, Health, JournalState, TaskGuard};
use crate::ingest::listener;
use crate::ingest::local_bus::{BusError, LocalBus};
use crate::ingest::modbus;
use crate::ingest::mqtt_subscribe;
use crate::ingest::serial;
use crate::journal::{Journal, JournalError};
use crate::service::reload::{reload, Outcome as ReloadOutcome};
use crate::service::Notifier;
use crate::telemetry::{
    get, IngestCounters, ModbusCounters, MqttSubscribeCounters, SerialCounters,
};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("cannot start the local subscription bus: {0} (set mqtt.local_subscriptions = false to run without it)")]
    Bus(#[from] BusError),
    #[error(transparent)]
    DeviceAuth(#[from] crate::ingest::auth::AuthError),
    #[error(transparent)]
    DeviceTls(#[from] crate::ingest::tls::TlsError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the journal writer failed; tidegate stopped so that it restarts on a fresh open (see the error above)")]
    JournalFailed,
}

/// Longest the listener's connections get to write their last acknowledgements.
const INGEST_DRAIN: Duration = Duration::from_secs(10);

/// How often the progress line is logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the daemon until a signal (or a fatal journal error), on a configuration that
/// SIGHUP cannot re-read.
pub async fn run(config: Config) -> Result<(), AppError> {
    run_from(config, None).await
}

/// Runs the daemon until a signal (or a fatal journal error). `config_path` is the file
/// `config` came from, which SIGHUP re-reads (see [`crate::service::reload`]).
pub async fn run_from(config: Config, config_path: Option<PathBuf>) -> Result<(), AppError> {
    // Before anything logs much: log.level from the file, when set, replaces --log.
    if config.log.level.is_some() {
        if let Err(e) = crate::telemetry::set_log_filter(config.log.level.as_deref()) {
            tracing::warn!(error = %e, "log.level not applied.");
        }
    }
    let names: Vec<String> = config.upstream.iter().map(|u| u.name.clone()).collect();
    let (journal, writer) = Journal::open(&config.journal, &names)?;
    let listener = listener::bind(config.mqtt.listen).await?;
    let local = listener.local_addr().unwrap_or(config.mqtt.listen);
    // Device authentication and the TLS listener: a bad credentials file, certificate or
    // key is a start-up error naming the file.
    let device_auth = crate::ingest::auth::AuthState::load(&config.mqtt)?;
    if device_auth.enabled() {
        tracing::info!(
            devices = device_auth.devices(),
            allow_anonymous = config.mqtt.auth.allow_anonymous,
            "Device authentication on: devices log in with a password or a client certificate."
        );
    } else if let Some(open) = [Some(local), config.mqtt.tls_listen]
        .into_iter()
        .flatten()
        .find(|a| !a.ip().is_loopback())
    {
        // Not an error: a closed plant network may be the operator's choice. But anyone who
        // can reach this address may publish anywhere, so it is said at every start.
        tracing::warn!(
            listen = %open,
            "Device authentication is off and the MQTT listener is reachable beyond this machine: any device on the network may connect and publish to any topic. Set [mqtt.auth] credentials_file (see `tidegate passwd`) or mqtt.tls_client_ca."
        );
    }
    let device_auth = crate::ingest::auth::AuthHub::new(device_auth);
    let tls_listener = match (
        config.mqtt.tls_listen,
        crate::ingest::tls::Acceptor::from_config(&config.mqtt)?,
    ) {
        (Some(addr), Some(acceptor)) => {
            let l = listener::bind(addr).await?;
            tracing::info!(mqtt_tls = %l.local_addr().unwrap_or(addr), client_ca = config.mqtt.tls_client_ca.is_some(), "MQTT TLS listener ready.");
            Some((l, acceptor))
        }
        _ => None,
    };
    // Bound now, before any task starts, so a taken port is a start-up error naming
    // http.listen rather than a monitoring endpoint that silently never appears.
    let http_listener = if config.http.enabled {
        Some(crate::http::bind(config.http.listen).await?)
    } else {
        None
    };
    let started_ms = crate::journal::now_ms();

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

    // Task liveness, shared with the HTTP listener's /health.
    let health = crate::health::Health::new();
    health.set_journal_probe(journal_probe(journal.watch(), config.journal.on_full));
    // The writer is a thread inside the journal; the main loop settles this guard when the
    // journal reports it failed.
    let writer_guard = health.register("journal-writer", true);
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
    ingest_tasks.spawn(supervise(
        health.register("mqtt-listener", true),
        ingest_stop.clone(),
        listener::serve_with(
            listener::Listeners {
                tcp: listener,
                tls: tls_listener,
            },
            config.mqtt.clone(),
            journal.clone(),
            bus,
            ingest_counters.clone(),
            device_auth.clone(),
            ingest_stop.clone(),
            ingest_tasks.clone(),
        ),
    ));

    let mut serial_counters = Vec::new();
    for port in &config.serial {
        let counters = Arc::new(SerialCounters::default());
        serial_counters.push((port.source(), counters.clone()));
        // Ingest tasks other than the listener are not essential: one port's task ending
        // is shown (status, /health's task list) but restarting the daemon would not fix it.
        ingest_tasks.spawn(supervise(
            health.register(&format!("serial:{}", port.source()), false),
            ingest_stop.clone(),
            serial::run_port(port.clone(), journal.clone(), counters, ingest_stop.clone()),
        ));
    }

    // Modbus buses: like serial ports, a missing port is retried, never a start-up error.
    let mut modbus_counters = Vec::new();
    for bus in &config.modbus {
        let counters = Arc::new(modbus::counters_for(bus));
        modbus_counters.push(counters.clone());
        ingest_tasks.spawn(supervise(
            health.register(&format!("modbus:{}", bus.port.display()), false),
            ingest_stop.clone(),
            modbus::run(bus.clone(), journal.clone(), counters, ingest_stop.clone()),
        ));
    }

    // MQTT subscriptions: an unreachable broker is retried, never a start-up error.
    let mut subscribe_counters = Vec::new();
    for (index, sub) in config.mqtt_subscribe.iter().enumerate() {
        let counters = Arc::new(MqttSubscribeCounters::default());
        subscribe_counters.push((sub.client.url.clone(), counters.clone()));
        ingest_tasks.spawn(supervise(
            health.register(&format!("mqtt_subscribe:{}", sub.client.url), false),
            ingest_stop.clone(),
            mqtt_subscribe::run(
                mqtt_subscribe::Subscription {
                    index,
                    config: sub.clone(),
                    gateway_id: config.gateway.id.clone(),
                    max_packet: config.mqtt.max_packet.as_u64() as usize,
                    journal: journal.clone(),
                    counters,
                },
                ingest_stop.clone(),
            ),
        ));
    }

    // One forwarder per upstream; a SIGHUP may stop, restart or add some of them.
    let mut forwarders = Forwarders::start(
        journal.clone(),
        &config.gateway.id,
        &config.upstream,
        health.clone(),
        forward_stop.clone(),
        forward_tasks.clone(),
    );
    let forward_counters = forwarders.counters();

    // The monitoring listener reads the same counters the stages bump; it holds a journal
    // handle, so it is stopped before the journal is closed (step 3 below).
    let http_stop = CancellationToken::new();
    let http_tasks = TaskTracker::new();
    // Replaced after every reload, so /metrics and the status page follow the forwarders.
    let upstream_list = crate::http::UpstreamList::new(crate::http::UpstreamSource::list(
        &config.upstream,
        &forward_counters,
    ));
    if let Some(http_listener) = http_listener {
        let sources = crate::http::Sources {
            gateway: config.gateway.id.clone(),
            started_ms,
            journal: journal.clone(),
            max_size: config.journal.max_size.as_u64(),
            mqtt_listen: local,
            ingest: ingest_counters.clone(),
            upstreams: upstream_list.clone(),
            serial: serial_counters.clone(),
            modbus: modbus_counters.clone(),
            subscriptions: subscribe_counters.clone(),
            health: health.clone(),
        };
        http_tasks.spawn(crate::http::serve(
            http_listener,
            Arc::new(sources),
            http_stop.clone(),
        ));
    }

    let mut notifier = Notifier::from_env();
    let mut live = Service {
        notifier: &mut notifier,
        health: &health,
        writer_guard: Some(writer_guard),
        config_path: config_path.as_deref(),
        config: config.clone(),
        forwarders: &mut forwarders,
        upstream_list,
        device_auth: &device_auth,
    };
    let result = wait_for_stop(
        &journal,
        &ingest_counters,
        &mut live,
        &serial_counters,
        &modbus_counters,
        &subscribe_counters,
    )
    .await;
    // From here on tasks end because they are told to, not because they die.
    health.set_shutting_down();
    drop(live);
    notifier.stopping();

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
    // The forwarder set holds a journal handle (to start forwarders on reload).
    drop(forwarders);
    // The HTTP listener answered /health (503, shutting down) until now; it goes before the
    // journal because it holds a handle to it.
    http_stop.cancel();
    http_tasks.close();
    http_tasks.wait().await;
    // 3. Journal: the writer exits once the last handle is gone and its queue is empty.
    let appended = get(&journal.counters().appended);
    drop(journal);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!(readings_journaled = appended, "tidegate stopped.");
    result
}

/// What the main loop needs to serve systemd and SIGHUP.
struct Service<'a> {
    notifier: &'a mut Notifier,
    health: &'a Health,
    /// Settled (failed) when the journal reports its writer failed.
    writer_guard: Option<TaskGuard>,
    /// The file SIGHUP re-reads; `None` on embedded defaults.
    config_path: Option<&'a std::path::Path>,
    /// The configuration in force (live settings as last reloaded).
    config: Config,
    forwarders: &'a mut Forwarders,
    /// What the HTTP listener shows of the upstreams; updated after a reload.
    upstream_list: crate::http::UpstreamList,
    /// Device credentials and rights: a reload sends the new state to every connection.
    device_auth: &'a crate::ingest::auth::AuthHub,
}

/// Waits for SIGTERM/SIGINT, logging progress, reloading on SIGHUP and pinging the systemd
/// watchdog while healthy, or for the journal to fail.
async fn wait_for_stop(
    journal: &Journal,
    ingest: &IngestCounters,
    service: &mut Service<'_>,
    serial_ports: &[(String, Arc<SerialCounters>)],
    modbus_buses: &[Arc<ModbusCounters>],
    subscriptions: &[(String, Arc<MqttSubscribeCounters>)],
) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    // Ready only now: the journal is open, the listeners are bound, every task is started
    // and SIGHUP is handled (its default action would kill the daemon).
    service.notifier.ready("running");
    let mut tick = tokio::time::interval(service.notifier.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    let mut last_received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received."); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT received."); return Ok(()); }
            _ = hup.recv() => {
                service.notifier.reloading();
                // Stopping a changed forwarder waits for its batch in flight (up to its
                // request_timeout), so the watchdog is kept pinged meanwhile.
                let outcome = {
                    let reloading =
                        reload(service.config_path, &mut service.config, service.forwarders, service.device_auth);
                    tokio::pin!(reloading);
                    loop {
                        tokio::select! {
                            outcome = &mut reloading => break outcome?,
                            _ = tick.tick() => service.notifier.watchdog(service.health),
                        }
                    }
                };
                service.upstream_list.set(crate::http::UpstreamSource::list(
                    &service.config.upstream,
                    &service.forwarders.counters(),
                ));
                service.notifier.reloaded(match outcome {
                    ReloadOutcome::Applied(_) => "running; configuration reloaded",
                    ReloadOutcome::Refused(_) => "running; last reload refused",
                });
            }
            _ = tick.tick() => {}
        }
        if journal.is_failed() {
            if let Some(guard) = service.writer_guard.take() {
                guard.fail("stopped after an LMDB error");
            }
            return Err(AppError::JournalFailed);
        }
        service.notifier.watchdog(service.health);
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            let upstreams = service.forwarders.counters();
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
                expired = get(&c.expired),
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

/// How long after the last refused reading the journal still counts as full for `/health`.
const FULL_FOR: Duration = Duration::from_secs(10);

/// Tells [`Health`] whether the journal accepts writes: failed after an LMDB error, or full
/// while it has refused readings (`on_full = "reject"`) within [`FULL_FOR`]. Under
/// `drop-oldest` the journal always accepts, so it is never reported full.
fn journal_probe(
    journal: crate::journal::JournalWatch,
    on_full: crate::config::OnFull,
) -> impl Fn() -> JournalState + Send + Sync + 'static {
    let last = std::sync::Mutex::new((0u64, None::<Instant>));
    move || {
        if journal.is_failed() {
            return JournalState::Failed(
                "the journal writer stopped after an LMDB error; tidegate must restart".into(),
            );
        }
        if let Some(why) = journal.refusing() {
            return JournalState::NotAccepting(why);
        }
        if on_full != crate::config::OnFull::Reject {
            return JournalState::Writable;
        }
        let rejected = get(&journal.counters().rejected_full);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if rejected > last.0 {
            *last = (rejected, Some(Instant::now()));
        }
        match last.1 {
            Some(at) if at.elapsed() < FULL_FOR => JournalState::Full(
                "new readings are refused (on_full = \"reject\"); devices keep them until forwarding frees room".into(),
            ),
            _ => JournalState::Writable,
        }
    }
}

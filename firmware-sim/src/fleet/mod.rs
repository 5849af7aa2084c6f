//! A fleet of simulated turbines, each with its own MQTT connection, recording exactly which
//! readings the broker acknowledged.
//!
//! Each device runs two tasks:
//! - the **publisher** samples the [`Turbine`] (at a rate or as fast as the in-flight window
//!   allows), hands each reading to rumqttc and remembers it as *outstanding* until its PUBACK;
//!   when the run ends it waits for the outstanding readings to drain, then disconnects;
//! - the **driver** polls the rumqttc event loop for the whole run — through broker crashes:
//!   it reconnects with exponential backoff (with jitter) and re-sends every unacknowledged
//!   reading, in counter order and before anything newer (written ones under their own packet
//!   ids, with DUP set) — and maps each PUBACK to its counter with the `tracker` module (see there
//!   for why that mapping is exact).
//!
//! Caveat: a broker that resumes a *persisted* session may send PUBACKs for packet ids of the
//! previous connection before the re-sends go out; rumqttc treats those as unsolicited and
//! drops the connection, so the fleet reconnects once more (counted in
//! `connection_errors`). Nothing is lost or misattributed; tidegate does not persist MQTT
//! sessions, Mosquitto with `persistence true` and a graceful restart does.
//!
//! The in-flight window is enforced by a semaphore the publisher takes one permit of per
//! QoS 1 reading and the driver returns per PUBACK, so outstanding readings never exceed it,
//! even across reconnects.

mod link;
mod tls;
pub(crate) mod tracker;

pub use tls::{TlsFiles, TlsOptions};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::faults::{Fault, FaultCounts, FaultPlan, FaultRng};
use crate::latency::{Histogram, LatencySummary};
use crate::seqset::SeqSet;
use crate::telemetry::{device_id, topic_for, PayloadFormat, Turbine};
use link::{Link, LinkEvent, LinkSettings};
use tracker::AckTracker;

/// MQTT quality of service used for every reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Qos {
    /// QoS 0: fire and forget; nothing is acknowledged or re-sent.
    AtMostOnce,
    /// QoS 1: every reading is kept until the broker's PUBACK, and re-sent after a reconnect.
    AtLeastOnce,
}

impl Qos {
    /// From the MQTT number (0 or 1).
    pub fn from_level(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            _ => None,
        }
    }
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

/// How a fleet runs. Start from [`FleetOptions::default`] and set what differs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetOptions {
    /// Broker address, `host:port`.
    pub broker: String,
    /// Number of turbines.
    pub devices: usize,
    /// Number of the first turbine (`1` → `wt-0001`); lets several simulators share a broker.
    pub first_device: usize,
    /// Quality of service of every reading.
    pub qos: Qos,
    /// MQTT version.
    pub protocol: Protocol,
    /// Start every connection with a clean session. Default `false`: devices keep their
    /// session across reconnects, as firmware that must not lose readings does.
    pub clean_session: bool,
    /// Readings a device may have published and not yet seen acknowledged (QoS 1).
    pub window: u16,
    /// Readings per second per device; `None` publishes as fast as the window allows.
    pub rate: Option<f64>,
    /// Readings per device; the run ends when every device has published this many.
    pub count: Option<u64>,
    /// Publishing time; the run ends after it (whichever of count and duration comes first).
    pub duration: Option<Duration>,
    /// Pad (or shrink) each payload to exactly this many bytes (see
    /// [`Reading::encode_json`](crate::telemetry::Reading::encode_json) and
    /// [`Reading::encode_binary`](crate::telemetry::Reading::encode_binary)).
    pub payload_size: Option<usize>,
    /// JSON (default) or the compact binary form.
    pub payload_format: PayloadFormat,
    /// Seed of the telemetry model; the same seed gives the same readings.
    pub seed: u64,
    /// Boot id stamped on every reading; `None` takes the current time in ms, so each run's
    /// readings can be told apart from earlier runs' in the same Kafka topic.
    pub boot: Option<u64>,
    /// Simulated time between two readings of a device (drives the turbine model only).
    pub sim_step: Duration,
    /// After publishing stops, how long to wait for outstanding PUBACKs before giving up on
    /// them (they are then reported as unacknowledged).
    pub drain_timeout: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Spread the devices' first connections over this long (avoids a connect storm).
    pub ramp_up: Duration,
    /// Username and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// TLS instead of plain TCP, loaded once for every device ([`TlsOptions::load`]).
    pub tls: Option<TlsOptions>,
    /// Faults to inject (see [`crate::faults`]): malformed and oversized payloads and
    /// duplicates (sent as extra QoS 0 publishes, so the PUBACK accounting of the readings
    /// stays exact), clock skew, bursts, reboots and flapping connections. Serial-only
    /// faults are refused.
    ///
    /// A **reboot** waits for the outstanding readings' PUBACKs (up to `drain_timeout`, as
    /// firmware flushing its buffer before a planned restart), drops the connection without
    /// DISCONNECT and connects again as a new boot: boot id + 1, counter restarting at 1
    /// (the device's earlier boots are in [`DeviceReport::earlier_boots`]). A **flap** drops
    /// the connection without DISCONNECT before a reading; the device reconnects with backoff
    /// and re-sends everything unacknowledged, in order.
    pub faults: FaultPlan,
}

impl Default for FleetOptions {
    fn default() -> FleetOptions {
        FleetOptions {
            broker: "127.0.0.1:1883".into(),
            devices: 10,
            first_device: 1,
            qos: Qos::AtLeastOnce,
            protocol: Protocol::V4,
            clean_session: false,
            window: 10,
            rate: Some(1.0),
            count: None,
            duration: None,
            payload_size: None,
            payload_format: PayloadFormat::Json,
            seed: 1,
            boot: None,
            sim_step: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            ramp_up: Duration::ZERO,
            credentials: None,
            tls: None,
            faults: FaultPlan::default(),
        }
    }
}

/// Errors of [`run_fleet`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The options cannot work.
    #[error("invalid fleet options: {0}")]
    InvalidOptions(String),
    /// A device task panicked (a bug in the simulator).
    #[error("device task failed: {0}")]
    DeviceTask(#[from] tokio::task::JoinError),
}

/// Live counters of a running fleet, for progress lines.
#[derive(Debug, Default)]
pub struct FleetProgress {
    /// Readings handed to the MQTT clients.
    pub published: AtomicU64,
    /// Readings acknowledged with PUBACK.
    pub acked: AtomicU64,
    /// Devices connected right now.
    pub connected: AtomicU64,
    /// Connection losses so far.
    pub disconnects: AtomicU64,
    /// Devices that finished.
    pub finished: AtomicU64,
}

/// A point-in-time copy of [`FleetProgress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Readings handed to the MQTT clients.
    pub published: u64,
    /// Readings acknowledged.
    pub acked: u64,
    /// Devices connected.
    pub connected: u64,
    /// Connection losses.
    pub disconnects: u64,
    /// Devices finished.
    pub finished: u64,
}

impl FleetProgress {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            published: self.published.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }
}

/// What one boot of a device published (see [`DeviceReport::earlier_boots`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    /// Boot id on the readings of this boot.
    pub boot: u64,
    /// Readings handed to the MQTT client (counters `1..=published`).
    pub published: u64,
    /// Counters acknowledged with PUBACK (QoS 1; empty for QoS 0).
    pub acked: SeqSet,
    /// QoS 1 counters still unacknowledged when the boot ended.
    pub unacked: SeqSet,
}

/// What one device did. `boot`, `published`, `acked` and `unacked` describe its last boot
/// (its only one unless the fault plan reboots it); the other counts cover every boot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Boot id on the readings of the last boot.
    pub boot: u64,
    /// Topic it published to.
    pub topic: String,
    /// Readings of the last boot handed to the MQTT client (counters `1..=published`).
    pub published: u64,
    /// Counters of the last boot acknowledged with PUBACK (QoS 1; empty for QoS 0).
    pub acked: SeqSet,
    /// QoS 1 counters of the last boot still unacknowledged when the device stopped.
    pub unacked: SeqSet,
    /// Boots before the last one, oldest first (boot ids grow by one per reboot).
    #[serde(default)]
    pub earlier_boots: Vec<BootReport>,
    /// PUBLISH packets written, re-sends and injected faults (extra QoS 0 publishes) included.
    pub sent: u64,
    /// PUBLISH packets re-sent after a connection loss.
    pub retransmits: u64,
    /// Successful connections (CONNACK).
    pub connects: u64,
    /// Connection attempts or connections that failed.
    pub connection_errors: u64,
    /// MQTT 5 PUBACKs with a failure reason code (reading refused, kept and re-sent).
    pub rejected: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// Events that contradicted the PUBACK accounting (must be 0).
    pub anomalies: u64,
    /// Faults injected and handed to the MQTT client (extra QoS 0 publishes: garbage the
    /// gateway must reject, and duplicates of readings in `1..=published`).
    #[serde(default)]
    pub injected: FaultCounts,
}

impl DeviceReport {
    /// Every boot, oldest first, the last one included.
    pub fn boots(&self) -> Vec<BootReport> {
        let mut all = self.earlier_boots.clone();
        all.push(BootReport {
            boot: self.boot,
            published: self.published,
            acked: self.acked.clone(),
            unacked: self.unacked.clone(),
        });
        all
    }

    /// Readings handed to the client over every boot.
    pub fn published_total(&self) -> u64 {
        self.published + self.earlier_boots.iter().map(|b| b.published).sum::<u64>()
    }

    /// Readings acknowledged over every boot.
    pub fn acked_total(&self) -> u64 {
        self.acked.len()
            + self
                .earlier_boots
                .iter()
                .map(|b| b.acked.len())
                .sum::<u64>()
    }

    /// Readings left unacknowledged over every boot.
    pub fn unacked_total(&self) -> u64 {
        self.unacked.len()
            + self
                .earlier_boots
                .iter()
                .map(|b| b.unacked.len())
                .sum::<u64>()
    }
}

/// What a fleet run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetReport {
    /// Broker address.
    pub broker: String,
    /// QoS used.
    pub qos: Qos,
    /// MQTT version used.
    pub protocol: Protocol,
    /// Per device, by device id.
    pub devices: BTreeMap<String, DeviceReport>,
    /// First write → PUBACK latency over all devices.
    pub puback_latency: LatencySummary,
    /// Start of the run → every device finished (publishing and draining).
    pub elapsed: Duration,
    /// Start of the run → publishing stopped (before draining).
    pub publish_elapsed: Duration,
    /// The full latency histogram (not serialized).
    #[serde(skip)]
    pub puback_histogram: Histogram,
}

impl FleetReport {
    /// Readings handed to the clients, all devices and boots.
    pub fn published(&self) -> u64 {
        self.devices
            .values()
            .map(DeviceReport::published_total)
            .sum()
    }

    /// Readings acknowledged, all devices and boots.
    pub fn acked(&self) -> u64 {
        self.devices.values().map(DeviceReport::acked_total).sum()
    }

    /// QoS 1 readings left unacknowledged, all devices and boots.
    pub fn unacked(&self) -> u64 {
        self.devices.values().map(DeviceReport::unacked_total).sum()
    }

    /// Re-sent PUBLISH packets, all devices.
    pub fn retransmits(&self) -> u64 {
        self.devices.values().map(|d| d.retransmits).sum()
    }

    /// Failed connections or connection attempts, all devices.
    pub fn connection_errors(&self) -> u64 {
        self.devices.values().map(|d| d.connection_errors).sum()
    }

    /// Faults injected, all devices.
    pub fn injected(&self) -> FaultCounts {
        let mut c = FaultCounts::default();
        for d in self.devices.values() {
            c.merge(&d.injected);
        }
        c
    }

    /// Accounting anomalies, all devices (must be 0).
    pub fn anomalies(&self) -> u64 {
        self.devices.values().map(|d| d.anomalies).sum()
    }

    /// Whether every published QoS 1 reading was acknowledged exactly as `1..=published`,
    /// in every boot.
    pub fn all_acked(&self) -> bool {
        self.qos == Qos::AtLeastOnce
            && self.devices.values().all(|d| {
                d.boots().iter().all(|b| {
                    b.unacked.is_empty()
                        && b.acked.len() == b.published
                        && (b.published == 0 || b.acked.ranges().eq([(1, b.published)]))
                })
            })
    }

    /// Acknowledged readings per second over the whole run.
    pub fn acked_per_sec(&self) -> f64 {
        self.acked() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated in a way that matters
    // here; keep going with the data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Time since the Unix epoch in ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn parse_broker(broker: &str) -> Result<(String, u16), FleetError> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| FleetError::InvalidOptions(format!("broker {broker:?} is not host:port")))?;
    let port = port
        .parse()
        .map_err(|_| FleetError::InvalidOptions(format!("bad port in broker {broker:?}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// Settings every device of a run shares.
struct RunConfig {
    opts: FleetOptions,
    host: String,
    port: u16,
    boot: u64,
    start: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
    progress: Arc<FleetProgress>,
}

/// State a device's publisher and driver share.
struct DeviceShared {
    /// QoS 1 readings handed to the client and not yet acknowledged: counter → payload
    /// (kept for re-sending).
    outstanding: Mutex<BTreeMap<u64, Bytes>>,
    /// In-flight window: one permit per reading that may be outstanding.
    window: Semaphore,
    /// Signalled when `outstanding` becomes empty.
    drained: Notify,
    /// Signalled by the publisher when the fault plan drops the connection.
    flap: Notify,
}

/// What the driver returns.
struct DriverOutcome {
    tracker: AckTracker,
    connects: u64,
    connection_errors: u64,
    rejected: u64,
    last_error: Option<String>,
}

/// Credits the PUBACK for `pkid`: the counter leaves `outstanding` and frees a window slot.
fn acknowledge(t: &mut AckTracker, pkid: u16, shared: &DeviceShared, progress: &FleetProgress) {
    if let Some((seq, _)) = t.on_puback(pkid, Instant::now()) {
        let (removed, empty) = {
            let mut o = lock(&shared.outstanding);
            let removed = o.remove(&seq).is_some();
            (removed, o.is_empty())
        };
        if removed {
            shared.window.add_permits(1);
            progress.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            // Acknowledged twice (a re-send of an already acknowledged reading).
            debug!(seq, "PUBACK for a reading no longer outstanding");
        }
        if empty {
            shared.drained.notify_one();
        }
    }
}

/// Polls the event loop until the device disconnects or is aborted; see the module docs.
async fn drive<L: Link>(
    mut link: L,
    shared: Arc<DeviceShared>,
    cfg: Arc<RunConfig>,
    topic: String,
    abort: CancellationToken,
) -> DriverOutcome {
    let qos1 = cfg.opts.qos == Qos::AtLeastOnce;
    let window = usize::from(cfg.opts.window);
    let mut limit = window;
    let mut t = AckTracker::new(1);
    let mut out = DriverOutcome {
        tracker: AckTracker::new(1),
        connects: 0,
        connection_errors: 0,
        rejected: 0,
        last_error: None,
    };
    let mut backoff = cfg.opts.reconnect_min;
    let mut connected = false;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let progress = &cfg.progress;

    loop {
        let pending_before = link.pending_len();
        let polled = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            _ = shared.flap.notified() => None,
            r = link.poll() => Some(r),
        };
        let polled = match polled {
            Some(r) => r,
            None => {
                // A flapping link: drop the socket without DISCONNECT, then recover exactly
                // as from a network failure.
                link.drop_connection();
                Err(link::LinkError {
                    message: "connection dropped by the fault plan (flap)".into(),
                    rejected: false,
                })
            }
        };
        match polled {
            Ok(event) => {
                let from_pending = pending_before > 0 && link.pending_len() + 1 == pending_before;
                match event {
                    LinkEvent::ConnAck {
                        session_present,
                        receive_max,
                    } => {
                        debug!(session_present, ?receive_max, "connected");
                        if !connected {
                            connected = true;
                            progress.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        out.connects += 1;
                        if link.buffered_events() > 0 {
                            // Events from the previous connection would be misattributed.
                            t.anomalies += 1;
                        }
                        backoff = cfg.opts.reconnect_min;
                        if let Some(r) = receive_max {
                            limit = usize::from(r).min(window);
                        }
                    }
                    LinkEvent::PublishWritten(pkid) if pkid != 0 && qos1 => {
                        t.on_publish_written(
                            pkid,
                            from_pending,
                            link.collision_clear(),
                            Instant::now(),
                        );
                    }
                    LinkEvent::PublishWritten(_) => t.sent += 1,
                    LinkEvent::AwaitAck(pkid) => t.on_await_ack(pkid, from_pending),
                    LinkEvent::PubAck(pkid) => acknowledge(&mut t, pkid, &shared, progress),
                    LinkEvent::DisconnectWritten => break,
                    LinkEvent::Other => {}
                }
            }
            Err(e) => {
                if connected {
                    connected = false;
                    progress.connected.fetch_sub(1, Ordering::Relaxed);
                    progress.disconnects.fetch_add(1, Ordering::Relaxed);
                    info!(error = %e.message, "connection lost; reconnecting");
                } else {
                    debug!(error = %e.message, "connection attempt failed");
                }
                out.connection_errors += 1;
                if e.rejected {
                    out.rejected += 1;
                }
                out.last_error = Some(e.message);
                if qos1 {
                    // PUBACKs rumqttc processed before the error are real; credit them
                    // before the packet ids are forgotten.
                    for pkid in link.drain_buffered_acks() {
                        acknowledge(&mut t, pkid, &shared, progress);
                    }
                    // A broker that refused a publish (MQTT 5 failure reason code) is done
                    // with that packet id, and rumqttc has dropped it: keeping the later
                    // written publishes under their own ids would send them ahead of the
                    // refused reading. Re-send everything unacknowledged in counter order.
                    let requeued = link.rewrite_pending(!e.rejected);
                    if requeued.disconnect {
                        break;
                    }
                    let unacked: Vec<u64> = lock(&shared.outstanding).keys().copied().collect();
                    debug!(
                        requeued_max = ?requeued.max_seq,
                        kept = requeued.kept.len(),
                        parked = ?requeued.parked,
                        unacked = unacked.len(),
                        first_unacked = ?unacked.first(),
                        "requeueing unacknowledged readings"
                    );
                    t.on_connection_lost(
                        requeued.max_seq,
                        &requeued.kept,
                        requeued.parked,
                        unacked,
                    );
                }
                let jitter = rng.random_range(0.5..1.0);
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => break,
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                }
                backoff = (backoff * 2).min(cfg.opts.reconnect_max);
            }
        }
        if qos1 && t.has_resends() {
            let room = limit.saturating_sub(link.pending_len() + link.inflight());
            let seqs = t.refill(room);
            if !seqs.is_empty() {
                debug!(count = seqs.len(), first = seqs[0], "re-sending");
                let o = lock(&shared.outstanding);
                for seq in seqs {
                    let dup = t.was_sent(seq);
                    match o.get(&seq) {
                        Some(payload) => link.push_resend(&topic, payload.clone(), dup),
                        None => t.anomalies += 1,
                    }
                }
            }
        }
    }
    if connected {
        progress.connected.fetch_sub(1, Ordering::Relaxed);
    }
    out.tracker = t;
    out
}

/// What lives across a device's reboots: the turbine itself, the fault decisions, the
/// publishing schedule and the totals.
struct DeviceLife {
    turbine: Turbine,
    fault_rng: FaultRng,
    /// Paces readings at `rate`; `None` publishes as fast as the window allows.
    ticker: Option<tokio::time::Interval>,
    /// Readings published over every boot (the index the fault plan counts in).
    published_total: u64,
    /// The reading index the last reboot happened before (a reboot is due only once).
    rebooted_before: u64,
    injected: FaultCounts,
}

/// Why a boot's publisher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootEnd {
    /// The run is over (count, duration, stop, or the client closed).
    Finished,
    /// The fault plan reboots the device before its next reading.
    Reboot,
}

/// Runs one device: boot after boot (see [`FaultPlan::reboot_every`]) until the run ends.
async fn run_device(n: usize, cfg: Arc<RunConfig>, stop: CancellationToken) -> DeviceRun {
    let device = device_id(n);
    let topic = topic_for(&device);
    let span = tracing::info_span!("device", client_id = %device);
    let Some(mut life) = start_life(n, &cfg, &stop).await else {
        cfg.progress.finished.fetch_add(1, Ordering::Relaxed);
        return DeviceRun {
            report: DeviceReport {
                boot: cfg.boot,
                topic,
                ..DeviceReport::default()
            },
            latency: Histogram::new(),
            published_until: Instant::now(),
        };
    };
    let mut report = DeviceReport {
        topic: topic.clone(),
        ..DeviceReport::default()
    };
    let mut latency = Histogram::new();
    let mut boot = cfg.boot;
    let published_until = loop {
        let run = run_boot(n, &cfg, &stop, &mut life, boot)
            .instrument(span.clone())
            .await;
        latency.merge(&run.latency);
        report.sent += run.sent;
        report.retransmits += run.retransmits;
        report.connects += run.connects;
        report.connection_errors += run.connection_errors;
        report.rejected += run.rejected;
        report.anomalies += run.anomalies;
        if run.last_error.is_some() {
            report.last_error = run.last_error;
        }
        let this = BootReport {
            boot,
            published: run.published,
            acked: run.acked,
            unacked: run.unacked,
        };
        if run.end == BootEnd::Finished {
            report.boot = this.boot;
            report.published = this.published;
            report.acked = this.acked;
            report.unacked = this.unacked;
            break run.published_until;
        }
        report.earlier_boots.push(this);
        // Boot ids only grow, so the newest boot of a device is its highest id.
        boot = boot.wrapping_add(1);
        life.turbine.reboot(boot);
        debug!(boot, "device rebooted");
    };
    report.injected = life.injected;
    cfg.progress.finished.fetch_add(1, Ordering::Relaxed);
    DeviceRun {
        report,
        latency,
        published_until,
    }
}

/// The turbine, fault source and schedule of device `n`, after its start-up delay: its
/// ramp-up position, so that connections are spread over `ramp_up` whatever the rate
/// (plus, with a rate, a random phase within one period before its first reading). `None`
/// if the run stopped first.
async fn start_life(n: usize, cfg: &RunConfig, stop: &CancellationToken) -> Option<DeviceLife> {
    let opts = &cfg.opts;
    let index = n.saturating_sub(opts.first_device);
    let ramp = if opts.devices > 1 {
        opts.ramp_up.mul_f64(index as f64 / opts.devices as f64)
    } else {
        Duration::ZERO
    };
    if !ramp.is_zero() {
        let far = cfg.start + Duration::from_secs(365 * 24 * 3600);
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep_until((cfg.start + ramp).min(cfg.deadline.unwrap_or(far))) => {}
        }
    }
    let ticker = opts.rate.map(|r| {
        let period = Duration::from_secs_f64(1.0 / r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ n as u64);
        let phase = period.mul_f64(rng.random_range(0.0..1.0));
        let mut i = tokio::time::interval_at(cfg.start + ramp + phase, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    Some(DeviceLife {
        turbine: Turbine::new(opts.seed, n, cfg.boot, opts.sim_step.as_secs_f64()),
        fault_rng: FaultRng::new(opts.seed, n),
        ticker,
        published_total: 0,
        rebooted_before: 0,
        injected: FaultCounts::default(),
    })
}

/// What one boot of a device did.
struct BootRun {
    end: BootEnd,
    published: u64,
    acked: SeqSet,
    unacked: SeqSet,
    sent: u64,
    retransmits: u64,
    connects: u64,
    connection_errors: u64,
    rejected: u64,
    anomalies: u64,
    last_error: Option<String>,
    latency: Histogram,
    published_until: Instant,
}

/// One boot: a fresh MQTT client whose publisher runs in this task and driver in a spawned
/// one. The boot ends when the run does (drain, then DISCONNECT) or when the fault plan
/// reboots the device (drain, then the connection is dropped without DISCONNECT, as a
/// restarting controller does).
async fn run_boot(
    n: usize,
    cfg: &Arc<RunConfig>,
    stop: &CancellationToken,
    life: &mut DeviceLife,
    boot: u64,
) -> BootRun {
    let opts = &cfg.opts;
    let device = device_id(n);
    let topic = topic_for(&device);
    let qos1 = opts.qos == Qos::AtLeastOnce;
    let shared = Arc::new(DeviceShared {
        outstanding: Mutex::new(BTreeMap::new()),
        window: Semaphore::new(usize::from(opts.window)),
        drained: Notify::new(),
        flap: Notify::new(),
    });
    // Room for the oversized payloads of the fault plan: rumqttc refuses to write a packet
    // over its limit.
    let oversized = if opts.faults.oversized_rate > 0.0 {
        opts.faults.oversized_bytes
    } else {
        0
    };
    let settings = LinkSettings {
        client_id: device.clone(),
        host: cfg.host.clone(),
        port: cfg.port,
        clean_session: opts.clean_session,
        keep_alive: opts.keep_alive,
        window: opts.window,
        max_packet_size: opts.payload_size.unwrap_or(0).max(64 * 1024).max(oversized) + 1024,
        credentials: opts.credentials.clone(),
        tls: opts.tls.clone(),
    };
    let abort = CancellationToken::new();
    let span = tracing::info_span!("boot", boot);

    let (client, mut driver) = match opts.protocol {
        Protocol::V4 => {
            let (c, l) = link::v4::connect(&settings);
            let h = tokio::spawn(
                drive(l, shared.clone(), cfg.clone(), topic.clone(), abort.clone())
                    .instrument(span.clone()),
            );
            (Client::V4(c), h)
        }
        Protocol::V5 => {
            let (c, l) = link::v5::connect(&settings);
            let h = tokio::spawn(
                drive(l, shared.clone(), cfg.clone(), topic.clone(), abort.clone())
                    .instrument(span.clone()),
            );
            (Client::V5(c), h)
        }
    };

    let (published, end) = publish_readings(cfg, life, &shared, &client, &topic, stop)
        .instrument(span.clone())
        .await;
    let published_until = Instant::now();

    // Drain: wait for the outstanding readings' PUBACKs.
    let drain_deadline = tokio::time::Instant::now() + opts.drain_timeout;
    if qos1 {
        loop {
            if lock(&shared.outstanding).is_empty() {
                break;
            }
            tokio::select! {
                _ = shared.drained.notified() => {}
                _ = tokio::time::sleep_until(drain_deadline) => break,
            }
        }
    }
    let drained = lock(&shared.outstanding).is_empty();
    if !drained {
        warn!(device = %device, boot, "drain timeout: readings left unacknowledged");
    }
    let graceful = drained && end == BootEnd::Finished;
    if graceful {
        // Disconnect cleanly; the driver stops once DISCONNECT is written.
        let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
    }
    let grace = if graceful {
        drain_deadline.max(tokio::time::Instant::now() + Duration::from_secs(5))
    } else {
        tokio::time::Instant::now()
    };
    let outcome = tokio::select! {
        r = &mut driver => r,
        _ = tokio::time::sleep_until(grace) => {
            abort.cancel();
            driver.await
        }
    };
    // Dropping the client and (with the driver) the event loop closes the socket: after a
    // reboot without a DISCONNECT, as the broker would see a controller restart.
    drop(client);

    let unacked: SeqSet = lock(&shared.outstanding).keys().copied().collect();
    match outcome {
        Ok(o) => BootRun {
            end,
            published,
            acked: o.tracker.acked,
            unacked,
            sent: o.tracker.sent,
            retransmits: o.tracker.retransmits,
            connects: o.connects,
            connection_errors: o.connection_errors,
            rejected: o.rejected,
            anomalies: o.tracker.anomalies,
            last_error: o.last_error,
            latency: o.tracker.latency,
            published_until,
        },
        Err(e) => BootRun {
            end,
            published,
            acked: SeqSet::new(),
            unacked,
            sent: 0,
            retransmits: 0,
            connects: 0,
            connection_errors: 0,
            rejected: 0,
            anomalies: 1,
            last_error: Some(format!("driver task failed: {e}")),
            latency: Histogram::new(),
            published_until,
        },
    }
}

/// What [`run_device`] returns.
struct DeviceRun {
    report: DeviceReport,
    latency: Histogram,
    /// When the publisher stopped.
    published_until: Instant,
}

/// The MQTT client handle of either protocol version.
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    async fn publish(&self, topic: &str, qos: Qos, payload: Bytes) -> bool {
        match self {
            Client::V4(c) => {
                let q = match qos {
                    Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                    Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                };
                c.publish_bytes(topic, q, false, payload).await.is_ok()
            }
            Client::V5(c) => {
                let q = match qos {
                    Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                };
                c.publish_bytes(topic, q, false, payload).await.is_ok()
            }
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.is_ok(),
            Client::V5(c) => c.disconnect().await.is_ok(),
        };
    }
}

/// Hands an extra (fault) payload to the client at QoS 0; `false` if the run stopped first
/// or the client is closed.
async fn publish_extra(
    client: &Client,
    topic: &str,
    payload: Bytes,
    stop: &CancellationToken,
    until: tokio::time::Instant,
) -> bool {
    tokio::select! {
        biased;
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep_until(until) => false,
        ok = client.publish(topic, Qos::AtMostOnce, payload) => ok,
    }
}

/// The publisher loop of one boot; returns how many readings it handed to the client and
/// why it stopped.
async fn publish_readings(
    cfg: &RunConfig,
    life: &mut DeviceLife,
    shared: &DeviceShared,
    client: &Client,
    topic: &str,
    stop: &CancellationToken,
) -> (u64, BootEnd) {
    let opts = &cfg.opts;
    let qos1 = opts.qos == Qos::AtLeastOnce;
    let deadline = cfg.deadline;
    let far = cfg.start + Duration::from_secs(365 * 24 * 3600);
    let until = deadline.unwrap_or(far);
    let plan = &opts.faults;
    let mut buf = Vec::with_capacity(opts.payload_size.unwrap_or(192));
    let mut published = 0u64;
    loop {
        let index = life.published_total + 1;
        if opts.count.is_some_and(|c| life.published_total >= c) || stop.is_cancelled() {
            break;
        }
        if plan.reboot_due(index) && life.rebooted_before != index {
            life.rebooted_before = index;
            return (published, BootEnd::Reboot);
        }
        // Readings of a burst go out back-to-back.
        let paced = life.ticker.as_mut().filter(|_| !plan.in_burst(index));
        if let Some(t) = paced {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(until) => break,
                _ = t.tick() => {}
            }
        } else if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        if qos1 {
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(until) => break,
                p = shared.window.acquire() => p,
            };
            match permit {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        let faults = plan.decide(index, &mut life.fault_rng);
        for &f in &faults {
            match f {
                // Done before this reading (the reboot by the caller, between two boots).
                Fault::Reboot => life.injected.add(f),
                Fault::Flap => {
                    // The driver drops the connection; this reading and the outstanding
                    // ones go out again once it has reconnected.
                    shared.flap.notify_one();
                    life.injected.add(f);
                }
                _ => {}
            }
        }
        let reading = life.turbine.step(plan.skew(now_ms()));
        reading.encode(opts.payload_format, opts.payload_size, &mut buf);
        let payload = Bytes::copy_from_slice(&buf);
        for &f in faults.iter().filter(|f| f.is_garbage()) {
            if let Some(garbage) = plan.garbage_payload(f, &reading, &buf) {
                if publish_extra(client, topic, garbage.into(), stop, until).await {
                    life.injected.add(f);
                }
            }
        }
        let duplicate = faults.contains(&Fault::Duplicate).then(|| payload.clone());
        if qos1 {
            lock(&shared.outstanding).insert(reading.seq, payload.clone());
        }
        // QoS 1 never waits here: the window bounds what is outstanding, and the request
        // channel holds a window's worth. QoS 0 waits for the connection.
        let sent = if qos1 {
            client.publish(topic, opts.qos, payload).await
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(until) => break,
                ok = client.publish(topic, opts.qos, payload) => ok,
            }
        };
        if !sent {
            if qos1 {
                lock(&shared.outstanding).remove(&reading.seq);
            }
            warn!("MQTT client closed; device stops publishing");
            break;
        }
        published += 1;
        life.published_total += 1;
        cfg.progress.published.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = duplicate {
            if publish_extra(client, topic, p, stop, until).await {
                life.injected.add(Fault::Duplicate);
            }
        }
        if published % 64 == 0 {
            // As-fast-as-possible loops may never wait; let other devices run.
            tokio::task::yield_now().await;
        }
    }
    (published, BootEnd::Finished)
}

/// Runs a fleet until every device has published `count` readings, `duration` has passed, or
/// `stop` is cancelled — then waits (up to `drain_timeout`) for outstanding PUBACKs and
/// disconnects every device.
pub async fn run_fleet(
    opts: FleetOptions,
    stop: CancellationToken,
) -> Result<FleetReport, FleetError> {
    run_fleet_with_progress(opts, stop, Arc::new(FleetProgress::default())).await
}

/// [`run_fleet`], updating `progress` as it goes (for progress lines).
pub async fn run_fleet_with_progress(
    opts: FleetOptions,
    stop: CancellationToken,
    progress: Arc<FleetProgress>,
) -> Result<FleetReport, FleetError> {
    let (host, port) = parse_broker(&opts.broker)?;
    if opts.devices == 0 {
        return Err(FleetError::InvalidOptions(
            "devices must be at least 1".into(),
        ));
    }
    if opts.first_device == 0 {
        return Err(FleetError::InvalidOptions(
            "first_device starts at 1".into(),
        ));
    }
    if opts.window == 0 {
        return Err(FleetError::InvalidOptions(
            "window must be at least 1".into(),
        ));
    }
    opts.faults
        .validate_for_mqtt()
        .map_err(FleetError::InvalidOptions)?;
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(FleetError::InvalidOptions(format!(
                "rate {r} is not a positive number"
            )));
        }
    }
    let boot = opts.boot.unwrap_or_else(now_ms);
    let start = tokio::time::Instant::now();
    let started = Instant::now();
    let cfg = Arc::new(RunConfig {
        deadline: opts.duration.map(|d| start + d),
        opts,
        host,
        port,
        boot,
        start,
        progress,
    });
    let mut tasks = JoinSet::new();
    let first = cfg.opts.first_device;
    for n in first..first + cfg.opts.devices {
        let cfg = cfg.clone();
        let stop = stop.clone();
        tasks.spawn(async move { (n, run_device(n, cfg, stop).await) });
    }
    let mut devices = BTreeMap::new();
    let mut hist = Histogram::new();
    let mut published_until = started;
    while let Some(r) = tasks.join_next().await {
        let (n, run) = r?;
        hist.merge(&run.latency);
        published_until = published_until.max(run.published_until);
        devices.insert(device_id(n), run.report);
    }
    Ok(FleetReport {
        broker: cfg.opts.broker.clone(),
        qos: cfg.opts.qos,
        protocol: cfg.opts.protocol,
        devices,
        puback_latency: hist.summary(),
        elapsed: started.elapsed(),
        publish_elapsed: published_until.saturating_duration_since(started),
        puback_histogram: hist,
    })
}

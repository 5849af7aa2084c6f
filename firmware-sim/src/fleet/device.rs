//! One simulated device over MQTT: its life across reboots ([`run_device`]), each boot's
//! connection and drain, and the publisher that samples the turbine, injects the planned
//! faults and keeps the in-flight window; the connection itself is polled by the
//! [`driver`](super::driver).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tokio::sync::TryAcquireError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::driver::{drive, lock, DeviceShared, DriverOutcome};
use super::link::{self, Client, Link, LinkSettings};
use super::options::{Protocol, Qos};
use super::payload::Payloads;
use super::report::{BootReport, DeviceReport};
use super::RunConfig;
use crate::faults::{Fault, FaultCounts, FaultRng};
use crate::latency::Histogram;
use crate::seqset::SeqSet;
use crate::telemetry::{device_id, now_ms, topic_for, Turbine};

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
pub(super) async fn run_device(
    n: usize,
    cfg: Arc<RunConfig>,
    stop: CancellationToken,
) -> DeviceRun {
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
    let index = n.saturating_sub(opts.workload.first_device);
    let ramp = if opts.workload.devices > 1 {
        opts.ramp_up
            .mul_f64(index as f64 / opts.workload.devices as f64)
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
    let ticker = opts.workload.rate.map(|r| {
        let period = Duration::from_secs_f64(1.0 / r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.workload.seed ^ n as u64);
        let phase = period.mul_f64(rng.random_range(0.0..1.0));
        let mut i = tokio::time::interval_at(cfg.start + ramp + phase, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    Some(DeviceLife {
        turbine: opts.workload.turbine(n, cfg.boot),
        fault_rng: opts.workload.fault_rng(n),
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
    let shared = Arc::new(DeviceShared::new(opts.window));
    // Room for the oversized payloads of the fault plan: rumqttc refuses to write a packet
    // over its limit.
    let oversized = if opts.workload.faults.oversized_rate > 0.0 {
        opts.workload.faults.oversized_bytes
    } else {
        0
    };
    let settings = LinkSettings {
        client_id: &device,
        host: &cfg.host,
        port: cfg.port,
        max_packet_size: opts
            .workload
            .payload_size
            .unwrap_or(0)
            .max(64 * 1024)
            .max(oversized)
            + 1024,
        fleet: opts,
    };
    let abort = CancellationToken::new();
    let span = tracing::info_span!("boot", boot);

    let driver = DriverTask {
        shared: &shared,
        cfg,
        topic: &topic,
        abort: &abort,
        span: &span,
    };
    let (client, mut driver) = match opts.protocol {
        Protocol::V4 => {
            let (c, l) = link::v4::connect(&settings);
            (Client::V4(c), driver.spawn(l))
        }
        Protocol::V5 => {
            let (c, l) = link::v5::connect(&settings);
            (Client::V5(c), driver.spawn(l))
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

/// What the driver task of a boot is started with, whichever protocol its link speaks.
struct DriverTask<'a> {
    shared: &'a Arc<DeviceShared>,
    cfg: &'a Arc<RunConfig>,
    topic: &'a str,
    abort: &'a CancellationToken,
    span: &'a tracing::Span,
}

impl DriverTask<'_> {
    /// Spawns [`drive`] over `link`, inside the boot's span.
    fn spawn<L: Link + 'static>(&self, link: L) -> JoinHandle<DriverOutcome> {
        let driver = drive(
            link,
            self.shared.clone(),
            self.cfg.clone(),
            self.topic.to_owned(),
            self.abort.clone(),
        );
        tokio::spawn(driver.instrument(self.span.clone()))
    }
}

/// What [`run_device`] returns.
pub(super) struct DeviceRun {
    pub(super) report: DeviceReport,
    pub(super) latency: Histogram,
    /// When the publisher stopped.
    pub(super) published_until: Instant,
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
    // One timer for the whole boot: a new `sleep_until` per reading would register and
    // cancel a timer each time, a cost the generator would add to every reading.
    let end = tokio::time::sleep_until(until);
    tokio::pin!(end);
    let plan = &opts.workload.faults;
    // Without faults the fault rng's draws decide nothing: skip them.
    let no_faults = plan.is_empty();
    let mut payloads = Payloads::new(
        opts.fixed_payload,
        opts.workload.payload_size.unwrap_or(192),
    );
    let mut published = 0u64;
    loop {
        let index = life.published_total + 1;
        if opts
            .workload
            .count
            .is_some_and(|c| life.published_total >= c)
            || stop.is_cancelled()
        {
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
                _ = &mut end => break,
                _ = t.tick() => {}
            }
        } else if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        if qos1 {
            // A free slot in the window is taken at once; only a full window waits.
            let permit = match shared.window.try_acquire() {
                Ok(p) => Some(p),
                Err(TryAcquireError::Closed) => None,
                Err(TryAcquireError::NoPermits) => tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = &mut end => break,
                    p = shared.window.acquire() => p.ok(),
                },
            };
            match permit {
                Some(p) => p.forget(),
                None => break,
            }
        }
        let faults = if no_faults {
            Vec::new()
        } else {
            plan.decide(index, &mut life.fault_rng)
        };
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
        let (seq, payload) = payloads.next(
            &mut life.turbine,
            plan.skew(now_ms()),
            opts.workload.payload_format,
            opts.workload.payload_size,
        );
        for &f in faults.iter().filter(|f| f.is_garbage()) {
            let garbage = payloads
                .last()
                .and_then(|(reading, bytes)| plan.garbage_payload(f, reading, bytes));
            if let Some(garbage) = garbage {
                if publish_extra(client, topic, garbage.into(), stop, until).await {
                    life.injected.add(f);
                }
            }
        }
        let duplicate = faults.contains(&Fault::Duplicate).then(|| payload.clone());
        if qos1 {
            lock(&shared.outstanding).insert(seq, payload.clone());
        }
        // QoS 1 never waits here: the window bounds what is outstanding, and the request
        // channel holds a window's worth. QoS 0 waits for the connection.
        let sent = if qos1 {
            client.publish(topic, opts.qos, payload).await
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = &mut end => break,
                ok = client.publish(topic, opts.qos, payload) => ok,
            }
        };
        if !sent {
            if qos1 {
                lock(&shared.outstanding).remove(&seq);
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

//! A fleet of simulated turbines, each with its own MQTT connection, recording exactly which
//! readings the broker acknowledged: [`run_fleet`] starts one task per device and gathers
//! their reports.
//!
//! # Layout
//! - `options`: what a run is asked to do ([`FleetOptions`], [`Qos`], [`Protocol`]);
//! - `report`: what it did ([`FleetReport`], [`DeviceReport`], live [`FleetProgress`]);
//! - `device`: one device's boots and its publisher;
//! - `driver`: the event-loop driver, one loop for both MQTT versions over `link`;
//! - `link`: rumqttc's v3.1.1 and v5 clients behind one small interface;
//! - `payload`: each reading's payload, from the turbine model or one fixed payload per
//!   boot patched in place ([`FleetOptions::fixed_payload`]);
//! - `tracker`: the exact mapping of PUBACKs to reading counters;
//! - `tls`: the TLS files every device of a fleet shares.
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

mod device;
mod driver;
mod link;
mod options;
mod payload;
mod report;
mod tls;
pub(crate) mod tracker;

pub use options::{FleetError, FleetOptions, Protocol, Qos};
pub use report::{BootReport, DeviceReport, FleetProgress, FleetReport, ProgressSnapshot};
pub use tls::{TlsFiles, TlsOptions};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::latency::Histogram;
use crate::telemetry::device_id;
use device::run_device;

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
    let work = &opts.workload;
    if work.devices == 0 {
        return Err(FleetError::InvalidOptions(
            "devices must be at least 1".into(),
        ));
    }
    if work.first_device == 0 {
        return Err(FleetError::InvalidOptions(
            "first_device starts at 1".into(),
        ));
    }
    if opts.window == 0 {
        return Err(FleetError::InvalidOptions(
            "window must be at least 1".into(),
        ));
    }
    work.faults
        .validate_for_mqtt()
        .map_err(FleetError::Faults)?;
    if let Some(r) = work.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(FleetError::InvalidOptions(format!(
                "rate {r} is not a positive number"
            )));
        }
    }
    let boot = work.boot_id();
    let start = tokio::time::Instant::now();
    let started = Instant::now();
    let cfg = Arc::new(RunConfig {
        deadline: work.duration.map(|d| start + d),
        opts,
        host,
        port,
        boot,
        start,
        progress,
    });
    let mut tasks = JoinSet::new();
    for n in cfg.opts.workload.device_numbers() {
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

//! What a fleet run is asked to do ([`FleetOptions`]: the workload and the MQTT side) and
//! what refuses it ([`FleetError`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tls::TlsOptions;
use crate::faults::InvalidPlan;
use crate::workload::Workload;

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

/// How a fleet runs: the [`Workload`] of its devices and how they reach the broker. Start from
/// [`FleetOptions::default`] and set what differs
/// (`let mut o = FleetOptions::default(); o.workload.devices = 5;`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetOptions {
    /// Broker address, `host:port`.
    pub broker: String,
    /// Which turbines publish what, how fast and for how long, and the faults they inject.
    /// Serial-only faults are refused. Malformed and oversized payloads and duplicates go out
    /// as extra QoS 0 publishes, so the PUBACK accounting of the readings stays exact.
    ///
    /// A **reboot** waits for the outstanding readings' PUBACKs (up to `drain_timeout`, as
    /// firmware flushing its buffer before a planned restart), drops the connection without
    /// DISCONNECT and connects again as a new boot: boot id + 1, counter restarting at 1
    /// (the device's earlier boots are in [`DeviceReport::earlier_boots`](super::DeviceReport::earlier_boots)). A **flap** drops
    /// the connection without DISCONNECT before a reading; the device reconnects with backoff
    /// and re-sends everything unacknowledged, in order.
    pub workload: Workload,
    /// Quality of service of every reading.
    pub qos: Qos,
    /// MQTT version.
    pub protocol: Protocol,
    /// Start every connection with a clean session. Default `false`: devices keep their
    /// session across reconnects, as firmware that must not lose readings does.
    pub clean_session: bool,
    /// Readings a device may have published and not yet seen acknowledged (QoS 1).
    pub window: u16,
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
    /// Build each boot's payload once, from its first reading, and per reading only write
    /// the counter and `ts` into it (fixed-width fields), instead of stepping the turbine
    /// model and encoding a new reading. For load runs where the generator's own CPU would
    /// otherwise be the limit. The payload still carries device, boot, counter and `ts`
    /// (verification and the PUBACK accounting read them as usual); its sensor values are
    /// those of the boot's first reading.
    pub fixed_payload: bool,
}

impl Default for FleetOptions {
    /// Ten turbines publishing a JSON reading a second each at QoS 1 over MQTT 3.1.1 to
    /// `127.0.0.1:1883`, ten in flight, until stopped.
    fn default() -> FleetOptions {
        FleetOptions {
            broker: "127.0.0.1:1883".into(),
            workload: Workload {
                devices: 10,
                ..Workload::default()
            },
            qos: Qos::AtLeastOnce,
            protocol: Protocol::V4,
            clean_session: false,
            window: 10,
            drain_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            ramp_up: Duration::ZERO,
            credentials: None,
            tls: None,
            fixed_payload: false,
        }
    }
}

/// Errors of [`run_fleet`](super::run_fleet).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The options cannot work.
    #[error("invalid fleet options: {0}")]
    InvalidOptions(String),
    /// The fault plan asks for what an MQTT device cannot do.
    #[error("invalid fleet options: {0}")]
    Faults(InvalidPlan),
    /// A device task panicked (a bug in the simulator).
    #[error("device task failed: {0}")]
    DeviceTask(#[from] tokio::task::JoinError),
}

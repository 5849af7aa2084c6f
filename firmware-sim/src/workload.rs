//! The workload every simulated device runs whatever its transport: which turbines, how many
//! readings, how fast, which payloads and which faults ([`Workload`]), shared by the MQTT
//! fleet, the load generator and the serial line so that one seed means the same readings on
//! each of them.

use std::ops::Range;
use std::time::Duration;

use crate::faults::{FaultPlan, FaultRng};
use crate::telemetry::{now_ms, PayloadFormat, Turbine};

/// What the devices of a run do, MQTT or serial. Start from [`Workload::default`] (or from
/// the `workload` of [`FleetOptions::default`](crate::FleetOptions) or
/// [`SerialOptions::default`](crate::SerialOptions)) and set what differs.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Number of turbines.
    pub devices: usize,
    /// Number of the first turbine (`1` → `wt-0001`); lets several simulators share a
    /// gateway.
    pub first_device: usize,
    /// Readings per second per device; `None` goes as fast as the transport takes them (the
    /// in-flight window over MQTT, the line over serial).
    pub rate: Option<f64>,
    /// Readings per device; the run ends when every device has sent this many.
    pub count: Option<u64>,
    /// Sending time; the run ends after it (whichever of count and duration comes first).
    pub duration: Option<Duration>,
    /// Pad (or shrink) each payload to exactly this many bytes (see
    /// [`Reading::encode_json`](crate::telemetry::Reading::encode_json) and
    /// [`Reading::encode_binary`](crate::telemetry::Reading::encode_binary)).
    pub payload_size: Option<usize>,
    /// JSON (default) or the compact binary form; over serial, binary needs the `cobs`
    /// framing (a binary reading may contain a line feed).
    pub payload_format: PayloadFormat,
    /// Seed of the telemetry model and of the fault decisions; the same seed gives the same
    /// readings and the same faults.
    pub seed: u64,
    /// Boot id stamped on every reading; `None` takes the current time in ms, so each run's
    /// readings can be told apart from earlier runs' in the same Kafka topic.
    pub boot: Option<u64>,
    /// Simulated time between two readings of a device (drives the turbine model only).
    pub sim_step: Duration,
    /// Faults to inject (see [`crate::faults`]); the default injects none. Each transport
    /// refuses the faults it cannot inject (serial-only faults over MQTT, flaps on a serial
    /// line).
    pub faults: FaultPlan,
}

impl Default for Workload {
    /// One turbine, one reading a second, JSON payloads, seed 1, no faults, until stopped.
    fn default() -> Workload {
        Workload {
            devices: 1,
            first_device: 1,
            rate: Some(1.0),
            count: None,
            duration: None,
            payload_size: None,
            payload_format: PayloadFormat::Json,
            seed: 1,
            boot: None,
            sim_step: Duration::from_secs(1),
            faults: FaultPlan::default(),
        }
    }
}

impl Workload {
    /// The turbine numbers of the run, `first_device..first_device + devices`.
    pub fn device_numbers(&self) -> Range<usize> {
        self.first_device..self.first_device + self.devices
    }

    /// The boot id of the run's first boot: [`Workload::boot`], or the current time in ms.
    pub fn boot_id(&self) -> u64 {
        self.boot.unwrap_or_else(now_ms)
    }

    /// Turbine number `n`, first booted as `boot`.
    pub fn turbine(&self, n: usize, boot: u64) -> Turbine {
        Turbine::new(self.seed, n, boot, self.sim_step.as_secs_f64())
    }

    /// The fault decisions of turbine number `n`.
    pub fn fault_rng(&self, n: usize) -> FaultRng {
        FaultRng::new(self.seed, n)
    }
}

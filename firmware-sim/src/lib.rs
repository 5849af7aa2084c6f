//! Simulated wind-turbine fleets for tidegate: the test bed, load generator and verifier.
//!
//! # Layout
//! - [`workload`]: what the simulated devices do whatever their transport — which turbines,
//!   how many readings, how fast, which payloads and faults ([`Workload`]);
//! - [`telemetry`]: the deterministic turbine model and its payloads, JSON or compact binary;
//! - [`faults`]: fault injection on demand — malformed and oversized payloads, duplicates,
//!   reboots, clock skew, bursts, line noise, bad CRCs, truncated frames — decided per reading
//!   from the seed ([`FaultPlan`]);
//! - [`fleet`]: N turbines, one MQTT connection each (MQTT 3.1.1 or 5, plain or TLS, with
//!   credentials if asked), that survive broker restarts, reboots and flapping connections
//!   and record exactly which readings of which boot were acknowledged ([`run_fleet`]);
//! - [`verify`]: reads a Kafka topic back and checks it against a fleet's report — missing
//!   acknowledged readings, duplicates, reordering, headers, keys ([`check`],
//!   [`wait_until_complete`]); and a live topic: every device's newest reading there and
//!   its age ([`LiveTable`]);
//! - [`link`]: a bandwidth-shaping TCP proxy with outages on demand or on a schedule, which
//!   logs what it forwarded ([`Link`]): the constrained uplink of the tests, the benchmark
//!   and `firmware-sim link`;
//! - [`load`]: the benchmark: a fleet as fast as possible, with PUBACK and end-to-end
//!   latency percentiles ([`run_load`]);
//! - [`framing`]: the `lines` and `cobs` (COBS + CRC-16/CCITT-FALSE) framings of readings on
//!   a serial line — encoders and a resynchronising streaming [`Decoder`]; the
//!   `tidegate-framing` crate, re-exported, which tidegate's serial ingest uses too;
//! - [`serial`]: turbines writing framed readings to a serial line, a pseudo-terminal the
//!   simulator creates or a given device ([`run_serial`]);
//! - [`modbus`]: turbines as Modbus RTU slaves on a pseudo-terminal, with silent ids,
//!   exceptions and corrupted answers on demand ([`ModbusBus`]);
//! - [`soak`]: a fleet sampled while it runs, a CSV row per interval with that interval's
//!   publish → PUBACK percentiles, for soaks of hours ([`soak::run_sampled`]);
//! - [`seqset`] and [`latency`]: the counter sets and histograms the reports are made of;
//! - [`testbed`]: real brokers (Tansu, Mosquitto) and other child processes on loopback
//!   ports, for the tests of tidegate and of this crate and for the benchmark;
//! - [`cli`]: the flag groups of the `firmware-sim` binary, which is a thin shell over this
//!   library.
//!
//! ```text
//!  Turbine ─▶ publisher ─▶ rumqttc ─MQTT─▶ gateway ─▶ Kafka ─▶ verify::check
//!                 ▲            │ PUBACK                          ▲
//!                 └─ window ◀──┴─▶ AckTracker ─▶ FleetReport ─────┘
//! ```

pub mod cli;
pub mod faults;
pub mod fleet;
pub use tidegate_framing as framing;
pub mod latency;
pub mod link;
pub mod load;
pub mod modbus;
pub mod seqset;
pub mod serial;
pub mod soak;
pub mod telemetry;
pub mod testbed;
pub mod verify;
pub mod workload;

pub use faults::{Fault, FaultCounts, FaultPlan, FaultRng, InvalidPlan};
pub use fleet::{
    run_fleet, run_fleet_with_progress, BootReport, DeviceReport, FleetError, FleetOptions,
    FleetProgress, FleetReport, Protocol, Qos,
};
pub use framing::{Decoder, FrameError, Framing};
pub use latency::{Histogram, LatencySummary};
pub use link::{Link, LinkError, LinkOptions, LinkSummary, Outage};
pub use load::{run_load, KafkaTarget, LoadOptions, LoadReport};
pub use modbus::{ModbusBus, ModbusOptions};
pub use seqset::SeqSet;
pub use serial::{run_serial, SerialError, SerialLine, SerialOptions, SerialReport, SerialTarget};
pub use telemetry::{device_id, topic_for, PayloadFormat, Reading, ReadingId, Turbine};
pub use tokio_util::sync::CancellationToken;
pub use verify::{check, wait_until_complete, KafkaReading, LiveReport, LiveTable, VerifyReport};
pub use workload::Workload;

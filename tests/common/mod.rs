//! Helpers shared by tidegate's integration tests, one file per job: real brokers and the
//! real daemon binary on loopback ports (retried on a port clash), its status and metrics,
//! firmware-sim fleets, a test PKI, and the set-up of the fault tests.
//!
//! - [`brokers`]: Tansu (Kafka protocol) and Mosquitto, and [`free_port`];
//! - [`daemon`]: [`Gateway`], `tidegate run` as a child process, and [`http_get`];
//! - [`status`]: `status --json`, backlogs, `/health`, and [`status::eventually`], the one
//!   poll loop every wait of the suite goes through;
//! - [`metrics`]: `/metrics` parsed as Prometheus text;
//! - [`fleet`]: the QoS 1 firmware-sim fleet every test starts from;
//! - [`pki`]: rcgen certificates;
//! - [`turbine_items`]: firmware-sim readings as a sink's batch items, for driving a sink
//!   without a daemon;
//! - [`faults`]: a fault that cannot be set up skips the test, or fails it under `CI=true`.
//!
//! Every test file uses only some of these, hence the `dead_code` and `unused_imports`
//! allowances.
#![allow(dead_code, unused_imports)]

pub mod brokers;
pub mod daemon;
pub mod faults;
pub mod fleet;
pub mod link;
pub mod metrics;
pub mod pki;
pub mod status;
pub mod turbine_items;

pub use brokers::{free_port, port_open, Mosquitto, Tansu};
pub use daemon::{http_get, Gateway};
pub use fleet::Fleet;
pub use status::{eventually, status_json, wait_for_backlog};

/// A Kafka record's journal sequence (`tidegate-seq`); the test fails on a record without a
/// decimal one.
pub fn seq_of(r: &firmware_sim::verify::KafkaReading) -> u64 {
    r.journal_seq()
        .unwrap_or_else(|| panic!("record without a decimal tidegate-seq: {r:?}"))
}

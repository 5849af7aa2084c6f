//! Modbus RTU polling against firmware-sim's slave turbines on real pseudo-terminals.
//!
//! Most tests run the poller as a library against a journal in a temp dir, so they can
//! read the journal and the per-slave counters directly; the last one runs the real daemon
//! with a Kafka-protocol broker (Tansu) and an MQTT fleet beside the Modbus bus.
//!
//! One file per topic under `tests/modbus/`: [`polling`] (values of every type and byte
//! order reach the journal), [`faults`] (timeouts, CRC errors, exceptions, a missing port
//! and a full journal) and [`daemon`] (the real daemon forwarding Modbus readings to
//! Kafka); [`rig`] holds the poller under test, the simulated bus and the config they share.

mod common;

#[path = "modbus/daemon.rs"]
mod daemon;
#[path = "modbus/faults.rs"]
mod faults;
#[path = "modbus/polling.rs"]
mod polling;
#[path = "modbus/rig.rs"]
mod rig;

//! Fault-injection tools of the fault tests (`tests/disk_full.rs`, `tests/network_faults.rs`,
//! `tests/power_cut.rs`, `tests/hostile_mqtt.rs`): a small tmpfs to fill, a TCP proxy that
//! misbehaves on command, and raw MQTT packets. Loopback and the tests' own mounts only.
//!
//! Every test file uses only some of these, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod forgetful_fs;
pub mod proxy;
pub mod tmpfs;

//! Ingest: every way a reading enters tidegate. Each source turns input into
//! [`crate::record::Reading`]s and hands them to the journal; none acknowledges a reading
//! before the journal has committed it.

pub mod auth;
pub mod codec;
pub mod listener;
pub mod local_bus;
pub mod modbus;
pub mod mqtt_subscribe;
pub mod serial;
pub mod tls;

//! Device authentication and topic rights on the real daemon's MQTT listener (issue 9,
//! device side): passwords written by `tidegate passwd`, CONNACK codes of both protocol
//! versions, client certificates on the TLS listener, publishes and subscriptions outside
//! a device's rights, and SIGHUP reloads of the credentials file. Loopback only.
//!
//! One file per topic under `tests/device_auth/`:
//! - [`connect`]: CONNACK codes of refused logins, a client id given from the username,
//!   and a storm of wrong passwords beside a connected device;
//! - [`rights`]: publishes and subscriptions outside a device's rights, and a fleet
//!   within its own;
//! - [`tls`]: client certificates on the TLS listener;
//! - [`reload`]: SIGHUP reloads of the credentials file and the revocations they cause;
//! - [`credentials`]: `tidegate passwd`, a malformed credentials file, and the start-up
//!   warning about an open listener without authentication.
//!
//! [`support`] starts the gateway and reads its journal and metrics; [`clients`] holds the
//! MQTT clients of both versions the topics connect with.

mod common;

#[path = "device_auth/clients.rs"]
mod clients;
#[path = "device_auth/connect.rs"]
mod connect;
#[path = "device_auth/credentials.rs"]
mod credentials;
#[path = "device_auth/reload.rs"]
mod reload;
#[path = "device_auth/rights.rs"]
mod rights;
#[path = "device_auth/support.rs"]
mod support;
#[path = "device_auth/tls.rs"]
mod tls;

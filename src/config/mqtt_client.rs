//! The MQTT client keys, declared once: `[[upstream]] kind = "mqtt"` and
//! `[[mqtt_subscribe]]` both flatten [`MqttClientConfig`], so the two sections take the
//! same keys with the same defaults.
//!
//! Plain data: the checks that need the client's logic (url parsing, keep-alive bounds)
//! are `crate::mqtt_client::validate`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How tidegate connects to an MQTT broker as a client.
///
/// Flattened into [`super::UpstreamConfig`] and [`super::MqttSubscribeConfig`]. serde does
/// not support `deny_unknown_fields` together with `flatten` well: it only refuses a
/// leftover key after the section's required keys are in, and without listing the keys it
/// takes. So the loader checks the keys of those sections itself, from the parsed TOML,
/// before serde sees them (`unknown_key`, with `KEYS` and each section's own list), and
/// refuses an unknown key first and in serde's words ("unknown field `x`, expected one of
/// …"), as for every other section. A test in `config/mod.rs` holds the lists to the
/// structs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MqttClientConfig {
    /// The broker, `mqtt://host:port` or `mqtts://host:port` (TLS). Required for an MQTT
    /// client (checked with the other keys, so a missing url is reported with the rest).
    #[serde(default)]
    pub url: String,
    /// MQTT version, 4 (3.1.1) or 5. Only 5 carries the `tidegate-gateway` /
    /// `tidegate-seq` user properties.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// Client id; it names the persistent session on the broker, so keep it stable.
    /// Default: `tidegate-<gateway id>-<name>` for an upstream, `tidegate-<gateway
    /// id>-sub-<n>` for the n-th `[[mqtt_subscribe]]` (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name, if the broker wants credentials (`kind = "kafka"`: the SASL user, with
    /// `sasl_mechanism`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// TLS (`mqtts://`, or `tls = true` for Kafka): PEM file of the CA(s) to trust; the
    /// system's bundle when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// TLS: PEM client certificate, for brokers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// TLS: PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// MQTT keep-alive, at least 5s: tidegate pings this often, even when idle, and the
    /// broker drops a connection silent for 1.5 times as long.
    #[serde(
        default = "default_keep_alive",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub keep_alive: Duration,
    /// Start a new session on every connection (messages meant for tidegate while it is
    /// away are then lost). Default `false`: a persistent session.
    #[serde(default)]
    pub clean_session: bool,
    /// Most publishes awaiting their acknowledgement at once, each way (MQTT 5 receive
    /// maximum for deliveries; order is kept whatever the window).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
}

/// The keys of [`MqttClientConfig`], as they appear in the sections that flatten it.
pub(super) const KEYS: &[&str] = &[
    "url",
    "protocol",
    "client_id",
    "username",
    "password_file",
    "password_env",
    "ca_file",
    "client_cert",
    "client_key",
    "keep_alive",
    "clean_session",
    "max_inflight",
];

/// The first key of `table` that neither the section (its `own` keys) nor
/// [`MqttClientConfig`] takes, with serde's message for it; `None` when every key is known.
pub(super) fn unknown_key(table: &toml::Table, own: &[&str]) -> Option<(String, String)> {
    let known = |k: &str| own.contains(&k) || KEYS.contains(&k);
    let key = table.keys().find(|k| !known(k))?;
    let expected: Vec<String> = own.iter().chain(KEYS).map(|k| format!("`{k}`")).collect();
    let message = format!(
        "unknown field `{key}`, expected one of {}",
        expected.join(", ")
    );
    Some((key.clone(), message))
}

impl Default for MqttClientConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            protocol: default_protocol(),
            client_id: None,
            username: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: default_keep_alive(),
            clean_session: false,
            max_inflight: default_max_inflight(),
        }
    }
}

impl MqttClientConfig {
    /// These keys with `url` set and every other at its default.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

pub(super) fn default_protocol() -> u8 {
    5
}
pub(super) fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_max_inflight() -> u16 {
    100
}

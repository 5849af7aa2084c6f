//! `[[mqtt_subscribe]]`: an existing MQTT broker whose messages tidegate journals.
//!
//! Plain data; the checks (topic filters, and the bridge's loop rule against the MQTT
//! upstreams) are `crate::ingest::mqtt_subscribe::config::validate`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MqttClientConfig;

/// One `[[mqtt_subscribe]]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscribeConfig {
    /// Topic filters (wildcards allowed) whose messages are journaled.
    pub topics: Vec<String>,
    /// QoS of the subscriptions: 1 (default; each message acknowledged after its commit)
    /// or 0 (best effort: the broker forgets a message once sent).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Time allowed to connect (TCP, TLS, CONNECT/CONNACK).
    #[serde(
        default = "default_connect_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub connect_timeout: Duration,
    /// First delay before connecting again after a failure; doubles up to `backoff_max`.
    #[serde(
        default = "default_backoff_initial",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_initial: Duration,
    /// Longest delay between connection attempts.
    #[serde(
        default = "default_backoff_max",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_max: Duration,
    /// The broker and how to connect to it (`url`, `protocol`, `client_id`, credentials,
    /// TLS files, `keep_alive`, `clean_session`, `max_inflight`). Flattened: the keys sit in
    /// `[[mqtt_subscribe]]` itself, and `deny_unknown_fields` above still refuses a key
    /// neither struct takes. Under MQTT 3.1.1 the broker's own in-flight limit applies;
    /// only 5 lets tidegate recognise (and drop) its own forwarded messages.
    #[serde(flatten)]
    pub client: MqttClientConfig,
}

/// The keys of `[[mqtt_subscribe]]` besides the flattened [`MqttClientConfig`] ones (see
/// there why they are listed).
pub(super) const OWN_KEYS: &[&str] = &[
    "topics",
    "qos",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
];

impl MqttSubscribeConfig {
    /// A subscription to `topics` on the broker at `url`, every other key at its default.
    pub fn new(url: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            topics,
            qos: default_qos(),
            connect_timeout: default_connect_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            client: MqttClientConfig::with_url(url),
        }
    }
}

pub(super) fn default_qos() -> u8 {
    1
}
pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

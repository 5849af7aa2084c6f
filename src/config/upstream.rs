//! `[[upstream]]`: a Kafka cluster or an MQTT broker the journal is forwarded to.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MqttClientConfig;

/// The kind of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum UpstreamKind {
    /// An Apache Kafka cluster (or any Kafka-protocol broker).
    Kafka,
    /// An MQTT broker (3.1.1 or 5): the bridge's upstream direction.
    Mqtt,
}

/// Compression of Kafka record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// `sasl_mechanism` of a Kafka upstream: the SASL mechanisms rskafka implements with a
/// user name and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaslMechanism {
    /// SASL/PLAIN: the password goes to the broker as is; use it with `tls = true`.
    Plain,
    /// SASL/SCRAM-SHA-256 (RFC 7677): the password never crosses the wire.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SASL/SCRAM-SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl std::fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        })
    }
}

/// One `[[upstream]]`: a destination with its own cursor in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique name; it keys the upstream's cursor in the journal, so renaming an upstream
    /// starts it again from the oldest reading held.
    pub name: String,
    /// Which sink forwards to it.
    pub kind: UpstreamKind,
    /// Bootstrap brokers, `host:port`.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Kafka topic every reading goes to; the MQTT topic becomes the record key.
    #[serde(default)]
    pub topic: String,
    /// Most readings in one forwarded batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a forwarder waits for a batch to fill once it has something to send.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Batch compression.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Create the topic with `partitions` partitions if it does not exist.
    #[serde(default = "default_create_topic")]
    pub create_topic: bool,
    /// Partition count used when tidegate creates the topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor used when tidegate creates the topic.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i16,
    /// Time allowed for one produce request before it counts as failed and is retried.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay while the upstream is unreachable; doubles up to `backoff_max`.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest delay between retries.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// `kind = "mqtt"`: prepended to each reading's topic to form the upstream topic.
    #[serde(default)]
    pub topic_prefix: String,
    /// `kind = "mqtt"`: the upstream topic as a template instead of `topic_prefix`;
    /// `{topic}` is the reading's topic, `{gateway}` the gateway id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_template: Option<String>,
    /// `kind = "kafka"`: connect to the brokers over TLS (Kafka's `SSL` / `SASL_SSL`).
    #[serde(default)]
    pub tls: bool,
    /// `kind = "kafka"`: authenticate with SASL (`plain`, `scram-sha-256`, `scram-sha-512`)
    /// as `username`, password from `password_file` or `password_env`. Unset: no SASL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The MQTT client keys (`url`, `protocol`, `client_id`, `keep_alive`, …) of
    /// `kind = "mqtt"`; a Kafka upstream uses its credential and TLS file keys
    /// (`username`, `password_file`, `password_env`, `ca_file`, `client_cert`,
    /// `client_key`) too. Flattened: the TOML keys sit in `[[upstream]]` itself, and
    /// `deny_unknown_fields` above still refuses a key neither struct takes.
    #[serde(flatten)]
    pub client: MqttClientConfig,
}

/// The keys of `[[upstream]]` besides the flattened [`MqttClientConfig`] ones (see there
/// why they are listed).
pub(super) const OWN_KEYS: &[&str] = &[
    "name",
    "kind",
    "brokers",
    "topic",
    "max_batch",
    "linger",
    "compression",
    "create_topic",
    "partitions",
    "replication_factor",
    "request_timeout",
    "backoff_initial",
    "backoff_max",
    "topic_prefix",
    "topic_template",
    "tls",
    "sasl_mechanism",
];

impl UpstreamConfig {
    /// An upstream named `name` of `kind` with every other key at its default (for code
    /// and tests that build one by hand: `UpstreamConfig { brokers, ..UpstreamConfig::new(…) }`).
    pub fn new(name: impl Into<String>, kind: UpstreamKind) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            kind,
            brokers: Vec::new(),
            topic: String::new(),
            max_batch: default_max_batch(),
            linger: default_linger(),
            compression: default_compression(),
            create_topic: default_create_topic(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            request_timeout: default_request_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            topic_prefix: String::new(),
            topic_template: None,
            tls: false,
            sasl_mechanism: None,
            client: MqttClientConfig::default(),
        }
    }
}

pub(super) fn default_max_batch() -> usize {
    5000
}
pub(super) fn default_linger() -> Duration {
    Duration::from_millis(10)
}
pub(super) fn default_compression() -> Compression {
    Compression::Lz4
}
pub(super) fn default_create_topic() -> bool {
    true
}
pub(super) fn default_partitions() -> i32 {
    1
}
pub(super) fn default_replication_factor() -> i16 {
    1
}
pub(super) fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_backoff_initial() -> Duration {
    Duration::from_millis(200)
}
pub(super) fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

impl UpstreamConfig {
    /// Pushes every problem the values of this upstream show, keyed `{key}.field`;
    /// `names` holds the names of the upstreams before it. The client keys of
    /// `kind = "mqtt"` and the TLS/SASL keys of `kind = "kafka"` are checked by their sinks.
    pub(super) fn validate(&self, key: &str, names: &mut HashSet<String>, p: &mut Vec<String>) {
        if self.name.trim().is_empty() {
            p.push(format!("{key}.name: must not be empty"));
        } else if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            p.push(format!(
                "{key}.name: {:?} may only hold letters, digits, '-', '_' and '.'",
                self.name
            ));
        } else if !names.insert(self.name.clone()) {
            p.push(format!(
                "{key}.name: {:?} is used by another upstream; names key cursors and must be unique",
                self.name
            ));
        }
        match self.kind {
            UpstreamKind::Mqtt => {
                // TLS is the url's scheme there, and MQTT has no SASL.
                if self.tls {
                    p.push(format!("{key}.tls: only for kind = \"kafka\"; an mqtt upstream uses an \"mqtts://\" url"));
                }
                if self.sasl_mechanism.is_some() {
                    p.push(format!("{key}.sasl_mechanism: only for kind = \"kafka\"; an mqtt upstream logs in with username and password alone"));
                }
            }
            UpstreamKind::Kafka => self.validate_kafka(key, p),
        }
        if self.max_batch == 0 || self.max_batch > 100_000 {
            p.push(format!(
                "{key}.max_batch: {} is outside 1 ..= 100000",
                self.max_batch
            ));
        }
        if self.partitions < 1 {
            p.push(format!("{key}.partitions: must be at least 1"));
        }
        if self.replication_factor < 1 {
            p.push(format!("{key}.replication_factor: must be at least 1"));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            p.push(format!(
                "{key}.backoff_initial: must be above 0 and at most backoff_max ({})",
                humantime::format_duration(self.backoff_max)
            ));
        }
        if self.request_timeout.is_zero() {
            p.push(format!("{key}.request_timeout: must be above 0"));
        }
    }

    /// The brokers, topic and url of a Kafka upstream.
    fn validate_kafka(&self, key: &str, p: &mut Vec<String>) {
        if !self.client.url.is_empty() {
            p.push(format!(
                "{key}.url: only for kind = \"mqtt\"; a kafka upstream uses brokers"
            ));
        }
        if self.brokers.is_empty() {
            p.push(format!(
                "{key}.brokers: a kafka upstream needs at least one \"host:port\""
            ));
        }
        for b in &self.brokers {
            if b.rsplit_once(':')
                .and_then(|(h, port)| (!h.is_empty()).then_some(port))
                .and_then(|port| port.parse::<u16>().ok())
                .is_none()
            {
                p.push(format!("{key}.brokers: {b:?} is not \"host:port\""));
            }
        }
        if self.topic.is_empty() {
            p.push(format!("{key}.topic: a kafka upstream needs a topic"));
        } else if self.topic.len() > 249
            || !self
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            p.push(format!(
                "{key}.topic: {:?} is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)",
                self.topic
            ));
        }
    }
}

//! `[[upstream]]`: a Kafka cluster or an MQTT broker the journal is forwarded to.

use std::collections::HashSet;
use std::time::Duration;

use bytesize::ByteSize;
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

/// `budget_period`: the calendar period a data `budget` is granted for (local time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetPeriod {
    /// From local midnight to the next.
    Day,
    /// From local midnight of `budget_reset_day` to the same day of the next month.
    Month,
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
    #[serde(
        default = "default_linger",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub linger: Duration,
    /// Batch compression; unset means `lz4`, or `zstd` when `bandwidth` is set (the codec
    /// that sends the fewest bytes per reading; see [`UpstreamConfig::compression`]).
    #[serde(
        default,
        rename = "compression",
        skip_serializing_if = "Option::is_none"
    )]
    pub compression_setting: Option<Compression>,
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
    #[serde(
        default = "default_request_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub request_timeout: Duration,
    /// First retry delay while the upstream is unreachable; doubles up to `backoff_max`.
    #[serde(
        default = "default_backoff_initial",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_initial: Duration,
    /// Longest delay between retries.
    #[serde(
        default = "default_backoff_max",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
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
    /// The link's limits: bandwidth, live lane, urgent readings, data budget, send windows.
    #[serde(flatten)]
    pub uplink: UplinkConfig,
}

/// The constrained-uplink keys of an `[[upstream]]` (flattened into it): how many bytes per
/// second and per period the link may carry, when the backlog may use it, and the live lane
/// that keeps current values flowing while the backlog drains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkConfig {
    /// Bytes per second on the wire (what the sink writes: requests after compression,
    /// framing included), both lanes together. Unset: unlimited.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::units::option_size"
    )]
    pub bandwidth: Option<ByteSize>,
    /// Bytes the link may send at once after being idle. Unset: one second's worth.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::units::option_size"
    )]
    pub bandwidth_burst: Option<ByteSize>,
    /// `kind = "kafka"`: the topic of the live lane (empty: no live lane).
    #[serde(default)]
    pub live_topic: String,
    /// `kind = "mqtt"`: prefix of the live lane's topics (empty: no live lane).
    #[serde(default)]
    pub live_topic_prefix: String,
    /// The live lane sends while the oldest unsent reading is older than this.
    #[serde(
        default = "default_live_after",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub live_after: Duration,
    /// Each topic's newest reading goes to the live lane at most once per this interval.
    #[serde(
        default = "default_live_interval",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub live_interval: Duration,
    /// Share of `bandwidth` the live lane may take while the backlog drains.
    #[serde(default = "default_live_share")]
    pub live_share: f64,
    /// Topic filters of readings that go through the live lane at once, never sampled.
    #[serde(default)]
    pub urgent: Vec<String>,
    /// Bytes the link may carry per `budget_period` (sent and received). Unset: no budget.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::units::option_size"
    )]
    pub budget: Option<ByteSize>,
    /// The calendar period of `budget`.
    #[serde(default = "default_budget_period")]
    pub budget_period: BudgetPeriod,
    /// `budget_period = "month"`: the day of the month (1..=28) a new period starts.
    #[serde(default = "default_budget_reset_day")]
    pub budget_reset_day: u8,
    /// Share of `budget` kept for the live lane and urgent readings: the backlog pauses
    /// when only this much is left.
    #[serde(default = "default_live_reserve")]
    pub live_reserve: f64,
    /// Local-time windows in which the backlog may be sent, e.g. `"22:00-06:00"` or
    /// `"Sat 00:00-Sun 23:59"`. Empty: always.
    #[serde(default)]
    pub send_windows: Vec<String>,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            bandwidth: None,
            bandwidth_burst: None,
            live_topic: String::new(),
            live_topic_prefix: String::new(),
            live_after: default_live_after(),
            live_interval: default_live_interval(),
            live_share: default_live_share(),
            urgent: Vec::new(),
            budget: None,
            budget_period: default_budget_period(),
            budget_reset_day: default_budget_reset_day(),
            live_reserve: default_live_reserve(),
            send_windows: Vec::new(),
        }
    }
}

impl UplinkConfig {
    /// Whether this upstream has a live lane.
    pub fn has_live_lane(&self) -> bool {
        !self.live_topic.is_empty() || !self.live_topic_prefix.is_empty()
    }

    /// The bucket size: `bandwidth_burst`, or one second of `bandwidth`.
    pub fn burst(&self) -> Option<u64> {
        self.bandwidth
            .map(|b| self.bandwidth_burst.unwrap_or(b).as_u64())
    }
}

/// The keys of `[[upstream]]` besides the flattened [`MqttClientConfig`] ones (see there
/// why they are listed), the flattened [`UplinkConfig`] ones included.
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
    "bandwidth",
    "bandwidth_burst",
    "live_topic",
    "live_topic_prefix",
    "live_after",
    "live_interval",
    "live_share",
    "urgent",
    "budget",
    "budget_period",
    "budget_reset_day",
    "live_reserve",
    "send_windows",
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
            compression_setting: None,
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
            uplink: UplinkConfig::default(),
        }
    }

    /// The batch codec: `compression` if set; otherwise `zstd` on a link with a
    /// `bandwidth` (fewest bytes per reading, measured in docs/performance.md) and `lz4`
    /// elsewhere (least CPU).
    pub fn compression(&self) -> Compression {
        match (self.compression_setting, self.uplink.bandwidth) {
            (Some(c), _) => c,
            (None, Some(_)) => Compression::Zstd,
            (None, None) => default_compression(),
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
fn default_live_after() -> Duration {
    Duration::from_secs(30)
}
fn default_live_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_live_share() -> f64 {
    0.2
}
fn default_budget_period() -> BudgetPeriod {
    BudgetPeriod::Month
}
fn default_budget_reset_day() -> u8 {
    1
}
fn default_live_reserve() -> f64 {
    0.1
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
        self.validate_uplink(key, p);
    }

    /// The constrained-uplink keys; the send windows' syntax and the urgent filters are
    /// checked by the forwarding stage, which owns their meaning.
    fn validate_uplink(&self, key: &str, p: &mut Vec<String>) {
        let u = &self.uplink;
        match self.kind {
            UpstreamKind::Kafka => {
                if !u.live_topic_prefix.is_empty() {
                    p.push(format!("{key}.live_topic_prefix: only for kind = \"mqtt\"; a kafka upstream's live lane is live_topic"));
                }
                if !u.live_topic.is_empty() {
                    if !is_kafka_topic(&u.live_topic) {
                        p.push(format!("{key}.live_topic: {:?} is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)", u.live_topic));
                    } else if u.live_topic == self.topic {
                        p.push(format!("{key}.live_topic: must differ from topic ({:?}): the live lane is sampled, the history is complete; give it e.g. \"{}-live\"", self.topic, self.topic));
                    }
                }
            }
            UpstreamKind::Mqtt => {
                if !u.live_topic.is_empty() {
                    p.push(format!("{key}.live_topic: only for kind = \"kafka\"; an mqtt upstream's live lane is live_topic_prefix"));
                }
                if !u.live_topic_prefix.is_empty() {
                    if u.live_topic_prefix.contains(['+', '#'])
                        || u.live_topic_prefix.starts_with('$')
                    {
                        p.push(format!("{key}.live_topic_prefix: {:?} may hold no wildcard ('+', '#') and may not start with '$'; e.g. \"live/\"", u.live_topic_prefix));
                    } else if self.topic_template.is_none()
                        && u.live_topic_prefix == self.topic_prefix
                    {
                        p.push(format!("{key}.live_topic_prefix: must differ from topic_prefix ({:?}), or live readings land among the history; e.g. \"live/{}\"", self.topic_prefix, self.topic_prefix));
                    }
                }
            }
        }
        if let Some(b) = u.bandwidth {
            if b.as_u64() < 1024 {
                p.push(format!("{key}.bandwidth: {b} is below 1KiB per second; give a size per second like \"64KiB\""));
            }
        } else if u.bandwidth_burst.is_some() {
            p.push(format!("{key}.bandwidth_burst: only with bandwidth; set bandwidth = \"64KiB\" or remove it"));
        }
        if let Some(b) = u.bandwidth_burst {
            if b.as_u64() < 1024 {
                p.push(format!(
                    "{key}.bandwidth_burst: {b} is below 1KiB; give a size like \"64KiB\""
                ));
            }
        }
        if !(u.live_share > 0.0 && u.live_share < 1.0) {
            p.push(format!(
                "{key}.live_share: {} is outside 0 < share < 1; e.g. 0.2 (a fifth of bandwidth)",
                u.live_share
            ));
        }
        if u.live_interval < Duration::from_millis(100) {
            p.push(format!(
                "{key}.live_interval: must be at least 100ms; e.g. \"5s\""
            ));
        }
        if !u.urgent.is_empty() && !u.has_live_lane() {
            p.push(format!(
                "{key}.urgent: urgent readings go through the live lane; set {} too",
                match self.kind {
                    UpstreamKind::Kafka => "live_topic",
                    UpstreamKind::Mqtt => "live_topic_prefix",
                }
            ));
        }
        if let Some(b) = u.budget {
            if b.as_u64() < 1024 * 1024 {
                p.push(format!(
                    "{key}.budget: {b} is below 1MiB per period; give a size like \"2GiB\""
                ));
            }
        }
        if !(1..=28).contains(&u.budget_reset_day) {
            p.push(format!(
                "{key}.budget_reset_day: {} is outside 1 ..= 28 (every month has those days)",
                u.budget_reset_day
            ));
        }
        if !(u.live_reserve >= 0.0 && u.live_reserve < 1.0) {
            p.push(format!("{key}.live_reserve: {} is outside 0 <= reserve < 1; e.g. 0.1 (a tenth of the budget)", u.live_reserve));
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
        } else if !is_kafka_topic(&self.topic) {
            p.push(format!(
                "{key}.topic: {:?} is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)",
                self.topic
            ));
        }
    }
}

/// Whether `topic` is a legal Kafka topic name.
fn is_kafka_topic(topic: &str) -> bool {
    topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

//! `[[mqtt_subscribe]]`: an existing MQTT broker whose messages tidegate journals.
//!
//! [`validate`] reports every problem with its key (`mqtt_subscribe[0].topics`), and it
//! enforces the first half of the bridge's loop rule: a subscription may not take topics
//! that an `[[upstream]] kind = "mqtt"` on the same broker publishes (see the README).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, UpstreamKind};
use crate::sinks::mqtt::client::{BrokerUrl, Endpoint};
use crate::sinks::mqtt::config::{filter_matches_prefix, published_prefix, ClientKeys};

/// One `[[mqtt_subscribe]]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscribeConfig {
    /// The broker, `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// Topic filters (wildcards allowed) whose messages are journaled.
    pub topics: Vec<String>,
    /// QoS of the subscriptions: 1 (default; each message acknowledged after its commit)
    /// or 0 (best effort: the broker forgets a message once sent).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// MQTT version, 4 (3.1.1) or 5. Only 5 lets tidegate recognise (and drop) its own
    /// forwarded messages by their `tidegate-gateway` property.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// Client id; default `tidegate-<gateway id>-sub-<n>` (n = position in the file,
    /// from 1). It names the persistent session, so set it when sections may be reordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name, if the broker wants credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// `mqtts://`: PEM file of the CA(s) to trust; the system's bundle when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`: PEM client certificate, for brokers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// `mqtts://`: PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// MQTT keep-alive, at least 5s: tidegate pings this often and the broker drops a
    /// connection silent for 1.5 times as long.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Start a new session on every connection: messages published while tidegate is
    /// away are then lost. Default `false`: the broker queues them for tidegate.
    #[serde(default)]
    pub clean_session: bool,
    /// Most messages delivered and not yet acknowledged (MQTT 5 receive maximum; under
    /// 3.1.1 the broker's own setting applies).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Time allowed to connect (TCP, TLS, CONNECT/CONNACK).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First delay before connecting again after a failure; doubles up to `backoff_max`.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest delay between connection attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

fn default_qos() -> u8 {
    1
}
fn default_protocol() -> u8 {
    5
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_inflight() -> u16 {
    100
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

impl MqttSubscribeConfig {
    fn client_keys(&self) -> ClientKeys<'_> {
        ClientKeys {
            url: &self.url,
            protocol: self.protocol,
            client_id: self.client_id.as_deref(),
            username: self.username.as_deref(),
            password_file: self.password_file.as_deref(),
            password_env: self.password_env.as_deref(),
            ca_file: self.ca_file.as_deref(),
            client_cert: self.client_cert.as_deref(),
            client_key: self.client_key.as_deref(),
            keep_alive: self.keep_alive,
            max_inflight: self.max_inflight,
        }
    }

    /// The connection of the subscription at `index` (0-based) of a gateway, taking
    /// messages up to `max_packet` bytes.
    pub fn endpoint(
        &self,
        index: usize,
        gateway_id: &str,
        max_packet: usize,
    ) -> Result<Endpoint, String> {
        self.client_keys().endpoint(
            format!("tidegate-{gateway_id}-sub-{}", index + 1),
            self.clean_session,
            max_packet,
            self.connect_timeout,
        )
    }
}

/// Checks every `[[mqtt_subscribe]]`, and the loop rule against the MQTT upstreams.
pub fn validate(config: &Config, p: &mut Vec<String>) {
    for (i, s) in config.mqtt_subscribe.iter().enumerate() {
        let key = format!("mqtt_subscribe[{i}]");
        s.client_keys().validate(&key, p);
        if s.topics.is_empty() {
            p.push(format!("{key}.topics: at least one topic filter"));
        }
        for f in &s.topics {
            if let Some(why) = filter_problem(f) {
                p.push(format!("{key}.topics: {f:?} {why}"));
            }
        }
        if s.qos > 1 {
            p.push(format!("{key}.qos: {} is not 0 or 1", s.qos));
        }
        if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
            p.push(format!(
                "{key}.backoff_initial: must be above 0 and at most backoff_max ({})",
                humantime::format_duration(s.backoff_max)
            ));
        }
        if s.connect_timeout < Duration::from_secs(1) {
            p.push(format!("{key}.connect_timeout: at least 1s"));
        }
        // The loop rule, by construction: never subscribe on a broker to what an MQTT
        // upstream publishes there.
        let Ok(sub_url) = BrokerUrl::parse(&s.url) else {
            continue;
        };
        for (j, u) in config.upstream.iter().enumerate() {
            if u.kind != UpstreamKind::Mqtt {
                continue;
            }
            let Some(up_url) = u.mqtt_broker() else {
                continue;
            };
            if !sub_url.same_broker(&up_url) {
                continue;
            }
            let prefix = published_prefix(u, &config.gateway.id);
            for f in s.topics.iter().filter(|f| filter_problem(f).is_none()) {
                if filter_matches_prefix(f, &prefix) {
                    p.push(format!(
                        "{key}.topics: {f:?} on {sub_url} would receive what upstream[{j}] ({:?}) publishes to the same broker under {:?}; tidegate would journal its own forwards again (a loop). Give the upstream a topic_prefix no filter here matches",
                        u.name,
                        if prefix.is_empty() { "any topic".to_owned() } else { format!("{prefix}…") }
                    ));
                }
            }
        }
        if let Some(dup) = config.mqtt_subscribe[..i].iter().position(|o| {
            o.client_id.is_some()
                && o.client_id == s.client_id
                && BrokerUrl::parse(&o.url).is_ok_and(|u| u.same_broker(&sub_url))
        }) {
            p.push(format!(
                "{key}.client_id: also used by mqtt_subscribe[{dup}] on the same broker; each subscription needs its own session"
            ));
        }
    }
}

/// Why a topic filter is unusable, if it is (MQTT 4.7 rules).
fn filter_problem(f: &str) -> Option<&'static str> {
    if f.is_empty() {
        return Some("is empty");
    }
    if f.contains('\0') {
        return Some("contains NUL");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return Some("has '#' other than as the whole last level");
        }
        if l.contains('+') && *l != "+" {
            return Some("has '+' that is not a whole level");
        }
    }
    if f.starts_with('$') {
        return Some("starts with '$': broker topics are not readings");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_examples_parse_with_their_defaults() {
        let c = parse(
            r#"
            [gateway]
            id = "gw-7"
            [[upstream]]
            name = "cloud"
            kind = "mqtt"
            url = "mqtt://127.0.0.1:1883"
            topic_prefix = "site-7/"
            [[mqtt_subscribe]]
            url = "mqtt://127.0.0.1:1884"
            topics = ["sensors/#"]
            "#,
        )
        .expect("valid");
        let s = &c.mqtt_subscribe[0];
        assert_eq!((s.qos, s.protocol, s.clean_session), (1, 5, false));
        let e = s.endpoint(0, "gw-7", 1024).expect("endpoint");
        assert_eq!(e.client_id, "tidegate-gw-7-sub-1");
        let e = c.upstream[0].mqtt_endpoint("gw-7").expect("endpoint");
        assert_eq!(e.client_id, "tidegate-gw-7-cloud");
        assert_eq!(c.upstream[0].max_inflight, 100);
    }

    /// The commented-out block of `deploy/tidegate.toml` that starts at `header`, with the
    /// comment marks removed from its key lines (prose lines are left out).
    fn uncommented_block(header: &str) -> String {
        let text = include_str!("../../../deploy/tidegate.toml");
        let start = text
            .find(&format!("\n{header}\n"))
            .unwrap_or_else(|| panic!("{header} is in deploy/tidegate.toml"));
        text[start + 1..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with("[[") || toml::from_str::<toml::Table>(l).is_ok())
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_shipped_mqtt_examples_are_valid_and_state_the_real_defaults() {
        let text = uncommented_block("# [[upstream]]") + &uncommented_block("# [[mqtt_subscribe]]");
        assert!(text.contains("kind = \"mqtt\""), "{text}");
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let u = &c.upstream[0];
        let d = crate::config::UpstreamConfig::new("x", UpstreamKind::Mqtt);
        assert_eq!(u.kind, UpstreamKind::Mqtt);
        assert!(u.username.is_some() && u.password_file.is_some() && u.ca_file.is_some());
        assert_eq!(
            (u.protocol, u.clean_session, u.keep_alive, u.max_inflight),
            (d.protocol, d.clean_session, d.keep_alive, d.max_inflight)
        );
        assert_eq!(
            (
                u.max_batch,
                u.linger,
                u.request_timeout,
                u.backoff_initial,
                u.backoff_max
            ),
            (
                d.max_batch,
                d.linger,
                d.request_timeout,
                d.backoff_initial,
                d.backoff_max
            )
        );
        let s = &c.mqtt_subscribe[0];
        assert_eq!(s.topics, ["sensors/#"]);
        assert_eq!(
            (
                s.qos,
                s.protocol,
                s.clean_session,
                s.keep_alive,
                s.max_inflight
            ),
            (
                default_qos(),
                default_protocol(),
                false,
                default_keep_alive(),
                default_max_inflight()
            )
        );
        assert_eq!(
            (s.connect_timeout, s.backoff_initial, s.backoff_max),
            (
                default_connect_timeout(),
                default_backoff_initial(),
                default_backoff_max()
            )
        );
    }

    #[test]
    fn subscribing_to_what_an_upstream_publishes_on_the_same_broker_is_refused() {
        let err = parse(
            r#"
            [[upstream]]
            name = "cloud"
            kind = "mqtt"
            url = "mqtt://localhost:1883"
            topic_prefix = "site-7/"
            [[mqtt_subscribe]]
            url = "mqtt://LOCALHOST:1883/"
            topics = ["sensors/#", "+/turbines/#"]
            "#,
        )
        .expect_err("a loop");
        assert!(
            err.contains("mqtt_subscribe[0].topics: \"+/turbines/#\""),
            "{err}"
        );
        assert!(err.contains("a loop"), "{err}");
        assert!(!err.contains("\"sensors/#\" on"), "{err}");
        // Without a prefix every topic is the upstream's.
        let err = parse(
            r#"
            [[upstream]]
            name = "cloud"
            kind = "mqtt"
            url = "mqtt://localhost:1883"
            [[mqtt_subscribe]]
            url = "mqtt://localhost:1883"
            topics = ["sensors/#"]
            "#,
        )
        .expect_err("a loop");
        assert!(err.contains("mqtt_subscribe[0].topics"), "{err}");
    }

    #[test]
    fn bad_client_settings_are_reported_with_their_keys() {
        let err = parse(
            r#"
            [[upstream]]
            name = "cloud"
            kind = "mqtt"
            url = "tcp://x:1883"
            protocol = 3
            password_env = "X"
            brokers = ["a:1"]
            topic_prefix = "a/#"
            [[upstream]]
            name = "c2"
            kind = "mqtt"
            url = "mqtt://x:1883"
            ca_file = "/ca.pem"
            client_cert = "/c.pem"
            keep_alive = "500ms"
            max_inflight = 0
            topic_template = "up/{gateway}"
            [[mqtt_subscribe]]
            url = "mqtts://h"
            topics = ["a/#/b", "$SYS/#", "x+"]
            qos = 2
            password_file = "/p"
            password_env = "P"
            "#,
        )
        .expect_err("invalid");
        for needle in [
            "upstream[0].url",
            "upstream[0].protocol",
            "upstream[0].username",
            "upstream[0].brokers",
            "upstream[0].topic_prefix",
            "upstream[1].ca_file",
            "upstream[1].client_cert",
            "upstream[1].keep_alive",
            "upstream[1].max_inflight",
            "upstream[1].topic_template",
            "mqtt_subscribe[0].topics: \"a/#/b\"",
            "mqtt_subscribe[0].topics: \"$SYS/#\"",
            "mqtt_subscribe[0].topics: \"x+\"",
            "mqtt_subscribe[0].qos",
            "mqtt_subscribe[0].password_file",
            "mqtt_subscribe[0].username",
        ] {
            assert!(err.contains(needle), "{needle} missing from:\n{err}");
        }
    }
}

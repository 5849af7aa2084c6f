//! Checks of `[[mqtt_subscribe]]` sections (the data is `crate::config::mqtt_subscribe`),
//! and the connection each one makes.
//!
//! [`validate`] reports every problem with its key (`mqtt_subscribe[0].topics`), and it
//! enforces the first half of the bridge's loop rule: a subscription may not take topics
//! that an `[[upstream]] kind = "mqtt"` on the same broker publishes (see the README).

use std::time::Duration;

pub use crate::config::MqttSubscribeConfig;
use crate::config::{Config, UpstreamKind};
use crate::mqtt_client::topics::{filter_matches_prefix, filter_problem, published_prefix};
use crate::mqtt_client::{keys, BrokerUrl, BrokerUrlError, Endpoint};

/// The connection of the subscription at `index` (0-based) of a gateway, taking messages
/// up to `max_packet` bytes; its client id defaults to `tidegate-<gateway id>-sub-<n>`.
pub fn endpoint(
    s: &MqttSubscribeConfig,
    index: usize,
    gateway_id: &str,
    max_packet: usize,
) -> Result<Endpoint, BrokerUrlError> {
    keys::endpoint(
        &s.client,
        format!("tidegate-{gateway_id}-sub-{}", index + 1),
        max_packet,
        s.connect_timeout,
    )
}

/// Checks every `[[mqtt_subscribe]]`, and the loop rule against the MQTT upstreams.
pub fn validate(config: &Config, p: &mut Vec<String>) {
    for (i, s) in config.mqtt_subscribe.iter().enumerate() {
        let key = format!("mqtt_subscribe[{i}]");
        keys::validate(&s.client, &key, p);
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
        let Ok(sub_url) = BrokerUrl::parse(&s.client.url) else {
            continue;
        };
        for (j, u) in config.upstream.iter().enumerate() {
            if u.kind != UpstreamKind::Mqtt {
                continue;
            }
            let Ok(up_url) = BrokerUrl::parse(&u.client.url) else {
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
            o.client.client_id.is_some()
                && o.client.client_id == s.client.client_id
                && BrokerUrl::parse(&o.client.url).is_ok_and(|u| u.same_broker(&sub_url))
        }) {
            p.push(format!(
                "{key}.client_id: also used by mqtt_subscribe[{dup}] on the same broker; each subscription needs its own session"
            ));
        }
    }
}

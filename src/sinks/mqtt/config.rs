//! What an `[[upstream]]` with `kind = "mqtt"` asks of the sink: the checks of its keys and
//! the connection it makes. The client keys it shares with `[[mqtt_subscribe]]` are checked
//! and turned into an [`Endpoint`] by [`crate::mqtt_client::keys`].

use crate::config::UpstreamConfig;
use crate::mqtt_client::{keys, BrokerUrlError, Endpoint};

/// Largest packet the sink sends: `mqtt.max_packet` bounds a reading's payload, and the
/// topic, prefix and properties come on top. The broker's own limit (MQTT 5 CONNACK) is
/// respected by rumqttc; a reading above it is a fatal error naming the sizes.
const SINK_MAX_PACKET: usize = 256 * 1024 * 1024;

/// The connection an MQTT upstream makes (`kind = "mqtt"`); its client id defaults to
/// `tidegate-<gateway id>-<name>`.
pub fn endpoint(u: &UpstreamConfig, gateway_id: &str) -> Result<Endpoint, BrokerUrlError> {
    keys::endpoint(
        &u.client,
        format!("tidegate-{gateway_id}-{}", u.name),
        SINK_MAX_PACKET,
        u.request_timeout,
    )
}

/// Checks the keys of an `[[upstream]]` with `kind = "mqtt"`.
pub fn validate_upstream(u: &UpstreamConfig, key: &str, gateway_id: &str, p: &mut Vec<String>) {
    keys::validate(&u.client, key, p);
    if !u.brokers.is_empty() {
        p.push(format!(
            "{key}.brokers: only for kind = \"kafka\"; an mqtt upstream uses url"
        ));
    }
    if !u.topic.is_empty() {
        p.push(format!(
            "{key}.topic: only for kind = \"kafka\"; an mqtt upstream uses topic_prefix or topic_template"
        ));
    }
    let topic_problem = |what: &str, text: &str| -> Option<String> {
        if text.contains(['+', '#', '\0']) {
            Some(format!("{what} {text:?} contains a wildcard or NUL"))
        } else if text.starts_with('$') {
            Some(format!(
                "{what} {text:?} starts with '$' (reserved for broker topics)"
            ))
        } else if text.len() > 1024 {
            Some(format!("{what} is longer than 1024 bytes"))
        } else {
            None
        }
    };
    if let Some(e) = topic_problem("topic_prefix", &u.topic_prefix) {
        p.push(format!("{key}.topic_prefix: {e}"));
    }
    if let Some(t) = &u.topic_template {
        if !u.topic_prefix.is_empty() {
            p.push(format!(
                "{key}.topic_template: set topic_prefix or topic_template, not both"
            ));
        }
        if !t.contains("{topic}") {
            p.push(format!(
                "{key}.topic_template: {t:?} must contain {{topic}}, or every device would share one topic"
            ));
        }
        let filled = t.replace("{gateway}", gateway_id).replace("{topic}", "x");
        if let Some(e) = topic_problem("topic_template", &filled) {
            p.push(format!(
                "{key}.topic_template: {e} (with {{gateway}} = {gateway_id:?})"
            ));
        }
    }
}

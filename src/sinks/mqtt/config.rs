//! Validation of MQTT client settings, shared by `[[upstream]] kind = "mqtt"` and
//! `[[mqtt_subscribe]]`, and the topic-filter logic behind the bridge's loop rule.
//!
//! Every problem names its key (`upstream[1].url`, `mqtt_subscribe[0].topics`), like the
//! rest of [`crate::config`]; nothing here touches the network or reads secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{BrokerUrl, Endpoint, PasswordSource, MIN_KEEP_ALIVE};
use super::TopicMap;
use crate::config::UpstreamConfig;

/// The client settings both sections share, borrowed from either.
pub struct ClientKeys<'a> {
    pub url: &'a str,
    pub protocol: u8,
    pub client_id: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password_file: Option<&'a Path>,
    pub password_env: Option<&'a str>,
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
    pub keep_alive: Duration,
    pub max_inflight: u16,
}

impl ClientKeys<'_> {
    /// Pushes every problem, keyed `{key}.field`.
    pub fn validate(&self, key: &str, p: &mut Vec<String>) {
        if self.url.is_empty() {
            p.push(format!(
                "{key}.url: required, \"mqtt://host:port\" or \"mqtts://host:port\""
            ));
        } else if let Err(e) = BrokerUrl::parse(self.url) {
            p.push(format!("{key}.url: {e}"));
        }
        if self.protocol != 4 && self.protocol != 5 {
            p.push(format!(
                "{key}.protocol: {} is not 4 (MQTT 3.1.1) or 5",
                self.protocol
            ));
        }
        if let Some(id) = self.client_id {
            if id.is_empty() || id.len() > 65535 {
                p.push(format!(
                    "{key}.client_id: must not be empty (it names the persistent session)"
                ));
            }
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            p.push(format!(
                "{key}.password_file: set password_file or password_env, not both"
            ));
        }
        if (self.password_file.is_some() || self.password_env.is_some()) && self.username.is_none()
        {
            p.push(format!("{key}.username: required with a password"));
        }
        if self.password_env.is_some_and(str::is_empty) {
            p.push(format!("{key}.password_env: must name a variable"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.push(format!(
                "{key}.client_cert: client_cert and client_key go together"
            ));
        }
        let tls = BrokerUrl::parse(self.url).is_ok_and(|u| u.tls);
        if !tls {
            for (name, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert", self.client_cert.is_some()),
                ("client_key", self.client_key.is_some()),
            ] {
                if set && !self.url.is_empty() {
                    p.push(format!(
                        "{key}.{name}: only for TLS; use an \"mqtts://\" url"
                    ));
                }
            }
        }
        if self.keep_alive < MIN_KEEP_ALIVE {
            p.push(format!(
                "{key}.keep_alive: {} is below the 5s minimum",
                humantime::format_duration(self.keep_alive)
            ));
        }
        if self.keep_alive > Duration::from_secs(u64::from(u16::MAX)) {
            p.push(format!("{key}.keep_alive: at most 65535s"));
        }
        if self.max_inflight == 0 {
            p.push(format!("{key}.max_inflight: must be at least 1"));
        }
    }

    /// The [`Endpoint`] these keys describe (after validation; a bad url is an error here).
    #[allow(clippy::too_many_arguments)]
    pub fn endpoint(
        &self,
        default_client_id: String,
        clean_session: bool,
        max_packet: usize,
        connect_timeout: Duration,
    ) -> Result<Endpoint, String> {
        let password = match (self.password_file, self.password_env) {
            (Some(f), _) => Some(PasswordSource::File(f.to_owned())),
            (None, Some(v)) => Some(PasswordSource::Env(v.to_owned())),
            (None, None) => None,
        };
        Ok(Endpoint {
            url: BrokerUrl::parse(self.url)?,
            protocol: self.protocol,
            client_id: self
                .client_id
                .map(str::to_owned)
                .unwrap_or(default_client_id),
            username: self.username.map(str::to_owned),
            password,
            ca_file: self.ca_file.map(PathBuf::from),
            client_cert: self
                .client_cert
                .zip(self.client_key)
                .map(|(c, k)| (c.to_owned(), k.to_owned())),
            keep_alive: self.keep_alive,
            clean_session,
            max_inflight: self.max_inflight,
            max_packet,
            connect_timeout,
        })
    }
}

/// Largest packet the sink sends: `mqtt.max_packet` bounds a reading's payload, and the
/// topic, prefix and properties come on top. The broker's own limit (MQTT 5 CONNACK) is
/// respected by rumqttc; a reading above it is a fatal error naming the sizes.
const SINK_MAX_PACKET: usize = 256 * 1024 * 1024;

impl UpstreamConfig {
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

    /// The connection an MQTT upstream makes (`kind = "mqtt"`).
    pub fn mqtt_endpoint(&self, gateway_id: &str) -> Result<Endpoint, String> {
        self.client_keys().endpoint(
            format!("tidegate-{gateway_id}-{}", self.name),
            self.clean_session,
            SINK_MAX_PACKET,
            self.request_timeout,
        )
    }

    /// The broker an MQTT upstream publishes to, if its url parses.
    pub fn mqtt_broker(&self) -> Option<BrokerUrl> {
        BrokerUrl::parse(&self.url).ok()
    }
}

/// Checks the keys of an `[[upstream]]` with `kind = "mqtt"`.
pub fn validate_upstream(u: &UpstreamConfig, key: &str, gateway_id: &str, p: &mut Vec<String>) {
    u.client_keys().validate(key, p);
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

/// Whether a subscription to `filter` could receive a message published to some topic
/// that starts with `prefix` (and continues with anything): the loop check of the bridge.
/// An empty prefix can be any topic, so every filter (but `$…` ones) matches.
pub fn filter_matches_prefix(filter: &str, prefix: &str) -> bool {
    // Wildcards at the first level never match `$` topics; a `$` prefix is refused anyway.
    let levels: Vec<&str> = prefix.split('/').collect();
    let (complete, partial) = levels.split_at(levels.len() - 1);
    let partial = partial[0];
    let mut f = filter.split('/');
    for level in complete {
        match f.next() {
            None => return false,
            Some("#") => return true,
            Some("+") => {}
            Some(l) if l == *level => {}
            Some(_) => return false,
        }
    }
    // The last level of the prefix can be completed (and more levels added) at will.
    match f.next() {
        None => false,
        Some("#" | "+") => true,
        Some(l) => l.starts_with(partial),
    }
}

/// The fixed start of every topic an MQTT upstream publishes.
pub fn published_prefix(u: &UpstreamConfig, gateway_id: &str) -> String {
    TopicMap::from_config(u).fixed_prefix(gateway_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_matches_a_prefix_when_some_topic_under_it_could_match() {
        for (filter, prefix) in [
            ("#", "site-7/"),
            ("site-7/#", "site-7/"),
            ("site-7/+/telemetry", "site-7/"),
            ("+/turbines/#", "site-7/"),
            ("site-7/turbines/x", "site-7/"),
            ("site-7/tur", "site-7/"),
            ("site", "site"),
            ("site-7", "site"),
            ("sensors/#", ""),
            ("a/b", ""),
            ("up/gw-1/#", "up/gw-1/"),
        ] {
            assert!(
                filter_matches_prefix(filter, prefix),
                "{filter} should match under {prefix:?}"
            );
        }
        for (filter, prefix) in [
            ("sensors/#", "site-7/"),
            ("site-7", "site-7/"),
            ("site-8/#", "site-7/"),
            ("x/+/y", "a/b/"),
            ("up/gw-2/#", "up/gw-1/"),
        ] {
            assert!(
                !filter_matches_prefix(filter, prefix),
                "{filter} should not match under {prefix:?}"
            );
        }
    }

    #[test]
    fn templates_map_topics_and_have_a_fixed_prefix() {
        let t = TopicMap::Template("up/{gateway}/{topic}/raw".into());
        assert_eq!(t.apply("a/b", "gw"), "up/gw/a/b/raw");
        assert_eq!(t.fixed_prefix("gw"), "up/gw/");
        let p = TopicMap::Prefix("site-7/".into());
        assert_eq!(p.apply("a/b", "gw"), "site-7/a/b");
        assert_eq!(p.fixed_prefix("gw"), "site-7/");
    }
}

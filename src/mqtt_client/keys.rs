//! The MQTT client keys both `[[upstream]] kind = "mqtt"` and `[[mqtt_subscribe]]` take
//! ([`MqttClientConfig`]): their checks, and the [`Endpoint`] they describe.
//!
//! Every problem names its key (`upstream[1].url`, `mqtt_subscribe[0].keep_alive`), like
//! the rest of the configuration; nothing here touches the network or reads secrets.

use std::time::Duration;

use super::{BrokerUrl, BrokerUrlError, Endpoint, MIN_KEEP_ALIVE};
use crate::config::MqttClientConfig;

/// Pushes every problem of the client keys `c` of the section at `key`, keyed
/// `{key}.field`.
pub fn validate(c: &MqttClientConfig, key: &str, p: &mut Vec<String>) {
    if c.url.is_empty() {
        p.push(format!(
            "{key}.url: required, \"mqtt://host:port\" or \"mqtts://host:port\""
        ));
    } else if let Err(e) = BrokerUrl::parse(&c.url) {
        p.push(format!("{key}.url: {e}"));
    }
    if c.protocol != 4 && c.protocol != 5 {
        p.push(format!(
            "{key}.protocol: {} is not 4 (MQTT 3.1.1) or 5",
            c.protocol
        ));
    }
    if let Some(id) = &c.client_id {
        if id.is_empty() || id.len() > 65535 {
            p.push(format!(
                "{key}.client_id: must not be empty (it names the persistent session)"
            ));
        }
    }
    if c.password_file.is_some() && c.password_env.is_some() {
        p.push(format!(
            "{key}.password_file: set password_file or password_env, not both"
        ));
    }
    if (c.password_file.is_some() || c.password_env.is_some()) && c.username.is_none() {
        p.push(format!("{key}.username: required with a password"));
    }
    if c.password_env.as_deref().is_some_and(str::is_empty) {
        p.push(format!("{key}.password_env: must name a variable"));
    }
    if c.client_cert.is_some() != c.client_key.is_some() {
        p.push(format!(
            "{key}.client_cert: client_cert and client_key go together"
        ));
    }
    let tls = BrokerUrl::parse(&c.url).is_ok_and(|u| u.tls);
    if !tls {
        for (name, set) in [
            ("ca_file", c.ca_file.is_some()),
            ("client_cert", c.client_cert.is_some()),
            ("client_key", c.client_key.is_some()),
        ] {
            if set && !c.url.is_empty() {
                p.push(format!(
                    "{key}.{name}: only for TLS; use an \"mqtts://\" url"
                ));
            }
        }
    }
    if c.keep_alive < MIN_KEEP_ALIVE {
        p.push(format!(
            "{key}.keep_alive: {} is below the 5s minimum",
            humantime::format_duration(c.keep_alive)
        ));
    }
    if c.keep_alive > Duration::from_secs(u64::from(u16::MAX)) {
        p.push(format!("{key}.keep_alive: at most 65535s"));
    }
    if c.max_inflight == 0 {
        p.push(format!("{key}.max_inflight: must be at least 1"));
    }
}

/// The [`Endpoint`] the client keys `c` describe (after validation; a bad url is an
/// error here). `default_client_id` applies when `client_id` is not set.
pub fn endpoint(
    c: &MqttClientConfig,
    default_client_id: String,
    max_packet: usize,
    connect_timeout: Duration,
) -> Result<Endpoint, BrokerUrlError> {
    Ok(Endpoint {
        url: BrokerUrl::parse(&c.url)?,
        protocol: c.protocol,
        client_id: c.client_id.clone().unwrap_or(default_client_id),
        username: c.username.clone(),
        password: c.password_source(),
        ca_file: c.ca_file.clone(),
        client_cert: c.client_cert.clone().zip(c.client_key.clone()),
        keep_alive: c.keep_alive,
        clean_session: c.clean_session,
        max_inflight: c.max_inflight,
        max_packet,
        connect_timeout,
    })
}

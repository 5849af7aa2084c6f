//! `[mqtt]`, `[mqtt.auth]` and the TLS listener's keys: the device-facing listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Address the device-facing MQTT listener binds (MQTT 3.1.1 and 5 on one port).
    #[serde(
        default = "default_mqtt_listen",
        deserialize_with = "crate::config::units::socket_addr"
    )]
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted; a device sending more is disconnected and counted.
    #[serde(
        default = "default_max_packet",
        deserialize_with = "crate::config::units::size"
    )]
    pub max_packet: ByteSize,
    /// Most devices connected at once; further connections are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most QoS 1 publishes a device may have unacknowledged (MQTT 5 receive maximum).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Time allowed between the TCP connect and the MQTT CONNECT packet.
    #[serde(
        default = "default_connect_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub connect_timeout: Duration,
    /// Serve SUBSCRIBE: committed readings are fanned out to local subscribers (QoS 0,
    /// best effort) through an embedded rumqttd router. `false` refuses subscriptions.
    #[serde(default = "default_local_subscriptions")]
    pub local_subscriptions: bool,
    /// Device authentication and topic rights (`[mqtt.auth]`); off unless a credentials
    /// file or a client CA is configured.
    #[serde(default)]
    pub auth: MqttAuthConfig,
    /// A second, TLS listener (MQTT over TLS, usually port 8883); none by default.
    /// Needs `tls_cert` and `tls_key`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::units::option_socket_addr"
    )]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1); a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that sign device certificates. Set, a device may log in with a
    /// client certificate, named by its CN (else its first DNS SAN), and authentication is
    /// on for both listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TLS handshakes without a client certificate signed by `tls_client_ca`.
    #[serde(default)]
    pub tls_require_client_cert: bool,
}

/// `[mqtt.auth]`: who may connect to the device listener, and what each device may
/// publish and subscribe to. Reloaded on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttAuthConfig {
    /// TOML file of `[[device]]` entries (username, argon2 `password_hash`, optional
    /// `publish`/`subscribe`), written by `tidegate passwd`. Set, devices must log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Let devices without credentials in (with the default rights) while authentication
    /// is on.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// A device's client id must be its username (or certificate name), so one device
    /// cannot take over another's session or its re-send memory.
    #[serde(default = "default_client_id_is_username")]
    pub client_id_is_username: bool,
    /// Publish patterns of devices whose entry has none (and of certificate-only and
    /// anonymous devices); `%c` is the client id, `%u` the username, each a whole level.
    #[serde(default = "default_auth_publish")]
    pub publish: Vec<String>,
    /// Subscribe patterns, as `publish`; none by default, so a device reads nothing.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// MQTT 3.1.1 has no negative PUBACK: after this many refused publishes on one
    /// connection, it is closed.
    #[serde(default = "default_max_refused_publishes")]
    pub max_refused_publishes: u32,
}

impl Default for MqttAuthConfig {
    fn default() -> Self {
        Self {
            credentials_file: None,
            allow_anonymous: false,
            client_id_is_username: default_client_id_is_username(),
            publish: default_auth_publish(),
            subscribe: Vec::new(),
            max_refused_publishes: default_max_refused_publishes(),
        }
    }
}

fn default_client_id_is_username() -> bool {
    true
}
fn default_auth_publish() -> Vec<String> {
    vec!["#".to_owned()]
}
fn default_max_refused_publishes() -> u32 {
    3
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: default_mqtt_listen(),
            max_packet: default_max_packet(),
            max_connections: default_max_connections(),
            max_inflight: default_max_inflight(),
            connect_timeout: default_connect_timeout(),
            local_subscriptions: default_local_subscriptions(),
            auth: MqttAuthConfig::default(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_require_client_cert: false,
        }
    }
}

fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_max_packet() -> ByteSize {
    ByteSize::mib(1)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_inflight() -> u16 {
    1000
}
fn default_local_subscriptions() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl MqttConfig {
    /// Pushes every problem of `[mqtt]`, `[mqtt.auth]` (but its patterns, which the
    /// listener's ACL parses) and the TLS listener's keys (the files are read at start).
    pub(super) fn validate(&self, journal: &super::JournalConfig, p: &mut Vec<String>) {
        if self.max_packet < ByteSize::b(64) || self.max_packet > ByteSize::mib(256) {
            p.push(format!(
                "mqtt.max_packet: {} is outside 64 B ..= 256 MiB",
                self.max_packet
            ));
        }
        if self.max_packet.as_u64() * 2 > journal.max_size.as_u64() {
            p.push(format!(
                "mqtt.max_packet: {} must be at most half of journal.max_size ({}) so one reading always fits",
                self.max_packet, journal.max_size
            ));
        }
        if self.max_connections == 0 {
            p.push("mqtt.max_connections: must be at least 1".to_owned());
        }
        if self.max_inflight == 0 {
            p.push("mqtt.max_inflight: must be at least 1".to_owned());
        }
        if self.auth.max_refused_publishes == 0 {
            p.push("mqtt.auth.max_refused_publishes: must be at least 1".to_owned());
        }
        match self.tls_listen {
            Some(addr) => {
                if self.tls_cert.is_none() || self.tls_key.is_none() {
                    p.push("mqtt.tls_listen: needs mqtt.tls_cert and mqtt.tls_key".to_owned());
                }
                if addr == self.listen {
                    p.push(format!(
                        "mqtt.tls_listen: {addr} is also mqtt.listen; give TLS its own port (8883)"
                    ));
                }
                if self.tls_require_client_cert && self.tls_client_ca.is_none() {
                    p.push("mqtt.tls_require_client_cert: needs mqtt.tls_client_ca".to_owned());
                }
            }
            None => {
                for (key, set) in [
                    ("tls_cert", self.tls_cert.is_some()),
                    ("tls_key", self.tls_key.is_some()),
                    ("tls_client_ca", self.tls_client_ca.is_some()),
                    ("tls_require_client_cert", self.tls_require_client_cert),
                ] {
                    if set {
                        p.push(format!("mqtt.{key}: set without mqtt.tls_listen"));
                    }
                }
            }
        }
    }
}

//! `[http]`: the monitoring listener's switch and address.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve `/metrics` (Prometheus text), `/health` and the status page. `false` opens no
    /// HTTP port at all.
    #[serde(default = "default_http_enabled")]
    pub enabled: bool,
    /// Address the HTTP listener binds. Loopback by default: the listener has no
    /// authentication, so exposing it is a deliberate choice (`"0.0.0.0:9464"`).
    #[serde(
        default = "default_http_listen",
        deserialize_with = "crate::config::units::socket_addr"
    )]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: default_http_enabled(),
            listen: default_http_listen(),
        }
    }
}

fn default_http_enabled() -> bool {
    true
}
fn default_http_listen() -> SocketAddr {
    // 9464: the port Prometheus exporters conventionally use for OpenTelemetry-style
    // endpoints; free on a typical gateway.
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

//! `[gateway]`: the gateway's identity, stamped on every record sent upstream.

use serde::{Deserialize, Serialize};

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway id sent as the `tidegate-gateway` header. Defaults to the host name, so
    /// two gateways never share an id by accident.
    #[serde(default = "default_gateway_id")]
    pub id: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: default_gateway_id(),
        }
    }
}

fn default_gateway_id() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tidegate".to_owned())
}

//! `[log]`: the log filter; plain data (checked in `crate::validate`, which knows the
//! filter syntax).

use serde::{Deserialize, Serialize};

/// `[log]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Log filter in `RUST_LOG` syntax (`"info"`, `"info,tidegate::forward=debug"`).
    /// Unset: the `run --log` option. `RUST_LOG`, when set, wins over both. A SIGHUP
    /// applies a change without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

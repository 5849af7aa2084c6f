//! The one check of a whole configuration: `config`'s own rules plus every stage's.
//!
//! `config/` is plain data and cannot call into the stages, so the checks that need a
//! stage's logic (ACL patterns, broker urls, log filters, serial and Modbus limits, the
//! bridge's loop rule, Kafka security) are functions of those stages, and [`check`] is
//! the one place that runs them all. `tidegate run`, `tidegate check-config` and the
//! SIGHUP reload all load through [`load`], so each reports every problem with its key.

use std::path::Path;

use crate::config::{Config, ConfigError, UpstreamKind};

/// Reads, parses and checks the file at `path` (every check, each problem with its key).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load_with(path, check)
}

/// Parses and checks TOML text as [`load`] does; `path` only names the source in errors.
pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
    Config::from_toml_with(text, path, check)
}

/// Every problem the stages find in `config`, each naming its key; [`Config::validate`]
/// holds the rest (the loaders above run both).
pub fn check(config: &Config) -> Vec<String> {
    let mut p = Vec::new();
    crate::ingest::auth::validate(&config.mqtt.auth, &mut p);
    crate::journal::validate(&config.journal, &mut p);
    if let Some(level) = &config.log.level {
        if let Err(e) = crate::telemetry::check_log_filter(level) {
            p.push(e.to_string());
        }
    }
    for (i, u) in config.upstream.iter().enumerate() {
        let key = format!("upstream[{i}]");
        match u.kind {
            UpstreamKind::Mqtt => {
                crate::sinks::mqtt::config::validate_upstream(u, &key, &config.gateway.id, &mut p)
            }
            UpstreamKind::Kafka => crate::sinks::kafka::security::validate(u, &key, &mut p),
        }
        crate::forward::uplink::validate(u, &key, &mut p);
    }
    crate::ingest::serial::config::validate(&config.serial, &config.mqtt, &mut p);
    crate::ingest::modbus::config::validate(&config.modbus, &mut p);
    crate::ingest::mqtt_subscribe::config::validate(config, &mut p);
    p
}

#[cfg(test)]
mod tests;

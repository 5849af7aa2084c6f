//! SIGHUP: re-read the configuration and apply what can change without a restart.
//!
//! This module owns the rules of a reload ([`reload`]); the running forwarders it stops
//! and restarts are [`Forwarders`]:
//!
//! * a file that does not parse or validate is refused, every problem logged with its key,
//!   and the running configuration stays in force, untouched;
//! * `[[upstream]]` changes apply live: a changed upstream's forwarder is stopped (it
//!   finishes the batch in flight and stores its cursor) and started again with the new
//!   settings; a removed one is stopped and its cursor deleted; a new one starts at the
//!   oldest reading held — the same cursor reconciliation as at open
//!   ([`crate::journal::Journal::set_upstreams`]). Unchanged upstreams are not touched, except that a
//!   forwarder that had ended on its own is started again;
//! * `[log] level` applies live;
//! * `[mqtt.auth]` and the credentials file it names apply live: a file that does not
//!   load is refused like a bad configuration; otherwise every connection gets the new
//!   state and those whose device entry, password or rights changed are closed (see
//!   [`crate::ingest::auth`]);
//! * everything else (journal, listeners, serial ports, Modbus buses, subscriptions,
//!   gateway id, HTTP) is logged as "needs a restart" and left as it was.
//!
//! # Invariant
//!
//! A cursor is never moved by two forwarders of one upstream: a changed upstream's old
//! forwarder has finished and stored its cursor before the journal is told the new set and
//! its successor starts.

use std::path::Path;

use crate::config::Config;
use crate::forward::Forwarders;
use crate::journal::JournalError;

/// Top-level settings that differ between `old` and `new` and need a restart to apply:
/// every section but `[[upstream]]` and `[log]`. Compared through their serialised form
/// so that a section added later is covered without touching this function.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let table = |c: &Config| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (mut old, mut new) = (table(old), table(new));
    // [mqtt.auth] applies live (see `reload`); the rest of [mqtt] needs a restart.
    for t in [&mut old, &mut new] {
        if let Some(toml::Value::Table(m)) = t.get_mut("mqtt") {
            m.remove("auth");
        }
    }
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !matches!(k.as_str(), "upstream" | "log"))
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the lines say what changed (empty: nothing live changed).
    Applied(Vec<String>),
    /// The file was refused; the running configuration stays.
    Refused(String),
}

/// Re-reads `path` and applies it to the running daemon (see the module docs). `current`
/// becomes the configuration in force: live settings from the file, the rest as they were.
pub async fn reload(
    path: Option<&Path>,
    current: &mut Config,
    forwarders: &mut Forwarders,
    device_auth: &crate::ingest::auth::AuthHub,
) -> Result<Outcome, JournalError> {
    let Some(path) = path else {
        tracing::warn!("SIGHUP received, but tidegate runs on the embedded defaults (no --config); nothing to reload.");
        return Ok(Outcome::Refused("no configuration file".into()));
    };
    tracing::info!(config = %path.display(), "SIGHUP received: reloading the configuration.");
    let new = match crate::validate::load(path) {
        Ok(c) => c,
        Err(e) => {
            let message = format!("{e}");
            tracing::error!(config = %path.display(), error = %message, "Reload refused: the new configuration is invalid; the running configuration stays in force.");
            return Ok(Outcome::Refused(message));
        }
    };
    // Credentials are read before anything is applied, so a bad file refuses the whole
    // reload and nothing changes.
    let mut auth_for_new = new.mqtt.clone();
    // The TLS listener's CA cannot change without a restart; it decides whether
    // authentication is on as it did at start.
    auth_for_new.tls_client_ca = current.mqtt.tls_client_ca.clone();
    let new_auth = match crate::ingest::auth::AuthState::load(&auth_for_new) {
        Ok(a) => a,
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "Reload refused: the device credentials file is invalid; the running configuration and credentials stay in force.");
            return Ok(Outcome::Refused(message));
        }
    };
    for warning in new.secret_warnings() {
        tracing::warn!("{warning}");
    }
    for key in needs_restart(current, &new) {
        tracing::warn!(key = %key, "Reload: [{key}] changed, which needs a restart; running on with the old settings until then.");
    }
    let mut changes = Vec::new();
    if new.log != current.log {
        // Validated by crate::validate::load, so this cannot fail on the filter's syntax.
        if let Err(e) = crate::telemetry::set_log_filter(new.log.level.as_deref()) {
            tracing::error!(error = %e, "Reload: log level not changed.");
        } else {
            changes.push(format!(
                "log.level: {}",
                new.log.level.as_deref().unwrap_or("(the --log option)")
            ));
        }
        current.log = new.log.clone();
    }
    // Only connections whose grant changed are closed; the rest keep running untouched.
    let devices = new_auth.devices();
    let shown = new_auth.enabled() || device_auth.current().enabled();
    let revoked = device_auth.replace(new_auth);
    if shown {
        changes.push(format!(
            "mqtt.auth: {devices} device(s), {revoked} connection(s) closed to log in again"
        ));
    }
    current.mqtt.auth = new.mqtt.auth.clone();
    // Also with [[upstream]] unchanged: a forwarder that ended on its own is restarted.
    changes.extend(forwarders.apply(&new.upstream).await?);
    current.upstream = new.upstream.clone();
    tracing::info!(changes = %if changes.is_empty() { "none".to_owned() } else { changes.join("; ") }, "Configuration reloaded.");
    Ok(Outcome::Applied(changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_that_cannot_change_live_need_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.log.level = Some("debug".into());
        assert!(needs_restart(&old, &new).is_empty());
        new.journal.dir = "/elsewhere".into();
        new.mqtt.max_connections += 1;
        assert_eq!(needs_restart(&old, &new), vec!["journal", "mqtt"]);
    }
}

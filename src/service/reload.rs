//! SIGHUP: re-read the configuration and apply what can change without a restart.
//!
//! This module owns the running forwarders ([`Forwarders`]) so that a reload can stop and
//! restart them, and the rules of a reload ([`reload`]):
//!
//! * a file that does not parse or validate is refused, every problem logged with its key,
//!   and the running configuration stays in force, untouched;
//! * `[[upstream]]` changes apply live: a changed upstream's forwarder is stopped (it
//!   finishes the batch in flight and stores its cursor) and started again with the new
//!   settings; a removed one is stopped and its cursor deleted; a new one starts at the
//!   oldest reading held — the same cursor reconciliation as at open
//!   ([`Journal::set_upstreams`]). Unchanged upstreams are not touched, except that a
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
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, UpstreamConfig, UpstreamKind};
use crate::forward::Forwarder;
use crate::health::{supervise, Health};
use crate::journal::{Journal, JournalError};
use crate::sinks::kafka::KafkaSink;
use crate::sinks::mqtt::MqttSink;
use crate::telemetry::ForwardCounters;

/// Environment variable naming an upstream whose forwarder ends on its own (test hook).
const TEST_EXIT_ENV: &str = "TIDEGATE_TEST_FORWARDER_EXITS";
/// How long that forwarder runs first, so the test sees pings before the death.
const TEST_EXIT_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// One forwarder that runs now.
struct Running {
    config: UpstreamConfig,
    /// A child of the shutdown token, so that a reload can stop this forwarder alone.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The forwarders, one per configured upstream, each a task registered with [`Health`]
/// (essential) as `forwarder:<name>`.
pub struct Forwarders {
    journal: Journal,
    gateway: String,
    health: Health,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    running: Vec<Running>,
    /// Per upstream name, kept across a restart of its forwarder so that whoever shows the
    /// counters (progress line, `/metrics`) keeps seeing the live ones.
    counters: Vec<(String, Arc<ForwardCounters>)>,
}

impl Forwarders {
    /// Starts one forwarder per upstream. `shutdown` stops them all; `tracker` is what the
    /// shutdown sequence waits on.
    pub fn start(
        journal: Journal,
        gateway: &str,
        upstreams: &[UpstreamConfig],
        health: Health,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let mut set = Forwarders {
            journal,
            gateway: gateway.to_owned(),
            health,
            shutdown,
            tracker,
            running: Vec::new(),
            counters: Vec::new(),
        };
        for u in upstreams {
            set.spawn(u);
        }
        set
    }

    /// Counters per upstream name, in configuration order.
    pub fn counters(&self) -> Vec<(String, Arc<ForwardCounters>)> {
        self.counters.clone()
    }

    fn counters_for(&mut self, name: &str) -> Arc<ForwardCounters> {
        if let Some((_, c)) = self.counters.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = Arc::new(ForwardCounters::default());
        self.counters.push((name.to_owned(), c.clone()));
        c
    }

    fn spawn(&mut self, upstream: &UpstreamConfig) {
        let counters = self.counters_for(&upstream.name);
        let stop = self.shutdown.child_token();
        let guard = self
            .health
            .register(&format!("forwarder:{}", upstream.name), true);
        let journal = self.journal.clone();
        let task = match upstream.kind {
            UpstreamKind::Kafka => {
                let sink = KafkaSink::new(upstream, &self.gateway);
                let fwd = Forwarder::new(upstream.clone(), journal, sink, counters);
                self.run_task(&upstream.name, guard, stop.clone(), fwd.run(stop.clone()))
            }
            UpstreamKind::Mqtt => match MqttSink::new(upstream, &self.gateway) {
                Ok(sink) => {
                    let fwd = Forwarder::new(upstream.clone(), journal, sink, counters);
                    self.run_task(&upstream.name, guard, stop.clone(), fwd.run(stop.clone()))
                }
                // Validation refuses such a url; this only guards a hand-built config.
                Err(e) => {
                    tracing::error!(upstream = %upstream.name, error = %e, "MQTT upstream not started: bad url; its readings stay in the journal.");
                    guard.fail(format!("not started: {e}"));
                    self.tracker.spawn(async {})
                }
            },
        };
        self.running.push(Running {
            config: upstream.clone(),
            stop,
            task,
        });
    }

    fn run_task(
        &self,
        name: &str,
        guard: crate::health::TaskGuard,
        stop: CancellationToken,
        forwarder: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        // Test hook (tests/service.rs): no configuration can make a healthy forwarder end,
        // so the test names one here to watch the real binary's watchdog pings stop when an
        // essential task dies. The forwarder then ends on its own after TEST_EXIT_AFTER.
        // Only its first start dies, so the test can watch a reload bring it back.
        static DIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let dies = std::env::var_os(TEST_EXIT_ENV).is_some_and(|v| v == name)
            && !DIED.swap(true, std::sync::atomic::Ordering::Relaxed);
        if dies {
            self.tracker.spawn(supervise(guard, stop, async move {
                tokio::select! {
                    _ = forwarder => {}
                    _ = tokio::time::sleep(TEST_EXIT_AFTER) => {}
                }
            }))
        } else {
            self.tracker.spawn(supervise(guard, stop, forwarder))
        }
    }

    /// Makes the running forwarders those of `upstreams` (see the module docs). Returns a
    /// line per change, for the reload's log line.
    pub async fn apply(
        &mut self,
        upstreams: &[UpstreamConfig],
    ) -> Result<Vec<String>, JournalError> {
        let mut changes = Vec::new();
        let mut kept = Vec::new();
        for r in std::mem::take(&mut self.running) {
            match upstreams.iter().find(|u| u.name == r.config.name) {
                Some(u) if *u == r.config && !r.task.is_finished() => kept.push(r),
                // Unchanged but ended on its own (health reports it dead): start it again.
                Some(u) if *u == r.config => {
                    changes.push(format!("{}: had stopped, restarted", r.config.name));
                    stop(r).await;
                }
                Some(_) => {
                    changes.push(format!("{}: settings changed, restarted", r.config.name));
                    stop(r).await;
                }
                None => {
                    changes.push(format!("{}: removed", r.config.name));
                    let name = r.config.name.clone();
                    stop(r).await;
                    self.counters.retain(|(n, _)| *n != name);
                }
            }
        }
        self.running = kept;
        // Every changed or removed forwarder has stored its cursor by now (invariant).
        self.journal
            .set_upstreams(upstreams.iter().map(|u| u.name.clone()).collect())
            .await?;
        for u in upstreams {
            if !self.running.iter().any(|r| r.config.name == u.name) {
                if !self.counters.iter().any(|(n, _)| *n == u.name) {
                    changes.push(format!("{}: added", u.name));
                }
                self.spawn(u);
            }
        }
        // Configuration order, for the progress line.
        self.running.sort_by_key(|r| {
            upstreams
                .iter()
                .position(|u| u.name == r.config.name)
                .unwrap_or(usize::MAX)
        });
        self.counters.sort_by_key(|(n, _)| {
            upstreams
                .iter()
                .position(|u| u.name == *n)
                .unwrap_or(usize::MAX)
        });
        Ok(changes)
    }
}

async fn stop(r: Running) {
    r.stop.cancel();
    let _ = r.task.await;
}

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

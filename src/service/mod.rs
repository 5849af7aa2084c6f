//! Running under a service manager: systemd notifications, the watchdog, and reload.
//!
//! This module owns what tidegate tells systemd (`Type=notify`): `READY=1` once the
//! journal is open and every listener is bound, `WATCHDOG=1` from the main loop, `RELOADING=1`
//! / `READY=1` around a SIGHUP reload, and `STOPPING=1` when shutdown starts. Without
//! `NOTIFY_SOCKET` (a terminal, a test) every notification is a no-op.
//!
//! # Invariant
//!
//! The watchdog is pinged only while [`Health::watchdog_ok`] holds — every essential task
//! (journal writer, forwarders, MQTT listener) alive and the journal writer not failed —
//! so a daemon whose essential task died stops pinging and systemd restarts it, rather
//! than a main loop that is merely still spinning keeping it "alive".
//!
//! [`reload`] owns the other half of SIGHUP: which settings apply live and how.

pub mod reload;

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::health::Health;

/// Longest gap between two checks of the main loop, so that health changes (and signals'
/// side work) are seen promptly even without a watchdog.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Talks to systemd through `NOTIFY_SOCKET`; see the module docs.
#[derive(Debug)]
pub struct Notifier {
    /// `WATCHDOG_USEC` meant for this process, when systemd runs a watchdog on it.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    /// Whether the last watchdog decision was to ping, to log each change once.
    pinging: bool,
    /// A send failed once already; later failures are not logged again (one line, not one
    /// per second, when the socket went away).
    send_failed: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`/`WATCHDOG_USEC`/`WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        if let Some(every) = watchdog {
            tracing::info!(timeout = ?every, "systemd watchdog enabled; pinging while the journal writer and forwarders are alive.");
        }
        Notifier {
            watchdog,
            last_ping: None,
            pinging: true,
            send_failed: false,
        }
    }

    /// The journal is open and every listener is bound.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A SIGHUP reload starts; systemd shows the unit as "reloading" until [`Self::reloaded`].
    pub fn reloading(&mut self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// The reload is over (applied or refused); the daemon runs on.
    pub fn reloaded(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Shutdown has started.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// How often the main loop should come round: at most `MAX_TICK`, and at least twice
    /// per watchdog timeout, as sd_watchdog_enabled(3) advises.
    pub fn tick(&self) -> Duration {
        match self.watchdog {
            Some(timeout) => (timeout / 2).clamp(Duration::from_millis(10), MAX_TICK),
            None => MAX_TICK,
        }
    }

    /// Called from the main loop on every tick: pings the watchdog if one is enabled and
    /// `health` allows it (see the module's invariant).
    pub fn watchdog(&mut self, health: &Health) {
        let Some(timeout) = self.watchdog else {
            return;
        };
        let ok = health.watchdog_ok();
        if ok != self.pinging {
            self.pinging = ok;
            if ok {
                tracing::info!("Essential tasks healthy again; watchdog pings resume.");
            } else {
                let why = health.check().err().unwrap_or_default().join("; ");
                tracing::error!(problems = %why, ?timeout, "An essential task is dead or the journal failed; watchdog pings stop so that systemd restarts tidegate.");
            }
        }
        if !ok {
            return;
        }
        let due = self
            .last_ping
            .is_none_or(|t| t.elapsed() >= self.tick().saturating_sub(Duration::from_millis(5)));
        if due {
            self.last_ping = Some(Instant::now());
            self.send(&[NotifyState::Watchdog]);
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.send_failed {
                self.send_failed = true;
                tracing::warn!(error = %e, "Cannot notify systemd (NOTIFY_SOCKET); readiness and watchdog pings are not delivered. Logged once.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_loop_comes_round_at_least_twice_per_watchdog_timeout() {
        let mut n = Notifier {
            watchdog: Some(Duration::from_secs(10)),
            last_ping: None,
            pinging: true,
            send_failed: false,
        };
        assert_eq!(n.tick(), MAX_TICK);
        n.watchdog = Some(Duration::from_millis(600));
        assert_eq!(n.tick(), Duration::from_millis(300));
        n.watchdog = None;
        assert_eq!(n.tick(), MAX_TICK);
    }
}

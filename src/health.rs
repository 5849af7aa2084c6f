//! Task liveness: which of the daemon's long-running tasks are alive, and whether the
//! daemon as a whole is healthy.
//!
//! This module owns the registry every long-running task (journal writer, forwarders, the
//! MQTT listener, ingest tasks) enrols in through [`Health::register`]. It answers two
//! questions for two audiences:
//!
//! * [`Health::check`] — "is tidegate doing its job?" for `/health` and `tidegate status`:
//!   every essential task alive, the journal accepting writes, not shutting down;
//! * [`Health::watchdog_ok`] — "would a restart help?" for the systemd watchdog: every
//!   essential task alive and the journal writer not failed. A full journal is not a
//!   reason to stop pinging — a restart frees no space, and devices keep what is refused.
//!
//! # Invariant
//!
//! A registered task is reported alive exactly while its [`TaskGuard`] exists. Dropping the
//! guard without saying why — the task returned or panicked — marks it dead while the daemon
//! is not shutting down, so a task that vanishes can never look alive. Only
//! [`TaskGuard::retire`] (a task stopped on purpose, e.g. a forwarder replaced on reload)
//! and shutdown take a task out without marking it dead.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What the journal says about accepting writes, as told by the probe given to
/// [`Health::set_journal_probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalState {
    /// New readings are committed.
    Writable,
    /// New readings are being refused because the journal is full (`on_full = "reject"`);
    /// the daemon keeps running and devices keep what is refused.
    Full(String),
    /// The writer stopped after an LMDB error; only a restart helps.
    Failed(String),
    /// New readings are refused after a failed write (disk full, I/O error); the writer
    /// tries again by itself, so a restart would not help and the watchdog is still pinged.
    NotAccepting(String),
}

/// One task as shown by [`Health::alive_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskStatus {
    /// Name given at registration, e.g. `forwarder:kafka-main`.
    pub name: String,
    /// Whether its death makes the daemon unhealthy (and stops the watchdog pings).
    pub essential: bool,
    /// Alive while its guard exists.
    pub alive: bool,
    /// Why it died; `None` while alive.
    pub reason: Option<String>,
    /// When it registered or died, ms since the Unix epoch.
    pub since_ms: u64,
}

/// The journal probe: cheap, called on every check (about once a second).
type Probe = Arc<dyn Fn() -> JournalState + Send + Sync>;

struct Entry {
    id: u64,
    status: TaskStatus,
}

struct Inner {
    tasks: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    journal: RwLock<Option<Probe>>,
}

/// The liveness registry. Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("tasks", &self.alive_snapshot())
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            inner: Arc::new(Inner {
                tasks: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                journal: RwLock::new(None),
            }),
        }
    }

    /// Enrols a task; it is alive while the returned guard is held. Names need not be
    /// unique (a forwarder restarted on reload registers again under the same name), but a
    /// new registration replaces dead entries of its name: the task that died has been
    /// started again, so it no longer makes the daemon unhealthy.
    pub fn register(&self, name: &str, essential: bool) -> TaskGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut tasks = self.tasks();
        tasks.retain(|e| e.status.alive || e.status.name != name);
        tasks.push(Entry {
            id,
            status: TaskStatus {
                name: name.to_owned(),
                essential,
                alive: true,
                reason: None,
                since_ms: now_ms(),
            },
        });
        TaskGuard {
            health: self.clone(),
            id,
            settled: false,
        }
    }

    /// Tells the registry how to ask the journal whether it accepts writes.
    pub fn set_journal_probe(&self, probe: impl Fn() -> JournalState + Send + Sync + 'static) {
        *self
            .inner
            .journal
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(probe));
    }

    /// From now on, tasks ending are an expected part of stopping, not deaths.
    pub fn set_shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The journal's state now (`Writable` when no probe is set).
    pub fn journal_state(&self) -> JournalState {
        let probe = self
            .inner
            .journal
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match probe {
            Some(p) => p(),
            None => JournalState::Writable,
        }
    }

    /// Healthy when every essential task is alive, the journal accepts writes and the
    /// daemon is not shutting down; otherwise every reason, one per line-sized string.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = self.dead_essentials();
        match self.journal_state() {
            JournalState::Writable => {}
            JournalState::Full(why) => problems.push(format!("journal full: {why}")),
            JournalState::Failed(why) => problems.push(format!("journal failed: {why}")),
            JournalState::NotAccepting(why) => {
                problems.push(format!("journal not accepting writes: {why}"))
            }
        }
        if self.is_shutting_down() {
            problems.push("shutting down".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Whether the systemd watchdog should be pinged: every essential task alive and the
    /// journal writer not failed. A full journal still pings (see the module docs).
    pub fn watchdog_ok(&self) -> bool {
        self.dead_essentials().is_empty()
            && !matches!(self.journal_state(), JournalState::Failed(_))
    }

    /// Every registered task, alive or dead, in registration order.
    pub fn alive_snapshot(&self) -> Vec<TaskStatus> {
        self.tasks().iter().map(|e| e.status.clone()).collect()
    }

    fn dead_essentials(&self) -> Vec<String> {
        self.tasks()
            .iter()
            .filter(|e| e.status.essential && !e.status.alive)
            .map(|e| {
                format!(
                    "{} is dead: {}",
                    e.status.name,
                    e.status.reason.as_deref().unwrap_or("no reason given")
                )
            })
            .collect()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding this lock leaves the list consistent (every update is one
        // assignment), so a poisoned lock is still usable.
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, id: u64, death: Option<String>) {
        let mut tasks = self.tasks();
        let Some(pos) = tasks.iter().position(|e| e.id == id) else {
            return;
        };
        match death {
            Some(reason) if !self.is_shutting_down() => {
                let status = &mut tasks[pos].status;
                tracing::error!(task = %status.name, essential = status.essential, reason = %reason, "Task died.");
                status.alive = false;
                status.reason = Some(reason);
                status.since_ms = now_ms();
            }
            // Retired on purpose, or ended during shutdown: no longer a task of this daemon.
            _ => {
                tasks.remove(pos);
            }
        }
    }
}

/// Held by a registered task for as long as it runs; see the module's invariant.
#[must_use = "the task is reported dead as soon as its guard is dropped"]
pub struct TaskGuard {
    health: Health,
    id: u64,
    /// Set once `fail` or `retire` has told the registry what happened.
    settled: bool,
}

impl std::fmt::Debug for TaskGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskGuard").field("id", &self.id).finish()
    }
}

impl TaskGuard {
    /// The task is dying for `reason` (ignored as a death while shutting down).
    pub fn fail(mut self, reason: impl Into<String>) {
        self.settled = true;
        self.health.settle(self.id, Some(reason.into()));
    }

    /// The task was stopped on purpose (e.g. replaced on reload): it leaves the registry
    /// without being counted dead.
    pub fn retire(mut self) {
        self.settled = true;
        self.health.settle(self.id, None);
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let reason = if std::thread::panicking() {
            "panicked"
        } else {
            "ended unexpectedly"
        };
        self.health.settle(self.id, Some(reason.to_owned()));
    }
}

/// Runs a registered task to its end and tells the registry how it ended: asked to stop
/// (`stop` cancelled) retires it; returning on its own or panicking marks it dead with that
/// reason. The panic is caught here so that its message becomes the reason.
pub async fn supervise(
    guard: TaskGuard,
    stop: tokio_util::sync::CancellationToken,
    task: impl std::future::Future<Output = ()>,
) {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(task).catch_unwind().await {
        Ok(()) if stop.is_cancelled() => guard.retire(),
        Ok(()) => guard.fail("returned before being asked to stop"),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            guard.fail(format!("panicked: {message}"));
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_task_is_alive_while_its_guard_is_held() {
        let health = Health::new();
        let guard = health.register("forwarder:k", true);
        assert_eq!(health.check(), Ok(()));
        assert!(health.watchdog_ok());
        let snap = health.alive_snapshot();
        assert_eq!(snap.len(), 1);
        assert!(snap[0].alive && snap[0].essential);
        drop(guard);
        let problems = health.check().unwrap_err();
        assert_eq!(problems, vec!["forwarder:k is dead: ended unexpectedly"]);
        assert!(!health.watchdog_ok());
    }

    #[test]
    fn an_explicit_failure_keeps_its_reason() {
        let health = Health::new();
        health.register("listener", true).fail("accept failed");
        assert_eq!(
            health.check().unwrap_err(),
            vec!["listener is dead: accept failed"]
        );
        assert_eq!(
            health.alive_snapshot()[0].reason.as_deref(),
            Some("accept failed")
        );
    }

    #[test]
    fn a_task_started_again_under_its_name_replaces_its_dead_entry() {
        let health = Health::new();
        drop(health.register("forwarder:k", true));
        assert!(!health.watchdog_ok());
        let _again = health.register("forwarder:k", true);
        assert!(health.watchdog_ok());
        assert_eq!(health.alive_snapshot().len(), 1);
    }

    #[test]
    fn a_dead_non_essential_task_is_shown_but_does_not_make_the_daemon_unhealthy() {
        let health = Health::new();
        drop(health.register("serial:/dev/ttyUSB0", false));
        assert_eq!(health.check(), Ok(()));
        assert!(health.watchdog_ok());
        assert!(!health.alive_snapshot()[0].alive);
    }

    #[test]
    fn tasks_ending_during_shutdown_or_retired_are_not_deaths() {
        let health = Health::new();
        let a = health.register("forwarder:old", true);
        a.retire();
        assert!(health.alive_snapshot().is_empty());
        let b = health.register("forwarder:k", true);
        health.set_shutting_down();
        drop(b);
        assert!(health.watchdog_ok());
        assert_eq!(health.check().unwrap_err(), vec!["shutting down"]);
    }

    #[test]
    fn a_panicking_task_is_reported_as_panicked() {
        let health = Health::new();
        let h = health.clone();
        let _ = std::thread::spawn(move || {
            let _guard = h.register("ingest", true);
            panic!("boom");
        })
        .join();
        assert_eq!(
            health.alive_snapshot()[0].reason.as_deref(),
            Some("panicked")
        );
    }

    #[tokio::test]
    async fn supervise_tells_a_task_stopped_on_request_from_one_that_ended_or_panicked() {
        let health = Health::new();
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        supervise(health.register("asked", true), stop, async {}).await;
        assert!(health.alive_snapshot().is_empty());
        let running = tokio_util::sync::CancellationToken::new();
        supervise(health.register("ended", true), running.clone(), async {}).await;
        supervise(health.register("panicked", false), running, async {
            panic!("boom")
        })
        .await;
        let reasons: Vec<_> = health
            .alive_snapshot()
            .into_iter()
            .map(|t| (t.name, t.reason.unwrap_or_default()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("ended".into(), "returned before being asked to stop".into()),
                ("panicked".into(), "panicked: boom".into())
            ]
        );
    }

    #[test]
    fn a_full_journal_is_unhealthy_but_still_pings_the_watchdog_and_a_failed_one_does_not() {
        let health = Health::new();
        let state = Arc::new(Mutex::new(JournalState::Full("refusing readings".into())));
        let s = state.clone();
        health.set_journal_probe(move || s.lock().unwrap().clone());
        assert_eq!(
            health.check().unwrap_err(),
            vec!["journal full: refusing readings"]
        );
        assert!(health.watchdog_ok());
        *state.lock().unwrap() = JournalState::Failed("LMDB error".into());
        assert!(!health.watchdog_ok());
    }

    #[test]
    fn a_journal_not_accepting_writes_says_why_and_still_pings_the_watchdog() {
        let health = Health::new();
        health.set_journal_probe(|| JournalState::NotAccepting("disk full: ENOSPC".into()));
        assert_eq!(
            health.check().unwrap_err(),
            vec!["journal not accepting writes: disk full: ENOSPC"]
        );
        assert!(health.watchdog_ok(), "a restart would not free the disk");
    }
}

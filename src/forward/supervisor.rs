//! The running forwarders, one per configured upstream ([`Forwarders`]): started at
//! start-up, stopped and started again by a SIGHUP reload, stopped at shutdown.
//!
//! # Invariant
//!
//! A cursor is never moved by two forwarders of one upstream: a changed upstream's old
//! forwarder has finished and stored its cursor before the journal is told the new set and
//! its successor starts ([`Forwarders::apply`]).

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::live::LiveLane;
use super::uplink::Uplink;
use super::Forwarder;
use crate::config::{UpstreamConfig, UpstreamKind};
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
    /// The upstream's live lane, stopped by the same token.
    live: Option<JoinHandle<()>>,
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
        let uplink = Uplink::new(upstream, journal.clone(), counters.clone());
        let task = match upstream.kind {
            UpstreamKind::Kafka => {
                let sink = KafkaSink::new(upstream, &self.gateway);
                let fwd = Forwarder::new(upstream.clone(), journal, sink, counters)
                    .with_uplink(uplink.clone());
                self.run_task(&upstream.name, guard, stop.clone(), fwd.run(stop.clone()))
            }
            UpstreamKind::Mqtt => match MqttSink::new(upstream, &self.gateway) {
                Ok(sink) => {
                    let fwd = Forwarder::new(upstream.clone(), journal, sink, counters)
                        .with_uplink(uplink.clone());
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
        let live = uplink
            .filter(|_| upstream.uplink.has_live_lane())
            .and_then(|uplink| self.spawn_live(upstream, uplink, stop.clone()));
        self.running.push(Running {
            config: upstream.clone(),
            stop,
            task,
            live,
        });
    }

    /// Starts the live lane of `upstream` beside its forwarder, under the same stop token.
    /// Not essential: a live lane that dies is reported, but the history goes on.
    fn spawn_live(
        &self,
        upstream: &UpstreamConfig,
        uplink: Arc<Uplink>,
        stop: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let counters = uplink
            .counters()
            .uplink
            .live
            .get_or_init(|| Arc::new(ForwardCounters::default()))
            .clone();
        uplink
            .counters()
            .uplink
            .live_configured
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let guard = self
            .health
            .register(&format!("live:{}", upstream.name), false);
        let (name, interval, journal) = (
            upstream.name.clone(),
            upstream.uplink.live_interval,
            self.journal.clone(),
        );
        match upstream.kind {
            UpstreamKind::Kafka => {
                let sink = KafkaSink::live(upstream, &self.gateway);
                let lane = LiveLane::new(name, interval, journal, sink, uplink, counters);
                Some(
                    self.tracker
                        .spawn(supervise(guard, stop.clone(), lane.run(stop))),
                )
            }
            UpstreamKind::Mqtt => match MqttSink::live(upstream, &self.gateway) {
                Ok(sink) => {
                    let lane = LiveLane::new(name, interval, journal, sink, uplink, counters);
                    Some(
                        self.tracker
                            .spawn(supervise(guard, stop.clone(), lane.run(stop))),
                    )
                }
                Err(e) => {
                    guard.fail(format!("live lane not started: {e}"));
                    None
                }
            },
        }
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

    /// Makes the running forwarders those of `upstreams`: a changed upstream's forwarder
    /// is stopped (it finishes the batch in flight and stores its cursor) and started again,
    /// a removed one is stopped and its cursor deleted, a new one starts at the oldest
    /// reading held ([`Journal::set_upstreams`]); an unchanged one is left alone unless it
    /// had ended on its own. Returns a line per change, for the reload's log line.
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
    if let Some(live) = r.live {
        let _ = live.await;
    }
}

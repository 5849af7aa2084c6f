//! The link of one upstream when it is slow, metered or intermittent: what may go out, on
//! which lane, and when (docs/constrained-uplinks.md).
//!
//! An [`Uplink`] is shared by the upstream's two lanes: the forwarder (the ordered,
//! exactly-once history, [`Lane::Backlog`]) and the live lane ([`super::live`]: each
//! topic's newest reading and urgent readings, [`Lane::Live`]). Before each send a lane
//! asks [`Uplink::admit`], which waits for the send window, the data budget and the
//! bandwidth tokens; after it, [`Uplink::settle`] charges the bytes the sink really wrote
//! (its wire counters) to the buckets and the budget.
//!
//! # Invariants
//!
//! * **The history is never thinned.** The limits here only delay the backlog lane; they
//!   never skip, reorder or drop a reading of it. Only the live lane samples.
//! * **Nothing goes out twice once caught up.** The live lane is active only while the
//!   oldest unsent reading is older than `live_after` or the backlog is held
//!   ([`Uplink::live_active`]), and never sends a reading the history already delivered.
//! * **The link's rate.** Over any interval *T* both lanes together write at most
//!   `bandwidth × T + burst` bytes, plus one batch's estimation error ([`bucket`]).

pub mod bucket;
mod budget;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};
use tokio_util::sync::CancellationToken;

use crate::calendar::{format_duration, SendWindows};
use crate::config::UpstreamConfig;
use crate::journal::Journal;
use crate::mqtt_client::topics::{filter_matches_topic, filter_problem};
use crate::telemetry::{ForwardCounters, UplinkCounters};

pub use bucket::{Admitted, Lane, Limiter};
use budget::Budget;

/// Environment variable that sets the local wall-clock time tidegate starts at (a test
/// hook: `2026-12-06T21:59:50`); the clock then runs at the real rate from there.
const TEST_CLOCK_ENV: &str = "TIDEGATE_TEST_CLOCK";

/// Longest single wait before the window and the budget are looked at again (the system
/// clock may be set, and a period may roll over, while a lane waits).
pub(super) const RECHECK: Duration = Duration::from_secs(5);

/// How often the budget's usage is stored in the journal while bytes flow.
const STORE_EVERY: Duration = Duration::from_secs(5);

/// The local wall clock of windows and budget periods (with the test hook applied).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset: chrono::TimeDelta,
}

impl Clock {
    /// The system's clock, shifted when [`TEST_CLOCK_ENV`] names a start time.
    pub fn from_env() -> Clock {
        let offset = std::env::var(TEST_CLOCK_ENV)
            .ok()
            .and_then(|v| chrono::NaiveDateTime::parse_from_str(&v, "%Y-%m-%dT%H:%M:%S").ok())
            .and_then(|wall| wall.and_local_timezone(Local).earliest())
            .map(|start| start - Local::now())
            .unwrap_or_default();
        Clock { offset }
    }

    /// Now, in local time.
    pub fn now(&self) -> DateTime<Local> {
        Local::now() + self.offset
    }

    /// The system clock's Unix milliseconds at the instant this clock shows `t`: what
    /// status and metrics compare with their own "now".
    pub fn real_ms(&self, t: &DateTime<Local>) -> u64 {
        (*t - self.offset).timestamp_millis().max(0) as u64
    }
}

/// Checks the uplink keys whose meaning this stage owns: the send windows' syntax and the
/// urgent topic filters. Problems are keyed `{key}.field`.
pub fn validate(u: &UpstreamConfig, key: &str, p: &mut Vec<String>) {
    if let Err(e) = SendWindows::parse(&u.uplink.send_windows) {
        p.push(format!("{key}.send_windows: {e}"));
    }
    for f in &u.uplink.urgent {
        if let Some(why) = filter_problem(f) {
            p.push(format!(
                "{key}.urgent: {f:?} {why}; give an MQTT topic filter like \"turbines/+/alarm\""
            ));
        }
    }
}

/// One upstream's link: its limits and the state its lanes share.
pub struct Uplink {
    name: String,
    live_after: Duration,
    urgent: Vec<String>,
    windows: SendWindows,
    limiter: Option<Mutex<Limiter>>,
    budget: Option<Mutex<Budget>>,
    clock: Clock,
    journal: Journal,
    /// The history lane's counters; `counters.uplink` is what status and metrics read.
    counters: Arc<ForwardCounters>,
    /// The history's cursor: readings below it were delivered, and are not sent live.
    cursor: std::sync::atomic::AtomicU64,
}

impl Uplink {
    /// The link of `config`, or `None` when it sets no limit and no live lane (then the
    /// forwarder runs exactly as on an unconstrained link). The budget used so far in the
    /// current period is read back from the journal.
    pub fn new(
        config: &UpstreamConfig,
        journal: Journal,
        counters: Arc<ForwardCounters>,
    ) -> Option<Arc<Uplink>> {
        let u = &config.uplink;
        // The counters outlive a reload: clear what a removed setting left behind.
        reset(&counters.uplink);
        if u.bandwidth.is_none()
            && u.budget.is_none()
            && u.send_windows.is_empty()
            && !u.has_live_lane()
        {
            return None;
        }
        let clock = Clock::from_env();
        // Validation refuses bad windows; a hand-built config gets "always open".
        let windows = SendWindows::parse(&u.send_windows).unwrap_or_default();
        let limiter = u.bandwidth.map(|rate| {
            let burst = u.burst().unwrap_or(rate.as_u64());
            Mutex::new(Limiter::new(
                rate.as_u64(),
                burst,
                u.live_share,
                Instant::now(),
            ))
        });
        let budget = u.budget.map(|limit| {
            let stored = journal.budget_usage(&config.name).unwrap_or_else(|e| {
                tracing::warn!(upstream = %config.name, error = %e, "Cannot read the data budget used so far; counting this period from zero.");
                None
            });
            Mutex::new(Budget::new(
                &config.name,
                limit.as_u64(),
                u,
                stored,
                &clock.now(),
            ))
        });
        let c = &counters.uplink;
        c.bandwidth
            .store(u.bandwidth.map_or(0, |b| b.as_u64()), Ordering::Relaxed);
        c.windows_configured
            .store(u64::from(!windows.is_always_open()), Ordering::Relaxed);
        c.window_open.store(1, Ordering::Relaxed);
        let uplink = Uplink {
            name: config.name.clone(),
            live_after: u.live_after,
            urgent: u.urgent.clone(),
            windows,
            limiter,
            budget,
            clock,
            journal,
            counters,
            cursor: std::sync::atomic::AtomicU64::new(0),
        };
        uplink.refresh(&uplink.clock.now());
        Some(Arc::new(uplink))
    }

    /// The history lane's counters, whose `uplink` field holds the link's state.
    pub fn counters(&self) -> &Arc<ForwardCounters> {
        &self.counters
    }

    fn state(&self) -> &UplinkCounters {
        &self.counters.uplink
    }

    /// The most raw bytes (values and keys) a batch of `lane` should hold, so that it
    /// fits the bandwidth bucket; `None` without a bandwidth.
    pub fn max_raw_bytes(&self, lane: Lane) -> Option<usize> {
        let limiter = self.limiter.as_ref()?;
        Some(lock(limiter).max_raw_bytes(lane))
    }

    /// Whether a reading of `topic` is urgent (matches an `urgent` filter).
    pub fn is_urgent(&self, topic: &str) -> bool {
        self.urgent.iter().any(|f| filter_matches_topic(f, topic))
    }

    /// Whether the live lane sends now: the oldest unsent reading is older than
    /// `live_after`, or the backlog is held by a window or the budget.
    pub fn live_active(&self) -> bool {
        let s = self.state();
        let oldest = s.oldest_unsent_ms.load(Ordering::Relaxed);
        let behind = oldest != 0
            && crate::journal::now_ms().saturating_sub(oldest) > self.live_after.as_millis() as u64;
        let held = lock(&s.backlog_held).is_some();
        let active = behind || held;
        s.live_active.store(u64::from(active), Ordering::Relaxed);
        active
    }

    /// The history's cursor as the forwarder last moved it.
    pub fn history_cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// The forwarder's position: its cursor, and the ingest time of the oldest reading not
    /// yet delivered (`None`: caught up).
    pub fn set_position(&self, cursor: u64, oldest_unsent_ms: Option<u64>) {
        self.cursor.store(cursor, Ordering::Relaxed);
        self.state()
            .oldest_unsent_ms
            .store(oldest_unsent_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// Records that `lane` delivered readings up to one ingested at `newest_ms`.
    pub fn delivered(&self, lane: Lane, newest_ms: u64) {
        let s = self.state();
        let slot = match lane {
            Lane::Backlog => &s.backlog_newest_ms,
            Lane::Live => &s.live_newest_ms,
        };
        slot.fetch_max(newest_ms, Ordering::Relaxed);
    }

    /// Waits until a batch of `raw` bytes may go on `lane`: for the backlog, until a send
    /// window is open and the budget leaves it room; for both, until the bandwidth
    /// buckets hold its estimated size. Returns what to [`settle`](Self::settle) after the
    /// send, or `None` if `shutdown` came first.
    pub async fn admit(
        &self,
        lane: Lane,
        raw: u64,
        shutdown: &CancellationToken,
    ) -> Option<Option<Admitted>> {
        loop {
            let now = self.clock.now();
            let wait = match self.hold(lane, &now) {
                Some(wait) => wait,
                None => match &self.limiter {
                    None => return Some(None),
                    Some(limiter) => {
                        let live_active = lane == Lane::Backlog && self.live_active();
                        let mut l = lock(limiter);
                        let wait = l.wait(lane, raw, live_active, Instant::now());
                        if wait.is_zero() {
                            return Some(Some(l.take(lane, raw, Instant::now())));
                        }
                        wait
                    }
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait.min(RECHECK)) => {}
            }
        }
    }

    /// Why `lane` may not send now, as the time to wait before looking again; `None` if it
    /// may. Keeps the status fields (window, budget, the backlog's reason) current.
    fn hold(&self, lane: Lane, now: &DateTime<Local>) -> Option<Duration> {
        self.refresh(now);
        let s = self.state();
        let (reason, wait) = match lane {
            Lane::Backlog if !self.windows.is_open(now) => {
                let opens = self.windows.next_change(now);
                let wait = opens
                    .as_ref()
                    .and_then(|t| (*t - *now).to_std().ok())
                    .unwrap_or(RECHECK);
                let reason = match opens {
                    Some(_) => format!("waiting for window (opens in {})", format_duration(wait)),
                    None => "waiting for window (none opens in the next 8 days)".to_owned(),
                };
                (Some(reason), wait)
            }
            _ => match &self.budget {
                Some(b) => {
                    let mut b = lock(b);
                    match b.refusal(lane, now) {
                        Some((reason, wait)) => (Some(reason), wait),
                        None => (None, Duration::ZERO),
                    }
                }
                None => (None, Duration::ZERO),
            },
        };
        if lane == Lane::Backlog {
            *lock(&s.backlog_held) = reason.clone();
        }
        reason.map(|_| wait.max(Duration::from_millis(100)))
    }

    /// Updates the window and budget fields of the status to the current time.
    pub fn refresh_now(&self) {
        self.refresh(&self.clock.now());
    }

    /// Updates the window and budget fields of the status.
    fn refresh(&self, now: &DateTime<Local>) {
        let s = self.state();
        if !self.windows.is_always_open() {
            s.window_open
                .store(u64::from(self.windows.is_open(now)), Ordering::Relaxed);
            s.window_change_ms.store(
                self.windows
                    .next_change(now)
                    .map_or(0, |t| self.clock.real_ms(&t)),
                Ordering::Relaxed,
            );
        }
        if let Some(b) = &self.budget {
            lock(b).publish(s, now, &self.clock);
        }
    }

    /// Charges what a send on `lane` wrote (`sent`) and read (`received`) on the wire: to
    /// the buckets (the bytes sent, replacing the estimate `admitted` took) and to the
    /// budget (both directions, as a metered link counts them).
    pub fn settle(&self, lane: Lane, admitted: Option<Admitted>, sent: u64, received: u64) {
        if let Some(limiter) = &self.limiter {
            let mut l = lock(limiter);
            match admitted {
                Some(a) => l.settle(a, sent, Instant::now()),
                None => l.charge(lane, sent, Instant::now()),
            }
        }
        if let Some(b) = &self.budget {
            let now = self.clock.now();
            let mut b = lock(b);
            b.add(sent + received, &now);
            b.publish(self.state(), &now, &self.clock);
        }
    }

    /// Stores the budget's usage in the journal when it changed and the last store is
    /// [`STORE_EVERY`] old (or `force`, at shutdown).
    pub async fn store_budget(&self, force: bool) {
        let Some(b) = &self.budget else { return };
        let Some(usage) = lock(b).due(force, STORE_EVERY) else {
            return;
        };
        if let Err(e) = self.journal.set_budget_usage(&self.name, usage).await {
            tracing::warn!(upstream = %self.name, error = %e, "Cannot store the data budget used; a restart may count the last bytes again.");
        }
    }
}

/// Clears the settings and state an earlier configuration of the upstream published
/// (the totals, which only grow, are kept).
fn reset(s: &UplinkCounters) {
    for gauge in [
        &s.live_active,
        &s.live_configured,
        &s.oldest_unsent_ms,
        &s.bandwidth,
        &s.budget_limit,
        &s.budget_used,
        &s.budget_backlog_limit,
        &s.budget_period_end_ms,
        &s.budget_exhaustion_ms,
        &s.budget_spent,
        &s.windows_configured,
        &s.window_open,
        &s.window_change_ms,
    ] {
        gauge.store(0, Ordering::Relaxed);
    }
    *lock(&s.backlog_held) = None;
}

/// Locks a mutex whose holder cannot leave it inconsistent (plain numbers).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! The data budget of one upstream: bytes used in the current calendar period, what the
//! backlog and the live lane may still use, and when it was last stored.
//!
//! # Invariant
//!
//! The backlog stops once `limit − live_reserve` is used, the live lane once `limit` is;
//! both go on in the next period. Usage is carried across restarts through the journal
//! ([`BudgetUsage`]) and is only ever reset by a new period.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use super::{Clock, Lane};
use crate::calendar::{format_duration, period_bounds, period_id, projected_exhaustion, Period};
use crate::config::{BudgetPeriod, UplinkConfig};
use crate::journal::BudgetUsage;
use crate::telemetry::UplinkCounters;

#[derive(Debug)]
pub(super) struct Budget {
    upstream: String,
    limit: u64,
    /// What the backlog may use: `limit` minus the live reserve.
    backlog_limit: u64,
    period: Period,
    /// The current period's id, start and end.
    id: u64,
    start: DateTime<Local>,
    end: DateTime<Local>,
    used: u64,
    /// What was last stored (or read back), and when.
    stored: u64,
    stored_at: Instant,
    /// Whether the pause of this period was logged already.
    logged: bool,
}

impl Budget {
    pub(super) fn new(
        upstream: &str,
        limit: u64,
        config: &UplinkConfig,
        stored: Option<BudgetUsage>,
        now: &DateTime<Local>,
    ) -> Budget {
        let period = match config.budget_period {
            BudgetPeriod::Day => Period::Day,
            // Validation keeps the day in 1..=28; a hand-built config falls back to 1.
            BudgetPeriod::Month => {
                Period::month(config.budget_reset_day).unwrap_or(Period::Month { reset_day: 1 })
            }
        };
        let reserve = (limit as f64 * config.live_reserve) as u64;
        let mut b = Budget {
            upstream: upstream.to_owned(),
            limit,
            backlog_limit: limit.saturating_sub(reserve),
            period,
            id: 0,
            start: *now,
            end: *now,
            used: 0,
            stored: 0,
            stored_at: Instant::now(),
            logged: false,
        };
        b.roll(now);
        if let Some(s) = stored.filter(|s| s.period == b.id) {
            b.used = s.used;
            b.stored = s.used;
            tracing::info!(upstream = %upstream, used = s.used, limit, "Data budget: carrying on with what this period used before the restart.");
        }
        b
    }

    /// Starts a new period when `now` is past the current one.
    fn roll(&mut self, now: &DateTime<Local>) {
        let id = period_id(self.period, now);
        if id == self.id {
            return;
        }
        let (start, end) = period_bounds(self.period, now);
        if self.id != 0 {
            tracing::info!(upstream = %self.upstream, used_before = self.used, limit = self.limit, "Data budget: a new period began; the backlog may send again.");
        }
        self.id = id;
        self.start = start;
        self.end = end;
        self.used = 0;
        self.logged = false;
    }

    pub(super) fn add(&mut self, bytes: u64, now: &DateTime<Local>) {
        self.roll(now);
        self.used = self.used.saturating_add(bytes);
    }

    /// Why `lane` may not send now, with how long until the period ends; `None` if it may.
    pub(super) fn refusal(
        &mut self,
        lane: Lane,
        now: &DateTime<Local>,
    ) -> Option<(String, Duration)> {
        self.roll(now);
        let limit = match lane {
            Lane::Backlog => self.backlog_limit,
            Lane::Live => self.limit,
        };
        if self.used < limit {
            return None;
        }
        let wait = (self.end - *now).to_std().unwrap_or(Duration::ZERO);
        if !self.logged && lane == Lane::Backlog {
            self.logged = true;
            tracing::warn!(upstream = %self.upstream, used = self.used, limit = self.limit, resumes_in = %format_duration(wait), "Data budget: the backlog's share is spent; the backlog pauses until the next period while the live lane and urgent readings go on within the reserve.");
        }
        let what = match lane {
            Lane::Backlog => "budget spent",
            Lane::Live => "budget spent, reserve included",
        };
        Some((
            format!(
                "waiting for budget ({what}; next period in {})",
                format_duration(wait)
            ),
            wait,
        ))
    }

    /// Writes the budget fields of the status.
    /// `clock` turns its instants into the system clock's milliseconds.
    pub(super) fn publish(&mut self, s: &UplinkCounters, now: &DateTime<Local>, clock: &Clock) {
        self.roll(now);
        s.budget_limit.store(self.limit, Ordering::Relaxed);
        s.budget_backlog_limit
            .store(self.backlog_limit, Ordering::Relaxed);
        s.budget_used.store(self.used, Ordering::Relaxed);
        s.budget_period_end_ms
            .store(clock.real_ms(&self.end), Ordering::Relaxed);
        s.budget_spent.store(
            u64::from(self.used >= self.backlog_limit),
            Ordering::Relaxed,
        );
        let exhaustion = projected_exhaustion(self.used, self.limit, &self.start, now, &self.end);
        s.budget_exhaustion_ms.store(
            exhaustion.as_ref().map_or(0, |t| clock.real_ms(t)),
            Ordering::Relaxed,
        );
    }

    /// The usage to store now: when it changed and the last store is `every` old, or
    /// whenever it changed with `force`.
    pub(super) fn due(&mut self, force: bool, every: Duration) -> Option<BudgetUsage> {
        if self.used == self.stored || (!force && self.stored_at.elapsed() < every) {
            return None;
        }
        self.stored = self.used;
        self.stored_at = Instant::now();
        Some(BudgetUsage {
            period: self.id,
            used: self.used,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(period: BudgetPeriod, reserve: f64) -> UplinkConfig {
        UplinkConfig {
            budget_period: period,
            live_reserve: reserve,
            ..UplinkConfig::default()
        }
    }

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Local> {
        Local
            .with_ymd_and_hms(y, m, d, h, 0, 0)
            .earliest()
            .expect("a local time")
    }

    #[test]
    fn the_backlog_stops_at_the_reserve_and_the_live_lane_at_the_limit() {
        let now = at(2026, 12, 6, 12);
        let mut b = Budget::new("u", 1000, &config(BudgetPeriod::Month, 0.1), None, &now);
        b.add(899, &now);
        assert!(b.refusal(Lane::Backlog, &now).is_none());
        b.add(1, &now);
        let (reason, _) = b.refusal(Lane::Backlog, &now).expect("backlog paused");
        assert!(reason.contains("budget spent"), "{reason}");
        assert!(b.refusal(Lane::Live, &now).is_none(), "the reserve is left");
        b.add(100, &now);
        assert!(b.refusal(Lane::Live, &now).is_some(), "all spent");
    }

    #[test]
    fn a_new_period_grants_the_budget_again() {
        let now = at(2026, 12, 6, 12);
        let mut b = Budget::new("u", 1000, &config(BudgetPeriod::Day, 0.1), None, &now);
        b.add(5000, &now);
        assert!(b.refusal(Lane::Live, &now).is_some());
        let tomorrow = at(2026, 12, 7, 0);
        assert!(b.refusal(Lane::Backlog, &tomorrow).is_none());
    }

    #[test]
    fn usage_stored_in_this_period_is_carried_over_and_an_older_one_is_not() {
        let now = at(2026, 12, 6, 12);
        let cfg = config(BudgetPeriod::Month, 0.1);
        let this = BudgetUsage {
            period: period_id(Period::Month { reset_day: 1 }, &now),
            used: 950,
        };
        let mut b = Budget::new("u", 1000, &cfg, Some(this), &now);
        assert!(
            b.refusal(Lane::Backlog, &now).is_some(),
            "spent before the restart"
        );
        let older = BudgetUsage {
            period: 20261101,
            used: 950,
        };
        let mut b = Budget::new("u", 1000, &cfg, Some(older), &now);
        assert!(b.refusal(Lane::Backlog, &now).is_none());
    }

    #[test]
    fn usage_is_due_for_storing_only_when_it_changed() {
        let now = at(2026, 12, 6, 12);
        let mut b = Budget::new("u", 1000, &config(BudgetPeriod::Day, 0.1), None, &now);
        assert_eq!(b.due(true, Duration::ZERO), None, "nothing used");
        b.add(10, &now);
        assert_eq!(b.due(false, Duration::from_secs(3600)), None, "too soon");
        let stored = b.due(true, Duration::from_secs(3600)).expect("forced");
        assert_eq!(stored.used, 10);
        assert_eq!(b.due(true, Duration::ZERO), None, "unchanged since");
    }
}

//! Budget periods: the calendar day or month, in local time, that a data budget counts
//! within (`budget_period`, `budget_reset_day`); where the period holding an instant
//! starts and ends (DST-safe), its stable id, and when the budget runs out at the rate so
//! far.
//!
//! A period starts at a local midnight: every midnight (`day`), or midnight at the start
//! of day `reset_day` of each month (`month`). Days with a DST change are 23 or 25 hours
//! long; a midnight that does not exist starts its period at the first instant after it
//! (see [`super`]).

use std::fmt;

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, TimeDelta, TimeZone};

use super::resolve_local;

/// The latest `budget_reset_day`: every month has days 1 to 28.
pub const MAX_RESET_DAY: u8 = 28;

/// Why a budget period setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeriodError {
    #[error("budget_period = {name:?}: must be \"day\" or \"month\"")]
    Name { name: String },
    #[error(
        "budget_reset_day = {day}: must be 1 to {max} (every month has those days)",
        max = MAX_RESET_DAY
    )]
    ResetDay { day: u32 },
    #[error("budget_reset_day is set but budget_period is \"day\"; it applies to \"month\" only")]
    ResetDayWithDay,
}

/// The calendar span a data budget counts within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// From local midnight to the next.
    Day,
    /// From local midnight starting day `reset_day` of a month to the same in the next
    /// month. [`Period::month`] keeps it within 1..=28; a value outside is clamped to it.
    Month { reset_day: u8 },
}

impl Period {
    /// A monthly period restarting on day `reset_day` (1..=28) of each month.
    pub fn month(reset_day: u32) -> Result<Period, PeriodError> {
        match u8::try_from(reset_day) {
            Ok(day @ 1..=MAX_RESET_DAY) => Ok(Period::Month { reset_day: day }),
            _ => Err(PeriodError::ResetDay { day: reset_day }),
        }
    }

    /// The period from the configuration's `budget_period` (`"day"` or `"month"`) and
    /// `budget_reset_day` (months only, default 1).
    pub fn from_config(name: &str, reset_day: Option<u32>) -> Result<Period, PeriodError> {
        match (name, reset_day) {
            ("day", None) => Ok(Period::Day),
            ("day", Some(_)) => Err(PeriodError::ResetDayWithDay),
            ("month", day) => Period::month(day.unwrap_or(1)),
            _ => Err(PeriodError::Name {
                name: name.to_owned(),
            }),
        }
    }

    /// The local date the period holding local date `date` starts on.
    fn start_date(self, date: NaiveDate) -> Option<NaiveDate> {
        match self {
            Period::Day => Some(date),
            Period::Month { reset_day } => {
                let reset_day = reset_day.clamp(1, MAX_RESET_DAY);
                let this_month = date.with_day(u32::from(reset_day))?;
                if date.day() >= u32::from(reset_day) {
                    Some(this_month)
                } else {
                    this_month.checked_sub_months(Months::new(1))
                }
            }
        }
    }

    /// The start date of the period after (or before) the one starting on `start`.
    fn step(self, start: NaiveDate, forward: bool) -> Option<NaiveDate> {
        match (self, forward) {
            (Period::Day, true) => start.succ_opt(),
            (Period::Day, false) => start.pred_opt(),
            (Period::Month { .. }, true) => start.checked_add_months(Months::new(1)),
            (Period::Month { .. }, false) => start.checked_sub_months(Months::new(1)),
        }
    }

    /// The period holding `at`: its start date and its start and end instants.
    fn locate<Tz: TimeZone>(
        self,
        at: &DateTime<Tz>,
    ) -> Option<(NaiveDate, DateTime<Tz>, DateTime<Tz>)> {
        let tz = at.timezone();
        let begins = |date: NaiveDate| resolve_local(&tz, date.and_time(NaiveTime::MIN));
        let mut start_date = self.start_date(at.naive_local().date())?;
        // The local date of `at` names its period, except in the rare zones whose clocks
        // fall back across midnight, where the repeated hour before midnight lies after
        // the first midnight; the instants decide, a step or two at most.
        for _ in 0..4 {
            let next_date = self.step(start_date, true)?;
            let (start, end) = (begins(start_date)?, begins(next_date)?);
            if *at < start {
                start_date = self.step(start_date, false)?;
            } else if *at >= end {
                start_date = next_date;
            } else {
                return Some((start_date, start, end));
            }
        }
        None
    }
}

impl fmt::Display for Period {
    /// As status shows it: `day`, `month` (from the 1st), `month from day 15`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Day => f.write_str("day"),
            Period::Month { reset_day: 1 } => f.write_str("month"),
            Period::Month { reset_day } => write!(f, "month from day {reset_day}"),
        }
    }
}

/// The start (inclusive) and end (exclusive) of the period holding `at`, in `at`'s zone.
/// At the edges of chrono's range, hundreds of thousands of years away, a bound that
/// cannot be represented is `at` itself.
pub fn period_bounds<Tz: TimeZone>(
    period: Period,
    at: &DateTime<Tz>,
) -> (DateTime<Tz>, DateTime<Tz>) {
    match period.locate(at) {
        Some((_, start, end)) => (start, end),
        None => (at.clone(), at.clone()),
    }
}

/// A stable number for the period holding `at`: the local date it starts on as
/// `YYYYMMDD` (2026-12-15 is `20261215`). Persisted with the bytes used in it, it tells a
/// new period after a restart; ids of later periods are larger. Changing
/// `budget_reset_day` changes the ids, which starts a new period.
pub fn period_id<Tz: TimeZone>(period: Period, at: &DateTime<Tz>) -> u64 {
    let date = period
        .locate(at)
        .map_or_else(|| at.naive_local().date(), |(date, _, _)| date);
    // Years before 1 are clamped to 0: no gateway counts bytes in them.
    let year = u64::try_from(date.year()).unwrap_or(0);
    year * 10_000 + u64::from(date.month()) * 100 + u64::from(date.day())
}

/// When `used` bytes of `limit` will be spent if the rate since `period_start` goes on:
/// `now` if already spent; `None` if nothing is used yet, no time has passed, or the
/// projection falls at or after `period_end` (the budget lasts the period).
pub fn projected_exhaustion<Tz: TimeZone>(
    used: u64,
    limit: u64,
    period_start: &DateTime<Tz>,
    now: &DateTime<Tz>,
    period_end: &DateTime<Tz>,
) -> Option<DateTime<Tz>> {
    if used == 0 {
        return None;
    }
    if used >= limit {
        return Some(now.clone());
    }
    let elapsed = u128::try_from(
        now.clone()
            .signed_duration_since(period_start.clone())
            .num_milliseconds(),
    )
    .ok()?;
    let left = u128::try_from(
        period_end
            .clone()
            .signed_duration_since(now.clone())
            .num_milliseconds(),
    )
    .ok()?;
    if elapsed == 0 {
        return None;
    }
    // Time to spend the rest at used/elapsed: (limit - used) * elapsed / used, in u128 so
    // that terabytes times years of milliseconds cannot overflow.
    let needed = u128::from(limit - used) * elapsed / u128::from(used);
    if needed >= left {
        return None;
    }
    let needed = i64::try_from(needed).ok()?;
    now.clone()
        .checked_add_signed(TimeDelta::milliseconds(needed))
}

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
    #[error(
        "budget_reset_day = {day}: must be 1 to {max} (every month has those days)",
        max = MAX_RESET_DAY
    )]
    ResetDay { day: u8 },
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
    /// A monthly period restarting on day `reset_day` (1..=28) of each month: the check
    /// of `budget_reset_day`.
    pub fn month(reset_day: u8) -> Result<Period, PeriodError> {
        if (1..=MAX_RESET_DAY).contains(&reset_day) {
            Ok(Period::Month { reset_day })
        } else {
            Err(PeriodError::ResetDay { day: reset_day })
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use chrono_tz::{America::Santiago, Europe::Berlin};

    use super::super::utc;
    use super::*;

    fn month(reset_day: u8) -> Period {
        Period::month(reset_day).expect("a valid reset day")
    }

    /// Checks the bounds and id of the period holding each `(at, start, end, id)`, the
    /// instants written in UTC and judged in `zone`.
    fn check_in<Z: TimeZone>(zone: &Z, period: Period, cases: &[(&str, &str, &str, u64)]) {
        for (at, start, end, id) in cases {
            let local = utc(at).with_timezone(zone);
            let (from, to) = period_bounds(period, &local);
            assert_eq!(
                (from.to_utc(), to.to_utc()),
                (utc(start), utc(end)),
                "{period} holding {at} UTC"
            );
            assert_eq!(period_id(period, &local), *id, "{period} holding {at} UTC");
        }
    }

    fn check(period: Period, cases: &[(&str, &str, &str, u64)]) {
        check_in(&Utc, period, cases);
    }

    #[test]
    fn a_day_runs_from_midnight_to_midnight() {
        check(
            Period::Day,
            &[
                (
                    "2026-12-06 15:00",
                    "2026-12-06 00:00",
                    "2026-12-07 00:00",
                    20261206,
                ),
                (
                    "2026-12-06 00:00",
                    "2026-12-06 00:00",
                    "2026-12-07 00:00",
                    20261206,
                ),
                (
                    "2026-12-07 00:00",
                    "2026-12-07 00:00",
                    "2026-12-08 00:00",
                    20261207,
                ),
            ],
        );
    }

    #[test]
    fn a_month_from_the_first_runs_to_the_first_of_the_next_across_the_new_year() {
        check(
            month(1),
            &[
                (
                    "2026-12-06 15:00",
                    "2026-12-01 00:00",
                    "2027-01-01 00:00",
                    20261201,
                ),
                (
                    "2026-12-31 23:59",
                    "2026-12-01 00:00",
                    "2027-01-01 00:00",
                    20261201,
                ),
                (
                    "2027-01-01 00:00",
                    "2027-01-01 00:00",
                    "2027-02-01 00:00",
                    20270101,
                ),
                (
                    "2028-02-29 12:00",
                    "2028-02-01 00:00",
                    "2028-03-01 00:00",
                    20280201,
                ),
            ],
        );
    }

    #[test]
    fn a_month_from_the_15th_spans_two_calendar_months() {
        check(
            month(15),
            &[
                (
                    "2026-12-06 15:00",
                    "2026-11-15 00:00",
                    "2026-12-15 00:00",
                    20261115,
                ),
                (
                    "2026-12-20 08:00",
                    "2026-12-15 00:00",
                    "2027-01-15 00:00",
                    20261215,
                ),
                (
                    "2027-01-14 23:59",
                    "2026-12-15 00:00",
                    "2027-01-15 00:00",
                    20261215,
                ),
                (
                    "2027-01-15 00:00",
                    "2027-01-15 00:00",
                    "2027-02-15 00:00",
                    20270115,
                ),
            ],
        );
    }

    #[test]
    fn ids_are_stable_within_a_period_and_grow_with_the_next() {
        let fifteenth = month(15);
        let mut at = utc("2026-01-01 00:00");
        let mut ids = vec![period_id(fifteenth, &at)];
        while at < utc("2027-12-31 00:00") {
            at += TimeDelta::hours(7);
            let id = period_id(fifteenth, &at);
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
        // Two years and the half month before the first reset: 25 periods, in order.
        assert_eq!(ids.len(), 25);
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        assert_eq!(ids[0], 20251215);
        assert_eq!(ids[24], 20271215);
    }

    #[test]
    fn days_with_a_dst_change_are_23_or_25_hours_long() {
        // Europe/Berlin springs forward on 2026-03-29 and falls back on 2026-10-25.
        check_in(
            &Berlin,
            Period::Day,
            &[
                // 23 hours, from 00:00 CET to 00:00 CEST.
                (
                    "2026-03-29 10:00",
                    "2026-03-28 23:00",
                    "2026-03-29 22:00",
                    20260329,
                ),
                // 25 hours, from 00:00 CEST to 00:00 CET.
                (
                    "2026-10-25 10:00",
                    "2026-10-24 22:00",
                    "2026-10-25 23:00",
                    20261025,
                ),
                // The first and the second 02:10 are the same day.
                (
                    "2026-10-25 00:10",
                    "2026-10-24 22:00",
                    "2026-10-25 23:00",
                    20261025,
                ),
                (
                    "2026-10-25 01:10",
                    "2026-10-24 22:00",
                    "2026-10-25 23:00",
                    20261025,
                ),
            ],
        );
        // A month holding the spring change is an hour short of 31 days.
        check_in(
            &Berlin,
            month(1),
            &[(
                "2026-03-29 10:00",
                "2026-02-28 23:00",
                "2026-03-31 22:00",
                20260301,
            )],
        );
    }

    #[test]
    fn a_midnight_that_does_not_exist_starts_the_day_at_the_first_instant_after_it() {
        // America/Santiago springs forward at midnight: on 2026-09-06, 00:00 -04 never
        // comes, the clock goes from 23:59:59 -04 to 01:00 -03 at 04:00 UTC; so that day
        // starts at 01:00 local and lasts 23 hours, and the day before lasts 24.
        check_in(
            &Santiago,
            Period::Day,
            &[
                (
                    "2026-09-06 15:00",
                    "2026-09-06 04:00",
                    "2026-09-07 03:00",
                    20260906,
                ),
                (
                    "2026-09-05 12:00",
                    "2026-09-05 04:00",
                    "2026-09-06 04:00",
                    20260905,
                ),
            ],
        );
        let day = utc("2026-09-06 15:00").with_timezone(&Santiago);
        let (start, _) = period_bounds(Period::Day, &day);
        assert_eq!(start.naive_local(), utc("2026-09-06 01:00").naive_utc());
    }

    #[test]
    fn every_instant_lies_within_its_own_period() {
        for (zone, period) in [
            (Berlin, month(28)),
            (Santiago, Period::Day),
            (Berlin, Period::Day),
        ] {
            let mut at = utc("2026-03-01 00:00");
            while at < utc("2026-11-01 00:00") {
                let local = at.with_timezone(&zone);
                let (start, end) = period_bounds(period, &local);
                assert!(
                    start <= local && local < end,
                    "{local} not in [{start}, {end})"
                );
                at += TimeDelta::minutes(47);
            }
        }
    }

    #[test]
    fn a_reset_day_must_be_1_to_28_and_periods_print_as_status_shows_them() {
        assert_eq!(Period::month(1), Ok(Period::Month { reset_day: 1 }));
        assert_eq!(Period::month(28), Ok(Period::Month { reset_day: 28 }));
        for day in [0, 29, 31, 255] {
            assert_eq!(Period::month(day), Err(PeriodError::ResetDay { day }));
        }
        assert_eq!(
            Period::month(29).expect_err("29").to_string(),
            "budget_reset_day = 29: must be 1 to 28 (every month has those days)"
        );
        assert_eq!(Period::Day.to_string(), "day");
        assert_eq!(month(1).to_string(), "month");
        assert_eq!(month(15).to_string(), "month from day 15");
    }

    #[test]
    fn exhaustion_is_projected_at_the_rate_so_far() {
        let (start, end) = (utc("2026-12-06 00:00"), utc("2026-12-07 00:00"));
        let at = |now: &str, used: u64| projected_exhaustion(used, 100, &start, &utc(now), &end);
        // 30 of 100 in 6 h: the other 70 take 14 h more.
        assert_eq!(at("2026-12-06 06:00", 30), Some(utc("2026-12-06 20:00")));
        // 25 in 6 h lasts exactly the day: not spent within it.
        assert_eq!(at("2026-12-06 06:00", 25), None);
        assert_eq!(at("2026-12-06 06:00", 10), None);
        assert_eq!(at("2026-12-06 06:00", 0), None);
        assert_eq!(at("2026-12-06 00:00", 5), None);
        // Already spent: now.
        assert_eq!(at("2026-12-06 06:00", 100), Some(utc("2026-12-06 06:00")));
        assert_eq!(at("2026-12-06 06:00", 150), Some(utc("2026-12-06 06:00")));
        // Large figures do not overflow: 1 TiB of 2 TiB in a month's first half.
        let (start, end) = (utc("2026-12-01 00:00"), utc("2027-01-01 00:00"));
        let tib = 1u64 << 40;
        assert_eq!(
            projected_exhaustion(tib, 2 * tib, &start, &utc("2026-12-11 00:00"), &end),
            Some(utc("2026-12-21 00:00"))
        );
    }
}

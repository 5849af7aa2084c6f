//! Calendar arithmetic in local time for constrained uplinks: when the send windows are
//! open ([`windows`]) and which budget period an instant falls in ([`period`]), both
//! DST-safe. Pure functions of a time and a time zone; shared below the stages, it imports
//! nothing of the crate.
//!
//! # Local time and DST
//!
//! Windows and periods are written as wall-clock times (`22:00`, "midnight on the 15th"),
//! but they act on instants. Every wall-clock time maps to one instant the same way,
//! through `resolve_local`:
//!
//! * a wall time that happens once is that instant;
//! * a wall time that happens twice (the repeated hour when clocks fall back) is its
//!   *first* instance, so a window ending at 02:30 on such a night ends at the first 02:30
//!   and does not reopen for the second;
//! * a wall time that does not happen (the hour skipped when clocks spring forward) is the
//!   first instant after it, so a window starting at 02:30 on such a night opens at 03:00,
//!   and a local midnight that does not exist starts its day at the first instant after it.
//!
//! Callers pass `chrono::Local` in the daemon and a fixed zone (or a `chrono-tz` zone) in
//! tests; nothing here reads the clock.

pub mod period;
pub mod windows;

pub use period::{period_bounds, period_id, projected_exhaustion, Period, PeriodError};
pub use windows::{format_duration, SendWindows, WindowError};

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone};

/// How far past a skipped wall time [`resolve_local`] looks for one that exists: a day
/// and a half covers every gap in the time-zone database (the longest, Samoa's skipped
/// 30 December 2011, is one day).
const LONGEST_GAP_MINUTES: i64 = 36 * 60;

/// The instant at which the clock of `tz` first shows `wall`, or, if it never shows it
/// (a time skipped by a spring-forward), the first instant after it. `None` only at the
/// edges of the representable range.
pub(crate) fn resolve_local<Tz: TimeZone>(tz: &Tz, wall: NaiveDateTime) -> Option<DateTime<Tz>> {
    if let Some(at) = tz.from_local_datetime(&wall).earliest() {
        return Some(at);
    }
    // In a gap: the first whole minute after it that exists is where the clock resumes
    // (the transitions of today's rules all fall on whole minutes).
    (1..=LONGEST_GAP_MINUTES).find_map(|minutes| {
        let later = wall.checked_add_signed(TimeDelta::minutes(minutes))?;
        tz.from_local_datetime(&later).earliest()
    })
}

/// An instant written as UTC wall time, `"2026-12-07 22:00"`, for the tests of both files.
#[cfg(test)]
fn utc(text: &str) -> DateTime<chrono::Utc> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
        .expect("a test time")
        .and_utc()
}

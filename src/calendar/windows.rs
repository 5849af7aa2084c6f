//! Send windows: the times of day or week, in local wall-clock time, during which an
//! upstream's backlog may be sent (`send_windows`); parsed once from the configuration,
//! then asked whether they are open and when that next changes, DST-safe.
//!
//! # The forms
//!
//! * `"HH:MM-HH:MM"` — every day. An end before the start crosses midnight
//!   (`"22:00-06:00"` is open from 22:00 to 06:00 the next morning).
//! * `"Ddd HH:MM-Ddd HH:MM"` — once a week, days `Mon` … `Sun` (any case). An end before
//!   the start wraps the week (`"Fri 18:00-Mon 06:00"`).
//!
//! A window opens at the start of its start minute and closes at the start of its end
//! minute (the end is exclusive), except that an end of `23:59` means through the end of
//! that minute, i.e. midnight: `"Sat 00:00-Sun 23:59"` covers the whole weekend and
//! `"22:00-23:59"` runs until midnight. `24:00` is accepted as an end and means midnight
//! too. A start equal to its end is refused rather than guessed (empty, or all day?):
//! all day is `"00:00-24:00"`.
//!
//! Windows may overlap; the backlog may be sent while any of them is open. No windows at
//! all means always open. Wall-clock times become instants as [`super`] describes: across
//! a spring-forward a window starting in the skipped hour opens when the clock resumes,
//! and across a fall-back a window ending in the repeated hour ends at its first instance.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, NaiveTime, TimeDelta, TimeZone};

use super::resolve_local;

/// Minutes in a day and in a week: windows are kept in whole minutes from their anchor
/// (local midnight, or local midnight on Monday).
const DAY: u32 = 24 * 60;
const WEEK: u32 = 7 * DAY;

/// How far ahead [`SendWindows::next_change`] looks: more than a week, so every weekly
/// window is seen once whatever the DST shifts.
const SEARCH_DAYS: i64 = 8;

/// The valid forms, quoted in every parse error.
const EXAMPLES: &str = "\"22:00-06:00\" (every day) or \"Sat 00:00-Sun 23:59\" (weekly)";

/// Why a `send_windows` entry was refused. Each names the entry and shows a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    #[error("send window {entry:?} is not a span of two times; write {examples}", examples = EXAMPLES)]
    Malformed { entry: String },
    #[error(
        "send window {entry:?}: {time:?} is not a time of day (00:00 to 23:59, or 24:00 as an end); write {examples}",
        examples = EXAMPLES
    )]
    Time { entry: String, time: String },
    #[error(
        "send window {entry:?}: {day:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat or Sun); write {examples}",
        examples = EXAMPLES
    )]
    Day { entry: String, day: String },
    #[error(
        "send window {entry:?} names a day on one side only; write {examples}",
        examples = EXAMPLES
    )]
    OneDay { entry: String },
    #[error("send window {entry:?} starts where it ends; use \"00:00-24:00\" for all day")]
    Empty { entry: String },
}

/// How often a window comes back, and so what its minutes count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// From every local midnight.
    Daily,
    /// From every local midnight between Sunday and Monday.
    Weekly,
}

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    repeat: Repeat,
    /// Minutes from the anchor to the opening, below a day (daily) or a week (weekly).
    start: u32,
    /// Minutes open, at least 1 and at most a day (daily) or a week (weekly).
    length: u32,
}

/// The send windows of one upstream. The default (no windows) is always open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendWindows {
    windows: Vec<Window>,
}

impl SendWindows {
    /// Parses the `send_windows` entries (see the module docs for the forms). The first
    /// bad entry is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, WindowError> {
        let windows = entries
            .iter()
            .map(|entry| parse_entry(entry.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { windows })
    }

    /// True when no windows are configured, so the backlog is never held back by them.
    pub fn is_always_open(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether the backlog may be sent at `at`, judged on the local wall-clock time of
    /// `at`'s zone (weekday and time of day), with the DST rules of the module docs.
    pub fn is_open<Tz: TimeZone>(&self, at: &DateTime<Tz>) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        self.open_spans(at)
            .iter()
            .any(|(start, end)| start <= at && at < end)
    }

    /// When [`is_open`](Self::is_open) next gives another answer after `at`, if that is
    /// within 8 days. `None`: no windows, windows that cover the whole week, or (closed)
    /// windows that never happen, each of them lying in a spring-forward gap.
    pub fn next_change<Tz: TimeZone>(&self, at: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        if self.windows.is_empty() {
            return None;
        }
        let horizon = at
            .clone()
            .checked_add_signed(TimeDelta::days(SEARCH_DAYS))?;
        // The spans are sorted and apart: the first that has not ended holds the change.
        let change = self
            .open_spans(at)
            .into_iter()
            .find(|(_, end)| end > at)
            .map(|(start, end)| if start <= *at { end } else { start })?;
        (change <= horizon).then_some(change)
    }

    /// The window state at `at` for status: `"open (closes in 2h05m)"`,
    /// `"closed (opens in 3h12m)"`, `"open (always)"`, or, when no window opens within 8
    /// days, `"closed (no window in the next 8 days)"`.
    pub fn describe<Tz: TimeZone>(&self, at: &DateTime<Tz>) -> String {
        let open = self.is_open(at);
        match (open, self.next_change(at)) {
            (true, Some(close)) => format!("open (closes in {})", until(at, &close)),
            (true, None) => "open (always)".to_owned(),
            (false, Some(opens)) => format!("closed (opens in {})", until(at, &opens)),
            (false, None) => format!("closed (no window in the next {SEARCH_DAYS} days)"),
        }
    }

    /// The instants the windows are open, from a little over a week before `at` to a
    /// little over [`SEARCH_DAYS`] after it: sorted, and merged where they overlap or
    /// touch, so that each start and each end is a real change of state. Spans cut by the
    /// edges of that range only ever lie beyond what `is_open` and `next_change` ask.
    fn open_spans<Tz: TimeZone>(&self, at: &DateTime<Tz>) -> Vec<(DateTime<Tz>, DateTime<Tz>)> {
        let local = at.naive_local();
        // Back: any occurrence holding `at` started less than a week (plus a DST shift)
        // before it. Ahead: a day past the horizon, so that DST shifts cannot pull an
        // occurrence that ends before the horizon out of the range.
        let (Some(from), Some(to)) = (
            local.checked_sub_signed(TimeDelta::days(SEARCH_DAYS)),
            local.checked_add_signed(TimeDelta::days(SEARCH_DAYS + 1)),
        ) else {
            return Vec::new();
        };
        let tz = at.timezone();
        let mut spans = Vec::new();
        for window in &self.windows {
            let (mut anchor, step) = match window.repeat {
                Repeat::Daily => (from.date(), TimeDelta::days(1)),
                Repeat::Weekly => {
                    let back = i64::from(from.date().weekday().num_days_from_monday());
                    let Some(monday) = from.date().checked_sub_signed(TimeDelta::days(back)) else {
                        continue;
                    };
                    (monday, TimeDelta::days(7))
                }
            };
            // One anchor earlier too: its occurrence may run past `from`.
            if let Some(earlier) = anchor.checked_sub_signed(step) {
                anchor = earlier;
            }
            loop {
                let midnight = anchor.and_time(NaiveTime::MIN);
                if midnight >= to {
                    break;
                }
                if let Some(span) = occurrence(&tz, midnight, window) {
                    spans.push(span);
                }
                match anchor.checked_add_signed(step) {
                    Some(next) => anchor = next,
                    None => break,
                }
            }
        }
        spans.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(DateTime<Tz>, DateTime<Tz>)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => {
                    if end > last.1 {
                        last.1 = end;
                    }
                }
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// The instants of `window`'s occurrence that counts from `anchor` (a local midnight),
/// or `None` if it is empty (wholly inside a spring-forward gap) or out of range.
fn occurrence<Tz: TimeZone>(
    tz: &Tz,
    anchor: NaiveDateTime,
    window: &Window,
) -> Option<(DateTime<Tz>, DateTime<Tz>)> {
    let opens = anchor.checked_add_signed(TimeDelta::minutes(i64::from(window.start)))?;
    let closes = opens.checked_add_signed(TimeDelta::minutes(i64::from(window.length)))?;
    let (start, end) = (resolve_local(tz, opens)?, resolve_local(tz, closes)?);
    (start < end).then_some((start, end))
}

/// The time from `from` to `to` in [`format_duration`]'s form.
fn until<Tz: TimeZone>(from: &DateTime<Tz>, to: &DateTime<Tz>) -> String {
    format_duration(
        to.clone()
            .signed_duration_since(from.clone())
            .to_std()
            .unwrap_or_default(),
    )
}

/// A duration for people, to the minute and rounded up (a window that opens in 20 s
/// "opens in 1m", not in 0m): `45m`, `3h12m`, `2h05m`, and from a day on days and hours
/// (`2d4h`), the minutes left out.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    let minutes = seconds.div_ceil(60);
    let (days, hours, minutes) = (
        minutes / u64::from(DAY),
        minutes % u64::from(DAY) / 60,
        minutes % 60,
    );
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else {
        format!("{minutes}m")
    }
}

/// One side of an entry: an optional weekday (0 = Monday) and a time as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    day: Option<u32>,
    hour: u32,
    minute: u32,
}

fn parse_entry(entry: &str) -> Result<Window, WindowError> {
    let malformed = || WindowError::Malformed {
        entry: entry.to_owned(),
    };
    let (from, to) = entry.split_once('-').ok_or_else(malformed)?;
    if to.contains('-') {
        return Err(malformed());
    }
    let (from, to) = (parse_point(entry, from)?, parse_point(entry, to)?);
    if from == to {
        return Err(WindowError::Empty {
            entry: entry.to_owned(),
        });
    }
    let bad_time = |point: &Point| WindowError::Time {
        entry: entry.to_owned(),
        time: format!("{:02}:{:02}", point.hour, point.minute),
    };
    // 24:00 only ends a window; 23:59 as an end runs through its minute.
    if from.hour == 24 {
        return Err(bad_time(&from));
    }
    let start_of_day = from.hour * 60 + from.minute;
    let end_of_day = match (to.hour, to.minute) {
        (23, 59) | (24, 0) => DAY,
        (hour, minute) => hour * 60 + minute,
    };
    let (repeat, start, end, period) = match (from.day, to.day) {
        (None, None) => (Repeat::Daily, start_of_day, end_of_day, DAY),
        (Some(a), Some(b)) => (
            Repeat::Weekly,
            a * DAY + start_of_day,
            b * DAY + end_of_day,
            WEEK,
        ),
        _ => {
            return Err(WindowError::OneDay {
                entry: entry.to_owned(),
            })
        }
    };
    // An end at or before the start crosses midnight (daily) or the week's end (weekly).
    // An end that lands on the start without being written the same
    // ("Tue 00:00-Mon 23:59") closes the circle: the whole week. Never zero.
    let length = if end > start {
        end - start
    } else {
        end + period - start
    };
    Ok(Window {
        repeat,
        start,
        length,
    })
}

/// `"HH:MM"` or `"Ddd HH:MM"`, spaces around it ignored; hours of one or two digits,
/// minutes of two, `24:00` allowed here and refused as a start by the caller.
fn parse_point(entry: &str, text: &str) -> Result<Point, WindowError> {
    let mut words = text.split_whitespace();
    let (day, time) = match (words.next(), words.next(), words.next()) {
        (Some(time), None, None) => (None, time),
        (Some(day), Some(time), None) => (Some(parse_day(entry, day)?), time),
        _ => {
            return Err(WindowError::Malformed {
                entry: entry.to_owned(),
            })
        }
    };
    let bad_time = || WindowError::Time {
        entry: entry.to_owned(),
        time: time.to_owned(),
    };
    let (hour, minute) = time.split_once(':').ok_or_else(bad_time)?;
    let digits = |s: &str, lengths: &[usize]| {
        (lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let (Some(hour), Some(minute)) = (digits(hour, &[1, 2]), digits(minute, &[2])) else {
        return Err(bad_time());
    };
    if minute > 59 || hour > 24 || (hour == 24 && minute != 0) {
        return Err(bad_time());
    }
    Ok(Point { day, hour, minute })
}

/// A three-letter English weekday, any case, as days from Monday.
fn parse_day(entry: &str, day: &str) -> Result<u32, WindowError> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(day))
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| WindowError::Day {
            entry: entry.to_owned(),
            day: day.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use chrono_tz::Europe::Berlin;

    use super::super::utc;
    use super::*;

    /// The same instant seen from Berlin.
    fn berlin(utc_text: &str) -> DateTime<chrono_tz::Tz> {
        utc(utc_text).with_timezone(&Berlin)
    }

    fn windows(entries: &[&str]) -> SendWindows {
        SendWindows::parse(entries).expect("valid windows")
    }

    #[test]
    fn daily_and_weekly_forms_parse_in_any_case_and_spacing() {
        let parsed = windows(&[
            "22:00-06:00",
            "sat 00:00-SUN 23:59",
            " 7:30 - 08:00 ",
            "00:00-24:00",
        ]);
        assert_eq!(
            parsed.windows,
            [
                Window {
                    repeat: Repeat::Daily,
                    start: 22 * 60,
                    length: 8 * 60
                },
                Window {
                    repeat: Repeat::Weekly,
                    start: 5 * DAY,
                    length: 2 * DAY
                },
                Window {
                    repeat: Repeat::Daily,
                    start: 7 * 60 + 30,
                    length: 30
                },
                Window {
                    repeat: Repeat::Daily,
                    start: 0,
                    length: DAY
                },
            ]
        );
        assert!(!parsed.is_always_open());
        assert!(windows(&[]).is_always_open());
    }

    #[test]
    fn a_bad_entry_is_named_with_a_valid_example() {
        let error = |entry: &str| {
            SendWindows::parse(&["08:00-09:00", entry])
                .expect_err(entry)
                .to_string()
        };
        assert_eq!(
            error("22:00"),
            "send window \"22:00\" is not a span of two times; write \"22:00-06:00\" (every day) or \"Sat 00:00-Sun 23:59\" (weekly)"
        );
        assert_eq!(
            error("25:00-06:00"),
            "send window \"25:00-06:00\": \"25:00\" is not a time of day (00:00 to 23:59, or 24:00 as an end); write \"22:00-06:00\" (every day) or \"Sat 00:00-Sun 23:59\" (weekly)"
        );
        assert_eq!(
            error("Saturday 00:00-Sun 23:59"),
            "send window \"Saturday 00:00-Sun 23:59\": \"Saturday\" is not a day (Mon, Tue, Wed, Thu, Fri, Sat or Sun); write \"22:00-06:00\" (every day) or \"Sat 00:00-Sun 23:59\" (weekly)"
        );
        assert_eq!(
            error("08:00-08:00"),
            "send window \"08:00-08:00\" starts where it ends; use \"00:00-24:00\" for all day"
        );
        assert_eq!(
            error("Sat 00:00-06:00"),
            "send window \"Sat 00:00-06:00\" names a day on one side only; write \"22:00-06:00\" (every day) or \"Sat 00:00-Sun 23:59\" (weekly)"
        );
        for (entry, expected) in [
            (
                "24:00-06:00",
                WindowError::Time {
                    entry: "24:00-06:00".into(),
                    time: "24:00".into(),
                },
            ),
            (
                "22:60-06:00",
                WindowError::Time {
                    entry: "22:60-06:00".into(),
                    time: "22:60".into(),
                },
            ),
            (
                "22:00-24:30",
                WindowError::Time {
                    entry: "22:00-24:30".into(),
                    time: "24:30".into(),
                },
            ),
            (
                "22:0-06:00",
                WindowError::Time {
                    entry: "22:0-06:00".into(),
                    time: "22:0".into(),
                },
            ),
            (
                "noon-18:00",
                WindowError::Time {
                    entry: "noon-18:00".into(),
                    time: "noon".into(),
                },
            ),
            (
                "22:00-06:00-08:00",
                WindowError::Malformed {
                    entry: "22:00-06:00-08:00".into(),
                },
            ),
            (
                "Sat 00:00 x-Sun 10:00",
                WindowError::Malformed {
                    entry: "Sat 00:00 x-Sun 10:00".into(),
                },
            ),
            ("", WindowError::Malformed { entry: "".into() }),
            (
                "Sat 10:00-sat 10:00",
                WindowError::Empty {
                    entry: "Sat 10:00-sat 10:00".into(),
                },
            ),
            (
                "Sa 00:00-Su 10:00",
                WindowError::Day {
                    entry: "Sa 00:00-Su 10:00".into(),
                    day: "Sa".into(),
                },
            ),
        ] {
            assert_eq!(SendWindows::parse(&[entry]), Err(expected), "{entry:?}");
        }
    }

    #[test]
    fn no_windows_and_an_all_day_window_are_always_open() {
        for parsed in [
            windows(&[]),
            windows(&["00:00-24:00"]),
            windows(&["00:00-23:59"]),
        ] {
            let at = utc("2026-12-09 13:37");
            assert!(parsed.is_open(&at));
            assert_eq!(parsed.next_change(&at), None);
            assert_eq!(parsed.describe(&at), "open (always)");
        }
    }

    /// Checks `is_open` at each `(at, open)` and `next_change` from each `(at, change)`,
    /// times written in UTC and judged in `zone`.
    fn check_in<Z: TimeZone>(
        zone: &Z,
        parsed: &SendWindows,
        states: &[(&str, bool)],
        changes: &[(&str, &str)],
    ) {
        let at = |text: &str| utc(text).with_timezone(zone);
        for (text, open) in states {
            assert_eq!(parsed.is_open(&at(text)), *open, "open at {text} UTC");
        }
        for (text, change) in changes {
            assert_eq!(
                parsed.next_change(&at(text)),
                Some(at(change)),
                "next change from {text} UTC"
            );
        }
    }

    fn check(parsed: &SendWindows, states: &[(&str, bool)], changes: &[(&str, &str)]) {
        check_in(&Utc, parsed, states, changes);
    }

    #[test]
    fn a_window_whose_end_is_before_its_start_crosses_midnight() {
        check(
            &windows(&["22:00-06:00"]),
            &[
                ("2026-12-07 21:59", false),
                ("2026-12-07 22:00", true),
                ("2026-12-07 23:59", true),
                ("2026-12-08 00:00", true),
                ("2026-12-08 05:59", true),
                ("2026-12-08 06:00", false),
                ("2026-12-08 12:00", false),
            ],
            &[
                ("2026-12-08 12:00", "2026-12-08 22:00"),
                ("2026-12-07 23:00", "2026-12-08 06:00"),
                ("2026-12-08 06:00", "2026-12-08 22:00"),
            ],
        );
    }

    #[test]
    fn an_end_of_23_59_runs_through_that_minute() {
        let weekend = windows(&["Sat 00:00-Sun 23:59"]);
        assert!(weekend.is_open(&(utc("2026-12-13 23:59") + TimeDelta::seconds(59))));
        check(
            &weekend,
            &[("2026-12-14 00:00", false), ("2026-12-11 23:59", false)],
            &[("2026-12-13 12:00", "2026-12-14 00:00")],
        );
        check(
            &windows(&["22:00-23:59"]),
            &[],
            &[("2026-12-07 22:30", "2026-12-08 00:00")],
        );
    }

    #[test]
    fn a_weekly_window_may_wrap_the_week() {
        check(
            &windows(&["Fri 18:00-Mon 06:00"]),
            &[
                ("2026-12-11 17:59", false),
                ("2026-12-11 18:00", true),
                ("2026-12-13 12:00", true),
                ("2026-12-14 05:59", true),
                ("2026-12-14 06:00", false),
                ("2026-12-09 12:00", false),
            ],
            &[
                ("2026-12-09 12:00", "2026-12-11 18:00"),
                ("2026-12-12 12:00", "2026-12-14 06:00"),
            ],
        );
    }

    #[test]
    fn overlapping_windows_change_state_only_where_their_union_does() {
        let both = windows(&["22:00-06:00", "Sat 00:00-Sun 23:59"]);
        // Friday night runs into the weekend, which runs into Sunday night.
        assert_eq!(
            both.next_change(&utc("2026-12-11 23:00")),
            Some(utc("2026-12-14 06:00"))
        );
        assert_eq!(
            both.next_change(&utc("2026-12-11 12:00")),
            Some(utc("2026-12-11 22:00"))
        );
        assert_eq!(
            both.describe(&utc("2026-12-11 23:00")),
            "open (closes in 2d7h)"
        );
    }

    #[test]
    fn the_next_change_is_found_across_a_week() {
        let weekly = windows(&["Wed 10:00-Wed 11:00"]);
        let at = utc("2026-12-09 11:30");
        assert_eq!(weekly.next_change(&at), Some(utc("2026-12-16 10:00")));
        assert_eq!(weekly.describe(&at), "closed (opens in 6d22h)");
        assert_eq!(
            weekly.describe(&utc("2026-12-09 10:15")),
            "open (closes in 45m)"
        );
        assert_eq!(
            weekly.describe(&utc("2026-12-09 06:48")),
            "closed (opens in 3h12m)"
        );
        // Walking from change to change goes round the week and back.
        let mut at = utc("2026-12-07 00:00");
        let mut changes = Vec::new();
        for _ in 0..4 {
            at = weekly.next_change(&at).expect("a change within the week");
            changes.push(at);
        }
        assert_eq!(
            changes,
            [
                utc("2026-12-09 10:00"),
                utc("2026-12-09 11:00"),
                utc("2026-12-16 10:00"),
                utc("2026-12-16 11:00"),
            ]
        );
    }

    #[test]
    fn a_window_starting_in_the_hour_skipped_by_spring_forward_opens_when_the_clock_resumes() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST, at 01:00 UTC.
        check_in(
            &Berlin,
            &windows(&["02:30-05:00"]),
            &[("2026-03-29 00:30", false), ("2026-03-29 01:00", true)],
            &[
                ("2026-03-29 00:30", "2026-03-29 01:00"), // 01:30 CET: opens at 03:00 CEST
                ("2026-03-29 01:00", "2026-03-29 03:00"), // closes at 05:00 CEST
            ],
        );
        // A night window ending in the gap closes when the clock jumps past its end.
        check_in(
            &Berlin,
            &windows(&["22:00-02:30"]),
            &[],
            &[("2026-03-28 22:00", "2026-03-29 01:00")],
        );
        // A window wholly inside the gap does not happen that night; the next day it does.
        check_in(
            &Berlin,
            &windows(&["02:00-02:30"]),
            &[],
            &[("2026-03-29 00:30", "2026-03-30 00:00")],
        );
    }

    #[test]
    fn a_window_ending_in_the_hour_repeated_by_fall_back_ends_at_its_first_instance() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET, at 01:00 UTC, so
        // 02:00-02:59 happens twice (00:00-00:59 UTC, then 01:00-01:59 UTC).
        check_in(
            &Berlin,
            &windows(&["22:00-02:30"]),
            &[
                ("2026-10-24 20:00", true),  // 22:00 CEST
                ("2026-10-25 01:10", false), // 02:10 CET, the second time
            ],
            &[
                ("2026-10-25 00:00", "2026-10-25 00:30"), // the first 02:30
                ("2026-10-25 00:30", "2026-10-25 21:00"), // 22:00 CET
            ],
        );
        // A window starting in the repeated hour opens at its first instance and stays
        // open through the second.
        check_in(
            &Berlin,
            &windows(&["02:15-04:00"]),
            &[("2026-10-25 01:05", true)], // 02:05 CET
            &[
                ("2026-10-24 23:00", "2026-10-25 00:15"), // the first 02:15
                ("2026-10-25 00:15", "2026-10-25 03:00"), // 04:00 CET
            ],
        );
    }

    #[test]
    fn next_change_names_exactly_the_minutes_where_is_open_flips_across_both_dst_nights() {
        for entries in [
            &["22:00-02:30"][..],
            &["02:15-04:00"],
            &["02:00-02:30", "Fri 18:00-Mon 06:00"],
            &["22:00-06:00", "Sat 00:00-Sun 23:59"],
        ] {
            let parsed = windows(entries);
            for (from, to) in [
                ("2026-03-26 00:00", "2026-04-01 00:00"),
                ("2026-10-22 00:00", "2026-10-28 00:00"),
            ] {
                let (mut at, to) = (berlin(from), berlin(to));
                let mut open = parsed.is_open(&at);
                let mut change = parsed.next_change(&at);
                while at < to {
                    at += TimeDelta::minutes(1);
                    if Some(at) == change {
                        assert_ne!(parsed.is_open(&at), open, "{entries:?} at {at}");
                        open = !open;
                        change = parsed.next_change(&at);
                    } else {
                        assert_eq!(parsed.is_open(&at), open, "{entries:?} at {at}");
                        assert_eq!(parsed.next_change(&at), change, "{entries:?} at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn state_is_judged_on_the_local_wall_clock() {
        // 23:00 UTC on a Friday is already Saturday 00:00 in Berlin (CET, UTC+1).
        let weekend = windows(&["Sat 00:00-Sun 23:59"]);
        assert!(weekend.is_open(&berlin("2026-12-11 23:00")));
        assert!(!weekend.is_open(&utc("2026-12-11 23:00")));
    }

    #[test]
    fn durations_read_as_minutes_hours_or_days() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(format_duration(Duration::ZERO), "0m");
        assert_eq!(format_duration(Duration::from_secs(20)), "1m");
        assert_eq!(format_duration(minutes(45)), "45m");
        assert_eq!(format_duration(minutes(125)), "2h05m");
        assert_eq!(format_duration(minutes(192)), "3h12m");
        assert_eq!(format_duration(minutes(60)), "1h00m");
        assert_eq!(format_duration(minutes(24 * 60)), "1d0h");
        assert_eq!(format_duration(minutes(52 * 60 + 59)), "2d4h");
    }
}

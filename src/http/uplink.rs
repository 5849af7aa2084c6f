//! Status of each upstream's constrained uplink: its two lanes, bandwidth, data budget and
//! send windows, as `/api/status` serves them ([`UplinkStatus`]), the lines `tidegate
//! status` prints from them ([`UplinkStatus::lines`]) and the `/health` warnings of a spent
//! budget ([`warnings`]).
//!
//! Read-only, like the rest of the listener: every figure is read from the counters the
//! forwarder and the live lane keep ([`UplinkCounters`]); the only thing computed here is
//! wording. Times in those counters are Unix milliseconds of the system clock (the uplink
//! publishes them so, the test clock's shift taken out); 0 means "none".

use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};
use serde::{Deserialize, Serialize};

use crate::calendar::format_duration;
use crate::telemetry::{get, ForwardCounters, UplinkCounters};

/// An upstream's uplink in [`super::UpstreamStatus`]. Present only when the upstream sets
/// a bandwidth, a budget, send windows or a live lane.
///
/// Field names are part of the interface (the status page and `tidegate status --json`
/// read them): add fields, do not rename them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub lanes: Lanes,
    /// `bandwidth` in bytes per second, shared by both lanes; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Whether the live lane sends now (the backlog is behind by more than `live_after`,
    /// or held by a window or the budget).
    pub live_active: bool,
    /// Urgent readings the live lane delivered since start.
    pub live_urgent_total: u64,
    /// Readings the live lane skipped (replaced by newer ones, or not sent while it failed
    /// or was over its share) since start. Never readings of the history.
    pub live_skipped_total: u64,
    /// `None` without a `budget`.
    pub budget: Option<BudgetStatus>,
    /// `None` without `send_windows`.
    pub window: Option<WindowStatus>,
    /// Why the backlog waits now ("waiting for window (opens in 3h12m)"); `None` while
    /// it may send.
    pub backlog_held: Option<String>,
}

/// The two lanes of an uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lanes {
    /// The ordered history from the cursor.
    pub backlog: LaneStatus,
    /// Each topic's newest reading while the backlog is behind; `None` without a live lane.
    pub live: Option<LaneStatus>,
}

/// One lane's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneStatus {
    /// Records the lane delivered since start.
    pub sent_total: u64,
    /// Bytes the lane's sink wrote to its sockets since start (what `bandwidth` limits).
    pub wire_bytes: u64,
    /// Bytes the lane's sink read from its sockets since start.
    pub wire_received_bytes: u64,
    /// Bytes written per second over the last history sample interval (5 s); `None` until
    /// two samples exist.
    pub rate_bytes_per_second: Option<f64>,
    /// How long ago the newest reading the lane delivered was ingested; `None` before the
    /// lane has delivered one.
    pub newest_delivered_age_ms: Option<u64>,
}

/// The data budget of the current period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    /// `budget`, bytes per period.
    pub limit: u64,
    /// Bytes used in this period, both lanes, sent and received.
    pub used: u64,
    /// `limit - used` (0 once spent).
    pub left: u64,
    /// Bytes of the period the backlog may use: `limit` minus `live_reserve`.
    pub backlog_limit: u64,
    /// When this period ends (and the budget is granted again), Unix ms.
    pub period_end_ms: u64,
    /// When the budget runs out at the rate used so far in the period, Unix ms; `None`
    /// when it lasts the period.
    pub exhaustion_ms: Option<u64>,
    /// The backlog's share is spent: the backlog waits for the next period.
    pub spent: bool,
}

/// The send windows' state now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStatus {
    /// Whether a send window is open.
    pub open: bool,
    /// When the state next changes, Unix ms; `None` when it does not within 8 days.
    pub next_change_ms: Option<u64>,
    /// For people: `"closed (opens in 3h12m)"`, `"open (closes in 45m)"`.
    pub text: String,
}

/// Bytes written per second by each lane over the last sample interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaneRates {
    pub backlog: Option<f64>,
    pub live: Option<f64>,
}

/// Whether the upstream of these counters has an uplink: a bandwidth, a budget, send
/// windows or a live lane. Without one, no uplink figure is shown for it.
pub fn configured(u: &UplinkCounters) -> bool {
    get(&u.bandwidth) > 0
        || get(&u.budget_limit) > 0
        || get(&u.windows_configured) == 1
        || u.live_lane().is_some()
}

/// `ms` if it is set (not 0).
fn set(ms: u64) -> Option<u64> {
    (ms != 0).then_some(ms)
}

impl UplinkStatus {
    /// Reads the uplink of `c` now (`now_ms` gives ages); `None` when it has none.
    pub fn read(c: &ForwardCounters, rates: LaneRates, now_ms: u64) -> Option<UplinkStatus> {
        let u = &c.uplink;
        if !configured(u) {
            return None;
        }
        let age = |newest: u64| set(newest).map(|t| now_ms.saturating_sub(t));
        let lane = |c: &ForwardCounters, rate: Option<f64>, newest: u64| LaneStatus {
            sent_total: get(&c.sent),
            wire_bytes: get(&c.wire_sent),
            wire_received_bytes: get(&c.wire_received),
            rate_bytes_per_second: rate,
            newest_delivered_age_ms: age(newest),
        };
        let budget = set(get(&u.budget_limit)).map(|limit| {
            let used = get(&u.budget_used);
            BudgetStatus {
                limit,
                used,
                left: limit.saturating_sub(used),
                backlog_limit: get(&u.budget_backlog_limit),
                period_end_ms: get(&u.budget_period_end_ms),
                exhaustion_ms: set(get(&u.budget_exhaustion_ms)),
                spent: get(&u.budget_spent) == 1,
            }
        });
        let window = (get(&u.windows_configured) == 1).then(|| {
            let open = get(&u.window_open) == 1;
            let next_change_ms = set(get(&u.window_change_ms));
            WindowStatus {
                open,
                next_change_ms,
                text: window_text(open, next_change_ms, now_ms),
            }
        });
        Some(UplinkStatus {
            lanes: Lanes {
                backlog: lane(c, rates.backlog, get(&u.backlog_newest_ms)),
                live: u
                    .live_lane()
                    .map(|live| lane(live, rates.live, get(&u.live_newest_ms))),
            },
            bandwidth: set(get(&u.bandwidth)),
            live_active: get(&u.live_active) == 1,
            live_urgent_total: get(&u.live_urgent_sent),
            live_skipped_total: get(&u.live_skipped),
            budget,
            window,
            backlog_held: u.backlog_held.lock().ok().and_then(|h| h.clone()),
        })
    }

    /// The lines `tidegate status` prints under the upstream (indented by two spaces),
    /// with dates in local time:
    ///
    /// ```text
    ///   lanes: backlog 52.1 KiB/s, newest delivered 3h12m ago; live 9.8 KiB/s, newest 2s ago (limit 64 KiB/s)
    ///   budget: 1.2 GiB of 2 GiB used, 0.8 GiB left, runs out ~2026-12-21 (at this period's rate)
    ///   window: closed (opens in 3h12m)
    ///   backlog waiting for window (opens in 3h12m)
    /// ```
    pub fn lines(&self, now_ms: u64) -> Vec<String> {
        self.lines_in(&Local, now_ms)
    }

    /// [`lines`](Self::lines), with dates in `tz`.
    pub fn lines_in<Tz: TimeZone>(&self, tz: &Tz, now_ms: u64) -> Vec<String>
    where
        Tz::Offset: std::fmt::Display,
    {
        let mut out = Vec::new();
        let delivered = |l: &LaneStatus, what: &str| match l.newest_delivered_age_ms {
            Some(ms) => format!("{what} {} ago", ago(ms)),
            None => "nothing delivered yet".to_owned(),
        };
        let b = &self.lanes.backlog;
        let mut lanes = format!(
            "  lanes: backlog {}, {}",
            rate(b.rate_bytes_per_second),
            delivered(b, "newest delivered")
        );
        if let Some(l) = &self.lanes.live {
            lanes.push_str(&format!(
                "; live {}{}, {}",
                rate(l.rate_bytes_per_second),
                if self.live_active { "" } else { " (idle)" },
                delivered(l, "newest")
            ));
            if self.live_urgent_total > 0 {
                lanes.push_str(&format!(", {} urgent", self.live_urgent_total));
            }
            if self.live_skipped_total > 0 {
                lanes.push_str(&format!(", {} skipped", self.live_skipped_total));
            }
        }
        if let Some(limit) = self.bandwidth {
            lanes.push_str(&format!(" (limit {}/s)", bytes(limit)));
        }
        out.push(lanes);
        if let Some(b) = &self.budget {
            let unit = Unit::of(b.limit);
            let mut line = format!(
                "  budget: {} of {} used, {} left, ",
                unit.show_near(b.used),
                bytes(b.limit),
                unit.show_near(b.left)
            );
            if b.spent {
                line.push_str(&format!(
                    "spent: backlog paused until {}",
                    local_time(tz, b.period_end_ms)
                ));
            } else {
                match b.exhaustion_ms {
                    Some(at) => line.push_str(&format!(
                        "runs out ~{} (at this period's rate)",
                        if at.saturating_sub(now_ms) < DAY_MS {
                            local_time(tz, at)
                        } else {
                            local_date(tz, at)
                        }
                    )),
                    None => line.push_str(&format!(
                        "lasts the period (next period {})",
                        local_time(tz, b.period_end_ms)
                    )),
                }
            }
            out.push(line);
        }
        if let Some(w) = &self.window {
            out.push(format!("  window: {}", w.text));
        }
        if let Some(h) = &self.backlog_held {
            out.push(format!("  backlog {h}"));
        }
        out
    }
}

const DAY_MS: u64 = 24 * 3600 * 1000;

/// The windows' state for people, from the counters: `"closed (opens in 3h12m)"`, `"open
/// (closes in 45m)"`, and when no change comes within 8 days `"open (always)"` /
/// `"closed (no window in the next 8 days)"`, the wording of
/// [`crate::calendar::SendWindows::describe`]. A change time already past (the state is
/// refreshed while a lane sends or waits) gives the bare state.
pub fn window_text(open: bool, next_change_ms: Option<u64>, now_ms: u64) -> String {
    let state = if open { "open" } else { "closed" };
    match next_change_ms {
        Some(at) if at > now_ms => format!(
            "{state} ({} in {})",
            if open { "closes" } else { "opens" },
            format_duration(Duration::from_millis(at - now_ms))
        ),
        Some(_) => state.to_owned(),
        None if open => "open (always)".to_owned(),
        None => "closed (no window in the next 8 days)".to_owned(),
    }
}

/// The `/health` warnings of `upstreams`: one per upstream whose backlog waits for the next
/// budget period, `"cloud: data budget spent: backlog paused until 2027-01-01 00:00
/// +01:00"`.
pub fn warnings<'a>(
    upstreams: impl IntoIterator<Item = (&'a str, &'a ForwardCounters)>,
) -> Vec<String> {
    warnings_in(&Local, upstreams)
}

/// [`warnings`], with times in `tz`.
pub fn warnings_in<'a, Tz: TimeZone>(
    tz: &Tz,
    upstreams: impl IntoIterator<Item = (&'a str, &'a ForwardCounters)>,
) -> Vec<String>
where
    Tz::Offset: std::fmt::Display,
{
    upstreams
        .into_iter()
        .filter(|(_, c)| get(&c.uplink.budget_spent) == 1)
        .map(|(name, c)| {
            format!(
                "{name}: data budget spent: backlog paused until {}",
                local_time(tz, get(&c.uplink.budget_period_end_ms))
            )
        })
        .collect()
}

fn at<Tz: TimeZone>(tz: &Tz, ms: u64) -> Option<DateTime<Tz>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?).map(|t| t.with_timezone(tz))
}

/// `2027-01-01 00:00 +01:00`.
fn local_time<Tz: TimeZone>(tz: &Tz, ms: u64) -> String
where
    Tz::Offset: std::fmt::Display,
{
    at(tz, ms).map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M %:z").to_string(),
    )
}

/// `2027-01-01`.
fn local_date<Tz: TimeZone>(tz: &Tz, ms: u64) -> String
where
    Tz::Offset: std::fmt::Display,
{
    at(tz, ms).map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d").to_string())
}

/// An age: `2s` under a minute, else as [`format_duration`] writes it (`3h12m`).
fn ago(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        format_duration(Duration::from_millis(ms))
    }
}

/// A rate of bytes: `52.1 KiB/s`; `-/s` when unknown (before two history samples).
fn rate(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{}/s", bytes(r.max(0.0).round() as u64)),
        None => "-/s".to_owned(),
    }
}

/// `n` bytes in its own binary unit: `512 B`, `52.1 KiB`, `64 KiB`.
fn bytes(n: u64) -> String {
    Unit::of(n).show(n)
}

/// A binary unit of bytes, so that the figures of one line share it (`0.8 GiB left` next
/// to `2 GiB`, not `819.2 MiB`).
#[derive(Debug, Clone, Copy)]
struct Unit(u32);

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

impl Unit {
    /// The largest unit `n` holds at least one of.
    fn of(n: u64) -> Unit {
        let mut i = 0;
        while i + 1 < UNITS.len() as u32 && n >= 1u64 << (10 * (i + 1)) {
            i += 1;
        }
        Unit(i)
    }

    /// `n` in this unit if it is at least a tenth of one (`0.8 GiB` beside `2 GiB`), else
    /// in its own (`22.1 KiB`, `0 B`), so that no figure reads as a bare 0.
    fn show_near(self, n: u64) -> String {
        if self.0 > 0 && n >= (1u64 << (10 * self.0)) / 10 {
            self.show(n)
        } else {
            bytes(n)
        }
    }

    /// `n` in this unit, to one decimal, without a trailing `.0`.
    fn show(self, n: u64) -> String {
        if self.0 == 0 {
            return format!("{n} B");
        }
        let v = n as f64 / (1u64 << (10 * self.0)) as f64;
        let text = format!("{v:.1}");
        let text = text.strip_suffix(".0").unwrap_or(&text);
        format!("{text} {}", UNITS[self.0 as usize])
    }
}

#[cfg(test)]
mod tests;

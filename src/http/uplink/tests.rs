//! Tests of the uplink status: its JSON and its wording, from hand-set counters.

use super::*;
use crate::telemetry::add;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

const KIB: u64 = 1024;
const GIB: u64 = 1024 * 1024 * 1024;
/// 2026-12-06 20:00:00 UTC.
const NOW: u64 = 1_796_587_200_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;

fn plus_one() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(3600).expect("offset")
}

/// An upstream with every uplink setting, part way through a drain: 64 KiB/s, a 2 GiB
/// budget 1.2 GiB used, windows closed for 3h12m, a live lane.
fn constrained() -> ForwardCounters {
    let c = ForwardCounters::default();
    add(&c.sent, 1200);
    add(&c.wire_sent, 500_000);
    add(&c.wire_received, 4_000);
    let u = &c.uplink;
    u.bandwidth.store(64 * KIB, Relaxed);
    u.budget_limit.store(2 * GIB, Relaxed);
    u.budget_used.store(GIB + GIB / 5, Relaxed);
    u.budget_backlog_limit.store(2 * GIB - GIB / 5, Relaxed);
    u.budget_period_end_ms.store(NOW + 25 * 24 * HOUR, Relaxed);
    u.budget_exhaustion_ms.store(NOW + 15 * 24 * HOUR, Relaxed);
    u.windows_configured.store(1, Relaxed);
    u.window_open.store(0, Relaxed);
    u.window_change_ms
        .store(NOW + 3 * HOUR + 12 * MINUTE, Relaxed);
    u.backlog_newest_ms
        .store(NOW - 3 * HOUR - 12 * MINUTE, Relaxed);
    u.live_newest_ms.store(NOW - 2_000, Relaxed);
    u.live_active.store(1, Relaxed);
    add(&u.live_urgent_sent, 3);
    *u.backlog_held.lock().expect("lock") = Some("waiting for window (opens in 3h12m)".into());
    let live = Arc::new(ForwardCounters::default());
    add(&live.sent, 40);
    add(&live.wire_sent, 9_000);
    add(&live.wire_received, 300);
    u.live.set(live).expect("set once");
    u.live_configured.store(1, Relaxed);
    c
}

const RATES: LaneRates = LaneRates {
    backlog: Some(52.1 * 1024.0),
    live: Some(9.8 * 1024.0),
};

#[test]
fn an_upstream_without_uplink_settings_has_no_uplink_object() {
    let c = ForwardCounters::default();
    add(&c.wire_sent, 100);
    assert!(!configured(&c.uplink));
    assert_eq!(UplinkStatus::read(&c, RATES, NOW), None);
    // Any one setting is enough.
    c.uplink.windows_configured.store(1, Relaxed);
    assert!(UplinkStatus::read(&c, RATES, NOW).is_some());
}

#[test]
fn a_live_lane_removed_by_a_reload_is_no_longer_shown_though_its_totals_are_kept() {
    let c = constrained();
    c.uplink.live_configured.store(0, Relaxed);
    let s = UplinkStatus::read(&c, RATES, NOW).expect("still configured: bandwidth");
    assert!(s.lanes.live.is_none());
    assert_eq!(
        c.uplink.live.get().map(|l| l.sent.load(Relaxed)),
        Some(40),
        "kept for when the live lane comes back"
    );
}

#[test]
fn the_json_carries_both_lanes_the_budget_the_window_and_the_backlogs_reason() {
    let c = constrained();
    let s = UplinkStatus::read(&c, RATES, NOW).expect("configured");
    let json = serde_json::to_value(&s).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!({
            "lanes": {
                "backlog": {
                    "sent_total": 1200,
                    "wire_bytes": 500_000,
                    "wire_received_bytes": 4_000,
                    "rate_bytes_per_second": 52.1 * 1024.0,
                    "newest_delivered_age_ms": 3 * HOUR + 12 * MINUTE,
                },
                "live": {
                    "sent_total": 40,
                    "wire_bytes": 9_000,
                    "wire_received_bytes": 300,
                    "rate_bytes_per_second": 9.8 * 1024.0,
                    "newest_delivered_age_ms": 2_000,
                },
            },
            "bandwidth": 64 * KIB,
            "live_active": true,
            "live_urgent_total": 3,
            "live_skipped_total": 0,
            "budget": {
                "limit": 2 * GIB,
                "used": GIB + GIB / 5,
                "left": 2 * GIB - GIB - GIB / 5,
                "backlog_limit": 2 * GIB - GIB / 5,
                "period_end_ms": NOW + 25 * 24 * HOUR,
                "exhaustion_ms": NOW + 15 * 24 * HOUR,
                "spent": false,
            },
            "window": {
                "open": false,
                "next_change_ms": NOW + 3 * HOUR + 12 * MINUTE,
                "text": "closed (opens in 3h12m)",
            },
            "backlog_held": "waiting for window (opens in 3h12m)",
        })
    );
    // It reads back as it was written (`tidegate status` parses it).
    let back: UplinkStatus = serde_json::from_value(json).expect("parses");
    assert_eq!(back, s);
}

#[test]
fn absent_parts_are_null_not_zero() {
    let c = ForwardCounters::default();
    c.uplink.bandwidth.store(64 * KIB, Relaxed);
    let s = UplinkStatus::read(&c, LaneRates::default(), NOW).expect("configured");
    let json = serde_json::to_value(&s).expect("serializes");
    assert!(json["lanes"]["live"].is_null(), "{json}");
    assert!(json["budget"].is_null(), "{json}");
    assert!(json["window"].is_null(), "{json}");
    assert!(json["backlog_held"].is_null(), "{json}");
    assert!(json["lanes"]["backlog"]["rate_bytes_per_second"].is_null());
    assert!(json["lanes"]["backlog"]["newest_delivered_age_ms"].is_null());
}

#[test]
fn status_prints_the_lanes_the_budget_and_why_the_backlog_waits() {
    let c = constrained();
    let s = UplinkStatus::read(&c, RATES, NOW).expect("configured");
    assert_eq!(
        s.lines_in(&plus_one(), NOW),
        vec![
            "  lanes: backlog 52.1 KiB/s, newest delivered 3h12m ago; live 9.8 KiB/s, newest 2s ago, 3 urgent (limit 64 KiB/s)",
            "  budget: 1.2 GiB of 2 GiB used, 0.8 GiB left, runs out ~2026-12-21 (at this period's rate)",
            "  window: closed (opens in 3h12m)",
            "  backlog waiting for window (opens in 3h12m)",
        ]
    );
}

#[test]
fn status_says_when_the_budget_is_spent_or_lasts_and_when_a_lane_is_idle_or_new() {
    let c = ForwardCounters::default();
    let u = &c.uplink;
    u.budget_limit.store(2 * GIB, Relaxed);
    u.budget_used.store(2 * GIB - GIB / 10, Relaxed);
    u.budget_backlog_limit.store(2 * GIB - GIB / 5, Relaxed);
    u.budget_spent.store(1, Relaxed);
    // 2027-01-01 00:00 at +01:00.
    let period_end = 1_798_758_000_000;
    u.budget_period_end_ms.store(period_end, Relaxed);
    u.live.set(Arc::default()).expect("set once");
    u.live_configured
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let s = UplinkStatus::read(&c, LaneRates::default(), NOW).expect("configured");
    assert_eq!(
        s.lines_in(&plus_one(), NOW),
        vec![
            "  lanes: backlog -/s, nothing delivered yet; live -/s (idle), nothing delivered yet",
            "  budget: 1.9 GiB of 2 GiB used, 0.1 GiB left, spent: backlog paused until 2027-01-01 00:00 +01:00",
        ]
    );
    assert_eq!(
        warnings_in(&plus_one(), [("cloud", &c)]),
        vec!["cloud: data budget spent: backlog paused until 2027-01-01 00:00 +01:00"]
    );

    // Not spent, and the rate so far lasts the period; a projection within a day has its
    // time.
    u.budget_spent.store(0, Relaxed);
    u.budget_used.store(GIB / 2, Relaxed);
    let s = UplinkStatus::read(&c, LaneRates::default(), NOW).expect("configured");
    assert_eq!(
        s.lines_in(&plus_one(), NOW)[1],
        "  budget: 0.5 GiB of 2 GiB used, 1.5 GiB left, lasts the period (next period 2027-01-01 00:00 +01:00)"
    );
    u.budget_exhaustion_ms.store(NOW + 5 * HOUR, Relaxed);
    let s = UplinkStatus::read(&c, LaneRates::default(), NOW).expect("configured");
    assert_eq!(
        s.lines_in(&plus_one(), NOW)[1],
        "  budget: 0.5 GiB of 2 GiB used, 1.5 GiB left, runs out ~2026-12-07 02:00 +01:00 (at this period's rate)"
    );
    assert!(warnings_in(&plus_one(), [("cloud", &c)]).is_empty());
}

#[test]
fn the_window_text_says_when_the_state_changes() {
    assert_eq!(
        window_text(false, Some(NOW + 3 * HOUR + 12 * MINUTE), NOW),
        "closed (opens in 3h12m)"
    );
    assert_eq!(
        window_text(true, Some(NOW + 45 * MINUTE), NOW),
        "open (closes in 45m)"
    );
    assert_eq!(window_text(true, None, NOW), "open (always)");
    assert_eq!(
        window_text(false, None, NOW),
        "closed (no window in the next 8 days)"
    );
    // A change already past: the bare state, not a negative time.
    assert_eq!(window_text(false, Some(NOW - 1), NOW), "closed");
}

#[test]
fn bytes_are_shown_in_binary_units_to_one_decimal() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(64 * KIB), "64 KiB");
    assert_eq!(bytes(53_350), "52.1 KiB");
    assert_eq!(bytes(3 * GIB / 2), "1.5 GiB");
    assert_eq!(Unit::of(2 * GIB).show_near(GIB * 4 / 5), "0.8 GiB");
    assert_eq!(Unit::of(2 * GIB).show_near(22_656), "22.1 KiB");
    assert_eq!(Unit::of(2 * GIB).show_near(0), "0 B");
    assert_eq!(rate(Some(9.8 * 1024.0)), "9.8 KiB/s");
    assert_eq!(ago(2_400), "2s");
    assert_eq!(ago(3 * HOUR + 12 * MINUTE), "3h12m");
}

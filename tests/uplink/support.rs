//! What the constrained-uplink tests of both upstream kinds share (issue 14's "Tests"): the
//! figures of the scenarios and the bounds, the gateway's config sections, the fleet
//! that builds a backlog and the one that keeps publishing fresh readings, an alarm panel
//! publishing urgent readings to the gateway, and the checks made on a live lane's
//! [`LiveTable`] and on the history, which read the same for Kafka and MQTT.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use firmware_sim::telemetry::now_ms;
use firmware_sim::{
    device_id, CancellationToken, FleetError, FleetReport, KafkaReading, LiveTable,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::common::link::{max_window_up_between, Link, WINDOW};
use crate::common::status::{backlog, poll, status_json, wait_for_log};
use crate::common::{http_get, Fleet, Gateway};

/// The name of the upstream under test.
pub const UPSTREAM: &str = "cloud";
/// Devices of every scenario.
pub const DEVICES: usize = 20;
/// Readings per device of the backlog built while the link is down: 20 × 1000 JSON
/// readings of about 230 B, some 4.6 MB.
pub const BACKLOG_READINGS: u64 = 1000;
/// Readings per second per device while the link is up.
pub const FRESH_RATE: f64 = 5.0;
/// `bandwidth` of the scenarios that limit it, in bytes per second.
pub const BANDWIDTH: u64 = 64 * 1024;
/// `live_after`: short, so that the backlog built in a few seconds is "behind".
pub const LIVE_AFTER: Duration = Duration::from_secs(5);
/// `live_interval`.
pub const LIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Issue bound 1: from link-up, every device's fresh reading is on the live lane within
/// 2 × `live_interval` + 2 s.
pub const FRESH_BOUND: Duration = Duration::from_secs(2 * 2 + 2);
/// Issue bound 4: an urgent reading is on the live lane within 1 s.
pub const URGENT_BOUND: Duration = Duration::from_secs(1);
/// The `urgent` filter of every scenario.
pub const URGENT_FILTER: &str = "turbines/+/alarm";
/// The device whose alarms the [`AlarmPanel`] publishes (not one of the fleet's).
pub const ALARM_DEVICE: &str = "alarm-01";
/// Alarms raised while the backlog drains.
pub const ALARMS: u64 = 5;
/// Longest wait for something the scenario needs to happen at all (a drain, a reading on
/// the live lane); the bounds are asserted on the figures, not on these waits.
pub const SETTLE: Duration = Duration::from_secs(60);

/// The daemon's environment for the send-window scenario: its local clock starts at
/// 21:59:45 UTC, [`WINDOW_OPENS_AFTER`] before `send_windows = ["22:00-06:00"]` opens.
pub const WINDOW_ENV: [(&str, &str); 2] = [
    ("TZ", "UTC"),
    ("TIDEGATE_TEST_CLOCK", "2026-12-06T21:59:45"),
];
/// The send window of the scenario.
pub const SEND_WINDOWS: &str = "send_windows = [\"22:00-06:00\"]\n";
/// How long after the daemon's start the window opens (its clock starts at 21:59:45).
pub const WINDOW_OPENS_AFTER: Duration = Duration::from_secs(15);

/// `[gateway]`, `[journal]` and `[mqtt]` of the gateway under test.
pub fn gateway_sections(mqtt_port: u16, dir: &Path) -> String {
    format!(
        "[gateway]\nid = \"gw-uplink\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n\
         [mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\nmax_packet = \"64KiB\"\n",
        dir.join("journal").display()
    )
}

/// Time allowed for the history to become complete once the backlog may drain.
pub const ARRIVAL: Duration = Duration::from_secs(90);

/// The gateway's config: its sections and the `[[upstream]]` [`UPSTREAM`] with the keys
/// of its kind (`kind`, where, the live topic), the lane keys of every scenario and
/// `uplink` (bandwidth, budget, windows).
pub fn config(mqtt_port: u16, dir: &Path, kind_keys: &str, uplink: &str) -> String {
    format!(
        "{}[[upstream]]\nname = \"{UPSTREAM}\"\n{kind_keys}{}{uplink}",
        gateway_sections(mqtt_port, dir),
        lane_keys()
    )
}

/// The keys of an `[[upstream]]` common to both kinds: batching, quick retries, and the
/// live lane's timing and urgent filter (the live topic itself is the kind's key).
pub fn lane_keys() -> String {
    format!(
        "max_batch = 500\nlinger = \"5ms\"\nrequest_timeout = \"5s\"\nbackoff_initial = \"100ms\"\n\
         backoff_max = \"1s\"\nlive_after = \"{}s\"\nlive_interval = \"{}s\"\nurgent = [\"{URGENT_FILTER}\"]\n",
        LIVE_AFTER.as_secs(),
        LIVE_INTERVAL.as_secs()
    )
}

/// Why the daemon says the backlog of [`UPSTREAM`] waits (`/api/status`, its uplink's
/// `backlog_held`), or `None`.
pub async fn backlog_held(gw: &Gateway) -> Option<String> {
    let (_, body) = http_get(gw.http_addr(), "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("/api/status is JSON");
    let upstream = status["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == UPSTREAM))
        .unwrap_or_else(|| panic!("no upstream {UPSTREAM} in {status}"));
    upstream["uplink"]["backlog_held"]
        .as_str()
        .map(str::to_owned)
}

/// The fleet's device ids.
pub fn devices() -> Vec<String> {
    (1..=DEVICES).map(device_id).collect()
}

/// Builds the backlog: every device sends `per_device` readings as fast as the gateway
/// acknowledges them, while nothing can reach the upstream; then waits until its oldest
/// reading is older than `live_after`, so that the upstream is "behind" from link-up on.
pub async fn build_backlog(gw: &Gateway, per_device: u64) -> FleetReport {
    let started = Instant::now();
    let report = Fleet::new(gw.mqtt_addr(), DEVICES)
        .count(per_device)
        .run()
        .await;
    assert!(
        report.all_acked(),
        "every backlog reading acknowledged: {} left",
        report.unacked()
    );
    let held = backlog(&status_json(gw), UPSTREAM);
    assert_eq!(
        held,
        report.acked(),
        "with the link down the whole run is the backlog"
    );
    tokio::time::sleep_until((started + LIVE_AFTER + Duration::from_secs(1)).into()).await;
    report
}

/// Every device sends [`FRESH_RATE`] readings a second until `stop`, reconnecting quickly
/// after a restart of the gateway.
pub fn keep_publishing(
    gw: &Gateway,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<FleetReport, FleetError>> {
    Fleet::new(gw.mqtt_addr(), DEVICES)
        .rate(FRESH_RATE)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .spawn_until(stop)
}

/// Stops a [`keep_publishing`] fleet and returns its report.
pub async fn stop_publishing(
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<FleetReport, FleetError>>,
) -> FleetReport {
    stop.cancel();
    let report = run.await.expect("fleet task").expect("fleet");
    assert!(
        report.all_acked(),
        "every fresh reading acknowledged: {} left",
        report.unacked()
    );
    report
}

/// Waits until every device has a reading stamped at or after `since_ms` on the live lane
/// `table` reads; returns when the last of them was first read (ms since the epoch).
pub async fn all_fresh_since(gw: &Gateway, table: impl Fn() -> LiveTable, since_ms: u64) -> u64 {
    let devices = devices();
    match poll(SETTLE, async || {
        table()
            .all_fresh_since(devices.iter().map(String::as_str), since_ms)
            .map_err(|stale| format!("no fresh live reading yet from {stale:?}"))
    })
    .await
    {
        Ok(at) => at,
        Err(last) => panic!(
            "waited {SETTLE:?} for every device on the live lane: {last}\ngateway log:\n{}",
            gw.log()
        ),
    }
}

/// Asserts issue bound 1: every device's fresh reading was on the live lane within
/// [`FRESH_BOUND`] of link-up (`up_ms`).
pub async fn assert_fresh_within_bound(gw: &Gateway, table: impl Fn() -> LiveTable, up_ms: u64) {
    let at = all_fresh_since(gw, &table, up_ms).await;
    let took = Duration::from_millis(at.saturating_sub(up_ms));
    assert!(
        took <= FRESH_BOUND,
        "every device had a fresh reading on the live lane {took:?} after link-up, over {FRESH_BOUND:?}\n{}",
        table().check(devices().iter().map(String::as_str), FRESH_BOUND, now_ms())
    );
    assert_eq!(
        table().unmarked(),
        0,
        "every live record carries tidegate-live: 1"
    );
}

/// A client of the gateway's MQTT listener that raises alarms: readings of
/// [`ALARM_DEVICE`] on `turbines/alarm-01/alarm`, which the `urgent` filter matches, in
/// firmware-sim's JSON so that the live table and the history checks can read them.
pub struct AlarmPanel {
    client: AsyncClient,
    events: EventLoop,
    boot: u64,
    raised: u64,
}

impl AlarmPanel {
    /// Connects to the gateway (MQTT 3.1.1) and waits for the CONNACK.
    pub async fn connect(gw: &Gateway) -> AlarmPanel {
        let mut o = MqttOptions::new("alarm-panel", "127.0.0.1", gw.mqtt_port());
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(o, 10);
        next_packet(&mut events, "the alarm panel's CONNACK", |p| {
            matches!(p, Packet::ConnAck(_))
        })
        .await;
        AlarmPanel {
            client,
            events,
            boot: now_ms(),
            raised: 0,
        }
    }

    /// Publishes the next alarm (QoS 1) and waits for its PUBACK; returns its counter and
    /// the time it was stamped and published at (ms since the epoch).
    pub async fn raise(&mut self) -> (u64, u64) {
        self.raised += 1;
        let ts = now_ms();
        let payload = format!(
            "{{\"device\":\"{ALARM_DEVICE}\",\"boot\":{},\"seq\":{},\"ts\":{ts},\"alarm\":\"overspeed\"}}",
            self.boot, self.raised
        );
        self.client
            .publish(
                format!("turbines/{ALARM_DEVICE}/alarm"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("queue the alarm");
        next_packet(&mut self.events, "the alarm's PUBACK", |p| {
            matches!(p, Packet::PubAck(_))
        })
        .await;
        (self.raised, ts)
    }
}

/// Polls `events` until a packet `wanted` accepts arrives (10 s at most).
async fn next_packet(events: &mut EventLoop, what: &str, wanted: impl Fn(&Packet) -> bool) {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) if wanted(&p) => return,
                Ok(_) => {}
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"));
}

/// Raises [`ALARMS`] alarms one after the other, each once the previous one is on the live
/// lane, and asserts issue bound 4 on each: on the live lane within [`URGENT_BOUND`] of its
/// publish. Returns how long each took.
pub async fn assert_alarms_go_live(
    gw: &Gateway,
    panel: &mut AlarmPanel,
    table: impl Fn() -> LiveTable,
) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..ALARMS {
        let (seq, ts) = panel.raise().await;
        let read_at = match poll(SETTLE, async || {
            let t = table();
            match t.newest_of(ALARM_DEVICE) {
                Some(r) if r.seq >= seq => t
                    .first_read_since(ALARM_DEVICE, ts)
                    .ok_or_else(|| "no read time".to_owned()),
                newest => Err(format!(
                    "alarm {seq} not on the live lane; newest {newest:?}"
                )),
            }
        })
        .await
        {
            Ok(at) => at,
            Err(last) => panic!("{last}\ngateway log:\n{}", gw.log()),
        };
        let newest = table().newest_of(ALARM_DEVICE).map(|r| r.seq);
        assert_eq!(
            newest,
            Some(seq),
            "alarm {seq} itself reached the live lane"
        );
        took.push(Duration::from_millis(read_at.saturating_sub(ts)));
    }
    assert!(
        took.iter().all(|t| *t <= URGENT_BOUND),
        "every alarm on the live lane within {URGENT_BOUND:?} of its publish: took {took:?}"
    );
    took
}

/// Asserts that the history holds the [`ALARMS`] alarms once each and in the order raised
/// (`records` in the order the upstream holds them: partition, then offset).
pub fn assert_alarms_in_history(records: &[KafkaReading]) {
    let mut sorted: Vec<&KafkaReading> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let seqs: Vec<u64> = sorted
        .iter()
        .filter_map(|r| firmware_sim::ReadingId::parse(&r.payload))
        .filter(|id| id.device == ALARM_DEVICE)
        .map(|id| id.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=ALARMS).collect::<Vec<_>>(),
        "the alarms reach the history once each, in order"
    );
}

/// Scenario 6 up to the opening of the window: starts the gateway with `kind_keys` and
/// [`SEND_WINDOWS`] under the test clock ([`WINDOW_ENV`]) and the fleet; every device's
/// readings must reach the live lane (`table`) while the history (`history_len`: readings
/// in it) stays empty, looked at until a second before the window opens at the earliest
/// (the daemon's clock starts after this function does). Returns once the window is open,
/// with the fleet stopped, for the check that the history drains.
pub async fn until_the_window_opens(
    kind_keys: &str,
    table: impl Fn() -> LiveTable,
    mut history_len: impl AsyncFnMut() -> u64,
) -> (Gateway, FleetReport) {
    let opens_at = Instant::now() + WINDOW_OPENS_AFTER;
    let gw = Gateway::start_fresh_with_env(&WINDOW_ENV, |mqtt, dir| {
        config(mqtt, dir, kind_keys, SEND_WINDOWS)
    });
    let started_ms = now_ms();
    let stop = CancellationToken::new();
    let fresh_run = keep_publishing(&gw, stop.clone());
    let live_at = all_fresh_since(&gw, &table, started_ms).await;
    let opens_ms = now_ms()
        + opens_at
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
    assert!(
        live_at < opens_ms,
        "every device on the live lane before the window opened ({} ms after it)\ngateway log:\n{}",
        live_at - opens_ms,
        gw.log()
    );
    let held_why = backlog_held(&gw).await;
    assert!(
        held_why
            .as_deref()
            .is_some_and(|h| h.starts_with("waiting for window")),
        "status says the backlog waits for the window: {held_why:?}"
    );
    let mut looks = 0;
    while Instant::now() + Duration::from_secs(1) < opens_at {
        let n = history_len().await;
        // A look that ended after the window could have opened proves nothing.
        if Instant::now() < opens_at {
            looks += 1;
            assert_eq!(
                n,
                0,
                "the backlog waits for the window: {n} readings in the history before it opened\ngateway log:\n{}",
                gw.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        looks > 0,
        "the history was looked at before the window opened"
    );
    let held = backlog(&status_json(&gw), UPSTREAM);
    assert!(held > 0, "readings wait in the journal for the window");
    eprintln!(
        "figures: every device on the live lane {} ms before the window opened; the history \
         empty at {looks} looks while {held} readings waited",
        opens_ms - live_at
    );
    tokio::time::sleep_until(opens_at.into()).await;
    (gw, stop_publishing(stop, fresh_run).await)
}

/// The `bandwidth` line of the outage scenario's config, which [`after_an_outage`]
/// raises by a reload.
pub fn limited() -> String {
    format!("bandwidth = \"{}KiB\"\n", BANDWIDTH / 1024)
}

/// What the outage scenario measured, for the test's output.
pub struct OutageFigures {
    /// Readings the fresh fleet sent from link-up on (its report).
    pub fresh_run: FleetReport,
    /// From link-up until every device was fresh on the live lane.
    pub fresh_after: Duration,
    /// From each alarm's publish until it was on the live lane.
    pub alarms: Vec<Duration>,
    /// The largest number of bytes through the link in a 5 s window while limited.
    pub max_window: u64,
    /// Readings still behind after the alarms.
    pub behind: u64,
}

impl std::fmt::Display for OutageFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "every device fresh {:?} after link-up (bound {FRESH_BOUND:?}); alarms live after {:?} \
             (bound {URGENT_BOUND:?}); largest 5 s window {} B (bound {} B); {} readings behind \
             after the alarms",
            self.fresh_after,
            self.alarms,
            self.max_window,
            window_bound(),
            self.behind
        )
    }
}

/// Issue bound 2: bytes over any [`WINDOW`] at most bandwidth × 5 s + burst (one
/// second's worth, the default).
pub fn window_bound() -> u64 {
    BANDWIDTH * WINDOW.as_secs() + BANDWIDTH
}

/// Scenarios 1, 4 and 2 after an outage, on a gateway whose config holds [`limited`] and
/// whose backlog was built with `link` down: the fleet goes on publishing and the link
/// comes up; every device must be fresh on the live lane (`table`) within
/// [`FRESH_BOUND`], then [`ALARMS`] alarms on it within [`URGENT_BOUND`] each while the
/// backlog is still behind. After two windows and more the bandwidth is raised by a reload,
/// and the link's log from link-up to then must stay within [`window_bound`]. Returns with
/// the fleet stopped and the limit raised, for the history checks (scenario 3).
pub async fn after_an_outage(
    gw: &Gateway,
    link: &Link,
    table: impl Fn() -> LiveTable,
) -> OutageFigures {
    let stop = CancellationToken::new();
    let fresh_run = keep_publishing(gw, stop.clone());
    let (up_at, up_ms) = (Instant::now(), now_ms());
    link.set_up(true);

    // 1. Every device fresh on the live lane soon after link-up.
    assert_fresh_within_bound(gw, &table, up_ms).await;
    let fresh_at = all_fresh_since(gw, &table, up_ms).await;

    // 4. Alarms go through the live lane at once while the backlog drains.
    let mut panel = AlarmPanel::connect(gw).await;
    let alarms = assert_alarms_go_live(gw, &mut panel, &table).await;
    let behind = backlog(&status_json(gw), UPSTREAM);
    assert!(
        behind as f64 > FRESH_RATE * DEVICES as f64 * LIVE_AFTER.as_secs_f64(),
        "the backlog was still draining (behind by more than live_after) when the alarms were raised: {behind} left"
    );

    // 2. The gateway's bytes through the link at 64 KiB/s, over two windows and more.
    tokio::time::sleep_until((up_at + 2 * WINDOW + Duration::from_secs(2)).into()).await;
    let raised_at = Instant::now();
    gw.reload(|c| c.replace(&limited(), "bandwidth = \"64MiB\"\n"));
    let max_window = max_window_up_between(link, up_at, raised_at);
    assert!(
        max_window <= window_bound(),
        "bytes through the link in a 5 s window at bandwidth = 64KiB: {max_window}, over {}\nper 100 ms: {:?}",
        window_bound(),
        link.up_meter().buckets()
    );
    wait_for_log(gw, &["Configuration reloaded."]).await;
    OutageFigures {
        fresh_run: stop_publishing(stop, fresh_run).await,
        fresh_after: Duration::from_millis(fresh_at.saturating_sub(up_ms)),
        alarms,
        max_window,
        behind,
    }
}

/// The data budget of scenario 5: the backlog pauses once 1 MiB of 2 MiB is used.
pub const BUDGET: &str = "budget = \"2MiB\"\nbudget_period = \"day\"\nlive_reserve = 0.5\n";

/// Scenario 5 on a gateway whose config holds [`BUDGET`] and whose backlog (`backlog_run`,
/// well over the backlog's share) was built with `link` down: the link comes up while the
/// fleet goes on publishing. Once the backlog's share is spent, the history
/// (`history_len`: readings in it) must not move while every device's readings still reach
/// the live lane (`table`); and the same after the daemon is restarted.
pub async fn spent_budget_holds_the_backlog(
    gw: &mut Gateway,
    link: &Link,
    backlog_run: &FleetReport,
    table: impl Fn() -> LiveTable,
    mut history_len: impl AsyncFnMut() -> u64,
) {
    let stop = CancellationToken::new();
    let fresh_run = keep_publishing(gw, stop.clone());
    link.set_up(true);
    wait_for_log(gw, &["the backlog's share is spent"]).await;
    // One live interval and more, so that what was sent before the pause has arrived.
    all_fresh_since(gw, &table, now_ms()).await;
    let delivered = history_len().await;
    assert!(
        delivered < backlog_run.acked(),
        "the budget stopped the backlog before it drained: {delivered} of {} delivered",
        backlog_run.acked()
    );
    // The live lane goes on: every device has a newer reading there, while the history
    // does not move.
    all_fresh_since(gw, &table, now_ms()).await;
    assert_eq!(
        history_len().await,
        delivered,
        "the history does not move while the budget is spent\ngateway log:\n{}",
        gw.log()
    );
    assert_held_by_budget(gw).await;

    // A restart keeps the budget spent.
    let exit = gw.terminate();
    assert!(exit.success(), "SIGTERM exits 0: {exit:?}");
    let restarted_ms = now_ms();
    gw.restart();
    wait_for_log(
        gw,
        &["carrying on with what this period used before the restart"],
    )
    .await;
    all_fresh_since(gw, &table, restarted_ms).await;
    all_fresh_since(gw, &table, now_ms()).await;
    assert_eq!(
        history_len().await,
        delivered,
        "the history does not move after a restart either\ngateway log:\n{}",
        gw.log()
    );
    assert_held_by_budget(gw).await;
    let waiting = backlog(&status_json(gw), UPSTREAM);
    assert!(waiting > 0, "readings wait in the journal");
    stop_publishing(stop, fresh_run).await;
    eprintln!(
        "figures: the budget held the history at {delivered} of {} backlog readings, before \
         and after a restart, while the live lane went on; {waiting} readings waiting",
        backlog_run.acked()
    );
}

/// Asserts that status says the backlog waits for the budget.
async fn assert_held_by_budget(gw: &Gateway) {
    let why = backlog_held(gw).await;
    assert!(
        why.as_deref()
            .is_some_and(|h| h.starts_with("waiting for budget")),
        "status says the backlog waits for the budget: {why:?}"
    );
}

//! Constrained uplinks end to end with a Kafka upstream (issue 14): simulated turbines →
//! the real `tidegate` → firmware-sim's link → real Tansu, all on loopback.
//!
//! The link is not shaped: the gateway's own limit is what is under test. It cuts the
//! uplink while a backlog builds, and logs every byte the gateway sends, which is what the
//! bandwidth bound is checked on. Tansu advertises the link's port, so the tests' readers
//! go through it too (their fetch requests are a few hundred bytes a second, counted
//! against the gateway).
//!
//! - after an outage at 64 KiB/s: every device fresh on the live topic (bound 1), the
//!   link's 5 s windows (bound 2), urgent alarms on the live topic (bound 4), then a
//!   raised limit drains a complete, ordered, exactly-once history (3);
//! - a spent data budget pauses the backlog while the live lane goes on, across a restart
//!   (5);
//! - a send window under the test clock holds the backlog until it opens (6).
//!
//! The shared figures, fleets and checks are in `tests/uplink/support.rs`.

mod common;
#[path = "uplink/support.rs"]
mod support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::fleet::assert_arrived;
use common::link::{tansu_behind_link, Link};
use common::Gateway;
use firmware_sim::telemetry::now_ms;
use firmware_sim::verify::{read_topic, StartAt, TopicReader, VerifyError};
use firmware_sim::{FleetReport, LiveTable};
use support::*;

/// The history topic.
const HISTORY: &str = "readings";
/// The live topic.
const LIVE: &str = "latest";
/// The keys of the Kafka upstream: through the link, one partition, a live topic.
fn kafka_keys(link: &Link) -> String {
    format!(
        "kind = \"kafka\"\nbrokers = [\"127.0.0.1:{}\"]\ntopic = \"{HISTORY}\"\npartitions = 1\n\
         live_topic = \"{LIVE}\"\n",
        link.port()
    )
}

/// The brokers a reader of the test gives: the link, which Tansu advertises.
fn brokers(link: &Link) -> Vec<String> {
    vec![format!("127.0.0.1:{}", link.port())]
}

/// The live topic read as the gateway writes it, into a [`LiveTable`] stamped with the
/// time each record was read: one long-polling reader per partition, from the moment the
/// gateway has created the topic. Stops when dropped.
struct LiveReader {
    table: Arc<Mutex<LiveTable>>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveReader {
    fn start(brokers: Vec<String>) -> LiveReader {
        let table = Arc::new(Mutex::new(LiveTable::new()));
        let shared = table.clone();
        let task = tokio::spawn(async move {
            let reader = loop {
                match TopicReader::connect(&brokers, LIVE, StartAt::Earliest).await {
                    Ok(r) => break r,
                    // Not created yet, or the link is down.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let mut partitions = tokio::task::JoinSet::new();
            for mut p in reader.split() {
                let table = shared.clone();
                partitions.spawn(async move {
                    loop {
                        let asked = Instant::now();
                        match p.poll(Duration::from_millis(500)).await {
                            Ok(records) => {
                                let at = now_ms();
                                {
                                    let mut t =
                                        table.lock().unwrap_or_else(PoisonError::into_inner);
                                    for r in &records {
                                        t.add(r, at);
                                    }
                                }
                                // A broker that answers an empty fetch at once is not
                                // asked again at once.
                                if records.is_empty() && asked.elapsed() < Duration::from_millis(50)
                                {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                });
            }
            while partitions.join_next().await.is_some() {}
        });
        LiveReader { table, task }
    }

    fn table(&self) -> LiveTable {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Readings in the history topic (none while the gateway has not created it).
async fn history_len(brokers: &[String]) -> u64 {
    match read_topic(brokers, HISTORY).await {
        Ok(records) => records.len() as u64,
        Err(VerifyError::TopicNotFound(_)) => 0,
        Err(e) => panic!("reading {HISTORY}: {e}"),
    }
}

/// Every reading of `report` is in the history, in order per device, exactly once.
async fn assert_history_exactly_once(brokers: &[String], report: &FleetReport, gw: &Gateway) {
    let v = assert_arrived(brokers, HISTORY, report, ARRIVAL, gw).await;
    assert_eq!(v.duplicates(), 0, "exactly once: {v}");
    assert_eq!(v.replays, 0, "exactly once: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_live_values_come_first_within_the_bandwidth_and_the_history_ends_complete()
{
    let tansu_dir = tempfile::tempdir().expect("temp dir");
    let (_tansu, link) = tansu_behind_link(tansu_dir.path(), |_| {}).await;
    link.set_up(false);
    let gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, &kafka_keys(&link), &limited()));
    let backlog_run = build_backlog(&gw, BACKLOG_READINGS).await;
    // Reads from the moment the link is up and the gateway has created the topic.
    let live = LiveReader::start(brokers(&link));
    let figures = after_an_outage(&gw, &link, || live.table()).await;

    // 3. With the limit raised the history drains: complete, in order, exactly once.
    assert_history_exactly_once(&brokers(&link), &backlog_run, &gw).await;
    assert_history_exactly_once(&brokers(&link), &figures.fresh_run, &gw).await;
    let history = read_topic(&brokers(&link), HISTORY)
        .await
        .expect("read the history");
    assert_alarms_in_history(&history);
    eprintln!("figures: {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_pauses_the_backlog_while_the_live_lane_goes_on_and_a_restart_keeps_it_spent(
) {
    let tansu_dir = tempfile::tempdir().expect("temp dir");
    let (_tansu, link) = tansu_behind_link(tansu_dir.path(), |_| {}).await;
    link.set_up(false);
    // Uncompressed, so that the backlog's 1 MiB is spent by half of a 2.3 MB backlog.
    let budget = format!("compression = \"none\"\n{BUDGET}");
    let mut gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, &kafka_keys(&link), &budget));
    let backlog_run = build_backlog(&gw, BACKLOG_READINGS / 2).await;
    let live = LiveReader::start(brokers(&link));
    let to = brokers(&link);
    spent_budget_holds_the_backlog(
        &mut gw,
        &link,
        &backlog_run,
        || live.table(),
        async || history_len(&to).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_waits_for_its_send_window_under_the_test_clock_while_the_live_lane_flows() {
    let tansu_dir = tempfile::tempdir().expect("temp dir");
    let (_tansu, link) = tansu_behind_link(tansu_dir.path(), |_| {}).await;
    let live = LiveReader::start(brokers(&link));
    let to = brokers(&link);
    let (gw, report) = until_the_window_opens(
        &kafka_keys(&link),
        || live.table(),
        async || history_len(&to).await,
    )
    .await;

    // After the window opens the backlog drains: everything, in order, exactly once.
    assert_history_exactly_once(&to, &report, &gw).await;
}

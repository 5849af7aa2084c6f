//! Constrained uplinks end to end with an MQTT upstream (issue 14): simulated turbines →
//! the real `tidegate` → firmware-sim's link → real Mosquitto, all on loopback.
//!
//! As in `uplink_kafka.rs`, the link is not shaped (the gateway's limit is under test): it
//! cuts the uplink while a backlog builds and logs every byte the gateway sends. The tests'
//! subscribers connect to Mosquitto directly, so the link carries the gateway's bytes
//! alone. Mosquitto is the test bed's: persistence on, no limit on in-flight messages and
//! a queue (`max_queued_messages`) far above any backlog here, so the broker drops
//! nothing it was given.
//!
//! - after an outage at 64 KiB/s: every device fresh under the live prefix (bound 1), the
//!   link's 5 s windows (bound 2), urgent alarms live (bound 4), then a raised limit drains
//!   a complete history in order per device (3; MQTT upstreams are at least once);
//! - a send window under the test clock holds the backlog until it opens (6).

mod common;
#[path = "uplink/support.rs"]
mod support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::link::{mosquitto_behind_link, Link};
use common::status::eventually;
use common::{Gateway, Mosquitto};
use firmware_sim::verify::MqttLiveWatcher;
use firmware_sim::{FleetReport, KafkaReading, VerifyReport};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use support::*;

/// Prefix of the history's topics on the upstream broker.
const HISTORY_PREFIX: &str = "site-7/";
/// `live_topic_prefix`.
const LIVE_PREFIX: &str = "live/";
/// The keys of the MQTT upstream: through the link, the history's and the live lane's
/// prefixes.
fn mqtt_keys(link: &Link) -> String {
    format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"{HISTORY_PREFIX}\"\n\
         live_topic_prefix = \"{LIVE_PREFIX}\"\n",
        link.port()
    )
}

/// The history as the upstream broker delivers it: an MQTT 5 subscriber of
/// `site-7/#` (QoS 1, a session that outlives a reconnect) keeping every publish, in
/// arrival order, as a verifier record (key: the reading's topic; user properties as
/// headers).
struct History {
    records: Arc<Mutex<Vec<KafkaReading>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    /// Subscribes, and returns once the broker confirmed the subscription.
    async fn subscribe(broker: &Mosquitto) -> History {
        let mut o = MqttOptions::new("uplink-history", "127.0.0.1", broker.port());
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(600);
        props.max_packet_size = Some(1 << 20);
        o.set_clean_start(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(Some(1 << 20))
            .set_connect_properties(props);
        let (client, mut events) = AsyncClient::new(o, 100);
        let records = Arc::new(Mutex::new(Vec::new()));
        let filter = format!("{HISTORY_PREFIX}#");
        let subscribed = async {
            loop {
                match events.poll().await.expect("history subscriber") {
                    Event::Incoming(Packet::ConnAck(_)) => client
                        .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        .expect("queue the subscription"),
                    Event::Incoming(Packet::SubAck(_)) => return,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("the history subscription within 10 s");
        let kept = records.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut all = kept.lock().unwrap_or_else(PoisonError::into_inner);
                        let offset = all.len() as i64;
                        all.push(as_record(&p, offset));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        History { records, task }
    }

    fn records(&self) -> Vec<KafkaReading> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn len(&self) -> u64 {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// Waits until every reading `report` saw acknowledged has arrived, and asserts that
    /// each device's came in order.
    async fn assert_complete(&self, report: &FleetReport, gw: &Gateway) -> VerifyReport {
        let v = eventually(
            gw,
            "every acknowledged reading upstream",
            ARRIVAL,
            async || {
                let v = firmware_sim::check(&self.records(), report);
                if v.is_complete() {
                    Ok(v)
                } else {
                    Err(format!("{v}"))
                }
            },
        )
        .await;
        assert!(v.is_ok(), "{v}\nproblems: {:?}", v.problems());
        v
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One publish of the history as the verifier's record.
fn as_record(p: &Publish, offset: i64) -> KafkaReading {
    let topic = String::from_utf8_lossy(&p.topic);
    KafkaReading {
        partition: 0,
        offset,
        key: topic
            .strip_prefix(HISTORY_PREFIX)
            .map(|t| t.as_bytes().to_vec()),
        payload: p.payload.to_vec(),
        headers: p
            .properties
            .iter()
            .flat_map(|props| props.user_properties.iter())
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect(),
        timestamp_ms: 0,
    }
}

/// The live lane under [`LIVE_PREFIX`], read from Mosquitto directly.
async fn watch_live(broker: &Mosquitto) -> MqttLiveWatcher {
    MqttLiveWatcher::connect(&format!("127.0.0.1:{}", broker.port()), LIVE_PREFIX)
        .await
        .expect("subscribe to the live lane")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_live_values_come_first_within_the_bandwidth_and_the_history_ends_complete()
{
    let (broker, link) = mosquitto_behind_link(|_| {}).await;
    let history = History::subscribe(&broker).await;
    let live = watch_live(&broker).await;
    link.set_up(false);
    let gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, &mqtt_keys(&link), &limited()));
    let backlog_run = build_backlog(&gw, BACKLOG_READINGS).await;

    let figures = after_an_outage(&gw, &link, || live.table()).await;

    // 3. With the limit raised the history drains: complete and in order per device.
    let a = history.assert_complete(&backlog_run, &gw).await;
    let b = history.assert_complete(&figures.fresh_run, &gw).await;
    assert_alarms_in_history(&history.records());
    eprintln!(
        "figures: {figures}; {} duplicates in the history (at least once)",
        a.duplicates() + b.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_pauses_the_backlog_while_the_live_lane_goes_on_and_a_restart_keeps_it_spent(
) {
    let (broker, link) = mosquitto_behind_link(|_| {}).await;
    let history = History::subscribe(&broker).await;
    let live = watch_live(&broker).await;
    link.set_up(false);
    let mut gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, &mqtt_keys(&link), BUDGET));
    // Some 3 MB of publishes, well over the backlog's 1 MiB.
    let backlog_run = build_backlog(&gw, BACKLOG_READINGS / 2).await;
    spent_budget_holds_the_backlog(
        &mut gw,
        &link,
        &backlog_run,
        || live.table(),
        async || history.len(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_waits_for_its_send_window_under_the_test_clock_while_the_live_lane_flows() {
    let (broker, link) = mosquitto_behind_link(|_| {}).await;
    let history = History::subscribe(&broker).await;
    let live = watch_live(&broker).await;
    let (gw, report) =
        until_the_window_opens(&mqtt_keys(&link), || live.table(), async || history.len()).await;

    // After the window opens the backlog drains: everything, in order per device.
    history.assert_complete(&report, &gw).await;
}

//! The live lane of an MQTT upstream read back ([`MqttLiveWatcher`]): an MQTT 5 subscriber
//! on `<live_topic_prefix>#` that feeds every publish, retained ones included, into a
//! [`LiveTable`], marked live when it carries the user property `tidegate-live=1`.
//!
//! MQTT 5 because the marker is a user property, which MQTT 3.1.1 cannot carry; a clean
//! start, because the retained messages (the newest reading per topic) are what a new
//! subscriber gets first.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

use crate::telemetry::now_ms;

use super::live::{LiveTable, LIVE_HEADER};
use super::VerifyError;

/// Subscribes to a live lane on an MQTT broker and keeps its [`LiveTable`] up to date until
/// dropped.
pub struct MqttLiveWatcher {
    table: Arc<Mutex<LiveTable>>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttLiveWatcher {
    /// Connects to `broker` (`host:port`, plain MQTT 5) and subscribes to `<prefix>#`;
    /// returns once the broker has acknowledged the subscription. The subscription is
    /// renewed after a reconnect.
    pub async fn connect(broker: &str, prefix: &str) -> Result<MqttLiveWatcher, VerifyError> {
        let (host, port) = broker
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| VerifyError::BadBroker(broker.to_owned()))?;
        // Unique per watcher, so two watchers on one broker do not take over each other.
        let client_id = format!("firmware-sim-live-{}-{}", std::process::id(), now_ms());
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(o, 64);
        let filter = format!("{prefix}#");
        let table = Arc::new(Mutex::new(LiveTable::new()));
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.try_subscribe(filter.clone(), QoS::AtLeastOnce)?;
                }
                Event::Incoming(Packet::SubAck(_)) => break,
                Event::Incoming(Packet::Publish(p)) => take(&table, &p),
                _ => {}
            }
        }
        let task = tokio::spawn(follow(client, events, filter, table.clone()));
        Ok(MqttLiveWatcher { table, task })
    }

    /// The table so far.
    pub fn table(&self) -> LiveTable {
        lock(&self.table).clone()
    }
}

impl Drop for MqttLiveWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(table: &Mutex<LiveTable>) -> MutexGuard<'_, LiveTable> {
    // A table is updated by one call that cannot panic halfway, so a poisoned lock is whole.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds one publish of the lane to the table.
fn take(table: &Mutex<LiveTable>, p: &Publish) {
    let marked = p.properties.as_ref().is_some_and(|props| {
        props
            .user_properties
            .iter()
            .any(|(k, v)| k == LIVE_HEADER && v == "1")
    });
    lock(table).add_payload(&p.payload, marked, now_ms());
}

/// Reads the lane until aborted, reconnecting (and subscribing again) after an error.
async fn follow(
    client: AsyncClient,
    mut events: EventLoop,
    filter: String,
    table: Arc<Mutex<LiveTable>>,
) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => take(&table, &p),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "live watcher: cannot subscribe again");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "live watcher: connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

//! The reference every phase compares with: Mosquitto with `persistence true` and a
//! disconnected persistent QoS 1 subscriber on `turbines/#`, so that it queues every reading
//! as tidegate keeps each one in its journal for an upstream (without a subscriber it would
//! acknowledge readings and discard them). It PUBACKs from memory and writes its database
//! only every `autosave_interval` and at a clean shutdown: what an acknowledgement means
//! differs, which the legend of each phase says.

use std::process::Command;
use std::time::Duration;

use firmware_sim::testbed::{mosquitto_bin, Mosquitto};

/// A fresh Mosquitto (the test bed's: persistence on, no queue or in-flight limit below
/// 1,000,000 queued) with the offline subscriber parked on it.
pub(crate) fn start_mosquitto(rt: &tokio::runtime::Runtime) -> Mosquitto {
    let broker = Mosquitto::start().expect("Mosquitto starts");
    rt.block_on(park_offline_subscriber(broker.port()));
    broker
}

/// Client id of the offline subscriber on Mosquitto.
const OFFLINE_SUBSCRIBER: &str = "bench-offline-upstream";

/// Subscribes a persistent-session client to every turbine topic at QoS 1 on the Mosquitto
/// at `port`, then disconnects it. Mosquitto then queues each reading for it (in memory,
/// saved with the rest of its state at autosave and shutdown), as tidegate keeps each
/// reading in its journal for an upstream. Without a subscriber Mosquitto would acknowledge
/// a publish and drop it: nothing stored, nothing to compare.
async fn park_offline_subscriber(port: u16) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut o = MqttOptions::new(OFFLINE_SUBSCRIBER, "127.0.0.1", port);
    o.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .subscribe("turbines/#", QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let run = async {
        let mut subscribed = false;
        loop {
            match events.poll().await.expect("offline subscriber connects") {
                Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    client.disconnect().await.expect("queue DISCONNECT");
                }
                Event::Outgoing(Outgoing::Disconnect) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("offline subscriber subscribed and disconnected within 10 s");
}

/// `mosquitto version 2.0.11` → `2.0.11`; empty if it cannot be told.
pub(crate) fn mosquitto_version() -> String {
    let Ok(bin) = mosquitto_bin() else {
        return String::new();
    };
    // `mosquitto -h` prints the version and usage, and exits non-zero.
    let out = Command::new(bin).arg("-h").output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("mosquitto version "))
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

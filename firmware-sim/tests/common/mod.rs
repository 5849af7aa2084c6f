//! What the tests that run a fleet against the test bed's Mosquitto share: the fleet's
//! options, one test per MQTT version, and a subscriber to every turbine topic that says
//! what the broker passed on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use firmware_sim::fleet::{FleetOptions, Protocol};
use firmware_sim::{topic_for, CancellationToken, ReadingId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A fleet of `protocol` against `broker` that waits up to 20 s for its last PUBACKs.
pub fn options(broker: String, protocol: Protocol) -> FleetOptions {
    let mut o = FleetOptions::default();
    o.broker = broker;
    o.protocol = protocol;
    o.drain_timeout = Duration::from_secs(20);
    o
}

/// Two tests running `$check(protocol)`, one per MQTT version: `$v4` for 3.1.1 and `$v5`
/// for 5.
macro_rules! test_both_versions {
    ($check:ident, $v4:ident, $v5:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v4() {
            $check(firmware_sim::fleet::Protocol::V4).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v5() {
            $check(firmware_sim::fleet::Protocol::V5).await;
        }
    };
}

/// What a subscriber to every turbine topic received.
#[derive(Debug, Default)]
pub struct Seen {
    /// Copies of each (device, boot, counter).
    pub copies: BTreeMap<(String, u64, u64), u64>,
    /// Payloads that are not readings.
    pub garbage: u64,
}

impl Seen {
    /// Payloads received, readings (every copy) and garbage.
    pub fn messages(&self) -> u64 {
        self.copies.values().sum::<u64>() + self.garbage
    }

    /// The counters received per device, all boots together.
    #[allow(dead_code)] // Not every test file reads it.
    pub fn counters(&self) -> BTreeMap<String, BTreeSet<u64>> {
        let mut by_device: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (device, _, seq) in self.copies.keys() {
            by_device.entry(device.clone()).or_default().insert(*seq);
        }
        by_device
    }
}

/// When [`Subscriber::wait_for`] is satisfied: at that many messages in all, or at that many
/// distinct readings (when re-sends make the number of copies unknowable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Messages,
    #[allow(dead_code)] // Not every test file waits for distinct readings.
    Distinct,
}

/// A subscriber to `turbines/+/telemetry` at QoS 1, running in its own task.
pub struct Subscriber {
    want: watch::Sender<u64>,
    stop: CancellationToken,
    task: JoinHandle<Seen>,
}

impl Subscriber {
    /// Subscribes as `client_id` and returns once the broker has acknowledged the
    /// subscription, so nothing published afterwards is missed.
    pub async fn start(broker: &str, client_id: &str, until: Until) -> Subscriber {
        let (host, port) = broker.rsplit_once(':').expect("host:port");
        let mut o = MqttOptions::new(client_id, host, port.parse().expect("port"));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(o, 100);
        client
            .subscribe("turbines/+/telemetry", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (want, want_rx) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let task = tokio::spawn(receive(
            client,
            eventloop,
            ready_tx,
            want_rx,
            until,
            stop.clone(),
        ));
        ready_rx.await.expect("subscribed");
        Subscriber { want, stop, task }
    }

    /// Waits until `want` messages (or distinct readings) have arrived, at most `timeout`,
    /// and returns what arrived by then.
    pub async fn wait_for(self, want: u64, timeout: Duration) -> Seen {
        self.want.send(want).expect("subscriber alive");
        let mut task = self.task;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(seen) => seen.expect("subscriber task"),
            Err(_) => {
                // Stop waiting; the assertions on what arrived say what is missing.
                self.stop.cancel();
                task.await.expect("subscriber task")
            }
        }
    }
}

async fn receive(
    _client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    ready: tokio::sync::oneshot::Sender<()>,
    mut want: watch::Receiver<u64>,
    until: Until,
    stop: CancellationToken,
) -> Seen {
    let mut ready = Some(ready);
    let mut seen = Seen::default();
    loop {
        let w = *want.borrow();
        let got = match until {
            Until::Messages => seen.messages(),
            Until::Distinct => seen.copies.len() as u64,
        };
        if w > 0 && got >= w {
            break;
        }
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            changed = want.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            ev = eventloop.poll() => ev,
        };
        match ev.expect("subscriber connection") {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Event::Incoming(Packet::Publish(p)) => match ReadingId::parse(&p.payload) {
                Some(id) => {
                    assert_eq!(p.topic, topic_for(&id.device));
                    *seen.copies.entry((id.device, id.boot, id.seq)).or_default() += 1;
                }
                None => seen.garbage += 1,
            },
            _ => {}
        }
    }
    seen
}

//! One device's MQTT connection over rumqttc, v3.1.1 or v5, behind one small interface so
//! the driver (and its PUBACK accounting) is written once.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::options::{FleetOptions, Qos};
use crate::telemetry::parse_seq;

/// What the driver needs to know about an event-loop event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// CONNACK received; `receive_max` is the broker's MQTT 5 Receive Maximum, if sent.
    ConnAck {
        session_present: bool,
        receive_max: Option<u16>,
    },
    /// A PUBLISH with this packet id (0 for QoS 0) was written.
    PublishWritten(u16),
    /// A publish was parked until this packet id is acknowledged.
    AwaitAck(u16),
    /// PUBACK for this packet id.
    PubAck(u16),
    /// Our DISCONNECT was written.
    DisconnectWritten,
    /// Anything else.
    Other,
}

/// A connection error, flattened.
#[derive(Debug, Clone)]
pub(crate) struct LinkError {
    pub message: String,
    /// MQTT 5: the broker answered a PUBLISH with a failure reason code (e.g. 0x97, quota
    /// exceeded), so the reading was *not* accepted.
    pub rejected: bool,
}

/// What rumqttc had queued for re-sending when the connection dropped, after
/// [`Link::rewrite_pending`].
#[derive(Debug, Default)]
pub(crate) struct Requeued {
    /// Highest counter among the queued publishes.
    pub max_seq: Option<u64>,
    /// A DISCONNECT was queued: the device was closing anyway.
    pub disconnect: bool,
    /// Written publishes left in `pending` for re-sending under their own packet ids, in
    /// queue (= counter) order: (packet id, counter).
    pub kept: Vec<(u16, u64)>,
    /// The publish rumqttc holds on a packet-id collision: (packet id, counter).
    pub parked: Option<(u16, u64)>,
}

/// The operations the driver performs on a rumqttc event loop.
pub(crate) trait Link: Send {
    fn poll(&mut self) -> impl Future<Output = Result<LinkEvent, LinkError>> + Send;
    /// Length of the event loop's `pending` queue.
    fn pending_len(&self) -> usize;
    /// After a connection loss: keeps the written publishes in `pending` (DUP set, sorted by
    /// counter) if `keep_written`, removes everything else (the others are re-fed by the
    /// driver, in counter order), and reports what was there.
    fn rewrite_pending(&mut self, keep_written: bool) -> Requeued;
    /// Appends a QoS 1 publish to `pending`; rumqttc assigns it a fresh packet id.
    fn push_resend(&mut self, topic: &str, payload: Bytes, dup: bool);
    /// Whether rumqttc has no publish parked on a packet-id collision.
    fn collision_clear(&self) -> bool;
    /// QoS 1 publishes rumqttc has in flight.
    fn inflight(&self) -> usize;
    /// Empties rumqttc's buffer of not-yet-returned events and returns the packet ids of the
    /// PUBACKs among them. Called after a connection error: rumqttc keeps that buffer across
    /// reconnects, so without this a PUBACK processed just before the error would surface
    /// after the reconnect (and be taken for one of the re-sends), and a PUBLISH that was
    /// never flushed would be reported as written.
    fn drain_buffered_acks(&mut self) -> Vec<u16>;
    /// Events rumqttc has buffered and not yet returned.
    fn buffered_events(&self) -> usize;
    /// Drops the network connection without DISCONNECT (a flapping link); in-flight
    /// publishes move to `pending`, as after a network error.
    fn drop_connection(&mut self);
}

/// What one device's connection is made from, either protocol version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkSettings<'a> {
    pub client_id: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Room for the largest payload the device sends.
    pub max_packet_size: usize,
    /// Session, keep-alive, window (the in-flight limit and the request channel's capacity),
    /// credentials and TLS (whose config every device shares).
    pub fleet: &'a FleetOptions,
}

/// Sets the credentials and the TLS transport of `$s` on `$o`, an `MqttOptions` of either
/// protocol version (the two have the same setters but no common trait).
macro_rules! set_credentials_and_tls {
    ($o:ident, $s:ident) => {
        if let Some((u, p)) = &$s.fleet.credentials {
            $o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &$s.fleet.tls {
            $o.set_transport(tls.transport());
        }
    };
}

/// The shared part of [`Link::rewrite_pending`]: `items` are rumqttc's pending requests
/// reduced to (packet id, counter) for publishes and `None` for a DISCONNECT (other requests
/// are dropped). Returns the report and the indices of the publishes to keep, in counter order.
fn plan_requeue(
    items: &[Option<(u16, Option<u64>)>],
    keep_written: bool,
) -> (Requeued, Vec<usize>) {
    let mut r = Requeued::default();
    let mut keep = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match *item {
            None => r.disconnect = true,
            Some((pkid, seq)) => {
                r.max_seq = r.max_seq.max(seq);
                if let (true, true, Some(seq)) = (keep_written, pkid != 0, seq) {
                    keep.push((seq, i, pkid));
                }
            }
        }
    }
    keep.sort_unstable();
    r.kept = keep.iter().map(|&(seq, _, pkid)| (pkid, seq)).collect();
    (r, keep.into_iter().map(|(_, i, _)| i).collect())
}

/// The MQTT client handle of either protocol version.
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Hands a publish to the event loop; `false` if the client is closed.
    pub(crate) async fn publish(&self, topic: &str, qos: Qos, payload: Bytes) -> bool {
        match self {
            Client::V4(c) => {
                let q = match qos {
                    Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                    Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                };
                c.publish_bytes(topic, q, false, payload).await.is_ok()
            }
            Client::V5(c) => {
                let q = match qos {
                    Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                };
                c.publish_bytes(topic, q, false, payload).await.is_ok()
            }
        }
    }

    /// Asks the event loop to write DISCONNECT.
    pub(crate) async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.is_ok(),
            Client::V5(c) => c.disconnect().await.is_ok(),
        };
    }
}

/// The [`Link`] methods whose code is the same for both protocol versions: rumqttc's v4 and
/// v5 event loops have the same fields (`pending`, `state.collision`, `state.events`) but no
/// common trait. `Request`, `Event`, `Packet` and `Outgoing` are the version's own types, in
/// scope where the macro is used; `$disconnect` is the pattern of its DISCONNECT request,
/// `$receive_max` reads the Receive Maximum off a CONNACK and `$rejected` tells whether a
/// connection error is the broker refusing a publish.
macro_rules! shared_link_methods {
    ($disconnect:pat, $receive_max:expr, $rejected:expr) => {
        async fn poll(&mut self) -> Result<LinkEvent, LinkError> {
            match self.0.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(c))) => Ok(LinkEvent::ConnAck {
                    session_present: c.session_present,
                    receive_max: $receive_max(c),
                }),
                Ok(Event::Incoming(Packet::PubAck(a))) => Ok(LinkEvent::PubAck(a.pkid)),
                Ok(Event::Outgoing(Outgoing::Publish(p))) => Ok(LinkEvent::PublishWritten(p)),
                Ok(Event::Outgoing(Outgoing::AwaitAck(p))) => Ok(LinkEvent::AwaitAck(p)),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => Ok(LinkEvent::DisconnectWritten),
                Ok(_) => Ok(LinkEvent::Other),
                Err(e) => Err(LinkError {
                    rejected: $rejected(&e),
                    message: e.to_string(),
                }),
            }
        }

        fn pending_len(&self) -> usize {
            self.0.pending.len()
        }

        fn rewrite_pending(&mut self, keep_written: bool) -> Requeued {
            let requests: Vec<Request> = self.0.pending.drain(..).collect();
            let items: Vec<Option<(u16, Option<u64>)>> = requests
                .iter()
                .map(|r| match r {
                    Request::Publish(p) => Some((p.pkid, parse_seq(&p.payload))),
                    $disconnect => None,
                    _ => Some((0, None)),
                })
                .collect();
            let (mut r, keep) = plan_requeue(&items, keep_written);
            let mut slots: Vec<Option<Request>> = requests.into_iter().map(Some).collect();
            for i in keep {
                if let Some(Request::Publish(mut p)) = slots[i].take() {
                    p.dup = true;
                    self.0.pending.push_back(Request::Publish(p));
                }
            }
            r.parked = self
                .0
                .state
                .collision
                .as_ref()
                .and_then(|p| Some((p.pkid, parse_seq(&p.payload)?)));
            r
        }

        fn collision_clear(&self) -> bool {
            self.0.state.collision.is_none()
        }

        fn inflight(&self) -> usize {
            usize::from(self.0.state.inflight())
        }

        fn buffered_events(&self) -> usize {
            self.0.state.events.len()
        }

        fn drop_connection(&mut self) {
            self.0.clean();
        }

        fn drain_buffered_acks(&mut self) -> Vec<u16> {
            self.0
                .state
                .events
                .drain(..)
                .filter_map(|e| match e {
                    Event::Incoming(Packet::PubAck(a)) => Some(a.pkid),
                    _ => None,
                })
                .collect()
        }
    };
}

pub(crate) mod v4 {
    use super::*;
    use rumqttc::{
        AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet,
        Publish, QoS, Request,
    };

    pub(crate) struct V4Link(pub EventLoop);

    pub(crate) fn connect(s: &LinkSettings) -> (AsyncClient, V4Link) {
        let f = s.fleet;
        let mut o = MqttOptions::new(s.client_id, s.host, s.port);
        o.set_clean_session(f.clean_session)
            .set_keep_alive(f.keep_alive)
            .set_inflight(f.window)
            .set_max_packet_size(s.max_packet_size, s.max_packet_size);
        set_credentials_and_tls!(o, s);
        let (client, eventloop) = AsyncClient::new(o, usize::from(f.window));
        (client, V4Link(eventloop))
    }

    impl Link for V4Link {
        shared_link_methods!(
            Request::Disconnect(_),
            |_: ConnAck| None,
            |_: &ConnectionError| false
        );

        fn push_resend(&mut self, topic: &str, payload: Bytes, dup: bool) {
            self.0.pending.push_back(Request::Publish(Publish {
                dup,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.to_owned(),
                pkid: 0,
                payload,
            }));
        }
    }
}

pub(crate) mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectProperties, Packet, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{
        AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
    };
    use rumqttc::Outgoing;

    pub(crate) struct V5Link(pub EventLoop);

    /// Session expiry asked for with persistent sessions: MQTT 5 ends a session at
    /// disconnect unless the client asks the broker to keep it.
    const SESSION_EXPIRY_S: u32 = 3600;

    pub(crate) fn connect(s: &LinkSettings) -> (AsyncClient, V5Link) {
        let f = s.fleet;
        let mut o = MqttOptions::new(s.client_id, s.host, s.port);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = (!f.clean_session).then_some(SESSION_EXPIRY_S);
        props.max_packet_size = u32::try_from(s.max_packet_size).ok();
        o.set_clean_start(f.clean_session)
            .set_keep_alive(f.keep_alive.max(Duration::from_secs(5)))
            .set_connect_properties(props)
            .set_outgoing_inflight_upper_limit(f.window);
        set_credentials_and_tls!(o, s);
        let (client, eventloop) = AsyncClient::new(o, usize::from(f.window));
        (client, V5Link(eventloop))
    }

    impl Link for V5Link {
        shared_link_methods!(
            Request::Disconnect,
            |c: ConnAck| c.properties.and_then(|p| p.receive_max),
            |e: &ConnectionError| matches!(
                e,
                ConnectionError::MqttState(StateError::PubAckFail { .. })
            )
        );

        fn push_resend(&mut self, topic: &str, payload: Bytes, dup: bool) {
            let mut p = Publish::new(topic, QoS::AtLeastOnce, payload, None);
            p.dup = dup;
            self.0.pending.push_back(Request::Publish(p));
        }
    }
}

//! One MQTT client connection, MQTT 3.1.1 or 5, as both directions of the bridge use it;
//! shared by the MQTT sink and the subscriber source, and knowing neither.
//!
//! The upstream sink (`crate::sinks::mqtt`) and the subscriber
//! (`crate::ingest::mqtt_subscribe`) differ in what they do with a connection, not in how
//! they open one: broker URL, client id, credentials, TLS, keep-alive and session are
//! described once by an [`Endpoint`], and [`Endpoint::open`] turns it into a fresh rumqttc
//! client and event loop of the configured protocol version, hidden behind one
//! [`Requests`] / [`EventLoop`] pair so that neither user matches on the version.
//!
//! # The one rule this module keeps
//!
//! **A connection is never reused after an error.** rumqttc's event loop reconnects by
//! itself when polled again after a failure, and then resends what it still holds (pending
//! publishes, queued acknowledgements) under packet ids of the *old* connection. For the
//! sink that would race the forwarder's own resend from its cursor (and could reorder); for
//! the subscriber a queued PUBACK could acknowledge a *different* message on the new
//! connection. So [`EventLoop::poll`] reports the first error and the caller drops the
//! pair; the next attempt opens a new one with empty state.
//!
//! # Beside the connection
//!
//! [`keys`] checks the client keys both sections share ([`crate::config::MqttClientConfig`])
//! and builds an [`Endpoint`] from them; [`topics`] maps reading topics to upstream topics
//! and holds the topic-filter logic of the bridge's loop rule.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5b;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{QoS as QoS4, TlsConfiguration, Transport};

pub use crate::config::secret::{PasswordError, PasswordSource};
use crate::tls::SYSTEM_CA_BUNDLES;

pub mod keys;
pub mod topics;
mod url;

pub use url::{BrokerUrl, BrokerUrlError, UrlProblem};

/// User property (MQTT 5) carrying the gateway id, as the Kafka header of the same name.
pub const PROP_GATEWAY: &str = "tidegate-gateway";
/// User property (MQTT 5) carrying the journal sequence number, decimal.
pub const PROP_SEQ: &str = "tidegate-seq";
/// User property (MQTT 5) `1` on a live-lane publish, as the Kafka header of the same name.
pub const PROP_LIVE: &str = "tidegate-live";

/// The MQTT 5 user properties of a sink publish: gateway, sequence and, on the live lane,
/// the live marker. Also what the sink's wire-size count is computed from.
pub fn user_properties(gateway: &str, seq: u64, live: bool) -> Vec<(String, String)> {
    let mut props = vec![
        (PROP_GATEWAY.to_owned(), gateway.to_owned()),
        (PROP_SEQ.to_owned(), seq.to_string()),
    ];
    if live {
        props.push((PROP_LIVE.to_owned(), "1".to_owned()));
    }
    props
}

/// Shortest keep-alive rumqttc accepts for both protocol versions (its MQTT 5 client
/// panics below 5 s, and cannot turn keep-alive off).
pub const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Everything needed to open one client connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: BrokerUrl,
    /// 4 (MQTT 3.1.1) or 5.
    pub protocol: u8,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<PasswordSource>,
    /// PEM CA file for `mqtts://`; the system's bundle when `None`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub keep_alive: Duration,
    /// `false`: a persistent session (the broker keeps subscriptions and queued messages
    /// while we are away).
    pub clean_session: bool,
    /// Publishes (sink) or deliveries (subscriber, MQTT 5 receive maximum) in flight.
    pub max_inflight: u16,
    /// Largest packet we accept or send.
    pub max_packet: usize,
    /// Time allowed for TCP + TLS + CONNECT/CONNACK.
    pub connect_timeout: Duration,
}

/// Why a connection could not even be attempted: a problem with local files or the
/// environment, which an operator must fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("cannot read {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("mqtts:// without ca_file, and no system CA bundle found (looked in {}); set ca_file", SYSTEM_CA_BUNDLES.join(", "))]
    NoSystemCa,
}

impl Endpoint {
    fn password(&self) -> Result<Option<String>, EndpointError> {
        Ok(self
            .password
            .as_ref()
            .map(PasswordSource::read)
            .transpose()?)
    }

    fn transport(&self) -> Result<Transport, EndpointError> {
        if !self.url.tls {
            return Ok(Transport::Tcp);
        }
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| EndpointError::File {
                what,
                path: path.clone(),
                source,
            })
        };
        let ca = match &self.ca_file {
            Some(p) => read("ca_file", p)?,
            // rumqttc parses the PEM itself.
            None => crate::tls::system_ca_bundle().ok_or(EndpointError::NoSystemCa)?,
        };
        let client_auth = match &self.client_cert {
            Some((cert, key)) => Some((read("client_cert", cert)?, read("client_key", key)?)),
            None => None,
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }))
    }

    /// A fresh client and event loop (no I/O yet: the first [`EventLoop::poll`] connects).
    /// `requests` bounds the request channel; it must hold every request the caller may
    /// queue while the loop is not being polled.
    pub fn open(&self, requests: usize) -> Result<(Requests, EventLoop), EndpointError> {
        let password = self.password()?;
        let transport = self.transport()?;
        let (host, port) = (self.url.host.clone(), self.url.port);
        let timeout_secs = self.connect_timeout.as_secs().max(1);
        // rumqttc asserts a keep-alive of at least 5 s (MQTT 5) or 1 s (3.1.1); validation
        // asks for 5 s, and this keeps a hand-built Endpoint from panicking.
        let keep_alive = self.keep_alive.max(MIN_KEEP_ALIVE);
        let max_inflight = self.max_inflight.max(1);
        if self.protocol == 5 {
            let mut o = rumqttc::v5::MqttOptions::new(self.client_id.clone(), host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(self.clean_session || self.client_id.is_empty())
                .set_manual_acks(true)
                .set_transport(transport)
                .set_connection_timeout(timeout_secs)
                .set_max_packet_size(Some(u32::try_from(self.max_packet).unwrap_or(u32::MAX)))
                .set_receive_maximum(Some(max_inflight))
                .set_outgoing_inflight_upper_limit(max_inflight);
            if !self.clean_session {
                // MQTT 5 ends a session when the connection closes unless told otherwise:
                // keep it as long as the broker allows.
                o.set_connect_properties(v5b::ConnectProperties {
                    session_expiry_interval: Some(u32::MAX),
                    receive_maximum: Some(max_inflight),
                    max_packet_size: Some(u32::try_from(self.max_packet).unwrap_or(u32::MAX)),
                    ..v5b::ConnectProperties::new()
                });
            }
            if let (Some(u), p) = (&self.username, password) {
                o.set_credentials(u.clone(), p.unwrap_or_default());
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(o, requests);
            Ok((Requests::V5(client), EventLoop::V5(Box::new(events))))
        } else {
            let mut o = rumqttc::MqttOptions::new(self.client_id.clone(), host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(self.clean_session || self.client_id.is_empty())
                .set_manual_acks(true)
                .set_transport(transport)
                .set_inflight(max_inflight)
                .set_max_packet_size(self.max_packet, self.max_packet);
            if let (Some(u), p) = (&self.username, password) {
                o.set_credentials(u.clone(), p.unwrap_or_default());
            }
            let (client, mut events) = rumqttc::AsyncClient::new(o, requests);
            let mut net = rumqttc::NetworkOptions::new();
            net.set_connection_timeout(timeout_secs);
            events.set_network_options(net);
            Ok((Requests::V4(client), EventLoop::V4(Box::new(events))))
        }
    }
}

/// A message delivered to us, with what is needed to acknowledge it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// The `tidegate-gateway` user property (MQTT 5), if the message carries one.
    pub gateway: Option<String>,
    /// Boxed: a whole (payload-less) packet, kept only to acknowledge it.
    ack: Box<AckToken>,
}

/// The packet id and QoS of a delivery, in the form rumqttc's `ack` takes (payload
/// stripped: an acknowledgement needs only the id).
#[derive(Debug, Clone)]
enum AckToken {
    V4(rumqttc::Publish),
    V5(v5b::Publish),
}

/// What happened on a connection, in either protocol version.
#[derive(Debug)]
pub enum Event {
    /// The broker accepted the connection.
    Connected { session_present: bool },
    /// A publish we queued was written, under this packet id. Publishes are written in
    /// the order they were queued.
    Sent(u16),
    /// The broker acknowledged the publish with this packet id.
    Acked(u16),
    /// A message for one of our subscriptions.
    Delivered(Delivery),
    /// SUBACK: how many filters the broker refused.
    Subscribed { refused: usize },
    /// Our DISCONNECT was written.
    Disconnected,
    /// Anything else (pings, our acknowledgements, …).
    Other,
}

/// A connection failure, with the verdict: whether retrying can help without an operator.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// Credentials refused, not authorized, packet too large, …: an operator must act.
    pub fatal: bool,
}

/// The event loop of one connection; see the module docs for why it is never polled again
/// after an error.
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl EventLoop {
    /// The next event, connecting first if needed. After an `Err`, drop this loop.
    ///
    /// Not cancel-safe (a cancelled poll may leave half a packet written): a caller that
    /// gives up on a poll (timeout, shutdown) drops the loop too.
    pub async fn poll(&mut self) -> Result<Event, Failure> {
        match self {
            EventLoop::V4(l) => l.poll().await.map(event4).map_err(|e| failure4(&e)),
            EventLoop::V5(l) => l.poll().await.map(event5).map_err(|e| failure5(&e)),
        }
    }
}

fn event4(e: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Outgoing, Packet};
    match e {
        E::Incoming(Packet::ConnAck(c)) => Event::Connected {
            session_present: c.session_present,
        },
        E::Incoming(Packet::PubAck(a)) => Event::Acked(a.pkid),
        E::Incoming(Packet::Publish(p)) => Event::Delivered(Delivery {
            topic: Bytes::from(p.topic.clone().into_bytes()),
            payload: p.payload.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            gateway: None,
            ack: Box::new(AckToken::V4(rumqttc::Publish {
                payload: Bytes::new(),
                ..p
            })),
        }),
        E::Incoming(Packet::SubAck(s)) => Event::Subscribed {
            refused: s
                .return_codes
                .iter()
                .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                .count(),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(Outgoing::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

fn event5(e: rumqttc::v5::Event) -> Event {
    use rumqttc::v5::{Event as E, Incoming};
    use rumqttc::Outgoing;
    match e {
        E::Incoming(Incoming::ConnAck(c)) => Event::Connected {
            session_present: c.session_present,
        },
        E::Incoming(Incoming::PubAck(a)) => Event::Acked(a.pkid),
        E::Incoming(Incoming::Publish(p)) => {
            let gateway = p.properties.as_ref().and_then(|props| {
                props
                    .user_properties
                    .iter()
                    .find(|(k, _)| k == PROP_GATEWAY)
                    .map(|(_, v)| v.clone())
            });
            Event::Delivered(Delivery {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos as u8,
                retain: p.retain,
                gateway,
                ack: Box::new(AckToken::V5(v5b::Publish {
                    payload: Bytes::new(),
                    properties: None,
                    ..p
                })),
            })
        }
        E::Incoming(Incoming::SubAck(s)) => Event::Subscribed {
            refused: s
                .return_codes
                .iter()
                .filter(|c| !matches!(c, v5b::SubscribeReasonCode::Success(_)))
                .count(),
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(Outgoing::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

fn failure4(e: &rumqttc::ConnectionError) -> Failure {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E, StateError as S};
    let fatal = match e {
        E::ConnectionRefused(code) => matches!(
            code,
            C::BadUserNamePassword | C::NotAuthorized | C::BadClientId | C::RefusedProtocolVersion
        ),
        E::Tls(_) => true,
        E::MqttState(S::OutgoingPacketTooLarge { .. }) => true,
        _ => false,
    };
    Failure {
        message: describe4(e),
        fatal,
    }
}

fn describe4(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::ConnectionRefused(C::BadUserNamePassword) => {
            "the broker refused the username or password".into()
        }
        E::ConnectionRefused(C::NotAuthorized) => "the broker refused: not authorized".into(),
        E::ConnectionRefused(C::RefusedProtocolVersion) => {
            "the broker does not speak MQTT 3.1.1 (protocol = 4)".into()
        }
        E::Tls(t) => {
            format!("TLS: {t} (check ca_file, client_cert, client_key and the host name in url)")
        }
        other => other.to_string(),
    }
}

fn failure5(e: &rumqttc::v5::ConnectionError) -> Failure {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as C, PubAckReason as P};
    use rumqttc::v5::{ConnectionError as E, StateError as S};
    let refused = |c: &C| {
        matches!(
            c,
            C::BadUserNamePassword
                | C::NotAuthorized
                | C::Banned
                | C::BadAuthenticationMethod
                | C::ClientIdentifierNotValid
                | C::BadClientId
                | C::UnsupportedProtocolVersion
                | C::RefusedProtocolVersion
        )
    };
    let fatal = match e {
        E::ConnectionRefused(c) => refused(c),
        E::MqttState(S::ConnFail { reason }) => refused(reason),
        E::MqttState(S::PubAckFail { reason }) => matches!(
            reason,
            P::NotAuthorized | P::TopicNameInvalid | P::PayloadFormatInvalid
        ),
        E::MqttState(S::OutgoingPacketTooLarge { .. } | S::SubFail { .. }) => true,
        E::Tls(_) => true,
        _ => false,
    };
    let message = match e {
        E::ConnectionRefused(C::UnsupportedProtocolVersion | C::RefusedProtocolVersion) => {
            "the broker does not speak MQTT 5; set protocol = 4".into()
        }
        E::Tls(t) => format!("TLS: {t} (check ca_file, client_cert, client_key and the host name in url)"),
        E::MqttState(S::SubFail { reason }) => format!(
            "the broker refused a topic filter ({reason:?}); check topics and the broker's access rules"
        ),
        E::MqttState(S::OutgoingPacketTooLarge { pkt_size, max }) => format!(
            "a reading of {pkt_size} bytes is larger than the broker accepts ({max}); raise the broker's max packet size or lower mqtt.max_packet"
        ),
        other => other.to_string(),
    };
    Failure { message, fatal }
}

/// The request side of a connection: queue publishes, acknowledgements, subscriptions.
/// Every call is non-blocking; a full or closed channel is an error (the caller treats the
/// connection as lost).
#[derive(Clone)]
pub enum Requests {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The request channel was full or its event loop is gone.
#[derive(Debug, thiserror::Error)]
#[error("the MQTT connection's request queue is full or closed")]
pub struct QueueError;

impl Requests {
    /// Queues a QoS 1 publish; under MQTT 5 with the tidegate user properties
    /// ([`user_properties`]). A `live` publish (the live lane's) is retained, so a new
    /// subscriber gets each topic's current value at once, and marked [`PROP_LIVE`].
    pub fn publish(
        &self,
        topic: String,
        payload: Bytes,
        gateway: &Arc<str>,
        seq: u64,
        live: bool,
    ) -> Result<(), QueueError> {
        match self {
            Requests::V4(c) => c
                .try_publish(topic, QoS4::AtLeastOnce, live, payload.to_vec())
                .map_err(|_| QueueError),
            Requests::V5(c) => {
                let props = v5b::PublishProperties {
                    user_properties: user_properties(gateway, seq, live),
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, QoS5::AtLeastOnce, live, payload, props)
                    .map_err(|_| QueueError)
            }
        }
    }

    /// Queues the acknowledgement of `delivery` (nothing for QoS 0). Must go to the
    /// connection the delivery came from, which holds because a [`Delivery`] never
    /// outlives its connection's `Requests` in the subscriber.
    pub fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        match (self, &*delivery.ack) {
            (Requests::V4(c), AckToken::V4(p)) => c.try_ack(p).map_err(|_| QueueError),
            (Requests::V5(c), AckToken::V5(p)) => c.try_ack(p).map_err(|_| QueueError),
            _ => Err(QueueError),
        }
    }

    /// Queues one SUBSCRIBE for every filter at `qos`. Under MQTT 5 retained messages are
    /// sent only when a subscription is new, so a reconnect does not journal them again.
    pub fn subscribe(&self, filters: &[String], qos: u8) -> Result<(), QueueError> {
        match self {
            Requests::V4(c) => {
                let q = if qos == 0 {
                    QoS4::AtMostOnce
                } else {
                    QoS4::AtLeastOnce
                };
                c.try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), q)),
                )
                .map_err(|_| QueueError)
            }
            Requests::V5(c) => {
                let q = if qos == 0 {
                    QoS5::AtMostOnce
                } else {
                    QoS5::AtLeastOnce
                };
                c.try_subscribe_many(filters.iter().map(|f| {
                    let mut filter = v5b::Filter::new(f.clone(), q);
                    filter.retain_forward_rule = v5b::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .map_err(|_| QueueError)
            }
        }
    }

    /// Queues a DISCONNECT (a clean goodbye: the broker keeps a persistent session and
    /// does not publish a will).
    pub fn disconnect(&self) -> Result<(), QueueError> {
        match self {
            Requests::V4(c) => c.try_disconnect().map_err(|_| QueueError),
            Requests::V5(c) => c.try_disconnect().map_err(|_| QueueError),
        }
    }
}

#[cfg(test)]
mod tests;

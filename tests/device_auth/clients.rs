//! The MQTT clients the device-auth tests connect with: rumqttc's of both protocol
//! versions, reporting the CONNACK code of a refusal, and [`RawV5`], a bare MQTT 5 client
//! that sees the negative acknowledgements rumqttc turns into connection errors.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectReturnCode as V4Code, Event, Incoming, MqttOptions};

use crate::support::{port_of, WAIT};

/// 3.1.1: the CONNACK outcome: `Ok` with the client and its event loop, or the code.
pub(crate) async fn connect_v4(
    addr: &str,
    id: &str,
    login: Option<(&str, &str)>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), V4Code> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port_of(addr));
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    // rumqttc's own limit on connecting (5 s) is shorter than a CONNECT may take while
    // the daemon hashes a storm of passwords on a loaded machine: the test's is the one.
    let mut network = el.network_options();
    network.set_connection_timeout(WAIT.as_secs());
    el.set_network_options(network);
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("3.1.1 connect of {id}: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    r.map(|()| (client, el))
}

/// MQTT 5: as [`connect_v4`].
pub(crate) async fn connect_v5(
    addr: &str,
    id: &str,
    login: Option<(&str, &str)>,
    transport: Option<rumqttc::Transport>,
) -> Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), V5Code> {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port_of(addr));
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    if let Some(t) = transport {
        o.set_transport(t);
    }
    o.set_connection_timeout(WAIT.as_secs());
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("MQTT 5 connect of {id}: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    r.map(|()| (client, el))
}

/// Publishes `payload` on `topic` at QoS 1 and waits for its PUBACK, which must be a
/// success; `who` names the connection if it is lost instead.
pub(crate) async fn publish_acked_v5(
    c: &rumqttc::v5::AsyncClient,
    el: &mut rumqttc::v5::EventLoop,
    topic: &str,
    payload: &str,
    who: &str,
) {
    c.publish(topic, V5QoS::AtLeastOnce, false, payload.to_owned())
        .await
        .expect("queue");
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(V5Packet::PubAck(a))) => {
                    assert_eq!(format!("{:?}", a.reason), "Success", "{who}");
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("{who}: connection lost: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: no PUBACK in time"));
}

/// Polls `el` until the daemon ends the connection: its DISCONNECT reason or the error,
/// as text.
pub(crate) async fn closed_v5(el: &mut rumqttc::v5::EventLoop) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(V5Packet::Disconnect(d))) => {
                    return format!("{:?}", d.reason_code)
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
    .expect("the connection ends in time")
}

/// A bare MQTT 5 client, for what rumqttc's own client hides: it treats a PUBACK failure
/// code as a connection error and drops the connection.
pub(crate) struct RawV5 {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl RawV5 {
    /// Connects as `id` with `user`'s password; the CONNACK must be a success.
    pub(crate) async fn connect(addr: &str, id: &str, user: &str, password: &str) -> RawV5 {
        let mut raw = RawV5::open(addr).await;
        raw.send_connect(id, user, password).await;
        match raw.next().await {
            V5Packet::ConnAck(c) => assert_eq!(c.code, V5Code::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// A TCP connection to `addr`, no CONNECT sent yet.
    pub(crate) async fn open(addr: &str) -> RawV5 {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        RawV5 {
            stream,
            buf: bytes::BytesMut::new(),
        }
    }

    /// Sends a CONNECT as client `id` (empty: none) with `user`'s password.
    pub(crate) async fn send_connect(&mut self, id: &str, user: &str, password: &str) {
        use rumqttc::v5::mqttbytes::v5::{Connect, Login};
        let mut out = bytes::BytesMut::new();
        Connect {
            keep_alive: 30,
            client_id: id.to_owned(),
            clean_start: true,
            properties: None,
        }
        .write(&None, &Some(Login::new(user, password)), &mut out)
        .expect("encode CONNECT");
        self.send(&out).await;
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write");
    }

    pub(crate) async fn publish(&mut self, topic: &str, pkid: u16, payload: &str) {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
            topic,
            V5QoS::AtLeastOnce,
            payload.as_bytes().to_vec(),
            None,
        );
        p.pkid = pkid;
        let mut out = bytes::BytesMut::new();
        p.write(&mut out).expect("encode PUBLISH");
        self.send(&out).await;
    }

    pub(crate) async fn subscribe(&mut self, filter: &str, pkid: u16) {
        let mut sub = rumqttc::v5::mqttbytes::v5::Subscribe::new(
            rumqttc::v5::mqttbytes::v5::Filter::new(filter, V5QoS::AtMostOnce),
            None,
        );
        sub.pkid = pkid;
        let mut out = bytes::BytesMut::new();
        sub.write(&mut out).expect("encode SUBSCRIBE");
        self.send(&out).await;
    }

    /// The next `n` acknowledgements (PUBACK or PUBREC): packet id and reason code.
    pub(crate) async fn acks(&mut self, n: usize) -> Vec<(u16, String)> {
        let mut acks = Vec::new();
        for _ in 0..n {
            match self.next().await {
                V5Packet::PubAck(a) => acks.push((a.pkid, format!("{:?}", a.reason))),
                V5Packet::PubRec(r) => acks.push((r.pkid, format!("{:?}", r.reason))),
                other => panic!("expected PUBACK or PUBREC, got {other:?}"),
            }
        }
        acks
    }

    pub(crate) async fn next(&mut self) -> V5Packet {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(WAIT, async {
            loop {
                match V5Packet::read(&mut self.buf, None) {
                    Ok(p) => return p,
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                        let n = self.stream.read_buf(&mut self.buf).await.expect("read");
                        assert!(n > 0, "connection closed");
                    }
                    Err(e) => panic!("bad packet: {e}"),
                }
            }
        })
        .await
        .expect("a packet in time")
    }
}

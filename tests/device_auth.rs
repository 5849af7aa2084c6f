//! Device authentication and topic rights on the real daemon's MQTT listener (issue 9,
//! device side): passwords written by `tidegate passwd`, CONNACK codes of both protocol
//! versions, client certificates on the TLS listener, publishes and subscriptions outside
//! a device's rights, and SIGHUP reloads of the credentials file. Loopback only.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::metrics::scrape;
use common::pki::{Client, TestPki};
use common::status::wait_for_log;
use common::{Fleet, Gateway};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectReturnCode as V4Code, Event, Incoming, MqttOptions, QoS};

/// Longest wait for anything the daemon does.
const WAIT: Duration = Duration::from_secs(20);

/// Runs `tidegate passwd FILE USER [extra…]` with `password` on stdin.
fn passwd(file: &Path, user: &str, password: &str, extra: &[&str]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tidegate passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("tidegate passwd")
}

fn passwd_ok(file: &Path, user: &str, password: &str, extra: &[&str]) {
    let out = passwd(file, user, password, extra);
    assert!(
        out.status.success(),
        "tidegate passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway whose devices are wt-1 (publish and subscribe under turbines/%c/) and wt-2
/// (the defaults: publish `turbines/%c/#`, subscribe `turbines/%c/#`), passwords `pw-1`
/// and `pw-2`. `extra_mqtt` goes into `[mqtt]`.
fn gateway(extra_mqtt: &str) -> (Gateway, PathBuf) {
    gateway_with(|| extra_mqtt.to_owned())
}

/// [`gateway`] with `[mqtt]` keys made afresh at each start (a port of their own is then
/// a fresh one after a port clash).
fn gateway_with(extra_mqtt: impl Fn() -> String) -> (Gateway, PathBuf) {
    let creds_dir = tempfile::tempdir().expect("tempdir").keep();
    let creds = creds_dir.join("devices.toml");
    passwd_ok(
        &creds,
        "wt-1",
        "pw-1\n",
        &["--publish", "turbines/%c/#", "--subscribe", "turbines/%c/#"],
    );
    passwd_ok(&creds, "wt-2", "pw-2\n", &[]);
    let creds_for_config = creds.clone();
    let gw = Gateway::start_fresh(move |port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n{}\n\n[mqtt.auth]\ncredentials_file = \"{}\"\npublish = [\"turbines/%c/#\"]\nsubscribe = [\"turbines/%c/#\"]\n",
            dir.join("journal").display(),
            extra_mqtt(),
            creds_for_config.display()
        )
    });
    (gw, creds)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port")
}

/// 3.1.1: the CONNACK outcome: `Ok` with the client and its event loop, or the code.
async fn connect_v4(
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
async fn connect_v5(
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
async fn publish_acked_v5(
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
async fn closed_v5(el: &mut rumqttc::v5::EventLoop) -> String {
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
struct RawV5 {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl RawV5 {
    async fn connect(addr: &str, id: &str, user: &str, password: &str) -> RawV5 {
        use rumqttc::v5::mqttbytes::v5::{Connect, Login};
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut raw = RawV5 {
            stream,
            buf: bytes::BytesMut::new(),
        };
        let mut out = bytes::BytesMut::new();
        Connect {
            keep_alive: 30,
            client_id: id.to_owned(),
            clean_start: true,
            properties: None,
        }
        .write(&None, &Some(Login::new(user, password)), &mut out)
        .expect("encode CONNECT");
        raw.send(&out).await;
        match raw.next().await {
            V5Packet::ConnAck(c) => assert_eq!(c.code, V5Code::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn publish(&mut self, topic: &str, pkid: u16, payload: &str) {
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

    async fn subscribe(&mut self, filter: &str, pkid: u16) {
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
    async fn acks(&mut self, n: usize) -> Vec<(u16, String)> {
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

    async fn next(&mut self) -> V5Packet {
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

/// The topics the journal holds, in order (`tidegate journal dump`).
fn journal_topics(gw: &Gateway) -> Vec<String> {
    let out = gw.command(&["journal", "dump"]);
    assert!(
        out.status.success(),
        "journal dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["topic"].as_str().map(str::to_owned))
        .collect()
}

/// A counter of `/metrics` whose labels include `labels`.
async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    scrape(gw).await.find(name, labels).map(|v| v as u64)
}

/// Publishes refused as outside the device's rights.
async fn publishes_refused(gw: &Gateway) -> Option<u64> {
    metric(
        gw,
        "tidegate_readings_rejected_total",
        &[("reason", "not_authorized")],
    )
    .await
}

/// A CONNECT the listener refuses, and the CONNACK code each protocol version gets.
struct Refusal {
    why: &'static str,
    client_id: &'static str,
    login: Option<(&'static str, &'static str)>,
    v4: V4Code,
    v5: V5Code,
}

const REFUSALS: [Refusal; 4] = [
    Refusal {
        why: "a wrong password",
        client_id: "wt-1",
        login: Some(("wt-1", "nope")),
        v4: V4Code::BadUserNamePassword,
        v5: V5Code::BadUserNamePassword,
    },
    Refusal {
        why: "an unknown device",
        client_id: "ghost",
        login: Some(("ghost", "pw-1")),
        v4: V4Code::BadUserNamePassword,
        v5: V5Code::BadUserNamePassword,
    },
    Refusal {
        why: "no login at all",
        client_id: "anon",
        login: None,
        v4: V4Code::NotAuthorized,
        v5: V5Code::NotAuthorized,
    },
    Refusal {
        why: "one device's password under another's client id",
        client_id: "wt-2",
        login: Some(("wt-1", "pw-1")),
        v4: V4Code::BadClientId,
        v5: V5Code::ClientIdentifierNotValid,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_and_refusals_carry_the_right_connack_codes() {
    let (gw, _) = gateway("");
    let addr = gw.mqtt_addr();
    // The right password, both versions.
    let (c, _el) = connect_v4(&addr, "wt-1", Some(("wt-1", "pw-1")))
        .await
        .expect("3.1.1 login");
    let _ = c.disconnect().await;
    let (c, _el) = connect_v5(&addr, "wt-2", Some(("wt-2", "pw-2")), None)
        .await
        .expect("5 login");
    let _ = c.disconnect().await;
    for r in &REFUSALS {
        let v4 = connect_v4(&addr, r.client_id, r.login).await.err();
        assert_eq!(v4, Some(r.v4), "3.1.1, {}", r.why);
        let v5 = connect_v5(&addr, r.client_id, r.login, None).await.err();
        assert_eq!(v5, Some(r.v5), "MQTT 5, {}", r.why);
    }
    let refused = |reason| [("reason", reason)];
    assert_eq!(
        metric(
            &gw,
            "tidegate_mqtt_auth_refused_total",
            &refused("bad_credentials")
        )
        .await,
        Some(4)
    );
    assert_eq!(
        metric(
            &gw,
            "tidegate_mqtt_auth_refused_total",
            &refused("not_authorized")
        )
        .await,
        Some(2)
    );
    assert_eq!(
        metric(
            &gw,
            "tidegate_mqtt_auth_refused_total",
            &refused("client_id")
        )
        .await,
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_outside_the_rights_is_refused_counted_and_never_journaled() {
    let (gw, _) = gateway("");
    let addr = gw.mqtt_addr();
    // MQTT 5: the refused one gets PUBACK 0x87, the others flow and are acknowledged.
    let mut raw = RawV5::connect(&addr, "wt-1", "wt-1", "pw-1").await;
    raw.publish("turbines/wt-1/t", 1, "1").await;
    raw.publish("turbines/wt-2/t", 2, "stolen").await;
    raw.publish("turbines/wt-1/t", 3, "2").await;
    raw.publish("elsewhere", 4, "x").await;
    raw.publish("turbines/wt-1/t", 5, "3").await;
    assert_eq!(
        raw.acks(5).await,
        [
            (1, "Success".to_owned()),
            (2, "NotAuthorized".to_owned()),
            (3, "Success".to_owned()),
            (4, "NotAuthorized".to_owned()),
            (5, "Success".to_owned())
        ],
        "acks in publish order"
    );
    // 3.1.1: no negative ack; after three refusals the connection is closed, and the
    // allowed publishes before them are acknowledged.
    let (c4, mut el4) = connect_v4(&addr, "wt-2", Some(("wt-2", "pw-2")))
        .await
        .expect("login");
    c4.publish("turbines/wt-2/t", QoS::AtLeastOnce, false, "ok")
        .await
        .expect("queue");
    for i in 0..3 {
        c4.publish("turbines/wt-1/t", QoS::AtLeastOnce, false, format!("x{i}"))
            .await
            .expect("queue");
    }
    let mut acked = 0;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match el4.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "3.1.1 connection not closed after 3 refusals"
    );
    assert_eq!(acked, 1, "only the allowed publish is acknowledged");

    let topics = journal_topics(&gw);
    assert_eq!(
        topics,
        [
            "turbines/wt-1/t",
            "turbines/wt-1/t",
            "turbines/wt-1/t",
            "turbines/wt-2/t"
        ],
        "only allowed readings, in order"
    );
    assert_eq!(publishes_refused(&gw).await, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_subscribe_to_another_devices_topics() {
    let (gw, _) = gateway("");
    let addr = gw.mqtt_addr();
    // MQTT 5: 0x87 for filters reaching past the device's own topics.
    let mut spy = RawV5::connect(&addr, "wt-2", "wt-2", "pw-2").await;
    let mut codes = Vec::new();
    for (pkid, filter) in [
        (1, "turbines/wt-1/#"),
        (2, "turbines/+/t"),
        (3, "#"),
        (4, "turbines/wt-2/#"),
    ] {
        spy.subscribe(filter, pkid).await;
        match spy.next().await {
            V5Packet::SubAck(s) => codes.push(format!("{:?}", s.return_codes)),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    assert_eq!(
        codes,
        [
            "[NotAuthorized]",
            "[NotAuthorized]",
            "[NotAuthorized]",
            "[Success(AtMostOnce)]"
        ]
    );
    // wt-1 publishes; the spy, subscribed to its own topics only, receives nothing.
    let (victim, mut victim_el) = connect_v5(&addr, "wt-1", Some(("wt-1", "pw-1")), None)
        .await
        .expect("login");
    for i in 0..5 {
        victim
            .publish("turbines/wt-1/t", V5QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queue");
    }
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < 5 {
            match victim_el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(V5Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("wt-1: {e}"),
            }
        }
    })
    .await
    .expect("wt-1's PUBACKs");
    // The spy's own publish on its own topics comes back to it after anything of wt-1's
    // would have: until then, every packet it gets is checked.
    spy.publish("turbines/wt-2/t", 9, "marker").await;
    let mut seen = (false, false);
    while seen != (true, true) {
        match spy.next().await {
            V5Packet::PubAck(a) if a.pkid == 9 => seen.0 = true,
            V5Packet::Publish(p) if p.topic.as_ref() == b"turbines/wt-2/t" => seen.1 = true,
            other => panic!("wt-2 received something else: {other:?}"),
        }
    }
    assert_eq!(
        journal_topics(&gw).len(),
        6,
        "wt-1's readings and the spy's marker were journaled"
    );
    // 3.1.1: failure 0x80.
    let (spy4, mut spy4_el) = connect_v4(&addr, "wt-2", Some(("wt-2", "pw-2")))
        .await
        .expect("login");
    spy4.subscribe("turbines/wt-1/#", QoS::AtMostOnce)
        .await
        .expect("queue");
    let code = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Incoming::SubAck(s))) = spy4_el.poll().await {
                return format!("{:?}", s.return_codes);
            }
        }
    })
    .await
    .expect("SUBACK");
    assert_eq!(code, "[Failure]");
    assert_eq!(
        metric(
            &gw,
            "tidegate_mqtt_auth_refused_total",
            &[("reason", "subscribe")]
        )
        .await,
        Some(4)
    );
}

/// Test certificates ([`common::pki`]): the listener's `server.pem`, a `device`
/// certificate whose CN is `cn` and a `foreign` one with the same CN from another CA.
fn certs(cn: &str) -> TestPki {
    TestPki::new(&[
        Client {
            name: "device",
            cn,
            other_ca: false,
        },
        Client {
            name: "foreign",
            cn,
            other_ca: true,
        },
    ])
}

/// A TLS transport trusting the test CA, presenting `client`'s certificate (`device` or
/// `foreign`) if given.
fn transport(certs: &TestPki, client: Option<&str>) -> rumqttc::Transport {
    rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        certs.client_config(client),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_device_and_one_from_another_ca_is_refused() {
    let certs = certs("wt-1");
    let (gw, _) = gateway_with(|| {
        format!(
            "tls_listen = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\ntls_require_client_cert = true\n",
            common::free_port(),
            certs.path("server.pem").display(),
            certs.path("server.key").display(),
            certs.path("ca.pem").display(),
        )
    });
    // The TLS port the running gateway was given, from its config.
    let config: toml::Table = std::fs::read_to_string(gw.config_path())
        .expect("read config")
        .parse()
        .expect("TOML");
    let tls_addr = config["mqtt"]["tls_listen"]
        .as_str()
        .expect("mqtt.tls_listen")
        .to_owned();
    let tls_port = port_of(&tls_addr);
    // The certificate's CN is the device: wt-1's rights apply, no password needed.
    let (c, mut el) = connect_v5(
        &tls_addr,
        "wt-1",
        None,
        Some(transport(&certs, Some("device"))),
    )
    .await
    .expect("certificate login");
    publish_acked_v5(&c, &mut el, "turbines/wt-1/t", "tls", "wt-1 over TLS").await;
    // Outside its rights: rumqttc reports the 0x87 PUBACK as an error.
    c.publish("turbines/wt-2/t", V5QoS::AtLeastOnce, false, "no")
        .await
        .expect("queue");
    let refused = closed_v5(&mut el).await;
    assert!(refused.contains("NotAuthorized"), "{refused}");
    // Under another client id than its certificate names: refused.
    assert_eq!(
        connect_v5(
            &tls_addr,
            "wt-2",
            None,
            Some(transport(&certs, Some("device")))
        )
        .await
        .err(),
        Some(V5Code::ClientIdentifierNotValid)
    );
    // A certificate with the same CN from another CA never gets past the handshake.
    let mut o = rumqttc::v5::MqttOptions::new("wt-1", "127.0.0.1", tls_port);
    o.set_transport(transport(&certs, Some("foreign")));
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let r = tokio::time::timeout(WAIT, el.poll())
        .await
        .expect("an answer");
    assert!(
        !matches!(r, Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_)))),
        "a foreign certificate was let in: {r:?}"
    );
    // tls_require_client_cert: no certificate, no session, even with a right password.
    let mut o = rumqttc::v5::MqttOptions::new("wt-2", "127.0.0.1", tls_port);
    o.set_credentials("wt-2", "pw-2");
    o.set_transport(transport(&certs, None));
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let r = tokio::time::timeout(WAIT, el.poll())
        .await
        .expect("an answer");
    assert!(
        !matches!(r, Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_)))),
        "a handshake without a certificate was let in: {r:?}"
    );
    // The plain listener still takes the password.
    let (c, _el) = connect_v5(&gw.mqtt_addr(), "wt-2", Some(("wt-2", "pw-2")), None)
        .await
        .expect("password login on the plain listener");
    let _ = c.disconnect().await;
    assert_eq!(journal_topics(&gw), ["turbines/wt-1/t"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_closes_only_devices_whose_password_or_rights_changed_and_refuses_a_bad_file() {
    let (gw, creds) = gateway("");
    let addr = gw.mqtt_addr();
    let (_c1, mut el1) = connect_v5(&addr, "wt-1", Some(("wt-1", "pw-1")), None)
        .await
        .expect("wt-1");
    let (c2, mut el2) = connect_v5(&addr, "wt-2", Some(("wt-2", "pw-2")), None)
        .await
        .expect("wt-2");
    let hup = || {
        let pid = Pid::from_raw(i32::try_from(gw.pid().expect("running")).expect("pid"));
        signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    };

    // A new password for wt-1: wt-1 is told 0x87 and closed, wt-2 stays.
    passwd_ok(&creds, "wt-1", "new-1\n", &[]);
    hup();
    let reason = closed_v5(&mut el1).await;
    assert!(reason.contains("NotAuthorized"), "{reason}");
    assert_eq!(
        connect_v5(&addr, "wt-1", Some(("wt-1", "pw-1")), None)
            .await
            .err(),
        Some(V5Code::BadUserNamePassword),
        "the old password no longer works"
    );
    let (_c1, _el1) = connect_v5(&addr, "wt-1", Some(("wt-1", "new-1")), None)
        .await
        .expect("the new one does");
    // wt-2 is still connected: its publish is acknowledged on the same connection.
    publish_acked_v5(
        &c2,
        &mut el2,
        "turbines/wt-2/t",
        "still here",
        "wt-2 after the reload",
    )
    .await;

    // A broken file: refused, the credentials in force stay.
    let good = std::fs::read_to_string(&creds).expect("read creds");
    std::fs::write(
        &creds,
        format!("{good}\n[[device]]\nusername = \"bad\"\npassword_hash = \"plain\"\n"),
    )
    .expect("break creds");
    hup();
    // The operator is told why, naming the file.
    wait_for_log(
        &gw,
        &["Reload refused: the device credentials file is invalid"],
    )
    .await;
    let (c, _el) = connect_v5(&addr, "wt-1", Some(("wt-1", "new-1")), None)
        .await
        .expect("old credentials still in force");
    let _ = c.disconnect().await;
    publish_acked_v5(
        &c2,
        &mut el2,
        "turbines/wt-2/t",
        "after",
        "wt-2 after the refused reload",
    )
    .await;

    // wt-1's rights narrowed, the password kept: wt-1 closed again, wt-2 untouched.
    let (_c1, mut el1) = connect_v5(&addr, "wt-1", Some(("wt-1", "new-1")), None)
        .await
        .expect("wt-1 again");
    assert!(good.contains("publish = [\"turbines/%c/#\"]"), "{good}");
    std::fs::write(
        &creds,
        good.replacen(
            "publish = [\"turbines/%c/#\"]",
            "publish = [\"turbines/%c/status\"]",
            1,
        ),
    )
    .expect("narrow wt-1's rights");
    hup();
    let reason = closed_v5(&mut el1).await;
    assert!(reason.contains("NotAuthorized"), "{reason}");
    publish_acked_v5(
        &c2,
        &mut el2,
        "turbines/wt-2/t",
        "still",
        "wt-2 after wt-1's rights changed",
    )
    .await;
    assert_eq!(
        metric(
            &gw,
            "tidegate_mqtt_auth_refused_total",
            &[("reason", "revoked")]
        )
        .await,
        Some(2)
    );
}

#[test]
fn passwd_creates_a_private_file_refuses_an_empty_password_and_keeps_comments() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("devices.toml");
    let out = passwd(&file, "wt-1", "\n", &[]);
    assert!(!out.status.success(), "an empty password was accepted");
    assert!(!file.exists(), "a refused run wrote the file");
    let out = passwd(&file, "wt-1", "s3cret\n", &["--publish", "turbines/%c/#"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("added device \"wt-1\""));
    let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, format!("# site 4 turbines\n{text}")).expect("add a comment");
    let out = passwd(&file, "wt-1", "other\n", &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("set a new password"));
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("# site 4 turbines\n"), "{text}");
    assert!(text.contains("turbines/%c/#"), "rights kept: {text}");
    assert_eq!(text.matches("[[device]]").count(), 1, "{text}");
}

#[test]
fn a_malformed_credentials_file_stops_start_up_and_check_config_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("devices.toml");
    std::fs::write(
        &creds,
        "# site 4\n[[device]]\nusername = \"wt-1\"\npassword_hash = \"not-a-hash\"\n",
    )
    .expect("write creds");
    let config = dir.path().join("tidegate.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n[http]\nenabled = false\n[mqtt.auth]\ncredentials_file = \"{}\"\n",
            dir.path().join("journal").display(),
            common::free_port(),
            creds.display()
        ),
    )
    .expect("write config");
    for args in [&["check-config"][..], &["run"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tidegate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted it: {stderr}");
        assert!(
            stderr.contains(&format!("{} line 2", creds.display())),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("tidegate passwd"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_fleet_within_its_rights_is_acknowledged_and_journaled_in_order() {
    // One shared login for the fleet (client ids are wt-0001…, so the id binding is off)
    // and rights through %c: every device may publish under its own id only.
    let creds_dir = tempfile::tempdir().expect("tempdir");
    let creds = creds_dir.path().join("devices.toml");
    passwd_ok(&creds, "fleet", "fleet-pw\n", &[]);
    let creds_for_config = creds.clone();
    let gw = Gateway::start_fresh(move |port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[mqtt.auth]\ncredentials_file = \"{}\"\nclient_id_is_username = false\npublish = [\"turbines/%c/telemetry\"]\n",
            dir.join("journal").display(),
            creds_for_config.display()
        )
    });
    let report = Fleet::new(gw.mqtt_addr(), 20)
        .count(200)
        .protocol(firmware_sim::Protocol::V5)
        .credentials("fleet", "fleet-pw")
        .run()
        .await;
    assert!(report.all_acked(), "{report:#?}\n{}", gw.log());
    let out = gw.command(&["journal", "dump"]);
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut records = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let topic = v["topic"].as_str().expect("topic").to_owned();
        let payload: serde_json::Value =
            serde_json::from_str(v["payload"].as_str().expect("text payload")).expect("JSON");
        let seq = payload["seq"].as_u64().expect("seq");
        let prev = last.insert(topic.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "{topic}: {seq} after {prev}");
        records += 1;
    }
    assert_eq!(records, 20 * 200);
    assert_eq!(last.len(), 20);
    assert_eq!(publishes_refused(&gw).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_wrong_passwords_does_not_hold_up_a_connected_device() {
    let (gw, _) = gateway("");
    let addr = gw.mqtt_addr();
    let mut device = RawV5::connect(&addr, "wt-1", "wt-1", "pw-1").await;
    // 60 wrong-password CONNECTs at once: each costs an argon2 hash on the blocking pool.
    let storm: Vec<_> = (0..60)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                connect_v4(&addr, "wt-2", Some(("wt-2", &format!("guess-{i}"))))
                    .await
                    .err()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut worst = Duration::ZERO;
    for pkid in 1..=20 {
        let started = std::time::Instant::now();
        device
            .publish("turbines/wt-1/t", pkid, "during the storm")
            .await;
        match device.next().await {
            V5Packet::PubAck(a) => assert_eq!(a.pkid, pkid),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        worst = worst.max(started.elapsed());
    }
    for s in storm {
        assert_eq!(s.await.expect("task"), Some(V4Code::BadUserNamePassword));
    }
    assert!(
        worst < Duration::from_millis(500),
        "a PUBACK took {worst:?} during the storm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_client_id_is_given_its_username() {
    let (gw, _) = gateway("");
    let addr = gw.mqtt_addr();
    use rumqttc::v5::mqttbytes::v5::{Connect, Login};
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut raw = RawV5 {
        stream,
        buf: bytes::BytesMut::new(),
    };
    let mut out = bytes::BytesMut::new();
    Connect {
        keep_alive: 30,
        client_id: String::new(),
        clean_start: true,
        properties: None,
    }
    .write(&None, &Some(Login::new("wt-1", "pw-1")), &mut out)
    .expect("encode CONNECT");
    raw.send(&out).await;
    match raw.next().await {
        V5Packet::ConnAck(c) => {
            assert_eq!(c.code, V5Code::Success);
            assert_eq!(
                c.properties.and_then(|p| p.assigned_client_identifier),
                Some("wt-1".to_owned())
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Its %c rights are those of wt-1.
    raw.publish("turbines/wt-1/t", 1, "mine").await;
    raw.publish("turbines/tidegate-auto-1/t", 2, "not mine")
        .await;
    assert_eq!(
        raw.acks(2).await,
        [(1, "Success".to_owned()), (2, "NotAuthorized".to_owned())]
    );
    assert_eq!(journal_topics(&gw), ["turbines/wt-1/t"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_outside_the_rights_gets_pubrec_0x87_and_is_not_journaled() {
    let (gw, _) = gateway("");
    let addr = gw.mqtt_addr();
    let mut raw = RawV5::connect(&addr, "wt-1", "wt-1", "pw-1").await;
    let mut out = bytes::BytesMut::new();
    for (pkid, topic) in [(1, "turbines/wt-2/t"), (2, "turbines/wt-1/t")] {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
            topic,
            V5QoS::ExactlyOnce,
            b"q2".to_vec(),
            None,
        );
        p.pkid = pkid;
        p.write(&mut out).expect("encode PUBLISH");
    }
    raw.send(&out).await;
    assert_eq!(
        raw.acks(2).await,
        [(1, "NotAuthorized".to_owned()), (2, "Success".to_owned())]
    );
    assert_eq!(journal_topics(&gw), ["turbines/wt-1/t"]);
}

/// The warning is an operator-facing log line, so the log is what is checked; its absence
/// is judged once the start line, logged after it would have been, is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_open_to_the_network_without_authentication_is_warned_about_at_start() {
    const WARNING: &str = "Device authentication is off and the MQTT listener is reachable";
    const STARTED: &str = "tidegate started";
    // Bound on every interface (connections still only come from loopback).
    let open = Gateway::start_fresh(|port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"0.0.0.0:{port}\"\n",
            dir.join("journal").display()
        )
    });
    wait_for_log(&open, &[WARNING, "Set [mqtt.auth] credentials_file"]).await;
    // Loopback only: nothing to warn about.
    let local = Gateway::start_fresh(|port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("journal").display()
        )
    });
    let log = wait_for_log(&local, &[STARTED]).await;
    assert!(!log.contains(WARNING), "{log}");
    // Open, but with authentication on: nothing to warn about either.
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("devices.toml");
    passwd_ok(&creds, "wt-1", "pw-1\n", &[]);
    let guarded = Gateway::start_fresh(|port, journal| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"0.0.0.0:{port}\"\n\n[mqtt.auth]\ncredentials_file = \"{}\"\n",
            journal.join("journal").display(),
            creds.display()
        )
    });
    let log = wait_for_log(&guarded, &[STARTED]).await;
    assert!(!log.contains(WARNING), "{log}");
}

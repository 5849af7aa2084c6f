//! Client certificates on the TLS listener: the certificate's CN names the device, one
//! from another CA or none at all is refused, and the plain listener keeps passwords.

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
use rumqttc::v5::mqttbytes::QoS as V5QoS;

use crate::clients::{closed_v5, connect_v5, publish_acked_v5};
use crate::common::pki::{Client, TestPki};
use crate::support::{gateway_with, journal_topics, port_of, WAIT};

/// Test certificates ([`crate::common::pki`]): the listener's `server.pem`, a `device`
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

/// The TLS listener's first answer at `port` to client `id` presenting `transport` (and
/// `login`, if given): the handshake refused is an error, a session let in a CONNACK.
async fn first_answer(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
    transport: rumqttc::Transport,
) -> Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError> {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    o.set_transport(transport);
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    tokio::time::timeout(WAIT, el.poll())
        .await
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_device_and_one_from_another_ca_is_refused() {
    let certs = certs("wt-1");
    let (gw, _) = gateway_with(|| {
        format!(
            "tls_listen = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\ntls_require_client_cert = true\n",
            crate::common::free_port(),
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
    let r = first_answer(tls_port, "wt-1", None, transport(&certs, Some("foreign"))).await;
    assert!(
        !matches!(r, Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_)))),
        "a foreign certificate was let in: {r:?}"
    );
    // tls_require_client_cert: no certificate, no session, even with a right password.
    let r = first_answer(
        tls_port,
        "wt-2",
        Some(("wt-2", "pw-2")),
        transport(&certs, None),
    )
    .await;
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

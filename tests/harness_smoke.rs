//! The end-to-end harness itself: the brokers the daemon tests rely on start, accept
//! connections on loopback, speak their protocols, and come back after a kill.

mod common;

use std::time::Duration;

use common::{port_open, Mosquitto, Tansu};

#[test]
fn tansu_starts_and_answers_kafka_metadata_requests() {
    let tansu = Tansu::start();
    assert!(port_open(tansu.port()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = rskafka::client::ClientBuilder::new(tansu.brokers())
            .build()
            .await
            .expect("kafka client connects");
        client
            .controller_client()
            .expect("controller")
            .create_topic("smoke", 3, 1, 5_000)
            .await
            .expect("create topic");
        let topics = client.list_topics().await.expect("metadata");
        let smoke = topics
            .iter()
            .find(|t| t.name == "smoke")
            .expect("topic listed");
        assert_eq!(smoke.partitions.len(), 3);
    });
}

#[test]
fn tansu_comes_back_on_the_same_port_after_a_kill() {
    let mut tansu = Tansu::start();
    let port = tansu.port();
    tansu.kill();
    assert!(!port_open(port));
    tansu.restart();
    assert_eq!(tansu.port(), port);
    assert!(port_open(port));
}

#[test]
fn mosquitto_starts_and_acknowledges_an_mqtt_connection() {
    let mosquitto = Mosquitto::start();
    assert!(port_open(mosquitto.port()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut o = rumqttc::MqttOptions::new("smoke", "127.0.0.1", mosquitto.port());
        o.set_keep_alive(Duration::from_secs(5));
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("CONNACK in time")
            .expect("connected");
        assert!(
            matches!(
                event,
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ref c))
                    if c.code == rumqttc::ConnectReturnCode::Success
            ),
            "{event:?}"
        );
    });
}

#[test]
fn mosquitto_comes_back_on_the_same_port_after_a_kill() {
    let mut mosquitto = Mosquitto::start();
    let port = mosquitto.port();
    mosquitto.restart();
    assert_eq!(mosquitto.port(), port);
    assert!(port_open(port));
}

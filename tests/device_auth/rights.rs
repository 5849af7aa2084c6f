//! Topic rights: publishes (QoS 1 and 2) and subscriptions outside a device's rights are
//! refused, counted and never journaled; a fleet within its rights flows in order.

use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{Event, Incoming, QoS};

use crate::clients::{connect_v4, connect_v5, RawV5};
use crate::common::Fleet;
use crate::support::{
    gateway, journal_topics, metric, passwd_ok, publishes_refused, start_with_credentials, WAIT,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_fleet_within_its_rights_is_acknowledged_and_journaled_in_order() {
    // One shared login for the fleet (client ids are wt-0001…, so the id binding is off)
    // and rights through %c: every device may publish under its own id only.
    let creds_dir = tempfile::tempdir().expect("tempdir");
    let creds = creds_dir.path().join("devices.toml");
    passwd_ok(&creds, "fleet", "fleet-pw\n", &[]);
    let gw = start_with_credentials(
        &creds,
        String::new,
        "client_id_is_username = false\npublish = [\"turbines/%c/telemetry\"]\n",
    );
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

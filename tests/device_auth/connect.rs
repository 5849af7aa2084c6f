//! Logins on the plain listener: the CONNACK code each refusal gets in both protocol
//! versions, a client id assigned from the username, and a storm of wrong passwords that
//! must not hold up a connected device.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
use rumqttc::ConnectReturnCode as V4Code;

use crate::clients::{connect_v4, connect_v5, RawV5};
use crate::support::{gateway, journal_topics, metric};

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
    let mut raw = RawV5::open(&addr).await;
    raw.send_connect("", "wt-1", "pw-1").await;
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

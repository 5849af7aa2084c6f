//! Tests of the whole check: what only shows when the stages' checks run with config's
//! own (the bridge's client keys and loop rule, and the shipped example).

use std::path::Path;

use crate::config::{Config, MqttClientConfig, UpstreamConfig, UpstreamKind};

fn parse(text: &str) -> Result<Config, String> {
    super::from_toml(text, Path::new("t.toml")).map_err(|e| e.to_string())
}

#[test]
fn the_shipped_example_config_passes_every_check() {
    super::from_toml(
        include_str!("../../deploy/tidegate.toml"),
        Path::new("deploy/tidegate.toml"),
    )
    .expect("deploy/tidegate.toml is valid");
}

#[test]
fn the_issue_examples_parse_with_their_defaults() {
    let c = parse(
        r#"
        [gateway]
        id = "gw-7"
        [[upstream]]
        name = "cloud"
        kind = "mqtt"
        url = "mqtt://127.0.0.1:1883"
        topic_prefix = "site-7/"
        [[mqtt_subscribe]]
        url = "mqtt://127.0.0.1:1884"
        topics = ["sensors/#"]
        "#,
    )
    .expect("valid");
    let s = &c.mqtt_subscribe[0];
    assert_eq!(
        (s.qos, s.client.protocol, s.client.clean_session),
        (1, 5, false)
    );
    let e = crate::ingest::mqtt_subscribe::config::endpoint(s, 0, "gw-7", 1024).expect("endpoint");
    assert_eq!(e.client_id, "tidegate-gw-7-sub-1");
    let e = crate::sinks::mqtt::config::endpoint(&c.upstream[0], "gw-7").expect("endpoint");
    assert_eq!(e.client_id, "tidegate-gw-7-cloud");
    assert_eq!(c.upstream[0].client.max_inflight, 100);
}

/// The commented-out block of `deploy/tidegate.toml` that starts at `header`, with the
/// comment marks removed from its key lines (prose lines are left out).
fn uncommented_block(header: &str) -> String {
    let text = include_str!("../../deploy/tidegate.toml");
    let start = text
        .find(&format!("\n{header}\n"))
        .unwrap_or_else(|| panic!("{header} is in deploy/tidegate.toml"));
    text[start + 1..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with("[[") || toml::from_str::<toml::Table>(l).is_ok())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_shipped_mqtt_examples_are_valid_and_state_the_real_defaults() {
    let text = uncommented_block("# [[upstream]]") + &uncommented_block("# [[mqtt_subscribe]]");
    assert!(text.contains("kind = \"mqtt\""), "{text}");
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let u = &c.upstream[0];
    let d = UpstreamConfig::new("x", UpstreamKind::Mqtt);
    assert_eq!(u.kind, UpstreamKind::Mqtt);
    let k = &u.client;
    assert!(k.username.is_some() && k.password_file.is_some() && k.ca_file.is_some());
    let dk = MqttClientConfig::default();
    assert_eq!(
        (k.protocol, k.clean_session, k.keep_alive, k.max_inflight),
        (
            dk.protocol,
            dk.clean_session,
            dk.keep_alive,
            dk.max_inflight
        )
    );
    assert_eq!(
        (
            u.max_batch,
            u.linger,
            u.request_timeout,
            u.backoff_initial,
            u.backoff_max
        ),
        (
            d.max_batch,
            d.linger,
            d.request_timeout,
            d.backoff_initial,
            d.backoff_max
        )
    );
    let s = &c.mqtt_subscribe[0];
    let ds = crate::config::MqttSubscribeConfig::new("mqtt://x", Vec::new());
    assert_eq!(s.topics, ["sensors/#"]);
    assert_eq!(
        (
            s.qos,
            s.client.protocol,
            s.client.clean_session,
            s.client.keep_alive,
            s.client.max_inflight
        ),
        (ds.qos, dk.protocol, false, dk.keep_alive, dk.max_inflight)
    );
    assert_eq!(
        (s.connect_timeout, s.backoff_initial, s.backoff_max),
        (ds.connect_timeout, ds.backoff_initial, ds.backoff_max)
    );
}

#[test]
fn subscribing_to_what_an_upstream_publishes_on_the_same_broker_is_refused() {
    let err = parse(
        r#"
        [[upstream]]
        name = "cloud"
        kind = "mqtt"
        url = "mqtt://localhost:1883"
        topic_prefix = "site-7/"
        [[mqtt_subscribe]]
        url = "mqtt://LOCALHOST:1883/"
        topics = ["sensors/#", "+/turbines/#"]
        "#,
    )
    .expect_err("a loop");
    assert!(
        err.contains("mqtt_subscribe[0].topics: \"+/turbines/#\""),
        "{err}"
    );
    assert!(err.contains("a loop"), "{err}");
    assert!(!err.contains("\"sensors/#\" on"), "{err}");
    // Without a prefix every topic is the upstream's.
    let err = parse(
        r#"
        [[upstream]]
        name = "cloud"
        kind = "mqtt"
        url = "mqtt://localhost:1883"
        [[mqtt_subscribe]]
        url = "mqtt://localhost:1883"
        topics = ["sensors/#"]
        "#,
    )
    .expect_err("a loop");
    assert!(err.contains("mqtt_subscribe[0].topics"), "{err}");
}

#[test]
fn bad_client_settings_are_reported_with_their_keys() {
    let err = parse(
        r#"
        [[upstream]]
        name = "cloud"
        kind = "mqtt"
        url = "tcp://x:1883"
        protocol = 3
        password_env = "X"
        brokers = ["a:1"]
        topic_prefix = "a/#"
        [[upstream]]
        name = "c2"
        kind = "mqtt"
        url = "mqtt://x:1883"
        ca_file = "/ca.pem"
        client_cert = "/c.pem"
        keep_alive = "500ms"
        max_inflight = 0
        topic_template = "up/{gateway}"
        [[mqtt_subscribe]]
        url = "mqtts://h"
        topics = ["a/#/b", "$SYS/#", "x+"]
        qos = 2
        password_file = "/p"
        password_env = "P"
        "#,
    )
    .expect_err("invalid");
    for needle in [
        "upstream[0].url",
        "upstream[0].protocol",
        "upstream[0].username",
        "upstream[0].brokers",
        "upstream[0].topic_prefix",
        "upstream[1].ca_file",
        "upstream[1].client_cert",
        "upstream[1].keep_alive",
        "upstream[1].max_inflight",
        "upstream[1].topic_template",
        "mqtt_subscribe[0].topics: \"a/#/b\"",
        "mqtt_subscribe[0].topics: \"$SYS/#\"",
        "mqtt_subscribe[0].topics: \"x+\"",
        "mqtt_subscribe[0].qos",
        "mqtt_subscribe[0].password_file",
        "mqtt_subscribe[0].username",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

#[test]
fn a_bad_device_right_is_reported_with_its_key_beside_the_other_problems() {
    let err = parse(
        r#"
        [mqtt.auth]
        publish = ["turbines/%c/#", "turbines/#/alarm"]
        subscribe = ["cmd/x%c"]
        [log]
        level = "tidegate=loud"
        "#,
    )
    .expect_err("three problems");
    for needle in [
        "mqtt.auth.publish[1]: \"turbines/#/alarm\"",
        "mqtt.auth.subscribe[0]: \"cmd/x%c\"",
        "tidegate=loud",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert!(!err.contains("mqtt.auth.publish[0]"), "{err}");
}

#[test]
fn every_bad_uplink_key_is_reported_with_its_key_and_a_valid_example() {
    let err = parse(
        r#"
        [[upstream]]
        name = "cloud"
        kind = "kafka"
        brokers = ["127.0.0.1:9092"]
        topic = "readings"
        live_topic = "readings"
        live_topic_prefix = "live/"
        bandwidth_burst = "64KiB"
        live_share = 1.5
        urgent = ["turbines/#/alarm"]
        budget = "10KiB"
        budget_reset_day = 31
        live_reserve = 1.0
        send_windows = ["22:00-22:00", "Sat 00:00-Sun 23:59", "tonight"]
        "#,
    )
    .expect_err("many problems");
    for needle in [
        "upstream[0].live_topic: must differ from topic",
        "upstream[0].live_topic_prefix: only for kind = \"mqtt\"",
        "upstream[0].bandwidth_burst: only with bandwidth",
        "upstream[0].live_share: 1.5 is outside",
        "upstream[0].urgent: \"turbines/#/alarm\"",
        "upstream[0].budget: 10.0 KiB is below 1MiB",
        "upstream[0].budget_reset_day: 31 is outside 1 ..= 28",
        "upstream[0].live_reserve: 1 is outside",
        "upstream[0].send_windows:",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
}

#[test]
fn a_complete_uplink_passes_and_urgent_needs_a_live_lane() {
    parse(
        r#"
        [[upstream]]
        name = "cloud"
        kind = "kafka"
        brokers = ["127.0.0.1:9092"]
        topic = "readings"
        bandwidth = "64KiB"
        live_topic = "readings-live"
        urgent = ["turbines/+/alarm"]
        budget = "2GiB"
        budget_period = "day"
        send_windows = ["22:00-06:00", "Sat 00:00-Sun 23:59"]
        "#,
    )
    .expect("valid");
    let err = parse(
        r#"
        [[upstream]]
        name = "bridge"
        kind = "mqtt"
        url = "mqtt://127.0.0.1:1883"
        urgent = ["turbines/+/alarm"]
        "#,
    )
    .expect_err("urgent without a live lane");
    assert!(
        err.contains("upstream[0].urgent: urgent readings go through the live lane; set live_topic_prefix too"),
        "{err}"
    );
}

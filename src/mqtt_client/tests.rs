//! Tests of broker URLs: parsing with default ports, the errors, and what counts as the same broker.

use super::*;

#[test]
fn broker_urls_parse_with_default_ports_and_clear_errors() {
    let u = BrokerUrl::parse("mqtt://127.0.0.1:1884").expect("valid");
    assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1884));
    let u = BrokerUrl::parse("mqtts://Broker.Example.com/").expect("valid");
    assert_eq!(
        (u.tls, u.host.as_str(), u.port),
        (true, "broker.example.com", 8883)
    );
    let u = BrokerUrl::parse("mqtt://[::1]:1883").expect("valid");
    assert_eq!((u.host.as_str(), u.port), ("::1", 1883));
    assert_eq!(u.to_string(), "mqtt://[::1]:1883");
    assert_eq!(BrokerUrl::parse("mqtt://h").expect("valid").port, 1883);
    for bad in [
        "tcp://h:1883",
        "h:1883",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://h:0",
        "mqtt://h:99999",
        "mqtt://h:port",
        "mqtt://user:pw@h:1883",
        "mqtt://h:1883/path",
        "mqtt://[::1",
    ] {
        assert!(BrokerUrl::parse(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn the_same_broker_ignores_the_scheme_but_not_the_port() {
    let a = BrokerUrl::parse("mqtt://LOCALHOST:1883").expect("valid");
    let b = BrokerUrl::parse("mqtt://localhost:1883/").expect("valid");
    let c = BrokerUrl::parse("mqtt://localhost:1884").expect("valid");
    assert!(a.same_broker(&b));
    assert!(!a.same_broker(&c));
}

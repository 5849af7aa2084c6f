//! The MQTT sink's wire-byte count: the exact encoded size of each PUBLISH it writes and of
//! each PUBACK it reads, computed from the packet's parts (rumqttc writes the socket, so
//! the sink counts the packets it knows it sent). Keeps `wire_sent` / `wire_received` equal
//! to what the sink's own packets put on the wire.
//!
//! Not counted: CONNECT / CONNACK (once per connection, a few dozen bytes), PINGREQ /
//! PINGRESP (2 bytes each per keep-alive interval while idle) and DISCONNECT (2 bytes), as
//! rumqttc does not report their sizes; under `mqtts://`, TLS records add their framing
//! (about 22-29 bytes per record) on top of the counted sizes.

use crate::mqtt_client::user_properties;

/// Size of a PUBACK that acknowledges success: fixed header (2) and packet id (2), and
/// under MQTT 5 the reason code (1), which a broker may leave out when it is 0 with no
/// properties but Mosquitto sends; such a broker is over-counted by a byte per publish. A
/// broker refusing a publish answers with a longer one, but then the connection is dropped
/// and the batch retried, and the refusal is not counted.
pub fn puback_size(protocol: u8) -> usize {
    if protocol == 5 {
        5
    } else {
        4
    }
}

/// Bytes of MQTT's variable-length integer for `n` (the remaining length, the property
/// length): 7 bits per byte.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Encoded size of the QoS 1 PUBLISH the sink writes to `topic` with `payload` bytes for
/// reading `seq`: fixed header with its remaining length, topic, packet id, and under
/// MQTT 5 (`protocol == 5`) the property length and the tidegate user properties.
pub fn publish_size(
    protocol: u8,
    topic: &str,
    payload: usize,
    gateway: &str,
    seq: u64,
    live: bool,
) -> usize {
    let mut remaining = 2 + topic.len() + 2 + payload;
    if protocol == 5 {
        let properties: usize = user_properties(gateway, seq, live)
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum();
        remaining += varint_len(properties) + properties;
    }
    1 + varint_len(remaining) + remaining
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use rumqttc::v5::mqttbytes::v5 as v5b;

    use super::*;

    /// What rumqttc writes for the sink's publish (packet id set, as on the wire).
    fn encoded(protocol: u8, topic: &str, payload: usize, seq: u64, live: bool) -> usize {
        let payload = Bytes::from(vec![b'x'; payload]);
        let mut buf = BytesMut::new();
        if protocol == 5 {
            let props = v5b::PublishProperties {
                user_properties: user_properties("gw-1", seq, live),
                ..Default::default()
            };
            let mut p = v5b::Publish::new(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                payload,
                Some(props),
            );
            p.pkid = 65_535;
            p.retain = live;
            p.write(&mut buf).expect("v5 encodes")
        } else {
            let mut p = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload.to_vec());
            p.pkid = 65_535;
            p.retain = live;
            p.write(&mut buf).expect("v4 encodes")
        };
        buf.len()
    }

    #[test]
    fn publish_size_is_what_rumqttc_encodes_for_both_protocols() {
        for protocol in [4, 5] {
            for topic in ["t", "turbines/wt-0001/telemetry", &"x/".repeat(300)] {
                for payload in [0, 1, 48, 230, 1000, 70_000] {
                    for (seq, live) in [(1, false), (123_456_789, true), (u64::MAX, false)] {
                        assert_eq!(
                            publish_size(protocol, topic, payload, "gw-1", seq, live),
                            encoded(protocol, topic, payload, seq, live),
                            "v{protocol}, topic {} B, payload {payload} B, seq {seq}",
                            topic.len()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn publish_size_crosses_the_remaining_length_boundaries_as_rumqttc_does() {
        for protocol in [4, 5] {
            let topic = "turbines/wt-0001/telemetry";
            // The remaining length without payload: the size of an empty publish less its
            // fixed header (one byte and a one-byte remaining length).
            let overhead = publish_size(protocol, topic, 0, "gw-1", 7, false) - 2;
            for remaining in [127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
                let payload = remaining - overhead;
                let size = publish_size(protocol, topic, payload, "gw-1", 7, false);
                assert_eq!(
                    size,
                    encoded(protocol, topic, payload, 7, false),
                    "v{protocol}, remaining length {remaining}"
                );
                assert_eq!(
                    size - remaining - 1,
                    varint_len(remaining),
                    "v{protocol}: a {}-byte remaining length at {remaining}",
                    varint_len(remaining)
                );
            }
        }
    }

    #[test]
    fn a_puback_is_four_bytes_in_mqtt_3_and_five_with_its_reason_code_in_mqtt_5() {
        let mut v4 = BytesMut::new();
        rumqttc::PubAck::new(9).write(&mut v4).expect("v4 PUBACK");
        assert_eq!(puback_size(4), v4.len());
        // What Mosquitto sends for MQTT 5: reason code 0 included (rumqttc itself would
        // leave it out); rumqttc reads it as the success it is.
        let mosquitto = [0x40, 0x03, 0x00, 0x09, 0x00];
        let mut bytes = BytesMut::from(&mosquitto[..]);
        let packet = v5b::Packet::read(&mut bytes, Some(16)).expect("a PUBACK");
        assert!(matches!(
            packet,
            v5b::Packet::PubAck(a) if a.pkid == 9 && a.reason == v5b::PubAckReason::Success
        ));
        assert_eq!(puback_size(5), mosquitto.len());
    }
}

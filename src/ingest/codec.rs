//! MQTT 3.1.1 and 5 framing for the device-facing listener, on rumqttc's packet codec.
//!
//! The listener speaks both versions on one port: the protocol level in CONNECT decides
//! which codec reads the rest of the connection. This module turns either version's
//! packets into one [`Inbound`] enum and writes the few packets a server sends.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// A CONNECT, reduced to what the listener uses.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub version: Version,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    /// User name and password of the CONNECT, if it had them (checked by
    /// [`super::auth`] when authentication is on).
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A PUBLISH from a device, as the listener reads it (topic not yet checked).
#[derive(Debug)]
pub struct Publish {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    pub dup: bool,
    /// MQTT 5 topic alias; tidegate advertises none, so any alias is a protocol error.
    pub topic_alias: Option<u16>,
}

/// A packet from a device after CONNECT.
#[derive(Debug)]
pub enum Inbound {
    Publish(Publish),
    PubRel {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        /// Topic filters, in packet order.
        filters: Vec<String>,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    PingReq,
    Disconnect,
    /// A second CONNECT, or a packet only a server sends.
    Unexpected(&'static str),
    /// Acknowledgements of publishes sent to the device; tidegate sends none, so ignored.
    Ignored,
}

/// Why bytes from a device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packet of {size} bytes exceeds mqtt.max_packet ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("unsupported MQTT protocol level {0}; tidegate speaks 3.1.1 (4) and 5")]
    UnsupportedVersion(u8),
}

/// Result of trying to take one packet from the read buffer.
pub enum Frame<T> {
    Packet(T),
    /// More bytes are needed.
    Incomplete,
}

/// Reads the remaining-length varint at `buf[1..]`: (value, bytes it used), or `None`
/// if incomplete. Errors on a varint longer than the 4 bytes MQTT allows.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(CodecError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// Checks the size of the next frame before any codec allocates for it.
fn check_size(buf: &[u8], max: usize) -> Result<bool, CodecError> {
    if buf.is_empty() {
        return Ok(false);
    }
    match remaining_length(buf)? {
        None => Ok(false),
        Some((len, used)) => {
            let size = 1 + used + len;
            if size > max {
                return Err(CodecError::TooLarge { size, max });
            }
            Ok(buf.len() >= size)
        }
    }
}

/// Takes the CONNECT packet, detecting the protocol version from it.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<Frame<ConnectInfo>, CodecError> {
    // The first byte decides: anything but a CONNECT (an HTTP request, a PUBLISH) is
    // refused at once rather than after waiting for the rest of a packet it announces.
    if buf.first().is_some_and(|b| b >> 4 != 1) {
        return Err(CodecError::NotConnect);
    }
    if !check_size(buf, max)? {
        return Ok(Frame::Incomplete);
    }
    let (_, used) = remaining_length(buf)?.ok_or(CodecError::NotConnect)?;
    // Variable header: protocol name (u16 length + bytes), then the level byte.
    let vh = 1 + used;
    let name_len = match (buf.get(vh), buf.get(vh + 1)) {
        (Some(&a), Some(&b)) => u16::from_be_bytes([a, b]) as usize,
        _ => return Err(CodecError::Malformed("CONNECT too short".into())),
    };
    let level = *buf
        .get(vh + 2 + name_len)
        .ok_or_else(|| CodecError::Malformed("CONNECT too short".into()))?;
    match level {
        4 => match v4::read(buf, max) {
            Ok(v4::Packet::Connect(c)) => Ok(Frame::Packet(ConnectInfo {
                version: Version::V4,
                client_id: c.client_id,
                clean_session: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.login.as_ref().map(|l| l.username.clone()),
                password: c.login.map(|l| l.password),
            })),
            Ok(_) => Err(CodecError::NotConnect),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        },
        5 => match v5::Packet::read(buf, Some(max)) {
            Ok(v5::Packet::Connect(c, _, login)) => Ok(Frame::Packet(ConnectInfo {
                version: Version::V5,
                client_id: c.client_id,
                clean_session: c.clean_start,
                keep_alive: c.keep_alive,
                username: login.as_ref().map(|l| l.username.clone()),
                password: login.map(|l| l.password),
            })),
            Ok(_) => Err(CodecError::NotConnect),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        },
        other => Err(CodecError::UnsupportedVersion(other)),
    }
}

/// An [`Inbound::Publish`] from either version's PUBLISH (their fields share names, not
/// types), with the topic as bytes and the MQTT 5 topic alias, if any.
macro_rules! inbound_publish {
    ($p:ident, $topic:expr, $alias:expr) => {
        Inbound::Publish(Publish {
            topic: $topic,
            payload: $p.payload,
            qos: $p.qos as u8,
            pkid: $p.pkid,
            retain: $p.retain,
            dup: $p.dup,
            topic_alias: $alias,
        })
    };
}

/// Takes the next packet after CONNECT.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame<Inbound>, CodecError> {
    if !check_size(buf, max)? {
        return Ok(Frame::Incomplete);
    }
    let inbound = match version {
        Version::V4 => {
            match v4::read(buf, max).map_err(|e| CodecError::Malformed(e.to_string()))? {
                v4::Packet::Publish(p) => {
                    inbound_publish!(p, Bytes::from(p.topic.into_bytes()), None)
                }
                v4::Packet::PubRel(r) => Inbound::PubRel { pkid: r.pkid },
                v4::Packet::Subscribe(s) => {
                    subscribe(s.pkid, s.filters.into_iter().map(|f| f.path))
                }
                v4::Packet::Unsubscribe(u) => unsubscribe(u.pkid, u.topics.len()),
                v4::Packet::PingReq => Inbound::PingReq,
                v4::Packet::Disconnect => Inbound::Disconnect,
                v4::Packet::Connect(_) => Inbound::Unexpected("second CONNECT"),
                v4::Packet::PubAck(_) | v4::Packet::PubRec(_) | v4::Packet::PubComp(_) => {
                    Inbound::Ignored
                }
                _ => Inbound::Unexpected("server-to-client packet"),
            }
        }
        Version::V5 => match v5::Packet::read(buf, Some(max))
            .map_err(|e| CodecError::Malformed(e.to_string()))?
        {
            v5::Packet::Publish(p) => {
                let alias = p.properties.as_ref().and_then(|pr| pr.topic_alias);
                inbound_publish!(p, p.topic, alias)
            }
            v5::Packet::PubRel(r) => Inbound::PubRel { pkid: r.pkid },
            v5::Packet::Subscribe(s) => subscribe(s.pkid, s.filters.into_iter().map(|f| f.path)),
            v5::Packet::Unsubscribe(u) => unsubscribe(u.pkid, u.filters.len()),
            v5::Packet::PingReq(_) => Inbound::PingReq,
            v5::Packet::Disconnect(_) => Inbound::Disconnect,
            v5::Packet::Connect(..) => Inbound::Unexpected("second CONNECT"),
            v5::Packet::PubAck(_) | v5::Packet::PubRec(_) | v5::Packet::PubComp(_) => {
                Inbound::Ignored
            }
            _ => Inbound::Unexpected("server-to-client packet"),
        },
    };
    Ok(Frame::Packet(inbound))
}

/// A SUBSCRIBE: its packet id and topic filters, in packet order.
fn subscribe(pkid: u16, filters: impl Iterator<Item = String>) -> Inbound {
    let filters = filters.collect();
    Inbound::Subscribe { pkid, filters }
}

/// An UNSUBSCRIBE: its packet id and how many filters it names.
fn unsubscribe(pkid: u16, filters: usize) -> Inbound {
    Inbound::Unsubscribe { pkid, filters }
}

/// Outcome of a publish, as told to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Success,
    /// The journal is full under `on_full = "reject"` (MQTT 5: 0x97).
    QuotaExceeded,
    /// Topic not accepted for journaling, e.g. a `$` topic (MQTT 5: 0x90).
    TopicNameInvalid,
    /// Outside the device's publish rights (MQTT 5: 0x87).
    NotAuthorized,
}

/// Why the listener refuses a connection or closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadClientId,
    ServerUnavailable,
    /// 3.1.1: 0x04, 5: 0x86.
    BadUserNameOrPassword,
    /// 3.1.1: 0x05, 5: 0x87.
    NotAuthorized,
}

/// Why the server ends a session (MQTT 5 DISCONNECT reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    Malformed,
    ProtocolError,
    PacketTooLarge,
    SessionTakenOver,
    ShuttingDown,
    KeepAliveTimeout,
    TopicAliasInvalid,
    QuotaExceeded,
    /// The device's credentials or rights changed on reload (0x87).
    NotAuthorized,
}

// Writing never fails for the packets below: they are small and well-formed by
// construction, and rumqttc only errors on oversized fields.

pub fn write_connack(
    version: Version,
    session_present: bool,
    refusal: Option<Refusal>,
    assigned_id: Option<String>,
    receive_max: u16,
    max_packet: u32,
    out: &mut BytesMut,
) {
    match version {
        Version::V4 => {
            let code = match refusal {
                None => v4::ConnectReturnCode::Success,
                Some(Refusal::BadClientId) => v4::ConnectReturnCode::BadClientId,
                Some(Refusal::ServerUnavailable) => v4::ConnectReturnCode::ServiceUnavailable,
                Some(Refusal::BadUserNameOrPassword) => v4::ConnectReturnCode::BadUserNamePassword,
                Some(Refusal::NotAuthorized) => v4::ConnectReturnCode::NotAuthorized,
            };
            let _ = v4::ConnAck::new(code, session_present).write(out);
        }
        Version::V5 => {
            let code = match refusal {
                None => v5::ConnectReturnCode::Success,
                Some(Refusal::BadClientId) => v5::ConnectReturnCode::ClientIdentifierNotValid,
                Some(Refusal::ServerUnavailable) => v5::ConnectReturnCode::ServerBusy,
                Some(Refusal::BadUserNameOrPassword) => v5::ConnectReturnCode::BadUserNamePassword,
                Some(Refusal::NotAuthorized) => v5::ConnectReturnCode::NotAuthorized,
            };
            let properties = v5::ConnAckProperties {
                session_expiry_interval: None,
                // A refusal carries no limits: 0 is not a valid value for either, and the
                // callers pass 0 when refusing.
                receive_max: refusal.is_none().then_some(receive_max),
                max_qos: None,
                retain_available: None,
                max_packet_size: refusal.is_none().then_some(max_packet),
                assigned_client_identifier: assigned_id,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            let _ = v5::ConnAck {
                session_present,
                code,
                properties: Some(properties),
            }
            .write(out);
        }
    }
}

/// The acknowledgement of a QoS 1 (PUBACK) or QoS 2 (PUBREC) publish; `reason` is only
/// on the wire under MQTT 5 (3.1.1 has no negative ack).
pub fn write_ack(version: Version, qos: u8, pkid: u16, reason: AckReason, out: &mut BytesMut) {
    match (version, qos) {
        (Version::V4, 2) => {
            let _ = v4::PubRec::new(pkid).write(out);
        }
        (Version::V4, _) => {
            let _ = v4::PubAck::new(pkid).write(out);
        }
        (Version::V5, 2) => {
            let mut rec = v5::PubRec::new(pkid, None);
            rec.reason = v5_ack_reasons(reason).1;
            let _ = rec.write(out);
        }
        (Version::V5, _) => {
            let mut ack = v5::PubAck::new(pkid, None);
            ack.reason = v5_ack_reasons(reason).0;
            let _ = ack.write(out);
        }
    }
}

/// An [`AckReason`] as MQTT 5 spells it in a PUBACK and in a PUBREC.
fn v5_ack_reasons(reason: AckReason) -> (v5::PubAckReason, v5::PubRecReason) {
    use v5::{PubAckReason as Ack, PubRecReason as Rec};
    match reason {
        AckReason::Success => (Ack::Success, Rec::Success),
        AckReason::QuotaExceeded => (Ack::QuotaExceeded, Rec::QuotaExceeded),
        AckReason::TopicNameInvalid => (Ack::TopicNameInvalid, Rec::TopicNameInvalid),
        AckReason::NotAuthorized => (Ack::NotAuthorized, Rec::NotAuthorized),
    }
}

pub fn write_pubcomp(version: Version, pkid: u16, out: &mut BytesMut) {
    match version {
        Version::V4 => {
            let _ = v4::PubComp::new(pkid).write(out);
        }
        Version::V5 => {
            let _ = v5::PubComp::new(pkid, None).write(out);
        }
    }
}

pub fn write_pingresp(out: &mut BytesMut) {
    let _ = v4::PingResp.write(out);
}

/// The answer to one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubCode {
    /// Granted at QoS 0 (local delivery is best effort).
    Granted,
    /// Refused (3.1.1: 0x80, 5: 0x8F topic filter invalid).
    Refused,
    /// Outside the device's subscribe rights (3.1.1: 0x80, 5: 0x87).
    NotAuthorized,
}

/// Answers a SUBSCRIBE, one code per filter.
pub fn write_suback(version: Version, pkid: u16, granted: &[SubCode], out: &mut BytesMut) {
    match version {
        Version::V4 => {
            let codes = granted
                .iter()
                .map(|&g| match g {
                    SubCode::Granted => v4::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce),
                    SubCode::Refused | SubCode::NotAuthorized => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            let _ = v4::SubAck::new(pkid, codes).write(out);
        }
        Version::V5 => {
            let return_codes = granted
                .iter()
                .map(|&g| match g {
                    SubCode::Granted => {
                        v5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtMostOnce)
                    }
                    SubCode::Refused => v5::SubscribeReasonCode::TopicFilterInvalid,
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                })
                .collect();
            let _ = v5::SubAck {
                pkid,
                return_codes,
                properties: None,
            }
            .write(out);
        }
    }
}

/// A QoS 0 PUBLISH to a local subscriber.
pub fn write_publish(
    version: Version,
    topic: &str,
    payload: Bytes,
    retain: bool,
    out: &mut BytesMut,
) {
    match version {
        Version::V4 => {
            let mut p = v4::Publish::new(topic, rumqttc::QoS::AtMostOnce, Vec::new());
            p.payload = payload;
            p.retain = retain;
            let _ = p.write(out);
        }
        Version::V5 => {
            let mut p = v5::Publish::new(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                Bytes::new(),
                None,
            );
            p.payload = payload;
            p.retain = retain;
            let _ = p.write(out);
        }
    }
}

pub fn write_unsuback(version: Version, pkid: u16, filters: usize, out: &mut BytesMut) {
    match version {
        Version::V4 => {
            let _ = v4::UnsubAck::new(pkid).write(out);
        }
        Version::V5 => {
            let _ = v5::UnsubAck {
                pkid,
                // Subscriptions end with the connection; UNSUBSCRIBE is not supported.
                reasons: vec![v5::UnsubAckReason::ImplementationSpecificError; filters],
                properties: None,
            }
            .write(out);
        }
    }
}

/// MQTT 5 only: tells the device why the server closes the connection.
pub fn write_disconnect(version: Version, reason: DisconnectReason, out: &mut BytesMut) {
    if version != Version::V5 {
        return;
    }
    let code = match reason {
        DisconnectReason::Malformed => v5::DisconnectReasonCode::MalformedPacket,
        DisconnectReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
        DisconnectReason::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
        DisconnectReason::SessionTakenOver => v5::DisconnectReasonCode::SessionTakenOver,
        DisconnectReason::ShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
        DisconnectReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
        DisconnectReason::TopicAliasInvalid => v5::DisconnectReasonCode::TopicAliasInvalid,
        DisconnectReason::QuotaExceeded => v5::DisconnectReasonCode::QuotaExceeded,
        DisconnectReason::NotAuthorized => v5::DisconnectReasonCode::NotAuthorized,
    };
    // With an empty property list rather than none: rumqttc 0.24's v5 reader (firmware-sim
    // and many devices) cannot parse a DISCONNECT of reason code alone and would see only
    // a reset connection, not why it was closed. Both forms are valid MQTT 5.
    // Fixed header, remaining length 2, the reason code, property length 0.
    out.extend_from_slice(&[0xE0, 0x02, code as u8, 0x00]);
}

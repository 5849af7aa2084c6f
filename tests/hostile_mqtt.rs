//! Hostile input on the device port: malformed MQTT packets written on raw sockets to the
//! real `tidegate` binary while a fleet of well-behaved turbines publishes beside them.
//!
//! Every hostile connection must be closed — with the MQTT 5 DISCONNECT reason code where
//! the protocol has one — and counted in `/metrics`; a good publish sent just before the bad
//! packet on the same connection is still acknowledged; the concurrent fleet sees every
//! reading acknowledged; and the journal holds exactly what was acknowledged. Complements
//! `tests/listener.rs` (in-process, one fault at a time) with the daemon as deployed.

mod common;

use std::time::Duration;

use common::metrics::scrape;
use common::{Fleet, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the gateway must do with a hostile connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Close the connection, writing nothing (before CONNECT, or MQTT 3.1.1).
    Closed,
    /// MQTT 5: DISCONNECT with this reason code, then close.
    Disconnect(u8),
    /// CONNACK with this (MQTT 3.1.1) return code, then close.
    ConnAck(u8),
}

struct Case {
    name: &'static str,
    /// Protocol level of the CONNECT sent first; `None` sends no CONNECT.
    connect: Option<u8>,
    /// The hostile bytes (after the CONNECT and a good QoS 1 publish, if connected).
    bytes: Vec<u8>,
    expect: Expect,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn connect(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.push(level);
    body.push(0x02); // clean session / clean start
    body.extend_from_slice(&30u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A PUBLISH of `topic` (raw bytes, so it may be invalid) at `qos`, with `props` (MQTT 5).
fn publish(level: u8, topic: &[u8], qos: u8, pkid: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if level == 5 {
        remaining_length(props.len(), &mut body);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// Reads until the gateway closes the connection (or 10 s pass: a failure).
async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Splits a byte stream into (first byte, body) packets.
fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let header = bytes[0];
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1);
        loop {
            let Some(b) = bytes.get(i) else { return out };
            len += (*b as usize & 0x7f) * mult;
            mult *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let Some(body) = bytes.get(i..i + len) else {
            return out;
        };
        out.push((header, body.to_vec()));
        bytes = &bytes[i + len..];
    }
    out
}

fn cases() -> Vec<Case> {
    let good_topic = b"turbines/hostile/telemetry";
    vec![
        Case {
            name: "PUBLISH before CONNECT",
            connect: None,
            bytes: publish(4, good_topic, 0, 0, &[], b"x"),
            expect: Expect::Closed,
        },
        Case {
            name: "CONNECT with a five-byte remaining length",
            connect: None,
            bytes: vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
            expect: Expect::Closed,
        },
        Case {
            name: "CONNECT of an unknown protocol level",
            connect: None,
            bytes: connect(7, "hostile-level"),
            expect: Expect::ConnAck(0x01),
        },
        Case {
            name: "garbage instead of CONNECT",
            connect: None,
            bytes: b"GET / HTTP/1.1\r\nHost: tidegate\r\n\r\n".to_vec(),
            expect: Expect::Closed,
        },
        Case {
            name: "MQTT 5: a second CONNECT",
            connect: Some(5),
            bytes: connect(5, "hostile-again"),
            expect: Expect::Disconnect(0x82),
        },
        Case {
            name: "MQTT 5: PUBLISH announcing 10 MiB (over mqtt.max_packet)",
            connect: Some(5),
            bytes: vec![0x30, 0x80, 0x80, 0x80, 0x05, 0x00],
            expect: Expect::Disconnect(0x95),
        },
        Case {
            name: "MQTT 5: a five-byte remaining length",
            connect: Some(5),
            bytes: vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
            expect: Expect::Disconnect(0x81),
        },
        Case {
            name: "MQTT 5: topic of invalid UTF-8",
            connect: Some(5),
            bytes: publish(5, b"turbines/\xff\xfe/x", 1, 7, &[], b"x"),
            expect: Expect::Disconnect(0x81),
        },
        Case {
            name: "MQTT 5: wildcard in a PUBLISH topic",
            connect: Some(5),
            bytes: publish(5, b"turbines/#", 1, 7, &[], b"x"),
            expect: Expect::Disconnect(0x82),
        },
        Case {
            name: "MQTT 5: QoS 3",
            connect: Some(5),
            bytes: {
                let mut p = publish(5, good_topic, 1, 7, &[], b"x");
                p[0] = 0x36;
                p
            },
            expect: Expect::Disconnect(0x81),
        },
        Case {
            name: "MQTT 5: topic alias that was never offered",
            connect: Some(5),
            bytes: publish(5, good_topic, 1, 7, &[0x23, 0x00, 0x01], b"x"),
            expect: Expect::Disconnect(0x94),
        },
        Case {
            name: "MQTT 5: topic length past the end of the packet",
            connect: Some(5),
            bytes: packet(0x32, &[0x00, 0x40, b'a', b'b']),
            expect: Expect::Disconnect(0x81),
        },
        Case {
            name: "MQTT 5: reserved packet type 0",
            connect: Some(5),
            bytes: vec![0x00, 0x00],
            expect: Expect::Disconnect(0x81),
        },
        Case {
            name: "MQTT 3.1.1: a second CONNECT",
            connect: Some(4),
            bytes: connect(4, "hostile-again"),
            expect: Expect::Closed,
        },
        Case {
            name: "MQTT 3.1.1: a five-byte remaining length",
            connect: Some(4),
            bytes: vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
            expect: Expect::Closed,
        },
        Case {
            name: "MQTT 3.1.1: topic of invalid UTF-8",
            connect: Some(4),
            bytes: publish(4, b"turbines/\xc3\x28", 1, 7, &[], b"x"),
            expect: Expect::Closed,
        },
    ]
}

/// Sum of the counters that count hostile packets and refused connections.
async fn hostile_counted(gw: &Gateway) -> u64 {
    let label = |s: &prometheus_parse::Sample, k: &str| s.labels.get(k).map(str::to_owned);
    scrape(gw)
        .await
        .samples
        .iter()
        .filter(|s| {
            (s.metric == "tidegate_readings_rejected_total"
                && label(s, "source").as_deref() == Some("mqtt")
                && label(s, "reason").as_deref() != Some("full"))
                || s.metric == "tidegate_mqtt_connections_refused_total"
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v as u64,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_their_own_connection_with_the_right_reason_and_lose_nothing()
{
    let mut gw = Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-hostile\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nmax_packet = \"64KiB\"\n",
            dir.join("journal").display()
        )
    });
    let addr = gw.mqtt_addr();
    let counted_before = hostile_counted(&gw).await;

    let fleet = Fleet::new(addr.clone(), 6)
        .window(10)
        .rate(200.0)
        .count(600)
        .spawn();

    let mut good_acked = 0u64;
    let mut failures = Vec::new();
    let all = cases();
    for (i, case) in all.iter().enumerate() {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let mut sent = Vec::new();
        let mut good_pkid = None;
        if let Some(level) = case.connect {
            s.write_all(&connect(level, &format!("hostile-{i}")))
                .await
                .expect("write CONNECT");
            // The CONNACK, before anything else is written.
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await.expect("CONNACK");
            assert_eq!(head[0], 0x20, "{}: CONNACK expected", case.name);
            let mut rest = vec![0u8; head[1] as usize];
            s.read_exact(&mut rest).await.expect("CONNACK body");
            // A good reading in the same write as the bad packet: it must still be
            // journaled and acknowledged (the readings before a bad packet are kept).
            good_pkid = Some(100 + i as u16);
            sent.extend(publish(
                level,
                format!("turbines/hostile-{i}/telemetry").as_bytes(),
                1,
                100 + i as u16,
                &[],
                b"{\"good\":true}",
            ));
        }
        sent.extend_from_slice(&case.bytes);
        s.write_all(&sent).await.expect("write hostile bytes");
        let (got, closed) = read_to_close(&mut s).await;
        let got = packets(&got);
        let outcome = if !closed {
            Err("connection left open".to_owned())
        } else {
            let acked = good_pkid.is_some_and(|pkid| {
                got.iter().any(|(h, b)| {
                    *h == 0x40 && b.len() >= 2 && u16::from_be_bytes([b[0], b[1]]) == pkid
                })
            });
            if good_pkid.is_some() && !acked {
                Err(format!(
                    "the good publish before it was not acknowledged: {got:?}"
                ))
            } else {
                if acked {
                    good_acked += 1;
                }
                let last = got.iter().rfind(|(h, _)| *h != 0x40);
                let seen = match last {
                    None => Expect::Closed,
                    Some((0xe0, body)) => Expect::Disconnect(body.first().copied().unwrap_or(0)),
                    Some((0x20, body)) => Expect::ConnAck(body.get(1).copied().unwrap_or(0)),
                    Some((h, _)) => {
                        failures.push(format!("{}: unexpected packet 0x{h:02x}", case.name));
                        continue;
                    }
                };
                if seen == case.expect {
                    Ok(())
                } else {
                    Err(format!("expected {:?}, got {seen:?}", case.expect))
                }
            }
        };
        match outcome {
            Ok(()) => eprintln!("ok: {} -> {:?}", case.name, case.expect),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }

    let report = fleet.await.unwrap().expect("fleet");
    assert!(
        failures.is_empty(),
        "hostile cases handled wrongly:\n{}\nlog:\n{}",
        failures.join("\n"),
        gw.log()
    );
    assert!(
        report.all_acked(),
        "the fleet beside the hostile connections was disturbed: {} unacknowledged\n{}",
        report.unacked(),
        gw.log()
    );
    // Every hostile packet or connection is counted (the truncated-CONNECT cases count as
    // refused connections, the rest as rejected packets).
    let counted = hostile_counted(&gw).await - counted_before;
    assert!(
        counted >= all.len() as u64,
        "{counted} counted for {} hostile connections",
        all.len()
    );
    // Nothing journaled is lost and nothing hostile got in: the journal holds exactly the
    // fleet's readings and the good publishes before each bad packet.
    let out = gw.command(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        status["records"].as_u64(),
        Some(report.acked() + good_acked),
        "journal holds every acknowledged reading and nothing else: {status}"
    );
    assert!(gw.is_running());
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
    eprintln!(
        "FAULT hostile-mqtt: {} hostile connections, {counted} counted; fleet acknowledged {} + {good_acked} good publishes, journaled {}, lost 0",
        all.len(),
        report.acked(),
        report.acked() + good_acked
    );
    gw.terminate();
}

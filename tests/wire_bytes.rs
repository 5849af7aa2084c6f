//! Wire bytes against real brokers: what a Kafka sink counts in `wire_sent` and
//! `wire_received` is exactly what a proxy between it and Tansu passes on, over every
//! connection rskafka opens (bootstrap, metadata, topic creation, tail reads, produce); an
//! MQTT sink's counts differ from a proxy's in front of Mosquitto by the connection's
//! CONNECT / CONNACK alone.
//!
//! Tansu advertises the proxy's port, so every connection goes through the proxy. The
//! proxy counts each direction on its own, as it reads, so a request is counted before
//! the cluster can answer it and the counts are exact once the sink's call returns.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::brokers::{free_port, retry_on_port_clash, tansu_behind};
use common::turbine_items::turbine_items;
use firmware_sim::PayloadFormat;
use tidegate::config::{Compression, MqttClientConfig, UpstreamConfig, UpstreamKind};
use tidegate::record::Item;
use tidegate::sinks::kafka::KafkaSink;
use tidegate::sinks::mqtt::MqttSink;
use tidegate::sinks::{attach_counters, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes the proxy read from each side.
#[derive(Debug, Default)]
struct Seen {
    to_cluster: AtomicU64,
    from_cluster: AtomicU64,
}

/// Passes each connection `listener` accepts on to `cluster`, counting both directions.
fn counting_proxy(listener: TcpListener, cluster: String) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (counts, cluster) = (counts.clone(), cluster.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(cluster).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::select! {
                    _ = relay(client_read, server_write, &counts.to_cluster) => {}
                    _ = relay(server_read, client_write, &counts.from_cluster) => {}
                }
            });
        }
    });
    seen
}

/// Copies `from` to `to` until either side closes, adding each chunk to `count` as read.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        count.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_bytes_are_what_a_proxy_between_sink_and_cluster_passes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The proxy's port is held from here on; only Tansu's own port can clash.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_port = listener.local_addr().expect("proxy address").port();
    let tansu = retry_on_port_clash(|| tansu_behind(free_port(), proxy_port, dir.path()));
    let seen = counting_proxy(listener, tansu.addr());

    let items = turbine_items(PayloadFormat::Json, 20, 2000);
    let values: u64 = items
        .iter()
        .map(|i| match i {
            Item::Reading(r) => r.reading.payload.len() as u64,
            Item::Gap(_) | Item::Thinned(_) => 0,
        })
        .sum();
    let mut sent = Vec::new();
    for codec in [Compression::None, Compression::Lz4] {
        let config = UpstreamConfig {
            brokers: vec![format!("127.0.0.1:{proxy_port}")],
            topic: format!("wire-{codec:?}").to_lowercase(),
            partitions: 3,
            compression_setting: Some(codec),
            ..UpstreamConfig::new("cluster", UpstreamKind::Kafka)
        };
        let mut sink = KafkaSink::new(&config, "gw-wire");
        let counters = attach_counters(&mut sink, Some(7));
        let before = (
            seen.to_cluster.load(Ordering::Relaxed),
            seen.from_cluster.load(Ordering::Relaxed),
        );
        for batch in items.chunks(500) {
            sink.send(batch).await.expect("batch delivered");
        }
        let codec_sent = counters.wire_sent.load(Ordering::Relaxed);
        let codec_received = counters.wire_received.load(Ordering::Relaxed);
        assert_eq!(
            codec_sent,
            seen.to_cluster.load(Ordering::Relaxed) - before.0,
            "{codec:?}: wire_sent is every byte the proxy passed to the cluster"
        );
        assert_eq!(
            codec_received,
            seen.from_cluster.load(Ordering::Relaxed) - before.1,
            "{codec:?}: wire_received is every byte the proxy passed back"
        );
        assert!(codec_received > 0, "{codec:?}: responses counted");
        eprintln!(
            "{codec:?}: {codec_sent} B sent, {codec_received} B received, {values} B of values"
        );
        sent.push(codec_sent);
    }
    assert!(
        sent[0] > values,
        "uncompressed, every value byte crosses the wire, and framing with it: {} B sent for {values} B of values",
        sent[0]
    );
    assert!(
        sent[1] < sent[0],
        "lz4 puts fewer bytes on the wire than none for JSON turbine readings: {} B vs {} B",
        sent[1],
        sent[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_sink_counts_every_publish_and_puback_byte_a_proxy_passes_on() {
    let broker = common::brokers::Mosquitto::start();
    let items = turbine_items(PayloadFormat::Json, 20, 2000);
    for protocol in [4, 5] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy_port = listener.local_addr().expect("proxy address").port();
        let seen = counting_proxy(listener, broker.addr());
        let config = UpstreamConfig {
            topic_prefix: "site/".into(),
            client: MqttClientConfig {
                protocol,
                ..MqttClientConfig::with_url(format!("mqtt://127.0.0.1:{proxy_port}"))
            },
            ..UpstreamConfig::new("cloud", UpstreamKind::Mqtt)
        };
        let mut sink = MqttSink::new(&config, "gw-wire").expect("sink");
        let counters = attach_counters(&mut sink, None);
        // What the sink does not count (CONNECT and CONNACK, see sinks::mqtt::wire) is
        // the same whatever the batch: the difference to the proxy's count stays put.
        let mut uncounted = Vec::new();
        for batch in [&items[..10], &items[10..1000]] {
            sink.send(batch).await.expect("batch delivered");
            uncounted.push((
                seen.to_cluster.load(Ordering::Relaxed)
                    - counters.wire_sent.load(Ordering::Relaxed),
                seen.from_cluster.load(Ordering::Relaxed)
                    - counters.wire_received.load(Ordering::Relaxed),
            ));
        }
        assert_eq!(
            uncounted[0], uncounted[1],
            "MQTT {protocol}: every PUBLISH and PUBACK byte of the second batch counted"
        );
        assert!(
            uncounted[0].0 < 100 && uncounted[0].1 < 100,
            "MQTT {protocol}: only the CONNECT / CONNACK uncounted: {:?}",
            uncounted[0]
        );
        let puback = if protocol == 5 { 5 } else { 4 };
        assert_eq!(
            counters.wire_received.load(Ordering::Relaxed),
            1000 * puback,
            "MQTT {protocol}: one {puback}-byte PUBACK per publish"
        );
    }
}

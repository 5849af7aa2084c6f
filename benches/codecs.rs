//! Bytes on the wire per reading for each Kafka codec: the measurement behind the default
//! codec of an upstream with a `bandwidth` (issue 14, "Bytes on the wire per reading for
//! each codec").
//!
//! A Kafka sink delivers the same firmware-sim readings (20 turbines, one reading a second
//! each) to a real Tansu on loopback, once per codec, payload form and batch size, and the
//! table shows its `wire_sent` per reading: produce requests as sent, so record batches after
//! compression with Kafka's framing (what `bandwidth` limits), and beside it `wire_received`
//! per reading (the responses, which a data `budget` counts too). Each run starts with one
//! reading of its own, so connecting, creating the topic and the tail read are left out of
//! the figures.
//!
//! `cargo bench --bench codecs`, or `cargo test --bench codecs` for an unoptimised build
//! (the bytes are the same; only the time differs). `TIDEGATE_BENCH_READINGS` (default
//! 20000) sets the readings per run, `TIDEGATE_TANSU_BIN` the broker. It prints figures and
//! asserts nothing.

use std::sync::atomic::Ordering;

use turbine_items::turbine_items;

#[path = "../tests/common/turbine_items.rs"]
mod turbine_items;

use firmware_sim::testbed::Tansu;
use firmware_sim::PayloadFormat;
use tidegate::config::{Compression, UpstreamConfig, UpstreamKind};
use tidegate::record::Item;
use tidegate::sinks::kafka::KafkaSink;
use tidegate::sinks::{attach_counters, Sink};

const DEVICES: usize = 20;
const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd,
    Compression::Gzip,
    Compression::Snappy,
];

/// Bytes sent and received per measured reading when `items` go to a new topic with
/// `codec`, `batch` readings per send.
async fn per_reading(
    broker: &str,
    topic: String,
    codec: Compression,
    batch: usize,
    items: &[Item],
) -> (f64, f64) {
    let config = UpstreamConfig {
        brokers: vec![broker.to_owned()],
        topic,
        compression_setting: Some(codec),
        max_batch: batch,
        ..UpstreamConfig::new("bench", UpstreamKind::Kafka)
    };
    let mut sink = KafkaSink::new(&config, "gw-bench");
    let counters = attach_counters(&mut sink, Some(1));
    let wire = || {
        (
            counters.wire_sent.load(Ordering::Relaxed),
            counters.wire_received.load(Ordering::Relaxed),
        )
    };
    sink.send(&items[..1])
        .await
        .expect("warm-up reading delivered");
    let before = wire();
    for chunk in items[1..].chunks(batch) {
        sink.send(chunk).await.expect("batch delivered");
    }
    let after = wire();
    let n = (items.len() - 1) as f64;
    (
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n,
    )
}

fn main() {
    let count: usize = std::env::var("TIDEGATE_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tansu = Tansu::start().expect("tansu starts");
    let broker = tansu.addr();
    let default_batch = UpstreamConfig::new("default", UpstreamKind::Kafka).max_batch;

    println!(
        "Kafka wire bytes per reading: {count} firmware-sim readings of {DEVICES} turbines per run, Tansu on loopback, 1 partition\n"
    );
    println!("| payload | batch | codec | sent B/reading | vs none | received B/reading |");
    println!("|---|---|---|---|---|---|");
    let mut winners = Vec::new();
    for format in [PayloadFormat::Json, PayloadFormat::Binary] {
        // One more than measured: the first warms the connection up.
        let items = turbine_items(format, DEVICES, count + 1);
        let payload: usize = items[1..]
            .iter()
            .filter_map(Item::as_reading)
            .map(|r| r.reading.payload.len())
            .sum();
        let payload = payload as f64 / count as f64;
        for batch in [default_batch, 200] {
            let mut rows = Vec::new();
            for codec in CODECS {
                let topic = format!("codecs-{format}-{batch}-{codec:?}").to_lowercase();
                let (sent, received) =
                    rt.block_on(per_reading(&broker, topic, codec, batch, &items));
                rows.push((codec, sent, received));
            }
            let none = rows[0].1;
            for (codec, sent, received) in &rows {
                println!(
                    "| {format} ({payload:.0} B) | {batch} | {codec:?} | {sent:.1} | {:.0} % | {received:.2} |",
                    sent / none * 100.0
                );
            }
            if let Some((codec, sent, _)) = rows[1..].iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
                winners.push(format!(
                    "{format}, batch {batch}: {codec:?} ({sent:.1} B/reading)"
                ));
            }
        }
    }
    println!("\nFewest bytes per reading among the codecs:");
    for w in winners {
        println!("- {w}");
    }
}

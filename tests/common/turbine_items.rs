//! firmware-sim turbine readings as the journal items a forwarder hands its sink, for the
//! tests and benchmarks that drive a sink on its own (`tests/wire_bytes.rs`,
//! `benches/codecs.rs`, which includes this file).

use firmware_sim::{PayloadFormat, Workload};
use tidegate::record::{Item, Reading, Record, SourceKind};

/// `count` readings of `devices` turbines in `format`, round robin, one second apart per
/// turbine, as journal items with sequence numbers from 1.
pub fn turbine_items(format: PayloadFormat, devices: usize, count: usize) -> Vec<Item> {
    let workload = Workload {
        devices,
        ..Workload::default()
    };
    let boot = 1_764_000_000_000;
    let mut turbines: Vec<_> = workload
        .device_numbers()
        .map(|n| workload.turbine(n, boot))
        .collect();
    (0..count)
        .map(|i| {
            let turbine = &mut turbines[i % devices];
            let ingest_ms = boot + (i / devices) as u64 * 1000;
            let mut payload = Vec::new();
            turbine.step(ingest_ms).encode(format, None, &mut payload);
            let reading = Reading {
                ingest_ms,
                source_kind: SourceKind::MqttListener,
                source: turbine.device().to_owned(),
                topic: firmware_sim::topic_for(turbine.device()),
                payload: payload.into(),
                qos: 1,
                retain: false,
            };
            Item::Reading(Record {
                seq: i as u64 + 1,
                reading,
            })
        })
        .collect()
}

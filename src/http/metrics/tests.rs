//! Tests of `/metrics`: names, types and labels as Prometheus parses them, and counters that move.

use super::*;
use crate::config::{JournalConfig, UpstreamConfig, UpstreamKind};
use crate::http::{UpstreamList, UpstreamSource};
use crate::journal::Journal;
use crate::record::{Reading, SourceKind};
use crate::telemetry::{add, ForwardCounters};
use std::sync::Arc;

fn reading(i: u64) -> Reading {
    Reading {
        ingest_ms: crate::journal::now_ms(),
        source_kind: SourceKind::MqttListener,
        source: "wt-0001".into(),
        topic: "turbines/wt-0001".into(),
        payload: bytes::Bytes::from(format!("{{\"n\":{i}}}")),
        qos: 1,
        retain: false,
    }
}

#[tokio::test]
async fn the_exposition_parses_and_reads_the_counters_the_stages_keep() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = JournalConfig {
        dir: dir.path().join("journal"),
        ..Default::default()
    };
    let (journal, writer) = Journal::open(&config, &["cluster".to_owned()]).expect("open");
    journal
        .append((1..=3).map(reading).collect())
        .await
        .expect("append");
    let counters = Arc::new(ForwardCounters::default());
    add(&counters.failures, 2);
    add(&counters.retries, 2);
    add(&counters.duplicates_skipped, 5);
    add(&counters.gap_markers_sent, 1);
    add(&counters.gap_readings, 7);
    let upstream = UpstreamConfig::new("cluster", UpstreamKind::Kafka);
    let sources = Arc::new(Sources {
        gateway: "gw-unit".into(),
        started_ms: 0,
        journal: journal.clone(),
        max_size: config.max_size.as_u64(),
        mqtt_listen: "127.0.0.1:1883".parse().expect("addr"),
        ingest: Arc::default(),
        upstreams: UpstreamList::new(UpstreamSource::list(
            &[upstream],
            &[("cluster".to_owned(), counters)],
        )),
        serial: Vec::new(),
        modbus: Vec::new(),
        subscriptions: Vec::new(),
        health: crate::health::Health::new(),
    });
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(DaemonCollector::new(Arc::downgrade(&sources))));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(value("tidegate_journal_appended_total"), 3.0);
    assert_eq!(value("tidegate_journal_records"), 3.0);
    assert_eq!(value("tidegate_upstream_backlog_records"), 3.0);
    assert_eq!(value("tidegate_upstream_send_failures_total"), 2.0);
    assert_eq!(value("tidegate_upstream_retries_total"), 2.0);
    assert_eq!(value("tidegate_upstream_duplicates_skipped_total"), 5.0);
    assert_eq!(value("tidegate_upstream_gap_markers_total"), 1.0);
    assert_eq!(value("tidegate_upstream_gap_readings_total"), 7.0);
    assert_eq!(value("tidegate_journal_refused_unwritable_total"), 0.0);
    assert_eq!(value("tidegate_journal_reopens_total"), 0.0);
    assert!(value("tidegate_upstream_oldest_unsent_age_seconds") >= 0.0);
    let commits = value("tidegate_journal_commits_total");
    assert!(commits >= 1.0);
    assert_eq!(value("tidegate_journal_commit_duration_seconds"), commits);
    assert_eq!(value("tidegate_healthy"), 1.0);

    // Once the listener has let go of the sources, a scrape is empty rather than
    // keeping the journal open.
    drop(sources);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");
    assert!(text.trim().is_empty(), "{text}");
    drop(journal);
    writer.join();
}

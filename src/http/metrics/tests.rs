//! Tests of `/metrics`: names, types and labels as Prometheus parses them, and counters that move.

use super::*;
use crate::config::{JournalConfig, UpstreamConfig, UpstreamKind};
use crate::http::{UpstreamList, UpstreamSource};
use crate::journal::Journal;
use crate::record::{Reading, SourceKind};
use crate::telemetry::{add, ForwardCounters};
use std::sync::atomic::Ordering::Relaxed;
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
    add(&counters.thinned_readings, 19);
    add(&counters.thinned_markers_sent, 2);
    add(&counters.wire_sent, 4096);
    add(&counters.wire_received, 512);
    // A second upstream on a constrained uplink: bandwidth, budget (spent), windows, and a
    // live lane, its counters set by hand.
    let cloud = Arc::new(ForwardCounters::default());
    let u = &cloud.uplink;
    u.bandwidth.store(65_536, Relaxed);
    u.budget_limit.store(1_000_000, Relaxed);
    u.budget_used.store(950_000, Relaxed);
    u.budget_backlog_limit.store(900_000, Relaxed);
    u.budget_spent.store(1, Relaxed);
    u.budget_period_end_ms.store(1_798_758_000_000, Relaxed);
    u.budget_exhaustion_ms.store(1_798_000_000_000, Relaxed);
    u.windows_configured.store(1, Relaxed);
    u.window_open.store(0, Relaxed);
    u.live_active.store(1, Relaxed);
    u.backlog_newest_ms
        .store(crate::journal::now_ms() - 60_000, Relaxed);
    add(&u.live_urgent_sent, 2);
    add(&u.live_skipped, 9);
    add(&cloud.wire_sent, 70_000);
    let live = Arc::new(ForwardCounters::default());
    add(&live.sent, 11);
    add(&live.wire_sent, 3_000);
    add(&live.wire_received, 100);
    u.live.set(live).expect("set once");
    u.live_configured
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let upstream = UpstreamConfig::new("cluster", UpstreamKind::Kafka);
    let cloud_config = UpstreamConfig::new("cloud", UpstreamKind::Mqtt);
    let sources = Arc::new(Sources {
        gateway: "gw-unit".into(),
        started_ms: 0,
        journal: journal.clone(),
        max_size: config.max_size.as_u64(),
        mqtt_listen: "127.0.0.1:1883".parse().expect("addr"),
        ingest: Arc::default(),
        upstreams: UpstreamList::new(UpstreamSource::list(
            &[upstream, cloud_config],
            &[
                ("cluster".to_owned(), counters),
                ("cloud".to_owned(), cloud),
            ],
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
    assert_eq!(value("tidegate_upstream_backlog_records"), 3.0); // cluster, listed first
    assert_eq!(value("tidegate_upstream_send_failures_total"), 2.0);
    assert_eq!(value("tidegate_upstream_retries_total"), 2.0);
    assert_eq!(value("tidegate_upstream_duplicates_skipped_total"), 5.0);
    assert_eq!(value("tidegate_upstream_gap_markers_total"), 1.0);
    assert_eq!(value("tidegate_upstream_gap_readings_total"), 7.0);
    assert_eq!(value("tidegate_upstream_thinned_readings_total"), 19.0);
    assert_eq!(value("tidegate_upstream_thinned_markers_total"), 2.0);
    assert_eq!(value("tidegate_journal_thinned_total"), 0.0);
    assert_eq!(value("tidegate_journal_refused_unwritable_total"), 0.0);
    assert_eq!(value("tidegate_journal_reopens_total"), 0.0);
    assert!(value("tidegate_upstream_oldest_unsent_age_seconds") >= 0.0);
    let commits = value("tidegate_journal_commits_total");
    assert!(commits >= 1.0);
    assert_eq!(value("tidegate_journal_commit_duration_seconds"), commits);
    assert_eq!(value("tidegate_healthy"), 1.0);

    // The uplink families, each only where its feature is set.
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
                _ => f64::NAN,
            })
    };
    let wire = "tidegate_upstream_wire_bytes_total";
    let received = "tidegate_upstream_wire_received_bytes_total";
    let cluster = [("upstream", "cluster"), ("lane", "backlog")];
    assert_eq!(sample(wire, &cluster), Some(4096.0));
    assert_eq!(sample(received, &cluster), Some(512.0));
    assert_eq!(
        sample(wire, &[("upstream", "cluster"), ("lane", "live")]),
        None
    );
    assert_eq!(
        sample(wire, &[("upstream", "cloud"), ("lane", "backlog")]),
        Some(70_000.0)
    );
    assert_eq!(
        sample(wire, &[("upstream", "cloud"), ("lane", "live")]),
        Some(3_000.0)
    );
    assert_eq!(
        sample(received, &[("upstream", "cloud"), ("lane", "live")]),
        Some(100.0)
    );
    let cloud = [("upstream", "cloud")];
    for (name, want) in [
        ("tidegate_upstream_bandwidth_bytes_per_second", 65_536.0),
        ("tidegate_upstream_live_readings_total", 11.0),
        ("tidegate_upstream_live_urgent_total", 2.0),
        ("tidegate_upstream_live_skipped_total", 9.0),
        ("tidegate_upstream_live_active", 1.0),
        ("tidegate_upstream_budget_bytes", 1_000_000.0),
        ("tidegate_upstream_budget_used_bytes", 950_000.0),
        ("tidegate_upstream_budget_left_bytes", 50_000.0),
        ("tidegate_upstream_budget_spent", 1.0),
        (
            "tidegate_upstream_budget_exhausted_at_seconds",
            1_798_000_000.0,
        ),
        ("tidegate_upstream_send_window_open", 0.0),
    ] {
        assert_eq!(sample(name, &cloud), Some(want), "{name} in:\n{text}");
        // No budget, window, bandwidth or live series for the unconstrained upstream.
        assert_eq!(sample(name, &[("upstream", "cluster")]), None, "{name}");
    }
    let age = "tidegate_upstream_newest_delivered_age_seconds";
    assert!(sample(age, &[("upstream", "cloud"), ("lane", "backlog")]).is_some_and(|a| a >= 60.0));
    assert_eq!(
        sample(age, &[("upstream", "cloud"), ("lane", "live")]),
        None,
        "nothing delivered live yet"
    );
    assert_eq!(sample(age, &[("upstream", "cluster")]), None);
    // Every family has its HELP and TYPE.
    for family in [
        "tidegate_upstream_wire_bytes_total",
        "tidegate_upstream_budget_spent",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} in:\n{text}"
        );
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
    // The spent budget is a warning, not a problem.
    assert_eq!(sources.warnings().len(), 1);
    assert!(
        sources.warnings()[0].starts_with("cloud: data budget spent: backlog paused until "),
        "{:?}",
        sources.warnings()
    );
    assert!(sources.check().is_ok());

    // Once the listener has let go of the sources, a scrape is empty rather than
    // keeping the journal open.
    drop(sources);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encodes");
    assert!(text.trim().is_empty(), "{text}");
    drop(journal);
    writer.join();
}

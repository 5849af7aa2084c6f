//! End to end, the real `tidegate` binary against a real Kafka-protocol broker (Tansu):
//!
//! - a restart resumes without sending again what the topic already holds (the Kafka sink's
//!   tail read), with the `tidegate-epoch` header on every record;
//! - readings `drop-oldest` removed before a dead upstream got them reach it as one explicit
//!   gap marker naming exactly the journal sequences it never received;
//! - readings `journal.max_age` removed before a dead upstream got them do the same, under
//!   the daemon's age-clock test hook;
//! - readings `on_full = "thin"` removed before a dead upstream got them are announced by
//!   thinned markers, never a gap, and a crash in the middle of the drain sends no reading
//!   twice.
//!
//! The crash loop (many SIGKILLs under load) is `tests/crash_loop.rs`; the sink's own
//! de-duplication tests (other gateways, other epochs, an empty topic, the bounded tail
//! read) are in `src/sinks/kafka/tests.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::metrics::scrape;
use common::{eventually, free_port, seq_of, status_json, wait_for_backlog, Fleet, Gateway, Tansu};
use firmware_sim::verify::{read_topic, KafkaReading};
use firmware_sim::CancellationToken;

/// Time allowed for the journal to drain into a broker that is up.
const DRAIN: Duration = Duration::from_secs(90);

fn config(mqtt_port: u16, dir: &Path, kafka_port: u16, topic: &str, journal: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-once\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n{journal}\n\
         [mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\nmax_packet = \"64KiB\"\n\
         [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka_port}\"]\n\
         topic = \"{topic}\"\npartitions = 3\nmax_batch = 200\nlinger = \"5ms\"\n\
         request_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n",
        dir.join("journal").display()
    )
}

/// The usual test fleet ([`Fleet`]) of `devices` turbines sending `count` readings each.
fn fleet(gw: &Gateway, devices: usize, count: u64) -> Fleet {
    Fleet::new(gw.mqtt_addr(), devices).count(count)
}

/// Offers ~2.4 MB (10 devices × 600 readings of 400 B) to the gateway's 1 MiB journal
/// while its cluster is down; every reading is acknowledged (the journal makes room).
/// Returns the fleet's report and `status --json` afterwards.
async fn overflow(gw: &Gateway) -> (firmware_sim::FleetReport, serde_json::Value) {
    let report = fleet(gw, 10, 600).payload_size(400).run().await;
    assert!(
        report.all_acked(),
        "a full journal makes room for every reading"
    );
    (report, status_json(gw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sends_nothing_the_topic_already_holds_and_every_record_names_its_epoch() {
    let tansu = Tansu::start();
    let mut gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, tansu.port(), "once", ""));
    let first = fleet(&gw, 6, 200).run().await;
    assert!(first.all_acked());
    wait_for_backlog(&gw, "cluster", 0).await;
    let epoch = status_json(&gw)["epoch"]
        .as_u64()
        .expect("status --json shows the journal's epoch");
    // A restart that finds its cursor at the end: the tail read confirms it, nothing is
    // sent again. (The crash loop covers a cursor behind the topic.)
    gw.restart();
    let second = fleet(&gw, 6, 100).run().await;
    assert!(second.all_acked());
    wait_for_backlog(&gw, "cluster", 0).await;
    assert_eq!(status_json(&gw)["epoch"].as_u64(), Some(epoch), "kept");

    let records = read_topic(&tansu.brokers(), "once").await.expect("read");
    let seqs: Vec<u64> = records.iter().map(seq_of).collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), distinct.len(), "no journal record twice");
    assert_eq!(distinct, (1..=6 * 300).collect(), "every journal record");
    let epoch_text = epoch.to_string();
    assert!(
        records
            .iter()
            .all(|r| r.header_str("tidegate-epoch") == Some(epoch_text.as_str())),
        "every record carries tidegate-epoch = {epoch}"
    );
    assert!(
        gw.log().contains("Read the topic's tail"),
        "the restart read the tail:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_dropped_before_a_dead_upstream_had_them_arrive_as_one_gap_marker_with_the_exact_range(
) {
    let kafka_port = free_port();
    let gw = Gateway::start_fresh(|mqtt, dir| {
        config(
            mqtt,
            dir,
            kafka_port,
            "gaps",
            // Stored as sent, so ~2.4 MB overflow the 1 MiB (compressed, they would fit).
            "max_size = \"1MiB\"\non_full = \"drop-oldest\"\ncompression = \"none\"",
        )
    });
    let (report, before) = overflow(&gw).await;
    let dropped = before["dropped_total"].as_u64().expect("dropped_total");
    let next_seq = before["next_seq"].as_u64().expect("next_seq");
    assert!(dropped > 0, "{before}");

    // The upstream comes back.
    let tansu = Tansu::start_on(kafka_port);
    wait_for_backlog(&gw, "cluster", 0).await;
    let records = read_topic(&tansu.brokers(), "gaps").await.expect("read");
    let markers: Vec<&KafkaReading> = records
        .iter()
        .filter(|r| r.header("tidegate-gap").is_some())
        .collect();
    assert_eq!(markers.len(), 1, "one gap, one marker");
    let marker = markers[0];
    let (first, last) = marker
        .range("tidegate-gap")
        .expect("tidegate-gap is first..last");
    assert_eq!(marker.key.as_deref(), Some(&b"$tidegate/gap"[..]));
    assert!(marker.payload.is_empty(), "a marker has an empty value");
    assert_eq!(seq_of(marker), last, "tidegate-seq of a marker is its last");
    assert_eq!(marker.header_str("tidegate-gateway"), Some("gw-once"));
    assert!(marker.header_str("tidegate-epoch").is_some());

    // Exact: the marker names precisely the journal sequences the topic never received.
    let delivered: BTreeSet<u64> = records
        .iter()
        .filter(|r| r.header("tidegate-gap").is_none())
        .map(seq_of)
        .collect();
    let never: Vec<u64> = (1..next_seq).filter(|s| !delivered.contains(s)).collect();
    assert_eq!(
        never,
        (first..=last).collect::<Vec<_>>(),
        "the gap marker's range is exactly what never arrived"
    );
    // A batch the forwarder had read before its readings were dropped is still delivered,
    // so the gap can be smaller than what the journal dropped, never larger.
    assert!(
        last - first < dropped,
        "gap {first}..{last}, dropped {dropped}"
    );

    println!(
        "gap: acknowledged {}, journal dropped {dropped}, delivered {} readings, gap marker {first}..{last} ({} readings)",
        report.acked(),
        delivered.len(),
        last - first + 1
    );
    // The verifier counts the marker apart, and the readings missing are the gap's.
    let v = firmware_sim::check(&records, &report);
    assert_eq!(
        (v.gap_markers, v.gap_readings),
        (1, last - first + 1),
        "{v}"
    );
    assert_eq!(v.missing(), last - first + 1, "{v}");
    assert_eq!(
        (v.unparseable, v.replays, v.out_of_order()),
        (0, 0, 0),
        "{v}"
    );

    // The operator sees it: the journal's total in status --json, the marker in the
    // upstream's counters.
    assert_eq!(status_json(&gw)["dropped_total"].as_u64(), Some(dropped));
    let m = scrape(&gw).await;
    let cluster = [("upstream", "cluster")];
    assert_eq!(
        (
            m.count("tidegate_upstream_gap_markers_total", &cluster),
            m.count("tidegate_upstream_gap_readings_total", &cluster)
        ),
        (1, last - first + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_past_max_age_before_a_dead_upstream_had_them_arrive_as_one_gap_marker_and_the_rest_follows(
) {
    let kafka_port = free_port();
    let shift_dir = tempfile::tempdir().expect("temp dir");
    let shift = shift_dir.path().join("age-shift-ms");
    let shift_env = shift.to_str().expect("UTF-8 temp path").to_owned();
    let gw = Gateway::start_fresh_with_env(
        &[("TIDEGATE_TEST_AGE_SHIFT_FILE", &shift_env)],
        |mqtt, dir| config(mqtt, dir, kafka_port, "aged", "max_age = \"1d\""),
    );
    // 400 readings with the cluster down.
    let old = fleet(&gw, 4, 100).run().await;
    assert!(old.all_acked());
    assert_eq!(status_json(&gw)["expired_total"].as_u64(), Some(0));

    // Two days later, for the age limit: the idle writer removes all of them by itself.
    std::fs::write(&shift, (2 * 24 * 3600 * 1000u64).to_string()).expect("write the shift");
    eventually(&gw, "the old readings expired", DRAIN, async || {
        let s = status_json(&gw);
        match (s["expired_total"].as_u64(), s["records"].as_u64()) {
            (Some(400), Some(0)) => Ok(()),
            other => Err(format!("expired_total, records = {other:?}")),
        }
    })
    .await;
    assert!(
        gw.log().contains("journal.max_age"),
        "the removal is logged:\n{}",
        gw.log()
    );

    // Back to today: 200 new readings stay; the cluster comes back.
    std::fs::remove_file(&shift).expect("remove the shift");
    let new = fleet(&gw, 4, 50).run().await;
    assert!(new.all_acked());
    let tansu = Tansu::start_on(kafka_port);
    wait_for_backlog(&gw, "cluster", 0).await;
    let records = read_topic(&tansu.brokers(), "aged").await.expect("read");
    let markers: Vec<&KafkaReading> = records
        .iter()
        .filter(|r| r.header("tidegate-gap").is_some())
        .collect();
    assert_eq!(markers.len(), 1, "one gap, one marker");
    let (first, last) = markers[0]
        .range("tidegate-gap")
        .expect("tidegate-gap is first..last");
    let delivered: BTreeSet<u64> = records
        .iter()
        .filter(|r| r.header("tidegate-gap").is_none())
        .map(seq_of)
        .collect();
    // Exact: the marker names precisely what never arrived, all of it expired readings
    // (a batch the forwarder had read before they expired is still delivered), and every
    // new reading arrives.
    let never: Vec<u64> = (1..=600).filter(|s| !delivered.contains(s)).collect();
    assert_eq!(never, (first..=last).collect::<Vec<_>>());
    assert!(last == 400 && first >= 1, "gap {first}..{last}");
    assert!((401..=600).all(|s| delivered.contains(&s)));
    println!(
        "max_age: 400 expired, gap marker {first}..{last}, {} readings delivered",
        delivered.len()
    );

    let m = scrape(&gw).await;
    assert_eq!(m.count("tidegate_journal_expired_total", &[]), 400);
    assert_eq!(m.count("tidegate_journal_dropped_full_total", &[]), 0);
    assert_eq!(
        m.count(
            "tidegate_upstream_gap_readings_total",
            &[("upstream", "cluster")]
        ),
        last - first + 1
    );
    assert_eq!(status_json(&gw)["expired_total"].as_u64(), Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinned_readings_reach_a_dead_upstream_as_thinned_markers_and_a_crash_mid_drain_sends_none_twice(
) {
    let kafka_port = free_port();
    let mut gw = Gateway::start_fresh(|mqtt, dir| {
        config(
            mqtt,
            dir,
            kafka_port,
            "thinned",
            "max_size = \"1MiB\"\non_full = \"thin\"\ncompression = \"none\"",
        ) + "bandwidth = \"32KiB\"\n" // a drain of seconds, so the crash falls inside it
    });
    let (report, before) = overflow(&gw).await;
    let thinned_total = before["thinned_total"].as_u64().expect("thinned_total");
    let next_seq = before["next_seq"].as_u64().expect("next_seq");
    assert!(thinned_total > 0, "{before}");
    assert_eq!(before["dropped_total"].as_u64(), Some(0), "{before}");
    let status = gw.command(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "thinned   {thinned_total} readings removed by on_full = \"thin\"; oldest"
        )),
        "{text}"
    );

    // The upstream comes back; the daemon is killed once the drain has begun.
    let tansu = Tansu::start_on(kafka_port);
    eventually(&gw, "the drain to begin", DRAIN, async || {
        let cursor = common::status::upstream(&status_json(&gw), "cluster")["cursor"]
            .as_u64()
            .unwrap_or(1);
        if cursor > 1 {
            Ok(())
        } else {
            Err(format!("cursor {cursor}"))
        }
    })
    .await;
    let cursor_at_crash = common::status::upstream(&status_json(&gw), "cluster")["cursor"]
        .as_u64()
        .unwrap_or(1);
    gw.restart();
    wait_for_backlog(&gw, "cluster", 0).await;

    let records = read_topic(&tansu.brokers(), "thinned").await.expect("read");
    assert!(
        records.iter().all(|r| r.header("tidegate-gap").is_none()),
        "thinning is no loss: no gap marker"
    );
    let (markers, readings): (Vec<&KafkaReading>, Vec<&KafkaReading>) = records
        .iter()
        .partition(|r| r.header("tidegate-thinned").is_some());
    assert!(!markers.is_empty());
    let mut announced = Vec::new();
    for m in &markers {
        let (first, last, factor) = m
            .thinned()
            .expect("a thinned marker names first..last and its factor");
        assert_eq!(m.key.as_deref(), Some(&b"$tidegate/thinned"[..]));
        assert!(m.payload.is_empty(), "a marker has an empty value");
        assert_eq!(seq_of(m), first, "tidegate-seq of a marker is its first");
        assert!(
            first <= last && factor >= 2,
            "{first}..{last} at 1/{factor}"
        );
        announced.push((first, last));
    }
    let seqs: Vec<u64> = readings.iter().map(|r| seq_of(r)).collect();
    let delivered: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(
        seqs.len(),
        delivered.len(),
        "no reading twice across the crash"
    );
    let unannounced: Vec<u64> = (1..next_seq)
        .filter(|s| !delivered.contains(s))
        .filter(|s| !announced.iter().any(|(a, b)| a <= s && s <= b))
        .collect();
    assert!(
        unannounced.is_empty(),
        "readings neither delivered nor announced as thinned: {unannounced:?}"
    );
    let never = next_seq - 1 - delivered.len() as u64;
    // A batch the forwarder had read before thinning reached it is still delivered whole,
    // so fewer readings may be absent than thinning removed, never more.
    assert!(
        never <= thinned_total,
        "{never} absent, {thinned_total} thinned"
    );
    println!(
        "thin: acknowledged {}, thinned_total {thinned_total}, delivered {} readings, {never} absent (all announced), {} thinned markers, crash at cursor {cursor_at_crash} of {next_seq}",
        report.acked(),
        delivered.len(),
        markers.len()
    );
    let v = firmware_sim::check(&records, &report);
    assert_eq!(
        (v.replays, v.duplicates(), v.out_of_order()),
        (0, 0, 0),
        "{v}"
    );
}

/// The forwarder itself, in process, over a real journal: the topic already holds journal
/// records 1..=200 of this gateway and epoch (a crash after Kafka stored them, before the
/// cursor moved), the cursor is at 1. The forwarder delivers 201..=300 and skips the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_whose_cursor_is_behind_the_topic_skips_what_is_there_and_delivers_the_rest() {
    use std::sync::Arc;
    use tidegate::config::{JournalConfig, UpstreamConfig, UpstreamKind};
    use tidegate::forward::Forwarder;
    use tidegate::journal::Journal;
    use tidegate::record::{Reading, SourceKind};
    use tidegate::sinks::kafka::KafkaSink;
    use tidegate::sinks::Sink;
    use tidegate::telemetry::{get, ForwardCounters};

    let tansu = Tansu::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let journal_config = JournalConfig {
        dir: dir.path().join("journal"),
        ..JournalConfig::default()
    };
    let (journal, writer) =
        Journal::open(&journal_config, &["cluster".to_owned()]).expect("journal opens");
    let readings: Vec<Reading> = (1..=300)
        .map(|i| Reading {
            ingest_ms: 1_764_000_000_000 + i,
            source_kind: SourceKind::MqttListener,
            source: format!("dev-{}", i % 7),
            topic: format!("turbines/dev-{}/telemetry", i % 7),
            payload: bytes::Bytes::from(format!("{{\"n\":{i}}}")),
            qos: 1,
            retain: false,
        })
        .collect();
    let appended = journal.append(readings).await.expect("append");
    assert_eq!((appended.first_seq, appended.accepted), (1, 300));
    let epoch = journal.epoch().expect("epoch").expect("set at open");

    let mut upstream = UpstreamConfig::new("cluster", UpstreamKind::Kafka);
    upstream.brokers = tansu.brokers();
    upstream.topic = "forwarder".into();
    upstream.partitions = 3;
    upstream.max_batch = 100;
    upstream.linger = Duration::from_millis(1);
    // Before the "crash": 1..=200 delivered by a sink of the same gateway and epoch.
    let mut before = KafkaSink::new(&upstream, "gw-fwd").with_epoch(epoch);
    let held: Vec<tidegate::record::Item> = journal
        .read_from(1, 200, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|r| r.expect("decodes").into())
        .collect();
    before.send(&held).await.expect("pre-produced");
    assert_eq!(journal.cursor("cluster").expect("cursor"), Some(1));

    let counters = Arc::new(ForwardCounters::default());
    let forwarder = Forwarder::new(
        upstream.clone(),
        journal.clone(),
        KafkaSink::new(&upstream, "gw-fwd"),
        counters.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(forwarder.run(stop.clone()));
    common::status::poll(DRAIN, async || {
        match journal.cursor("cluster").expect("cursor") {
            Some(301) => Ok(()),
            c => Err(format!("cursor at {c:?}")),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("forwarder stuck: {last}"));
    stop.cancel();
    task.await.expect("forwarder stops");
    assert_eq!(get(&counters.duplicates_skipped), 200);
    assert_eq!(
        get(&counters.sent),
        300,
        "skipped records count as delivered"
    );

    let records = read_topic(&tansu.brokers(), "forwarder")
        .await
        .expect("read");
    let mut seqs: Vec<u64> = records.iter().map(seq_of).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=300).collect::<Vec<_>>(),
        "each journal record once"
    );
    drop(journal);
    writer.join();
}

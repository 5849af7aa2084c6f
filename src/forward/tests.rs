//! Forwarder unit tests: what a batch read from a real journal holds after removals and
//! thinning (holes told apart, markers placed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::JournalConfig;
use crate::journal::retention::AgeClock;
use crate::journal::test_support::thin;
use crate::journal::ThinnedSpan;
use crate::record::{Gap, Reading, SourceKind, Thinned};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn reading_at(n: u64, ingest_ms: u64) -> Reading {
    Reading {
        ingest_ms,
        source_kind: SourceKind::MqttListener,
        source: "a".to_owned(),
        topic: "turbines/a/telemetry".to_owned(),
        payload: Bytes::from(format!("{{\"n\":{n}}}")),
        qos: 1,
        retain: false,
    }
}

async fn batch_of(journal: &Journal, upstream: &str, counters: &Arc<ForwardCounters>) -> Batch {
    let cursor = journal.cursor(upstream).unwrap().unwrap();
    read_batch(
        journal.clone(),
        upstream.to_owned(),
        counters.clone(),
        cursor,
        (1000, 1 << 20),
        (true, Arc::new(Mutex::new(Announced::default()))),
    )
    .await
    .expect("the journal reads")
}

#[tokio::test]
async fn readings_expired_by_max_age_reach_an_upstream_that_had_not_sent_them_as_a_gap_only() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000_000;
    let clock = AgeClock::manual(t0);
    let config = JournalConfig {
        dir: dir.path().to_owned(),
        max_age: Some(Duration::from_millis(DAY_MS)),
        ..JournalConfig::default()
    };
    let names = vec!["sent".to_owned(), "unsent".to_owned()];
    let (journal, writer) = Journal::open_with_clock(&config, &names, clock.clone()).unwrap();
    journal
        .append((1..=10).map(|n| reading_at(n, t0)).collect())
        .await
        .unwrap();
    journal.set_cursor("sent", 11).await.unwrap();

    clock.set(t0 + DAY_MS + 1);
    journal
        .append(vec![reading_at(11, t0 + DAY_MS + 1)])
        .await
        .unwrap();
    assert_eq!(journal.counters().expired.load(Ordering::Relaxed), 10);

    // The upstream that had not sent them gets a gap marker for exactly them, then the rest.
    let unsent = Arc::new(ForwardCounters::default());
    let (items, next) = batch_of(&journal, "unsent", &unsent).await;
    assert_eq!(next, 12);
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0],
        Item::Gap(Gap {
            first: 1,
            last: 10,
            ingest_ms: t0 + DAY_MS + 1,
        })
    );
    assert!(matches!(&items[1], Item::Reading(r) if r.seq == 11));
    assert_eq!(unsent.lost_to_drop_oldest.load(Ordering::Relaxed), 10);

    // The one that had sent them sees no gap, only what is new.
    let sent = Arc::new(ForwardCounters::default());
    let (items, next) = batch_of(&journal, "sent", &sent).await;
    assert_eq!(next, 12);
    assert!(matches!(&items[..], [Item::Reading(r)] if r.seq == 11));
    assert_eq!(sent.lost_to_drop_oldest.load(Ordering::Relaxed), 0);

    drop(journal);
    writer.join();
}

// ---------------------------------------------------------------------------------------
// Thinning: holes inside a span, and the markers announcing it
// ---------------------------------------------------------------------------------------

/// Ingest time of reading `n` in the journals below.
fn at_ms(n: u64) -> u64 {
    1_800_000_000_000 + n * 1000
}

/// A journal holding readings 1..=100 (upstream "up" at cursor 1), and its writer. One
/// record per value, so `thin` below can delete single readings.
async fn hundred() -> (tempfile::TempDir, Journal, crate::journal::WriterHandle) {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        dir: dir.path().to_owned(),
        compression: crate::config::JournalCompression::None,
        ..JournalConfig::default()
    };
    let (journal, writer) = Journal::open(&config, &["up".to_owned()]).unwrap();
    journal
        .append((1..=100).map(|n| reading_at(n, at_ms(n))).collect())
        .await
        .unwrap();
    (dir, journal, writer)
}

/// Thins `first..=last` of `journal` to one reading in `factor` (keeping `first`, `last`
/// and every `factor`-th after `first`), and returns the span.
fn thin_span(journal: &Journal, first: u64, last: u64, factor: u32) -> ThinnedSpan {
    let step = u64::from(factor);
    let gone: Vec<u64> = (first + 1..last)
        .filter(|s| (s - first) % step != 0)
        .collect();
    thin(journal, &gone, (first, last, factor)).unwrap()
}

/// What one forwarder run reads batch after batch.
struct Run {
    counters: Arc<ForwardCounters>,
    announced: Mutex<Announced>,
    markers: bool,
}

impl Run {
    fn new(markers: bool) -> Run {
        Run {
            counters: Arc::new(ForwardCounters::default()),
            announced: Mutex::new(Announced::default()),
            markers,
        }
    }

    /// The batch of at most `max` records at `cursor`, as the forwarder makes it.
    fn batch(&self, journal: &Journal, cursor: u64, max: usize) -> Batch {
        let read = journal.read_batch(cursor, max, 1 << 20).unwrap();
        batch_from(
            "up",
            &self.counters,
            cursor,
            read,
            (self.markers, &self.announced),
        )
    }

    fn thinned(&self) -> u64 {
        self.counters.thinned_readings.load(Ordering::Relaxed)
    }

    fn lost(&self) -> u64 {
        self.counters.lost_to_drop_oldest.load(Ordering::Relaxed)
    }
}

/// The batch as a compact list: `r5` a reading, `g3..4` a gap, `t5..60/2` a marker.
fn shape(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            Item::Reading(r) => format!("r{}", r.seq),
            Item::Gap(g) => format!("g{}..{}", g.first, g.last),
            Item::Thinned(t) => format!("t{}..{}/{}", t.first, t.last, t.factor),
        })
        .collect()
}

fn readings(seqs: impl IntoIterator<Item = u64>) -> Vec<String> {
    seqs.into_iter().map(|s| format!("r{s}")).collect()
}

fn marker_of(items: &[Item]) -> Vec<Thinned> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Thinned(t) => Some(*t),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_span_ahead_of_the_cursor_is_announced_in_front_of_its_first_reading_and_its_holes_are_not_loss(
) {
    let (_dir, journal, writer) = hundred().await;
    let span = thin_span(&journal, 21, 60, 2);
    assert_eq!((span.first_ms, span.last_ms), (at_ms(21), at_ms(60)));

    let run = Run::new(true);
    let (items, next) = run.batch(&journal, 1, 1000);
    assert_eq!(next, 101);
    let mut expected = readings(1..=20);
    expected.push("t21..60/2".to_owned());
    expected.extend(readings((21..=59).step_by(2)));
    expected.extend(readings(60..=100));
    assert_eq!(shape(&items), expected);
    assert_eq!(
        marker_of(&items)[0].ingest_ms,
        at_ms(21),
        "the marker has the time of the span's first reading"
    );
    assert!(
        items.windows(2).all(|w| w[0].position() < w[1].position()),
        "positions increase along the batch"
    );
    assert_eq!(run.thinned(), 19, "22, 24 … 58");
    assert_eq!(run.lost(), 0, "thinning is not counted as loss");

    // A sink that wants no markers gets the readings alone; the counting is the same.
    let quiet = Run::new(false);
    let (items, _) = quiet.batch(&journal, 1, 1000);
    assert!(items.iter().all(|i| i.as_reading().is_some()));
    assert_eq!((quiet.thinned(), quiet.lost()), (19, 0));

    drop(journal);
    writer.join();
}

#[tokio::test]
async fn a_span_behind_the_cursor_is_neither_announced_nor_counted() {
    let (_dir, journal, writer) = hundred().await;
    thin_span(&journal, 21, 60, 2);
    let run = Run::new(true);
    let (items, next) = run.batch(&journal, 61, 1000);
    assert_eq!(next, 101);
    assert_eq!(shape(&items), readings(61..=100));
    assert_eq!((run.thinned(), run.lost()), (0, 0));
    drop(journal);
    writer.join();
}

#[tokio::test]
async fn a_cursor_inside_a_span_has_it_announced_from_the_cursor_on() {
    let (_dir, journal, writer) = hundred().await;
    thin_span(&journal, 21, 60, 2);
    let run = Run::new(true);
    // 30 was thinned away: the hole between the cursor and reading 31 is thinning.
    let (items, next) = run.batch(&journal, 30, 1000);
    assert_eq!(next, 101);
    let mut expected = vec!["t30..60/2".to_owned()];
    expected.extend(readings((31..=59).step_by(2)));
    expected.extend(readings(60..=100));
    assert_eq!(shape(&items), expected);
    assert_eq!(marker_of(&items)[0].ingest_ms, at_ms(31));
    assert_eq!(run.thinned(), 15, "30, 32 … 58");
    assert_eq!(run.lost(), 0);
    drop(journal);
    writer.join();
}

#[tokio::test]
async fn a_batch_ending_mid_span_leaves_the_next_one_unannounced_until_the_run_restarts() {
    let (_dir, journal, writer) = hundred().await;
    thin_span(&journal, 21, 60, 2);
    let run = Run::new(true);
    // 20 readings, then 21, 23, 25, 27, 29.
    let (items, next) = run.batch(&journal, 1, 25);
    assert_eq!(next, 30);
    assert_eq!(marker_of(&items).len(), 1);
    assert_eq!(run.thinned(), 4, "22 … 28");
    // The next batch starts inside the span it was told about: no second marker.
    let (items, next) = run.batch(&journal, next, 1000);
    assert_eq!(next, 101);
    assert_eq!(shape(&items)[0], "r31");
    assert!(marker_of(&items).is_empty());
    assert_eq!(run.thinned(), 19, "every thinned reading counted once");

    // After a restart the run's memory is gone: the span is announced from the cursor.
    let restarted = Run::new(true);
    let (items, _) = restarted.batch(&journal, 30, 1000);
    assert_eq!(shape(&items)[..2], ["t30..60/2", "r31"]);
    drop(journal);
    writer.join();
}

#[tokio::test]
async fn a_real_gap_beside_a_span_stays_a_gap_and_the_span_is_not_one() {
    let (_dir, journal, writer) = hundred().await;
    thin_span(&journal, 21, 60, 2);
    // Readings 15..=20 removed whole (drop-oldest or max_age), right before the span.
    thin(&journal, &[15, 16, 17, 18, 19, 20], (21, 60, 2)).unwrap();
    let run = Run::new(true);
    let (items, _) = run.batch(&journal, 1, 1000);
    let mut expected = readings(1..=14);
    expected.extend(["g15..20".to_owned(), "t21..60/2".to_owned()]);
    expected.extend(readings((21..=59).step_by(2)));
    assert_eq!(shape(&items)[..expected.len()], expected[..]);
    assert_eq!(
        items[14],
        Item::Gap(Gap {
            first: 15,
            last: 20,
            ingest_ms: at_ms(21),
        })
    );
    assert!(items.windows(2).all(|w| w[0].position() < w[1].position()));
    assert_eq!((run.lost(), run.thinned()), (6, 19));
    drop(journal);
    writer.join();
}

#[tokio::test]
async fn two_spans_in_one_batch_are_announced_each_in_front_of_its_own_first_reading() {
    let (_dir, journal, writer) = hundred().await;
    thin_span(&journal, 21, 40, 4);
    thin_span(&journal, 41, 60, 2);
    let run = Run::new(true);
    let (items, next) = run.batch(&journal, 1, 1000);
    assert_eq!(next, 101);
    let mut expected = readings(1..=20);
    expected.push("t21..40/4".to_owned());
    expected.extend(readings([21, 25, 29, 33, 37, 40]));
    expected.push("t41..60/2".to_owned());
    expected.extend(readings((41..=59).step_by(2)));
    expected.extend(readings(60..=100));
    assert_eq!(shape(&items), expected);
    assert_eq!(run.thinned(), 14 + 9);
    assert_eq!(run.lost(), 0);
    drop(journal);
    writer.join();
}

#[test]
fn a_hole_across_a_span_edge_is_split_into_thinning_and_a_gap() {
    let span = ThinnedSpan {
        first: 10,
        last: 20,
        factor: 2,
        first_ms: 0,
        last_ms: 0,
    };
    assert_eq!(
        assemble::split_hole(5, 25, &[span]),
        vec![(5, 9, false), (10, 20, true), (21, 25, false)]
    );
    assert_eq!(assemble::split_hole(12, 14, &[span]), vec![(12, 14, true)]);
    assert_eq!(assemble::split_hole(1, 3, &[span]), vec![(1, 3, false)]);
}

/// A sink that records every batch it is handed, refusing the first `refuse` attempts.
struct Recorder {
    attempts: Arc<Mutex<Vec<Vec<Item>>>>,
    markers: bool,
    refuse: usize,
}

impl Sink for Recorder {
    async fn send(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        self.attempts
            .lock()
            .expect("not poisoned")
            .push(batch.to_vec());
        if self.refuse > 0 {
            self.refuse -= 1;
            return Err(SinkError::retryable("refused by the test"));
        }
        Ok(())
    }

    fn wants_gap_markers(&self) -> bool {
        self.markers
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_run_sends_one_marker_per_span_across_its_batches_and_retries() {
    let (_dir, journal, writer) = hundred().await;
    let span = thin_span(&journal, 21, 60, 2);
    assert_eq!(
        journal.read_batch(1, 1000, 1 << 20).unwrap().thinned,
        vec![span],
        "the journal keeps the span"
    );
    let mut config = UpstreamConfig::new("up", crate::config::UpstreamKind::Kafka);
    config.max_batch = 25;
    config.linger = Duration::ZERO;
    config.backoff_initial = Duration::from_millis(1);
    config.backoff_max = Duration::from_millis(5);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let counters = Arc::new(ForwardCounters::default());
    let sink = Recorder {
        attempts: attempts.clone(),
        markers: true,
        refuse: 1,
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Forwarder::new(config, journal.clone(), sink, counters.clone()).run(shutdown.clone()),
    );
    // Guard only: the run ends well before.
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal.cursor("up").unwrap() != Some(101) {
        assert!(Instant::now() < deadline, "the forwarder did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    run.await.unwrap();

    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts[0], attempts[1],
        "the refused batch is sent again as it was"
    );
    let delivered: Vec<Item> = attempts[1..].concat();
    let mut expected = readings(1..=20);
    expected.push("t21..60/2".to_owned());
    expected.extend(readings((21..=59).step_by(2)));
    expected.extend(readings(60..=100));
    assert_eq!(shape(&delivered), expected);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(get(&counters.thinned_markers_sent), 1);
    assert_eq!(get(&counters.thinned_readings), 19);
    assert_eq!(get(&counters.sent), 81, "readings only");
    assert_eq!(get(&counters.lost_to_drop_oldest), 0);
    drop(journal);
    writer.join();
}

/// A journal of ten devices (one record per value, `on_full = "thin"`) that the writer
/// thinned by itself while upstream "up" sent nothing.
async fn thinned_by_the_writer() -> (tempfile::TempDir, Journal, crate::journal::WriterHandle) {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        dir: dir.path().to_owned(),
        max_size: bytesize::ByteSize::kib(512),
        on_full: crate::config::OnFull::Thin,
        compression: crate::config::JournalCompression::None,
        ..JournalConfig::default()
    };
    let (journal, writer) = Journal::open(&config, &["up".to_owned()]).unwrap();
    // Ten devices, the upstream never sending, until the journal has thinned a while.
    let mut n = 0;
    while journal.counters().thinned.load(Ordering::Relaxed) < 20_000 {
        let round: Vec<Reading> = (n..n + 50)
            .flat_map(|n| {
                (0..10).map(move |d| {
                    let mut r = reading_at(n, at_ms(n));
                    r.topic = format!("turbines/wt-{d:02}/telemetry");
                    r.payload =
                        Bytes::from(format!("{{\"d\":{d},\"n\":{n},\"wind\":7.{}}}", n % 10));
                    r
                })
            })
            .collect();
        journal.append(round).await.unwrap();
        n += 50;
    }
    (dir, journal, writer)
}

#[tokio::test]
async fn after_the_writer_thins_every_hole_a_forwarder_reads_is_announced_and_none_is_a_gap() {
    let (_dir, journal, writer) = thinned_by_the_writer().await;
    let summary = journal.summary().unwrap();
    assert!(!summary.thinned.is_empty());
    assert_eq!(summary.dropped_total, 0, "thinning alone made room");

    // Read it all as one run would, in small batches.
    let run = Run::new(true);
    let mut cursor = 1;
    let mut items = Vec::new();
    loop {
        let (batch, next) = run.batch(&journal, cursor, 500);
        if batch.is_empty() {
            break;
        }
        items.extend(batch);
        cursor = next;
    }
    assert_eq!(run.lost(), 0, "no hole outside a span");
    assert_eq!(run.thinned(), summary.thinned_total);
    assert!(items.windows(2).all(|w| w[0].position() < w[1].position()));
    // Every hole between readings delivered lies in a range a marker announced before it.
    let markers = marker_of(&items);
    assert!(markers.len() >= summary.thinned.len());
    let mut last = 0;
    for r in items.iter().filter_map(Item::as_reading) {
        for missing in last + 1..r.seq {
            assert!(
                markers
                    .iter()
                    .any(|t| t.first <= missing && missing <= t.last),
                "seq {missing} is missing and no marker announced it"
            );
        }
        last = r.seq;
    }
    drop(journal);
    writer.join();
}

#[tokio::test]
async fn a_cursor_on_a_thinned_reading_after_the_front_was_trimmed_still_reads_thinning() {
    let (_dir, journal, writer) = thinned_by_the_writer().await;
    let span = journal.summary().unwrap().thinned[0];
    // A reading thinning removed, past the span's first: the upstream sent everything before
    // it, so the journal trims the front up to the next reading held.
    let held: Vec<u64> = journal
        .read_from(span.first, 1000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect();
    let cursor = held
        .windows(2)
        .find(|w| w[1] > w[0] + 1)
        .map(|w| w[0] + 1)
        .expect("the span has a hole");
    journal.set_cursor("up", cursor).await.unwrap();
    let front = journal.summary().unwrap().first_seq.unwrap();
    assert!(front > cursor, "the front was trimmed past the cursor");

    let run = Run::new(true);
    // One record: the only hole is the one from the cursor to the front.
    let (items, _) = run.batch(&journal, cursor, 1);
    assert_eq!(
        run.lost(),
        0,
        "the hole at the front is thinning, not a gap"
    );
    assert_eq!(run.thinned(), front - cursor);
    let Item::Thinned(t) = items[0] else {
        panic!(
            "the batch starts with a thinned marker: {:?}",
            shape(&items)
        )
    };
    assert_eq!(
        (t.first, t.last, t.factor),
        (cursor, span.last, span.factor)
    );
    drop(journal);
    writer.join();
}

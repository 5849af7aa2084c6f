//! Forwarder unit tests: what a batch read from a real journal holds after removals.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::JournalConfig;
use crate::journal::retention::AgeClock;
use crate::record::{Reading, SourceKind};

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
        true,
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

//! The journal with `compression = "zstd"`: readings in page-sized blocks.

use super::*;

fn zstd(dir: &Path) -> JournalConfig {
    JournalConfig {
        compression: JournalCompression::Zstd,
        ..config(dir)
    }
}

/// A turbine-like JSON reading of device `d`, its `n`th: the fields of a firmware-sim
/// reading, with measured values that vary as real ones do.
fn turbine(d: u64, n: u64) -> Reading {
    // A cheap hash for the noise, so runs are repeatable.
    let h = |salt: u64| {
        let mut x = (d << 32 | n) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 29)
    };
    let payload = format!(
        "{{\"device\":\"wt-{d:03}\",\"boot\":3,\"counter\":{n},\"ts\":{},\"wind\":{:.2},\"dir\":{},\"rpm\":{:.1},\"power\":{},\"temp\":{:.1},\"humidity\":{:.1},\"vibration\":{:.3}}}",
        1_700_000_000_000u64 + n * 1000 + h(1) % 50,
        4.0 + (h(2) % 900) as f64 / 100.0,
        h(3) % 360,
        10.0 + (h(4) % 80) as f64 / 10.0,
        900 + h(5) % 1200,
        18.0 + (h(6) % 90) as f64 / 10.0,
        40.0 + (h(7) % 500) as f64 / 10.0,
        (h(8) % 5000) as f64 / 1000.0,
    );
    Reading {
        ingest_ms: 1_700_000_000_000 + n * 1000 + d,
        source_kind: SourceKind::MqttListener,
        source: format!("wt-{d:03}"),
        topic: format!("turbines/wt-{d:03}/telemetry"),
        payload: Bytes::from(payload),
        qos: 1,
        retain: false,
    }
}

/// Journals `rounds` rounds of one reading from each of `devices` devices, `per_commit`
/// readings per append.
async fn fill(j: &Journal, devices: u64, rounds: u64, per_commit: usize) -> Vec<Reading> {
    let all: Vec<Reading> = (0..rounds)
        .flat_map(|n| (0..devices).map(move |d| turbine(d, n)))
        .collect();
    for chunk in all.chunks(per_commit) {
        let a = j.append(chunk.to_vec()).await.expect("append");
        assert_eq!(a.accepted, chunk.len());
    }
    all
}

#[tokio::test]
async fn readings_in_blocks_read_back_intact_from_any_seq_at_any_commit_size() {
    for per_commit in [1, 7, 500] {
        let dir = tempfile::tempdir().unwrap();
        let (j, w) = Journal::open(&zstd(dir.path()), &[]).unwrap();
        let sent = fill(&j, 10, 60, per_commit).await;
        let back = read_all(&j, 1);
        assert_eq!(back.len(), sent.len(), "commits of {per_commit}");
        for (i, (r, s)) in back.iter().zip(&sent).enumerate() {
            assert_eq!(r.seq, i as u64 + 1);
            assert_eq!(&r.reading, s);
        }
        // Reading from inside a block starts at the seq asked for.
        for from in [2, 57, 333, 600] {
            let got = j.read_from(from, 3, usize::MAX).unwrap();
            let seqs: Vec<u64> = got.into_iter().map(|r| r.unwrap().seq).collect();
            assert_eq!(
                seqs,
                vec![from, from + 1, from + 2]
                    .into_iter()
                    .filter(|s| *s <= 600)
                    .collect::<Vec<_>>()
            );
        }
        let s = j.summary().unwrap();
        assert_eq!(s.records, 600);
        assert_eq!((s.first_seq, s.last_seq), (Some(1), Some(600)));
        close(j, w);
        let report = cli::check(dir.path(), 0, |_| {}).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 600);
    }
}

#[tokio::test]
async fn blocks_hold_several_times_more_readings_per_byte_than_records() {
    let mut held = Vec::new();
    for compression in [JournalCompression::None, JournalCompression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            compression,
            ..config(dir.path())
        };
        let (j, w) = Journal::open(&cfg, &[]).unwrap();
        fill(&j, 20, 100, 1).await;
        held.push(j.summary().unwrap().bytes_held);
        close(j, w);
    }
    // The bench measures the real factor (docs/performance.md); here it must be large.
    assert!(
        held[0] > 4 * held[1],
        "none {} bytes, zstd {} bytes",
        held[0],
        held[1]
    );
}

#[tokio::test]
async fn the_open_tail_block_survives_a_reopen_and_takes_more_readings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = zstd(dir.path());
    let first = {
        let (j, w) = Journal::open(&cfg, &[]).unwrap();
        let sent = fill(&j, 3, 5, 1).await;
        close(j, w);
        sent
    };
    let (j, w) = Journal::open(&cfg, &[]).unwrap();
    let a = j.append(vec![turbine(9, 99)]).await.unwrap();
    assert_eq!(a.first_seq, 16);
    let back = read_all(&j, 1);
    assert_eq!(back.len(), 16);
    assert_eq!(
        back[..15].iter().map(|r| &r.reading).collect::<Vec<_>>(),
        first.iter().collect::<Vec<_>>()
    );
    assert_eq!(back[15].reading, turbine(9, 99));
    close(j, w);
    let report = cli::check(dir.path(), 0, |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_journal_of_records_takes_blocks_after_them_and_reads_both() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, w) = Journal::open(&config(dir.path()), &[]).unwrap();
        fill(&j, 2, 5, 3).await;
        close(j, w);
    }
    let (j, w) = Journal::open(&zstd(dir.path()), &[]).unwrap();
    j.append((5..10).map(|n| turbine(0, n)).collect())
        .await
        .unwrap();
    let back = read_all(&j, 1);
    assert_eq!(
        back.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=15).collect::<Vec<_>>()
    );
    assert_eq!(back[14].reading, turbine(0, 9));
    assert_eq!(j.summary().unwrap().records, 15);
    close(j, w);
    let report = cli::check(dir.path(), 0, |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn whole_blocks_are_trimmed_once_every_upstream_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = Journal::open(&zstd(dir.path()), &upstreams(&["k"])).unwrap();
    fill(&j, 10, 100, 50).await;
    let before = j.summary().unwrap();
    j.set_cursor("k", 500).await.unwrap();
    let after = j.summary().unwrap();
    let first = after.first_seq.unwrap();
    assert!(
        first > 1 && first <= 500,
        "the blocks below 500 went, the one holding it stays: first {first}"
    );
    assert_eq!(after.records, 1000 - (first - 1));
    assert_eq!(j.counters().trimmed.load(Ordering::Relaxed), first - 1);
    assert!(after.bytes_held < before.bytes_held);
    // What the upstream reads next is exactly from its cursor.
    assert_eq!(
        j.read_from(500, 1, usize::MAX).unwrap()[0]
            .as_ref()
            .unwrap()
            .seq,
        500
    );
    j.set_cursor("k", 1001).await.unwrap();
    let empty = j.summary().unwrap();
    assert_eq!((empty.records, empty.bytes_held), (0, 0));
    close(j, w);
}

#[tokio::test]
async fn drop_oldest_with_blocks_stays_under_max_size_and_counts_every_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open_with(dir.path(), &upstreams(&["k"]), |c| {
        c.compression = JournalCompression::Zstd;
        c.max_size = ByteSize::mib(1);
    });
    let total = 20 * 2000;
    fill(&j, 20, 2000, 97).await;
    check_dropped_oldest(&j, total, ByteSize::mib(1));
    close(j, w);
    let report = cli::check(dir.path(), 0, |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn reject_with_blocks_never_passes_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = open_with(dir.path(), &upstreams(&["k"]), |c| {
        c.compression = JournalCompression::Zstd;
        c.max_size = ByteSize::mib(1);
        c.on_full = OnFull::Reject;
    });
    let mut accepted = 0;
    for n in 0..3000 {
        let batch: Vec<Reading> = (0..20).map(|d| turbine(d, n)).collect();
        accepted += j.append(batch).await.unwrap().accepted as u64;
        assert!(j.counters().bytes_held.load(Ordering::Relaxed) <= ByteSize::mib(1).as_u64());
    }
    assert!(j.counters().rejected_full.load(Ordering::Relaxed) > 0);
    assert_eq!(read_all(&j, 0).len() as u64, accepted);
    close(j, w);
}

#[tokio::test]
async fn a_flipped_byte_in_a_block_is_named_by_journal_check_and_skipped_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = Journal::open(&zstd(dir.path()), &[]).unwrap();
    fill(&j, 10, 100, 100).await;
    // Flip one byte in the middle of the second block.
    let (key, count) = {
        let guard = j.watch.shared.store.read().unwrap();
        let store = guard.as_ref().unwrap();
        let mut txn = store.write_txn().unwrap();
        let (key, mut value) = {
            let mut iter = store.records.iter(&txn).unwrap();
            iter.next();
            let (k, v) = iter.next().unwrap().unwrap();
            (k, v.to_vec())
        };
        let count = block::info(key, &value).count;
        let at = value.len() / 2;
        value[at] ^= 0x01;
        store.put_value(&mut txn, key, &value).unwrap();
        txn.commit().unwrap();
        (key, count)
    };
    let read = j.read_from(1, usize::MAX, usize::MAX).unwrap();
    let bad: Vec<u64> = read
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.seq()))
        .collect();
    assert_eq!(bad, vec![key]);
    assert_eq!(
        read.iter().filter(|r| r.is_ok()).count() as u64,
        1000 - count
    );
    close(j, w);
    let report = cli::check(dir.path(), 0, |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].0, key);
    assert!(
        report.problems[0].1.contains(&format!("block {key}..=")),
        "{}",
        report.problems[0].1
    );
    assert!(
        report.problems[0].1.contains("checksum"),
        "{}",
        report.problems[0].1
    );
}

#[tokio::test]
async fn max_age_removes_a_block_once_its_newest_reading_is_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = AgeClock::manual(1_700_000_000_000);
    let cfg = JournalConfig {
        max_age: Some(Duration::from_secs(3600)),
        ..zstd(dir.path())
    };
    let (j, w) = Journal::open_with_clock(&cfg, &upstreams(&["k"]), clock.clone()).unwrap();
    // 2,000 readings one second apart, in commits of 100; then the clock moves to an hour
    // after the 1,001st.
    for c in 0..20u64 {
        let batch: Vec<Reading> = (0..100)
            .map(|i| reading_at(c * 100 + i + 1, 1_700_000_000_000 + (c * 100 + i) * 1000))
            .collect();
        j.append(batch).await.unwrap();
    }
    let cutoff = 1_700_000_000_000 + 1_000 * 1000 + 500;
    clock.set(cutoff + 3_600_000);
    j.append(vec![reading_at(2001, 1_700_000_000_000 + 2_001_000)])
        .await
        .unwrap();
    let s = j.summary().unwrap();
    let first = s.first_seq.unwrap();
    let expired = s.expired_total;
    assert!(expired > 0 && expired <= 1001, "expired {expired}");
    assert_eq!(first, expired + 1, "removed from the front, whole blocks");
    // Every block of readings past the limit went; the first block held has a reading
    // younger than the limit (and may hold older ones with it).
    let newest_of_first = {
        let guard = j.watch.shared.store.read().unwrap();
        let store = guard.as_ref().unwrap();
        let txn = store.read_txn().unwrap();
        let (key, value) = store.records.first(&txn).unwrap().unwrap();
        block::newest_ms(key, value).unwrap()
    };
    assert!(newest_of_first >= cutoff);
    assert!(read_all(&j, 0).iter().any(|r| r.seq == 1002));
    close(j, w);
}

#[tokio::test]
async fn readings_wait_as_single_records_until_a_page_sized_block_is_sealed_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = Journal::open(&zstd(dir.path()), &[]).unwrap();
    // One reading per commit, as devices that wait for each acknowledgement send them.
    let sent = fill(&j, 10, 60, 1).await;
    let (values, last_block) = {
        let guard = j.watch.shared.store.read().unwrap();
        let store = guard.as_ref().unwrap();
        let txn = store.read_txn().unwrap();
        let mut values = Vec::new();
        for item in store.records.iter(&txn).unwrap() {
            let (key, value) = item.unwrap();
            values.push((block::info(key, value), value.len()));
        }
        let last_block = values.iter().rposition(|(i, _)| i.block).unwrap();
        (values, last_block)
    };
    // Blocks, each within a page, then only the single records waiting at the tail.
    assert!(values[..=last_block]
        .iter()
        .all(|(i, len)| i.block && *len <= block::PAGE_FIT));
    let waiting: usize = values[last_block + 1..].iter().map(|(_, len)| len).sum();
    let in_blocks: u64 = values[..=last_block].iter().map(|(i, _)| i.count).sum();
    assert!(
        values.len() - last_block - 1 < 120,
        "{} waiting",
        values.len() - last_block - 1
    );
    assert!(
        waiting < 8 * block::PAGE_FIT,
        "{waiting} bytes waiting uncompressed"
    );
    assert!(in_blocks >= 500, "{in_blocks} of 600 readings in blocks");
    // Blocks are full: a handful of readings short of a page at most.
    let blocks = last_block as u64 + 1;
    assert!(
        in_blocks / blocks >= 40,
        "{} readings per block",
        in_blocks / blocks
    );
    let back = read_all(&j, 1);
    assert_eq!(back.len(), sent.len());
    for (i, (r, s)) in back.iter().zip(&sent).enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(&r.reading, s);
    }
    close(j, w);
    let report = cli::check(dir.path(), 0, |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

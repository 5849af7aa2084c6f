//! `on_full = "thin"`: the oldest history at a lower resolution instead of deleted.

use std::collections::HashMap;

use super::*;

/// Reading `n` of device `d`: telemetry, or an alarm every 50th.
fn sensor(d: u64, n: u64) -> Reading {
    let kind = if n % 50 == 25 { "alarm" } else { "telemetry" };
    let mut r = reading(&format!("wt-{d:02}"), n, 120);
    r.topic = format!("turbines/wt-{d:02}/{kind}");
    r.payload = Bytes::from(format!(
        "{{\"device\":\"wt-{d:02}\",\"n\":{n},\"wind\":{}.{},\"rpm\":{}}}",
        5 + (n * 7 + d) % 9,
        (n * 13) % 10,
        1000 + (n * 37 + d) % 500
    ));
    r
}

fn thinning(
    dir: &Path,
    compression: JournalCompression,
    max_factor: u32,
) -> (Journal, WriterHandle) {
    open_with(dir, &upstreams(&["k"]), |c| {
        c.compression = compression;
        c.max_size = ByteSize::mib(1);
        c.on_full = OnFull::Thin;
        c.keep_whole = vec!["turbines/+/alarm".to_owned()];
        c.thin_max_factor = max_factor;
    })
}

/// Offers rounds of one reading per device (10 devices, 10 rounds per append) until the
/// journal first thins, then `times - 1` times as many again; returns every reading offered
/// by seq (the upstream never sends, so seq = position + 1).
async fn offer(j: &Journal, times: u64) -> Vec<Reading> {
    let mut offered = Vec::new();
    let mut n = 0;
    let mut capacity = None;
    loop {
        let batch: Vec<Reading> = (n..n + 10)
            .flat_map(|n| (0..10).map(move |d| sensor(d, n)))
            .collect();
        n += 10;
        let a = j.append(batch.clone()).await.unwrap();
        assert_eq!(
            a.accepted,
            batch.len(),
            "thinning always takes new readings"
        );
        offered.extend(batch);
        let thinned = j.counters().thinned.load(Ordering::Relaxed);
        let dropped = j.counters().dropped_full.load(Ordering::Relaxed);
        if capacity.is_none() && thinned + dropped > 0 {
            capacity = Some(offered.len() as u64);
        }
        if capacity.is_some_and(|c| offered.len() as u64 >= c * times) {
            return offered;
        }
    }
}

/// Checks what every thinning run must give, and returns the largest factor held.
fn check_thinned(j: &Journal, offered: &[Reading]) -> u32 {
    let s = j.summary().unwrap();
    let held = read_all(j, 0);
    let dropped = s.dropped_total;
    assert!(s.bytes_held <= ByteSize::mib(1).as_u64());
    assert_eq!(held.len() as u64, s.records);
    assert_eq!(
        held.len() as u64 + s.thinned_total + dropped,
        offered.len() as u64,
        "every reading is held, thinned or dropped"
    );
    for r in &held {
        assert_eq!(r.reading, offered[r.seq as usize - 1], "seq {}", r.seq);
    }
    // Spans: ordered, disjoint, each starting and ending at a reading held.
    let seqs: std::collections::HashSet<u64> = held.iter().map(|r| r.seq).collect();
    for w in s.thinned.windows(2) {
        assert!(w[0].last < w[1].first, "{:?}", s.thinned);
    }
    for span in &s.thinned {
        assert!(
            seqs.contains(&span.first) && seqs.contains(&span.last),
            "{span:?}"
        );
        assert!(span.factor >= 2 && span.factor.is_power_of_two());
    }
    // Every reading missing after the first held lies in a span.
    let first = held[0].seq;
    for w in held.windows(2) {
        for missing in w[0].seq + 1..w[1].seq {
            assert!(
                s.thinned
                    .iter()
                    .any(|sp| sp.first < missing && missing < sp.last),
                "seq {missing} is missing outside every span {:?}",
                s.thinned
            );
        }
    }
    // Per topic, no hole wider than the factor of the span it lies in.
    let factor_at = |seq: u64| {
        s.thinned
            .iter()
            .find(|sp| sp.first <= seq && seq <= sp.last)
            .map_or(1, |sp| sp.factor)
    };
    // Each reading's place among its topic's readings offered.
    let mut counts: HashMap<&str, u64> = HashMap::new();
    let place: Vec<u64> = offered
        .iter()
        .map(|r| {
            let c = counts.entry(r.topic.as_str()).or_default();
            *c += 1;
            *c
        })
        .collect();
    let mut last_of: HashMap<&str, &Record> = HashMap::new();
    for r in &held {
        if let Some(prev) = last_of.insert(r.reading.topic.as_str(), r) {
            let step = place[r.seq as usize - 1] - place[prev.seq as usize - 1];
            let factor = factor_at(prev.seq).max(factor_at(r.seq)) as u64;
            assert!(
                step <= factor,
                "{}: a hole of {step} readings between seq {} and {} where the factor is {factor}",
                r.reading.topic,
                prev.seq,
                r.seq
            );
        }
    }
    // Every alarm held (all of those at or after the first held reading).
    let alarms = offered
        .iter()
        .enumerate()
        .filter(|(i, r)| *i as u64 + 1 >= first && r.topic.ends_with("/alarm"))
        .count();
    assert_eq!(
        held.iter()
            .filter(|r| r.reading.topic.ends_with("/alarm"))
            .count(),
        alarms,
        "keep_whole readings are never thinned"
    );
    s.thinned.iter().map(|sp| sp.factor).max().unwrap_or(1)
}

#[tokio::test]
async fn thinning_keeps_the_whole_history_at_a_lower_resolution_and_every_alarm() {
    for compression in [JournalCompression::Zstd, JournalCompression::None] {
        let dir = tempfile::tempdir().unwrap();
        let (j, w) = thinning(dir.path(), compression, 64);
        let offered = offer(&j, 3).await;
        let factor = check_thinned(&j, &offered);
        let s = j.summary().unwrap();
        assert_eq!(s.dropped_total, 0, "{compression}: 3x fits within 64x");
        assert!((2..=64).contains(&factor), "{compression}: factor {factor}");
        // The whole outage is still there: every device's first and last reading.
        let held = read_all(&j, 0);
        assert_eq!(held[0].seq, 1, "{compression}");
        for d in 0..10 {
            let topic = format!("turbines/wt-{d:02}/telemetry");
            assert!(held.iter().any(|r| r.reading.topic == topic && r.seq <= 10));
            let last = offered.iter().rposition(|r| r.topic == topic).unwrap() as u64 + 1;
            assert!(held.iter().any(|r| r.seq == last));
        }
        assert!(j.counters().thinned.load(Ordering::Relaxed) > 0);
        close(j, w);
        let report = cli::check(dir.path(), 0, |_| {}).unwrap();
        assert!(
            report.problems.is_empty(),
            "{compression}: {:?}",
            report.problems
        );
    }
}

#[tokio::test]
async fn past_the_max_factor_thinning_falls_back_to_dropping_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = thinning(dir.path(), JournalCompression::Zstd, 2);
    let offered = offer(&j, 5).await;
    let factor = check_thinned(&j, &offered);
    assert_eq!(factor, 2);
    let s = j.summary().unwrap();
    assert!(s.dropped_total > 0);
    assert!(s.first_seq.unwrap() > 1);
    close(j, w);
    let report = cli::check(dir.path(), 0, |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn spans_follow_the_front_as_the_upstream_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (j, w) = thinning(dir.path(), JournalCompression::Zstd, 64);
    offer(&j, 3).await;
    let spans = j.summary().unwrap().thinned;
    assert!(!spans.is_empty());
    // The upstream sends into the middle of the first span: the span now starts at the
    // first reading held and still ends where it did.
    let mid = (spans[0].first + spans[0].last) / 2;
    j.set_cursor("k", mid).await.unwrap();
    let after = j.summary().unwrap();
    let first = after.first_seq.unwrap();
    if first > spans[0].first {
        assert_eq!(after.thinned[0].first, first);
        assert_eq!(after.thinned[0].last, spans[0].last);
    }
    // Past every span: none is left.
    let last = spans.iter().map(|s| s.last).max().unwrap();
    j.set_cursor("k", last + 1).await.unwrap();
    assert!(j.summary().unwrap().thinned.iter().all(|s| s.first > last));
    close(j, w);
}

//! `on_full = "thin"`: making room by halving the resolution of the oldest history instead
//! of deleting it.
//!
//! A round takes a **chunk**: whole values from the front of the journal, all at one
//! factor below `journal.thin_max_factor` (1 outside every span), never this commit's own
//! readings nor the open block at the tail. Per topic it keeps the first and the last
//! reading of the chunk, every reading a `journal.keep_whole` filter matches, and every
//! other one of the rest; the kept readings are packed again and the chunk becomes a span
//! of twice the factor. Rounds repeat while the commit still needs room, so the oldest part
//! goes 2×, 4×, 8× … before newer history is touched; what the caller still needs once
//! every chunk is at the maximum it deletes from the front.
//!
//! Invariants kept: every hole thinning makes lies inside a span of `thinned`, spans do not
//! overlap (neighbours of equal factor are merged), and the readings of a span are whole
//! values (a chunk is whole values and its readings are packed into values of its own), so
//! a later round can take a span, or part of one, whole. A span's ends are sequence
//! numbers: where a round splits a span, each part ends where the other begins, so the
//! holes between them stay covered; at the front a span begins at the lowest cursor (see
//! `Store::fit_spans_to_front`).

use std::collections::HashMap;

use heed::RwTxn;

use super::block::{self, Entry};
use super::commit::Codec;
use super::store::{accounted_size, Store};
use super::ThinnedSpan;
use crate::config::{JournalCompression, JournalConfig};
use crate::mqtt_client::topics::filter_matches_topic;
use crate::record::Record;

/// Most rounds in one commit: bounds a commit's work when chunks free little.
const MAX_ROUNDS: usize = 16;

/// A chunk's size in stored bytes: at least this, so each topic has many readings in it...
const CHUNK_MIN: u64 = 64 * 1024;
/// ...and at most this, so a round decompresses and packs a bounded amount.
const CHUNK_MAX: u64 = 2 * 1024 * 1024;

/// What thinning did in one commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Thinned {
    /// Accounted bytes freed.
    pub(super) bytes: u64,
    /// Accounted bytes added by chunks whose readings, packed again, took more room than
    /// before (few removed from a chunk of partly filled blocks): counted so that
    /// `bytes_held` stays exact.
    pub(super) grown: u64,
    /// Readings removed.
    pub(super) removed: u64,
    /// The coarsest factor a chunk reached.
    pub(super) factor: u32,
}

/// Thins chunks of readings before `before` until `need` bytes are freed, or every chunk
/// is at `thin_max_factor`, or [`MAX_ROUNDS`] rounds ran.
pub(super) fn thin(
    store: &Store,
    txn: &mut RwTxn<'_>,
    config: &JournalConfig,
    codec: &mut Codec,
    need: u64,
    before: u64,
    held: u64,
) -> Result<Thinned, heed::Error> {
    let mut done = Thinned::default();
    let target = (held / 8)
        .max(need.saturating_mul(3))
        .clamp(CHUNK_MIN, CHUNK_MAX);
    for _ in 0..MAX_ROUNDS {
        if done.bytes >= need {
            break;
        }
        let Some(chunk) = choose(store, txn, config.thin_max_factor, before, target)? else {
            break;
        };
        let round = thin_chunk(store, txn, config, codec, &chunk)?;
        done.bytes += round.bytes;
        done.grown += round.grown;
        done.removed += round.removed;
        done.factor = done.factor.max(round.factor);
    }
    Ok(done)
}

/// The values a round thins.
struct Chunk {
    /// Keys of its values, in order.
    keys: Vec<u64>,
    /// Its factor now (1 outside every span).
    factor: u32,
    /// The span it lies in, if any.
    span: Option<ThinnedSpan>,
}

/// The first chunk from the front below `max_factor`, of about `target` stored bytes.
fn choose(
    store: &Store,
    txn: &RwTxn<'_>,
    max_factor: u32,
    before: u64,
    target: u64,
) -> Result<Option<Chunk>, heed::Error> {
    let spans = store.thinned_spans(txn, 0, u64::MAX)?;
    let span_of = |seq: u64| {
        spans
            .iter()
            .find(|s| s.first <= seq && seq <= s.last)
            .copied()
    };
    let tail = store.last_value(txn)?.map(|(key, _)| key);
    // Skip the front already at the maximum through the span table rather than value by
    // value: after a long outage it is most of the journal.
    let Some((mut start, _)) = store.records.first(txn)? else {
        return Ok(None);
    };
    while let Some(s) = span_of(start).filter(|s| s.factor >= max_factor) {
        start = s.last + 1;
    }
    let start = store.key_holding(txn, start)?;
    let mut chunk: Option<Chunk> = None;
    let mut bytes = 0;
    for item in store.records.range(txn, &(start..))? {
        let (key, value) = item?;
        let info = block::info(key, value);
        if Some(key) == tail || info.last >= before {
            break;
        }
        let span = span_of(key);
        let factor = span.map_or(1, |s| s.factor);
        match &mut chunk {
            None if factor >= max_factor => continue,
            None => {
                chunk = Some(Chunk {
                    keys: vec![key],
                    factor,
                    span,
                })
            }
            Some(c) => {
                if span.map(|s| s.first) != c.span.map(|s| s.first) {
                    break;
                }
                c.keys.push(key);
            }
        }
        bytes += accounted_size(value.len());
        if bytes >= target {
            break;
        }
    }
    Ok(chunk)
}

/// Thins one chunk: removes every other reading per topic, packs the rest, and records the
/// chunk as a span of twice its factor.
fn thin_chunk(
    store: &Store,
    txn: &mut RwTxn<'_>,
    config: &JournalConfig,
    codec: &mut Codec,
    chunk: &Chunk,
) -> Result<Thinned, heed::Error> {
    // Decode the chunk; a value that does not decode stays as it is, and the readings on
    // either side of it are packed apart so values stay in seq order.
    let mut segments: Vec<Vec<Record>> = vec![Vec::new()];
    let mut old_bytes = 0;
    let mut delete = Vec::new();
    for &key in &chunk.keys {
        let Some(value) = store.records.get(txn, &key)? else {
            continue;
        };
        let mut decoded = Vec::new();
        if block::decode(key, value, &mut decoded).is_err() {
            segments.push(Vec::new());
            continue;
        }
        old_bytes += accounted_size(value.len());
        delete.push(key);
        if let Some(last) = segments.last_mut() {
            last.extend(decoded);
        }
    }
    let all: Vec<&Record> = segments.iter().flatten().collect();
    let (Some(first), Some(last)) = (all.first().copied(), all.last().copied()) else {
        return Ok(Thinned::default());
    };
    let (first, last) = (
        (first.seq, first.reading.ingest_ms),
        (last.seq, last.reading.ingest_ms),
    );
    let keep = choose_kept(&all, &config.keep_whole);
    let removed = keep.iter().filter(|k| !**k).count() as u64;

    for key in delete {
        store.records.delete(txn, &key)?;
    }
    let mut new_bytes = 0;
    let mut kept = keep.into_iter();
    for segment in &segments {
        let records: Vec<&Record> = segment
            .iter()
            .filter(|_| kept.next().unwrap_or(true))
            .collect();
        if records.is_empty() {
            continue;
        }
        match config.compression {
            JournalCompression::Zstd => {
                let entries: Vec<Entry> = records
                    .iter()
                    .map(|r| Entry::new(r.seq, &r.reading))
                    .collect();
                for (key, value) in codec.packer.pack(&entries) {
                    new_bytes += accounted_size(value.len());
                    store.put_value(txn, key, &value)?;
                }
            }
            JournalCompression::None => {
                for r in records {
                    codec.buf.clear();
                    crate::record::encode_into(r.seq, &r.reading, &mut codec.buf);
                    new_bytes += accounted_size(codec.buf.len());
                    store.put_value(txn, r.seq, &codec.buf)?;
                }
            }
        }
    }

    // The chunk becomes a span of twice its factor; the parts of the span it lay in on
    // either side keep theirs. The parts are cut at sequence numbers, not at readings held,
    // so the holes an earlier round left between the chunk and its neighbours stay inside
    // a span.
    let factor = chunk.factor.saturating_mul(2);
    let mut new = ThinnedSpan {
        first: first.0,
        last: last.0,
        factor,
        first_ms: first.1,
        last_ms: last.1,
    };
    if let Some(span) = chunk.span {
        store.delete_span(txn, span.first)?;
        if span.first < first.0 {
            let last_ms = reading_before(store, txn, first.0)?.map_or(span.first_ms, |r| r.1);
            store.put_span(
                txn,
                &ThinnedSpan {
                    last: first.0 - 1,
                    last_ms,
                    ..span
                },
            )?;
        }
        if span.last > last.0 {
            let first_ms = reading_after(store, txn, last.0)?.map_or(span.last_ms, |r| r.1);
            store.put_span(
                txn,
                &ThinnedSpan {
                    first: last.0 + 1,
                    first_ms,
                    ..span
                },
            )?;
        }
    }
    // One span per run of equal factor: a span right before or after at the new factor is
    // merged in, so the table (and the markers upstreams get) stays short.
    if let Some(before) = new.first.checked_sub(1) {
        if let Some(prev) = store
            .thinned_spans(txn, before, before)?
            .into_iter()
            .find(|p| p.last == before && p.factor == factor)
        {
            store.delete_span(txn, prev.first)?;
            new.first = prev.first;
            new.first_ms = prev.first_ms;
        }
    }
    if let Some(next) = store
        .thinned_spans(txn, new.last + 1, new.last + 1)?
        .into_iter()
        .find(|n| n.first == new.last + 1 && n.factor == factor)
    {
        store.delete_span(txn, next.first)?;
        new.last = next.last;
        new.last_ms = next.last_ms;
    }
    store.put_span(txn, &new)?;
    Ok(Thinned {
        bytes: old_bytes.saturating_sub(new_bytes),
        grown: new_bytes.saturating_sub(old_bytes),
        removed,
        factor,
    })
}

/// Which readings of a chunk stay: per topic the first, the last and every other one, and
/// every reading `keep_whole` matches.
fn choose_kept(records: &[&Record], keep_whole: &[String]) -> Vec<bool> {
    let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        by_topic
            .entry(r.reading.topic.as_str())
            .or_default()
            .push(i);
    }
    let mut keep = vec![true; records.len()];
    for (topic, positions) in by_topic {
        if keep_whole.iter().any(|f| filter_matches_topic(f, topic)) {
            continue;
        }
        let n = positions.len();
        for (k, &i) in positions.iter().enumerate() {
            keep[i] = k % 2 == 0 || k + 1 == n;
        }
    }
    keep
}

/// The seq and ingest time of the last reading held before `seq`.
fn reading_before(
    store: &Store,
    txn: &RwTxn<'_>,
    seq: u64,
) -> Result<Option<(u64, u64)>, heed::Error> {
    let Some(item) = store.records.rev_range(txn, &(..seq))?.next() else {
        return Ok(None);
    };
    let (key, value) = item?;
    let mut decoded = Vec::new();
    Ok(block::decode(key, value, &mut decoded)
        .ok()
        .and_then(|()| decoded.last().map(|r| (r.seq, r.reading.ingest_ms))))
}

/// The seq and ingest time of the first reading held after `seq`.
fn reading_after(
    store: &Store,
    txn: &RwTxn<'_>,
    seq: u64,
) -> Result<Option<(u64, u64)>, heed::Error> {
    Ok(store
        .first_from(txn, seq + 1)?
        .and_then(|r| r.ok())
        .map(|r| (r.seq, r.reading.ingest_ms)))
}

//! One group's write transaction: cursor moves and trimming, the age limit (`max_age`,
//! when due), the size policy (`on_full`), then the appends in arrival order with re-sends
//! recognised, all committed and synced together. It keeps *durable before acknowledged*
//! by answering nothing itself: the writer answers from the [`Outcome`] only after the
//! commit returned, and a failed attempt is simply aborted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use heed::RoTxn;

use super::block::{self, Entry, Packer};
use super::retention::EXPIRE_MAX_RECORDS;
use super::sessions::{self, Sessions};
use super::store::{accounted_size, Meta, Removed, Store};
use super::thin;
use super::writer::PendingAppend;
use crate::config::{JournalCompression, JournalConfig, OnFull};
use crate::record;

/// The writer's reusable encoding state: a buffer for format-1 records and the block
/// packer with its zstd context.
pub(super) struct Codec {
    pub(super) buf: Vec<u8>,
    pub(super) packer: Packer,
}

impl Codec {
    pub(super) fn new(packer: Packer) -> Codec {
        Codec {
            buf: Vec::with_capacity(1 << 16),
            packer,
        }
    }
}

/// What one committed transaction did.
#[derive(Default)]
pub(super) struct Outcome {
    /// Per append request: (first seq, accepted count). Accepted counts the re-sends
    /// recognised as already journaled too (acknowledged, not appended).
    pub(super) appended: Vec<(u64, usize)>,
    /// Re-sent publishes recognised as already journaled.
    pub(super) duplicates: u64,
    pub(super) rejected: u64,
    pub(super) dropped: u64,
    pub(super) dropped_last: Option<u64>,
    pub(super) dropped_first: Option<u64>,
    pub(super) trimmed: u64,
    /// Readings removed by thinning, and the coarsest factor a span reached.
    pub(super) thinned: u64,
    pub(super) thin_factor: u32,
    pub(super) meta: Meta,
    pub(super) first_seq: Option<u64>,
    /// Readings removed for `max_age`, and the span they covered.
    pub(super) expired: u64,
    pub(super) expired_first: Option<u64>,
    pub(super) expired_last: Option<u64>,
    /// The age limit was checked (`Some`), and whether expired readings were left for the
    /// next commit ([`super::retention::EXPIRE_MAX_RECORDS`]).
    pub(super) expiry_more: Option<bool>,
    /// Cursors below the last dropped or expired record, i.e. upstreams that lost readings.
    pub(super) behind: Vec<String>,
    /// From opening the write transaction to the end of its commit and sync (`/metrics`).
    pub(super) took: Duration,
    /// Clients whose re-send memory this commit removed (past [`super::SESSION_TTL`]).
    pub(super) sessions_pruned: Option<usize>,
}

/// What a commit does beyond its requests.
pub(super) struct Extras {
    /// Apply `on_full` as if the journal were full (the disk is).
    pub(super) force_full: bool,
    /// Also prune re-send memories, as of this Unix time in seconds.
    pub(super) prune_sessions_at: Option<u32>,
    /// Also remove the readings ingested before this time, ms since the Unix epoch
    /// (`journal.max_age`).
    pub(super) expire_before_ms: Option<u64>,
}

/// Accounts for `removed` in `meta` and adds the upstreams that had not sent all of it to
/// `behind`: their cursor now points before the first record held, which their forwarder
/// turns into a gap marker.
fn account_removed(
    store: &Store,
    txn: &RoTxn<'_>,
    upstreams: &[String],
    removed: &Removed,
    meta: &mut Meta,
    behind: &mut Vec<String>,
) -> Result<(), heed::Error> {
    meta.bytes_held = meta.bytes_held.saturating_sub(removed.bytes);
    meta.readings_held = meta.readings_held.saturating_sub(removed.count);
    for name in upstreams {
        if store.cursors.get(txn, name)?.unwrap_or(0) <= removed.last && !behind.contains(name) {
            behind.push(name.clone());
        }
    }
    Ok(())
}

/// Builds and commits one transaction for `appends` and the cursor moves `cursors`.
pub(super) fn commit(
    store: &Store,
    config: &JournalConfig,
    upstreams: &[String],
    codec: &mut Codec,
    appends: &[PendingAppend],
    cursors: &[(String, u64)],
    extras: Extras,
) -> Result<Outcome, heed::Error> {
    let Extras {
        force_full,
        prune_sessions_at,
        expire_before_ms,
    } = extras;
    let started = Instant::now();
    let mut txn = store.write_txn()?;
    let mut meta = store.meta(&txn)?;
    let mut out = Outcome::default();
    // Whether readings left the front (the thinned spans are then fitted to it).
    let mut front_moved = false;

    // Cursor moves first: what they free is available to this commit's readings.
    for (upstream, next_seq) in cursors {
        let old = store.cursors.get(&txn, upstream)?.unwrap_or(0);
        if *next_seq > old {
            store
                .cursors
                .put(&mut txn, upstream, &(*next_seq).min(meta.next_seq))?;
        }
    }
    if !upstreams.is_empty() && !cursors.is_empty() {
        let mut min = u64::MAX;
        for name in upstreams {
            min = min.min(store.cursors.get(&txn, name)?.unwrap_or(0));
        }
        let trimmed = store.remove_front(&mut txn, |v, _| v.last < min)?;
        out.trimmed = trimmed.count;
        meta.bytes_held = meta.bytes_held.saturating_sub(trimmed.bytes);
        meta.readings_held = meta.readings_held.saturating_sub(trimmed.count);
        front_moved |= trimmed.count > 0;
    }

    // Age limit: from the front, as drop-oldest, a bounded span per commit.
    if let Some(cutoff) = expire_before_ms {
        let (end, more) = store.expired_end(&txn, cutoff, EXPIRE_MAX_RECORDS)?;
        if let Some(end) = end {
            let removed = store.remove_front(&mut txn, |v, _| v.last < end)?;
            if removed.count > 0 {
                front_moved = true;
                account_removed(store, &txn, upstreams, &removed, &mut meta, &mut out.behind)?;
                meta.expired_total += removed.count;
                out.expired = removed.count;
                out.expired_first = Some(removed.first);
                out.expired_last = Some(removed.last);
            }
        }
        out.expiry_more = Some(more);
    }

    // Size policy. What this commit's readings will take is estimated before they are
    // stored: their format-1 size, times the ratio recent blocks showed when compressing
    // (corrected after the appends below). Under `reject` the estimate is the format-1
    // size, which a block never exceeds by more than its header, so the cap holds.
    let limit = config.journal_max();
    let compress = config.compression == JournalCompression::Zstd;
    let sizes: Vec<u64> = appends
        .iter()
        .flat_map(|a| a.readings.iter().map(|r| accounted_size(r.encoded_len())))
        .collect();
    let raw_incoming: u64 = sizes.iter().sum();
    let ratio = if compress { codec.packer.ratio } else { 1.0 };
    let estimate = |raw: u64| (raw as f64 * ratio).ceil() as u64;
    let incoming = estimate(raw_incoming);
    let mut budget = u64::MAX; // format-1 bytes of readings this commit may accept
    match config.on_full {
        OnFull::DropOldest | OnFull::Thin => {
            let mut need = (meta.bytes_held + incoming).saturating_sub(limit);
            if force_full {
                need = need.max(meta.bytes_held / 8 + incoming);
            }
            if need > 0 {
                make_room(
                    store,
                    &mut txn,
                    config,
                    codec,
                    upstreams,
                    need,
                    u64::MAX,
                    &mut meta,
                    &mut out,
                )?;
                front_moved = true;
                let room = limit.saturating_sub(meta.bytes_held) as f64;
                budget = (room / ratio.max(0.01)) as u64;
            }
        }
        OnFull::Reject => {
            budget = if force_full {
                0
            } else {
                limit
                    .saturating_sub(meta.bytes_held)
                    .saturating_sub(if compress { block::HEADER as u64 } else { 0 })
            };
        }
    }

    // Appends, in arrival order; once one reading does not fit, none after it is taken,
    // so a device never has a later reading accepted after an earlier one was refused.
    // A fenced input that had a reading refused (now or in an earlier commit) gets
    // nothing more in, so its order survives the refusal.
    let mut sizes = sizes.into_iter();
    let mut full = false;
    let mut fenced_now: HashSet<usize> = HashSet::new();
    let mut sessions = Sessions::default();
    let mut entries: Vec<Entry> = Vec::new();
    let first_new = meta.next_seq;
    for a in appends {
        let first = meta.next_seq;
        let mut accepted = 0;
        let fenced = a
            .fence
            .as_ref()
            .is_some_and(|f| f.is_closed() || fenced_now.contains(&f.id()));
        for (i, r) in a.readings.iter().enumerate() {
            let size = sizes.next().unwrap_or(0);
            let packet = a.packets.get(i).copied().flatten();
            if let Some(p) = packet.filter(|p| p.dup && !fenced && !full) {
                if sessions.holds(store, &txn, r, p.pkid)? {
                    // Journaled before; its PUBACK was lost. Acknowledge it again.
                    out.duplicates += 1;
                    accepted += 1;
                    continue;
                }
            }
            if fenced {
                out.rejected += 1;
                continue;
            }
            if full || size > budget {
                full = true;
                out.rejected += 1;
                if let Some(f) = &a.fence {
                    fenced_now.insert(f.id());
                }
                continue;
            }
            budget -= size;
            if compress {
                entries.push(Entry::new(meta.next_seq, r));
            } else {
                codec.buf.clear();
                record::encode_into(meta.next_seq, r, &mut codec.buf);
                store.append(&mut txn, meta.next_seq, &codec.buf)?;
                meta.bytes_held += size;
            }
            meta.next_seq += 1;
            meta.readings_held += 1;
            accepted += 1;
            if let Some(p) = packet {
                sessions.remember(store, &txn, r, p.pkid)?;
            }
        }
        out.appended.push((first, accepted));
    }
    if !entries.is_empty() {
        store_blocks(store, &mut txn, codec, entries, &mut meta)?;
        // The estimate was low: make the rest of the room now, from readings older than
        // this commit's.
        if meta.bytes_held > limit && config.on_full != OnFull::Reject {
            let need = meta.bytes_held - limit;
            make_room(
                store, &mut txn, config, codec, upstreams, need, first_new, &mut meta, &mut out,
            )?;
            front_moved = true;
        }
    }
    if front_moved {
        // Below the lowest cursor everything was delivered; past what drop-oldest or the
        // age limit removed, a hole at the front is thinning (see `fit_spans_to_front`).
        let mut keep_from = u64::MAX;
        for name in upstreams {
            keep_from = keep_from.min(store.cursors.get(&txn, name)?.unwrap_or(0));
        }
        if let Some(lost) = out.dropped_last.max(out.expired_last) {
            keep_from = keep_from.max(lost + 1);
        }
        store.fit_spans_to_front(&mut txn, keep_from)?;
    }
    sessions.store(
        store,
        &mut txn,
        prune_sessions_at.unwrap_or_else(sessions::now_secs),
    )?;
    if let Some(now) = prune_sessions_at {
        out.sessions_pruned = Some(sessions::prune_sessions(
            store,
            &mut txn,
            now,
            super::SESSION_TTL.as_secs(),
        )?);
    }
    store.put_meta(&mut txn, meta)?;
    out.first_seq = store.bounds(&txn)?.map(|b| b.0);
    out.meta = meta;
    txn.commit()?;
    out.took = started.elapsed();
    Ok(out)
}

/// Frees at least `need` accounted bytes from readings before `before`: by thinning under
/// `on_full = "thin"` while some of them are above `thin_max_factor`, and by deleting the
/// oldest for the rest.
#[allow(clippy::too_many_arguments)]
fn make_room(
    store: &Store,
    txn: &mut heed::RwTxn<'_>,
    config: &JournalConfig,
    codec: &mut Codec,
    upstreams: &[String],
    need: u64,
    before: u64,
    meta: &mut Meta,
    out: &mut Outcome,
) -> Result<(), heed::Error> {
    let mut freed = 0;
    if config.on_full == OnFull::Thin {
        let thinned = thin::thin(store, txn, config, codec, need, before, meta.bytes_held)?;
        freed = thinned.bytes;
        meta.bytes_held = (meta.bytes_held + thinned.grown).saturating_sub(thinned.bytes);
        meta.readings_held = meta.readings_held.saturating_sub(thinned.removed);
        meta.thinned_total += thinned.removed;
        out.thinned += thinned.removed;
        out.thin_factor = out.thin_factor.max(thinned.factor);
    }
    if freed >= need {
        return Ok(());
    }
    let rest = need - freed;
    let removed = store.remove_front(txn, |v, bytes| bytes < rest && v.last < before)?;
    if removed.count > 0 {
        account_removed(store, txn, upstreams, &removed, meta, &mut out.behind)?;
        meta.dropped_total += removed.count;
        out.dropped += removed.count;
        out.dropped_last = Some(removed.last);
        out.dropped_first = out.dropped_first.or(Some(removed.first));
    }
    Ok(())
}

/// Stores `entries` (this commit's readings, in seq order) compressed. Readings wait at the
/// tail as single records (format 1, uncompressed) until the run of them holds a block's
/// worth ([`Packer::seal_target`]); then full blocks are sealed off the run's front, each
/// replacing the single records it holds, in the same transaction. So each reading is
/// compressed about once whatever the commit size (rewriting an open block at the tail
/// instead compressed it again with every commit: at one reading per commit, nearly half
/// of a commit's instructions), blocks stay page-sized, and at most a block's worth of
/// readings is held uncompressed.
fn store_blocks(
    store: &Store,
    txn: &mut heed::RwTxn<'_>,
    codec: &mut Codec,
    entries: Vec<Entry>,
    meta: &mut Meta,
) -> Result<(), heed::Error> {
    let target = codec.packer.seal_target();
    let new_raw: usize = entries.iter().map(Entry::raw_len).sum();
    let run = store.trailing_singles(txn, target.saturating_mul(2))?;
    let run_raw: usize = run.iter().map(|(_, len)| len.saturating_sub(3)).sum();
    if run_raw + new_raw < target {
        return store_singles(store, txn, &mut codec.buf, &entries, meta);
    }
    // Seal: the waiting readings (oldest first) and this commit's, cut into full blocks.
    // A waiting record that does not decode stays as it is (`journal check` names it);
    // only the readings after it are sealed.
    let mut all: Vec<Entry> = Vec::new();
    let mut stored_len = std::collections::HashMap::new();
    for &(key, len) in run.iter().rev() {
        let value = store.records.get(txn, &key)?.unwrap_or_default();
        match block::entries(key, value) {
            Ok(mut e) => {
                all.append(&mut e);
                stored_len.insert(key, len);
            }
            Err(_) => {
                all.clear();
                stored_len.clear();
            }
        }
    }
    all.extend(entries);
    let mut pos = 0;
    let mut rest: usize = all.iter().map(Entry::raw_len).sum();
    while pos < all.len() && rest >= target {
        let (n, value) = codec.packer.fill(&all[pos..]);
        let sealed = &all[pos..pos + n];
        let key = sealed[0].seq;
        let mut raw_stored = 0;
        for e in sealed {
            raw_stored += accounted_size(e.fields.len() + 5);
            if let Some(len) = stored_len.get(&e.seq) {
                meta.bytes_held = meta.bytes_held.saturating_sub(accounted_size(*len));
                if e.seq != key {
                    store.delete_value(txn, e.seq)?;
                }
            }
        }
        if stored_len.contains_key(&key) {
            store.put_value(txn, key, &value)?;
        } else {
            store.append(txn, key, &value)?;
        }
        let stored = accounted_size(value.len());
        meta.bytes_held += stored;
        codec.packer.observe(raw_stored, stored);
        rest -= sealed.iter().map(Entry::raw_len).sum::<usize>();
        pos += n;
    }
    let unsealed: Vec<Entry> = all
        .drain(pos..)
        .filter(|e| !stored_len.contains_key(&e.seq))
        .collect();
    store_singles(store, txn, &mut codec.buf, &unsealed, meta)
}

/// Appends `entries` as single records at the tail.
fn store_singles(
    store: &Store,
    txn: &mut heed::RwTxn<'_>,
    buf: &mut Vec<u8>,
    entries: &[Entry],
    meta: &mut Meta,
) -> Result<(), heed::Error> {
    for e in entries {
        buf.clear();
        e.single_into(buf);
        store.append(txn, e.seq, buf)?;
        meta.bytes_held += accounted_size(buf.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Reading, SourceKind};

    #[test]
    fn commits_of_one_reading_compress_each_reading_about_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let mut codec = Codec::new(Packer::new(1).unwrap());
        let mut meta = Meta::default();
        let mut raw = 0u64;
        for seq in 1..=800u64 {
            let reading = Reading {
                ingest_ms: 1_700_000_000_000 + seq,
                source_kind: SourceKind::MqttListener,
                source: format!("wt-{:02}", seq % 10),
                topic: format!("turbines/wt-{:02}/telemetry", seq % 10),
                payload: bytes::Bytes::from(format!(
                    "{{\"counter\":{seq},\"wind\":{}.{},\"rpm\":{}}}",
                    seq % 13,
                    seq % 7,
                    900 + seq % 300
                )),
                qos: 1,
                retain: false,
            };
            let entry = Entry::new(seq, &reading);
            raw += entry.raw_len() as u64;
            let mut txn = store.write_txn().unwrap();
            store_blocks(&store, &mut txn, &mut codec, vec![entry], &mut meta).unwrap();
            txn.commit().unwrap();
        }
        // Every reading is compressed when its block is sealed, plus the few tries `fill`
        // makes to fit a page; rewriting an open block each commit compressed each reading
        // dozens of times.
        let per_reading = codec.packer.compressed_raw as f64 / raw as f64;
        assert!(
            per_reading < 3.0,
            "each reading compressed {per_reading:.1} times"
        );
        // And the store holds what meta accounts for, every reading in order.
        let txn = store.read_txn().unwrap();
        let mut held = 0;
        let mut seqs = Vec::new();
        for item in store.records.iter(&txn).unwrap() {
            let (key, value) = item.unwrap();
            held += accounted_size(value.len());
            let mut out = Vec::new();
            block::decode(key, value, &mut out).unwrap();
            seqs.extend(out.iter().map(|r| r.seq));
        }
        assert_eq!(held, meta.bytes_held);
        assert_eq!(seqs, (1..=800).collect::<Vec<_>>());
    }
}

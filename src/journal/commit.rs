//! One group's write transaction: cursor moves and trimming, the age limit (`max_age`,
//! when due), the size policy (`on_full`), then the appends in arrival order with re-sends
//! recognised, all committed and synced together. It keeps *durable before acknowledged*
//! by answering nothing itself: the writer answers from the [`Outcome`] only after the
//! commit returned, and a failed attempt is simply aborted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use heed::RoTxn;

use super::retention::EXPIRE_MAX_RECORDS;
use super::sessions::{self, Sessions};
use super::store::{accounted_size, Meta, Store};
use super::writer::PendingAppend;
use crate::config::{JournalConfig, OnFull};
use crate::record;

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

/// Records removed from the front before every upstream had them (`drop-oldest`, or
/// `max_age`).
struct Removed {
    count: u64,
    bytes: u64,
    first: u64,
    last: u64,
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
    buf: &mut Vec<u8>,
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
        let (n, bytes) = store.delete_range(&mut txn, ..min)?;
        out.trimmed = n;
        meta.bytes_held = meta.bytes_held.saturating_sub(bytes);
    }

    // Age limit: from the front, as drop-oldest, a bounded span per commit.
    if let Some(cutoff) = expire_before_ms {
        let (end, more) = store.expired_end(&txn, cutoff, EXPIRE_MAX_RECORDS)?;
        if let Some(end) = end {
            let (count, bytes) = store.delete_range(&mut txn, ..end)?;
            if count > 0 {
                let removed = Removed {
                    count,
                    bytes,
                    first: end - count,
                    last: end - 1,
                };
                account_removed(store, &txn, upstreams, &removed, &mut meta, &mut out.behind)?;
                meta.expired_total += removed.count;
                out.expired = removed.count;
                out.expired_first = Some(removed.first);
                out.expired_last = Some(removed.last);
            }
        }
        out.expiry_more = Some(more);
    }

    // Size policy.
    let limit = config.journal_max();
    let sizes: Vec<u64> = appends
        .iter()
        .flat_map(|a| a.readings.iter().map(|r| accounted_size(r.encoded_len())))
        .collect();
    let incoming: u64 = sizes.iter().sum();
    let mut budget = u64::MAX; // bytes of readings this commit may accept
    match config.on_full {
        // Thinning is not yet built: until then a full journal under "thin" drops the
        // oldest readings.
        OnFull::DropOldest | OnFull::Thin => {
            let mut need = (meta.bytes_held + incoming).saturating_sub(limit);
            if force_full {
                need = need.max(meta.bytes_held / 8 + incoming);
            }
            if need > 0 {
                let (n, bytes, last) = store.delete_oldest(&mut txn, need)?;
                if let Some(last) = last.filter(|_| n > 0) {
                    let removed = Removed {
                        count: n,
                        bytes,
                        first: last + 1 - n,
                        last,
                    };
                    account_removed(store, &txn, upstreams, &removed, &mut meta, &mut out.behind)?;
                    meta.dropped_total += removed.count;
                    out.dropped = removed.count;
                    out.dropped_last = Some(removed.last);
                    out.dropped_first = Some(removed.first);
                }
                budget = limit.saturating_sub(meta.bytes_held);
            }
        }
        OnFull::Reject => {
            budget = if force_full {
                0
            } else {
                limit.saturating_sub(meta.bytes_held)
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
            buf.clear();
            record::encode_into(meta.next_seq, r, buf);
            store.append(&mut txn, meta.next_seq, buf)?;
            meta.next_seq += 1;
            meta.bytes_held += size;
            accepted += 1;
            if let Some(p) = packet {
                sessions.remember(store, &txn, r, p.pkid)?;
            }
        }
        out.appended.push((first, accepted));
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

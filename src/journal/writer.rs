//! The `journal-writer` thread: the only place LMDB write transactions happen.
//!
//! It takes requests from a bounded channel, gathers everything queued (up to
//! `commit_max_records`, lingering at most `commit_interval` for more), and commits the lot
//! in one synced transaction: appends, cursor moves, trimming and the size policy together.
//! Only after the commit returns does it answer each request, in the order they arrived,
//! which is what lets ingest acknowledge a reading knowing it is on disk.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::retention::{self, Summarizer};
use super::store::{accounted_size, Meta};
use super::{Appended, Fence, JournalError, Request, Shared};
use crate::config::{JournalConfig, OnFull};
use crate::record::{self, Reading};

/// Journal position at open.
pub(crate) struct Start {
    pub next_seq: u64,
}

/// Reconciles stored cursors with the configured upstreams and loads the counters.
pub(crate) fn prepare(shared: &Shared, upstreams: &[String]) -> Result<Start, JournalError> {
    let store = &shared.store;
    let lm = |e| JournalError::lmdb("open", e);
    let mut txn = store.write_txn().map_err(lm)?;
    let meta = store.meta(&txn).map_err(lm)?;
    let first = store.bounds(&txn).map_err(lm)?.map(|b| b.0);
    let configured: HashSet<&str> = upstreams.iter().map(String::as_str).collect();
    for (name, cursor) in store.cursors(&txn).map_err(lm)? {
        if !configured.contains(name.as_str()) {
            tracing::warn!(
                upstream = %name,
                cursor,
                "Upstream is no longer configured; removing its cursor so it stops holding readings back."
            );
            store.cursors.delete(&mut txn, &name).map_err(lm)?;
        }
    }
    for name in upstreams {
        if store.cursors.get(&txn, name).map_err(lm)?.is_none() {
            let start = first.unwrap_or(meta.next_seq);
            tracing::info!(upstream = %name, from_seq = start, "New upstream starts from the oldest reading held.");
            store.cursors.put(&mut txn, name, &start).map_err(lm)?;
        }
    }
    store.put_meta(&mut txn, meta).map_err(lm)?;
    txn.commit().map_err(lm)?;
    let c = &shared.counters;
    c.next_seq.store(meta.next_seq, Ordering::Relaxed);
    c.bytes_held.store(meta.bytes_held, Ordering::Relaxed);
    c.first_seq.store(first.unwrap_or(0), Ordering::Relaxed);
    Ok(Start {
        next_seq: meta.next_seq,
    })
}

/// Starts the writer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    config: JournalConfig,
    upstreams: Vec<String>,
    rx: mpsc::Receiver<Request>,
    committed: watch::Sender<u64>,
) -> Result<std::thread::JoinHandle<()>, JournalError> {
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || {
            let mut writer = Writer {
                shared,
                config,
                upstreams,
                committed,
                poisoned: false,
                drops: Summarizer::new(Duration::from_secs(10)),
                rejects: Summarizer::new(Duration::from_secs(10)),
                buf: Vec::with_capacity(1 << 16),
            };
            writer.run(rx);
        })
        .map_err(|source| JournalError::Io {
            what: "start the journal-writer thread".into(),
            source,
        })
}

struct Writer {
    shared: Arc<Shared>,
    config: JournalConfig,
    upstreams: Vec<String>,
    committed: watch::Sender<u64>,
    /// Set after an LMDB error; every later request is answered with `Failed`.
    poisoned: bool,
    drops: Summarizer,
    rejects: Summarizer,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

/// One append request inside a group.
struct PendingAppend {
    readings: Vec<Reading>,
    fence: Option<Fence>,
    reply: oneshot::Sender<Result<Appended, JournalError>>,
}

/// One cursor move inside a group.
struct PendingCursor {
    upstream: String,
    next_seq: u64,
    reply: oneshot::Sender<Result<(), JournalError>>,
}

/// What one committed transaction did.
#[derive(Default)]
struct Outcome {
    /// Per append request: (first seq, accepted count).
    appended: Vec<(u64, usize)>,
    rejected: u64,
    dropped: u64,
    dropped_last: Option<u64>,
    dropped_first: Option<u64>,
    trimmed: u64,
    meta: Meta,
    first_seq: Option<u64>,
    /// Cursors below the last dropped record, i.e. upstreams that lost readings.
    behind: Vec<String>,
}

enum Attempt {
    Done(Outcome),
    MapFull,
    DiskFull(heed::Error),
    Failed(heed::Error),
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Request>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "Journal writer cannot start its timer runtime; no reading can be journaled.");
                return;
            }
        };
        let max = self.config.commit_max_records;
        let linger = self.config.commit_interval;
        loop {
            let Some(first) = rt.block_on(rx.recv()) else {
                break;
            };
            let started = Instant::now();
            let mut group = vec![first];
            let mut count = weight(&group[0]);
            while count < max {
                match rx.try_recv() {
                    Ok(r) => {
                        count += weight(&r);
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            if count < max && !linger.is_zero() {
                let deadline = tokio::time::Instant::from_std(started + linger);
                rt.block_on(async {
                    while count < max {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(r)) => {
                                count += weight(&r);
                                group.push(r);
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                });
            }
            self.process(group);
        }
        tracing::debug!("Journal writer finished: every queued request is answered.");
    }

    fn process(&mut self, group: Vec<Request>) {
        let mut appends = Vec::new();
        let mut cursors = Vec::new();
        for r in group {
            match r {
                Request::Append {
                    readings,
                    fence,
                    reply,
                } => appends.push(PendingAppend {
                    readings,
                    fence,
                    reply,
                }),
                Request::SetCursor {
                    upstream,
                    next_seq,
                    reply,
                } => cursors.push(PendingCursor {
                    upstream,
                    next_seq,
                    reply,
                }),
            }
        }
        if self.poisoned {
            return fail_all(appends, cursors);
        }
        let mut force_full = false;
        let outcome = loop {
            match self.attempt(&appends, &cursors, force_full) {
                Attempt::Done(o) => break o,
                Attempt::MapFull => {
                    let current = self.shared.store.map_size();
                    match retention::grown_map_size(current, &self.config) {
                        Some(next) => {
                            let resized = {
                                let _guard = self
                                    .shared
                                    .resize_lock
                                    .write()
                                    .unwrap_or_else(|p| p.into_inner());
                                self.shared.store.resize(next)
                            };
                            if let Err(e) = resized {
                                tracing::error!(error = %e, "Journal map could not grow; stopping the journal.");
                                self.poison();
                                return fail_all(appends, cursors);
                            }
                            tracing::info!(from = current, to = next, "Journal map grown.");
                        }
                        None if !force_full => force_full = true,
                        None => {
                            tracing::error!("Journal map is at its ceiling even after applying on_full; stopping the journal.");
                            self.poison();
                            return fail_all(appends, cursors);
                        }
                    }
                }
                Attempt::DiskFull(e) if !force_full => {
                    tracing::warn!(error = %e, "Disk is full; applying journal.on_full as if max_size were reached.");
                    force_full = true;
                }
                Attempt::DiskFull(e) | Attempt::Failed(e) => {
                    tracing::error!(error = %e, "Journal commit failed; refusing further writes until tidegate restarts. Readings not yet acknowledged stay with their devices.");
                    self.poison();
                    return fail_all(appends, cursors);
                }
            }
        };
        self.finish(appends, cursors, outcome);
    }

    /// Builds and commits one transaction. Nothing is answered here, so an attempt that
    /// fails is simply aborted and may be tried again.
    fn attempt(
        &mut self,
        appends: &[PendingAppend],
        cursors: &[PendingCursor],
        force_full: bool,
    ) -> Attempt {
        match self.try_commit(appends, cursors, force_full) {
            Ok(o) => Attempt::Done(o),
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => Attempt::MapFull,
            Err(heed::Error::Io(e)) if e.raw_os_error() == Some(28) => {
                Attempt::DiskFull(heed::Error::Io(e))
            }
            Err(e) => Attempt::Failed(e),
        }
    }

    fn try_commit(
        &mut self,
        appends: &[PendingAppend],
        cursors: &[PendingCursor],
        force_full: bool,
    ) -> Result<Outcome, heed::Error> {
        let store = &self.shared.store;
        let mut txn = store.write_txn()?;
        let mut meta = store.meta(&txn)?;
        let mut out = Outcome::default();

        // Cursor moves first: what they free is available to this commit's readings.
        for c in cursors {
            let old = store.cursors.get(&txn, &c.upstream)?.unwrap_or(0);
            if c.next_seq > old {
                store
                    .cursors
                    .put(&mut txn, &c.upstream, &c.next_seq.min(meta.next_seq))?;
            }
        }
        if !self.upstreams.is_empty() && !cursors.is_empty() {
            let mut min = u64::MAX;
            for name in &self.upstreams {
                min = min.min(store.cursors.get(&txn, name)?.unwrap_or(0));
            }
            let (n, bytes) = store.delete_range(&mut txn, ..min)?;
            out.trimmed = n;
            meta.bytes_held = meta.bytes_held.saturating_sub(bytes);
        }

        // Size policy.
        let limit = self.config.journal_max();
        let sizes: Vec<u64> = appends
            .iter()
            .flat_map(|a| a.readings.iter().map(|r| accounted_size(r.encoded_len())))
            .collect();
        let incoming: u64 = sizes.iter().sum();
        let mut budget = u64::MAX; // bytes of readings this commit may accept
        match self.config.on_full {
            OnFull::DropOldest => {
                let mut need = (meta.bytes_held + incoming).saturating_sub(limit);
                if force_full {
                    need = need.max(meta.bytes_held / 8 + incoming);
                }
                if need > 0 {
                    let (n, bytes, last) = store.delete_oldest(&mut txn, need)?;
                    if n > 0 {
                        out.dropped = n;
                        out.dropped_last = last;
                        out.dropped_first = last.map(|l| l + 1 - n);
                        meta.bytes_held = meta.bytes_held.saturating_sub(bytes);
                        meta.dropped_total += n;
                        for name in &self.upstreams {
                            if store.cursors.get(&txn, name)?.unwrap_or(0) <= last.unwrap_or(0) {
                                out.behind.push(name.clone());
                            }
                        }
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
        for a in appends {
            let first = meta.next_seq;
            let mut accepted = 0;
            let fenced = a
                .fence
                .as_ref()
                .is_some_and(|f| f.is_closed() || fenced_now.contains(&f.id()));
            for r in &a.readings {
                let size = sizes.next().unwrap_or(0);
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
                self.buf.clear();
                record::encode_into(meta.next_seq, r, &mut self.buf);
                store.append(&mut txn, meta.next_seq, &self.buf)?;
                meta.next_seq += 1;
                meta.bytes_held += size;
                accepted += 1;
            }
            out.appended.push((first, accepted));
        }
        store.put_meta(&mut txn, meta)?;
        out.first_seq = store.bounds(&txn)?.map(|b| b.0);
        out.meta = meta;
        txn.commit()?;
        Ok(out)
    }

    fn finish(&mut self, appends: Vec<PendingAppend>, cursors: Vec<PendingCursor>, o: Outcome) {
        let c = &self.shared.counters;
        let accepted: usize = o.appended.iter().map(|a| a.1).sum();
        c.appended.fetch_add(accepted as u64, Ordering::Relaxed);
        c.rejected_full.fetch_add(o.rejected, Ordering::Relaxed);
        c.dropped_full.fetch_add(o.dropped, Ordering::Relaxed);
        c.trimmed.fetch_add(o.trimmed, Ordering::Relaxed);
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.bytes_held.store(o.meta.bytes_held, Ordering::Relaxed);
        c.next_seq.store(o.meta.next_seq, Ordering::Relaxed);
        c.first_seq
            .store(o.first_seq.unwrap_or(0), Ordering::Relaxed);

        let now = Instant::now();
        if o.dropped > 0 {
            self.drops.add(o.dropped, o.dropped_first, o.dropped_last);
        }
        if self.drops.due(now) {
            tracing::warn!(
                dropped = self.drops.pending,
                first_seq = ?self.drops.first_seq,
                last_seq = ?self.drops.last_seq,
                upstreams_behind = ?o.behind,
                max_size = %self.config.max_size,
                total = c.dropped_full.load(Ordering::Relaxed),
                "Journal full: dropped the oldest readings to make room (on_full = \"drop-oldest\")."
            );
            self.drops.reset();
        }
        if o.rejected > 0 {
            self.rejects.add(o.rejected, None, None);
        }
        if self.rejects.due(now) {
            tracing::warn!(
                rejected = self.rejects.pending,
                max_size = %self.config.max_size,
                total = c.rejected_full.load(Ordering::Relaxed),
                "Journal full: refused new readings; devices keep them unacknowledged (on_full = \"reject\")."
            );
            self.rejects.reset();
        }

        // Published before the replies, so whoever is answered already sees the new tail.
        let _ = self.committed.send(o.meta.next_seq.saturating_sub(1));
        for (a, (first_seq, accepted)) in appends.into_iter().zip(o.appended) {
            if accepted < a.readings.len() {
                if let Some(f) = &a.fence {
                    f.close();
                }
            }
            let _ = a.reply.send(Ok(Appended {
                first_seq,
                accepted,
            }));
        }
        for cur in cursors {
            let _ = cur.reply.send(Ok(()));
        }
    }
}

impl Writer {
    fn poison(&mut self) {
        self.poisoned = true;
        self.shared.failed.store(true, Ordering::Relaxed);
    }
}

fn weight(r: &Request) -> usize {
    match r {
        Request::Append { readings, .. } => readings.len().max(1),
        Request::SetCursor { .. } => 1,
    }
}

fn fail_all(appends: Vec<PendingAppend>, cursors: Vec<PendingCursor>) {
    for a in appends {
        let _ = a.reply.send(Err(JournalError::Failed));
    }
    for c in cursors {
        let _ = c.reply.send(Err(JournalError::Failed));
    }
}

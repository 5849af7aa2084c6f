//! The `journal-writer` thread and its group commit: the only place LMDB write
//! transactions happen, and what keeps *durable before acknowledged*.
//!
//! It takes requests from a bounded channel, gathers everything queued (up to
//! `commit_max_records`, lingering at most `commit_interval` for more), and commits the lot
//! in one synced transaction ([`super::commit`]): appends, cursor moves, trimming, the
//! age limit and the size policy together. With `journal.max_age` set it also wakes when
//! idle, every [`retention::EXPIRE_EVERY`], and commits only if the oldest reading is
//! past the limit, so an idle gateway does not write. Only after the commit returns does it
//! answer each request, in the order they arrived, which is what lets ingest acknowledge a
//! reading knowing it is on disk.
//!
//! An I/O error in a commit puts the writer in the refusing state of [`super::trouble`]
//! (nothing of the failed commit acknowledged, the environment reopened, never an fsync
//! retried in place); any other LMDB error fails the journal closed. Re-sends of MQTT
//! publishes already journaled are recognised by [`super::sessions`] inside the same
//! transaction.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::commit::{self, Outcome};
use super::retention::{self, AgeClock, ExpirySchedule, Summarizer};
use super::sessions::PruneSchedule;
use super::trouble::{self, DiskTrouble};
use super::{Appended, BudgetUsage, Fence, JournalError, Request, Shared};
use crate::config::{JournalConfig, OnFull};
use crate::record::Reading;

/// Journal position at open.
pub(crate) struct Start {
    pub next_seq: u64,
}

/// [`prepare_once`], with the reserve given back if the disk is too full to commit.
pub(crate) fn prepare(shared: &Shared, upstreams: &[String]) -> Result<Start, JournalError> {
    let dir = {
        let guard = shared.store.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|s| s.env.path().to_owned())
    };
    match prepare_once(shared, upstreams) {
        Err(JournalError::Lmdb {
            source: heed::Error::Io(_),
            ..
        }) if dir.as_deref().is_some_and(trouble::release_reserve) => {
            prepare_once(shared, upstreams)
        }
        other => other,
    }
}

/// Reconciles stored cursors with the configured upstreams and loads the counters.
fn prepare_once(shared: &Shared, upstreams: &[String]) -> Result<Start, JournalError> {
    let guard = shared.store.read().unwrap_or_else(|p| p.into_inner());
    let store = guard.as_ref().ok_or(JournalError::Reopening)?;
    let lm = |e| JournalError::lmdb("open", e);
    let mut txn = store.write_txn().map_err(lm)?;
    let meta = store.meta(&txn).map_err(lm)?;
    let first = store.bounds(&txn).map_err(lm)?.map(|b| b.0);
    reconcile_cursors(store, &mut txn, upstreams, first.unwrap_or(meta.next_seq)).map_err(lm)?;
    store.put_meta(&mut txn, meta).map_err(lm)?;
    txn.commit().map_err(lm)?;
    shared.set_position(&meta, first);
    Ok(Start {
        next_seq: meta.next_seq,
    })
}

/// Makes the stored cursors those of `upstreams`: removed upstreams lose their cursor (so
/// they stop holding readings back), new ones start at `oldest` (the oldest reading held).
/// Shared by open and by a config reload, so both treat a changed upstream list alike.
fn reconcile_cursors(
    store: &super::store::Store,
    txn: &mut heed::RwTxn<'_>,
    upstreams: &[String],
    oldest: u64,
) -> Result<(), heed::Error> {
    let configured: HashSet<&str> = upstreams.iter().map(String::as_str).collect();
    for (name, cursor) in store.cursors(txn)? {
        if !configured.contains(name.as_str()) {
            tracing::warn!(
                upstream = %name,
                cursor,
                "Upstream is no longer configured; removing its cursor so it stops holding readings back."
            );
            store.cursors.delete(txn, &name)?;
        }
    }
    for name in upstreams {
        if store.cursors.get(txn, name)?.is_none() {
            tracing::info!(upstream = %name, from_seq = oldest, "New upstream starts from the oldest reading held.");
            store.cursors.put(txn, name, &oldest)?;
        }
    }
    Ok(())
}

/// Starts the writer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    config: JournalConfig,
    upstreams: Vec<String>,
    rx: mpsc::Receiver<Request>,
    committed: watch::Sender<u64>,
    clock: AgeClock,
) -> Result<std::thread::JoinHandle<()>, JournalError> {
    let codec = commit::Codec::new(super::block::Packer::new(config.compression_level).map_err(
        |source| JournalError::Io {
            what: format!(
                "set up zstd at journal.compression_level = {}",
                config.compression_level
            ),
            source,
        },
    )?);
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || {
            let trouble = DiskTrouble::new(
                shared.clone(),
                config.dir.clone(),
                retention::initial_map_size(&config),
            );
            let expiry = ExpirySchedule::new(config.max_age, clock);
            let mut writer = Writer {
                shared,
                config,
                expiry,
                expiries: Summarizer::new(Duration::from_secs(10)),
                thins: Summarizer::new(Duration::from_secs(10)),
                thin_factor: 0,
                upstreams,
                committed,
                poisoned: false,
                trouble,
                drops: Summarizer::new(Duration::from_secs(10)),
                rejects: Summarizer::new(Duration::from_secs(10)),
                codec,
                prune: PruneSchedule::new(),
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
    /// The refusing state after a failed write, the reserve file, reopening.
    trouble: DiskTrouble,
    drops: Summarizer,
    rejects: Summarizer,
    /// Reused encoding state.
    codec: commit::Codec,
    /// When the next commit also removes re-send memories past [`super::SESSION_TTL`].
    prune: PruneSchedule,
    /// When the next commit also removes readings past `journal.max_age`.
    expiry: ExpirySchedule,
    expiries: Summarizer,
    thins: Summarizer,
    /// The coarsest factor thinning reached since its last log line.
    thin_factor: u32,
}

/// One append request inside a group.
pub(super) struct PendingAppend {
    pub(super) readings: Vec<Reading>,
    /// Empty, or the MQTT packet of each reading (re-send recognition, see [`Sessions`]).
    pub(super) packets: Vec<Option<super::Packet>>,
    pub(super) fence: Option<Fence>,
    pub(super) reply: oneshot::Sender<Result<Appended, JournalError>>,
}

/// One cursor move inside a group.
pub(super) struct PendingCursor {
    pub(super) upstream: String,
    pub(super) next_seq: u64,
    pub(super) reply: oneshot::Sender<Result<(), JournalError>>,
}

// One per commit, matched at once: boxing the outcome would allocate on the commit path
// for nothing.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Done(Outcome),
    MapFull,
    /// `ENOSPC` or `EDQUOT`: the filesystem has no room for the pages.
    DiskFull(heed::Error),
    /// Any other I/O error (EIO…) or LMDB's panic flag after one: the environment is
    /// suspect and must be reopened before anything is written again.
    Io(heed::Error),
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
            let first = match self.trouble.retry_at() {
                None => match (self.expiry.idle_wait(), rx.try_recv()) {
                    (_, Ok(r)) => Some(r),
                    (None, Err(_)) => rt.block_on(rx.recv()),
                    // An age limit is set and nothing is queued: wake while idle to apply
                    // it. (Only here is a timer armed, so a busy writer arms none.)
                    (Some(wait), Err(_)) => {
                        match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                            Ok(r) => r,
                            Err(_) => {
                                if self.front_expired() {
                                    self.process(Vec::new());
                                }
                                continue;
                            }
                        }
                    }
                },
                // Refusing: with nothing arriving, try an empty commit when it is due, so
                // the state ends (and /health says so) even while every device waits.
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    match rt.block_on(async { tokio::time::timeout_at(at, rx.recv()).await }) {
                        Ok(r) => r,
                        Err(_) => {
                            self.process(Vec::new());
                            continue;
                        }
                    }
                }
            };
            let Some(first) = first else {
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
                    packets,
                    fence,
                    reply,
                } => appends.push(PendingAppend {
                    readings,
                    packets,
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
                // Every few seconds at most: its own small transaction.
                Request::SetBudget {
                    upstream,
                    usage,
                    reply,
                } => {
                    let _ = reply.send(self.set_budget(&upstream, usage));
                }
                // Rare (config reload): its own transaction, before this group's, so the
                // group's trimming already counts the new upstreams.
                Request::SetUpstreams { upstreams, reply } => {
                    let _ = reply.send(self.set_upstreams(upstreams));
                }
            }
        }
        if self.poisoned {
            return fail_all(appends, cursors);
        }
        if self.trouble.refuses_now() {
            return self.trouble.refuse(appends, cursors);
        }
        let mut moves = self.trouble.deferred_moves();
        moves.extend(cursors.iter().map(|c| (c.upstream.clone(), c.next_seq)));
        let mut force_full = false;
        // Set when the disk (not max_size) made this commit apply on_full.
        let mut disk_full: Option<String> = None;
        let outcome = loop {
            match self.attempt(&appends, &moves, force_full) {
                Attempt::Done(o) => break o,
                Attempt::MapFull => {
                    let current = self.map_size();
                    match retention::grown_map_size(current, &self.config) {
                        Some(next) => {
                            let resized = {
                                let guard =
                                    self.shared.store.write().unwrap_or_else(|p| p.into_inner());
                                match guard.as_ref() {
                                    Some(store) => store.resize(next),
                                    None => Ok(()),
                                }
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
                    let reason = self.trouble.disk_full_reason(&e);
                    disk_full = Some(reason.clone());
                    // The failed commit's environment is not written again (module docs).
                    if !self.trouble.reopen() {
                        self.trouble.enter(reason);
                        return self.trouble.refuse(appends, cursors);
                    }
                }
                // The on_full commit failed too: give back the reserve (once) so that this
                // commit's cursor moves and trimming get in (module docs).
                Attempt::DiskFull(_) if self.trouble.release_reserve() => {
                    if !self.trouble.reopen() {
                        return self.trouble.refuse(appends, cursors);
                    }
                }
                Attempt::DiskFull(e) => {
                    let reason = self.trouble.disk_full_reason(&e);
                    self.trouble.write_failed(reason);
                    return self.trouble.refuse(appends, cursors);
                }
                Attempt::Io(e) => {
                    self.trouble.write_failed(format!("write failed: {e}"));
                    return self.trouble.refuse(appends, cursors);
                }
                Attempt::Failed(e) => {
                    tracing::error!(error = %e, "Journal commit failed; refusing further writes until tidegate restarts. Readings not yet acknowledged stay with their devices.");
                    self.poison();
                    return fail_all(appends, cursors);
                }
            }
        };
        self.trouble.moves_committed();
        match disk_full {
            // Under reject, a commit that got through only by refusing everything leaves
            // the disk as full as it was: refuse without touching LMDB until the next
            // attempt, and say so, rather than fail a commit per group.
            Some(reason) if self.config.on_full == OnFull::Reject => {
                self.finish(appends, cursors, outcome);
                self.trouble.enter(reason);
            }
            _ => {
                // Space is shown back only by a reading getting in (or by a commit with no
                // reading to offer): one whose readings were all fenced wrote next to
                // nothing and proves little.
                let offered = appends.iter().any(|a| !a.readings.is_empty());
                let accepted = outcome.appended.iter().any(|a| a.1 > 0);
                self.trouble.committed(offered && !accepted);
                self.finish(appends, cursors, outcome);
                self.trouble.restore_reserve();
            }
        }
    }

    /// Builds and commits one transaction. Nothing is answered here, so an attempt that
    /// fails is simply aborted and may be tried again.
    fn attempt(
        &mut self,
        appends: &[PendingAppend],
        cursors: &[(String, u64)],
        force_full: bool,
    ) -> Attempt {
        let guard = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
        let Some(store) = guard.as_ref() else {
            // Only reachable if a reopen failed; `ensure_open` runs before every attempt.
            return Attempt::Io(heed::Error::Io(std::io::Error::other(
                "journal environment is closed",
            )));
        };
        let prune_sessions_at = self.prune.due();
        let expire_before_ms = self.expiry.due();
        let result = commit::commit(
            store,
            &self.config,
            &self.upstreams,
            &mut self.codec,
            appends,
            cursors,
            commit::Extras {
                force_full,
                prune_sessions_at,
                expire_before_ms,
            },
        );
        drop(guard);
        match result {
            Ok(o) => {
                if let Some(n) = o.sessions_pruned {
                    self.prune.pruned(n);
                }
                if let Some(more) = o.expiry_more {
                    self.expiry.checked(more);
                }
                Attempt::Done(o)
            }
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => Attempt::MapFull,
            Err(heed::Error::Io(e)) if self.trouble.disk_is_full(&e) => {
                Attempt::DiskFull(heed::Error::Io(e))
            }
            Err(e @ (heed::Error::Io(_) | heed::Error::Mdb(heed::MdbError::Panic))) => {
                Attempt::Io(e)
            }
            Err(e) => Attempt::Failed(e),
        }
    }

    fn finish(&mut self, appends: Vec<PendingAppend>, cursors: Vec<PendingCursor>, o: Outcome) {
        let c = &self.shared.counters;
        let accepted: usize = o.appended.iter().map(|a| a.1).sum();
        c.appended
            .fetch_add(accepted as u64 - o.duplicates, Ordering::Relaxed);
        c.duplicates_dropped
            .fetch_add(o.duplicates, Ordering::Relaxed);
        c.rejected_full.fetch_add(o.rejected, Ordering::Relaxed);
        c.dropped_full.fetch_add(o.dropped, Ordering::Relaxed);
        c.expired.fetch_add(o.expired, Ordering::Relaxed);
        c.thinned.fetch_add(o.thinned, Ordering::Relaxed);
        c.trimmed.fetch_add(o.trimmed, Ordering::Relaxed);
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.commit_latency.observe(o.took);
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
        if o.thinned > 0 {
            self.thins.add(o.thinned, None, None);
            self.thin_factor = self.thin_factor.max(o.thin_factor);
        }
        if self.thins.due(now) {
            tracing::warn!(
                thinned = self.thins.pending,
                factor = self.thin_factor,
                max_size = %self.config.max_size,
                total = c.thinned.load(Ordering::Relaxed),
                "Journal full: thinned the oldest history to make room (on_full = \"thin\"); upstreams get thinned markers for it."
            );
            self.thins.reset();
            self.thin_factor = 0;
        }
        if o.expired > 0 {
            self.expiries
                .add(o.expired, o.expired_first, o.expired_last);
        }
        if self.expiries.due(now) {
            tracing::warn!(
                expired = self.expiries.pending,
                first_seq = ?self.expiries.first_seq,
                last_seq = ?self.expiries.last_seq,
                upstreams_behind = ?o.behind,
                max_age = %humantime::format_duration(self.expiry.max_age().unwrap_or_default()),
                total = c.expired.load(Ordering::Relaxed),
                "Removed readings older than journal.max_age that not every upstream had sent."
            );
            self.expiries.reset();
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
    fn set_upstreams(&mut self, upstreams: Vec<String>) -> Result<(), JournalError> {
        self.own_transaction("reconcile cursors", |store, txn| {
            let meta = store.meta(txn)?;
            let first = store.bounds(txn)?.map(|b| b.0);
            reconcile_cursors(store, txn, &upstreams, first.unwrap_or(meta.next_seq))
        })?;
        self.upstreams = upstreams;
        Ok(())
    }

    /// Stores an upstream's budget usage (every few seconds at most, so in a transaction
    /// of its own rather than in a group's).
    fn set_budget(&mut self, upstream: &str, usage: BudgetUsage) -> Result<(), JournalError> {
        self.own_transaction("store budget usage", |store, txn| {
            store.put_budget_usage(txn, upstream, usage)
        })
    }

    /// Runs `work` in a write transaction of its own and commits it. Only rows of cursors
    /// and `meta` are written this way, so a failure leaves the journal as it was; still,
    /// an I/O error puts it in the same refusing state as for readings (module docs), and
    /// any other LMDB error fails it closed, like every other commit failure.
    fn own_transaction(
        &mut self,
        what: &'static str,
        work: impl FnOnce(&super::store::Store, &mut heed::RwTxn<'_>) -> Result<(), heed::Error>,
    ) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Failed);
        }
        if let Some(reason) = self.trouble.reason() {
            return Err(JournalError::Unwritable(reason.to_owned()));
        }
        let guard = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
        let store = guard.as_ref().ok_or(JournalError::Reopening)?;
        let result = (|| {
            let mut txn = store.write_txn()?;
            work(store, &mut txn)?;
            txn.commit()
        })();
        drop(guard);
        match result {
            Ok(()) => Ok(()),
            Err(e @ heed::Error::Io(_)) => {
                self.trouble.write_failed(format!("write failed: {e}"));
                Err(JournalError::lmdb(what, e))
            }
            Err(e) => {
                tracing::error!(error = %e, operation = what, "Journal commit failed; refusing further writes until tidegate restarts.");
                self.poison();
                Err(JournalError::lmdb(what, e))
            }
        }
    }

    /// Whether an age check is due and the oldest reading held is past it: one record
    /// read, so that an idle wake-up commits (and writes) only when there is work. A
    /// check that finds nothing counts as done.
    fn front_expired(&mut self) -> bool {
        let Some(cutoff) = self.expiry.due() else {
            return false;
        };
        if self.poisoned || self.trouble.reason().is_some() {
            return false;
        }
        let expired = {
            let guard = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
            let Some(store) = guard.as_ref() else {
                return false;
            };
            store
                .read_txn()
                .ok()
                .and_then(|txn| store.expired_end(&txn, cutoff, 1).ok())
                .is_some_and(|(end, more)| end.is_some() || more)
        };
        if !expired {
            self.expiry.checked(false);
        }
        expired
    }

    /// Current map size (the one to reopen with when the environment is closed).
    fn map_size(&self) -> usize {
        self.shared
            .map_size()
            .unwrap_or_else(|| retention::initial_map_size(&self.config))
    }

    fn poison(&mut self) {
        self.poisoned = true;
        self.shared.failed.store(true, Ordering::Relaxed);
    }
}

fn weight(r: &Request) -> usize {
    match r {
        Request::Append { readings, .. } => readings.len().max(1),
        Request::SetCursor { .. } | Request::SetUpstreams { .. } | Request::SetBudget { .. } => 1,
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

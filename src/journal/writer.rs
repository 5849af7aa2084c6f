//! The `journal-writer` thread: the only place LMDB write transactions happen.
//!
//! It takes requests from a bounded channel, gathers everything queued (up to
//! `commit_max_records`, lingering at most `commit_interval` for more), and commits the lot
//! in one synced transaction: appends, cursor moves, trimming and the size policy together.
//! Only after the commit returns does it answer each request, in the order they arrived,
//! which is what lets ingest acknowledge a reading knowing it is on disk.
//!
//! # Disk trouble
//!
//! A commit that fails with an I/O error — the disk is full (`ENOSPC`, `EDQUOT`) or the
//! device reports `EIO` — puts the writer in a *refusing* state instead of stopping it:
//!
//! * the readings of the failed commit are answered as refused (`accepted = 0`), exactly
//!   like `on_full = "reject"`, so nothing whose commit failed is ever acknowledged and
//!   devices keep and resend it; their fences close, so order survives the refusal;
//! * the environment is closed and opened again at once. After a failed commit or sync
//!   nothing is known about what LMDB holds in memory or what the kernel kept of the
//!   pages it wrote (a failed fsync may already have dropped them), so the same
//!   environment is never written again; the fresh one reads what is really on disk;
//! * until the next attempt (backoff from [`RETRY_FIRST`] to [`RETRY_MAX`]) new readings
//!   are refused without touching LMDB, and cursor moves are kept in memory and committed
//!   with the next successful transaction (a crash meanwhile only resends those readings);
//!   forwarders keep reading and sending what is stored;
//! * an attempt is the next group of requests (or, with none arriving, an empty commit);
//!   its success ends the state by itself, e.g. once space is freed.
//!
//! A full disk is first treated like a full journal (`on_full` applied as if `max_size`
//! were reached, on a reopened environment); only if that commit fails too does the writer
//! refuse. Errors that are not I/O (a corrupt page, a bug) still fail the journal closed.
//!
//! **The reserve.** LMDB needs fresh pages even to delete (copy-on-write), so a disk filled
//! by the journal itself could not even commit the cursor moves that would free pages for
//! reuse: a deadlock that a restart would not break (opening writes too). The writer keeps
//! a small file, [`RESERVE_FILE`], next to the environment; when a commit fails for lack of
//! space it deletes it once, so that cursor moves and trimming can be committed and the
//! freed pages reused, and it writes the file again once space allows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::retention::{self, Summarizer};
use super::store::{accounted_size, Meta, Store};
use super::{Appended, Fence, JournalError, Request, Shared};
use crate::config::{JournalConfig, OnFull};
use crate::record::{self, Reading};

/// Journal position at open.
pub(crate) struct Start {
    pub next_seq: u64,
}

/// First wait before writing again after a failed commit.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between write attempts while refusing.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Shortest time between two ERROR lines about entering the refusing state.
const TROUBLE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Name of the reserve file in the journal directory (module docs).
pub const RESERVE_FILE: &str = "reserve.tidegate";
/// Size of the reserve: room for a commit of cursor moves and trimming.
const RESERVE_BYTES: usize = 1024 * 1024;
/// How often a missing reserve file is tried again (after a successful commit).
const RESERVE_RETRY: Duration = Duration::from_secs(10);

/// Writes the reserve file if it is missing (real bytes: a sparse file reserves nothing).
/// On a filesystem without the room, removes what was written and returns false.
fn ensure_reserve(dir: &std::path::Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(RESERVE_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES as u64) {
        return true;
    }
    // 0600 like LMDB's own files: the journal directory is private to the service user.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; RESERVE_BYTES])?;
            f.sync_all()
        });
    match written {
        Ok(()) => true,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::debug!(error = %e, "No room for the journal's reserve file yet.");
            false
        }
    }
}

/// Deletes the reserve file; true if there was one to give back.
fn release_reserve(dir: &std::path::Path) -> bool {
    let released = std::fs::remove_file(dir.join(RESERVE_FILE)).is_ok();
    if released {
        tracing::warn!(
            bytes = RESERVE_BYTES,
            "Disk full: released the journal's reserve file so that readings already forwarded can be trimmed and their space reused."
        );
    }
    released
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
        }) if dir.as_deref().is_some_and(release_reserve) => prepare_once(shared, upstreams),
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
    let c = &shared.counters;
    c.next_seq.store(meta.next_seq, Ordering::Relaxed);
    c.bytes_held.store(meta.bytes_held, Ordering::Relaxed);
    c.first_seq.store(first.unwrap_or(0), Ordering::Relaxed);
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
) -> Result<std::thread::JoinHandle<()>, JournalError> {
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || {
            let reserve_retry = (!ensure_reserve(&config.dir)).then(Instant::now);
            let mut writer = Writer {
                reserve_retry,
                shared,
                config,
                upstreams,
                committed,
                poisoned: false,
                trouble: None,
                trouble_logged: None,
                deferred: HashMap::new(),
                refusals: Summarizer::new(Duration::from_secs(10)),
                drops: Summarizer::new(Duration::from_secs(10)),
                rejects: Summarizer::new(Duration::from_secs(10)),
                buf: Vec::with_capacity(1 << 16),
                // The first commit after opening prunes (and stamps rows of older builds).
                next_session_prune: Instant::now(),
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
    /// Set after a failed write (disk full, I/O error); see the module docs.
    trouble: Option<Trouble>,
    /// When entering the refusing state was last logged at ERROR.
    trouble_logged: Option<Instant>,
    /// While the reserve file is missing: when to try writing it again.
    reserve_retry: Option<Instant>,
    /// Cursor moves answered while refusing, committed with the next transaction.
    deferred: HashMap<String, u64>,
    /// Readings refused while in trouble, logged once per interval.
    refusals: Summarizer,
    drops: Summarizer,
    rejects: Summarizer,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// When the next commit also removes re-send memories past [`super::SESSION_TTL`].
    next_session_prune: Instant,
}

/// One append request inside a group.
struct PendingAppend {
    readings: Vec<Reading>,
    /// Empty, or the MQTT packet of each reading (re-send recognition, see `Sessions`).
    packets: Vec<Option<super::Packet>>,
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
    /// Per append request: (first seq, accepted count). Accepted counts the re-sends
    /// recognised as already journaled too (acknowledged, not appended).
    appended: Vec<(u64, usize)>,
    /// Re-sent publishes recognised as already journaled.
    duplicates: u64,
    rejected: u64,
    dropped: u64,
    dropped_last: Option<u64>,
    dropped_first: Option<u64>,
    trimmed: u64,
    meta: Meta,
    first_seq: Option<u64>,
    /// Cursors below the last dropped record, i.e. upstreams that lost readings.
    behind: Vec<String>,
    /// From opening the write transaction to the end of its commit and sync (`/metrics`).
    took: Duration,
    /// Clients whose re-send memory this commit removed (past [`super::SESSION_TTL`]).
    sessions_pruned: Option<usize>,
}

/// What a commit does beyond its requests.
struct Extras {
    /// Apply `on_full` as if the journal were full (the disk is).
    force_full: bool,
    /// Also prune re-send memories, as of this Unix time in seconds.
    prune_sessions_at: Option<u32>,
}

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

/// The refusing state after a failed write; see the module docs.
struct Trouble {
    /// For `/health` and the logs, e.g. "disk full: No space left on device (os error 28)".
    reason: String,
    since: Instant,
    /// No write is tried before this; readings arriving earlier are refused at once.
    retry_at: Instant,
    /// Wait after the next failed attempt (doubles up to [`RETRY_MAX`]).
    backoff: Duration,
    /// Readings refused since it began.
    refused: u64,
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
            let first = match self.trouble.as_ref().map(|t| t.retry_at) {
                None => rt.block_on(rx.recv()),
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
        if let Some(t) = &self.trouble {
            if Instant::now() < t.retry_at || !self.ensure_open() {
                return self.refuse(appends, cursors);
            }
        }
        let mut moves: Vec<(String, u64)> = self.deferred.clone().into_iter().collect();
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
                    disk_full = Some(self.disk_full_reason(&e));
                    // The failed commit's environment is not written again (module docs).
                    if !self.reopen() {
                        self.enter_trouble(self.disk_full_reason(&e));
                        return self.refuse(appends, cursors);
                    }
                }
                // The on_full commit failed too: give back the reserve (once) so that this
                // commit's cursor moves and trimming get in (module docs).
                Attempt::DiskFull(_) if release_reserve(&self.config.dir) => {
                    self.reserve_retry = Some(Instant::now() + RESERVE_RETRY);
                    if !self.reopen() {
                        return self.refuse(appends, cursors);
                    }
                }
                Attempt::DiskFull(e) => {
                    self.enter_trouble(self.disk_full_reason(&e));
                    self.reopen();
                    return self.refuse(appends, cursors);
                }
                Attempt::Io(e) => {
                    self.enter_trouble(format!("write failed: {e}"));
                    self.reopen();
                    return self.refuse(appends, cursors);
                }
                Attempt::Failed(e) => {
                    tracing::error!(error = %e, "Journal commit failed; refusing further writes until tidegate restarts. Readings not yet acknowledged stay with their devices.");
                    self.poison();
                    return fail_all(appends, cursors);
                }
            }
        };
        self.deferred.clear();
        match disk_full {
            // Under reject, a commit that got through only by refusing everything leaves
            // the disk as full as it was: refuse without touching LMDB until the next
            // attempt, and say so, rather than fail a commit per group.
            Some(reason) if self.config.on_full == OnFull::Reject => {
                self.finish(appends, cursors, outcome);
                self.enter_trouble(reason);
            }
            _ => {
                // Space is shown back only by a reading getting in (or by a commit with no
                // reading to offer): one whose readings were all fenced wrote next to
                // nothing and proves little.
                let offered = appends.iter().any(|a| !a.readings.is_empty());
                let accepted = outcome.appended.iter().any(|a| a.1 > 0);
                match self.trouble.take() {
                    Some(t) if offered && !accepted => {
                        self.trouble = Some(t);
                        self.schedule_retry();
                    }
                    Some(t) => self.leave_trouble(t),
                    None => {}
                }
                self.finish(appends, cursors, outcome);
                if self.trouble.is_none()
                    && self.reserve_retry.is_some_and(|at| at <= Instant::now())
                {
                    self.reserve_retry =
                        (!ensure_reserve(&self.config.dir)).then(|| Instant::now() + RESERVE_RETRY);
                }
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
        let prune = Instant::now() >= self.next_session_prune;
        let result = Self::try_commit(
            store,
            &self.config,
            &self.upstreams,
            &mut self.buf,
            appends,
            cursors,
            Extras {
                force_full,
                prune_sessions_at: prune.then(now_secs),
            },
        );
        drop(guard);
        match result {
            Ok(o) => {
                if prune {
                    self.next_session_prune = Instant::now() + super::SESSION_PRUNE_EVERY;
                }
                if let Some(n) = o.sessions_pruned.filter(|&n| n > 0) {
                    tracing::info!(
                        clients = n,
                        "Forgot the re-send memory of clients with no journaled publish for {}.",
                        humantime::format_duration(super::SESSION_TTL)
                    );
                }
                Attempt::Done(o)
            }
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => Attempt::MapFull,
            Err(heed::Error::Io(e)) if self.disk_is_full(&e) => {
                Attempt::DiskFull(heed::Error::Io(e))
            }
            Err(e @ (heed::Error::Io(_) | heed::Error::Mdb(heed::MdbError::Panic))) => {
                Attempt::Io(e)
            }
            Err(e) => Attempt::Failed(e),
        }
    }

    fn try_commit(
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

        // Size policy.
        let limit = config.journal_max();
        let sizes: Vec<u64> = appends
            .iter()
            .flat_map(|a| a.readings.iter().map(|r| accounted_size(r.encoded_len())))
            .collect();
        let incoming: u64 = sizes.iter().sum();
        let mut budget = u64::MAX; // bytes of readings this commit may accept
        match config.on_full {
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
                        for name in upstreams {
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
        sessions.store(store, &mut txn, prune_sessions_at.unwrap_or_else(now_secs))?;
        if let Some(now) = prune_sessions_at {
            out.sessions_pruned = Some(prune_sessions(
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

    fn finish(&mut self, appends: Vec<PendingAppend>, cursors: Vec<PendingCursor>, o: Outcome) {
        let c = &self.shared.counters;
        let accepted: usize = o.appended.iter().map(|a| a.1).sum();
        c.appended
            .fetch_add(accepted as u64 - o.duplicates, Ordering::Relaxed);
        c.duplicates_dropped
            .fetch_add(o.duplicates, Ordering::Relaxed);
        c.rejected_full.fetch_add(o.rejected, Ordering::Relaxed);
        c.dropped_full.fetch_add(o.dropped, Ordering::Relaxed);
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
        if self.poisoned {
            return Err(JournalError::Failed);
        }
        if let Some(t) = &self.trouble {
            return Err(JournalError::Unwritable(t.reason.clone()));
        }
        let guard = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
        let store = guard.as_ref().ok_or(JournalError::Reopening)?;
        let lm = |e| JournalError::lmdb("reconcile cursors", e);
        let result = (|| {
            let mut txn = store.write_txn()?;
            let meta = store.meta(&txn)?;
            let first = store.bounds(&txn)?.map(|b| b.0);
            reconcile_cursors(store, &mut txn, &upstreams, first.unwrap_or(meta.next_seq))?;
            txn.commit()
        })();
        drop(guard);
        match result {
            Ok(()) => {
                self.upstreams = upstreams;
                Ok(())
            }
            // An I/O error: the same refusing state as for readings (module docs).
            Err(e @ heed::Error::Io(_)) => {
                self.enter_trouble(format!("write failed: {e}"));
                self.reopen();
                Err(lm(e))
            }
            // Only cursor rows were written, so an LMDB error here leaves the journal as
            // it was; like every other commit failure it still fails the journal closed.
            Err(e) => {
                tracing::error!(error = %e, "Journal commit failed while reconciling upstream cursors; refusing further writes until tidegate restarts.");
                self.poison();
                Err(lm(e))
            }
        }
    }

    /// Whether a failed write means the filesystem is full: `ENOSPC`/`EDQUOT`, or an EIO
    /// with almost no space left — LMDB reports a short `pwrite` (what a nearly full
    /// filesystem gives) as EIO, so the errno alone cannot tell a full disk from a failing one.
    fn disk_is_full(&self, e: &std::io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => true,
            Some(libc::EIO) => free_bytes(&self.config.dir).is_some_and(|free| free < NEARLY_FULL),
            _ => false,
        }
    }

    fn disk_full_reason(&self, e: &heed::Error) -> String {
        match free_bytes(&self.config.dir) {
            Some(free) => format!(
                "disk full: {e} ({} KiB free on the journal's filesystem)",
                free / 1024
            ),
            None => format!("disk full: {e}"),
        }
    }

    /// Current map size (the one to reopen with when the environment is closed).
    fn map_size(&self) -> usize {
        let guard = self.shared.store.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(Store::map_size)
            .unwrap_or_else(|| retention::initial_map_size(&self.config))
    }

    /// Answers appends as refused (nothing acknowledged, fences closed) and keeps cursor
    /// moves for the next successful commit, while in trouble.
    fn refuse(&mut self, appends: Vec<PendingAppend>, cursors: Vec<PendingCursor>) {
        let c = &self.shared.counters;
        let next_seq = c.next_seq.load(Ordering::Relaxed);
        let mut refused = 0u64;
        for a in appends {
            refused += a.readings.len() as u64;
            if let Some(f) = &a.fence {
                if !a.readings.is_empty() {
                    f.close();
                }
            }
            let _ = a.reply.send(Ok(Appended {
                first_seq: next_seq,
                accepted: 0,
            }));
        }
        for cur in cursors {
            let e = self.deferred.entry(cur.upstream).or_insert(0);
            *e = (*e).max(cur.next_seq);
            let _ = cur.reply.send(Ok(()));
        }
        c.refused_unwritable.fetch_add(refused, Ordering::Relaxed);
        let Some(t) = &mut self.trouble else { return };
        t.refused += refused;
        if refused > 0 {
            self.refusals.add(refused, None, None);
        }
        if self.refusals.due(Instant::now()) {
            tracing::warn!(
                refused = self.refusals.pending,
                refused_total = t.refused,
                reason = %t.reason,
                for_s = t.since.elapsed().as_secs(),
                "Journal not accepting writes: refused readings, not acknowledged; devices keep them and resend."
            );
            self.refusals.reset();
        }
    }

    /// Pushes the next write attempt back by the current backoff, which then doubles.
    fn schedule_retry(&mut self) {
        if let Some(t) = &mut self.trouble {
            t.retry_at = Instant::now() + t.backoff;
            t.backoff = (t.backoff * 2).min(RETRY_MAX);
        }
    }

    /// Enters (or stays in) the refusing state and schedules the next write attempt.
    /// Entering is logged at ERROR at most once per [`TROUBLE_LOG_INTERVAL`], so a disk
    /// that keeps filling up again right after each recovery does not flood the log.
    fn enter_trouble(&mut self, reason: String) {
        let now = Instant::now();
        match &mut self.trouble {
            None if self
                .trouble_logged
                .is_some_and(|t| now.duration_since(t) < TROUBLE_LOG_INTERVAL) =>
            {
                tracing::debug!(reason = %reason, "Journal write failed again soon after recovering.");
                self.trouble = Some(Trouble {
                    reason: reason.clone(),
                    since: now,
                    retry_at: now + RETRY_FIRST,
                    backoff: RETRY_FIRST * 2,
                    refused: 0,
                });
            }
            None => {
                self.trouble_logged = Some(now);
                tracing::error!(
                    reason = %reason,
                    dir = %self.config.dir.display(),
                    "Journal write failed: not accepting readings (devices keep them, none is acknowledged), still forwarding what is stored, and trying again by itself. Free space or check the disk."
                );
                self.trouble = Some(Trouble {
                    reason: reason.clone(),
                    since: now,
                    retry_at: now + RETRY_FIRST,
                    backoff: RETRY_FIRST * 2,
                    refused: 0,
                });
            }
            Some(t) => {
                tracing::debug!(reason = %reason, retry_in = ?t.backoff, "Journal write attempt failed again.");
                t.reason = reason.clone();
                t.retry_at = now + t.backoff;
                t.backoff = (t.backoff * 2).min(RETRY_MAX);
            }
        }
        *self
            .shared
            .refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    fn leave_trouble(&mut self, t: Trouble) {
        *self
            .shared
            .refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.refusals.reset();
        if self
            .trouble_logged
            .is_some_and(|at| at.elapsed() < TROUBLE_LOG_INTERVAL && at < t.since)
        {
            tracing::debug!(refused = t.refused, "Journal accepting readings again.");
            return;
        }
        tracing::warn!(
            after_s = t.since.elapsed().as_secs(),
            refused = t.refused,
            reason = %t.reason,
            "Journal accepting readings again: a commit succeeded on the reopened environment."
        );
    }

    /// Opens the environment if a reopen failed earlier; false (and the next attempt
    /// scheduled) if it still cannot be opened.
    fn ensure_open(&mut self) -> bool {
        let open = self
            .shared
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        open || self.reopen()
    }

    /// Closes the environment and opens it again (module docs: a failed commit's
    /// environment is never written again). Reloads the counters from what is on disk.
    /// On failure the environment stays closed (readers get [`JournalError::Reopening`])
    /// and the next attempt is scheduled.
    fn reopen(&mut self) -> bool {
        let map_size = self.map_size();
        let mut slot = self.shared.store.write().unwrap_or_else(|p| p.into_inner());
        // Dropping the only handle closes the environment (mdb_env_close): whatever the
        // failed transaction left in LMDB's memory goes with it.
        *slot = None;
        self.shared.counters.reopens.fetch_add(1, Ordering::Relaxed);
        let opened = Store::open(&self.config.dir, map_size).and_then(|store| {
            load_counters(&store, &self.shared)?;
            Ok(store)
        });
        match opened {
            Ok(store) => {
                *slot = Some(store);
                tracing::info!(dir = %self.config.dir.display(), "Journal environment reopened after a failed write.");
                true
            }
            Err(e) => {
                drop(slot);
                self.enter_trouble(format!("cannot reopen the journal: {e}"));
                false
            }
        }
    }

    fn poison(&mut self) {
        self.poisoned = true;
        self.shared.failed.store(true, Ordering::Relaxed);
    }
}

/// Loads the counters from what `store` holds (after a reopen).
fn load_counters(store: &Store, shared: &Shared) -> Result<(), JournalError> {
    let lm = |e| JournalError::lmdb("reopen", e);
    let txn = store.read_txn()?;
    let meta = store.meta(&txn).map_err(lm)?;
    let first = store.bounds(&txn).map_err(lm)?.map(|b| b.0);
    let c = &shared.counters;
    c.next_seq.store(meta.next_seq, Ordering::Relaxed);
    c.bytes_held.store(meta.bytes_held, Ordering::Relaxed);
    c.first_seq.store(first.unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

/// Free space below which an EIO from a write is taken for a full disk: more than any one
/// commit writes at once (a group of `commit_max_records` small readings, or one large).
const NEARLY_FULL: u64 = 4 * 1024 * 1024;

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the right type, which statvfs fills on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The per-client memory of journaled publishes that recognises a device's re-send (see
/// [`super::Packet`]): for each client id (the reading's `source`), its latest
/// [`super::SESSION_PACKETS`] publishes as (packet id, CRC-32 of topic and payload), oldest
/// first, stored in the `sessions` database in the same transaction as the readings — so
/// after a crash it says exactly what was journaled. Loaded on first use in a commit,
/// written back once at its end.
///
/// Row layout: 6-byte entries (packet id u16, CRC-32 u32, big-endian). An entry with packet
/// id 0 — never a QoS 1/2 packet id — is the row's header and holds the Unix time in
/// seconds of the client's latest journaled publish, for [`prune_sessions`]. Rows written
/// before the header existed have none and are read the same way.
#[derive(Default)]
struct Sessions {
    clients: std::collections::HashMap<String, Remembered>,
}

/// One client's remembered publishes, (packet id, fingerprint) oldest first, and whether
/// this commit changed them.
type Remembered = (Vec<(u16, u32)>, bool);

impl Sessions {
    fn fingerprint(r: &Reading) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(r.topic.as_bytes());
        h.update(&[0]);
        h.update(&r.payload);
        h.finalize()
    }

    fn entries(
        &mut self,
        store: &Store,
        txn: &heed::RwTxn<'_>,
        client: &str,
    ) -> Result<&mut Remembered, heed::Error> {
        if !self.clients.contains_key(client) {
            let mut list = Vec::new();
            if let Some(db) = &store.sessions {
                if let Some(bytes) = db.get(txn, client)? {
                    list = bytes
                        .chunks_exact(6)
                        .filter(|c| c[..2] != [0, 0])
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect();
                }
            }
            self.clients.insert(client.to_owned(), (list, false));
        }
        // Present: inserted just above when missing. Looked up by &str, so a client already
        // loaded costs no allocation per reading.
        Ok(self
            .clients
            .get_mut(client)
            .expect("the client's entry was inserted above"))
    }

    /// Whether `r`, sent under `pkid`, is one of its client's journaled publishes.
    fn holds(
        &mut self,
        store: &Store,
        txn: &heed::RwTxn<'_>,
        r: &Reading,
        pkid: u16,
    ) -> Result<bool, heed::Error> {
        let fp = Self::fingerprint(r);
        let (list, _) = self.entries(store, txn, &r.source)?;
        Ok(list.contains(&(pkid, fp)))
    }

    /// Records that `r`, sent under `pkid`, was journaled.
    fn remember(
        &mut self,
        store: &Store,
        txn: &heed::RwTxn<'_>,
        r: &Reading,
        pkid: u16,
    ) -> Result<(), heed::Error> {
        if pkid == 0 {
            // Not a QoS 1/2 packet id (and the row header's marker): nothing to remember.
            return Ok(());
        }
        let fp = Self::fingerprint(r);
        let (list, dirty) = self.entries(store, txn, &r.source)?;
        // A packet id names one publish at a time: the newest use replaces older ones.
        list.retain(|&(p, _)| p != pkid);
        list.push((pkid, fp));
        if list.len() > super::SESSION_PACKETS {
            let excess = list.len() - super::SESSION_PACKETS;
            list.drain(..excess);
        }
        *dirty = true;
        Ok(())
    }

    /// Writes back what changed, stamped with `now` (Unix seconds).
    fn store(self, store: &Store, txn: &mut heed::RwTxn<'_>, now: u32) -> Result<(), heed::Error> {
        let Some(db) = &store.sessions else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        for (client, (list, dirty)) in self.clients {
            if !dirty {
                continue;
            }
            bytes.clear();
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend_from_slice(&now.to_be_bytes());
            for (p, fp) in list {
                bytes.extend_from_slice(&p.to_be_bytes());
                bytes.extend_from_slice(&fp.to_be_bytes());
            }
            db.put(txn, &client, &bytes)?;
        }
        Ok(())
    }
}

/// Unix time in seconds, as the `sessions` rows store it (u32 lasts until 2106).
fn now_secs() -> u32 {
    u32::try_from(super::now_ms() / 1000).unwrap_or(u32::MAX)
}

/// Removes the re-send memory of every client whose latest journaled publish is more than
/// `ttl` seconds before `now`; returns how many. A row without a time (written before rows
/// carried one) is stamped `now` instead, so it ages from the first prune that sees it.
pub(crate) fn prune_sessions(
    store: &Store,
    txn: &mut heed::RwTxn<'_>,
    now: u32,
    ttl: u64,
) -> Result<usize, heed::Error> {
    let Some(db) = &store.sessions else {
        return Ok(0);
    };
    let mut expired = Vec::new();
    let mut unstamped = Vec::new();
    for row in db.iter(txn)? {
        let (client, bytes) = row?;
        match bytes.get(..6) {
            Some([0, 0, t @ ..]) => {
                let at = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
                if u64::from(now).saturating_sub(u64::from(at)) > ttl {
                    expired.push(client.to_owned());
                }
            }
            _ => {
                let mut stamped = Vec::with_capacity(bytes.len() + 6);
                stamped.extend_from_slice(&[0, 0]);
                stamped.extend_from_slice(&now.to_be_bytes());
                stamped.extend_from_slice(bytes);
                unstamped.push((client.to_owned(), stamped));
            }
        }
    }
    for client in &expired {
        db.delete(txn, client)?;
    }
    for (client, bytes) in &unstamped {
        db.put(txn, client, bytes)?;
    }
    Ok(expired.len())
}

fn weight(r: &Request) -> usize {
    match r {
        Request::Append { readings, .. } => readings.len().max(1),
        Request::SetCursor { .. } | Request::SetUpstreams { .. } => 1,
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

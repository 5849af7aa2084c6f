//! The journal's disk-trouble state machine: what the writer does after a commit fails
//! with an I/O error. It keeps *a failed commit is never acknowledged* and *fail closed
//! after an I/O error*: the failed environment is never written again (no fsync retried in
//! place) but closed and reopened, and readings are refused until a commit succeeds.
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::retention::Summarizer;
use super::store::Store;
use super::writer::{PendingAppend, PendingCursor};
use super::{Appended, JournalError, Shared};

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
fn ensure_reserve(dir: &Path) -> bool {
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
pub(super) fn release_reserve(dir: &Path) -> bool {
    let released = std::fs::remove_file(dir.join(RESERVE_FILE)).is_ok();
    if released {
        tracing::warn!(
            bytes = RESERVE_BYTES,
            "Disk full: released the journal's reserve file so that readings already forwarded can be trimmed and their space reused."
        );
    }
    released
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

impl Trouble {
    fn new(reason: String, now: Instant) -> Self {
        Self {
            reason,
            since: now,
            retry_at: now + RETRY_FIRST,
            backoff: RETRY_FIRST * 2,
            refused: 0,
        }
    }

    /// Pushes the next write attempt back by the current backoff, which then doubles.
    fn back_off(&mut self, now: Instant) {
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }
}

/// The writer's side of disk trouble: whether it refuses now and until when, the cursor
/// moves it keeps meanwhile, the reserve file, and closing and reopening the environment.
pub(super) struct DiskTrouble {
    shared: Arc<Shared>,
    /// The journal directory: the environment, the reserve file, the filesystem to ask.
    dir: PathBuf,
    /// Map size to reopen with if the environment is closed (the one it was opened with).
    initial_map_size: usize,
    /// Set after a failed write (disk full, I/O error); see the module docs.
    state: Option<Trouble>,
    /// When entering the refusing state was last logged at ERROR.
    logged: Option<Instant>,
    /// While the reserve file is missing: when to try writing it again.
    reserve_retry: Option<Instant>,
    /// Cursor moves answered while refusing, committed with the next transaction.
    deferred: HashMap<String, u64>,
    /// Readings refused while in trouble, logged once per interval.
    refusals: Summarizer,
}

impl DiskTrouble {
    /// Starts out of trouble, writing the reserve file if it is missing.
    pub(super) fn new(shared: Arc<Shared>, dir: PathBuf, initial_map_size: usize) -> Self {
        let reserve_retry = (!ensure_reserve(&dir)).then(Instant::now);
        Self {
            shared,
            dir,
            initial_map_size,
            state: None,
            logged: None,
            reserve_retry,
            deferred: HashMap::new(),
            refusals: Summarizer::new(Duration::from_secs(10)),
        }
    }

    /// While refusing: when the next write attempt is due.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.state.as_ref().map(|t| t.retry_at)
    }

    /// While refusing: why.
    pub(super) fn reason(&self) -> Option<&str> {
        self.state.as_ref().map(|t| t.reason.as_str())
    }

    /// Whether a group must be refused without touching LMDB: in trouble, and either the
    /// next attempt is not due yet or the environment still cannot be opened.
    pub(super) fn refuses_now(&mut self) -> bool {
        match &self.state {
            Some(t) => Instant::now() < t.retry_at || !self.ensure_open(),
            None => false,
        }
    }

    /// The cursor moves answered while refusing, to commit with the next transaction.
    pub(super) fn deferred_moves(&self) -> Vec<(String, u64)> {
        self.deferred.clone().into_iter().collect()
    }

    /// After a successful commit, which carried the deferred moves.
    pub(super) fn moves_committed(&mut self) {
        self.deferred.clear();
    }

    /// After a successful commit: ends the refusing state, unless the commit proves little
    /// (`unproven`: it offered readings and took none), which only schedules the next attempt.
    pub(super) fn committed(&mut self, unproven: bool) {
        match self.state.take() {
            Some(mut t) if unproven => {
                t.back_off(Instant::now());
                self.state = Some(t);
            }
            Some(t) => self.leave(t),
            None => {}
        }
    }

    /// After a successful commit out of trouble: writes the reserve file again if it is
    /// missing and a retry is due.
    pub(super) fn restore_reserve(&mut self) {
        if self.state.is_none() && self.reserve_retry.is_some_and(|at| at <= Instant::now()) {
            self.reserve_retry =
                (!ensure_reserve(&self.dir)).then(|| Instant::now() + RESERVE_RETRY);
        }
    }

    /// Gives back the reserve file (module docs); true if there was one.
    pub(super) fn release_reserve(&mut self) -> bool {
        let released = release_reserve(&self.dir);
        if released {
            self.reserve_retry = Some(Instant::now() + RESERVE_RETRY);
        }
        released
    }

    /// Answers appends as refused (nothing acknowledged, fences closed) and keeps cursor
    /// moves for the next successful commit, while in trouble.
    pub(super) fn refuse(&mut self, appends: Vec<PendingAppend>, cursors: Vec<PendingCursor>) {
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
        let Some(t) = &mut self.state else { return };
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

    /// A write failed on an environment that is now suspect: enters (or stays in) the
    /// refusing state and reopens the environment.
    pub(super) fn write_failed(&mut self, reason: String) {
        self.enter(reason);
        self.reopen();
    }

    /// Enters (or stays in) the refusing state and schedules the next write attempt.
    /// Entering is logged at ERROR at most once per [`TROUBLE_LOG_INTERVAL`], so a disk
    /// that keeps filling up again right after each recovery does not flood the log.
    pub(super) fn enter(&mut self, reason: String) {
        let now = Instant::now();
        match &mut self.state {
            Some(t) => {
                tracing::debug!(reason = %reason, retry_in = ?t.backoff, "Journal write attempt failed again.");
                t.reason = reason.clone();
                t.back_off(now);
            }
            None => {
                if self
                    .logged
                    .is_some_and(|t| now.duration_since(t) < TROUBLE_LOG_INTERVAL)
                {
                    tracing::debug!(reason = %reason, "Journal write failed again soon after recovering.");
                } else {
                    self.logged = Some(now);
                    tracing::error!(
                        reason = %reason,
                        dir = %self.dir.display(),
                        "Journal write failed: not accepting readings (devices keep them, none is acknowledged), still forwarding what is stored, and trying again by itself. Free space or check the disk."
                    );
                }
                self.state = Some(Trouble::new(reason.clone(), now));
            }
        }
        *self
            .shared
            .refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Leaves the refusing state after a commit succeeded on the reopened environment.
    fn leave(&mut self, t: Trouble) {
        *self
            .shared
            .refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.refusals.reset();
        if self
            .logged
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
        self.shared.is_open() || self.reopen()
    }

    /// Closes the environment and opens it again (module docs: a failed commit's
    /// environment is never written again). Reloads the counters from what is on disk.
    /// On failure the environment stays closed (readers get [`JournalError::Reopening`])
    /// and the next attempt is scheduled.
    pub(super) fn reopen(&mut self) -> bool {
        let map_size = self.shared.map_size().unwrap_or(self.initial_map_size);
        let mut slot = self.shared.store.write().unwrap_or_else(|p| p.into_inner());
        // Dropping the only handle closes the environment (mdb_env_close): whatever the
        // failed transaction left in LMDB's memory goes with it.
        *slot = None;
        self.shared.counters.reopens.fetch_add(1, Ordering::Relaxed);
        let opened = Store::open(&self.dir, map_size).and_then(|store| {
            load_counters(&store, &self.shared)?;
            Ok(store)
        });
        match opened {
            Ok(store) => {
                *slot = Some(store);
                tracing::info!(dir = %self.dir.display(), "Journal environment reopened after a failed write.");
                true
            }
            Err(e) => {
                drop(slot);
                self.enter(format!("cannot reopen the journal: {e}"));
                false
            }
        }
    }

    /// Whether a failed write means the filesystem is full: `ENOSPC`/`EDQUOT`, or an EIO
    /// with almost no space left — LMDB reports a short `pwrite` (what a nearly full
    /// filesystem gives) as EIO, so the errno alone cannot tell a full disk from a failing one.
    pub(super) fn disk_is_full(&self, e: &std::io::Error) -> bool {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => true,
            Some(libc::EIO) => free_bytes(&self.dir).is_some_and(|free| free < NEARLY_FULL),
            _ => false,
        }
    }

    /// The refusing state's reason for a full disk, with the space left.
    pub(super) fn disk_full_reason(&self, e: &heed::Error) -> String {
        match free_bytes(&self.dir) {
            Some(free) => format!(
                "disk full: {e} ({} KiB free on the journal's filesystem)",
                free / 1024
            ),
            None => format!("disk full: {e}"),
        }
    }
}

/// Loads the counters from what `store` holds (after a reopen).
fn load_counters(store: &Store, shared: &Shared) -> Result<(), JournalError> {
    let lm = |e| JournalError::lmdb("reopen", e);
    let txn = store.read_txn()?;
    let meta = store.meta(&txn).map_err(lm)?;
    let first = store.bounds(&txn).map_err(lm)?.map(|b| b.0);
    shared.set_position(&meta, first);
    Ok(())
}

/// Free space below which an EIO from a write is taken for a full disk: more than any one
/// commit writes at once (a group of `commit_max_records` small readings, or one large).
const NEARLY_FULL: u64 = 4 * 1024 * 1024;

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
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

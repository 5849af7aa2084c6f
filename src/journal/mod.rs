//! The journal: tidegate's durable local log, in LMDB.
//!
//! Every reading is appended here before anything else happens to it, and everything
//! downstream — forwarders, `tidegate status` — reads from here. It is the only user of
//! heed.
//!
//! # Layout
//!
//! * [`store`]: the LMDB environment and its databases;
//! * [`block`]: the values of `records`: page-sized zstd blocks of readings, or one record;
//! * [`writer`]: the one thread that writes to it, grouping requests into shared commits;
//! * `commit`: what one group's write transaction does (cursor moves, size policy, appends);
//! * `trouble`: the refusing state after a failed write (reopen, reserve file, recovery);
//! * `thin`: `on_full = "thin"`, halving the resolution of the oldest history;
//! * `sessions`: the per-client re-send memory ([`Packet`]) and its pruning;
//! * [`retention`]: the rules for what is kept (size cap, age limit, map size, drop
//!   summaries).
//!
//! # Invariants
//!
//! 1. **Durable before acknowledged.** [`Journal::append`] resolves only after the LMDB
//!    transaction holding the readings has committed and synced. Ingest sends a PUBACK only
//!    after that, so a crash at any instant loses no acknowledged reading.
//! 2. **One writer.** Only the `journal-writer` thread opens write transactions. It drains
//!    everything queued (up to `commit_max_records`, waiting at most `commit_interval` for
//!    company) and commits it in one transaction, so many devices share one sync.
//! 3. **Contiguous, increasing sequence numbers.** Sequence numbers are assigned in commit
//!    order and never reused; the readings held are one range `first..=last`, with holes
//!    only where thinning removed readings, each inside a span it recorded
//!    ([`ThinnedSpan`]).
//! 4. **Bounded.** The accounted size of the values held (compressed blocks are counted as
//!    stored) stays at or under `journal.max_size`. When a commit would pass it,
//!    `drop-oldest` deletes from the front (counted and logged), `thin` halves the
//!    resolution of the oldest history first, and `reject` refuses the readings that do not
//!    fit (the caller does not acknowledge them). The LMDB map grows as needed instead of
//!    failing.
//! 5. **Removed only once delivered everywhere.** A reading is deleted when every configured
//!    upstream's cursor has passed it (a whole value at a time), by `drop-oldest` or `thin`,
//!    or once older than `journal.max_age` (from the front too, see [`retention`]); never
//!    otherwise.
//! 6. **Never a retried sync.** A commit that fails with an I/O error (a full disk, EIO)
//!    is never retried on the same environment: the writer refuses the readings it held
//!    (they are not acknowledged, so devices keep them), closes the environment and opens
//!    it again, and refuses new readings until a later commit on the fresh environment
//!    succeeds; readers keep forwarding what is stored meanwhile ([`JournalWatch::refusing`]
//!    says why). Any other LMDB error fails closed: the writer answers every later request
//!    with [`JournalError::Failed`] and the daemon stops for systemd to restart it.

pub mod block;
pub mod cli;
mod commit;
pub mod retention;
mod sessions;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
mod thin;
mod trouble;
pub mod writer;

pub use sessions::{Packet, SESSION_PACKETS, SESSION_PRUNE_EVERY, SESSION_TTL};
pub use trouble::{RESERVE_FILE, RETRY_FIRST, RETRY_MAX};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::JournalConfig;
use crate::record::{self, Reading, Record};
use store::Store;

/// Why the journal could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A filesystem operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// LMDB reported an error.
    #[error("journal {op} failed: {source}")]
    Lmdb {
        op: &'static str,
        source: heed::Error,
    },
    /// The journal was written by a newer tidegate.
    #[error("journal in {dir} has layout version {found}; this build reads up to {supported}. Upgrade tidegate, or move the directory aside to start a new journal")]
    FutureFormat {
        dir: PathBuf,
        found: u64,
        supported: u64,
    },
    /// No journal exists where one was expected (read-only opens).
    #[error("no journal in {dir}: is journal.dir right, and has the daemon run there?")]
    Missing { dir: PathBuf },
    /// A stored record could not be decoded.
    #[error(transparent)]
    Decode(#[from] record::DecodeError),
    /// The writer stopped after an earlier error; the daemon must restart.
    #[error("journal writer has stopped after an earlier error; restart tidegate")]
    Failed,
    /// Writes are refused for now after an I/O error (disk full, EIO); the writer tries
    /// again by itself.
    #[error("journal is not accepting writes: {0}")]
    Unwritable(String),
    /// The environment is closed between a failed commit and its reopening.
    #[error("journal is being reopened after a write error; try again shortly")]
    Reopening,
    /// The writer is shutting down and takes no more work.
    #[error("journal is shutting down")]
    Closed,
}

impl JournalError {
    pub(crate) fn lmdb(op: &'static str, source: heed::Error) -> Self {
        JournalError::Lmdb { op, source }
    }
}

/// What became of the readings of one [`Journal::append`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number given to the first accepted reading; the rest follow in order.
    pub first_seq: u64,
    /// How many readings, from the front of the call, were committed. With
    /// `on_full = "reject"` the rest were refused because the journal is full; they must
    /// not be acknowledged.
    pub accepted: usize,
}

/// Keeps one input's readings in order across refusals.
///
/// Under `on_full = "reject"`, once the journal refuses a reading of a fenced input, it
/// refuses every later reading carrying the same fence — even if room has been freed in
/// the meantime — so nothing sent after a refused reading is journaled ahead of it. The
/// input (an MQTT connection) closes and its device resends from the refused reading on a
/// new connection with a new fence.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<std::sync::atomic::AtomicBool>);

impl Fence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a reading of this input has been refused.
    pub fn is_closed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release)
    }

    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// A request to the writer thread.
pub(crate) enum Request {
    Append {
        readings: Vec<Reading>,
        /// Empty, or one entry per reading: the MQTT packet it came in (see [`Packet`]).
        packets: Vec<Option<Packet>>,
        fence: Option<Fence>,
        reply: oneshot::Sender<Result<Appended, JournalError>>,
    },
    SetCursor {
        upstream: String,
        next_seq: u64,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// What an upstream's data budget used in a period (see [`Journal::set_budget_usage`]).
    SetBudget {
        upstream: String,
        usage: BudgetUsage,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// The configured upstreams changed (config reload): reconcile the cursors as at open.
    SetUpstreams {
        upstreams: Vec<String>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// Bytes an upstream's data budget used in one budget period, as stored in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUsage {
    /// The period's number (its first local date as `YYYYMMDD`): usage of an earlier period
    /// is not carried into a new one.
    pub period: u64,
    /// Bytes used in it (sent and received).
    pub used: u64,
}

/// Counters the writer keeps, readable at any time without touching LMDB.
#[derive(Debug, Default)]
pub struct JournalCounters {
    /// Readings committed since start.
    pub appended: AtomicU64,
    /// Readings refused by `on_full = "reject"` since start.
    pub rejected_full: AtomicU64,
    /// Readings deleted by `on_full = "drop-oldest"` before every upstream had them.
    pub dropped_full: AtomicU64,
    /// Readings removed for `journal.max_age` before every upstream had them.
    pub expired: AtomicU64,
    /// Readings removed by `on_full = "thin"` (every one of them some upstream had not sent).
    pub thinned: AtomicU64,
    /// Readings removed because every upstream had them.
    pub trimmed: AtomicU64,
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Accounted bytes held now.
    pub bytes_held: AtomicU64,
    /// First sequence held now (0 when empty).
    pub first_seq: AtomicU64,
    /// Sequence the next reading will get.
    pub next_seq: AtomicU64,
    /// Time of each committed write transaction, from opening it to the end of its sync.
    pub commit_latency: crate::telemetry::LatencyHistogram,
    /// Readings refused because the journal could not be written (disk full, I/O error).
    pub refused_unwritable: AtomicU64,
    /// Times the environment was closed and opened again after a failed commit.
    pub reopens: AtomicU64,
    /// Re-sent publishes acknowledged without being journaled again (see [`Packet`]).
    pub duplicates_dropped: AtomicU64,
}

/// Shared state between handles and the writer thread.
pub(crate) struct Shared {
    /// The open environment; `None` only between closing it after a failed commit and a
    /// successful reopen. Readers hold this shared while a read transaction is open; the
    /// writer holds it exclusively to grow the map or to close and reopen the environment,
    /// which LMDB allows only with no transaction of this process open.
    pub(crate) store: RwLock<Option<Store>>,
    pub(crate) counters: JournalCounters,
    /// Set by the writer when it stops after an LMDB error.
    pub(crate) failed: std::sync::atomic::AtomicBool,
    /// Why the writer refuses readings now (disk full, I/O error); `None` while it takes
    /// them. Set and cleared only by the writer.
    pub(crate) refusing: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Whether the environment is open (it is closed only between a failed commit and a
    /// successful reopen).
    pub(crate) fn is_open(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The open environment's map size.
    pub(crate) fn map_size(&self) -> Option<usize> {
        let guard = self.store.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(Store::map_size)
    }

    /// Publishes the journal's position as `meta` and the first sequence held say (at open
    /// and after a reopen).
    pub(crate) fn set_position(&self, meta: &store::Meta, first: Option<u64>) {
        let c = &self.counters;
        c.next_seq.store(meta.next_seq, Ordering::Relaxed);
        c.bytes_held.store(meta.bytes_held, Ordering::Relaxed);
        c.first_seq.store(first.unwrap_or(0), Ordering::Relaxed);
    }

    fn refusing(&self) -> Option<String> {
        self.refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A cheap, clonable handle to the journal.
///
/// It dereferences to its [`JournalWatch`], so the writer's state ([`JournalWatch::is_failed`],
/// [`JournalWatch::counters`], [`JournalWatch::refusing`]) is read the same way from both.
#[derive(Clone)]
pub struct Journal {
    watch: JournalWatch,
    requests: mpsc::Sender<Request>,
    committed: watch::Receiver<u64>,
}

/// The writer thread's join handle; joining it waits until everything queued is committed.
pub struct WriterHandle {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    /// Waits for the writer to finish. It finishes once every [`Journal`] handle is dropped
    /// and everything queued before that is committed.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Opens the journal in `config.dir`, reconciles the cursors with the configured
    /// upstreams and starts the writer thread. "Now" for `journal.max_age` is the system
    /// clock (see [`retention::TEST_AGE_SHIFT_ENV`] for the test hook).
    ///
    /// Cursors of upstreams no longer configured are removed (so they stop holding
    /// readings back); a new upstream starts at the oldest reading held.
    pub fn open(
        config: &JournalConfig,
        upstreams: &[String],
    ) -> Result<(Journal, WriterHandle), JournalError> {
        Self::open_with_clock(config, upstreams, retention::AgeClock::from_env())
    }

    /// [`Journal::open`], with "now" for `journal.max_age` taken from `clock` (tests set
    /// it by hand).
    pub fn open_with_clock(
        config: &JournalConfig,
        upstreams: &[String],
        clock: retention::AgeClock,
    ) -> Result<(Journal, WriterHandle), JournalError> {
        let store = Store::open(&config.dir, retention::initial_map_size(config))?;
        let shared = Arc::new(Shared {
            store: RwLock::new(Some(store)),
            counters: JournalCounters::default(),
            failed: std::sync::atomic::AtomicBool::new(false),
            refusing: std::sync::Mutex::new(None),
        });
        let start = writer::prepare(&shared, upstreams)?;
        let (tx, rx) = mpsc::channel(4096);
        let (committed_tx, committed_rx) = watch::channel(start.next_seq.saturating_sub(1));
        let thread = writer::spawn(
            shared.clone(),
            config.clone(),
            upstreams.to_vec(),
            rx,
            committed_tx,
            clock,
        )?;
        Ok((
            Journal {
                watch: JournalWatch { shared },
                requests: tx,
                committed: committed_rx,
            },
            WriterHandle {
                thread: Some(thread),
            },
        ))
    }

    /// Appends readings and resolves once they are durable (or refused because full).
    ///
    /// Readings of one call get consecutive sequence numbers in the order given. Calls
    /// from one task are committed in call order.
    pub async fn append(&self, readings: Vec<Reading>) -> Result<Appended, JournalError> {
        let rx = self.submit(readings).await?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Queues readings for the next commit and returns the receiver of its outcome.
    ///
    /// Queueing in call order and awaiting the receivers in the same order lets one
    /// connection pipeline many appends while keeping its acknowledgements in order.
    pub async fn submit(
        &self,
        readings: Vec<Reading>,
    ) -> Result<oneshot::Receiver<Result<Appended, JournalError>>, JournalError> {
        self.submit_fenced(readings, None).await
    }

    /// [`Journal::submit`] for an input that must stay in order across refusals; see [`Fence`].
    pub async fn submit_fenced(
        &self,
        readings: Vec<Reading>,
        fence: Option<Fence>,
    ) -> Result<oneshot::Receiver<Result<Appended, JournalError>>, JournalError> {
        self.submit_packets(readings, Vec::new(), fence).await
    }

    /// [`Journal::submit_fenced`] for MQTT publishes: `packets[i]` is the packet reading
    /// `i` came in (`None` for QoS 0), so that a device's re-send of a publish already
    /// journaled — its PUBACK lost to a crash or a dropped connection — is acknowledged
    /// without being journaled twice. See [`Packet`].
    pub async fn submit_packets(
        &self,
        readings: Vec<Reading>,
        packets: Vec<Option<Packet>>,
        fence: Option<Fence>,
    ) -> Result<oneshot::Receiver<Result<Appended, JournalError>>, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Append {
                readings,
                packets,
                fence,
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(rx)
    }

    /// Records that `upstream` has delivered everything before `next_seq`.
    pub async fn set_cursor(&self, upstream: &str, next_seq: u64) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::SetCursor {
                upstream: upstream.to_owned(),
                next_seq,
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Replaces the set of upstreams whose cursors hold readings back (config reload).
    ///
    /// Reconciles exactly as [`Journal::open`] does: a removed upstream's cursor is
    /// deleted, a new one starts at the oldest reading held, a kept one keeps its cursor.
    /// Call it with the changed forwarders stopped, so no stale cursor move races it.
    pub async fn set_upstreams(&self, upstreams: Vec<String>) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::SetUpstreams { upstreams, reply })
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Stores what `upstream`'s data budget used in a period, so a restart does not grant
    /// the budget again. Its own small transaction; the forwarder calls it every few seconds
    /// while bytes flow, not per batch.
    pub async fn set_budget_usage(
        &self,
        upstream: &str,
        usage: BudgetUsage,
    ) -> Result<(), JournalError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::SetBudget {
                upstream: upstream.to_owned(),
                usage,
                reply,
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// What `upstream`'s data budget had used when last stored, if ever.
    pub fn budget_usage(&self, upstream: &str) -> Result<Option<BudgetUsage>, JournalError> {
        self.reading(|store| {
            let txn = store.read_txn()?;
            store
                .budget_usage(&txn, upstream)
                .map_err(|e| JournalError::lmdb("read budget usage", e))
        })
    }

    /// The stored cursor of `upstream` (next sequence to send).
    pub fn cursor(&self, upstream: &str) -> Result<Option<u64>, JournalError> {
        self.reading(|store| {
            let txn = store.read_txn()?;
            store
                .cursors
                .get(&txn, upstream)
                .map_err(|e| JournalError::lmdb("read cursor", e))
        })
    }

    /// As [`Journal::read_from`], with the thinned spans (see [`ThinnedSpan`]) that overlap
    /// `from..=` the last record read, oldest first, read in the same transaction: every
    /// hole between the records returned that thinning made lies in one of them.
    pub fn read_batch(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, JournalError> {
        self.reading(|store| {
            let txn = store.read_txn()?;
            let lm = |e| JournalError::lmdb("read", e);
            let records = store.read_from(&txn, from, max, max_bytes).map_err(lm)?;
            let last = records.last().map(|r| match r {
                Ok(r) => r.seq,
                Err(e) => e.seq(),
            });
            let thinned = match last {
                Some(last) => store.thinned_spans(&txn, from, last).map_err(lm)?,
                None => Vec::new(),
            };
            Ok(ReadBatch { records, thinned })
        })
    }

    /// Reads up to `max` records (and about `max_bytes`) from `from` on. Blocking: call it
    /// from a blocking context. Records that fail their checksum are returned as errors
    /// in place so the caller can count and skip them.
    pub fn read_from(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Result<Record, record::DecodeError>>, JournalError> {
        self.reading(|store| {
            let txn = store.read_txn()?;
            store
                .read_from(&txn, from, max, max_bytes)
                .map_err(|e| JournalError::lmdb("read", e))
        })
    }

    /// The journal's epoch: chosen when it was created, part of the identity of every
    /// reading upstream (see [`store`]). Always set once the journal is open for writing.
    pub fn epoch(&self) -> Result<Option<u64>, JournalError> {
        self.reading(|store| {
            let txn = store.read_txn()?;
            store
                .epoch(&txn)
                .map_err(|e| JournalError::lmdb("read epoch", e))
        })
    }

    /// A receiver of the last committed sequence number; changes wake forwarders.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// A view of the writer's state for health checks. Unlike a [`Journal`] clone it holds
    /// no request sender, so keeping it does not keep the writer thread from exiting.
    pub fn watch(&self) -> JournalWatch {
        self.watch.clone()
    }

    /// Snapshot of what the journal holds, for status and logs.
    pub fn summary(&self) -> Result<Summary, JournalError> {
        self.reading(summarize)
    }

    /// Runs a read of the store while holding its lock shared, so that the writer never
    /// grows the map or closes the environment under an open read transaction of this
    /// process. Every read goes through here.
    fn reading<T>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let guard = self
            .watch
            .shared
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(store) => read(store),
            None => Err(JournalError::Reopening),
        }
    }
}

impl std::ops::Deref for Journal {
    type Target = JournalWatch;

    fn deref(&self) -> &JournalWatch {
        &self.watch
    }
}

/// The writer's state, without the power to send it work; see [`Journal::watch`].
#[derive(Clone)]
pub struct JournalWatch {
    shared: Arc<Shared>,
}

impl JournalWatch {
    /// Whether the writer has stopped after an error; the daemon must then restart.
    pub fn is_failed(&self) -> bool {
        self.shared
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Live counters.
    pub fn counters(&self) -> &JournalCounters {
        &self.shared.counters
    }

    /// Why new readings are refused now after a failed write (disk full, I/O error), or
    /// `None` while the journal takes them. Cleared by the writer's first successful
    /// commit after the trouble.
    pub fn refusing(&self) -> Option<String> {
        self.shared.refusing()
    }
}

/// What [`Journal::read_batch`] read.
#[derive(Debug)]
pub struct ReadBatch {
    /// The records, in sequence order; those that fail their checksum as errors in place.
    pub records: Vec<Result<Record, record::DecodeError>>,
    /// The thinned spans overlapping the sequence range read, oldest first.
    pub thinned: Vec<ThinnedSpan>,
}

/// A span of sequence numbers whose readings `on_full = "thin"` kept only at a lower
/// resolution: per topic about one reading in `factor` (the first and last of each topic,
/// and every reading `journal.keep_whole` names, always kept). The journal holds at most
/// one span per sequence number; spans do not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThinnedSpan {
    /// First and last sequence number of the span. Usually readings held; where thinning
    /// split a span the parts meet at sequence numbers (so the holes between the readings on
    /// either side stay inside one of them), and at the front `first` is the lowest cursor,
    /// so the hole from there to the first reading held still reads as thinning.
    pub first: u64,
    pub last: u64,
    /// Readings of the span were halved this many times over: 2, 4, 8 …
    pub factor: u32,
    /// Ingest time of the span's first and last reading held, ms since the Unix epoch.
    pub first_ms: u64,
    pub last_ms: u64,
}

/// What a journal holds and how far each upstream has got.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Journal directory.
    pub dir: PathBuf,
    /// Records held.
    pub records: u64,
    /// First and last sequence held.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Sequence the next reading will get.
    pub next_seq: u64,
    /// The journal's epoch (`tidegate-epoch` upstream); `None` for a journal no build with
    /// epochs has opened for writing yet.
    pub epoch: Option<u64>,
    /// Accounted bytes held (what `max_size` bounds).
    pub bytes_held: u64,
    /// Size of the LMDB files on disk.
    pub disk_bytes: u64,
    /// Readings deleted by `on_full = "drop-oldest"` before every upstream had them, over
    /// the journal's life.
    pub dropped_total: u64,
    /// Readings removed for `journal.max_age` before every upstream had them, over the
    /// journal's life.
    pub expired_total: u64,
    /// Readings removed by `on_full = "thin"`, over the journal's life.
    pub thinned_total: u64,
    /// The thinned spans held, oldest first.
    pub thinned: Vec<ThinnedSpan>,
    /// Per upstream, by name.
    pub upstreams: Vec<UpstreamSummary>,
}

/// One upstream's position in the journal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamSummary {
    pub name: String,
    /// Next sequence to send.
    pub cursor: u64,
    /// Readings held that it has not yet delivered (sequence numbers from its cursor on,
    /// at most the readings held: holes thinning left inside that range are not subtracted).
    pub backlog: u64,
    /// Ingest time of its oldest unsent record, ms since the epoch.
    pub oldest_unsent_ms: Option<u64>,
}

fn summarize(store: &Store) -> Result<Summary, JournalError> {
    let txn = store.read_txn()?;
    let lm = |e| JournalError::lmdb("read", e);
    let meta = store.meta(&txn).map_err(lm)?;
    let bounds = store.bounds(&txn).map_err(lm)?;
    let records = meta.readings_held;
    let mut upstreams = Vec::new();
    for (name, cursor) in store.cursors(&txn).map_err(lm)? {
        // Sequence numbers from the cursor on; thinning may have left holes among them, so
        // never more than the readings held.
        let backlog = match bounds {
            Some((first, last)) if cursor <= last => {
                (last + 1 - cursor.max(first)).min(meta.readings_held)
            }
            _ => 0,
        };
        let oldest_unsent_ms = if backlog > 0 {
            store.ingest_ms_at_or_after(&txn, cursor).map_err(lm)?
        } else {
            None
        };
        upstreams.push(UpstreamSummary {
            name,
            cursor,
            backlog,
            oldest_unsent_ms,
        });
    }
    Ok(Summary {
        dir: store.env.path().to_owned(),
        records,
        first_seq: bounds.map(|b| b.0),
        last_seq: bounds.map(|b| b.1),
        next_seq: meta.next_seq,
        epoch: store.epoch(&txn).map_err(lm)?,
        bytes_held: meta.bytes_held,
        disk_bytes: store.disk_size(),
        dropped_total: meta.dropped_total,
        expired_total: meta.expired_total,
        thinned_total: meta.thinned_total,
        thinned: store.thinned_spans(&txn, 0, u64::MAX).map_err(lm)?,
        upstreams,
    })
}

/// Checks the `[journal]` keys whose meaning this stage owns: the `keep_whole` topic
/// filters. Problems are keyed `journal.field`.
pub fn validate(config: &crate::config::JournalConfig, p: &mut Vec<String>) {
    for f in &config.keep_whole {
        if let Some(why) = crate::mqtt_client::topics::filter_problem(f) {
            p.push(format!(
                "journal.keep_whole: {f:?} {why}; give MQTT topic filters like keep_whole = [\"turbines/+/alarm\"]"
            ));
        }
    }
}

/// Reads the summary of the journal in `dir` without writing, alongside a running daemon.
pub fn summary_read_only(dir: &Path) -> Result<Summary, JournalError> {
    let store = Store::open_read_only(dir)?;
    summarize(&store)
}

/// The current time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

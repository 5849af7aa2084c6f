//! The LMDB environment: the only module that talks to heed.
//!
//! Three named databases live in one environment, so a single write transaction commits
//! readings, cursors and bookkeeping together:
//!
//! | database  | key                    | value                                        |
//! |-----------|------------------------|----------------------------------------------|
//! | `records` | seq, big-endian u64    | the record encoding of [`crate::record`]     |
//! | `cursors` | upstream name (UTF-8)  | next seq to send, big-endian u64             |
//! | `meta`    | `format`, `next_seq`, `bytes_held`, `dropped_total`, `expired_total`, `epoch` | u64, big-endian |
//!
//! `epoch` is chosen at random when the journal is created (or first opened by a build that
//! knows it) and never changes: a journal that is deleted and created again restarts its
//! sequence numbers at 1 under a new epoch, so (gateway id, epoch, seq) names one reading
//! for good. Upstreams carry it (Kafka header `tidegate-epoch`) so that the Kafka sink's
//! de-duplication after a restart compares only readings of this very journal.
//!
//! Sequence numbers held are always one contiguous range `first..=last`: records are only
//! appended at the end and only removed from the front (delivered to every upstream, or
//! dropped by `drop-oldest` or for `max_age`). `next_seq` is kept in `meta` so a number is
//! never reused even when every record has been removed.

use std::ops::RangeBounds;
use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, PutFlags, RoTxn, RwTxn};

use super::JournalError;
use crate::record::{self, Record};

/// Version of the journal layout (databases and meta keys), separate from the record format.
pub const JOURNAL_FORMAT: u64 = 1;

/// LMDB page size assumed for space accounting.
const PAGE: u64 = 4096;

/// Bytes LMDB spends on a record besides its value: 8-byte key, node header, page slot.
const ENTRY_OVERHEAD: u64 = 24;

/// Values larger than this go to overflow pages, which are allocated whole.
const OVERFLOW_THRESHOLD: u64 = PAGE / 2 - 64;

/// The space a value of `len` bytes is accounted for in `bytes_held`.
///
/// This is what `journal.max_size` bounds. It rounds overflow values up to whole pages,
/// as LMDB stores them, so a journal of large payloads is not under-counted.
pub fn accounted_size(len: usize) -> u64 {
    let len = len as u64;
    if len > OVERFLOW_THRESHOLD {
        len.div_ceil(PAGE) * PAGE + ENTRY_OVERHEAD
    } else {
        len + ENTRY_OVERHEAD
    }
}

pub type RecordsDb = Database<'static, U64<BigEndian>, Bytes>;
pub type CursorsDb = Database<'static, Str, U64<BigEndian>>;
pub type MetaDb = Database<'static, Str, U64<BigEndian>>;
pub type SessionsDb = Database<'static, Str, Bytes>;

/// An open LMDB environment with its databases.
pub struct Store {
    pub env: Env,
    pub records: RecordsDb,
    pub cursors: CursorsDb,
    pub meta: MetaDb,
    /// Per MQTT client id, the packet ids and fingerprints of its latest journaled QoS 1/2
    /// publishes (see `sessions::Sessions`). Absent in a read-only store: only the writer
    /// uses it. Journals of earlier releases gain it at their first read-write open; those
    /// releases ignore it.
    pub sessions: Option<SessionsDb>,
}

/// Counters persisted in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub next_seq: u64,
    pub bytes_held: u64,
    /// Readings deleted by `drop-oldest` before every upstream had them, since the journal
    /// was created.
    pub dropped_total: u64,
    /// Readings removed for `journal.max_age` before every upstream had them, since the
    /// journal was created (or first opened by a build with the age limit).
    pub expired_total: u64,
    /// Readings removed by `on_full = "thin"`, since the journal was created (or first
    /// opened by a build with thinning).
    pub thinned_total: u64,
}

/// Creates the journal directory (and any missing parents) private to the service user,
/// 0700 whatever the umask: the journal holds every reading the gateway took in, and
/// LMDB creates its files 0600 inside it. An existing directory is left as the operator
/// made it (a backup group may be meant to read it), with a warning when every user can.
fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |what: &str, source| JournalError::Io {
        what: format!("{what} journal directory {}", dir.display()),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("create", e))?;
        // DirBuilder's mode is masked by the umask; set it outright so a 0077-less umask
        // cannot widen it either way.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("set the mode of", e))?;
    } else if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = %format!("{mode:03o}"),
                "Every user on this machine can open the journal directory; run `chmod 700` on it (the readings in it are the plant's data)."
            );
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the environment in `dir` for reading and writing.
    pub fn open(dir: &Path, map_size: usize) -> Result<Store, JournalError> {
        create_private_dir(dir)?;
        Self::open_with(dir, map_size, false)
    }

    /// Opens an existing environment read-only, alongside a running daemon.
    pub fn open_read_only(dir: &Path) -> Result<Store, JournalError> {
        if !dir.join("data.mdb").exists() {
            return Err(JournalError::Missing {
                dir: dir.to_owned(),
            });
        }
        Self::open_with(dir, 0, true)
    }

    fn open_with(dir: &Path, map_size: usize, read_only: bool) -> Result<Store, JournalError> {
        let mut opts = EnvOpenOptions::new();
        opts.max_dbs(4);
        if map_size > 0 {
            opts.map_size(map_size);
        }
        if read_only {
            // SAFETY: READ_ONLY only restricts what this handle may do.
            unsafe {
                opts.flags(heed::EnvFlags::READ_ONLY);
            }
        }
        // SAFETY: the journal directory belongs to tidegate; the only other process that
        // opens it is `tidegate status`, read-only, through LMDB's own lock file.
        let env = unsafe { opts.open(dir) }.map_err(|e| JournalError::lmdb("open", e))?;
        let missing = || JournalError::Missing {
            dir: dir.to_owned(),
        };
        let (records, cursors, meta, sessions): (RecordsDb, CursorsDb, MetaDb, Option<SessionsDb>) =
            if read_only {
                let rtxn = env.read_txn().map_err(|e| JournalError::lmdb("open", e))?;
                let opened = env
                    .open_databases_and_commit(rtxn, |dbo, rtxn| -> Result<_, heed::Error> {
                        // Not `sessions`: only the writer uses it (see [`Store::sessions`]).
                        Ok(CommitOrAbort::<_, ()>::Commit((
                            dbo.open_database(rtxn, Some("records"))?,
                            dbo.open_database(rtxn, Some("cursors"))?,
                            dbo.open_database(rtxn, Some("meta"))?,
                        )))
                    })
                    .map_err(|e| JournalError::lmdb("open", e))?;
                match opened {
                    CommitOrAbort::Commit((Some(r), Some(c), Some(m))) => (r, c, m, None),
                    _ => return Err(missing()),
                }
            } else {
                let wtxn = env.write_txn().map_err(|e| JournalError::lmdb("open", e))?;
                let created = env
                    .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_, heed::Error> {
                        let records =
                            dbo.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("records"))?;
                        let cursors =
                            dbo.create_database::<Str, U64<BigEndian>>(wtxn, Some("cursors"))?;
                        let meta =
                            dbo.create_database::<Str, U64<BigEndian>>(wtxn, Some("meta"))?;
                        let sessions = dbo.create_database::<Str, Bytes>(wtxn, Some("sessions"))?;
                        if meta.get(wtxn, "format")?.is_none() {
                            meta.put(wtxn, "format", &JOURNAL_FORMAT)?;
                        }
                        // Random rather than a time: a gateway without a real-time clock may
                        // boot at the same wrong time every time. Never 0, which means "none".
                        if meta.get(wtxn, "epoch")?.is_none() {
                            meta.put(wtxn, "epoch", &rand::random::<u64>().max(1))?;
                        }
                        Ok(CommitOrAbort::<_, ()>::Commit((
                            records,
                            cursors,
                            meta,
                            Some(sessions),
                        )))
                    })
                    .map_err(|e| JournalError::lmdb("open", e))?;
                match created {
                    CommitOrAbort::Commit(dbs) => dbs,
                    CommitOrAbort::Abort(()) => return Err(missing()),
                }
            };
        let store = Store {
            env,
            records,
            cursors,
            meta,
            sessions,
        };
        store.check_format()?;
        if !read_only {
            // Reader slots of a process killed mid-read (a `tidegate status`, or this daemon
            // after SIGKILL) would pin old pages and make the file grow; free them.
            match store.env.clear_stale_readers() {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    stale_readers = n,
                    "Cleared reader slots left by killed processes."
                ),
                Err(e) => tracing::warn!(error = %e, "Could not check for stale LMDB readers."),
            }
        }
        Ok(store)
    }

    fn check_format(&self) -> Result<(), JournalError> {
        let rtxn = self.read_txn()?;
        let found = self
            .meta
            .get(&rtxn, "format")
            .map_err(|e| JournalError::lmdb("read", e))?
            .unwrap_or(JOURNAL_FORMAT);
        if found > JOURNAL_FORMAT {
            return Err(JournalError::FutureFormat {
                dir: self.env.path().to_owned(),
                found,
                supported: JOURNAL_FORMAT,
            });
        }
        // The newest record must be readable by this build; an older tidegate meeting a
        // newer record format refuses to start rather than forward garbage.
        if let Some((seq, value)) = self
            .records
            .last(&rtxn)
            .map_err(|e| JournalError::lmdb("read", e))?
        {
            if let Err(e @ record::DecodeError::FutureVersion { .. }) = record::decode(seq, value) {
                return Err(JournalError::Decode(e));
            }
        }
        Ok(())
    }

    pub fn read_txn(&self) -> Result<RoTxn<'_, heed::WithTls>, JournalError> {
        self.env
            .read_txn()
            .map_err(|e| JournalError::lmdb("begin read transaction", e))
    }

    pub fn write_txn(&self) -> Result<RwTxn<'_>, heed::Error> {
        self.env.write_txn()
    }

    /// Reads `next_seq` and `bytes_held`, deriving them from the records if absent.
    pub fn meta(&self, txn: &RoTxn<'_>) -> Result<Meta, heed::Error> {
        let next_seq = match self.meta.get(txn, "next_seq")? {
            Some(n) => n,
            None => self.records.last(txn)?.map(|(seq, _)| seq + 1).unwrap_or(1),
        };
        let bytes_held = self.meta.get(txn, "bytes_held")?.unwrap_or(0);
        let dropped_total = self.meta.get(txn, "dropped_total")?.unwrap_or(0);
        let expired_total = self.meta.get(txn, "expired_total")?.unwrap_or(0);
        let thinned_total = self.meta.get(txn, "thinned_total")?.unwrap_or(0);
        Ok(Meta {
            thinned_total,
            next_seq,
            bytes_held,
            dropped_total,
            expired_total,
        })
    }

    /// The journal's epoch (see the module docs); `None` only for a journal written by a
    /// build without epochs and not yet opened for writing by this one.
    pub fn epoch(&self, txn: &RoTxn<'_>) -> Result<Option<u64>, heed::Error> {
        self.meta.get(txn, "epoch")
    }

    /// `upstream`'s stored budget usage (`meta` keys `budget.period/<name>` and
    /// `budget.used/<name>`).
    pub fn budget_usage(
        &self,
        txn: &RoTxn<'_>,
        upstream: &str,
    ) -> Result<Option<super::BudgetUsage>, heed::Error> {
        let period = self.meta.get(txn, &budget_key("period", upstream))?;
        let used = self.meta.get(txn, &budget_key("used", upstream))?;
        Ok(period.map(|period| super::BudgetUsage {
            period,
            used: used.unwrap_or(0),
        }))
    }

    /// Stores `upstream`'s budget usage in `txn`.
    pub fn put_budget_usage(
        &self,
        txn: &mut RwTxn<'_>,
        upstream: &str,
        usage: super::BudgetUsage,
    ) -> Result<(), heed::Error> {
        self.meta
            .put(txn, &budget_key("period", upstream), &usage.period)?;
        self.meta
            .put(txn, &budget_key("used", upstream), &usage.used)
    }

    /// Every stored record from `from` on, undecoded, in sequence order: for
    /// `tidegate journal check|dump`, which report a bad record rather than skip it.
    pub fn raw_from<'t>(
        &self,
        txn: &'t RoTxn<'_>,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, &'t [u8]), heed::Error>> + 't, heed::Error> {
        self.records.range(txn, &(from..))
    }

    pub fn put_meta(&self, txn: &mut RwTxn<'_>, meta: Meta) -> Result<(), heed::Error> {
        self.meta.put(txn, "next_seq", &meta.next_seq)?;
        self.meta.put(txn, "dropped_total", &meta.dropped_total)?;
        if meta.expired_total > 0 {
            // Written once there is something to say, so a journal without an age limit
            // keeps exactly the rows earlier builds wrote.
            self.meta.put(txn, "expired_total", &meta.expired_total)?;
        }
        if meta.thinned_total > 0 {
            self.meta.put(txn, "thinned_total", &meta.thinned_total)?;
        }
        self.meta.put(txn, "bytes_held", &meta.bytes_held)
    }

    /// Appends one encoded record; `seq` must exceed every key held.
    pub fn append(&self, txn: &mut RwTxn<'_>, seq: u64, value: &[u8]) -> Result<(), heed::Error> {
        self.records
            .put_with_flags(txn, PutFlags::APPEND, &seq, value)
    }

    /// First and last sequence held, if any.
    pub fn bounds(&self, txn: &RoTxn<'_>) -> Result<Option<(u64, u64)>, heed::Error> {
        let first = self.records.first(txn)?.map(|(s, _)| s);
        let last = self.records.last(txn)?.map(|(s, _)| s);
        Ok(first.zip(last))
    }

    /// Deletes every record in `range`; returns (count, accounted bytes) removed.
    pub fn delete_range(
        &self,
        txn: &mut RwTxn<'_>,
        range: impl RangeBounds<u64>,
    ) -> Result<(u64, u64), heed::Error> {
        let mut count = 0;
        let mut bytes = 0;
        let mut iter = self.records.range_mut(txn, &range)?;
        while let Some(item) = iter.next() {
            let (_, value) = item?;
            bytes += accounted_size(value.len());
            count += 1;
            // SAFETY: no reference into the database is kept across the deletion.
            unsafe { iter.del_current()? };
        }
        Ok((count, bytes))
    }

    /// Deletes from the front until at least `need` accounted bytes are freed or `limit`
    /// (exclusive) is reached. Returns (count, bytes, last seq removed).
    pub fn delete_oldest(
        &self,
        txn: &mut RwTxn<'_>,
        need: u64,
    ) -> Result<(u64, u64, Option<u64>), heed::Error> {
        let mut count = 0;
        let mut bytes = 0;
        let mut last = None;
        let mut iter = self.records.iter_mut(txn)?;
        while bytes < need {
            let Some(item) = iter.next() else { break };
            let (seq, value) = item?;
            bytes += accounted_size(value.len());
            count += 1;
            last = Some(seq);
            // SAFETY: no reference into the database is kept across the deletion.
            unsafe { iter.del_current()? };
        }
        Ok((count, bytes, last))
    }

    /// The front records ingested before `cutoff_ms`, at most `max` of them: the first seq
    /// after them (`None` if the first record held is not older), and whether more such
    /// records may follow. A record that fails its checksum cannot be dated; it is removed
    /// with the dated records after it, and stops the span if none follows.
    pub fn expired_end(
        &self,
        txn: &RoTxn<'_>,
        cutoff_ms: u64,
        max: u64,
    ) -> Result<(Option<u64>, bool), heed::Error> {
        let mut end = None;
        for (seen, item) in (0..).zip(self.records.iter(txn)?) {
            let (seq, value) = item?;
            if seen == max {
                return Ok((end, end.is_some()));
            }
            match record::decode(seq, value) {
                Ok(r) if r.reading.ingest_ms < cutoff_ms => end = Some(seq + 1),
                Ok(_) => break,
                Err(_) => continue,
            }
        }
        Ok((end, false))
    }

    /// Reads up to `max` records starting at `from` (or the first held after it).
    pub fn read_from(
        &self,
        txn: &RoTxn<'_>,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Result<Record, record::DecodeError>>, heed::Error> {
        let mut out = Vec::with_capacity(max.min(4096));
        let mut bytes = 0usize;
        for item in self.records.range(txn, &(from..))? {
            let (seq, value) = item?;
            if out.len() >= max || (!out.is_empty() && bytes + value.len() > max_bytes) {
                break;
            }
            bytes += value.len();
            out.push(record::decode(seq, value));
        }
        Ok(out)
    }

    /// Ingest time of the record `seq`, or of the first held after it.
    pub fn ingest_ms_at_or_after(
        &self,
        txn: &RoTxn<'_>,
        seq: u64,
    ) -> Result<Option<u64>, heed::Error> {
        match self.records.range(txn, &(seq..))?.next() {
            Some(item) => {
                let (s, v) = item?;
                Ok(record::decode(s, v).ok().map(|r| r.reading.ingest_ms))
            }
            None => Ok(None),
        }
    }

    /// The thinned spans that overlap `from..=to`, oldest first.
    pub fn thinned_spans(
        &self,
        _txn: &RoTxn<'_>,
        _from: u64,
        _to: u64,
    ) -> Result<Vec<super::ThinnedSpan>, heed::Error> {
        Ok(Vec::new())
    }

    /// All cursors stored, by upstream name.
    pub fn cursors(&self, txn: &RoTxn<'_>) -> Result<Vec<(String, u64)>, heed::Error> {
        let mut out = Vec::new();
        for item in self.cursors.iter(txn)? {
            let (name, seq) = item?;
            out.push((name.to_owned(), seq));
        }
        Ok(out)
    }

    /// Bytes the environment occupies on disk.
    pub fn disk_size(&self) -> u64 {
        self.env.real_disk_size().unwrap_or(0)
    }

    /// Current map size.
    pub fn map_size(&self) -> usize {
        self.env.info().map_size
    }

    /// Grows the map. The caller (the writer thread) guarantees no transaction of this
    /// process is open; LMDB handles readers of other processes through its lock file.
    pub fn resize(&self, new_size: usize) -> Result<(), heed::Error> {
        // SAFETY: called only by the writer thread between transactions, and readers in
        // this process hold no transaction across a call into the writer.
        unsafe { self.env.resize(new_size) }
    }
}

/// The `meta` key of one field of an upstream's budget usage.
fn budget_key(field: &str, upstream: &str) -> String {
    format!("budget.{field}/{upstream}")
}

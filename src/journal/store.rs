//! The LMDB environment: the only module that talks to heed.
//!
//! Three named databases live in one environment, so a single write transaction commits
//! readings, cursors and bookkeeping together:
//!
//! | database  | key                    | value                                        |
//! |-----------|------------------------|----------------------------------------------|
//! | `records` | first seq, big-endian u64 | a block of readings or one record ([`super::block`]) |
//! | `cursors` | upstream name (UTF-8)  | next seq to send, big-endian u64             |
//! | `meta`    | `format`, `next_seq`, `bytes_held`, `readings_held`, `dropped_total`, `expired_total`, `thinned_total`, `epoch` | u64, big-endian |
//! | `thinned` | first seq of a thinned span, big-endian u64 | last seq, factor, first and last ingest ms ([`super::ThinnedSpan`]) |
//!
//! `epoch` is chosen at random when the journal is created (or first opened by a build that
//! knows it) and never changes: a journal that is deleted and created again restarts its
//! sequence numbers at 1 under a new epoch, so (gateway id, epoch, seq) names one reading
//! for good. Upstreams carry it (Kafka header `tidegate-epoch`) so that the Kafka sink's
//! de-duplication after a restart compares only readings of this very journal.
//!
//! Sequence numbers held lie in one range `first..=last`: readings are only appended at the
//! end and removed from the front (delivered to every upstream, or dropped by `drop-oldest`
//! or for `max_age`), a whole value at a time. Inside the range only thinning removes
//! readings, and every hole it leaves lies in a span of `thinned`. `next_seq` is kept in
//! `meta` so a number is never reused even when every record has been removed.

use std::ops::Bound;
use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, PutFlags, RoTxn, RwTxn};

use super::block::{self, ValueInfo};
use super::{JournalError, ThinnedSpan};
use crate::record::{self, Record};

/// Version of the journal layout (databases and meta keys), separate from the value format.
/// 2: blocks of readings may be stored, thinning may leave holes named in `thinned`. This
/// build opens layout 1 and marks it 2 at its first read-write open, so an older build
/// refuses it rather than misread it.
pub const JOURNAL_FORMAT: u64 = 2;

/// LMDB page size assumed for space accounting.
const PAGE: u64 = 4096;

/// Bytes LMDB spends on a record besides its value: 8-byte key, node header, page slot.
const ENTRY_OVERHEAD: u64 = 24;

/// Values larger than this go to overflow pages, which are allocated whole.
pub(super) const OVERFLOW_THRESHOLD: u64 = PAGE / 2 - 64;

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
pub type ThinnedDb = Database<'static, U64<BigEndian>, Bytes>;

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
    /// The thinned spans (see [`super::ThinnedSpan`]). Absent only in a read-only store of a
    /// journal no build with thinning has opened for writing: it has no spans.
    pub thinned: Option<ThinnedDb>,
}

/// Counters persisted in `meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub next_seq: u64,
    pub bytes_held: u64,
    /// Readings held (not `last - first + 1` once thinning left holes).
    pub readings_held: u64,
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

/// Values removed from the front: readings, accounted bytes, first and last seq.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub count: u64,
    pub bytes: u64,
    pub first: u64,
    pub last: u64,
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
        opts.max_dbs(5);
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
        type Dbs = (
            RecordsDb,
            CursorsDb,
            MetaDb,
            Option<SessionsDb>,
            Option<ThinnedDb>,
        );
        let (records, cursors, meta, sessions, thinned): Dbs = if read_only {
            let rtxn = env.read_txn().map_err(|e| JournalError::lmdb("open", e))?;
            let opened = env
                .open_databases_and_commit(rtxn, |dbo, rtxn| -> Result<_, heed::Error> {
                    // Not `sessions`: only the writer uses it (see [`Store::sessions`]).
                    Ok(CommitOrAbort::<_, ()>::Commit((
                        dbo.open_database(rtxn, Some("records"))?,
                        dbo.open_database(rtxn, Some("cursors"))?,
                        dbo.open_database(rtxn, Some("meta"))?,
                        dbo.open_database(rtxn, Some("thinned"))?,
                    )))
                })
                .map_err(|e| JournalError::lmdb("open", e))?;
            match opened {
                CommitOrAbort::Commit((Some(r), Some(c), Some(m), t)) => (r, c, m, None, t),
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
                    let meta = dbo.create_database::<Str, U64<BigEndian>>(wtxn, Some("meta"))?;
                    let sessions = dbo.create_database::<Str, Bytes>(wtxn, Some("sessions"))?;
                    let thinned =
                        dbo.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("thinned"))?;
                    let stored = meta.get(wtxn, "format")?;
                    // Marked with this build's layout at once (a newer one is refused
                    // below, before anything is written under it).
                    if stored.is_none_or(|f| f < JOURNAL_FORMAT) {
                        if stored.is_some() && meta.get(wtxn, "readings_held")?.is_none() {
                            // A journal of layout 1 holds one record per value.
                            meta.put(wtxn, "readings_held", &records.len(wtxn)?)?;
                        }
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
                        Some(thinned),
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
            thinned,
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
            super::block::check_version(seq, value).map_err(JournalError::Decode)?;
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
        let readings_held = match self.meta.get(txn, "readings_held")? {
            Some(n) => n,
            // Only a journal of layout 1 (one record per value) lacks it, and only when
            // opened read-only before any build with blocks wrote to it.
            None => self.records.len(txn)?,
        };
        let dropped_total = self.meta.get(txn, "dropped_total")?.unwrap_or(0);
        let expired_total = self.meta.get(txn, "expired_total")?.unwrap_or(0);
        let thinned_total = self.meta.get(txn, "thinned_total")?.unwrap_or(0);
        Ok(Meta {
            thinned_total,
            next_seq,
            bytes_held,
            readings_held,
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
        self.meta.put(txn, "readings_held", &meta.readings_held)?;
        self.meta.put(txn, "bytes_held", &meta.bytes_held)
    }

    /// Appends one value under `key`; `key` must exceed every key held.
    pub fn append(&self, txn: &mut RwTxn<'_>, key: u64, value: &[u8]) -> Result<(), heed::Error> {
        self.records
            .put_with_flags(txn, PutFlags::APPEND, &key, value)
    }

    /// The single records (format 1) after the last block, newest first, as (key, value
    /// length), up to about `max_bytes` of values: the readings waiting to be sealed into a
    /// block. Bounded so that a long run (a journal written uncompressed before) costs a
    /// commit no more than a block's worth.
    pub fn trailing_singles(
        &self,
        txn: &RoTxn<'_>,
        max_bytes: usize,
    ) -> Result<Vec<(u64, usize)>, heed::Error> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.records.rev_iter(txn)? {
            let (key, value) = item?;
            if bytes >= max_bytes || block::info(key, value).block {
                break;
            }
            bytes += value.len();
            out.push((key, value.len()));
        }
        Ok(out)
    }

    /// Deletes the value under `key` (a single record sealed into a block).
    pub fn delete_value(&self, txn: &mut RwTxn<'_>, key: u64) -> Result<bool, heed::Error> {
        self.records.delete(txn, &key)
    }

    /// Stores `value` under `key`, replacing what is there (a single record at the tail
    /// replaced by the block sealed from it; blocks rewritten by thinning).
    pub fn put_value(
        &self,
        txn: &mut RwTxn<'_>,
        key: u64,
        value: &[u8],
    ) -> Result<(), heed::Error> {
        self.records.put(txn, &key, value)
    }

    /// The last value held, with its key.
    pub fn last_value<'t>(
        &self,
        txn: &'t RoTxn<'_>,
    ) -> Result<Option<(u64, &'t [u8])>, heed::Error> {
        self.records.last(txn)
    }

    /// First and last sequence held, if any.
    pub fn bounds(&self, txn: &RoTxn<'_>) -> Result<Option<(u64, u64)>, heed::Error> {
        let first = self.records.first(txn)?.map(|(s, _)| s);
        let last = self
            .records
            .last(txn)?
            .map(|(key, value)| block::info(key, value).last);
        Ok(first.zip(last))
    }

    /// Deletes values from the front while `go` says so of each (given its header and the
    /// accounted bytes removed so far); returns what went.
    pub fn remove_front(
        &self,
        txn: &mut RwTxn<'_>,
        mut go: impl FnMut(&ValueInfo, u64) -> bool,
    ) -> Result<Removed, heed::Error> {
        let mut removed = Removed::default();
        let mut iter = self.records.iter_mut(txn)?;
        while let Some(item) = iter.next() {
            let (key, value) = item?;
            let info = block::info(key, value);
            if !go(&info, removed.bytes) {
                break;
            }
            if removed.count == 0 {
                removed.first = info.first;
            }
            removed.last = info.last;
            removed.count += info.count;
            removed.bytes += accounted_size(value.len());
            // SAFETY: no reference into the database is kept across the deletion.
            unsafe { iter.del_current()? };
        }
        Ok(removed)
    }

    /// The front values whose readings were all ingested before `cutoff_ms`, at most about
    /// `max` readings of them: the first key after them (`None` if the first value held
    /// has a newer reading), and whether more such values may follow. A value that cannot
    /// be dated (it fails its checksum) is removed with the dated values after it, and
    /// stops the span if none follows.
    pub fn expired_end(
        &self,
        txn: &RoTxn<'_>,
        cutoff_ms: u64,
        max: u64,
    ) -> Result<(Option<u64>, bool), heed::Error> {
        let mut end = None;
        let mut seen = 0;
        for item in self.records.iter(txn)? {
            let (key, value) = item?;
            if seen >= max {
                return Ok((end, end.is_some()));
            }
            let info = block::info(key, value);
            seen += info.count;
            match block::newest_ms(key, value) {
                Some(ms) if ms < cutoff_ms => end = Some(info.last + 1),
                Some(_) => break,
                None => continue,
            }
        }
        Ok((end, false))
    }

    /// Reads up to `max` readings (and about `max_bytes` of them) starting at `from` (or the
    /// first held after it). A value that cannot be decoded is one error in place.
    pub fn read_from(
        &self,
        txn: &RoTxn<'_>,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Result<Record, record::DecodeError>>, heed::Error> {
        let mut out = Vec::with_capacity(max.min(4096));
        let mut bytes = 0usize;
        let mut decoded = Vec::new();
        'values: for item in self.records.range(txn, &(self.key_holding(txn, from)?..))? {
            let (key, value) = item?;
            if out.len() >= max || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            decoded.clear();
            if let Err(e) = block::decode(key, value, &mut decoded) {
                if block::info(key, value).last >= from {
                    out.push(Err(e));
                }
                continue;
            }
            for r in decoded.drain(..) {
                if r.seq < from {
                    continue;
                }
                let len = r.reading.encoded_len();
                if out.len() >= max || (!out.is_empty() && bytes + len > max_bytes) {
                    break 'values;
                }
                bytes += len;
                out.push(Ok(r));
            }
        }
        Ok(out)
    }

    /// The key of the value holding `seq`, or `seq` itself when none does (then the
    /// values after it are the ones to read).
    pub fn key_holding(&self, txn: &RoTxn<'_>, seq: u64) -> Result<u64, heed::Error> {
        Ok(match self.records.rev_range(txn, &(..=seq))?.next() {
            Some(item) => {
                let (key, value) = item?;
                if block::info(key, value).last >= seq {
                    key
                } else {
                    seq
                }
            }
            None => seq,
        })
    }

    /// The reading `seq`, or the first held after it (an error in place if its value does
    /// not decode).
    pub fn first_from(
        &self,
        txn: &RoTxn<'_>,
        seq: u64,
    ) -> Result<Option<Result<Record, record::DecodeError>>, heed::Error> {
        Ok(self.read_from(txn, seq, 1, usize::MAX)?.into_iter().next())
    }

    /// Ingest time of the reading `seq`, or of the first held after it.
    pub fn ingest_ms_at_or_after(
        &self,
        txn: &RoTxn<'_>,
        seq: u64,
    ) -> Result<Option<u64>, heed::Error> {
        Ok(self
            .first_from(txn, seq)?
            .and_then(|r| r.ok())
            .map(|r| r.reading.ingest_ms))
    }

    /// The thinned spans that overlap `from..=to`, oldest first.
    pub fn thinned_spans(
        &self,
        txn: &RoTxn<'_>,
        from: u64,
        to: u64,
    ) -> Result<Vec<ThinnedSpan>, heed::Error> {
        let Some(db) = self.thinned else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if let Some(item) = db.rev_range(txn, &(..=from))?.next() {
            let (first, value) = item?;
            if let Some(span) = decode_span(first, value).filter(|s| s.last >= from) {
                out.push(span);
            }
        }
        for item in db.range(txn, &(Bound::Excluded(from), Bound::Included(to)))? {
            let (first, value) = item?;
            out.extend(decode_span(first, value));
        }
        Ok(out)
    }

    /// Stores `span`, replacing any span starting at the same seq. The caller keeps spans
    /// from overlapping.
    pub fn put_span(&self, txn: &mut RwTxn<'_>, span: &ThinnedSpan) -> Result<(), heed::Error> {
        if let Some(db) = self.thinned {
            let mut value = Vec::with_capacity(28);
            value.extend_from_slice(&span.last.to_le_bytes());
            value.extend_from_slice(&span.factor.to_le_bytes());
            value.extend_from_slice(&span.first_ms.to_le_bytes());
            value.extend_from_slice(&span.last_ms.to_le_bytes());
            db.put(txn, &span.first, &value)?;
        }
        Ok(())
    }

    /// Deletes the span starting at `first`.
    pub fn delete_span(&self, txn: &mut RwTxn<'_>, first: u64) -> Result<(), heed::Error> {
        if let Some(db) = self.thinned {
            db.delete(txn, &first)?;
        }
        Ok(())
    }

    /// After readings were removed from the front: drops the spans that end before the
    /// front and starts the one the front lies in at it, so every span ends with a reading
    /// held and begins with one, or at `keep_from`.
    ///
    /// `keep_from` is the lowest sequence no upstream may have sent, past what drop-oldest
    /// or the age limit removed: readings before it left the front delivered everywhere,
    /// while a reading from it on that is not held was thinned away inside the span. The
    /// span keeps naming those, so a forwarder whose cursor lies between `keep_from` and
    /// the first reading held still knows the hole as thinning, not loss.
    pub fn fit_spans_to_front(
        &self,
        txn: &mut RwTxn<'_>,
        keep_from: u64,
    ) -> Result<(), heed::Error> {
        let (first_seq, first_ms) = match self.first_from(txn, 0)? {
            Some(Ok(r)) => (r.seq, Some(r.reading.ingest_ms)),
            Some(Err(e)) => (e.seq(), None),
            None => (u64::MAX, None),
        };
        let start = keep_from.min(first_seq);
        for span in self.thinned_spans(txn, 0, first_seq)? {
            if span.first >= start {
                continue;
            }
            self.delete_span(txn, span.first)?;
            // A span reduced to the first reading held alone names no hole.
            if span.last >= start && (span.last > first_seq || start < first_seq) {
                self.put_span(
                    txn,
                    &ThinnedSpan {
                        first: start,
                        first_ms: first_ms.unwrap_or(span.first_ms),
                        ..span
                    },
                )?;
            }
        }
        Ok(())
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

fn decode_span(first: u64, value: &[u8]) -> Option<ThinnedSpan> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(value.get(at..at + 8)?.try_into().ok()?))
    };
    Some(ThinnedSpan {
        first,
        last: u64_at(0)?,
        factor: u32::from_le_bytes(value.get(8..12)?.try_into().ok()?),
        first_ms: u64_at(12)?,
        last_ms: u64_at(20)?,
    })
}

/// The `meta` key of one field of an upstream's budget usage.
fn budget_key(field: &str, upstream: &str) -> String {
    format!("budget.{field}/{upstream}")
}

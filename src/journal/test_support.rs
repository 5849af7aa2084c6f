//! Test support for stages that read the journal: make the holes thinning leaves (delete
//! given readings) and describe the span they lie in, before the writer thins by itself.

use super::{Journal, JournalError, ThinnedSpan};

/// Deletes the readings `seqs` from `journal`, as thinning does inside a span, and returns
/// the span `first..=last` at `factor` as the journal describes it (ingest times of its
/// first and last reading; both must be held). Records only, and one record per value
/// (`compression = "none"`): `bytes_held` and the span table are left as they are.
pub(crate) fn thin(
    journal: &Journal,
    seqs: &[u64],
    (first, last, factor): (u64, u64, u32),
) -> Result<ThinnedSpan, JournalError> {
    journal.reading(|store| {
        let lm = |e| JournalError::lmdb("thin for a test", e);
        let mut txn = store.write_txn().map_err(lm)?;
        for seq in seqs {
            store.records.delete(&mut txn, seq).map_err(lm)?;
        }
        txn.commit().map_err(lm)?;
        let txn = store.read_txn()?;
        let ingest = |seq| -> Result<u64, JournalError> {
            let at = store.ingest_ms_at_or_after(&txn, seq).map_err(lm)?;
            Ok(at.expect("a span's first and last readings are held"))
        };
        Ok(ThinnedSpan {
            first,
            last,
            factor,
            first_ms: ingest(first)?,
            last_ms: ingest(last)?,
        })
    })
}

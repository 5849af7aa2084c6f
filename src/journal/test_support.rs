//! Test support for stages that read the journal: thin a chosen span by hand (delete given
//! readings, record the span), so a test decides exactly where the holes are.

use super::{Journal, JournalError, ThinnedSpan};

/// Deletes the readings `seqs` from `journal`, as thinning does inside a span, and records
/// the span `first..=last` at `factor` in the span table, as the journal describes it
/// (ingest times of its first and last reading; both must be held), returning it. One
/// record per value (`compression = "none"`); `bytes_held` is left as it is. The caller
/// keeps spans from overlapping.
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
        let ingest = |seq| -> Result<u64, JournalError> {
            let at = store.ingest_ms_at_or_after(&txn, seq).map_err(lm)?;
            Ok(at.expect("a span's first and last readings are held"))
        };
        let span = ThinnedSpan {
            first,
            last,
            factor,
            first_ms: ingest(first)?,
            last_ms: ingest(last)?,
        };
        store.put_span(&mut txn, &span).map_err(lm)?;
        txn.commit().map_err(lm)?;
        Ok(span)
    })
}

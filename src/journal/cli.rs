//! `tidegate journal check` and `tidegate journal dump`: reading a journal as it is on disk.
//!
//! Both open the LMDB environment read-only ([`Store::open_read_only`]) and read inside one
//! read transaction, so they see one consistent snapshot and are safe while the daemon runs:
//! LMDB readers never block the writer, and the daemon frees the reader slot of one killed
//! mid-read when it next opens the journal. Neither writes anything.
//!
//! # What `check` verifies
//!
//! * every value decodes: format version, lengths, CRC-32 over the key and contents (one per
//!   record, or one per block of readings: a bad block is named by its seq range and the
//!   number of readings lost with it);
//! * the sequence numbers held are contiguous (`first..=last`, the journal's invariant 3)
//!   except inside the spans thinning recorded;
//! * `meta`: `next_seq` is past the last record, `bytes_held` matches the values held and
//!   `readings_held` the readings they carry;
//! * every cursor lies in `1..=next_seq`.
//!
//! It goes through every record rather than stopping at the first bad one, so the summary
//! counts them all, and reports the first bad sequence number for the exit status.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::block;
use super::store::{accounted_size, Store};
use super::JournalError;
use crate::record::Record;

/// Why a command could not run (as opposed to finding a bad journal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("journal read failed: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// What `journal check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Records read.
    pub records: u64,
    /// First and last sequence held.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Cursors checked.
    pub cursors: u64,
    /// Every problem found, in journal order, as `(sequence or 0, sentence)`.
    pub problems: Vec<(u64, String)>,
}

impl CheckReport {
    /// The sequence number of the first bad record (0 for a problem of meta or cursors
    /// that names no record), if anything is wrong.
    pub fn first_bad_seq(&self) -> Option<u64> {
        self.problems.first().map(|(seq, _)| *seq)
    }

    /// Whether the journal passed every check.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The one-line summary `check` prints.
    pub fn summary(&self) -> String {
        let range = match (self.first_seq, self.last_seq) {
            (Some(f), Some(l)) => format!("seq {f}..={l}"),
            _ => "empty".to_owned(),
        };
        match self.problems.first() {
            None => format!(
                "journal OK: {} records ({range}), {} cursors",
                self.records, self.cursors
            ),
            Some((seq, what)) => format!(
                "journal BAD: first bad seq {seq}: {what}; {} problems in {} records ({range}), {} cursors",
                self.problems.len(),
                self.records,
                self.cursors
            ),
        }
    }
}

/// Checks the journal in `dir`; `progress` is called every `every` records with the count
/// so far (for a progress line on long journals).
pub fn check(
    dir: &Path,
    every: u64,
    mut progress: impl FnMut(u64),
) -> Result<CheckReport, InspectError> {
    let store = Store::open_read_only(dir)?;
    let txn = store.read_txn()?;
    let meta = store.meta(&txn)?;
    let spans = store.thinned_spans(&txn, 0, u64::MAX)?;
    let thinned = |from: u64, to: u64| spans.iter().any(|s| s.first < from && to < s.last);
    let mut report = CheckReport::default();
    let mut expected: Option<u64> = None;
    let mut bytes = 0u64;
    let mut readings = 0u64;
    let mut decoded = Vec::new();
    for item in store.raw_from(&txn, 0)? {
        let (key, value) = item?;
        let info = block::info(key, value);
        bytes += accounted_size(value.len());
        report.first_seq.get_or_insert(key);
        report.last_seq = Some(info.last);
        decoded.clear();
        let seqs: Vec<u64> = match block::decode(key, value, &mut decoded) {
            Ok(()) => decoded.iter().map(|r| r.seq).collect(),
            Err(e) => {
                let what = if info.block {
                    format!(
                        "block {key}..={} ({} readings, all lost with it): {e}",
                        info.last, info.count
                    )
                } else {
                    e.to_string()
                };
                report.problems.push((key, what));
                vec![key]
            }
        };
        for seq in seqs {
            if let Some(want) = expected.filter(|want| seq != *want) {
                if !thinned(want - 1, seq) {
                    report.problems.push((
                        want,
                        format!(
                            "sequence not contiguous: {want}..={} missing before {seq}, outside every thinned span",
                            seq - 1
                        ),
                    ));
                }
            }
            expected = Some(seq + 1);
        }
        expected = Some(info.last + 1);
        let before = report.records / every.max(1);
        report.records += info.count;
        readings += info.count;
        if every > 0 && report.records / every > before {
            progress(report.records);
        }
    }
    if readings != meta.readings_held {
        report.problems.push((
            0,
            format!(
                "meta readings_held {} but the values held carry {readings}",
                meta.readings_held
            ),
        ));
    }
    if let Some(last) = report.last_seq {
        if meta.next_seq <= last {
            report.problems.push((
                0,
                format!(
                    "meta next_seq {} is not past the last record {last}",
                    meta.next_seq
                ),
            ));
        }
    }
    if bytes != meta.bytes_held {
        report.problems.push((
            0,
            format!(
                "meta bytes_held {} but the records held account for {bytes}",
                meta.bytes_held
            ),
        ));
    }
    for (name, cursor) in store.cursors(&txn)? {
        report.cursors += 1;
        if cursor == 0 || cursor > meta.next_seq {
            report.problems.push((
                0,
                format!(
                    "cursor of upstream {name:?} is {cursor}, outside 1..={}",
                    meta.next_seq
                ),
            ));
        }
    }
    // Record problems first, in journal order: the first bad sequence is what the exit
    // status names.
    report.problems.sort_by_key(|(seq, _)| (*seq == 0, *seq));
    Ok(report)
}

/// One line of `journal dump`.
#[derive(Debug, Serialize)]
struct DumpLine<'a> {
    seq: u64,
    /// Ingest time, ms since the Unix epoch.
    ts: u64,
    topic: &'a str,
    source: &'a str,
    source_kind: &'static str,
    qos: u8,
    retain: bool,
    /// `utf8` or `base64`: how `payload` is written.
    encoding: &'static str,
    payload: String,
}

/// A record that does not decode, in `journal dump`.
#[derive(Debug, Serialize)]
struct DumpError {
    seq: u64,
    error: String,
}

/// What `journal dump` wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpReport {
    /// Lines written.
    pub records: u64,
    /// Of those, records that failed to decode (written as `{"seq":…,"error":…}`).
    pub bad: u64,
}

/// Writes up to `limit` records from `from` on as JSON lines to `out`.
pub fn dump(
    dir: &Path,
    from: u64,
    limit: Option<u64>,
    out: &mut impl Write,
) -> Result<DumpReport, InspectError> {
    let store = Store::open_read_only(dir)?;
    let txn = store.read_txn()?;
    let mut report = DumpReport::default();
    let mut decoded = Vec::new();
    'values: for item in store.raw_from(&txn, store.key_holding(&txn, from)?)? {
        let (key, value) = item?;
        decoded.clear();
        match block::decode(key, value, &mut decoded) {
            Ok(()) => {
                for r in decoded.iter().filter(|r| r.seq >= from) {
                    if limit.is_some_and(|l| report.records >= l) {
                        break 'values;
                    }
                    report.records += 1;
                    serde_json::to_writer(&mut *out, &dump_line(r))
                        .map_err(std::io::Error::from)?;
                    out.write_all(b"\n")?;
                }
            }
            Err(e) => {
                if block::info(key, value).last < from {
                    continue;
                }
                if limit.is_some_and(|l| report.records >= l) {
                    break;
                }
                report.records += 1;
                report.bad += 1;
                serde_json::to_writer(
                    &mut *out,
                    &DumpError {
                        seq: key,
                        error: e.to_string(),
                    },
                )
                .map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(report)
}

fn dump_line(r: &Record) -> DumpLine<'_> {
    let reading = &r.reading;
    let (encoding, payload) = match std::str::from_utf8(&reading.payload) {
        Ok(text) => ("utf8", text.to_owned()),
        Err(_) => ("base64", base64(&reading.payload)),
    };
    DumpLine {
        seq: r.seq,
        ts: reading.ingest_ms,
        topic: &reading.topic,
        source: &reading.source,
        source_kind: reading.source_kind.label(),
        qos: reading.qos,
        retain: reading.retain,
        encoding,
        payload,
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(base64(&[0xff, 0x00, 0xfe]), "/wD+");
    }
}

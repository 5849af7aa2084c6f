//! Values of the `records` database: one record (format 1) or a block of readings (format 2).
//!
//! With `journal.compression = "zstd"` the journal stores readings in **blocks**: one LMDB
//! value holds the readings from its key (the first seq) on, compressed together, and is
//! cut to fit one leaf page ([`PAGE_FIT`] bytes), so a block never costs an overflow page
//! (why: docs/design.md, "Compression at rest"). New readings wait at the tail as single
//! records of [`crate::record`]'s format 1 until a block's worth is there
//! ([`Packer::seal_target`]); then full blocks are sealed from them. With `compression =
//! "none"`, and in journals of earlier releases, every value is one format-1 record. Both
//! kinds may share a journal; the first byte tells them apart.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (2)
//! 1       1     flags: bit 0 = body compressed with zstd (else stored raw)
//! 2       2     readings in the block, little-endian
//! 4       1     dictionary id (0 = none; no dictionaries yet)
//! 5       4     raw body length, little-endian
//! 9       4     last seq - first seq (the key), little-endian
//! 13      8     newest ingest time in the block, ms since the Unix epoch, little-endian
//! 21      4     CRC-32 (IEEE) over the big-endian key followed by bytes 0..21 and the body
//! 25      ..    body: zstd frame, or the raw body
//! ```
//!
//! The raw body is the readings one after another, each a LEB128 seq delta (to the key for
//! the first, to the reading before for the others; thinning leaves holes) followed by the
//! reading's fields ([`record::encode_fields`]). The header alone answers what trimming,
//! drop-oldest and `max_age` ask (how many readings, up to which seq, how new), so they
//! remove whole blocks without decompressing them. One CRC covers the block: a flipped byte
//! anywhere makes the whole block unreadable and `journal check` names it by its key.

use std::cell::RefCell;

use crate::record::{self, DecodeError, Record};

/// The value format of a block.
pub const BLOCK_VERSION: u8 = 2;

/// Bytes of a block's header.
pub const HEADER: usize = 25;

/// Largest value LMDB keeps on a leaf page (larger ones take whole overflow pages); blocks
/// are cut to fit it.
pub const PAGE_FIT: usize = super::store::OVERFLOW_THRESHOLD as usize;

const FLAG_ZSTD: u8 = 1;

/// What a value's header says, without decoding its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueInfo {
    /// The key: the first seq in the value.
    pub first: u64,
    /// The last seq in the value.
    pub last: u64,
    /// Readings in the value.
    pub count: u64,
    /// Whether it is a block (else one format-1 record).
    pub block: bool,
}

/// Reads the header of the value stored under `key`. A value too short to have one is
/// taken as one reading (so it is trimmed and counted like one) and reported by
/// [`decode`].
pub fn info(key: u64, value: &[u8]) -> ValueInfo {
    if value.first() == Some(&BLOCK_VERSION) && value.len() >= HEADER {
        let count = u16::from_le_bytes([value[2], value[3]]) as u64;
        let span = u32::from_le_bytes([value[9], value[10], value[11], value[12]]) as u64;
        ValueInfo {
            first: key,
            last: key + span,
            count: count.max(1),
            block: true,
        }
    } else {
        ValueInfo {
            first: key,
            last: key,
            count: 1,
            block: false,
        }
    }
}

/// The newest ingest time in the value stored under `key`: from a block's header, or by
/// decoding a record (`None` when that fails its checksum: it cannot be dated).
pub fn newest_ms(key: u64, value: &[u8]) -> Option<u64> {
    if value.first() == Some(&BLOCK_VERSION) && value.len() >= HEADER {
        let mut newest = [0u8; 8];
        newest.copy_from_slice(&value[13..21]);
        Some(u64::from_le_bytes(newest))
    } else {
        record::decode(key, value).ok().map(|r| r.reading.ingest_ms)
    }
}

/// Whether this build reads the value's format (it refuses a newer one).
pub fn check_version(key: u64, value: &[u8]) -> Result<(), DecodeError> {
    match value.first() {
        Some(&v) if v > BLOCK_VERSION => Err(DecodeError::FutureVersion { seq: key, found: v }),
        _ => Ok(()),
    }
}

/// Decodes every reading of the value stored under `key`, in seq order, into `out`. A value
/// that fails its checksum or does not parse yields one error (its readings are lost
/// together).
pub fn decode(key: u64, value: &[u8], out: &mut Vec<Record>) -> Result<(), DecodeError> {
    if value.first() != Some(&BLOCK_VERSION) {
        out.push(record::decode(key, value)?);
        return Ok(());
    }
    let raw = raw_body(key, value)?;
    let count = u16::from_le_bytes([value[2], value[3]]) as usize;
    parse_entries(key, &raw, count, out)
}

/// The checked, decompressed body of a block.
fn raw_body(key: u64, value: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if value.len() < HEADER {
        return Err(DecodeError::Truncated {
            seq: key,
            len: value.len(),
        });
    }
    let stored = u32::from_le_bytes([value[21], value[22], value[23], value[24]]);
    let computed = checksum(key, &value[..21], &value[HEADER..]);
    if stored != computed {
        return Err(DecodeError::Checksum {
            seq: key,
            stored,
            computed,
        });
    }
    if value[4] != 0 {
        return Err(DecodeError::Malformed {
            seq: key,
            what: "block names a compression dictionary",
        });
    }
    let raw_len = u32::from_le_bytes([value[5], value[6], value[7], value[8]]) as usize;
    let body = &value[HEADER..];
    if value[1] & FLAG_ZSTD == 0 {
        return Ok(body.to_vec());
    }
    let raw = decompress(body, raw_len).map_err(|_| DecodeError::Malformed {
        seq: key,
        what: "block does not decompress",
    })?;
    if raw.len() != raw_len {
        return Err(DecodeError::Malformed {
            seq: key,
            what: "block decompresses to another length than its header says",
        });
    }
    Ok(raw)
}

thread_local! {
    /// One zstd decompression context per thread that reads blocks (each forwarder,
    /// status, thinning in the writer): making one allocates and
    /// initialises about 100 KiB, which per block cost more than the decompression itself.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `zstd::bulk::decompress` with this thread's reused context.
fn decompress(body: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(body, raw_len)
    })
}

fn parse_entries(
    key: u64,
    raw: &[u8],
    count: usize,
    out: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    let mut pos = 0;
    let mut seq = key;
    for i in 0..count {
        let (delta, used) = read_varint(&raw[pos..]).ok_or(DecodeError::Truncated {
            seq: key,
            len: raw.len(),
        })?;
        pos += used;
        if i > 0 && delta == 0 {
            return Err(DecodeError::Malformed {
                seq: key,
                what: "block repeats a sequence number",
            });
        }
        seq = seq.checked_add(delta).ok_or(DecodeError::Malformed {
            seq: key,
            what: "block sequence overflows",
        })?;
        let (record, used) = record::decode_fields(seq, &raw[pos..])?;
        pos += used;
        out.push(record);
    }
    if pos != raw.len() {
        return Err(DecodeError::Malformed {
            seq: key,
            what: "trailing bytes after the block's readings",
        });
    }
    Ok(())
}

fn checksum(key: u64, header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&key.to_be_bytes());
    hasher.update(header);
    hasher.update(body);
    hasher.finalize()
}

fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// One reading as a block holds it: its seq and its encoded fields.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub ingest_ms: u64,
    pub fields: Vec<u8>,
}

impl Entry {
    pub fn new(seq: u64, reading: &record::Reading) -> Entry {
        let mut fields = Vec::with_capacity(reading.encoded_len());
        record::encode_fields(reading, &mut fields);
        Entry {
            seq,
            ingest_ms: reading.ingest_ms,
            fields,
        }
    }
}

impl Entry {
    /// The bytes this entry adds to a block's raw body (its fields and, about, the seq delta).
    pub fn raw_len(&self) -> usize {
        self.fields.len() + 2
    }

    /// Appends this entry as a format-1 record (one reading, uncompressed) to `out`: how a
    /// reading waits at the tail until a block's worth is there to seal.
    pub fn single_into(&self, out: &mut Vec<u8>) {
        record::encode_fields_as_record(self.seq, &self.fields, out);
    }
}

/// Re-reads a value's readings as entries (to seal the single records waiting at the tail
/// into a block): a block's fields are cut out of the checked body as they are, without
/// building readings. Errors as [`decode`].
pub fn entries(key: u64, value: &[u8]) -> Result<Vec<Entry>, DecodeError> {
    if value.first() != Some(&BLOCK_VERSION) {
        let r = record::decode(key, value)?;
        return Ok(vec![Entry::new(r.seq, &r.reading)]);
    }
    let raw = raw_body(key, value)?;
    let count = u16::from_le_bytes([value[2], value[3]]) as usize;
    let malformed = || DecodeError::Malformed {
        seq: key,
        what: "block entry overruns the block",
    };
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes(raw.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    let mut out = Vec::with_capacity(count);
    let mut pos = 0;
    let mut seq = key;
    for _ in 0..count {
        let (delta, used) =
            read_varint(raw.get(pos..).ok_or_else(malformed)?).ok_or_else(malformed)?;
        seq = seq.checked_add(delta).ok_or_else(malformed)?;
        pos += used;
        let start = pos;
        // flags 1, ingest time 8, source kind 1, then source, topic and payload by length.
        let ingest: [u8; 8] = raw
            .get(start + 1..start + 9)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        let source = u16_at(start + 10).ok_or_else(malformed)?;
        let topic = u16_at(start + 12 + source).ok_or_else(malformed)?;
        let at = start + 14 + source + topic;
        let payload = raw
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(malformed)? as usize;
        let end = at + 4 + payload;
        out.push(Entry {
            seq,
            ingest_ms: u64::from_le_bytes(ingest),
            fields: raw.get(start..end).ok_or_else(malformed)?.to_vec(),
        });
        pos = end;
    }
    if pos != raw.len() {
        return Err(malformed());
    }
    Ok(out)
}

/// Makes block values; owns the zstd context so commits do not allocate one each.
pub struct Packer {
    compressor: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    /// Stored against raw bytes of the last block made: the first guess of how many
    /// readings fill the next.
    block_ratio: f64,
    /// Stored bytes against raw record bytes of recent blocks, to estimate what a commit
    /// will take before it is packed.
    pub ratio: f64,
    /// Raw bytes given to zstd so far (each reading should be about once).
    pub compressed_raw: u64,
}

impl Packer {
    pub fn new(level: i32) -> Result<Packer, std::io::Error> {
        Ok(Packer {
            compressor: zstd::bulk::Compressor::new(level)?,
            raw: Vec::new(),
            block_ratio: 0.25,
            ratio: 1.0,
            compressed_raw: 0,
        })
    }

    /// Takes in what a sealed block stored: `stored` accounted bytes for readings of `raw`
    /// format-1 bytes. Weighed by its raw bytes, so the estimate follows the readings
    /// without jumping at one odd block.
    pub fn observe(&mut self, raw: u64, stored: u64) {
        if raw == 0 {
            return;
        }
        let weight = (raw as f64 / 65_536.0).min(0.5);
        let seen = stored as f64 / raw as f64;
        self.ratio = (self.ratio * (1.0 - weight) + seen * weight).clamp(0.02, 1.2);
    }

    /// Raw body bytes that fill a block to a page at the ratio of the last block made: the
    /// readings waiting at the tail are sealed into a block once they reach it.
    pub fn seal_target(&self) -> usize {
        ((PAGE_FIT - HEADER) as f64 / self.block_ratio.max(0.01)) as usize
    }

    /// Encodes `entries` (in seq order, at least one) as one block.
    pub fn block(&mut self, entries: &[Entry]) -> Vec<u8> {
        let first = entries[0].seq;
        self.raw.clear();
        let mut prev = first;
        let mut newest = 0;
        for e in entries {
            write_varint(e.seq - prev, &mut self.raw);
            prev = e.seq;
            newest = newest.max(e.ingest_ms);
            self.raw.extend_from_slice(&e.fields);
        }
        self.compressed_raw += self.raw.len() as u64;
        let compressed = self
            .compressor
            .compress(&self.raw)
            .ok()
            .filter(|c| c.len() < self.raw.len());
        let (flags, body) = match &compressed {
            Some(c) => (FLAG_ZSTD, c.as_slice()),
            None => (0, self.raw.as_slice()),
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(BLOCK_VERSION);
        out.push(flags);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.push(0);
        out.extend_from_slice(&(self.raw.len() as u32).to_le_bytes());
        out.extend_from_slice(&((prev - first) as u32).to_le_bytes());
        out.extend_from_slice(&newest.to_le_bytes());
        let crc = checksum(first, &out[..21], body);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(body);
        self.block_ratio = (out.len() as f64 / self.raw.len().max(1) as f64).clamp(0.01, 1.5);
        out
    }

    /// Cuts `entries` into blocks that each fit a leaf page, in order: every block but the
    /// last is as full as it gets; a single reading too large for a page is a block alone.
    pub fn pack(&mut self, mut entries: &[Entry]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while !entries.is_empty() {
            let (n, value) = self.fill(entries);
            out.push((entries[0].seq, value));
            entries = &entries[n..];
        }
        out
    }

    /// A prefix of `entries` whose block fits a page (at least one entry, nearly the
    /// longest), and its block.
    pub fn fill(&mut self, entries: &[Entry]) -> (usize, Vec<u8>) {
        let max_n = entries.len().min(u16::MAX as usize);
        let raw: usize = entries.iter().map(|e| e.fields.len() + 2).sum();
        let mut ratio = self.block_ratio;
        // Small enough to be one block at a plausible ratio: try it whole (the open tail
        // block at low rates). A large commit is cut by the ratio of the blocks before.
        if max_n == entries.len() && raw <= 16 * PAGE_FIT {
            let whole = self.block(entries);
            if whole.len() <= PAGE_FIT || max_n == 1 {
                return (max_n, whole);
            }
            ratio = whole.len() as f64 / raw.max(1) as f64;
        }
        // Guess the count from the ratio, then correct: a guess that fits is grown once
        // by about 4 % (each try is one compression; the last few per cent of a page are
        // not worth more).
        let target = ((PAGE_FIT - HEADER) as f64 / ratio.max(0.01) * 0.96) as usize;
        let mut bytes = 0usize;
        let mut n = 0usize;
        while n < max_n && bytes + entries[n].fields.len() + 2 <= target {
            bytes += entries[n].fields.len() + 2;
            n += 1;
        }
        let mut n = n.max(1);
        let mut value = self.block(&entries[..n]);
        while value.len() > PAGE_FIT && n > 1 {
            n = (n - (n / 12).max(1)).max(1);
            value = self.block(&entries[..n]);
        }
        let more = (n + (n / 25).max(1)).min(max_n);
        if more > n {
            let bigger = self.block(&entries[..more]);
            if bigger.len() <= PAGE_FIT {
                return (more, bigger);
            }
        }
        (n, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Reading, SourceKind};

    fn reading(n: u64, size: usize) -> Reading {
        let mut payload = format!(
            "{{\"device\":\"wt-{}\",\"n\":{n},\"wind\":7.{}}}",
            n % 7,
            n % 10
        )
        .into_bytes();
        payload.resize(size.max(payload.len()), b' ');
        Reading {
            ingest_ms: 1_700_000_000_000 + n,
            source_kind: SourceKind::MqttListener,
            source: format!("wt-{}", n % 7),
            topic: format!("turbines/wt-{}/telemetry", n % 7),
            payload: payload.into(),
            qos: 1,
            retain: false,
        }
    }

    #[test]
    fn blocks_give_back_every_reading_and_fit_a_page() {
        let mut packer = Packer::new(1).expect("zstd");
        let entries: Vec<Entry> = (1..=2000)
            .map(|n| Entry::new(n, &reading(n, 120)))
            .collect();
        let blocks = packer.pack(&entries);
        assert!(blocks.len() > 1, "2000 readings need several pages");
        let mut back = Vec::new();
        for (key, value) in &blocks {
            assert!(
                value.len() <= PAGE_FIT,
                "block {key} is {} bytes",
                value.len()
            );
            let i = info(*key, value);
            let before = back.len();
            decode(*key, value, &mut back).expect("decode");
            assert_eq!(i.count as usize, back.len() - before);
            assert_eq!(i.last, back.last().map(|r: &Record| r.seq).unwrap_or(0));
        }
        assert_eq!(back.len(), 2000);
        for (n, r) in (1..=2000).zip(&back) {
            assert_eq!(r.seq, n);
            assert_eq!(r.reading, reading(n, 120));
        }
    }

    #[test]
    fn entries_cut_from_a_block_make_the_same_block_again() {
        let mut packer = Packer::new(1).expect("zstd");
        let entries: Vec<Entry> = [3u64, 4, 8, 9, 300]
            .iter()
            .map(|&n| Entry::new(n, &reading(n, 90)))
            .collect();
        let value = packer.block(&entries);
        let back = super::entries(3, &value).expect("entries");
        assert_eq!(back.len(), entries.len());
        for (a, b) in back.iter().zip(&entries) {
            assert_eq!(
                (a.seq, a.ingest_ms, &a.fields),
                (b.seq, b.ingest_ms, &b.fields)
            );
        }
        assert_eq!(packer.block(&back), value);
    }

    #[test]
    fn a_block_with_holes_keeps_each_seq() {
        let mut packer = Packer::new(1).expect("zstd");
        let entries: Vec<Entry> = [5u64, 6, 9, 200, 70_000]
            .iter()
            .map(|&n| Entry::new(n, &reading(n, 40)))
            .collect();
        let value = packer.block(&entries);
        let mut back = Vec::new();
        decode(5, &value, &mut back).expect("decode");
        let seqs: Vec<u64> = back.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![5, 6, 9, 200, 70_000]);
        assert_eq!(info(5, &value).last, 70_000);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_caught_and_names_the_block() {
        let mut packer = Packer::new(1).expect("zstd");
        let entries: Vec<Entry> = (10..60).map(|n| Entry::new(n, &reading(n, 100))).collect();
        let value = packer.block(&entries);
        for at in 0..value.len() {
            if at == 0 {
                continue; // the version byte: another format, tested below
            }
            let mut bad = value.clone();
            bad[at] ^= 0x20;
            let err = decode(10, &bad, &mut Vec::new()).expect_err("corrupt block decoded");
            assert_eq!(err.seq(), 10, "byte {at}");
        }
        // Under another key the checksum fails too: a block cannot move.
        assert!(matches!(
            decode(11, &value, &mut Vec::new()),
            Err(DecodeError::Checksum { seq: 11, .. })
        ));
    }

    #[test]
    fn a_newer_format_is_refused_and_a_record_of_format_1_still_reads() {
        assert!(matches!(
            check_version(3, &[3, 0, 0]),
            Err(DecodeError::FutureVersion { seq: 3, found: 3 })
        ));
        let v1 = record::encode(7, &reading(7, 50));
        let mut back = Vec::new();
        decode(7, &v1, &mut back).expect("format 1");
        assert_eq!(back[0].reading, reading(7, 50));
        assert_eq!(info(7, &v1).count, 1);
        assert!(!info(7, &v1).block);
    }

    #[test]
    fn incompressible_readings_are_stored_raw_and_read_back() {
        let mut packer = Packer::new(1).expect("zstd");
        let mut r = reading(1, 0);
        r.payload = (0..300)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>()
            .into();
        let value = packer.block(&[Entry::new(1, &r)]);
        assert_eq!(value[1] & FLAG_ZSTD, 0);
        let mut back = Vec::new();
        decode(1, &value, &mut back).expect("decode");
        assert_eq!(back[0].reading, r);
    }
}

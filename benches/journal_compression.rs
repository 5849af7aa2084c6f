//! Stored bytes and CPU per reading for each way the journal could compress its records: the
//! measurement behind `journal.compression` (issue 15, "Choose the method by measurement").
//!
//! firmware-sim turbine readings (JSON and the 48 B binary form), interleaved as the journal
//! sees them: every turbine once a second, in an order that changes from second to second.
//! The first `TIDEGATE_BENCH_TRAIN` readings (default 5000) train the dictionaries; the next
//! `TIDEGATE_BENCH_READINGS` (default 20000) are measured. For each method the table shows
//! the bytes the journal would account for them (`journal::store::accounted_size`: the value
//! plus LMDB's per-entry overhead, overflow values rounded to whole pages, which is what
//! `max_size` bounds and `bytes_held` reports), the factor of readings held per byte against
//! `none` (today's version-1 records), and the CPU of compressing and of decompressing, per
//! reading.
//!
//! Methods:
//! - `none`: today's record, one LMDB value per reading.
//! - `interned`: one value per reading, source and topic replaced by a 2-byte id, no
//!   compression (what interning alone gives).
//! - `record`: one value per reading, topics interned, the payload compressed alone with
//!   zstd at a level, with or without a dictionary trained on the first readings' payloads.
//! - `block`: one value per commit of `C` readings, the readings' fields (without a CRC each)
//!   compressed together with zstd, one CRC per block; with or without a dictionary trained
//!   on the first readings' encodings. With `C = 1` and a dictionary this is the per-record
//!   method; so blocks with a dictionary are also the hybrid (per record when commits are
//!   small, blocks when they are large).
//! - `block, in-page`: as `block`, but a commit is split into blocks that each fit an LMDB
//!   leaf page (at most 1,984 bytes stored), since a longer value takes whole 4 KiB overflow
//!   pages.
//! - `tail block`: in-page blocks across commits: the open block at the tail is rewritten
//!   (recompressed with the commit's readings) until it no longer fits, then page-sized
//!   blocks are sealed off its front. Stored bytes do not depend on the commit size; the
//!   CPU does (one compression of the open block per commit).
//! - `sealed`: readings wait as single records until a page's worth is there, then are
//!   sealed into one in-page block: the bytes of `tail block` (the single records of the
//!   unsealed tail left out) for one compression per reading at any commit size.
//!
//! zstd frames are stored without their 4-byte magic number and without the dictionary id
//! (the record header carries the dictionary id), as a record format would hold them.
//!
//! `cargo test --bench journal_compression` (zstd itself is built optimised in test builds,
//! see Cargo.toml, so the CPU columns hold there too; the Rust around it is not, and is not
//! timed) or `cargo bench --bench journal_compression`. `TIDEGATE_BENCH_DEVICES` (default
//! "20,100") sets the turbine counts. It prints figures and asserts only that every method
//! gives back the bytes it was given.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use firmware_sim::PayloadFormat;
use tidegate::journal::store::accounted_size;
use tidegate::record::{self, Item, Reading, Record};
use turbine_items::turbine_items;
use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::CParameter;

#[path = "../tests/common/turbine_items.rs"]
mod turbine_items;

/// zstd's frame magic number, dropped from stored frames and put back to decode them.
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Header of a compressed per-record value: version 1, flags 1, ingest ms 8, topic id 2,
/// dictionary id 1 (0 = none, or stored raw), CRC-32 4.
const RECORD_HEADER: usize = 1 + 1 + 8 + 2 + 1 + 4;

/// Header of a block value (its key is the first seq): version 1, count 2, dictionary id 1,
/// CRC-32 4.
const BLOCK_HEADER: usize = 1 + 2 + 1 + 4;

const LEVELS: [i32; 3] = [1, 3, 6];
const DICT_SIZES: [usize; 3] = [16 * 1024, 64 * 1024, 112 * 1024];
const COMMITS: [usize; 4] = [1, 10, 100, 1000];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `count` readings of `devices` turbines; within each second the turbines report in an
/// order that changes from second to second, as a journal sees independent devices.
fn readings(format: PayloadFormat, devices: usize, count: usize) -> Vec<Reading> {
    let mut all: Vec<Reading> = turbine_items(format, devices, count)
        .into_iter()
        .filter_map(|item| match item {
            Item::Reading(Record { reading, .. }) => Some(reading),
            Item::Gap(_) | Item::Thinned(_) => None,
        })
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in all.chunks_mut(devices) {
        // Fisher-Yates with a fixed xorshift: the same order every run.
        for i in (1..round.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            round.swap(i, (state % (i as u64 + 1)) as usize);
        }
    }
    all
}

/// A reading's fields as a block holds them: today's record without version and CRC.
fn block_entry(reading: &Reading, out: &mut Vec<u8>) {
    tidegate::record::encode_fields(reading, out);
}

struct Zstd {
    compressor: Compressor<'static>,
    decompressor: Decompressor<'static>,
}

impl Zstd {
    fn new(level: i32, dict: Option<&[u8]>) -> Zstd {
        let mut compressor = match dict {
            Some(d) => Compressor::with_dictionary(level, d),
            None => Compressor::new(level),
        }
        .expect("zstd compressor");
        compressor
            .set_parameter(CParameter::DictIdFlag(false))
            .expect("zstd parameter");
        compressor
            .set_parameter(CParameter::ChecksumFlag(false))
            .expect("zstd parameter");
        let decompressor = match dict {
            Some(d) => Decompressor::with_dictionary(d),
            None => Decompressor::new(),
        }
        .expect("zstd decompressor");
        Zstd {
            compressor,
            decompressor,
        }
    }

    /// Compresses `src`; returns the stored length (frame without magic) and the time taken.
    fn compress(&mut self, src: &[u8], out: &mut Vec<u8>) -> (usize, Duration) {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(src.len()));
        let t = Instant::now();
        let n = self
            .compressor
            .compress_to_buffer(src, out)
            .expect("zstd compresses");
        let d = t.elapsed();
        assert_eq!(out[..4], MAGIC);
        (n - MAGIC.len(), d)
    }

    /// Decompresses a frame produced by `compress`, timed, and checks it gives `expect`.
    fn decompress(&mut self, frame: &[u8], expect: &[u8], out: &mut Vec<u8>) -> Duration {
        out.clear();
        out.reserve(expect.len());
        let t = Instant::now();
        self.decompressor
            .decompress_to_buffer(frame, out)
            .expect("zstd decompresses");
        let d = t.elapsed();
        assert_eq!(out.as_slice(), expect, "round trip");
        d
    }
}

#[derive(Clone, Copy)]
struct Figures {
    /// What the journal accounts for (`accounted_size`).
    bytes: u64,
    /// The values' own lengths plus the per-entry overhead, before overflow values are
    /// rounded up to whole pages.
    unrounded: u64,
    compress: Duration,
    decompress: Duration,
}

impl Figures {
    fn new() -> Figures {
        Figures {
            bytes: 0,
            unrounded: 0,
            compress: Duration::ZERO,
            decompress: Duration::ZERO,
        }
    }

    /// Counts one stored value of `len` bytes.
    fn add(&mut self, len: usize) {
        self.bytes += accounted_size(len);
        self.unrounded += accounted_size(len.min(IN_PAGE)) + len.saturating_sub(IN_PAGE) as u64;
    }
}

/// The largest value LMDB keeps in a leaf page (`journal::store`'s overflow threshold):
/// anything longer takes whole 4 KiB overflow pages.
const IN_PAGE: usize = 4096 / 2 - 64;

/// Splits `readings` into blocks that each fit in a leaf page (at most [`IN_PAGE`] bytes
/// compressed, header included), as a writer would: it guesses how many readings fit from
/// the last block, and when a guess does not fit, it retries with fewer (the retries count
/// in the compression CPU). `guess` carries the estimate from one call to the next.
fn fitted_blocks(readings: &[Reading], zstd: &mut Zstd, guess: &mut usize, f: &mut Figures) {
    let (mut raw, mut out, mut back) = (Vec::new(), Vec::new(), Vec::new());
    let mut rest = readings;
    while !rest.is_empty() {
        let mut take = (*guess).clamp(1, rest.len());
        loop {
            raw.clear();
            for r in &rest[..take] {
                block_entry(r, &mut raw);
            }
            let (n, c) = zstd.compress(&raw, &mut out);
            f.compress += c;
            let len = BLOCK_HEADER + n.min(raw.len());
            if len <= IN_PAGE || take == 1 {
                f.decompress += zstd.decompress(&out, &raw, &mut back);
                f.add(len);
                // Aim the next block at 90 % of a page's room.
                *guess = (take * IN_PAGE * 9 / 10 / len).max(1);
                break;
            }
            take = (take * IN_PAGE * 9 / 10 / len).clamp(1, take - 1);
        }
        rest = &rest[take..];
    }
}

/// One open block at the tail, rewritten (recompressed with the new readings) at every
/// commit until it no longer fits a leaf page; then page-sized blocks are sealed off its
/// front. The writer keeps the open block's raw entries in memory, so a commit costs one
/// compression of the open block (plus those of the blocks it seals), whatever its size.
fn tail_blocks(measured: &[Reading], commit: usize, zstd: &mut Zstd) -> Figures {
    let mut f = Figures::new();
    let (mut raw, mut out) = (Vec::new(), Vec::new());
    let mut compress =
        |range: &[Reading], f: &mut Figures, out: &mut Vec<u8>, raw: &mut Vec<u8>| {
            raw.clear();
            for r in range {
                block_entry(r, raw);
            }
            let (n, c) = zstd.compress(raw, out);
            f.compress += c;
            BLOCK_HEADER + n.min(raw.len())
        };
    let (mut start, mut end, mut guess) = (0, 0, 16);
    while end < measured.len() {
        end = (end + commit).min(measured.len());
        loop {
            // A writer tries the whole open block only when it may fit: a large commit
            // seals page-sized blocks first without compressing all of it each time.
            if end - start <= guess + guess / 4
                && compress(&measured[start..end], &mut f, &mut out, &mut raw) <= IN_PAGE
            {
                break;
            }
            // Seal a block that fits off the front of the open one.
            let mut take = guess.clamp(1, end - start);
            loop {
                let len = compress(&measured[start..start + take], &mut f, &mut out, &mut raw);
                if len <= IN_PAGE || take == 1 {
                    f.add(len);
                    guess = (take * IN_PAGE * 9 / 10 / len).max(1);
                    break;
                }
                take = (take * IN_PAGE * 9 / 10 / len).clamp(1, take - 1);
            }
            start += take;
        }
    }
    let len = compress(&measured[start..], &mut f, &mut out, &mut raw);
    f.add(len);
    // The blocks are those of `fitted_blocks`, so reading them back costs the same; the
    // table shows "-" rather than timing it twice.
    f
}

/// Per record, topics interned, payload compressed with `zstd` (or stored raw when that is
/// no smaller, as a writer would).
fn per_record(measured: &[Reading], zstd: Option<&mut Zstd>) -> Figures {
    let mut f = Figures::new();
    let Some(zstd) = zstd else {
        for r in measured {
            f.add(RECORD_HEADER + r.payload.len());
        }
        return f;
    };
    let (mut out, mut back) = (Vec::new(), Vec::new());
    for r in measured {
        let (n, c) = zstd.compress(&r.payload, &mut out);
        f.compress += c;
        f.decompress += zstd.decompress(&out, &r.payload, &mut back);
        f.add(RECORD_HEADER + n.min(r.payload.len()));
    }
    f
}

/// One value per commit of `commit` readings, compressed together.
fn per_block(measured: &[Reading], commit: usize, zstd: &mut Zstd) -> Figures {
    let mut f = Figures::new();
    let (mut raw, mut out, mut back) = (Vec::new(), Vec::new(), Vec::new());
    for block in measured.chunks(commit) {
        raw.clear();
        for r in block {
            block_entry(r, &mut raw);
        }
        let (n, c) = zstd.compress(&raw, &mut out);
        f.compress += c;
        f.decompress += zstd.decompress(&out, &raw, &mut back);
        f.add(BLOCK_HEADER + n.min(raw.len()));
    }
    f
}

fn train(samples: &[Vec<u8>], size: usize) -> Option<Vec<u8>> {
    match zstd::dict::from_samples(samples, size) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("(training a {} KiB dictionary failed: {e})", size / 1024);
            None
        }
    }
}

fn main() {
    let train_n = env_usize("TIDEGATE_BENCH_TRAIN", 5000);
    let count = env_usize("TIDEGATE_BENCH_READINGS", 20_000);
    let device_counts: Vec<usize> = std::env::var("TIDEGATE_BENCH_DEVICES")
        .unwrap_or_else(|_| "20,100".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    println!(
        "Journal bytes per reading: {count} firmware-sim readings measured after {train_n} that train the dictionaries\n"
    );
    for devices in device_counts {
        for format in [PayloadFormat::Json, PayloadFormat::Binary] {
            run(format, devices, train_n, count);
        }
    }
}

fn run(format: PayloadFormat, devices: usize, train_n: usize, count: usize) {
    let all = readings(format, devices, train_n + count);
    let (training, measured) = all.split_at(train_n);
    let n = measured.len() as f64;
    let payload = measured.iter().map(|r| r.payload.len()).sum::<usize>() as f64 / n;
    let none: u64 = measured
        .iter()
        .enumerate()
        .map(|(i, r)| accounted_size(record::encode(i as u64 + 1, r).len()))
        .sum();
    // Interning needs a table of the (source, topic) pairs; it is tiny and held once.
    let topics: HashMap<(&str, &str), u16> = measured
        .iter()
        .map(|r| (r.source.as_str(), r.topic.as_str()))
        .zip(0..)
        .collect();
    assert!(topics.len() <= devices);

    println!("### {format} payloads ({payload:.0} B), {devices} turbines\n");
    println!("| method | level | dictionary | commit | stored B/reading | readings per byte vs none | unrounded B/reading | compress ns/reading | decompress ns/reading |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let row = |method: &str, level: &str, dict: &str, commit: &str, f: Figures| {
        let per = f.bytes as f64 / n;
        let ns = |d: Duration| {
            if d.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.0}", d.as_nanos() as f64 / n)
            }
        };
        println!(
            "| {method} | {level} | {dict} | {commit} | {per:.1} | {:.2}× | {:.1} | {} | {} |",
            none as f64 / f.bytes as f64,
            f.unrounded as f64 / n,
            ns(f.compress),
            ns(f.decompress),
        );
    };
    let zero = Figures {
        bytes: none,
        unrounded: none,
        compress: Duration::ZERO,
        decompress: Duration::ZERO,
    };
    row("none", "-", "-", "any", zero);
    row("interned", "-", "-", "any", per_record(measured, None));

    let payload_samples: Vec<Vec<u8>> = training.iter().map(|r| r.payload.to_vec()).collect();
    let entry_samples: Vec<Vec<u8>> = training
        .iter()
        .map(|r| {
            let mut e = Vec::new();
            block_entry(r, &mut e);
            e
        })
        .collect();
    let t = Instant::now();
    let payload_dicts: Vec<(usize, Option<Vec<u8>>)> = DICT_SIZES
        .iter()
        .map(|&s| (s, train(&payload_samples, s)))
        .collect();
    let entry_dicts: Vec<(usize, Option<Vec<u8>>)> = [16 * 1024, 64 * 1024]
        .iter()
        .map(|&s| (s, train(&entry_samples, s)))
        .collect();
    let training_time = t.elapsed();

    for level in LEVELS {
        let mut z = Zstd::new(level, None);
        row(
            "record",
            &level.to_string(),
            "none",
            "any",
            per_record(measured, Some(&mut z)),
        );
        for (size, dict) in &payload_dicts {
            let Some(dict) = dict else { continue };
            let mut z = Zstd::new(level, Some(dict));
            row(
                "record",
                &level.to_string(),
                &format!("{} KiB", size / 1024),
                "any",
                per_record(measured, Some(&mut z)),
            );
        }
    }
    for level in LEVELS {
        for commit in COMMITS {
            let mut z = Zstd::new(level, None);
            row(
                "block",
                &level.to_string(),
                "none",
                &commit.to_string(),
                per_block(measured, commit, &mut z),
            );
        }
    }
    for level in [1, 3] {
        for (size, dict) in &entry_dicts {
            let Some(dict) = dict else { continue };
            for commit in COMMITS {
                let mut z = Zstd::new(level, Some(dict));
                row(
                    "block",
                    &level.to_string(),
                    &format!("{} KiB", size / 1024),
                    &commit.to_string(),
                    per_block(measured, commit, &mut z),
                );
            }
        }
    }
    let dict64 = entry_dicts
        .iter()
        .find(|(s, _)| *s == 64 * 1024)
        .and_then(|(_, d)| d.as_deref());
    for level in [1, 3] {
        for dict in [None, dict64] {
            let name = if dict.is_some() { "64 KiB" } else { "none" };
            for commit in COMMITS {
                let mut z = Zstd::new(level, dict);
                let mut f = Figures::new();
                let mut guess = 16;
                for c in measured.chunks(commit) {
                    fitted_blocks(c, &mut z, &mut guess, &mut f);
                }
                row(
                    "block, in-page",
                    &level.to_string(),
                    name,
                    &commit.to_string(),
                    f,
                );
            }
            for commit in COMMITS {
                let mut z = Zstd::new(level, dict);
                row(
                    "tail block",
                    &level.to_string(),
                    name,
                    &commit.to_string(),
                    tail_blocks(measured, commit, &mut z),
                );
            }
            // Sealed: readings are held as single records until a page's worth has
            // accumulated, then sealed into one block, whatever the commit size. In the
            // steady state that is in-page blocks over the whole stream; the open tail
            // (at most one block's worth of single records) is left out.
            let mut z = Zstd::new(level, dict);
            let mut f = Figures::new();
            let mut guess = 16;
            fitted_blocks(measured, &mut z, &mut guess, &mut f);
            row("sealed", &level.to_string(), name, "any", f);
        }
    }
    println!(
        "\nTraining the {} dictionaries on {} readings took {:.2} s.\n",
        DICT_SIZES.len() + 2,
        training.len(),
        training_time.as_secs_f64()
    );
    black_box(&topics);
}

//! The rules of verification applied to a stream of records ([`Checker`]), and what they
//! found per device ([`DeviceVerify`]) and over the topic ([`VerifyReport`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::fleet::FleetReport;
use crate::seqset::{fmt_ranges, SeqSet};
use crate::telemetry::{topic_for, ReadingId};

use super::{
    KafkaReading, EPOCH_HEADER, GAP_HEADER, GATEWAY_HEADER, MAX_EXAMPLES, SEQ_HEADER,
    THINNED_HEADER,
};

/// A hole in a device's counters as delivered: the counters between two readings that
/// arrived one after the other, with the journal sequences (`tidegate-seq`) of both and
/// their journal. Whether thinning announced it is only known once every record is read,
/// so it is kept until the report.
#[derive(Debug, Clone, Copy)]
struct Hole {
    /// Index of the journal in [`Checker::journals`].
    journal: usize,
    /// Counter and journal sequence of the reading before the hole.
    after: (u64, u64),
    /// Counter and journal sequence of the reading after it.
    before: (u64, u64),
}

/// The checks of one device's stream (one boot).
#[derive(Debug, Clone, Default)]
struct Stream {
    seen: SeqSet,
    /// Highest counter seen that was not a duplicate.
    last_new: u64,
    /// The journal (index in [`Checker::journals`]) and sequence of the reading of
    /// `last_new`, if it carried a valid one.
    last_journal_seq: Option<(usize, u64)>,
    /// Holes between consecutive new counters, for telling thinned from missing.
    holes: Vec<Hole>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    reorder_examples: Vec<(u64, u64)>,
    missing_gateway_header: u64,
    missing_seq_header: u64,
    bad_seq_header: u64,
    wrong_key: u64,
    partitions: BTreeSet<i32>,
}

/// Incremental checker: feed it records in offset order (per partition) with
/// [`Checker::add`], ask for a [`VerifyReport`] whenever.
#[derive(Debug, Default)]
pub struct Checker {
    streams: HashMap<(String, u64), Stream>,
    readings: u64,
    unparseable: u64,
    gap_markers: u64,
    gap_readings: u64,
    thinned_markers: u64,
    /// Per journal (gateway and epoch), what its markers announced and what arrived.
    journals: Vec<JournalSeqs>,
    /// Index in `journals` by (`tidegate-gateway`, `tidegate-epoch`) header values.
    journal_index: HashMap<(Vec<u8>, Vec<u8>), usize>,
    thin_factor_max: u64,
    /// (gateway, epoch, seq) header values seen, to count replays, with where each was first
    /// seen (partition, offset), to say where a replay sits.
    journal_ids: HashMap<JournalRecordId, (i32, i64)>,
    replays: u64,
    replay_examples: Vec<Replay>,
}

/// A journal record's identity in the topic: its `tidegate-gateway`, `tidegate-epoch` and
/// `tidegate-seq` header values.
type JournalRecordId = (Vec<u8>, Vec<u8>, Vec<u8>);

/// One journal record the topic holds twice: its `tidegate-seq` and the two places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The `tidegate-seq` header, as text.
    pub seq: String,
    /// (partition, offset) of the first copy.
    pub first: (i32, i64),
    /// (partition, offset) of the copy seen again.
    pub again: (i32, i64),
}

/// One journal's sequences, as the topic tells them.
#[derive(Debug, Default)]
struct JournalSeqs {
    /// Sequences the thinned markers announced (markers of one span may repeat or overlap:
    /// a forwarder that starts inside a span announces the rest of it).
    announced: SeqSet,
    /// Sequences of the records that arrived, readings or not.
    delivered: SeqSet,
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Checks one record; returns its parsed identity (`None` if the payload is not a reading).
    pub fn add(&mut self, r: &KafkaReading) -> Option<ReadingId> {
        self.readings += 1;
        if r.header(GAP_HEADER).is_some() {
            match r.range(GAP_HEADER) {
                Some((first, last)) if first <= last => {
                    self.gap_markers += 1;
                    self.gap_readings += last - first + 1;
                }
                _ => self.unparseable += 1,
            }
            return None;
        }
        if r.header(THINNED_HEADER).is_some() {
            match r.thinned() {
                Some((first, last, factor)) if first <= last && factor >= 2 => {
                    self.thinned_markers += 1;
                    let j = self.journal_of(r);
                    self.journals[j].announced.insert_range(first, last);
                    self.thin_factor_max = self.thin_factor_max.max(factor);
                }
                _ => self.unparseable += 1,
            }
            return None;
        }
        if let (Some(g), Some(s)) = (r.header(GATEWAY_HEADER), r.header(SEQ_HEADER)) {
            let e = r.header(EPOCH_HEADER).unwrap_or_default();
            let here = (r.partition, r.offset);
            if let Some(first) = self
                .journal_ids
                .insert((g.to_vec(), e.to_vec(), s.to_vec()), here)
            {
                self.replays += 1;
                if self.replay_examples.len() < MAX_EXAMPLES {
                    self.replay_examples.push(Replay {
                        seq: String::from_utf8_lossy(s).into_owned(),
                        first,
                        again: here,
                    });
                }
            }
        }
        let journal = self.journal_of(r);
        let journal_seq = r.journal_seq();
        if let Some(seq) = journal_seq {
            // Any record, reading or not: a journal sequence that arrived was not thinned.
            self.journals[journal].delivered.insert(seq);
        }
        let Some(id) = ReadingId::parse(&r.payload) else {
            self.unparseable += 1;
            return None;
        };
        let s = self
            .streams
            .entry((id.device.clone(), id.boot))
            .or_default();
        s.received += 1;
        s.partitions.insert(r.partition);
        match r.header(GATEWAY_HEADER) {
            Some(v) if !v.is_empty() => {}
            _ => s.missing_gateway_header += 1,
        }
        match (r.header(SEQ_HEADER), journal_seq) {
            (None, _) => s.missing_seq_header += 1,
            (Some(_), None) => s.bad_seq_header += 1,
            (Some(_), Some(_)) => {}
        }
        let journal_seq = journal_seq.map(|seq| (journal, seq));
        if r.key.as_deref() != Some(topic_for(&id.device).as_bytes()) {
            s.wrong_key += 1;
        }
        if !s.seen.insert(id.seq) {
            s.duplicates += 1;
        } else {
            if id.seq < s.last_new {
                s.out_of_order += 1;
                if s.reorder_examples.len() < MAX_EXAMPLES {
                    s.reorder_examples.push((s.last_new, id.seq));
                }
            }
            if id.seq > s.last_new {
                if let (true, Some(after), Some(before)) =
                    (id.seq > s.last_new + 1, s.last_journal_seq, journal_seq)
                {
                    if after.0 == before.0 {
                        s.holes.push(Hole {
                            journal: before.0,
                            after: (s.last_new, after.1),
                            before: (id.seq, before.1),
                        });
                    }
                }
                s.last_new = id.seq;
                s.last_journal_seq = journal_seq;
            }
        }
        Some(id)
    }

    /// Notes a record of the topic that is not a turbine reading and is not to be checked
    /// as one (other data the gateway forwards to the same topic, e.g. alarms): only its
    /// journal sequence counts, as delivered, so that the holes around it are told right.
    pub fn add_other(&mut self, r: &KafkaReading) {
        let journal = self.journal_of(r);
        if let Some(seq) = r.journal_seq() {
            self.journals[journal].delivered.insert(seq);
        }
    }

    /// The journal of a record: its (`tidegate-gateway`, `tidegate-epoch`) header values.
    fn journal_of(&mut self, r: &KafkaReading) -> usize {
        let key = (
            r.header(GATEWAY_HEADER).unwrap_or_default().to_vec(),
            r.header(EPOCH_HEADER).unwrap_or_default().to_vec(),
        );
        let next = self.journals.len();
        let index = *self.journal_index.entry(key).or_insert(next);
        if index == next {
            self.journals.push(JournalSeqs::default());
        }
        index
    }

    /// The counters of `s` that thinning announced: inside a hole where some journal
    /// sequence between the two readings around it never arrived, and every one that never
    /// arrived was announced by thinned markers. (Sequences between them that arrived are
    /// other devices' readings, or readings a forwarder had read before thinning took them
    /// and delivered whole.)
    fn thinnable(&self, s: &Stream) -> SeqSet {
        let mut out = SeqSet::new();
        for h in &s.holes {
            let j = &self.journals[h.journal];
            let (after, before) = (h.after.1, h.before.1);
            if j.announced.is_empty() || after + 1 >= before {
                continue;
            }
            let never = j.delivered.gaps_in(after + 1, before - 1);
            if !never.is_empty() && never.iter().all(|&(a, b)| j.announced.contains_range(a, b)) {
                out.insert_range(h.after.0 + 1, h.before.0 - 1);
            }
        }
        out
    }

    /// The announced journal sequences of every journal, as inclusive ranges in increasing
    /// order (one journal per topic in practice).
    fn thinned_spans(&self) -> Vec<(u64, u64)> {
        let mut spans: Vec<(u64, u64)> = self
            .journals
            .iter()
            .flat_map(|j| j.announced.ranges())
            .collect();
        spans.sort_unstable();
        spans
    }

    fn device_verify(&self, s: &Stream, boot: u64, expected: &SeqSet) -> DeviceVerify {
        let mut absent = SeqSet::new();
        for (a, b) in expected.difference_ranges(&s.seen) {
            absent.insert_range(a, b);
        }
        let missing = absent.difference_ranges(&self.thinnable(s));
        let mut missing_set = SeqSet::new();
        for &(a, b) in &missing {
            missing_set.insert_range(a, b);
        }
        let thinned_ranges = absent.difference_ranges(&missing_set);
        DeviceVerify {
            boot,
            received: s.received,
            distinct: s.seen.len(),
            expected: expected.len(),
            missing_count: missing.iter().map(|(a, b)| b - a + 1).sum(),
            missing,
            thinned_count: thinned_ranges.iter().map(|(a, b)| b - a + 1).sum(),
            widest_thinned_hole: thinned_ranges
                .iter()
                .map(|(a, b)| b - a + 1)
                .max()
                .unwrap_or(0),
            thinned: thinned_ranges,
            duplicates: s.duplicates,
            out_of_order: s.out_of_order,
            reorder_examples: s.reorder_examples.clone(),
            missing_gateway_header: s.missing_gateway_header,
            missing_seq_header: s.missing_seq_header,
            bad_seq_header: s.bad_seq_header,
            wrong_key: s.wrong_key,
            partitions: s.partitions.clone(),
            unacked_received: 0,
        }
    }

    /// The report so far. With `expected`, every boot of every device in the fleet report
    /// is checked (the last under the device id, earlier ones under `device@boot`) and
    /// "missing" means acknowledged but absent; readings of other devices or boots are
    /// counted as foreign. Without, each device's stream is its highest boot id (the
    /// latest run) and "missing" means a hole in `1..=highest counter seen`.
    pub fn report(&self, expected: Option<&FleetReport>) -> VerifyReport {
        let mut devices = BTreeMap::new();
        let mut counted = 0u64;
        let empty = Stream::default();
        match expected {
            Some(fleet) => {
                for (device, d) in &fleet.devices {
                    for b in d.boots() {
                        let s = self
                            .streams
                            .get(&(device.clone(), b.boot))
                            .unwrap_or(&empty);
                        counted += s.received;
                        let mut v = self.device_verify(s, b.boot, &b.acked);
                        v.unacked_received = s.seen.difference_len(&b.acked);
                        // The last boot under the device id, earlier ones (a device the
                        // fault plan rebooted) under `device@boot`.
                        let key = if b.boot == d.boot {
                            device.clone()
                        } else {
                            format!("{device}@{}", b.boot)
                        };
                        devices.insert(key, v);
                    }
                }
            }
            None => {
                let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
                for (device, boot) in self.streams.keys() {
                    let b = latest.entry(device.as_str()).or_insert(*boot);
                    *b = (*b).max(*boot);
                }
                for (device, boot) in latest {
                    let key = (device.to_owned(), boot);
                    let s = self.streams.get(&key).unwrap_or(&empty);
                    counted += s.received;
                    let mut expected = SeqSet::new();
                    if let Some(max) = s.seen.last() {
                        expected.insert_range(1, max);
                    }
                    devices.insert(device.to_owned(), self.device_verify(s, boot, &expected));
                }
            }
        }
        VerifyReport {
            devices,
            readings: self.readings,
            unparseable: self.unparseable,
            foreign: self.readings
                - self.unparseable
                - self.gap_markers
                - self.thinned_markers
                - counted,
            gap_markers: self.gap_markers,
            gap_readings: self.gap_readings,
            thinned_markers: self.thinned_markers,
            thinned_spans: self.thinned_spans(),
            thin_factor_max: self.thin_factor_max,
            replays: self.replays,
            replay_examples: self.replay_examples.clone(),
        }
    }
}

/// The verdict for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceVerify {
    /// Boot id checked.
    pub boot: u64,
    /// Records of this device and boot.
    pub received: u64,
    /// Distinct counters among them.
    pub distinct: u64,
    /// Counters that had to be there (acknowledged ones, or `1..=max` without a fleet report).
    pub expected: u64,
    /// Expected counters not found, as inclusive ranges.
    pub missing: Vec<(u64, u64)>,
    /// Number of expected counters not found.
    pub missing_count: u64,
    /// Expected counters not found that thinning announced (see the module docs), as
    /// inclusive ranges; not in `missing`.
    pub thinned: Vec<(u64, u64)>,
    /// Number of thinned counters.
    pub thinned_count: u64,
    /// The most consecutive counters thinned away (0 without thinning).
    pub widest_thinned_hole: u64,
    /// Records whose counter had been seen before.
    pub duplicates: u64,
    /// New counters lower than one seen before.
    pub out_of_order: u64,
    /// Up to five `(highest so far, counter)` pairs of reordering.
    pub reorder_examples: Vec<(u64, u64)>,
    /// Records without a `tidegate-gateway` header.
    pub missing_gateway_header: u64,
    /// Records without a `tidegate-seq` header.
    pub missing_seq_header: u64,
    /// `tidegate-seq` headers that are not a decimal number.
    pub bad_seq_header: u64,
    /// Records whose key is not `turbines/<device>/telemetry`.
    pub wrong_key: u64,
    /// Partitions the device's records were found in (must be one).
    pub partitions: BTreeSet<i32>,
    /// Distinct counters delivered that the fleet never saw acknowledged (allowed:
    /// at-least-once).
    pub unacked_received: u64,
}

impl DeviceVerify {
    /// Whether the device's stream broke no rule.
    pub fn is_ok(&self) -> bool {
        self.missing_count == 0
            && self.out_of_order == 0
            && self.missing_gateway_header == 0
            && self.missing_seq_header == 0
            && self.bad_seq_header == 0
            && self.wrong_key == 0
            && self.partitions.len() <= 1
    }

    /// The broken rules, as sentences.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.missing_count > 0 {
            p.push(format!(
                "{} missing {}",
                self.missing_count,
                fmt_ranges(&self.missing, 10)
            ));
        }
        if self.out_of_order > 0 {
            p.push(format!(
                "{} out of order, e.g. (after, got) {:?}",
                self.out_of_order, self.reorder_examples
            ));
        }
        for (n, what) in [
            (
                self.missing_gateway_header,
                "without tidegate-gateway header",
            ),
            (self.missing_seq_header, "without tidegate-seq header"),
            (
                self.bad_seq_header,
                "with a non-decimal tidegate-seq header",
            ),
            (self.wrong_key, "with the wrong key"),
        ] {
            if n > 0 {
                p.push(format!("{n} records {what}"));
            }
        }
        if self.partitions.len() > 1 {
            p.push(format!("split over partitions {:?}", self.partitions));
        }
        p
    }
}

/// The verdict for a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per device id (with a fleet report, a device's earlier boots as `device@boot`).
    pub devices: BTreeMap<String, DeviceVerify>,
    /// Records read.
    pub readings: u64,
    /// Records whose payload is not a reading.
    pub unparseable: u64,
    /// Readings of devices or boots not checked (other runs sharing the topic).
    pub foreign: u64,
    /// Gap markers (`tidegate-gap` header): not readings, counted apart.
    pub gap_markers: u64,
    /// Readings the gap markers say were dropped before they were forwarded.
    pub gap_readings: u64,
    /// Thinned markers (`tidegate-thinned` header): not readings, counted apart.
    pub thinned_markers: u64,
    /// The journal sequences the thinned markers announced, as inclusive ranges (the union
    /// of their spans).
    pub thinned_spans: Vec<(u64, u64)>,
    /// The largest `tidegate-thin-factor` announced (0 without markers).
    pub thin_factor_max: u64,
    /// Records whose (gateway, epoch, journal sequence) was seen before: the gateway sent a
    /// journal record twice (a device's own re-send has a new journal sequence).
    pub replays: u64,
    /// The first few replays, with where both copies sit.
    pub replay_examples: Vec<Replay>,
}

impl VerifyReport {
    /// Whether every expected counter was found.
    pub fn is_complete(&self) -> bool {
        self.devices.values().all(|d| d.missing_count == 0)
    }

    /// Whether no rule was broken anywhere.
    pub fn is_ok(&self) -> bool {
        self.unparseable == 0 && self.devices.values().all(DeviceVerify::is_ok)
    }

    /// Expected counters missing, all devices.
    pub fn missing(&self) -> u64 {
        self.devices.values().map(|d| d.missing_count).sum()
    }

    /// Expected counters that thinning announced, all devices.
    pub fn thinned(&self) -> u64 {
        self.devices.values().map(|d| d.thinned_count).sum()
    }

    /// The most consecutive counters of one device thinned away.
    pub fn widest_thinned_hole(&self) -> u64 {
        self.devices
            .values()
            .map(|d| d.widest_thinned_hole)
            .max()
            .unwrap_or(0)
    }

    /// Duplicate records, all devices.
    pub fn duplicates(&self) -> u64 {
        self.devices.values().map(|d| d.duplicates).sum()
    }

    /// Reordered counters, all devices.
    pub fn out_of_order(&self) -> u64 {
        self.devices.values().map(|d| d.out_of_order).sum()
    }

    /// Records of the checked devices.
    pub fn received(&self) -> u64 {
        self.devices.values().map(|d| d.received).sum()
    }

    /// Every broken rule, one line per device (for assertion messages).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| !d.is_ok())
            .map(|(id, d)| format!("{id}: {}", d.problems().join("; ")))
            .collect();
        if self.unparseable > 0 {
            out.push(format!("{} records are not readings", self.unparseable));
        }
        out
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}  problems",
            "device", "received", "expected", "missing", "thinned", "dups", "reorder", "parts"
        )?;
        for (id, d) in &self.devices {
            writeln!(
                f,
                "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}  {}",
                id,
                d.received,
                d.expected,
                d.missing_count,
                d.thinned_count,
                d.duplicates,
                d.out_of_order,
                d.partitions.len(),
                d.problems().join("; ")
            )?;
        }
        for r in &self.replay_examples {
            writeln!(
                f,
                "replayed tidegate-seq {}: first at partition {} offset {}, again at partition {} offset {}",
                r.seq, r.first.0, r.first.1, r.again.0, r.again.1
            )?;
        }
        write!(
            f,
            "{} records: {} of {} devices, {} missing, {} thinned (widest hole {}), {} duplicates ({} replayed by the gateway), {} out of order, {} unparseable, {} foreign, {} gap markers for {} dropped readings, {} thinned markers announcing {} journal sequences in {} spans (factor up to {})",
            self.readings,
            self.received(),
            self.devices.len(),
            self.missing(),
            self.thinned(),
            self.widest_thinned_hole(),
            self.duplicates(),
            self.replays,
            self.out_of_order(),
            self.unparseable,
            self.foreign,
            self.gap_markers,
            self.gap_readings,
            self.thinned_markers,
            self.thinned_spans.iter().map(|(a, b)| b - a + 1).sum::<u64>(),
            self.thinned_spans.len(),
            self.thin_factor_max
        )
    }
}

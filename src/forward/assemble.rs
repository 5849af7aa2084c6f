//! Turning one journal read into a batch: every hole between the records read is told as
//! thinning or loss, and the markers a sink wants are put in place.
//!
//! # Holes
//!
//! The journal holds one contiguous range of sequence numbers, minus what `on_full =
//! "thin"` removed inside its thinned spans ([`ThinnedSpan`]). A hole between the records
//! read (or between the cursor and the first record) is therefore:
//!
//! * inside a span: thinning. Counted in `thinned_readings`, never a gap: the span's marker
//!   tells the upstream about it;
//! * outside every span: readings removed whole (`drop-oldest`, `journal.max_age`).
//!   Counted in `lost_to_drop_oldest`, and an [`Item::Gap`] naming it goes in front of the
//!   reading after it, as before thinning existed.
//!
//! A hole that crosses a span's edge is split: the part inside is thinning, the rest a gap.
//!
//! # Thinned markers
//!
//! For each span overlapping the batch, one [`Item::Thinned`] announces
//! `max(span.first, cursor)..=span.last` with its factor, in front of the batch's first
//! reading at or after that start (at the same sequence number, one slot before it: see
//! [`crate::record::Position`]). A batch whose reads of the span all failed their checksum
//! announces nothing; the next batch does, from its own cursor.
//!
//! **Once per forwarder run.** [`Announced`] remembers what this run announced, so a span
//! that a batch ended in the middle of is not announced again by the next batch, whose
//! cursor lies inside it: an announcement is skipped when an earlier one of this run with
//! the same factor covers its whole range. A span thinned further since (a higher factor)
//! or grown is announced again. The memory lives as long as the forwarder: after a restart
//! the first batch announces again, from the stored cursor, what the upstream may already
//! have been told (a consumer keeps the latest announcement of each range).
//!
//! Whether markers go into the batch is the sink's choice ([`Sink::wants_gap_markers`]);
//! the classification, the counting and the memory are the same without them.
//!
//! [`Sink::wants_gap_markers`]: crate::sinks::Sink::wants_gap_markers

use crate::journal::{ReadBatch, ThinnedSpan};
use crate::record::{DecodeError, Gap, Item, Thinned};

/// The thinned announcements a forwarder run has made, for as long as they may matter.
#[derive(Debug, Default)]
pub(super) struct Announced {
    /// (first, last, factor) of each announcement still at or past the cursor.
    made: Vec<(u64, u64, u32)>,
}

impl Announced {
    /// Whether an announcement of this run already tells `first..=last` at `factor`.
    fn covers(&self, first: u64, last: u64, factor: u32) -> bool {
        self.made
            .iter()
            .any(|&(f, l, n)| n == factor && f <= first && last <= l)
    }

    /// Forgets announcements that end before `cursor`: no later batch reads there.
    fn forget_before(&mut self, cursor: u64) {
        self.made.retain(|&(_, last, _)| last >= cursor);
    }
}

/// What one journal read came to.
#[derive(Debug, Default)]
pub(super) struct Assembled {
    /// The batch: readings in order, and the markers, when the sink wants them.
    pub items: Vec<Item>,
    /// The cursor after the batch.
    pub next: u64,
    /// Holes outside every span, in order (whether or not the batch carries them).
    pub gaps: Vec<Gap>,
    /// Readings inside the holes that lie in thinned spans.
    pub thinned: u64,
    /// Spans announced for the first time in this run (whether or not the batch carries
    /// their markers).
    pub announced: Vec<Thinned>,
    /// Records that failed their checksum, skipped.
    pub corrupt: Vec<DecodeError>,
}

/// Assembles the batch read at `cursor`; see the [module docs](self). With `markers`, gaps
/// and thinned markers go into the batch; without, they are only reported.
pub(super) fn assemble(
    cursor: u64,
    read: ReadBatch,
    announced: &mut Announced,
    markers: bool,
) -> Assembled {
    announced.forget_before(cursor);
    let spans = read.thinned;
    // The announcements this batch may make, oldest first (spans do not overlap).
    let due: Vec<(u64, &ThinnedSpan)> = spans
        .iter()
        .map(|s| (s.first.max(cursor), s))
        .filter(|&(start, s)| start <= s.last && !announced.covers(start, s.last, s.factor))
        .collect();
    let mut due = due.into_iter().peekable();
    let mut out = Assembled {
        items: Vec::with_capacity(read.records.len() + 2),
        next: cursor,
        ..Assembled::default()
    };
    // Markers in front of the current reading, put in position order before it.
    let mut front: Vec<Item> = Vec::new();
    for record in read.records {
        let r = match record {
            Ok(r) => r,
            Err(e) => {
                out.next = out.next.max(e.seq() + 1);
                out.corrupt.push(e);
                continue;
            }
        };
        let ingest_ms = r.reading.ingest_ms;
        if r.seq > out.next {
            for (first, last, thinned) in split_hole(out.next, r.seq - 1, &spans) {
                if thinned {
                    out.thinned += last + 1 - first;
                } else {
                    let gap = Gap {
                        first,
                        last,
                        ingest_ms,
                    };
                    out.gaps.push(gap);
                    if markers {
                        front.push(Item::Gap(gap));
                    }
                }
            }
        }
        while let Some((start, span)) = due.next_if(|&(start, _)| start <= r.seq) {
            let marker = Thinned {
                first: start,
                last: span.last,
                factor: span.factor,
                ingest_ms,
            };
            announced.made.push((start, span.last, span.factor));
            out.announced.push(marker);
            if markers {
                front.push(Item::Thinned(marker));
            }
        }
        if !front.is_empty() {
            front.sort_by_key(Item::position);
            out.items.append(&mut front);
        }
        out.next = r.seq + 1;
        out.items.push(Item::Reading(r));
    }
    out
}

/// The parts of the hole `first..=last`, in order, each as (first, last, inside a span).
pub(super) fn split_hole(first: u64, last: u64, spans: &[ThinnedSpan]) -> Vec<(u64, u64, bool)> {
    let mut parts = Vec::new();
    let mut at = first;
    for span in spans {
        if span.last < at || span.first > last {
            continue;
        }
        if span.first > at {
            parts.push((at, span.first - 1, false));
        }
        let end = span.last.min(last);
        parts.push((at.max(span.first), end, true));
        at = end + 1;
        if at > last {
            return parts;
        }
    }
    parts.push((at, last, false));
    parts
}

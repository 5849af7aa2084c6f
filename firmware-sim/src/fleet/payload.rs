//! Where a device's payloads come from: the turbine model, one sampled and encoded reading
//! each time ([`Payloads::Model`], the default), or one payload built per boot and patched
//! in place ([`Payloads::Fixed`], `load --fixed-payload`), so that a load run measures the
//! broker and not the generator.
//!
//! A fixed payload keeps what verification identifies a reading by (device, boot, counter,
//! `ts`): [`ReadingId::parse`](crate::telemetry::ReadingId::parse) and
//! [`parse_seq`](crate::telemetry::parse_seq) read it as they read a model payload. Only
//! the sensor values stay those of the boot's first reading.

use bytes::Bytes;

use crate::telemetry::{PayloadFormat, Reading, Turbine};

/// Digits a JSON fixed payload reserves for the counter: 10 billion readings per boot.
const SEQ_DIGITS: usize = 10;
/// Digits a JSON fixed payload reserves for `ts`: milliseconds until the year 2286.
const TS_DIGITS: usize = 13;

/// The payloads of one boot of a device.
pub(super) enum Payloads {
    /// Every reading is a new step of the turbine, encoded into `buf`.
    Model { buf: Vec<u8>, last: Option<Reading> },
    /// The boot's first reading, built on the first call; later readings patch its
    /// counter and `ts`.
    Fixed(Option<FixedPayload>),
}

impl Payloads {
    /// Fixed payloads if `fixed`, else the model's; `size_hint` is the expected payload
    /// size.
    pub(super) fn new(fixed: bool, size_hint: usize) -> Payloads {
        if fixed {
            Payloads::Fixed(None)
        } else {
            Payloads::Model {
                buf: Vec::with_capacity(size_hint),
                last: None,
            }
        }
    }

    /// The next reading of `turbine` stamped `ts`: its counter and its payload in
    /// `format`, padded to `pad_to` as [`Reading::encode`] does.
    pub(super) fn next(
        &mut self,
        turbine: &mut Turbine,
        ts: u64,
        format: PayloadFormat,
        pad_to: Option<usize>,
    ) -> (u64, Bytes) {
        match self {
            Payloads::Model { buf, last } => {
                let reading = turbine.step(ts);
                reading.encode(format, pad_to, buf);
                let seq = reading.seq;
                *last = Some(reading);
                (seq, Bytes::copy_from_slice(buf))
            }
            Payloads::Fixed(Some(fixed)) => {
                let seq = fixed.seq + 1;
                (seq, fixed.patch(seq, ts))
            }
            Payloads::Fixed(empty) => {
                let fixed = empty.insert(FixedPayload::new(turbine.step(ts), format, pad_to));
                (fixed.seq, Bytes::copy_from_slice(&fixed.buf))
            }
        }
    }

    /// The last reading handed out and its payload bytes (what the fault plan's garbage
    /// payloads are made from); `None` before the first.
    pub(super) fn last(&self) -> Option<(&Reading, &[u8])> {
        match self {
            Payloads::Model { buf, last } => last.as_ref().map(|r| (r, buf.as_slice())),
            Payloads::Fixed(fixed) => fixed.as_ref().map(|f| (&f.template, f.buf.as_slice())),
        }
    }
}

/// How the counter and `ts` are written into a fixed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Decimal, left-aligned in a field of spaces: `"seq":42        ,` is valid JSON (space
    /// may follow a value), and the digits still start right after the key, where
    /// `parse_seq` looks.
    Json { seq_width: usize, ts_width: usize },
    /// Big-endian u64 at fixed offsets, as the binary form always has them.
    Binary,
}

/// One boot's payload, written once and patched per reading.
pub(super) struct FixedPayload {
    /// The boot's first reading: device, boot id and the sensor values every payload keeps.
    template: Reading,
    format: PayloadFormat,
    pad_to: Option<usize>,
    layout: Layout,
    buf: Vec<u8>,
    seq_at: usize,
    ts_at: usize,
    /// Counter of the reading now in `buf`.
    seq: u64,
}

impl FixedPayload {
    /// The payload of `first`, the boot's first reading, with room for the counters and
    /// times to come.
    fn new(first: Reading, format: PayloadFormat, pad_to: Option<usize>) -> FixedPayload {
        let layout = match format {
            PayloadFormat::Json => Layout::Json {
                seq_width: SEQ_DIGITS.max(digits(first.seq)),
                ts_width: TS_DIGITS.max(digits(first.ts)),
            },
            PayloadFormat::Binary => Layout::Binary,
        };
        let mut fixed = FixedPayload {
            seq: first.seq,
            template: first,
            format,
            pad_to,
            layout,
            buf: Vec::new(),
            seq_at: 0,
            ts_at: 0,
        };
        fixed.build();
        let ts = fixed.template.ts;
        fixed.patch(fixed.seq, ts);
        fixed
    }

    /// Encodes the template with the layout's field widths and finds where the counter and
    /// `ts` are.
    fn build(&mut self) {
        let mut shape = self.template.clone();
        if let Layout::Json {
            seq_width,
            ts_width,
        } = self.layout
        {
            // Numbers of exactly the field widths, so the encoder lays the fields out (and
            // pads the payload) as wide as they will ever be written.
            shape.seq = widest(seq_width);
            shape.ts = widest(ts_width);
        }
        shape.encode(self.format, self.pad_to, &mut self.buf);
        match self.layout {
            Layout::Json { .. } => {
                self.seq_at = find_after(&self.buf, b"\"seq\":");
                self.ts_at = find_after(&self.buf, b"\"ts\":");
            }
            Layout::Binary => {
                // Magic, version, id length, the id, then boot, seq, ts.
                let id_len = usize::from(self.buf[2]);
                self.seq_at = 3 + id_len + 8;
                self.ts_at = self.seq_at + 8;
            }
        }
    }

    /// Writes `seq` and `ts` into the payload and returns a copy of it.
    fn patch(&mut self, seq: u64, ts: u64) -> Bytes {
        self.seq = seq;
        match self.layout {
            Layout::Json {
                seq_width,
                ts_width,
            } => {
                if digits(seq) > seq_width || digits(ts) > ts_width {
                    // Once per power of ten past the widths, at most: re-lay the payload.
                    self.layout = Layout::Json {
                        seq_width: seq_width.max(digits(seq)),
                        ts_width: ts_width.max(digits(ts)),
                    };
                    self.build();
                    return self.patch(seq, ts);
                }
                write_padded(&mut self.buf[self.seq_at..self.seq_at + seq_width], seq);
                write_padded(&mut self.buf[self.ts_at..self.ts_at + ts_width], ts);
            }
            Layout::Binary => {
                self.buf[self.seq_at..self.seq_at + 8].copy_from_slice(&seq.to_be_bytes());
                self.buf[self.ts_at..self.ts_at + 8].copy_from_slice(&ts.to_be_bytes());
            }
        }
        self.template.seq = seq;
        self.template.ts = ts;
        Bytes::copy_from_slice(&self.buf)
    }
}

/// Decimal digits of `v`.
fn digits(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The largest number of `width` decimal digits (saturating at `u64::MAX`).
fn widest(width: usize) -> u64 {
    u32::try_from(width)
        .ok()
        .and_then(|w| 10u64.checked_pow(w))
        .map_or(u64::MAX, |p| p - 1)
}

/// Index just after the first `key` in `buf`. The encoder always writes the key, so its
/// absence is a bug in this module.
fn find_after(buf: &[u8], key: &[u8]) -> usize {
    buf.windows(key.len())
        .position(|w| w == key)
        .map(|i| i + key.len())
        .expect("the JSON encoder writes every identity key")
}

/// Writes `v` in decimal at the start of `field` and fills the rest with spaces; `field`
/// is at least as wide as `v`'s digits.
fn write_padded(field: &mut [u8], mut v: u64) {
    let n = digits(v);
    for slot in field[..n].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    field[n..].fill(b' ');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{parse_seq, ReadingId};

    fn turbine() -> Turbine {
        Turbine::new(1, 7, 1_765_000_000_000, 1.0)
    }

    /// Counters and times read back from fixed payloads exactly as from model payloads.
    fn reads_back(format: PayloadFormat, pad_to: Option<usize>) {
        let mut t = turbine();
        let mut p = Payloads::new(true, 100);
        let mut len = None;
        for (i, ts) in [1_765_000_000_123u64, 1_765_000_000_124, 1_765_000_009_999]
            .into_iter()
            .enumerate()
        {
            let (seq, payload) = p.next(&mut t, ts, format, pad_to);
            assert_eq!(seq, i as u64 + 1);
            let id = ReadingId::parse(&payload).expect("a reading");
            assert_eq!(
                (id.device.as_str(), id.boot, id.seq, id.ts),
                ("wt-0007", 1_765_000_000_000, seq, ts)
            );
            assert_eq!(parse_seq(&payload), Some(seq));
            assert_eq!(*len.get_or_insert(payload.len()), payload.len());
            if let Some(n) = pad_to {
                assert_eq!(payload.len(), n);
            }
        }
    }

    #[test]
    fn json_fixed_payloads_carry_each_readings_counter_and_time() {
        reads_back(PayloadFormat::Json, Some(100));
        reads_back(PayloadFormat::Json, None);
    }

    #[test]
    fn binary_fixed_payloads_carry_each_readings_counter_and_time() {
        reads_back(PayloadFormat::Binary, Some(100));
        reads_back(PayloadFormat::Binary, None);
    }

    #[test]
    fn a_counter_wider_than_its_field_re_lays_the_payload() {
        let mut t = turbine();
        let first = t.step(5);
        let mut f = FixedPayload::new(first, PayloadFormat::Json, Some(100));
        let big = 123_456_789_012u64;
        let payload = f.patch(big, 1_765_000_000_000);
        assert_eq!(parse_seq(&payload), Some(big));
        let id = ReadingId::parse(&payload).expect("a reading");
        assert_eq!((id.seq, id.ts), (big, 1_765_000_000_000));
        // Narrower again afterwards: the wider field stays, the value reads the same.
        let payload = f.patch(3, 6);
        assert_eq!(parse_seq(&payload), Some(3));
        assert_eq!(ReadingId::parse(&payload).map(|i| i.ts), Some(6));
    }

    #[test]
    fn model_payloads_are_the_encoded_turbine_steps() {
        let mut model = turbine();
        let mut reference = turbine();
        let mut p = Payloads::new(false, 100);
        for ts in [10, 20] {
            let (seq, payload) = p.next(&mut model, ts, PayloadFormat::Json, Some(100));
            let r = reference.step(ts);
            let mut expected = Vec::new();
            r.encode_json(Some(100), &mut expected);
            assert_eq!((seq, &payload[..]), (r.seq, &expected[..]));
            assert_eq!(p.last().map(|(r, _)| r.seq), Some(seq));
        }
    }
}

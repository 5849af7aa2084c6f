//! The [`Record`]: one reading as the journal holds it, and its on-disk encoding.
//!
//! Every reading that enters tidegate — an MQTT publish, a serial frame — becomes a
//! [`Reading`] at ingest. The journal gives it a sequence number when it commits, and from
//! then on it is a [`Record`]. The payload is carried untouched, byte for byte. On its way
//! to an upstream, a record travels as an [`Item`] of a batch, beside the typed markers
//! that name readings the upstream will never get: a [`Gap`] for readings removed whole, a
//! [`Thinned`] marker for a span kept at a lower resolution.
//!
//! # Where an item stands
//!
//! Every item of a batch stands at a [`Position`]: a sequence number and a [`Slot`]. A
//! reading stands at its own number and a gap at the last number it names (no reading
//! carries it). A thinned marker stands at the first number it announces, which may be
//! the very reading it is put in front of, so its slot ([`Slot::Thinned`]) orders it just
//! before that reading. Positions strictly increase along a batch; sinks that remember
//! what was delivered (the Kafka sink's exactly-once rule) key by position, never by the
//! sequence number alone.
//!
//! # Encoding (version 1)
//!
//! With `journal.compression = "none"`, and in journals of earlier releases, the journal
//! stores each record as its value under the key `seq` (big-endian u64), as below. With
//! `"zstd"` it stores blocks of readings (`journal::block`), each reading there as the
//! fields below from flags to payload ([`encode_fields`]), under one checksum per block.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       1     flags: bits 0-1 MQTT QoS, bit 2 retain
//! 2       8     ingest time, ms since the Unix epoch, little-endian
//! 10      1     source kind (1 = MQTT listener, 2 = MQTT subscription, 3 = serial)
//! 11      2     source name length S, little-endian, then S bytes of UTF-8
//! ..      2     topic length T, little-endian, then T bytes of UTF-8
//! ..      4     payload length P, little-endian, then P bytes
//! ..      4     CRC-32 (IEEE) over the big-endian seq followed by every byte above
//! ```
//!
//! The checksum covers the sequence number too, so a value that ends up under the wrong key
//! is caught as corruption. A version byte newer than [`FORMAT_VERSION`] is refused with
//! [`DecodeError::FutureVersion`]: an older tidegate never guesses at a newer layout.

use bytes::Bytes;

/// The record format this build writes, and the newest it can read.
pub const FORMAT_VERSION: u8 = 1;

/// Fixed bytes in an encoded record besides source, topic and payload.
const FIXED_OVERHEAD: usize = 1 + 1 + 8 + 1 + 2 + 2 + 4 + 4;

/// Where a reading came from. The name is the MQTT client id or the serial port path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceKind {
    /// A device connected to tidegate's own MQTT listener.
    MqttListener,
    /// A message taken from another broker through a subscription.
    MqttSubscription,
    /// A frame read from a serial port.
    Serial,
}

impl SourceKind {
    fn to_byte(self) -> u8 {
        match self {
            SourceKind::MqttListener => 1,
            SourceKind::MqttSubscription => 2,
            SourceKind::Serial => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(SourceKind::MqttListener),
            2 => Some(SourceKind::MqttSubscription),
            3 => Some(SourceKind::Serial),
            _ => None,
        }
    }

    /// Short lowercase label used in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::MqttListener => "mqtt",
            SourceKind::MqttSubscription => "mqtt-subscribe",
            SourceKind::Serial => "serial",
        }
    }
}

/// A reading as ingest hands it to the journal: everything but the sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Milliseconds since the Unix epoch when tidegate received the reading.
    pub ingest_ms: u64,
    /// Which kind of input delivered it.
    pub source_kind: SourceKind,
    /// The device's identity on that input: MQTT client id or serial port path.
    pub source: String,
    /// MQTT topic (or the topic configured for a serial port); also the Kafka key.
    pub topic: String,
    /// The payload exactly as the device sent it.
    pub payload: Bytes,
    /// MQTT QoS the reading came with (0, 1 or 2).
    pub qos: u8,
    /// Whether the publish carried the MQTT retain flag.
    pub retain: bool,
}

impl Reading {
    /// The number of bytes [`encode`] will produce for this reading.
    pub fn encoded_len(&self) -> usize {
        FIXED_OVERHEAD + self.source.len() + self.topic.len() + self.payload.len()
    }
}

/// A committed reading: a [`Reading`] with the journal sequence number it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Journal sequence number, strictly increasing in commit order, never reused.
    pub seq: u64,
    /// The reading itself.
    pub reading: Reading,
}

/// One entry of a batch a forwarder hands to a sink: a journaled reading, or a typed marker
/// for readings the upstream will never get. Items exist only inside batches; the journal
/// holds records alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A journaled reading.
    Reading(Record),
    /// Readings removed from the journal before this upstream had them.
    Gap(Gap),
    /// A span of readings the journal holds only at a lower resolution.
    Thinned(Thinned),
}

impl Item {
    /// The sequence number the item stands at in its batch: a reading's own, a gap's
    /// `last` (see [`Gap`]), a thinned marker's `first` (see [`Thinned`]). Not unique in a
    /// batch: a thinned marker may share it with the reading after it; [`Item::position`]
    /// is.
    pub fn seq(&self) -> u64 {
        match self {
            Item::Reading(r) => r.seq,
            Item::Gap(g) => g.last,
            Item::Thinned(t) => t.first,
        }
    }

    /// Where the item stands: see [the module docs](self#where-an-item-stands). Strictly
    /// increasing along a batch.
    pub fn position(&self) -> Position {
        let slot = match self {
            Item::Thinned(_) => Slot::Thinned,
            Item::Reading(_) | Item::Gap(_) => Slot::Record,
        };
        Position {
            seq: self.seq(),
            slot,
        }
    }

    /// Milliseconds since the Unix epoch: a reading's ingest time, or for a marker the
    /// ingest time of the reading it stands in front of.
    pub fn ingest_ms(&self) -> u64 {
        match self {
            Item::Reading(r) => r.reading.ingest_ms,
            Item::Gap(g) => g.ingest_ms,
            Item::Thinned(t) => t.ingest_ms,
        }
    }

    /// The reading, if this item is one.
    pub fn as_reading(&self) -> Option<&Record> {
        match self {
            Item::Reading(r) => Some(r),
            Item::Gap(_) | Item::Thinned(_) => None,
        }
    }
}

/// Where an item stands in its batch (see [the module docs](self#where-an-item-stands)):
/// ordered by sequence number, then slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub seq: u64,
    pub slot: Slot,
}

/// What stands at a sequence number: a thinned marker comes before the record (a reading
/// or a gap) at the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// A [`Thinned`] marker.
    Thinned,
    /// A reading, or a [`Gap`] (which stands on a number no reading has).
    Record,
}

impl From<Record> for Item {
    fn from(record: Record) -> Item {
        Item::Reading(record)
    }
}

/// Readings `first..=last` that a retention policy (`on_full = "drop-oldest"`) removed from
/// the journal before an upstream sent them: the loss made explicit (invariant 4).
///
/// A gap stands at sequence number `last` in its batch. No reading will ever carry that
/// number again, so the batch stays in increasing sequence order and a gap is
/// de-duplicated by an upstream like any record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Sequence number of the first removed reading.
    pub first: u64,
    /// Sequence number of the last removed reading.
    pub last: u64,
    /// Ingest time of the first reading after the gap (the gap has none of its own).
    pub ingest_ms: u64,
}

impl Gap {
    /// How many readings the gap stands for.
    pub fn readings(&self) -> u64 {
        self.last + 1 - self.first
    }
}

/// Readings `first..=last` that `on_full = "thin"` kept only at about one in `factor` per
/// topic before an upstream sent them: the lower resolution made explicit (invariant 4).
/// The readings of the range that were kept follow it in the batch.
///
/// `first` is where the announcement starts: the span's first reading, or the upstream's
/// cursor when that lies inside the span. The marker stands at `first`, just before the
/// reading it is put in front of (see [`Position`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thinned {
    /// First sequence number announced.
    pub first: u64,
    /// Last sequence number of the span.
    pub last: u64,
    /// The span holds about one reading in `factor` per topic: 2, 4, 8 …
    pub factor: u32,
    /// Ingest time of the reading the marker stands in front of: the span's first when
    /// the whole span is announced.
    pub ingest_ms: u64,
}

/// Why a stored value could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The value was written by a newer tidegate with a format this build does not know.
    #[error("record {seq} has format version {found}, newer than this build reads; upgrade tidegate to read this journal")]
    FutureVersion { seq: u64, found: u8 },
    /// The value ends before its declared fields do.
    #[error("record {seq} is truncated: {len} bytes")]
    Truncated { seq: u64, len: usize },
    /// The stored checksum does not match the contents.
    #[error("record {seq} fails its checksum (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        seq: u64,
        stored: u32,
        computed: u32,
    },
    /// A field holds a value no writer produces (unknown source kind, bad UTF-8, bad QoS).
    #[error("record {seq} is malformed: {what}")]
    Malformed { seq: u64, what: &'static str },
}

impl DecodeError {
    /// The sequence number of the record that failed.
    pub fn seq(&self) -> u64 {
        match self {
            DecodeError::FutureVersion { seq, .. }
            | DecodeError::Truncated { seq, .. }
            | DecodeError::Checksum { seq, .. }
            | DecodeError::Malformed { seq, .. } => *seq,
        }
    }
}

/// Reasons a reading cannot be encoded at all; ingest rejects such readings up front.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// Source names and topics are length-prefixed with 16 bits.
    #[error("{field} is {len} bytes, over the 65535-byte limit")]
    FieldTooLong { field: &'static str, len: usize },
    /// Payloads are length-prefixed with 32 bits.
    #[error("payload is {len} bytes, over the 4 GiB limit")]
    PayloadTooLong { len: usize },
}

/// Checks that a reading fits the encoding, so the journal writer never meets one that
/// does not.
pub fn check_encodable(reading: &Reading) -> Result<(), EncodeError> {
    if reading.source.len() > u16::MAX as usize {
        return Err(EncodeError::FieldTooLong {
            field: "source",
            len: reading.source.len(),
        });
    }
    if reading.topic.len() > u16::MAX as usize {
        return Err(EncodeError::FieldTooLong {
            field: "topic",
            len: reading.topic.len(),
        });
    }
    if reading.payload.len() > u32::MAX as usize {
        return Err(EncodeError::PayloadTooLong {
            len: reading.payload.len(),
        });
    }
    Ok(())
}

/// Appends the encoding of `reading` under sequence `seq` to `out`.
///
/// The caller must have checked the reading with [`check_encodable`]; lengths are
/// truncated otherwise, and the checksum then makes the record unreadable rather than wrong.
pub fn encode_into(seq: u64, reading: &Reading, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(reading.encoded_len());
    out.push(FORMAT_VERSION);
    encode_fields(reading, out);
    push_checksum(seq, start, out);
}

/// Appends the checksum of the record that starts at `start` in `out` (version and fields
/// written), finishing it.
fn push_checksum(seq: u64, start: usize, out: &mut Vec<u8>) {
    let crc = checksum(seq, &out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends the reading's fields (flags to payload, the table above without version and
/// checksum) to `out`: the form in which the journal's compressed blocks hold a reading.
pub fn encode_fields(reading: &Reading, out: &mut Vec<u8>) {
    out.push((reading.qos & 0b11) | if reading.retain { 0b100 } else { 0 });
    out.extend_from_slice(&reading.ingest_ms.to_le_bytes());
    out.push(reading.source_kind.to_byte());
    out.extend_from_slice(&(reading.source.len() as u16).to_le_bytes());
    out.extend_from_slice(reading.source.as_bytes());
    out.extend_from_slice(&(reading.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(reading.topic.as_bytes());
    out.extend_from_slice(&(reading.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&reading.payload);
}

/// Appends a record of already encoded `fields` (as [`encode_fields`] makes them) under
/// sequence `seq` to `out`: the same bytes [`encode_into`] gives for the reading.
pub fn encode_fields_as_record(seq: u64, fields: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(fields.len() + 5);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(fields);
    push_checksum(seq, start, out);
}

/// Encodes `reading` under sequence `seq` into a new buffer.
pub fn encode(seq: u64, reading: &Reading) -> Vec<u8> {
    let mut out = Vec::with_capacity(reading.encoded_len());
    encode_into(seq, reading, &mut out);
    out
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_be_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// Decodes the value stored under `seq`, verifying version and checksum.
pub fn decode(seq: u64, value: &[u8]) -> Result<Record, DecodeError> {
    let truncated = || DecodeError::Truncated {
        seq,
        len: value.len(),
    };
    let version = *value.first().ok_or_else(truncated)?;
    if version > FORMAT_VERSION {
        return Err(DecodeError::FutureVersion {
            seq,
            found: version,
        });
    }
    if version == 0 {
        return Err(DecodeError::Malformed {
            seq,
            what: "format version 0",
        });
    }
    if value.len() < FIXED_OVERHEAD {
        return Err(truncated());
    }
    let (body, crc_bytes) = value.split_at(value.len() - 4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = checksum(seq, body);
    if stored != computed {
        return Err(DecodeError::Checksum {
            seq,
            stored,
            computed,
        });
    }
    let (record, used) = decode_fields(seq, &body[1..])?;
    if used != body.len() - 1 {
        return Err(DecodeError::Malformed {
            seq,
            what: "trailing bytes after payload",
        });
    }
    Ok(record)
}

/// Decodes the fields [`encode_fields`] wrote at the start of `buf` as the reading `seq`;
/// returns it and the bytes it took. The caller checks the bytes' checksum.
pub fn decode_fields(seq: u64, buf: &[u8]) -> Result<(Record, usize), DecodeError> {
    let truncated = || DecodeError::Truncated {
        seq,
        len: buf.len(),
    };
    let mut r = Cursor { buf, pos: 0 };
    let flags = r.take(1).ok_or_else(truncated)?[0];
    let ingest_ms = u64::from_le_bytes(r.array::<8>().ok_or_else(truncated)?);
    let kind_byte = r.take(1).ok_or_else(truncated)?[0];
    let source_kind = SourceKind::from_byte(kind_byte).ok_or(DecodeError::Malformed {
        seq,
        what: "unknown source kind",
    })?;
    let source_len = u16::from_le_bytes(r.array::<2>().ok_or_else(truncated)?) as usize;
    let source = r.take(source_len).ok_or_else(truncated)?;
    let topic_len = u16::from_le_bytes(r.array::<2>().ok_or_else(truncated)?) as usize;
    let topic = r.take(topic_len).ok_or_else(truncated)?;
    let payload_len = u32::from_le_bytes(r.array::<4>().ok_or_else(truncated)?) as usize;
    let payload = r.take(payload_len).ok_or_else(truncated)?;
    let qos = flags & 0b11;
    if qos == 3 {
        return Err(DecodeError::Malformed { seq, what: "QoS 3" });
    }
    let record = Record {
        seq,
        reading: Reading {
            ingest_ms,
            source_kind,
            source: std::str::from_utf8(source)
                .map_err(|_| DecodeError::Malformed {
                    seq,
                    what: "source is not UTF-8",
                })?
                .to_owned(),
            topic: std::str::from_utf8(topic)
                .map_err(|_| DecodeError::Malformed {
                    seq,
                    what: "topic is not UTF-8",
                })?
                .to_owned(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain: flags & 0b100 != 0,
        },
    };
    Ok((record, r.pos))
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Reading {
        Reading {
            ingest_ms: 1_764_000_000_123,
            source_kind: SourceKind::MqttListener,
            source: "wt-0001".into(),
            topic: "turbines/wt-0001/telemetry".into(),
            payload: Bytes::from_static(b"{\"wind\":7.5}\x00\xff"),
            qos: 1,
            retain: true,
        }
    }

    #[test]
    fn a_gap_stands_at_its_last_sequence_and_counts_its_readings() {
        let gap = Item::Gap(Gap {
            first: 17,
            last: 40,
            ingest_ms: 9,
        });
        assert_eq!((gap.seq(), gap.ingest_ms()), (40, 9));
        assert!(gap.as_reading().is_none());
        let Item::Gap(g) = gap else {
            unreachable!("built as a gap")
        };
        assert_eq!(g.readings(), 24);
        let reading = Item::from(Record {
            seq: 5,
            reading: sample(),
        });
        assert_eq!(reading.seq(), 5);
        assert_eq!(reading.as_reading().map(|r| r.seq), Some(5));
    }

    #[test]
    fn a_thinned_marker_stands_just_before_the_reading_sharing_its_sequence() {
        let marker = Item::Thinned(Thinned {
            first: 5,
            last: 90,
            factor: 4,
            ingest_ms: 11,
        });
        let reading = Item::from(Record {
            seq: 5,
            reading: sample(),
        });
        let before = Item::Gap(Gap {
            first: 2,
            last: 4,
            ingest_ms: 11,
        });
        assert_eq!((marker.seq(), marker.ingest_ms()), (5, 11));
        assert!(marker.as_reading().is_none());
        assert_eq!(marker.seq(), reading.seq());
        assert!(before.position() < marker.position());
        assert!(marker.position() < reading.position());
        assert_ne!(marker.position(), reading.position());
    }

    #[test]
    fn a_record_round_trips_with_every_field_intact() {
        let reading = sample();
        let bytes = encode(42, &reading);
        assert_eq!(bytes.len(), reading.encoded_len());
        let record = decode(42, &bytes).expect("decodes");
        assert_eq!(record.seq, 42);
        assert_eq!(record.reading, reading);
    }

    #[test]
    fn an_empty_payload_and_topic_round_trip() {
        let mut reading = sample();
        reading.payload = Bytes::new();
        reading.topic = String::new();
        reading.qos = 0;
        reading.retain = false;
        let record = decode(1, &encode(1, &reading)).expect("decodes");
        assert_eq!(record.reading, reading);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode(7, &sample());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(7, &bad).is_err(),
                    "flip at byte {i} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_value_under_the_wrong_sequence_fails_its_checksum() {
        let bytes = encode(7, &sample());
        assert!(matches!(
            decode(8, &bytes),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn truncated_values_are_refused_at_every_length() {
        let bytes = encode(3, &sample());
        for len in 0..bytes.len() {
            assert!(
                decode(3, &bytes[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }

    #[test]
    fn a_future_format_version_is_refused_with_a_clear_error() {
        let mut bytes = encode(9, &sample());
        bytes[0] = FORMAT_VERSION + 1;
        let err = decode(9, &bytes).expect_err("must refuse");
        assert_eq!(
            err,
            DecodeError::FutureVersion {
                seq: 9,
                found: FORMAT_VERSION + 1
            }
        );
        assert!(err.to_string().contains("upgrade tidegate"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn reading() -> impl Strategy<Value = Reading> {
            (
                any::<u64>(),
                prop_oneof![
                    Just(SourceKind::MqttListener),
                    Just(SourceKind::MqttSubscription),
                    Just(SourceKind::Serial)
                ],
                ".{0,40}",
                ".{0,60}",
                proptest::collection::vec(any::<u8>(), 0..300),
                0u8..3,
                any::<bool>(),
            )
                .prop_map(
                    |(ingest_ms, source_kind, source, topic, payload, qos, retain)| Reading {
                        ingest_ms,
                        source_kind,
                        source,
                        topic,
                        payload: Bytes::from(payload),
                        qos,
                        retain,
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Arbitrary bytes never panic the decoder, and whatever it accepts is exactly
            /// what the encoder writes for the decoded record: its checksum holds.
            #[test]
            fn arbitrary_bytes_never_panic_and_only_valid_encodings_are_accepted(
                seq in any::<u64>(),
                value in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                if let Ok(record) = decode(seq, &value) {
                    prop_assert_eq!(encode(seq, &record.reading), value);
                }
            }

            /// Every reading round-trips under every sequence number.
            #[test]
            fn every_reading_round_trips(seq in any::<u64>(), reading in reading()) {
                let bytes = encode(seq, &reading);
                prop_assert_eq!(bytes.len(), reading.encoded_len());
                let record = decode(seq, &bytes).expect("decodes");
                prop_assert_eq!(record.reading, reading);
            }

            /// A stored value damaged anywhere — bytes changed, cut short, or extended — is
            /// refused; the decoder never hands out a record whose CRC fails.
            #[test]
            fn a_damaged_value_is_never_accepted(
                seq in any::<u64>(),
                reading in reading(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
                cut in proptest::option::of(any::<prop::sample::Index>()),
                tail in proptest::collection::vec(any::<u8>(), 0..3),
            ) {
                let good = encode(seq, &reading);
                let mut bad = good.clone();
                for (at, xor) in &flips {
                    let i = at.index(bad.len());
                    bad[i] ^= xor;
                }
                if let Some(cut) = cut {
                    bad.truncate(cut.index(bad.len()));
                }
                bad.extend_from_slice(&tail);
                prop_assume!(bad != good);
                prop_assert!(decode(seq, &bad).is_err());
            }
        }
    }

    #[test]
    fn oversized_fields_are_refused_before_encoding() {
        let mut reading = sample();
        reading.topic = "t".repeat(70_000);
        assert!(matches!(
            check_encodable(&reading),
            Err(EncodeError::FieldTooLong { field: "topic", .. })
        ));
    }
}

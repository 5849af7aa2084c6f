//! The two framings of readings on a serial line, shared by the simulator's serial devices
//! and tidegate's serial ingest.
//!
//! - **`lines`**: one reading per line. The encoder ends each payload with LF; the decoder
//!   accepts LF and CRLF. Empty lines are skipped (devices send them to resynchronise), so a
//!   payload can be neither empty nor contain LF, nor end in CR.
//! - **`cobs`**: `COBS(payload ‖ crc16be(payload)) ‖ 0x00`. The CRC is CRC-16/CCITT-FALSE
//!   (poly 0x1021, init 0xFFFF, not reflected, xorout 0; check value of `"123456789"` is
//!   0x29B1), appended big-endian before COBS encoding, so the frame body never holds 0x00
//!   and 0x00 always delimits. Empty frames (two delimiters in a row) are skipped: a device
//!   may send 0x00 first to end whatever garbage preceded it.
//!
//! The [`Decoder`] is streaming: it takes bytes as they come off the line, in chunks of any
//! size, and yields each frame once its delimiter arrives. A bad frame — failed CRC, invalid
//! COBS, too short to hold a CRC, over `max_frame` — becomes one [`FrameError`] and decoding
//! resumes after the next delimiter, so the good frames around it are kept. An oversized
//! frame is not buffered: once it passes the limit its bytes are dropped until the
//! delimiter. A frame whose CRC fails is never yielded.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use crc::{Crc, CRC_16_IBM_3740};
use serde::{Deserialize, Serialize};

/// CRC-16/CCITT-FALSE, which the `crc` catalogue calls CRC-16/IBM-3740.
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// Bytes of the CRC at the end of every `cobs` frame.
const CRC_LEN: usize = 2;

/// CRC-16/CCITT-FALSE of `data` (the checksum of a `cobs` frame).
pub fn crc16(data: &[u8]) -> u16 {
    CRC16.checksum(data)
}

/// How readings are delimited on a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// One reading per line, LF-terminated (CRLF accepted when decoding).
    Lines,
    /// COBS-encoded payload plus big-endian CRC-16/CCITT-FALSE, 0x00-delimited.
    Cobs,
}

impl Framing {
    /// The name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Lines => "lines",
            Framing::Cobs => "cobs",
        }
    }

    /// The delimiter byte that ends every frame.
    pub fn delimiter(self) -> u8 {
        match self {
            Framing::Lines => b'\n',
            Framing::Cobs => 0x00,
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Framing, String> {
        match s {
            "lines" => Ok(Framing::Lines),
            "cobs" => Ok(Framing::Cobs),
            _ => Err(format!(
                "unknown framing {s:?}: expected \"lines\" or \"cobs\""
            )),
        }
    }
}

/// Why a payload cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `lines` cannot carry a payload containing LF: the receiver would split it.
    #[error("payload contains a line feed, which the lines framing cannot carry")]
    LineFeedInPayload,
    /// `lines` cannot carry a payload ending in CR: the receiver strips it as CRLF.
    #[error("payload ends in a carriage return, which the lines framing strips")]
    TrailingCarriageReturn,
    /// `lines` cannot carry an empty payload: receivers skip empty lines.
    #[error("empty payload, which the lines framing skips")]
    Empty,
}

/// Why a frame was rejected. Each rejected frame yields exactly one of these; decoding goes
/// on after the frame's delimiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame's payload is longer than `max_frame` bytes; it was discarded up to its
    /// delimiter without being buffered.
    #[error("frame over {max_frame} bytes discarded")]
    Oversized {
        /// The decoder's limit.
        max_frame: usize,
    },
    /// The CRC at the end of a `cobs` frame does not match its payload.
    #[error("bad CRC: frame says {received:#06x}, payload has {computed:#06x}")]
    BadCrc {
        /// The CRC carried by the frame.
        received: u16,
        /// The CRC of the payload as received.
        computed: u16,
    },
    /// The bytes between two delimiters are not valid COBS (line noise, or a frame cut short
    /// and followed by the next one's delimiter).
    #[error("invalid COBS encoding")]
    InvalidCobs,
    /// A `cobs` frame too short to hold its CRC (truncated).
    #[error("frame of {len} bytes is too short to hold a CRC")]
    TooShort {
        /// Decoded length of the frame.
        len: usize,
    },
    /// The stream ended in the middle of a frame ([`Decoder::finish`]).
    #[error("stream ended inside a frame ({len} bytes without a delimiter)")]
    Unterminated {
        /// Bytes buffered when the stream ended.
        len: usize,
    },
}

impl FrameError {
    /// A short, stable name of the reason, for counters and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Oversized { .. } => "oversized",
            FrameError::BadCrc { .. } => "bad_crc",
            FrameError::InvalidCobs => "invalid_cobs",
            FrameError::TooShort { .. } => "too_short",
            FrameError::Unterminated { .. } => "unterminated",
        }
    }
}

/// Appends `payload` as one `lines` frame (payload + LF) to `out`.
pub fn encode_line(payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if payload.is_empty() {
        return Err(EncodeError::Empty);
    }
    if payload.contains(&b'\n') {
        return Err(EncodeError::LineFeedInPayload);
    }
    if payload.last() == Some(&b'\r') {
        return Err(EncodeError::TrailingCarriageReturn);
    }
    out.reserve(payload.len() + 1);
    out.extend_from_slice(payload);
    out.push(b'\n');
    Ok(())
}

/// Appends `payload` as one `cobs` frame (COBS of payload + CRC, then 0x00) to `out`. Any
/// payload can be framed.
pub fn encode_cobs(payload: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(payload.len() + CRC_LEN);
    body.extend_from_slice(payload);
    body.extend_from_slice(&crc16(payload).to_be_bytes());
    let start = out.len();
    out.resize(start + cobs::max_encoding_length(body.len()), 0);
    let n = cobs::encode(&body, &mut out[start..]);
    out.truncate(start + n);
    out.push(0x00);
}

/// Appends `payload` framed as `framing` to `out`.
pub fn encode(framing: Framing, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match framing {
        Framing::Lines => encode_line(payload, out),
        Framing::Cobs => {
            encode_cobs(payload, out);
            Ok(())
        }
    }
}

/// A streaming frame decoder for one serial line.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    max_frame: usize,
    /// Most raw bytes a valid frame can have between delimiters; past this the frame is
    /// oversized and dropped.
    max_raw: usize,
    /// Raw bytes of the frame in progress (never more than `max_raw`).
    buf: Vec<u8>,
    /// Inside an oversized frame: dropping bytes until the next delimiter.
    discarding: bool,
}

impl Decoder {
    /// A decoder for `framing` that accepts payloads of up to `max_frame` bytes.
    pub fn new(framing: Framing, max_frame: usize) -> Decoder {
        let max_raw = match framing {
            // Room for a CR before the LF.
            Framing::Lines => max_frame.saturating_add(1),
            Framing::Cobs => cobs::max_encoding_length(max_frame.saturating_add(CRC_LEN)),
        };
        Decoder {
            framing,
            max_frame,
            max_raw,
            buf: Vec::new(),
            discarding: false,
        }
    }

    /// The framing this decoder reads.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The largest payload accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Feeds bytes read from the line; returns the frames (and rejected frames) they
    /// completed, in order.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Result<Bytes, FrameError>> {
        let delimiter = self.framing.delimiter();
        let mut out = Vec::new();
        while !data.is_empty() {
            let (chunk, ended) = match data.iter().position(|&b| b == delimiter) {
                Some(i) => (&data[..i], Some(i)),
                None => (data, None),
            };
            if !self.discarding {
                if self.buf.len() + chunk.len() > self.max_raw {
                    self.buf.clear();
                    self.discarding = true;
                    out.push(Err(FrameError::Oversized {
                        max_frame: self.max_frame,
                    }));
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            match ended {
                Some(i) => {
                    if self.discarding {
                        self.discarding = false;
                    } else if let Some(frame) = self.finish_frame() {
                        out.push(frame);
                    }
                    self.buf.clear();
                    data = &data[i + 1..];
                }
                None => data = &[],
            }
        }
        out
    }

    /// Ends the stream: if a frame was in progress, it is reported as
    /// [`FrameError::Unterminated`] and dropped. The decoder can be used again afterwards.
    pub fn finish(&mut self) -> Option<FrameError> {
        let was_discarding = std::mem::take(&mut self.discarding);
        let len = self.buf.len();
        self.buf.clear();
        (len > 0 && !was_discarding).then_some(FrameError::Unterminated { len })
    }

    /// Decodes the complete frame in `buf` (delimiter already removed). `None` for an empty
    /// frame, which is skipped.
    fn finish_frame(&self) -> Option<Result<Bytes, FrameError>> {
        let raw = self.buf.as_slice();
        match self.framing {
            Framing::Lines => {
                let line = raw.strip_suffix(b"\r").unwrap_or(raw);
                if line.is_empty() {
                    None
                } else if line.len() > self.max_frame {
                    Some(Err(FrameError::Oversized {
                        max_frame: self.max_frame,
                    }))
                } else {
                    Some(Ok(Bytes::copy_from_slice(line)))
                }
            }
            Framing::Cobs if raw.is_empty() => None,
            Framing::Cobs => Some(self.decode_cobs(raw)),
        }
    }

    fn decode_cobs(&self, raw: &[u8]) -> Result<Bytes, FrameError> {
        let mut body = cobs::decode_vec(raw).map_err(|_| FrameError::InvalidCobs)?;
        if body.len() < CRC_LEN {
            return Err(FrameError::TooShort { len: body.len() });
        }
        let payload_len = body.len() - CRC_LEN;
        let received = u16::from_be_bytes([body[payload_len], body[payload_len + 1]]);
        body.truncate(payload_len);
        let computed = crc16(&body);
        if received != computed {
            return Err(FrameError::BadCrc { received, computed });
        }
        if body.len() > self.max_frame {
            return Err(FrameError::Oversized {
                max_frame: self.max_frame,
            });
        }
        Ok(Bytes::from(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` in chunks of `chunk` bytes; returns the frames and the error reasons.
    fn decode_all(
        framing: Framing,
        max_frame: usize,
        stream: &[u8],
        chunk: usize,
    ) -> (Vec<Vec<u8>>, Vec<FrameError>) {
        let mut d = Decoder::new(framing, max_frame);
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for part in stream.chunks(chunk.max(1)) {
            for r in d.push(part) {
                match r {
                    Ok(f) => good.push(f.to_vec()),
                    Err(e) => bad.push(e),
                }
            }
        }
        bad.extend(d.finish());
        (good, bad)
    }

    fn cobs_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_cobs(payload, &mut out);
        out
    }

    #[test]
    fn crc_is_ccitt_false() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
        assert_eq!(crc16(b""), 0xFFFF);
    }

    #[test]
    fn cobs_frames_end_in_a_single_zero_and_carry_a_big_endian_crc() {
        let f = cobs_frame(b"\x00ab\x00");
        assert_eq!(f.last(), Some(&0));
        assert!(!f[..f.len() - 1].contains(&0));
        let body = cobs::decode_vec(&f[..f.len() - 1]).expect("valid cobs");
        assert_eq!(&body[..4], b"\x00ab\x00");
        assert_eq!(&body[4..], &crc16(b"\x00ab\x00").to_be_bytes());
    }

    #[test]
    fn both_framings_round_trip_in_any_chunking() {
        let payloads: Vec<&[u8]> = vec![
            b"{\"device\":\"wt-0001\",\"seq\":1}",
            b"\x00",
            b"a\x00b\x00\x00",
            b"x",
            &[0xFF; 300],
        ];
        for chunk in [1, 2, 7, 4096] {
            let mut lines = Vec::new();
            let mut cobs = Vec::new();
            for p in &payloads {
                encode_line(p, &mut lines).expect("no LF");
                encode_cobs(p, &mut cobs);
            }
            let want: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
            assert_eq!(
                decode_all(Framing::Lines, 1024, &lines, chunk),
                (want.clone(), vec![])
            );
            assert_eq!(
                decode_all(Framing::Cobs, 1024, &cobs, chunk),
                (want, vec![])
            );
        }
    }

    #[test]
    fn cobs_carries_line_feeds_and_empty_payloads() {
        let mut s = Vec::new();
        for p in [&b"a\nb\r\n"[..], b"", b"\n"] {
            encode_cobs(p, &mut s);
        }
        let (good, bad) = decode_all(Framing::Cobs, 64, &s, 3);
        assert_eq!(good, vec![b"a\nb\r\n".to_vec(), vec![], b"\n".to_vec()]);
        assert!(bad.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_dropped_without_being_buffered() {
        let mut d = Decoder::new(Framing::Cobs, 64);
        let mut errors = Vec::new();
        for _ in 0..256 {
            errors.extend(d.push(&[0x55; 4096]).into_iter().map(|r| r.unwrap_err()));
        }
        assert!(d.buf.capacity() <= 1024, "{} buffered", d.buf.capacity());
        assert_eq!(errors, vec![FrameError::Oversized { max_frame: 64 }]);
        let mut s = vec![0x00];
        encode_cobs(b"after", &mut s);
        let frames: Vec<_> = d.push(&s).into_iter().collect();
        assert_eq!(frames, vec![Ok(Bytes::from_static(b"after"))]);
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn framing_names_parse_and_print() {
        for f in [Framing::Lines, Framing::Cobs] {
            assert_eq!(f.to_string().parse::<Framing>(), Ok(f));
            let json = serde_json::to_string(&f).expect("serialize");
            assert_eq!(json, format!("\"{f}\""));
        }
        assert!("COBS".parse::<Framing>().is_err());
    }

    #[test]
    fn lines_accept_crlf_and_skip_empty_lines() {
        let (good, bad) = decode_all(Framing::Lines, 16, b"one\r\n\n\r\ntwo\nthree", 4);
        assert_eq!(good, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(bad, vec![FrameError::Unterminated { len: 5 }]);
    }

    #[test]
    fn lines_refuse_payloads_they_cannot_carry() {
        let mut out = Vec::new();
        assert_eq!(
            encode_line(b"a\nb", &mut out),
            Err(EncodeError::LineFeedInPayload)
        );
        assert_eq!(
            encode_line(b"a\r", &mut out),
            Err(EncodeError::TrailingCarriageReturn)
        );
        assert_eq!(encode_line(b"", &mut out), Err(EncodeError::Empty));
        assert!(out.is_empty());
    }

    #[test]
    fn lines_at_the_limit_pass_and_over_it_are_dropped_without_losing_neighbours() {
        let mut s = Vec::new();
        s.extend_from_slice(b"ok1\n");
        s.extend_from_slice(&[b'a'; 8]); // exactly max_frame
        s.extend_from_slice(b"\r\n");
        s.extend_from_slice(&[b'b'; 9]); // one over, ended by CRLF
        s.extend_from_slice(b"\r\n");
        s.extend_from_slice(&[b'c'; 1000]); // far over
        s.extend_from_slice(b"\nok2\n");
        let (good, bad) = decode_all(Framing::Lines, 8, &s, 5);
        assert_eq!(good, vec![b"ok1".to_vec(), vec![b'a'; 8], b"ok2".to_vec()]);
        assert_eq!(bad, vec![FrameError::Oversized { max_frame: 8 }; 2]);
    }

    #[test]
    fn a_stream_of_good_and_bad_cobs_frames_yields_exactly_the_good_ones_in_order() {
        let mut s = Vec::new();
        let mut want = Vec::new();
        let mut good = |s: &mut Vec<u8>, n: u32| {
            let p = format!("{{\"seq\":{n}}}").into_bytes();
            s.extend(cobs_frame(&p));
            want.push(p);
        };
        // Line noise before the first frame, ended by a delimiter.
        s.extend_from_slice(b"\x07\xFF\x13garbage\x00");
        good(&mut s, 1);
        // A frame with one payload bit flipped: bad CRC.
        let mut f = cobs_frame(b"{\"seq\":999}");
        f[3] ^= 0x01;
        s.extend(f);
        good(&mut s, 2);
        // An oversized frame (payload 300 > 64), not buffered.
        s.extend(cobs_frame(&[0x55; 300]));
        good(&mut s, 3);
        // A truncated frame: the device reset mid-frame, losing the tail; its next frame
        // starts with a delimiter, as firmware does after a reset.
        let f = cobs_frame(b"{\"seq\":truncated}");
        s.extend_from_slice(&f[..f.len() / 2]);
        s.push(0x00);
        good(&mut s, 4);
        // A frame too short to hold a CRC.
        s.extend_from_slice(&[0x02, 0x41, 0x00]);
        // Repeated delimiters are skipped silently.
        s.extend_from_slice(&[0, 0, 0]);
        good(&mut s, 5);
        // A frame cut off by the end of the stream.
        let f = cobs_frame(b"{\"seq\":6}");
        s.extend_from_slice(&f[..f.len() - 1]);

        for chunk in [1, 3, 64, s.len()] {
            let (frames, errors) = decode_all(Framing::Cobs, 64, &s, chunk);
            assert_eq!(frames, want, "chunk {chunk}");
            let reasons: Vec<&str> = errors.iter().map(FrameError::reason).collect();
            assert_eq!(
                reasons,
                [
                    "invalid_cobs",
                    "bad_crc",
                    "oversized",
                    "invalid_cobs",
                    "too_short",
                    "unterminated"
                ],
                "chunk {chunk}"
            );
        }
    }

    /// Whether some 0x00-delimited piece of `stream` decodes to `payload` followed by its
    /// correct CRC — i.e. whether a decoder was right to yield `payload`.
    fn crc_holds_in(stream: &[u8], payload: &[u8]) -> bool {
        stream.split(|&b| b == 0).any(|raw| {
            cobs::decode_vec(raw).is_ok_and(|body| {
                body.len() >= CRC_LEN
                    && body[..body.len() - CRC_LEN] == *payload
                    && body[body.len() - CRC_LEN..] == crc16(payload).to_be_bytes()
            })
        })
    }

    proptest! {
        #[test]
        fn decoder_never_panics_nor_yields_a_frame_with_a_bad_crc(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
            max_frame in 0usize..256,
        ) {
            for framing in [Framing::Lines, Framing::Cobs] {
                let mut d = Decoder::new(framing, max_frame);
                for part in data.chunks(chunk) {
                    for f in d.push(part).into_iter().flatten() {
                        prop_assert!(f.len() <= max_frame);
                        if framing == Framing::Cobs {
                            prop_assert!(crc_holds_in(&data, &f));
                        } else {
                            prop_assert!(!f.is_empty() && !f.contains(&b'\n'));
                        }
                    }
                }
                let _ = d.finish();
            }
        }

        #[test]
        fn cobs_decoder_yields_only_frames_whose_crc_holds(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..8),
        ) {
            let mut s = Vec::new();
            for f in &frames {
                encode_cobs(f, &mut s);
            }
            for (at, mask) in &flips {
                if !s.is_empty() {
                    let i = at % s.len();
                    s[i] ^= mask;
                }
            }
            let d = &mut Decoder::new(Framing::Cobs, 64);
            for f in d.push(&s).into_iter().flatten() {
                prop_assert!(crc_holds_in(&s, &f));
            }
        }

        #[test]
        fn encode_then_decode_is_identity(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..16),
            chunk in 1usize..512,
        ) {
            let mut cobs = Vec::new();
            let mut lines = Vec::new();
            let mut line_payloads = Vec::new();
            for p in &payloads {
                encode_cobs(p, &mut cobs);
                if encode_line(p, &mut lines).is_ok() {
                    line_payloads.push(p.clone());
                }
            }
            prop_assert_eq!(decode_all(Framing::Cobs, 300, &cobs, chunk), (payloads.clone(), vec![]));
            prop_assert_eq!(decode_all(Framing::Lines, 300, &lines, chunk), (line_payloads, vec![]));
        }
    }
}

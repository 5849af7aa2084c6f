//! The bytes of the garbage faults: the payloads sent over MQTT
//! ([`FaultPlan::garbage_payload`]) and, over a serial line, the whole stream of a reading
//! with its faults ([`FaultPlan::encode_serial`]): noise, bad-CRC and truncated frames that
//! never decode as a reading.

use super::{Fault, FaultPlan, FaultRng};
use crate::framing::{self, crc16, Framing};
use crate::telemetry::Reading;

impl FaultPlan {
    /// The payload of a garbage fault (`MalformedJson` or `Oversized`) sent with `reading`,
    /// whose JSON is `json`. `None` for the other faults.
    pub fn garbage_payload(&self, fault: Fault, reading: &Reading, json: &[u8]) -> Option<Vec<u8>> {
        match fault {
            // A strict prefix of a JSON object is never valid JSON.
            Fault::MalformedJson => {
                Some(json[..(json.len() * 2 / 3).max(1).min(json.len())].to_vec())
            }
            Fault::Oversized => {
                let mut s = format!("{{\"device\":\"{}\",\"oversized\":\"", reading.device);
                let fill = self.oversized_bytes.saturating_sub(s.len() + 2);
                s.extend(std::iter::repeat_n('x', fill));
                s.push_str("\"}");
                Some(s.into_bytes())
            }
            _ => None,
        }
    }

    /// Appends the frames of `reading` (JSON `json`) and its faults to `out`, in order:
    /// garbage frames first, then the reading, then its duplicate. `Reboot` is ignored here
    /// (the caller restarts the turbine before sampling the reading).
    pub fn encode_serial(
        &self,
        framing: Framing,
        faults: &[Fault],
        reading: &Reading,
        json: &[u8],
        rng: &mut FaultRng,
        out: &mut Vec<u8>,
    ) -> Result<(), framing::EncodeError> {
        for &f in faults {
            match f {
                Fault::Reboot | Fault::Flap | Fault::Duplicate => {}
                Fault::MalformedJson | Fault::Oversized => {
                    if let Some(p) = self.garbage_payload(f, reading, json) {
                        framing::encode(framing, &p, out)?;
                    }
                }
                Fault::Noise => noise_frame(framing, rng, out),
                Fault::BadCrc => bad_crc_frame(framing, json, out),
                Fault::Truncated => truncated_frame(framing, json, out),
            }
        }
        framing::encode(framing, json, out)?;
        if faults.contains(&Fault::Duplicate) {
            framing::encode(framing, json, out)?;
        }
        Ok(())
    }
}

/// Random bytes without the delimiter, then the delimiter; never a valid reading.
fn noise_frame(framing: Framing, rng: &mut FaultRng, out: &mut Vec<u8>) {
    let delimiter = framing.delimiter();
    let mut frame = Vec::with_capacity(40);
    loop {
        frame.clear();
        // 0xFF first: never UTF-8, so never JSON; never a delimiter or a CR.
        frame.push(0xFF);
        rng.bytes(&mut frame, 23);
        for b in &mut frame {
            if *b == delimiter || *b == b'\r' {
                *b = 0xFF;
            }
        }
        frame.push(delimiter);
        // A random COBS body can pass its CRC by chance (1 in 65536); draw again then. A
        // line starting with 0xFF is never JSON.
        if framing == Framing::Lines || !decodes_ok(framing, &frame) {
            break;
        }
    }
    out.extend_from_slice(&frame);
}

/// Whether `frame` (delimiter included) decodes as a frame at all.
fn decodes_ok(framing: Framing, frame: &[u8]) -> bool {
    let mut d = framing::Decoder::new(framing, usize::MAX / 4);
    d.push(frame).into_iter().any(|r| r.is_ok())
}

/// The reading's frame with a bad CRC (`cobs`), or with a byte that is not UTF-8 (`lines`).
fn bad_crc_frame(framing: Framing, json: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Cobs => {
            let mut body = Vec::with_capacity(json.len() + 2);
            body.extend_from_slice(json);
            body.extend_from_slice(&(crc16(json) ^ 0xFFFF).to_be_bytes());
            let start = out.len();
            out.resize(start + cobs::max_encoding_length(body.len()), 0);
            let n = cobs::encode(&body, &mut out[start..]);
            out.truncate(start + n);
            out.push(0x00);
        }
        Framing::Lines => {
            let mut line = json.to_vec();
            let mid = line.len() / 2;
            if let Some(b) = line.get_mut(mid) {
                *b = 0xFF;
            }
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
}

/// The reading's frame cut short, then the delimiter.
fn truncated_frame(framing: Framing, json: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Cobs => {
            let mut full = Vec::new();
            framing::encode_cobs(json, &mut full);
            full.pop(); // the delimiter
            let mut cut = (full.len() / 2).max(1);
            // A cut frame may pass its CRC by chance; cut further then.
            while cut > 1 && decodes_ok(framing, &[&full[..cut], &[0x00][..]].concat()) {
                cut -= 1;
            }
            out.extend_from_slice(&full[..cut]);
            out.push(0x00);
        }
        Framing::Lines => {
            // A strict prefix of a JSON object is never valid JSON.
            out.extend_from_slice(&json[..(json.len() / 2).max(1).min(json.len())]);
            out.push(b'\n');
        }
    }
}

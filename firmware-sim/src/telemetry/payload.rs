//! A reading and its two payload encodings, JSON and the compact binary form, and the
//! parsers verification uses ([`ReadingId::parse`], [`parse_seq`]).

use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// First byte of a binary payload. JSON starts with `{` (or whitespace), so the two forms
/// are told apart by it.
pub const BINARY_MAGIC: u8 = 0xB5;
/// Version of the binary layout, the payload's second byte.
pub const BINARY_VERSION: u8 = 1;
/// Longest device id the binary form carries.
pub const MAX_BINARY_DEVICE_LEN: usize = 64;
/// Bytes of the binary form after the device id: boot, seq, ts (u64 each) and seven 16-bit
/// sensor values.
pub(super) const BINARY_TAIL: usize = 3 * 8 + 7 * 2;

/// How a reading is encoded in a payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A flat JSON object ([`Reading::encode_json`]).
    #[default]
    Json,
    /// The compact binary form ([`Reading::encode_binary`]).
    Binary,
}

impl PayloadFormat {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Binary => "binary",
        }
    }
}

/// A payload format name that is neither `json` nor `binary`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payload format {0:?}: expected \"json\" or \"binary\"")]
pub struct UnknownPayloadFormat(pub String);

impl FromStr for PayloadFormat {
    type Err = UnknownPayloadFormat;

    /// The format named `s` on the command line (see [`PayloadFormat::as_str`]).
    fn from_str(s: &str) -> Result<PayloadFormat, UnknownPayloadFormat> {
        [PayloadFormat::Json, PayloadFormat::Binary]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownPayloadFormat(s.to_owned()))
    }
}

impl std::fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reading of a turbine's sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device id, e.g. `wt-0001`.
    pub device: String,
    /// Boot id: changes when the device restarts, so counters of different boots are told apart.
    pub boot: u64,
    /// Per-device counter, starting at 1 for each boot.
    pub seq: u64,
    /// Time of the reading, ms since the Unix epoch.
    pub ts: u64,
    /// Wind speed at hub height (m/s).
    pub wind_ms: f64,
    /// Wind direction (degrees from north, `0..360`).
    pub wind_dir_deg: f64,
    /// Rotor speed (rpm).
    pub rpm: f64,
    /// Electrical power (kW).
    pub power_kw: f64,
    /// Nacelle temperature (°C), last sample.
    pub temp_c: f64,
    /// Relative humidity in the nacelle (%), last sample.
    pub humidity_pct: f64,
    /// Drive-train vibration (mm/s RMS).
    pub vib_mm_s: f64,
}

impl Reading {
    /// Encodes the reading as a JSON object.
    ///
    /// With `pad_to = Some(n)` the payload is exactly `n` bytes long when possible: a `"pad"`
    /// field of `x`s fills it up. When the full reading does not fit in `n` bytes, the sensor
    /// values are left out and only the identity fields (`device`, `boot`, `seq`, `ts`) are
    /// kept, padded to `n` — benchmarks with tiny payloads still carry what verification
    /// needs. If even those do not fit, the identity fields are sent unpadded.
    pub fn encode_json(&self, pad_to: Option<usize>, out: &mut Vec<u8>) {
        out.clear();
        let mut s = String::with_capacity(pad_to.unwrap_or(160).max(64));
        self.write_identity(&mut s);
        let identity_len = s.len();
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            ",\"wind_ms\":{:.2},\"wind_dir_deg\":{:.1},\"rpm\":{:.2},\"power_kw\":{:.1},\"temp_c\":{:.2},\"humidity_pct\":{:.1},\"vib_mm_s\":{:.2}",
            self.wind_ms,
            self.wind_dir_deg,
            self.rpm,
            self.power_kw,
            self.temp_c,
            self.humidity_pct,
            self.vib_mm_s
        );
        if let Some(target) = pad_to {
            // `,"pad":""` plus the closing brace.
            const PAD_OVERHEAD: usize = 10;
            let fits_exactly = s.len() + 1 == target;
            if !fits_exactly && s.len() + PAD_OVERHEAD > target {
                s.truncate(identity_len);
            }
            if s.len() + PAD_OVERHEAD <= target {
                s.push_str(",\"pad\":\"");
                let fill = target - s.len() - 2;
                s.extend(std::iter::repeat_n('x', fill));
                s.push('"');
            }
        }
        s.push('}');
        out.extend_from_slice(s.as_bytes());
    }

    /// The reading as JSON, unpadded.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_json(None, &mut out);
        out
    }

    /// Encodes the reading in `format` into `out` (replacing its contents); `pad_to` as in
    /// [`Reading::encode_json`] and [`Reading::encode_binary`].
    pub fn encode(&self, format: PayloadFormat, pad_to: Option<usize>, out: &mut Vec<u8>) {
        match format {
            PayloadFormat::Json => self.encode_json(pad_to, out),
            PayloadFormat::Binary => self.encode_binary(pad_to, out),
        }
    }

    /// Encodes the reading in the compact binary form, all integers big-endian:
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | [`BINARY_MAGIC`] |
    /// | 1 | [`BINARY_VERSION`] |
    /// | 1 | device id length `n` (at most [`MAX_BINARY_DEVICE_LEN`]) |
    /// | n | device id, UTF-8 |
    /// | 8, 8, 8 | boot, seq, ts (ms) |
    /// | 2 | wind speed, 0.01 m/s (u16) |
    /// | 2 | wind direction, 0.1° (u16) |
    /// | 2 | rotor speed, 0.01 rpm (u16) |
    /// | 2 | power, 0.1 kW (u16) |
    /// | 2 | nacelle temperature, 0.01 °C (i16) |
    /// | 2 | humidity, 0.01 % (u16) |
    /// | 2 | vibration, 0.01 mm/s (u16) |
    ///
    /// With `pad_to = Some(n)` zero bytes are appended up to `n` bytes (a decoder ignores
    /// trailing zeros). A device id longer than the limit is cut at a character boundary.
    pub fn encode_binary(&self, pad_to: Option<usize>, out: &mut Vec<u8>) {
        out.clear();
        let mut id_len = self.device.len().min(MAX_BINARY_DEVICE_LEN);
        while !self.device.is_char_boundary(id_len) {
            id_len -= 1;
        }
        out.extend_from_slice(&[BINARY_MAGIC, BINARY_VERSION, id_len as u8]);
        out.extend_from_slice(&self.device.as_bytes()[..id_len]);
        for v in [self.boot, self.seq, self.ts] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        // Quantise into the sensor's range; the model keeps every value inside it.
        let unsigned = |v: f64, scale: f64| (v * scale).round().clamp(0.0, 65_535.0) as u16;
        for v in [
            unsigned(self.wind_ms, 100.0),
            unsigned(self.wind_dir_deg, 10.0),
            unsigned(self.rpm, 100.0),
            unsigned(self.power_kw, 10.0),
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let temp = (self.temp_c * 100.0).round().clamp(-32_768.0, 32_767.0) as i16;
        out.extend_from_slice(&temp.to_be_bytes());
        for v in [
            unsigned(self.humidity_pct, 100.0),
            unsigned(self.vib_mm_s, 100.0),
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(target) = pad_to {
            if target > out.len() {
                out.resize(target, 0);
            }
        }
    }

    /// The reading in the binary form, unpadded.
    pub fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_binary(None, &mut out);
        out
    }

    /// Decodes a payload made by [`Reading::encode_binary`] (sensor values at the form's
    /// resolution). `None` for anything else: wrong magic or version, cut short, or bytes
    /// after the reading that are not zero padding.
    pub fn decode_binary(payload: &[u8]) -> Option<Reading> {
        let (device, rest) = binary_header(payload)?;
        let u64_at = |i: usize| -> u64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let u16_at = |i: usize| f64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        Some(Reading {
            device: device.to_owned(),
            boot: u64_at(0),
            seq: u64_at(8),
            ts: u64_at(16),
            wind_ms: u16_at(24) / 100.0,
            wind_dir_deg: u16_at(26) / 10.0,
            rpm: u16_at(28) / 100.0,
            power_kw: u16_at(30) / 10.0,
            temp_c: f64::from(i16::from_be_bytes([rest[32], rest[33]])) / 100.0,
            humidity_pct: u16_at(34) / 100.0,
            vib_mm_s: u16_at(36) / 100.0,
        })
    }

    fn write_identity(&self, s: &mut String) {
        let _ = write!(
            s,
            "{{\"device\":\"{}\",\"boot\":{},\"seq\":{},\"ts\":{}",
            self.device, self.boot, self.seq, self.ts
        );
    }
}

/// The fields of a payload that verification needs; every other field is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReadingId {
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot: u64,
    /// Per-device counter.
    pub seq: u64,
    /// Time of the reading, ms since the Unix epoch.
    pub ts: u64,
}

impl ReadingId {
    /// Parses a payload produced by [`Reading::encode_json`] or [`Reading::encode_binary`]
    /// (padded or not).
    pub fn parse(payload: &[u8]) -> Option<ReadingId> {
        if payload.first() == Some(&BINARY_MAGIC) {
            return Reading::decode_binary(payload).map(|r| ReadingId {
                device: r.device,
                boot: r.boot,
                seq: r.seq,
                ts: r.ts,
            });
        }
        serde_json::from_slice(payload).ok()
    }
}

/// Splits a binary payload into its device id and the fixed-size tail after it, checking
/// magic, version, length and padding.
fn binary_header(payload: &[u8]) -> Option<(&str, &[u8])> {
    let [magic, version, id_len, rest @ ..] = payload else {
        return None;
    };
    if *magic != BINARY_MAGIC || *version != BINARY_VERSION {
        return None;
    }
    let id_len = usize::from(*id_len);
    if id_len == 0 || id_len > MAX_BINARY_DEVICE_LEN || rest.len() < id_len + BINARY_TAIL {
        return None;
    }
    let (id, rest) = rest.split_at(id_len);
    let (tail, padding) = rest.split_at(BINARY_TAIL);
    if padding.iter().any(|&b| b != 0) {
        return None;
    }
    Some((std::str::from_utf8(id).ok()?, tail))
}

/// Extracts the counter of a payload without a full parse (hot path of the PUBACK
/// accounting): the `seq` field of JSON, or the counter of the binary form. Returns `None`
/// if the payload has neither.
pub fn parse_seq(payload: &[u8]) -> Option<u64> {
    if payload.first() == Some(&BINARY_MAGIC) {
        let (_, tail) = binary_header(payload)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&tail[8..16]);
        return Some(u64::from_be_bytes(b));
    }
    const KEY: &[u8] = b"\"seq\":";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &payload[start..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

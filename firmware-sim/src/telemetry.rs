//! The wind-turbine model: deterministic, physically plausible telemetry from a seed.
//!
//! A [`Turbine`] advances in *simulated* time, one [`Turbine::step`] per reading, so the
//! sequence of readings depends only on the seed and the device number — never on how fast
//! the fleet publishes. Wall-clock time only enters through the `ts` the caller stamps on
//! each reading.
//!
//! The model, per step of `dt` seconds:
//! - **wind** is an Ornstein–Uhlenbeck process around a slowly drifting mean (itself an OU
//!   process around the site's mean), reflected into `0..=40` m/s;
//! - **state** follows the controller: below cut-in (3 m/s) the rotor idles, above cut-out
//!   (25 m/s) it stops for a storm and restarts only once the wind is back under 20 m/s;
//! - **power** follows the power curve: cubic from cut-in to rated wind (12 m/s), flat at
//!   rated power up to cut-out, zero when not producing;
//! - **rpm** tracks the controller's target with the rotor's inertia (10 s time constant);
//! - **nacelle temperature** follows ambient (with a daily cycle) plus generator heat,
//!   with a 10-minute time constant;
//! - **vibration** grows with the square of rotor speed and with storm turbulence;
//! - **wind direction** veers slowly (a random walk of a few degrees per minute);
//! - **humidity** moves against the temperature's daily cycle, within `0..=100` %.
//!
//! Sensors are sampled at their own rates, as on a real turbine controller: wind, direction,
//! rotor, power and vibration every step; nacelle temperature about every 10 s and humidity
//! about every 30 s of simulated time, each next sample time with ±10 % jitter. Between two
//! samples a reading carries the last sampled value (sample and hold).
//!
//! # Payloads
//! [`PayloadFormat::Json`] (the default) is a flat JSON object; [`PayloadFormat::Binary`] is
//! the compact form of constrained firmware (48 bytes for `wt-0001`, see
//! [`Reading::encode_binary`]). Both carry the device id, the boot id and the per-device
//! counter, so a consumer can prove completeness and order whichever it receives;
//! [`ReadingId::parse`] reads both, told apart by the first byte.

use std::fmt::Write as _;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Wind speed (m/s) at which the turbine starts producing.
pub const CUT_IN_MS: f64 = 3.0;
/// Wind speed (m/s) from which the turbine produces its rated power.
pub const RATED_WIND_MS: f64 = 12.0;
/// Wind speed (m/s) above which the turbine stops to protect itself.
pub const CUT_OUT_MS: f64 = 25.0;
/// Wind speed (m/s) under which a turbine stopped by a storm starts again (hysteresis, so
/// that gusts around cut-out do not start and stop it every second).
pub const RESTART_MS: f64 = 20.0;
/// Highest wind speed the model produces (m/s).
pub const MAX_WIND_MS: f64 = 40.0;
/// Electrical power at and above rated wind (kW).
pub const RATED_POWER_KW: f64 = 2000.0;
/// Rotor speed at rated wind (rpm).
pub const RATED_RPM: f64 = 16.0;
/// Rotor speed at cut-in (rpm): variable-speed rotors do not start from zero.
pub const MIN_RPM: f64 = 6.0;
/// Bounds of the nacelle temperature sensor (°C).
pub const TEMP_RANGE_C: (f64, f64) = (-40.0, 90.0);
/// Upper bound of the vibration sensor (mm/s RMS).
pub const MAX_VIB_MM_S: f64 = 50.0;
/// Simulated seconds between two samples of the nacelle temperature (before jitter).
pub const TEMP_SAMPLE_S: f64 = 10.0;
/// Simulated seconds between two samples of the humidity sensor (before jitter).
pub const HUMIDITY_SAMPLE_S: f64 = 30.0;
/// Relative jitter of the slow sensors' sample times.
const SAMPLE_JITTER: f64 = 0.1;

/// First byte of a binary payload. JSON starts with `{` (or whitespace), so the two forms
/// are told apart by it.
pub const BINARY_MAGIC: u8 = 0xB5;
/// Version of the binary layout, the payload's second byte.
pub const BINARY_VERSION: u8 = 1;
/// Longest device id the binary form carries.
pub const MAX_BINARY_DEVICE_LEN: usize = 64;
/// Bytes of the binary form after the device id: boot, seq, ts (u64 each) and seven 16-bit
/// sensor values.
const BINARY_TAIL: usize = 3 * 8 + 7 * 2;

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

impl FromStr for PayloadFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<PayloadFormat, String> {
        match s {
            "json" => Ok(PayloadFormat::Json),
            "binary" => Ok(PayloadFormat::Binary),
            _ => Err(format!(
                "unknown payload format {s:?}: expected \"json\" or \"binary\""
            )),
        }
    }
}

impl std::fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of the `n`-th device of a fleet (1-based): `wt-0001`, `wt-0002`, …
pub fn device_id(n: usize) -> String {
    format!("wt-{n:04}")
}

/// The MQTT topic a device publishes its telemetry to.
pub fn topic_for(device: &str) -> String {
    format!("turbines/{device}/telemetry")
}

/// Wall-clock time since the Unix epoch in ms: the `ts` devices stamp on readings and the
/// default boot id.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the turbine controller is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TurbineState {
    /// Wind below cut-in: rotor idling, no power.
    Idle,
    /// Producing power.
    Running,
    /// Stopped after the wind exceeded cut-out; waits for the wind to drop below
    /// [`RESTART_MS`].
    Storm,
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

/// Mixes a fleet seed and a device number into an independent per-device seed (splitmix64).
fn device_seed(seed: u64, device: usize) -> u64 {
    let mut z = seed ^ (device as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D1_049B_B133_11EB);
    z ^ (z >> 31)
}

/// Power (kW) the power curve gives for a wind speed, for a turbine that is allowed to run.
pub fn power_curve_kw(wind_ms: f64) -> f64 {
    if !(CUT_IN_MS..=CUT_OUT_MS).contains(&wind_ms) {
        0.0
    } else if wind_ms >= RATED_WIND_MS {
        RATED_POWER_KW
    } else {
        let c3 = CUT_IN_MS.powi(3);
        RATED_POWER_KW * (wind_ms.powi(3) - c3) / (RATED_WIND_MS.powi(3) - c3)
    }
}

/// One simulated wind turbine.
#[derive(Debug, Clone)]
pub struct Turbine {
    device: String,
    boot: u64,
    seq: u64,
    rng: StdRng,
    /// Simulated seconds per step.
    dt: f64,
    /// Simulated seconds since the model started (drives the daily temperature cycle).
    sim_time: f64,
    /// Long-run mean wind of the site (m/s).
    site_mean_ms: f64,
    /// Slowly drifting mean the wind reverts to (weather systems passing).
    mean_ms: f64,
    wind_ms: f64,
    /// Daily mean ambient temperature of the site (°C).
    ambient_c: f64,
    state: TurbineState,
    rpm: f64,
    temp_c: f64,
    /// Wind direction (degrees, `0..360`).
    wind_dir_deg: f64,
    humidity_pct: f64,
    /// Last sampled values of the slow sensors and when they are sampled next (simulated s).
    temp_sample: f64,
    next_temp_sample: f64,
    humidity_sample: f64,
    next_humidity_sample: f64,
}

impl Turbine {
    /// A turbine for device number `n` (1-based) of a fleet seeded with `seed`; each step
    /// advances simulated time by `dt_s` seconds.
    pub fn new(seed: u64, n: usize, boot: u64, dt_s: f64) -> Turbine {
        let mut rng = StdRng::seed_from_u64(device_seed(seed, n));
        let site_mean_ms: f64 = rng.random_range(6.0..11.0);
        let wind_ms = (site_mean_ms + rng.random_range(-2.0..2.0)).clamp(0.0, MAX_WIND_MS);
        let ambient_c = rng.random_range(2.0..20.0);
        let wind_dir_deg = rng.random_range(0.0..360.0);
        let humidity_pct = rng.random_range(50.0..90.0);
        let mut t = Turbine {
            device: device_id(n),
            boot,
            seq: 0,
            rng,
            dt: if dt_s.is_finite() && dt_s > 0.0 {
                dt_s
            } else {
                1.0
            },
            sim_time: 0.0,
            site_mean_ms,
            mean_ms: site_mean_ms,
            wind_ms,
            ambient_c,
            state: TurbineState::Idle,
            rpm: 0.0,
            temp_c: ambient_c + 8.0,
            wind_dir_deg,
            humidity_pct,
            temp_sample: ambient_c + 8.0,
            next_temp_sample: 0.0,
            humidity_sample: humidity_pct,
            next_humidity_sample: 0.0,
        };
        t.state = t.next_state();
        if t.state == TurbineState::Running {
            t.rpm = t.target_rpm();
        }
        t
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The counter of the last reading produced (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Restarts the device's firmware: the next reading has counter 1 and carries `boot`.
    /// The turbine itself (wind, rotor, temperature) goes on as before.
    pub fn reboot(&mut self, boot: u64) {
        self.boot = boot;
        self.seq = 0;
    }

    /// What the controller is doing now.
    pub fn state(&self) -> TurbineState {
        self.state
    }

    /// A standard normal sample (Box–Muller).
    fn gauss(&mut self) -> f64 {
        let u1: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn next_state(&self) -> TurbineState {
        match self.state {
            TurbineState::Storm if self.wind_ms >= RESTART_MS => TurbineState::Storm,
            _ if self.wind_ms > CUT_OUT_MS => TurbineState::Storm,
            _ if self.wind_ms < CUT_IN_MS => TurbineState::Idle,
            _ => TurbineState::Running,
        }
    }

    fn target_rpm(&self) -> f64 {
        match self.state {
            TurbineState::Running => {
                let f = ((self.wind_ms - CUT_IN_MS) / (RATED_WIND_MS - CUT_IN_MS)).clamp(0.0, 1.0);
                MIN_RPM + (RATED_RPM - MIN_RPM) * f
            }
            // Idling rotors turn slowly in light wind; a storm-stopped rotor is braked.
            TurbineState::Idle => 0.15 * self.wind_ms,
            TurbineState::Storm => 0.0,
        }
    }

    /// Advances the model by one step and returns the next reading, stamped `ts_ms`.
    pub fn step(&mut self, ts_ms: u64) -> Reading {
        let dt = self.dt;
        // Weather: the mean drifts over hours, the wind around it over a minute.
        let n1 = self.gauss();
        self.mean_ms +=
            (self.site_mean_ms - self.mean_ms) * (dt / 7200.0).min(1.0) + 0.05 * dt.sqrt() * n1;
        self.mean_ms = self.mean_ms.clamp(0.0, 30.0);
        let n2 = self.gauss();
        let mut wind = self.wind_ms
            + (self.mean_ms - self.wind_ms) * (dt / 60.0).min(1.0)
            + 0.35 * dt.sqrt() * n2;
        // Reflect into the sensor range instead of sticking to its ends.
        if wind < 0.0 {
            wind = -wind;
        }
        if wind > MAX_WIND_MS {
            wind = 2.0 * MAX_WIND_MS - wind;
        }
        self.wind_ms = wind.clamp(0.0, MAX_WIND_MS);

        self.state = self.next_state();
        let target = self.target_rpm();
        self.rpm += (target - self.rpm) * (1.0 - (-dt / 10.0).exp());
        self.rpm = self.rpm.clamp(0.0, RATED_RPM);

        let power_kw = match self.state {
            TurbineState::Running => {
                let noise = 1.0 + 0.01 * self.gauss();
                (power_curve_kw(self.wind_ms) * noise).clamp(0.0, RATED_POWER_KW)
            }
            _ => 0.0,
        };

        self.sim_time += dt;
        let day = (self.sim_time / 86_400.0) * std::f64::consts::TAU;
        let ambient = self.ambient_c + 5.0 * day.sin();
        let target_temp = ambient + 8.0 + 25.0 * power_kw / RATED_POWER_KW;
        let n3 = self.gauss();
        self.temp_c += (target_temp - self.temp_c) * (1.0 - (-dt / 600.0).exp()) + 0.05 * n3;
        self.temp_c = self.temp_c.clamp(TEMP_RANGE_C.0, TEMP_RANGE_C.1);

        let spin = self.rpm / RATED_RPM;
        let turbulence = ((self.wind_ms - 15.0).max(0.0)) / 10.0;
        let n4 = self.gauss();
        let vib = 0.3 + 3.0 * spin * spin + 0.4 * turbulence + 0.1 * n4.abs();

        // Direction veers a few degrees a minute, more in strong wind.
        let n5 = self.gauss();
        self.wind_dir_deg =
            (self.wind_dir_deg + (0.2 + 0.02 * self.wind_ms) * dt.sqrt() * n5).rem_euclid(360.0);
        if self.wind_dir_deg >= 360.0 {
            // rem_euclid of a tiny negative angle rounds up to 360.
            self.wind_dir_deg = 0.0;
        }
        // Humidity falls as the day warms and rises at night, around the site's level.
        let n6 = self.gauss();
        let target_humidity = 70.0 - 15.0 * day.sin();
        self.humidity_pct += (target_humidity - self.humidity_pct) * (1.0 - (-dt / 1800.0).exp())
            + 0.1 * dt.sqrt() * n6;
        self.humidity_pct = self.humidity_pct.clamp(0.0, 100.0);

        // Slow sensors: sample and hold, each on its own jittered schedule.
        if self.sim_time >= self.next_temp_sample {
            self.temp_sample = self.temp_c;
            self.next_temp_sample = self.sim_time + self.jittered(TEMP_SAMPLE_S);
        }
        if self.sim_time >= self.next_humidity_sample {
            self.humidity_sample = self.humidity_pct;
            self.next_humidity_sample = self.sim_time + self.jittered(HUMIDITY_SAMPLE_S);
        }

        self.seq += 1;
        Reading {
            device: self.device.clone(),
            boot: self.boot,
            seq: self.seq,
            ts: ts_ms,
            wind_ms: self.wind_ms,
            wind_dir_deg: self.wind_dir_deg,
            rpm: self.rpm,
            power_kw,
            temp_c: self.temp_sample,
            humidity_pct: self.humidity_sample,
            vib_mm_s: vib.clamp(0.0, MAX_VIB_MM_S),
        }
    }

    /// `period` with ±[`SAMPLE_JITTER`] of random jitter.
    fn jittered(&mut self, period: f64) -> f64 {
        period * (1.0 + self.rng.random_range(-SAMPLE_JITTER..SAMPLE_JITTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, n: usize, steps: usize) -> Vec<Reading> {
        let mut t = Turbine::new(seed, n, 7, 1.0);
        (0..steps).map(|i| t.step(1_000 + i as u64)).collect()
    }

    #[test]
    fn same_seed_and_device_give_the_same_readings() {
        assert_eq!(run(42, 3, 2_000), run(42, 3, 2_000));
    }

    #[test]
    fn different_seeds_or_devices_give_different_readings() {
        let a = run(42, 3, 100);
        assert_ne!(a, run(43, 3, 100));
        let b = run(42, 4, 100);
        assert_ne!(
            a.iter().map(|r| r.wind_ms).collect::<Vec<_>>(),
            b.iter().map(|r| r.wind_ms).collect::<Vec<_>>()
        );
    }

    #[test]
    fn counters_start_at_one_and_increase_by_one() {
        let r = run(1, 1, 50);
        assert!(r.iter().enumerate().all(|(i, x)| x.seq == i as u64 + 1));
        assert!(r.iter().all(|x| x.device == "wt-0001" && x.boot == 7));
    }

    #[test]
    fn readings_stay_within_physical_bounds_and_follow_the_power_curve() {
        let mut states = std::collections::HashSet::new();
        // Ten-second steps over ~115 days per device: storms and calms both happen.
        for n in 1..=10 {
            let mut t = Turbine::new(9, n, 1, 10.0);
            for i in 0..100_000u64 {
                let r = t.step(i);
                states.insert(t.state());
                assert!((0.0..=MAX_WIND_MS).contains(&r.wind_ms), "{r:?}");
                assert!((0.0..=RATED_RPM).contains(&r.rpm), "{r:?}");
                assert!((0.0..=RATED_POWER_KW).contains(&r.power_kw), "{r:?}");
                assert!(
                    (TEMP_RANGE_C.0..=TEMP_RANGE_C.1).contains(&r.temp_c),
                    "{r:?}"
                );
                assert!((0.0..=MAX_VIB_MM_S).contains(&r.vib_mm_s), "{r:?}");
                assert!((0.0..360.0).contains(&r.wind_dir_deg), "{r:?}");
                assert!((0.0..=100.0).contains(&r.humidity_pct), "{r:?}");
                if r.wind_ms < CUT_IN_MS || r.wind_ms > CUT_OUT_MS {
                    assert_eq!(r.power_kw, 0.0, "{r:?}");
                }
                if t.state() == TurbineState::Running {
                    let curve = power_curve_kw(r.wind_ms);
                    assert!((r.power_kw - curve).abs() <= 0.06 * RATED_POWER_KW, "{r:?}");
                    if r.wind_ms >= RATED_WIND_MS {
                        assert!(r.power_kw >= 0.95 * RATED_POWER_KW, "{r:?}");
                    }
                }
            }
        }
        assert!(states.contains(&TurbineState::Running), "{states:?}");
        assert!(states.contains(&TurbineState::Idle), "{states:?}");
    }

    #[test]
    fn power_curve_has_cut_in_rated_and_cut_out() {
        assert_eq!(power_curve_kw(2.9), 0.0);
        assert!(power_curve_kw(3.5) > 0.0);
        assert!(power_curve_kw(8.0) < power_curve_kw(10.0));
        assert_eq!(power_curve_kw(12.0), RATED_POWER_KW);
        assert_eq!(power_curve_kw(25.0), RATED_POWER_KW);
        assert_eq!(power_curve_kw(25.1), 0.0);
    }

    #[test]
    fn json_payload_has_the_documented_fields() {
        let r = run(5, 12, 3).pop().expect("three readings");
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).expect("valid JSON");
        assert_eq!(v["device"], "wt-0012");
        assert_eq!(v["boot"], 7);
        assert_eq!(v["seq"], 3);
        for k in [
            "ts",
            "wind_ms",
            "wind_dir_deg",
            "rpm",
            "power_kw",
            "temp_c",
            "humidity_pct",
            "vib_mm_s",
        ] {
            assert!(v[k].is_number(), "{k} in {v}");
        }
        let id = ReadingId::parse(&r.to_json()).expect("id");
        assert_eq!((id.device.as_str(), id.boot, id.seq), ("wt-0012", 7, 3));
    }

    #[test]
    fn padded_payloads_have_the_exact_target_size_and_stay_valid_json() {
        let mut t = Turbine::new(1, 1, 1_732_000_000, 1.0);
        let mut buf = Vec::new();
        for target in [100usize, 180, 512, 4096] {
            let r = t.step(1_732_000_000_123);
            r.encode_json(Some(target), &mut buf);
            assert_eq!(buf.len(), target, "{}", String::from_utf8_lossy(&buf));
            let id = ReadingId::parse(&buf).expect("valid JSON");
            assert_eq!(id.seq, r.seq);
            assert_eq!(parse_seq(&buf), Some(r.seq));
        }
        // The 100-byte form drops the sensor values but keeps the identity.
        let r = t.step(1);
        r.encode_json(Some(100), &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert!(v.get("wind_ms").is_none());
        // Too small to pad: identity only, unpadded.
        r.encode_json(Some(10), &mut buf);
        assert!(ReadingId::parse(&buf).is_some());
    }

    #[test]
    fn slow_sensors_are_sampled_at_their_own_jittered_rates() {
        // One-second steps for an hour: temperature changes about every 10 s, humidity about
        // every 30 s, never faster than the period minus its jitter; wind changes every step.
        let r = run(3, 2, 3_600);
        let change_gaps = |f: &dyn Fn(&Reading) -> f64| -> Vec<u64> {
            let mut last_change = 0u64;
            let mut gaps = Vec::new();
            for w in r.windows(2) {
                if f(&w[1]) != f(&w[0]) {
                    gaps.push(w[1].seq - last_change);
                    last_change = w[1].seq;
                }
            }
            gaps.remove(0);
            gaps
        };
        for (name, gaps, period) in [
            ("temp_c", change_gaps(&|x| x.temp_c), TEMP_SAMPLE_S),
            (
                "humidity_pct",
                change_gaps(&|x| x.humidity_pct),
                HUMIDITY_SAMPLE_S,
            ),
        ] {
            let lo = (period * (1.0 - SAMPLE_JITTER)).floor() as u64;
            let hi = (period * (1.0 + SAMPLE_JITTER)).ceil() as u64 + 1;
            assert!(
                gaps.len() as f64 > 3_600.0 / hi as f64 - 2.0,
                "{name}: {gaps:?}"
            );
            assert!(
                gaps.iter().all(|g| (lo..=hi).contains(g)),
                "{name}: {gaps:?}"
            );
            assert!(
                gaps.iter().any(|&g| g != gaps[0]),
                "{name} has no jitter: {gaps:?}"
            );
        }
        assert!(r.windows(2).all(|w| w[0].wind_ms != w[1].wind_ms));
    }

    #[test]
    fn binary_payload_round_trips_at_its_resolution_and_is_compact() {
        for (i, r) in run(8, 1, 500).into_iter().enumerate() {
            let bin = r.to_binary();
            assert_eq!(bin.len(), 3 + "wt-0001".len() + BINARY_TAIL);
            assert!(bin.len() * 3 < r.to_json().len(), "binary form is compact");
            let back = Reading::decode_binary(&bin).expect("decodes");
            assert_eq!(
                (&back.device, back.boot, back.seq, back.ts),
                (&r.device, r.boot, r.seq, r.ts)
            );
            for (a, b, res) in [
                (back.wind_ms, r.wind_ms, 0.01),
                (back.wind_dir_deg, r.wind_dir_deg, 0.1),
                (back.rpm, r.rpm, 0.01),
                (back.power_kw, r.power_kw, 0.1),
                (back.temp_c, r.temp_c, 0.01),
                (back.humidity_pct, r.humidity_pct, 0.01),
                (back.vib_mm_s, r.vib_mm_s, 0.01),
            ] {
                assert!((a - b).abs() <= res / 2.0 + 1e-9, "reading {i}: {a} vs {b}");
            }
            let id = ReadingId::parse(&bin).expect("id of a binary payload");
            assert_eq!((id.seq, id.boot), (r.seq, r.boot));
            assert_eq!(parse_seq(&bin), Some(r.seq));
        }
    }

    #[test]
    fn binary_payload_pads_with_zeros_and_refuses_anything_else() {
        let r = run(8, 12, 3).pop().expect("three readings");
        let mut buf = Vec::new();
        r.encode(PayloadFormat::Binary, Some(100), &mut buf);
        assert_eq!(buf.len(), 100);
        assert_eq!(ReadingId::parse(&buf).map(|id| id.seq), Some(3));
        let exact = r.to_binary();
        // Every cut is refused, as is a wrong magic, version or a non-zero trailing byte.
        for cut in 0..exact.len() {
            assert!(
                Reading::decode_binary(&exact[..cut]).is_none(),
                "cut at {cut}"
            );
            assert!(parse_seq(&exact[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad = exact.clone();
        bad[1] = BINARY_VERSION + 1;
        assert!(ReadingId::parse(&bad).is_none());
        let mut bad = buf.clone();
        bad[99] = 1;
        assert!(ReadingId::parse(&bad).is_none());
        let mut bad = exact.clone();
        bad[2] = 0;
        assert!(ReadingId::parse(&bad).is_none());
        // JSON is still read as JSON.
        assert_eq!(ReadingId::parse(&r.to_json()).map(|id| id.seq), Some(3));
        assert_eq!("binary".parse(), Ok(PayloadFormat::Binary));
        assert!("xml".parse::<PayloadFormat>().is_err());
    }

    #[test]
    fn parse_seq_finds_the_counter() {
        assert_eq!(
            parse_seq(br#"{"device":"wt-0001","boot":1,"seq":123,"ts":5}"#),
            Some(123)
        );
        assert_eq!(parse_seq(br#"{"seq":}"#), None);
        assert_eq!(parse_seq(b"garbage"), None);
    }
}

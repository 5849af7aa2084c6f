//! Fault injection on demand: exactly the faults asked for, deterministic from the seed.
//!
//! A [`FaultPlan`] says which faults a device injects and how often (every rate defaults to
//! 0, so the default plan injects nothing). Before each reading a device calls
//! [`FaultPlan::decide`] with its own [`FaultRng`] (seeded from the fleet seed and the device
//! number), which returns the faults for that reading. The decision is pure: the same seed,
//! device and plan give the same faults, so a test can compute in advance exactly what a run
//! will inject ([`FaultPlan::expected`]) and check it against the run's [`FaultCounts`].
//!
//! Every rate is drawn for every reading, in a fixed order, whatever the other rates are:
//! raising one rate never changes when the other faults happen.
//!
//! # What each fault does
//! Garbage is sent *in addition to* the good reading, just before it, so the good readings
//! still carry the counters `1, 2, 3, …` (per boot) and a consumer can prove that every good
//! reading arrived and every garbage one was rejected:
//! - [`Fault::MalformedJson`]: a strict prefix of the reading's JSON (never valid JSON);
//! - [`Fault::Oversized`]: a JSON object of exactly [`FaultPlan::oversized_bytes`] bytes that
//!   is not a reading (no `seq`);
//! - [`Fault::Noise`] (serial): random bytes, then the delimiter — one rejected frame that
//!   never decodes as a reading;
//! - [`Fault::BadCrc`] (serial): the reading's frame with its CRC flipped (`cobs`); with
//!   `lines`, which has no CRC, the line with one byte replaced by 0xFF (not UTF-8, so not JSON);
//! - [`Fault::Truncated`] (serial): the reading's frame cut short, then the delimiter.
//!
//! Not garbage:
//! - [`Fault::Duplicate`]: the good reading is sent a second time, right after the first;
//! - [`Fault::Reboot`]: before this reading the device restarts: its counter restarts at 1
//!   under a new boot id (over MQTT it also drops its connection and connects again);
//! - [`Fault::Flap`] (MQTT): before this reading the device's connection drops without
//!   DISCONNECT; it reconnects with backoff and re-sends what was not acknowledged. Every
//!   N-th reading ([`FaultPlan::flap_every`], the whole fleet in step) or with a
//!   probability per reading ([`FaultPlan::flap_rate`], devices at random moments: a steady
//!   share of a fleet reconnecting each minute, as in a long soak);
//! - [`FaultPlan::clock_skew_ms`] is added to every reading's `ts`;
//! - [`FaultPlan::burst`] sends readings back-to-back instead of at the configured rate.
//!
//! Over MQTT the extra publishes (garbage and duplicates) go out at QoS 0, so the PUBACK
//! accounting of the good readings stays exact. Being QoS 0, an extra publish that a flap or a reboot catches
//! unsent is lost with the connection ([`FaultCounts`] counts what was handed to the
//! client).

mod frames;
#[cfg(test)]
mod tests;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Default size of an oversized payload: 1 MiB.
pub const DEFAULT_OVERSIZED_BYTES: usize = 1024 * 1024;

/// Which faults to inject, and how often. `Default` injects nothing.
///
/// It is also the command line's "Fault injection" flags, shared by `fleet`, `load` and
/// `serial`: the field docs are their help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
#[command(next_help_heading = "Fault injection")]
pub struct FaultPlan {
    /// Probability per reading of an extra, malformed JSON payload (a cut-off reading).
    #[arg(long = "malformed-rate", value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub malformed_json_rate: f64,
    /// Probability per reading of an extra payload of --oversized-bytes.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub oversized_rate: f64,
    /// Size of an oversized payload.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_OVERSIZED_BYTES)]
    pub oversized_bytes: usize,
    /// Probability per reading that it is sent twice.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub duplicate_rate: f64,
    /// Reboot every N readings: the counter restarts at 1 under boot id + 1, + 2, …; over
    /// MQTT the device first waits for its PUBACKs, then drops the connection and reconnects.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub reboot_every: Option<u64>,
    /// MQTT only: drop the connection (no DISCONNECT) before every N-th reading; the device
    /// reconnects with backoff and re-sends what was not acknowledged.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub flap_every: Option<u64>,
    /// MQTT only: probability per reading that the connection drops (no DISCONNECT) before
    /// it; e.g. at 5 readings/s, 1/6000 reconnects about 5 % of the devices each minute.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub flap_rate: f64,
    /// Add this many ms to every reading's timestamp (negative: the device clock is behind).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub clock_skew_ms: i64,
    /// Every EVERY readings, send COUNT readings back-to-back, ignoring the rate (the
    /// value is `(count, every)`).
    #[arg(long, value_name = "COUNT/EVERY", value_parser = parse_burst)]
    pub burst: Option<(u64, u64)>,
    /// Serial only: probability per reading of a frame of line noise.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub noise_rate: f64,
    /// Serial only: probability per reading of an extra copy of its frame with a bad CRC
    /// (lines: with a byte that is not UTF-8).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub bad_crc_rate: f64,
    /// Serial only: probability per reading of an extra copy of its frame cut short.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub truncated_rate: f64,
}

/// Why a [`FaultPlan`] cannot work (for a transport).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPlan {
    /// A rate that is not a probability.
    #[error("{name} {rate} is not between 0 and 1")]
    Rate {
        /// The field.
        name: &'static str,
        /// Its value.
        rate: f64,
    },
    /// A period (or burst size) of 0.
    #[error("{0} must be at least 1")]
    ZeroPeriod(&'static str),
    /// Oversized payloads too small to be told from a reading.
    #[error("oversized_bytes must be at least 32")]
    TinyOversized,
    /// Serial-only faults asked of an MQTT device.
    #[error("noise, bad CRC and truncated frames are serial faults")]
    SerialOnly,
    /// A flap asked of a serial device.
    #[error("flap_every and flap_rate are MQTT faults; a serial line has no connection")]
    MqttOnly,
}

/// A command-line value that is not what its flag takes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

impl BadValue {
    /// `why` the value is refused, as clap shows it.
    pub(crate) fn new(why: String) -> BadValue {
        BadValue(why)
    }
}

/// `--*-rate`: a probability.
fn parse_probability(s: &str) -> Result<f64, BadValue> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(BadValue::new(format!(
            "{s:?} is not a probability between 0 and 1"
        ))),
    }
}

/// `--burst COUNT/EVERY`.
fn parse_burst(s: &str) -> Result<(u64, u64), BadValue> {
    let bad = || BadValue::new(format!("{s:?} is not COUNT/EVERY, e.g. 10/100"));
    let (count, every) = s.split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let every: u64 = every.trim().parse().map_err(|_| bad())?;
    if count == 0 || every == 0 {
        return Err(bad());
    }
    Ok((count, every))
}

impl Default for FaultPlan {
    fn default() -> FaultPlan {
        FaultPlan {
            malformed_json_rate: 0.0,
            oversized_rate: 0.0,
            oversized_bytes: DEFAULT_OVERSIZED_BYTES,
            duplicate_rate: 0.0,
            reboot_every: None,
            flap_every: None,
            flap_rate: 0.0,
            clock_skew_ms: 0,
            burst: None,
            noise_rate: 0.0,
            bad_crc_rate: 0.0,
            truncated_rate: 0.0,
        }
    }
}

/// One fault injected with a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The device restarted before this reading.
    Reboot,
    /// The device's connection dropped before this reading (MQTT).
    Flap,
    /// A frame of line noise before the reading (serial).
    Noise,
    /// A malformed JSON payload before the reading.
    MalformedJson,
    /// An oversized payload before the reading.
    Oversized,
    /// A copy of the reading's frame with a bad CRC before it (serial).
    BadCrc,
    /// A copy of the reading's frame cut short before it (serial).
    Truncated,
    /// The reading is sent twice.
    Duplicate,
}

impl Fault {
    /// Every kind of fault.
    pub const ALL: [Fault; 8] = [
        Fault::Reboot,
        Fault::Flap,
        Fault::Noise,
        Fault::MalformedJson,
        Fault::Oversized,
        Fault::BadCrc,
        Fault::Truncated,
        Fault::Duplicate,
    ];

    /// Whether the fault is an extra payload or frame a consumer must reject.
    pub fn is_garbage(self) -> bool {
        !matches!(self, Fault::Reboot | Fault::Flap | Fault::Duplicate)
    }
}

/// Faults injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultCounts {
    /// Reboots.
    pub reboot: u64,
    /// Connections dropped on purpose (MQTT).
    pub flap: u64,
    /// Frames of line noise.
    pub noise: u64,
    /// Malformed JSON payloads.
    pub malformed_json: u64,
    /// Oversized payloads.
    pub oversized: u64,
    /// Frames with a bad CRC.
    pub bad_crc: u64,
    /// Truncated frames.
    pub truncated: u64,
    /// Readings sent twice.
    pub duplicate: u64,
}

impl FaultCounts {
    /// Counts one fault.
    pub fn add(&mut self, fault: Fault) {
        *self.slot(fault) += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &FaultCounts) {
        for fault in Fault::ALL {
            *self.slot(fault) += other.get(fault);
        }
    }

    /// The count of one kind of fault.
    pub fn get(&self, fault: Fault) -> u64 {
        let mut c = *self;
        *c.slot(fault)
    }

    /// Extra payloads or frames a consumer must reject (every fault but reboots, flaps and
    /// duplicates).
    pub fn garbage(&self) -> u64 {
        self.noise + self.malformed_json + self.oversized + self.bad_crc + self.truncated
    }

    /// Every fault.
    pub fn total(&self) -> u64 {
        self.garbage() + self.reboot + self.flap + self.duplicate
    }

    fn slot(&mut self, fault: Fault) -> &mut u64 {
        match fault {
            Fault::Reboot => &mut self.reboot,
            Fault::Flap => &mut self.flap,
            Fault::Noise => &mut self.noise,
            Fault::MalformedJson => &mut self.malformed_json,
            Fault::Oversized => &mut self.oversized,
            Fault::BadCrc => &mut self.bad_crc,
            Fault::Truncated => &mut self.truncated,
            Fault::Duplicate => &mut self.duplicate,
        }
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reboot {}  flap {}  noise {}  malformed_json {}  oversized {}  bad_crc {}  truncated {}  duplicate {}",
            self.reboot,
            self.flap,
            self.noise,
            self.malformed_json,
            self.oversized,
            self.bad_crc,
            self.truncated,
            self.duplicate
        )
    }
}

/// The random source of one device's fault decisions (and, separately, of the bytes of its
/// line noise and of its random flaps, so drawing either never shifts the decisions).
#[derive(Debug, Clone)]
pub struct FaultRng(StdRng, StdRng, StdRng);

impl FaultRng {
    /// The fault source of device number `n` of a fleet seeded with `seed` (independent of
    /// the turbine model's randomness).
    pub fn new(seed: u64, n: usize) -> FaultRng {
        // splitmix64 of the seed, the device and a constant of its own.
        let mut z = seed ^ 0xFA17_FA17_0000_0000 ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D1_049B_B133_11EB);
        let z = z ^ (z >> 31);
        FaultRng(
            StdRng::seed_from_u64(z),
            StdRng::seed_from_u64(z ^ 0x5EED_F017_5E00_0000),
            StdRng::seed_from_u64(z ^ 0xF1A9_F1A9_0000_0000),
        )
    }

    /// Random bytes (for line noise).
    fn bytes(&mut self, out: &mut Vec<u8>, len: usize) {
        out.extend((0..len).map(|_| self.1.random::<u8>()));
    }
}

impl FaultPlan {
    /// Whether the plan injects anything at all.
    pub fn is_empty(&self) -> bool {
        *self
            == FaultPlan {
                oversized_bytes: self.oversized_bytes,
                ..FaultPlan::default()
            }
    }

    /// Checks that every rate is a probability and the counts are sensible.
    pub fn validate(&self) -> Result<(), InvalidPlan> {
        for (name, rate) in self.rates() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(InvalidPlan::Rate { name, rate });
            }
        }
        if self.reboot_every == Some(0) {
            return Err(InvalidPlan::ZeroPeriod("reboot_every"));
        }
        if self.flap_every == Some(0) {
            return Err(InvalidPlan::ZeroPeriod("flap_every"));
        }
        if !(0.0..=1.0).contains(&self.flap_rate) {
            return Err(InvalidPlan::Rate {
                name: "flap_rate",
                rate: self.flap_rate,
            });
        }
        if let Some((count, every)) = self.burst {
            if count == 0 || every == 0 {
                return Err(InvalidPlan::ZeroPeriod("burst count and every"));
            }
        }
        if self.oversized_rate > 0.0 && self.oversized_bytes < 32 {
            return Err(InvalidPlan::TinyOversized);
        }
        Ok(())
    }

    /// Checks that the plan only asks for faults an MQTT device can inject (no serial-only
    /// faults).
    pub fn validate_for_mqtt(&self) -> Result<(), InvalidPlan> {
        self.validate()?;
        if self.noise_rate > 0.0 || self.bad_crc_rate > 0.0 || self.truncated_rate > 0.0 {
            return Err(InvalidPlan::SerialOnly);
        }
        Ok(())
    }

    /// Checks that the plan only asks for faults a serial device can inject (a serial line
    /// has no connection to flap).
    pub fn validate_for_serial(&self) -> Result<(), InvalidPlan> {
        self.validate()?;
        if self.flap_every.is_some() || self.flap_rate > 0.0 {
            return Err(InvalidPlan::MqttOnly);
        }
        Ok(())
    }

    fn rates(&self) -> [(&'static str, f64); 6] {
        [
            ("noise_rate", self.noise_rate),
            ("malformed_json_rate", self.malformed_json_rate),
            ("oversized_rate", self.oversized_rate),
            ("bad_crc_rate", self.bad_crc_rate),
            ("truncated_rate", self.truncated_rate),
            ("duplicate_rate", self.duplicate_rate),
        ]
    }

    /// The faults of a device's `reading`-th reading (1-based, counted over the whole run,
    /// reboots included), in the order they happen: a reboot first, then the garbage sent
    /// before the reading, then a duplicate. Draws exactly six numbers from `rng` per call
    /// for the rates, and one more from a stream of its own with a [`FaultPlan::flap_rate`].
    pub fn decide(&self, reading: u64, rng: &mut FaultRng) -> Vec<Fault> {
        let mut faults = Vec::new();
        if self.reboot_due(reading) {
            faults.push(Fault::Reboot);
        }
        if let Some(every) = self.flap_every.filter(|&e| e > 0) {
            if reading > 1 && (reading - 1) % every == 0 {
                faults.push(Fault::Flap);
            }
        }
        if self.flap_rate > 0.0 {
            let draw: f64 = rng.2.random();
            if draw < self.flap_rate && !faults.contains(&Fault::Flap) {
                faults.push(Fault::Flap);
            }
        }
        // The kinds drawn for, in the order of `rates`: every one after reboots and flaps.
        let drawn = &Fault::ALL[2..];
        for (&kind, (_, rate)) in drawn.iter().zip(self.rates()) {
            let draw: f64 = rng.0.random();
            if draw < rate {
                faults.push(kind);
            }
        }
        faults
    }

    /// Whether the device reboots before its `reading`-th reading (1-based, counted over
    /// every boot): after every `reboot_every` readings.
    pub fn reboot_due(&self, reading: u64) -> bool {
        match self.reboot_every {
            Some(every) if every > 0 && reading > 1 => (reading - 1) % every == 0,
            _ => false,
        }
    }

    /// Whether the `reading`-th reading (1-based) is sent without waiting for the rate: it
    /// is one of the `count` readings of a burst that starts every `every` readings.
    pub fn in_burst(&self, reading: u64) -> bool {
        match self.burst {
            Some((count, every)) if every > 0 && reading > 0 => (reading - 1) % every < count,
            _ => false,
        }
    }

    /// The faults device number `n` of a fleet seeded with `seed` injects over its first
    /// `readings` readings.
    pub fn expected(&self, seed: u64, n: usize, readings: u64) -> FaultCounts {
        let mut rng = FaultRng::new(seed, n);
        let mut counts = FaultCounts::default();
        for i in 1..=readings {
            for f in self.decide(i, &mut rng) {
                counts.add(f);
            }
        }
        counts
    }

    /// `ts` with the clock skew applied.
    pub fn skew(&self, ts: u64) -> u64 {
        ts.saturating_add_signed(self.clock_skew_ms)
    }
}

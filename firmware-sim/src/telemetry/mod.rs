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
//! [`ReadingId::parse`] reads both, told apart by the first byte. The `payload` module
//! holds both encodings; this one the model.

mod payload;
#[cfg(test)]
mod tests;

pub use payload::{
    parse_seq, PayloadFormat, Reading, ReadingId, UnknownPayloadFormat, BINARY_MAGIC,
    BINARY_VERSION, MAX_BINARY_DEVICE_LEN,
};

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

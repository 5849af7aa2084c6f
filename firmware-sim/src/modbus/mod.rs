//! Wind turbines as Modbus RTU slaves on a pseudo-terminal, for tidegate's Modbus polling.
//!
//! [`ModbusBus::start`] creates a pty pair whose follower (`/dev/pts/N`, [`ModbusBus::path`])
//! the gateway opens as its RS-485 port, and answers there for every slave id in
//! [`ModbusOptions::slaves`] with the registers of one [`Turbine`] each (device number =
//! slave id). The protocol is tokio-modbus's RTU server; requests for other ids get no
//! answer at all, as on a real multi-drop bus, which is how a test makes a slave time out.
//!
//! tokio-modbus's server only runs on a `SerialStream` and always sends good frames, so it
//! serves an inner pty pair and a relay copies bytes between that and the pty the gateway
//! sees. The relay is where [`ModbusOptions::corrupt_every`] flips a byte of every Nth
//! answer, so the gateway sees a CRC error.
//!
//! The turbines step once per [`ModbusOptions::step`] of wall-clock time (not per request),
//! so every register of one answer comes from the same model step.
//!
//! # Register map (per slave)
//!
//! Input registers (function 4), the live model:
//!
//! | address | value | type, byte order |
//! |---|---|---|
//! | 0 | wind speed, m/s × 100 | u16, big |
//! | 1 | rotor speed, rpm × 100 | u16, big |
//! | 2 | nacelle temperature, °C × 100 | i16, big |
//! | 3 | vibration, mm/s × 100 | u16, big |
//! | 4–5 | power, kW | f32, big |
//! | 6–7 | energy since start, Wh | u32, big-swap |
//! | 8–9 | model step (the turbine's reading counter) | u32, big |
//! | 10 | state: 0 idle, 1 running, 2 storm | u16, big |
//!
//! Holding registers (function 3), constants for checking the byte orders: 100 = rated
//! power 2000 (u16); 101 = −200 (i16 big), 102 = −200 (i16 little); then for each order k
//! of `big, little, big-swap, little-swap` (k = 0..4): 110 + 2k = [`PATTERN_U32`] (u32),
//! 120 + 2k = [`PATTERN_I32`] (i32), 130 + 2k = [`PATTERN_F32`] (f32).
//!
//! Coils (function 1): 0 = enabled (always on). Discrete inputs (function 2): 0 = running,
//! 1 = stopped for a storm.
//!
//! Any other address, or a range that reaches one, is answered with exception 0x02
//! (illegal data address); writes with 0x01 (illegal function): the turbines are read-only.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::{ready, Ready};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::telemetry::{now_ms, Turbine, TurbineState};

/// The u32 test pattern of the holding registers.
pub const PATTERN_U32: u32 = 3_000_000_000;
/// The i32 test pattern of the holding registers.
pub const PATTERN_I32: i32 = -123_456;
/// The f32 test pattern of the holding registers (exact in binary).
pub const PATTERN_F32: f32 = 1234.5;
/// Rated power in holding register 100.
pub const RATED_POWER_KW: u16 = 2000;

/// The four byte orders, in the order of the holding-register pattern blocks.
const ORDERS: [Order; 4] = [Order::Big, Order::Little, Order::BigSwap, Order::LittleSwap];

/// Byte order of a 32-bit value over two registers (see tidegate's `byte_order`).
#[derive(Debug, Clone, Copy)]
enum Order {
    Big,
    Little,
    BigSwap,
    LittleSwap,
}

/// The two registers holding `v` (bytes A..D, A most significant) in `order`.
fn regs32(v: [u8; 4], order: Order) -> [u16; 2] {
    let [a, b, c, d] = v;
    let r = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
    match order {
        Order::Big => [r(a, b), r(c, d)],
        Order::Little => [r(d, c), r(b, a)],
        Order::BigSwap => [r(c, d), r(a, b)],
        Order::LittleSwap => [r(b, a), r(d, c)],
    }
}

/// What a Modbus bus of turbines does.
#[derive(Debug, Clone)]
pub struct ModbusOptions {
    /// Slave ids that answer (1 ..= 247); each is turbine number `id` of the fleet.
    pub slaves: Vec<u8>,
    /// Flip a byte of every Nth answer on the bus (counting all slaves' answers), so the
    /// gateway sees a CRC error. `None`: every answer is good.
    pub corrupt_every: Option<u64>,
    /// Seed of the turbine model.
    pub seed: u64,
    /// Boot id of the turbines.
    pub boot: u64,
    /// Wall-clock time between model steps.
    pub step: Duration,
    /// Simulated time per model step.
    pub sim_step: Duration,
}

impl Default for ModbusOptions {
    fn default() -> Self {
        Self {
            slaves: vec![1],
            corrupt_every: None,
            seed: 1,
            boot: 1,
            step: Duration::from_secs(1),
            sim_step: Duration::from_secs(1),
        }
    }
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModbusSimError {
    /// A pseudo-terminal pair could not be created.
    #[error("cannot create a pseudo-terminal")]
    Pty(#[source] tokio_serial::Error),
    /// The pty has no path (cannot happen on Linux).
    #[error("the pseudo-terminal has no path")]
    NoPath,
    /// The options cannot work.
    #[error("invalid options: {0}")]
    Options(String),
    /// The `--link` could not be made.
    #[error("cannot link {path} to the pty", path = path.display())]
    Link {
        /// The link path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// What the bus has done so far.
#[derive(Debug, Default)]
pub struct ModbusStats {
    /// Requests answered with data.
    pub answered: AtomicU64,
    /// Requests answered with an exception.
    pub exceptions: AtomicU64,
    /// Requests for ids that do not answer.
    pub ignored: AtomicU64,
    /// Answers whose bytes were corrupted on the way.
    pub corrupted: AtomicU64,
}

/// Register images of one turbine, rebuilt at every model step.
#[derive(Debug, Clone, Default)]
struct Image {
    input: BTreeMap<u16, u16>,
    holding: BTreeMap<u16, u16>,
    coils: BTreeMap<u16, bool>,
    discrete: BTreeMap<u16, bool>,
}

/// A turbine and what it has produced.
struct Unit {
    turbine: Turbine,
    energy_wh: f64,
    image: Image,
}

impl Unit {
    fn new(opts: &ModbusOptions, id: u8) -> Unit {
        let mut u = Unit {
            turbine: Turbine::new(opts.seed, id.into(), opts.boot, opts.sim_step.as_secs_f64()),
            energy_wh: 0.0,
            image: Image::default(),
        };
        u.step(opts.sim_step);
        u
    }

    /// Advances the model one step and rebuilds the registers.
    fn step(&mut self, sim_step: Duration) {
        let r = self.turbine.step(now_ms());
        self.energy_wh += r.power_kw * 1000.0 * sim_step.as_secs_f64() / 3600.0;
        // Sensor values are clamped into their register range: a u16 of m/s × 100 holds
        // up to 655 m/s, far above the model's 40.
        let u16_of = |v: f64| (v * 100.0).round().clamp(0.0, 65_535.0) as u16;
        let i16_of = |v: f64| (v * 100.0).round().clamp(-32_768.0, 32_767.0) as i16;
        let mut input = BTreeMap::new();
        input.insert(0, u16_of(r.wind_ms));
        input.insert(1, u16_of(r.rpm));
        input.insert(2, i16_of(r.temp_c) as u16);
        input.insert(3, u16_of(r.vib_mm_s));
        let [p0, p1] = regs32((r.power_kw as f32).to_be_bytes(), Order::Big);
        input.extend([(4, p0), (5, p1)]);
        let energy = self.energy_wh.round().clamp(0.0, f64::from(u32::MAX)) as u32;
        let [e0, e1] = regs32(energy.to_be_bytes(), Order::BigSwap);
        input.extend([(6, e0), (7, e1)]);
        let seq = u32::try_from(r.seq).unwrap_or(u32::MAX);
        let [s0, s1] = regs32(seq.to_be_bytes(), Order::Big);
        input.extend([(8, s0), (9, s1)]);
        let state = self.turbine.state();
        input.insert(
            10,
            match state {
                TurbineState::Idle => 0,
                TurbineState::Running => 1,
                TurbineState::Storm => 2,
            },
        );
        self.image.input = input;
        self.image.holding = pattern_registers();
        self.image.coils = BTreeMap::from([(0, true)]);
        self.image.discrete = BTreeMap::from([
            (0, state == TurbineState::Running),
            (1, state == TurbineState::Storm),
        ]);
    }
}

/// The constant holding registers (see the module doc).
fn pattern_registers() -> BTreeMap<u16, u16> {
    let mut h = BTreeMap::from([
        (100, RATED_POWER_KW),
        (101, u16::from_be_bytes((-200i16).to_be_bytes())),
        (102, u16::from_le_bytes((-200i16).to_be_bytes())),
    ]);
    for (k, order) in (0u16..).zip(ORDERS) {
        let put = |h: &mut BTreeMap<u16, u16>, at: u16, regs: [u16; 2]| {
            h.insert(at, regs[0]);
            h.insert(at + 1, regs[1]);
        };
        put(
            &mut h,
            110 + 2 * k,
            regs32(PATTERN_U32.to_be_bytes(), order),
        );
        put(
            &mut h,
            120 + 2 * k,
            regs32(PATTERN_I32.to_be_bytes(), order),
        );
        put(
            &mut h,
            130 + 2 * k,
            regs32(PATTERN_F32.to_be_bytes(), order),
        );
    }
    h
}

/// `n` registers (or coils, or inputs) of `map` from address `at`; an address the map does
/// not hold is an illegal data address, as a real slave answers.
fn registers<T: Copy>(map: &BTreeMap<u16, T>, at: u16, n: u16) -> Result<Vec<T>, ExceptionCode> {
    (0..n)
        .map(|i| {
            at.checked_add(i)
                .and_then(|a| map.get(&a).copied())
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

/// State shared by the service, the stepping task and the relay.
struct Shared {
    units: Mutex<BTreeMap<u8, Unit>>,
    stats: ModbusStats,
    corrupt_every: Option<u64>,
    /// Set by the service when the answer it returns is to be corrupted by the relay.
    corrupt_next: AtomicBool,
}

/// The tokio-modbus service: answers from the register images.
struct TurbineService(Arc<Shared>);

impl Service for TurbineService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        ready(self.answer(req))
    }
}

impl TurbineService {
    fn answer(&self, req: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let shared = &self.0;
        let units = shared.units.lock().unwrap_or_else(|p| p.into_inner());
        let Some(unit) = units.get(&req.slave) else {
            shared.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let image = &unit.image;
        let result = match req.request {
            Request::ReadInputRegisters(at, n) => {
                registers(&image.input, at, n).map(Response::ReadInputRegisters)
            }
            Request::ReadHoldingRegisters(at, n) => {
                registers(&image.holding, at, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadCoils(at, n) => registers(&image.coils, at, n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(at, n) => {
                registers(&image.discrete, at, n).map(Response::ReadDiscreteInputs)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        let counter = if result.is_ok() {
            &shared.stats.answered
        } else {
            &shared.stats.exceptions
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let answers = shared.stats.answered.load(Ordering::Relaxed)
            + shared.stats.exceptions.load(Ordering::Relaxed);
        if shared.corrupt_every.is_some_and(|n| answers % n == 0) {
            shared.corrupt_next.store(true, Ordering::Relaxed);
        }
        result.map(Some)
    }
}

/// A running bus of turbine slaves; stopped (and its pty closed) on [`ModbusBus::stop`] or
/// drop.
#[derive(Debug)]
pub struct ModbusBus {
    path: PathBuf,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The follower side the gateway opens, held so that the line is not hung up while
    /// the gateway closes and reopens it.
    _follower: SerialStream,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The turbines' models are long and say nothing about the bus.
        f.debug_struct("Shared")
            .field("stats", &self.stats)
            .finish()
    }
}

impl ModbusBus {
    /// Creates the pty and starts answering. Must be called inside a Tokio runtime.
    pub fn start(opts: ModbusOptions) -> Result<ModbusBus, ModbusSimError> {
        if opts.slaves.is_empty() || opts.slaves.iter().any(|&id| !(1..=247).contains(&id)) {
            return Err(ModbusSimError::Options(format!(
                "slave ids must be 1 ..= 247 and at least one: {:?}",
                opts.slaves
            )));
        }
        if opts.corrupt_every == Some(0) || opts.step.is_zero() {
            return Err(ModbusSimError::Options(
                "corrupt_every and step must be above 0".into(),
            ));
        }
        let (outer, follower) = SerialStream::pair().map_err(ModbusSimError::Pty)?;
        let path = follower
            .name()
            .map(PathBuf::from)
            .ok_or(ModbusSimError::NoPath)?;
        let (inner, server_side) = SerialStream::pair().map_err(ModbusSimError::Pty)?;
        let shared = Arc::new(Shared {
            units: Mutex::new(
                opts.slaves
                    .iter()
                    .map(|&id| (id, Unit::new(&opts, id)))
                    .collect(),
            ),
            stats: ModbusStats::default(),
            corrupt_every: opts.corrupt_every,
            corrupt_next: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        let server = Server::new(server_side);
        let service = TurbineService(shared.clone());
        tasks.push(tokio::spawn(until(stop.clone(), async move {
            if let Err(e) = server.serve_forever(service).await {
                tracing::debug!(error = %e, "Modbus slave server stopped.");
            }
        })));

        let stepping = shared.clone();
        let (step, sim_step) = (opts.step, opts.sim_step);
        tasks.push(tokio::spawn(until(stop.clone(), async move {
            let mut ticks = tokio::time::interval(step);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let mut units = stepping.units.lock().unwrap_or_else(|p| p.into_inner());
                for u in units.values_mut() {
                    u.step(sim_step);
                }
            }
        })));

        tasks.push(tokio::spawn(until(
            stop.clone(),
            relay(outer, inner, shared.clone()),
        )));
        Ok(ModbusBus {
            path,
            shared,
            stop,
            tasks,
            _follower: follower,
        })
    }

    /// The path the gateway opens (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the bus has done so far.
    pub fn stats(&self) -> &ModbusStats {
        &self.shared.stats
    }

    /// Stops answering and closes the pty: the gateway's port fails.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for ModbusBus {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs `f` until `stop`.
async fn until(stop: CancellationToken, f: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = f => {}
    }
}

/// Copies `from` to `to` chunk by chunk until end of file, letting `touch` change each chunk
/// before it is written.
async fn copy(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut touch: impl FnMut(&mut [u8]),
) -> io::Result<()> {
    let mut buf = [0u8; 512];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        touch(&mut buf[..n]);
        to.write_all(&buf[..n]).await?;
    }
}

/// Copies requests from the gateway's pty to the server's and answers back, corrupting
/// the answers the service marked.
async fn relay(outer: SerialStream, inner: SerialStream, shared: Arc<Shared>) {
    let (mut outer_rd, mut outer_wr) = tokio::io::split(outer);
    let (mut inner_rd, mut inner_wr) = tokio::io::split(inner);
    let requests = copy(&mut outer_rd, &mut inner_wr, |_| {});
    let answers = copy(&mut inner_rd, &mut outer_wr, |chunk| {
        if shared.corrupt_next.swap(false, Ordering::Relaxed) {
            // The last byte of the chunk: the CRC when the answer came in one piece, a data
            // byte otherwise — the CRC no longer matches either way.
            if let Some(last) = chunk.last_mut() {
                *last ^= 0xA5;
            }
            shared.stats.corrupted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let r = tokio::select! {
        r = requests => r,
        r = answers => r,
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "Modbus relay stopped.");
    }
}

/// Settings of `firmware-sim modbus-slave`.
#[derive(Debug, clap::Args)]
pub struct ModbusSlaveArgs {
    /// Slave ids that answer, comma-separated (turbine number = id).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub slaves: Vec<u8>,
    /// Flip a byte of every Nth answer, so the gateway sees CRC errors.
    #[arg(long, value_name = "N")]
    pub corrupt_every: Option<u64>,
    /// Wall-clock time between model steps.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Seed of the turbine model.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also make PATH a symbolic link to the pty (replacing a link already there), for a
    /// gateway config with a stable port path.
    #[arg(long, value_name = "PATH")]
    pub link: Option<PathBuf>,
}

/// Runs `modbus-slave` until `stop`: prints the pty path, then serves.
pub async fn run_cli(args: ModbusSlaveArgs, stop: CancellationToken) -> Result<(), ModbusSimError> {
    use std::io::Write as _;
    let bus = ModbusBus::start(ModbusOptions {
        slaves: args.slaves,
        corrupt_every: args.corrupt_every,
        seed: args.seed,
        boot: now_ms(),
        step: args.step,
        sim_step: args.step,
    })?;
    if let Some(link) = &args.link {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(bus.path(), link).map_err(|source| ModbusSimError::Link {
            path: link.clone(),
            source,
        })?;
    }
    println!("modbus: {}", bus.path().display());
    let _ = std::io::stdout().flush();
    stop.cancelled().await;
    let s = bus.stats();
    println!(
        "answered {}  exceptions {}  ignored {}  corrupted {}",
        s.answered.load(Ordering::Relaxed),
        s.exceptions.load(Ordering::Relaxed),
        s.ignored.load(Ordering::Relaxed),
        s.corrupted.load(Ordering::Relaxed)
    );
    bus.stop().await;
    if let Some(link) = &args.link {
        let _ = std::fs::remove_file(link);
    }
    Ok(())
}

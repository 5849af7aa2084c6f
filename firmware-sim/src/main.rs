//! `firmware-sim`: run a turbine fleet, benchmark a gateway, verify a Kafka topic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use firmware_sim::faults::{FaultPlan, DEFAULT_OVERSIZED_BYTES};
use firmware_sim::fleet::{FleetOptions, Protocol, Qos, TlsFiles, TlsOptions};
use firmware_sim::framing::Framing;
use firmware_sim::load::{KafkaTarget, LoadOptions};
use firmware_sim::serial::{SerialLine, SerialOptions, SerialTarget};
use firmware_sim::telemetry::PayloadFormat;
use firmware_sim::verify::{self, check_stream};
use firmware_sim::{CancellationToken, FleetReport};

/// Simulated wind-turbine fleets for tidegate: MQTT publishers, load generator, Kafka verifier.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a fleet of turbines, one MQTT connection each, and report which readings were
    /// acknowledged. Exits 1 if a QoS 1 reading was left unacknowledged.
    Fleet {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Write the fleet report (JSON, including every acknowledged counter) to this file;
        /// `verify --report` checks a topic against it.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Benchmark: drive a fleet as fast as possible, print a progress line per second and
    /// the acknowledged rate and publish→PUBACK latency; with --kafka, also forwarding
    /// completeness and publish→readable-in-Kafka latency. Exits 1 if readings were left
    /// unacknowledged or, with --kafka, acknowledged readings never arrived.
    Load {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Kafka bootstrap brokers (comma-separated host:port) to check forwarding against.
        #[arg(
            long,
            value_name = "BROKERS",
            value_delimiter = ',',
            requires = "topic"
        )]
        kafka: Vec<String>,
        /// Kafka topic the gateway forwards to (with --kafka).
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// After publishing stops, how long to wait for every acknowledged reading to be
        /// readable in Kafka.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        kafka_timeout: Duration,
        /// Write the fleet report (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Read a Kafka topic (all partitions, earliest to high watermark) and report, per
    /// device, missing, duplicated and out-of-order readings and header/key problems. Exits
    /// 1 if any rule is broken (duplicates alone are allowed).
    Verify {
        /// Kafka bootstrap brokers, comma-separated host:port.
        #[arg(
            long,
            value_name = "BROKERS",
            value_delimiter = ',',
            default_value = "127.0.0.1:9092"
        )]
        brokers: Vec<String>,
        /// Topic to read.
        #[arg(long)]
        topic: String,
        /// A report written by `fleet --report`: check that every acknowledged reading is
        /// there. Without it, every hole below a device's highest counter is a gap.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// With --report: keep reading until every acknowledged reading is there, up to this
        /// long.
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Write turbine readings to a serial line, as UART / RS-485 sensors do. Without --port,
    /// create a pseudo-terminal pair and print `serial: /dev/pts/N` (the path the gateway
    /// should open) on stdout first. Runs until --count, --duration or Ctrl-C, then prints
    /// the frames written per device.
    Serial(SerialArgs),
    /// Serve turbines as Modbus RTU slaves on a new pseudo-terminal: prints
    /// `modbus: /dev/pts/N` (the port the gateway polls) on stdout, then answers until
    /// Ctrl-C. See firmware_sim::modbus for the register map.
    ModbusSlave(firmware_sim::modbus::ModbusSlaveArgs),
}

/// Settings of `serial`.
#[derive(Args, Debug)]
struct SerialArgs {
    /// How readings are framed: `lines` (one JSON reading per line, LF) or `cobs` (COBS
    /// frames of JSON + CRC-16/CCITT-FALSE, 0x00-delimited).
    #[arg(long, value_enum, default_value_t = FramingArg::Lines)]
    framing: FramingArg,
    /// Number of turbines sharing the line; each writes one reading per tick.
    #[arg(long, short = 'n', default_value_t = 1)]
    devices: usize,
    /// Number of the first turbine (1 → wt-0001).
    #[arg(long, default_value_t = 1)]
    first_device: usize,
    /// Readings per second per device, or "max" for as fast as the line takes them.
    #[arg(long, value_name = "RATE|max", default_value = "1", value_parser = parse_rate)]
    rate: Rate,
    /// Readings per device; the run ends when all are written [default: until Ctrl-C].
    #[arg(long)]
    count: Option<u64>,
    /// How long to write, e.g. 30s, 5m [default: until --count or Ctrl-C].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Write to this existing device or file (e.g. /dev/ttyUSB0) instead of a new
    /// pseudo-terminal; a tty is put in raw mode at --baud.
    #[arg(long, value_name = "PATH")]
    port: Option<PathBuf>,
    /// Baud rate set on a --port that is a tty (a pseudo-terminal ignores it).
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Pad each JSON payload to exactly this many bytes (see `fleet --payload-size`).
    #[arg(long, value_name = "BYTES")]
    payload_size: Option<usize>,
    /// Payload encoding: `json`, or `binary` (needs --framing cobs).
    #[arg(long, value_name = "FORMAT", default_value = "json")]
    payload_format: PayloadFormat,
    /// Seed of the turbine model: the same seed gives the same readings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Boot id stamped on every reading (default: the current time in ms).
    #[arg(long)]
    boot: Option<u64>,
    /// With a pseudo-terminal: after writing stops, wait this long at most for the gateway
    /// to read what is still buffered before closing it (closing discards it).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    linger: Duration,
    #[command(flatten)]
    faults: FaultArgs,
}

/// Fault injection, shared by `fleet`, `load` and `serial`. Every fault is decided per reading
/// from --seed, so the same command injects the same faults. Garbage goes out in addition to
/// the good readings (over MQTT as extra QoS 0 publishes), which keep their counters.
#[derive(Args, Debug)]
#[command(next_help_heading = "Fault injection")]
struct FaultArgs {
    /// Probability per reading of an extra, malformed JSON payload (a cut-off reading).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    malformed_rate: f64,
    /// Probability per reading of an extra payload of --oversized-bytes.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    oversized_rate: f64,
    /// Size of an oversized payload.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_OVERSIZED_BYTES)]
    oversized_bytes: usize,
    /// Probability per reading that it is sent twice.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    duplicate_rate: f64,
    /// Reboot every N readings: the counter restarts at 1 under boot id + 1, + 2, …; over
    /// MQTT the device first waits for its PUBACKs, then drops the connection and reconnects.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    reboot_every: Option<u64>,
    /// MQTT only: drop the connection (no DISCONNECT) before every N-th reading; the device
    /// reconnects with backoff and re-sends what was not acknowledged.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    flap_every: Option<u64>,
    /// Add this many ms to every reading's timestamp (negative: the device clock is behind).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    clock_skew_ms: i64,
    /// Every EVERY readings, send COUNT readings back-to-back, ignoring --rate.
    #[arg(long, value_name = "COUNT/EVERY", value_parser = parse_burst)]
    burst: Option<(u64, u64)>,
    /// Serial only: probability per reading of a frame of line noise.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    noise_rate: f64,
    /// Serial only: probability per reading of an extra copy of its frame with a bad CRC
    /// (lines: with a byte that is not UTF-8).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    bad_crc_rate: f64,
    /// Serial only: probability per reading of an extra copy of its frame cut short.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    truncated_rate: f64,
}

impl FaultArgs {
    fn plan(&self) -> FaultPlan {
        FaultPlan {
            malformed_json_rate: self.malformed_rate,
            oversized_rate: self.oversized_rate,
            oversized_bytes: self.oversized_bytes,
            duplicate_rate: self.duplicate_rate,
            reboot_every: self.reboot_every,
            flap_every: self.flap_every,
            clock_skew_ms: self.clock_skew_ms,
            burst: self.burst,
            noise_rate: self.noise_rate,
            bad_crc_rate: self.bad_crc_rate,
            truncated_rate: self.truncated_rate,
        }
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

fn parse_burst(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not COUNT/EVERY, e.g. 10/100");
    let (count, every) = s.split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let every: u64 = every.trim().parse().map_err(|_| bad())?;
    if count == 0 || every == 0 {
        return Err(bad());
    }
    Ok((count, every))
}

/// `--framing` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FramingArg {
    /// One reading per line, LF-terminated.
    Lines,
    /// COBS-encoded reading + big-endian CRC-16/CCITT-FALSE, then 0x00.
    Cobs,
}

impl From<FramingArg> for Framing {
    fn from(f: FramingArg) -> Framing {
        match f {
            FramingArg::Lines => Framing::Lines,
            FramingArg::Cobs => Framing::Cobs,
        }
    }
}

async fn run_serial(args: SerialArgs) -> Result<ExitCode> {
    use std::io::Write as _;
    let target = match &args.port {
        Some(p) => SerialTarget::Path(p.clone()),
        None => SerialTarget::Pty,
    };
    let mut line = SerialLine::open(&target, args.baud)?;
    println!("serial: {}", line.path().display());
    std::io::stdout().flush().context("writing to stdout")?;
    let opts = SerialOptions {
        framing: args.framing.into(),
        devices: args.devices,
        first_device: args.first_device,
        rate: match args.rate {
            Rate::PerSecond(r) => Some(r),
            Rate::Max => None,
        },
        count: args.count,
        duration: args.duration,
        payload_size: args.payload_size,
        payload_format: args.payload_format,
        seed: args.seed,
        boot: args.boot,
        faults: args.faults.plan(),
        ..SerialOptions::default()
    };
    let stop = stop_on_ctrl_c();
    let report = firmware_sim::serial::run_serial(&mut line, opts, stop.clone()).await?;
    if !stop.is_cancelled() && !line.drain(args.linger).await {
        eprintln!(
            "warning: {} still held unread data after {}; it is lost when the pty closes",
            line.path().display(),
            humantime::format_duration(args.linger)
        );
    }
    println!(
        "frames {}  bytes {}  framing {}  boot {}  in {:.2} s",
        report.total_frames(),
        report.bytes,
        report.framing,
        report.boot,
        report.elapsed.as_secs_f64()
    );
    let injected = report.total_faults();
    if injected.total() > 0 {
        println!("injected faults: {injected}");
    }
    for (device, n) in &report.frames {
        println!("{device}: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Fleet settings shared by `fleet` and `load` (defaults differ where noted).
#[derive(Args, Debug)]
struct FleetArgs {
    /// MQTT broker (the gateway), host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Number of turbines [fleet: 10, load: 100].
    #[arg(long, short = 'n')]
    devices: Option<usize>,
    /// Number of the first turbine (1 → wt-0001); lets several simulators share a broker.
    #[arg(long, default_value_t = 1)]
    first_device: usize,
    /// MQTT QoS of every reading: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    mqtt_version: u8,
    /// Start every connection with a clean session (default: persistent sessions).
    #[arg(long)]
    clean_session: bool,
    /// QoS 1 readings a device may have unacknowledged at once [fleet: 10, load: 100].
    #[arg(long)]
    window: Option<u16>,
    /// Readings per second per device, or "max" for as fast as the window allows
    /// [fleet: 1, load: max].
    #[arg(long, value_name = "RATE|max", value_parser = parse_rate)]
    rate: Option<Rate>,
    /// Readings per device; the run ends when all are published.
    #[arg(long)]
    count: Option<u64>,
    /// How long to publish, e.g. 30s, 5m [fleet: until --count or Ctrl-C, load: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Pad each payload to exactly this many bytes (JSON below ~190 bytes drops the sensor
    /// values and keeps the identity fields; binary pads with zeros) [fleet: unpadded,
    /// load: 100].
    #[arg(long, value_name = "BYTES")]
    payload_size: Option<usize>,
    /// Payload encoding: `json`, or `binary` (the compact form of constrained firmware,
    /// 48 bytes for wt-0001; see firmware_sim::telemetry).
    #[arg(long, value_name = "FORMAT", default_value = "json")]
    payload_format: PayloadFormat,
    /// Seed of the turbine model: the same seed gives the same readings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Boot id stamped on every reading (default: the current time in ms).
    #[arg(long)]
    boot: Option<u64>,
    /// After publishing stops, how long to wait for outstanding PUBACKs.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Spread the first connections over this long [fleet: 0s, load: 500ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ramp_up: Option<Duration>,
    /// MQTT keep-alive (at least 5s for MQTT 5).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    keep_alive: Duration,
    /// Longest delay between reconnect attempts (it starts at 50ms and doubles).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    reconnect_max: Duration,
    /// MQTT username.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// MQTT password.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// Connect over TLS, trusting only the CA certificate(s) in this PEM file. --broker
    /// then names the broker's TLS port (usually 8883).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate every device presents, for brokers that require one (with
    /// --client-key).
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["ca_file", "client_key"],
        help_heading = "TLS"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["ca_file", "client_cert"],
        help_heading = "TLS"
    )]
    client_key: Option<PathBuf>,
    /// Check the broker's certificate against this name instead of the --broker host (for
    /// a broker reached by IP whose certificate names its host name).
    #[arg(long, value_name = "NAME", requires = "ca_file", help_heading = "TLS")]
    tls_server_name: Option<String>,
    #[command(flatten)]
    faults: FaultArgs,
}

#[derive(Debug, Clone, Copy)]
enum Rate {
    PerSecond(f64),
    Max,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
        _ => Err(format!("{s:?} is neither a positive number nor \"max\"")),
    }
}

impl FleetArgs {
    /// Sets `o` from the flags; fails if the TLS files cannot be loaded.
    fn apply(&self, o: &mut FleetOptions) -> Result<()> {
        o.broker = self.broker.clone();
        if let Some(n) = self.devices {
            o.devices = n;
        }
        o.first_device = self.first_device;
        o.qos = Qos::from_level(self.qos).unwrap_or(Qos::AtLeastOnce);
        o.protocol = if self.mqtt_version == 5 {
            Protocol::V5
        } else {
            Protocol::V4
        };
        o.clean_session = self.clean_session;
        if let Some(w) = self.window {
            o.window = w;
        }
        match self.rate {
            Some(Rate::Max) => o.rate = None,
            Some(Rate::PerSecond(r)) => o.rate = Some(r),
            None => {}
        }
        if self.count.is_some() {
            o.count = self.count;
        }
        if self.duration.is_some() {
            o.duration = self.duration;
        }
        if self.payload_size.is_some() {
            o.payload_size = self.payload_size;
        }
        o.payload_format = self.payload_format;
        o.seed = self.seed;
        o.boot = self.boot;
        o.drain_timeout = self.drain_timeout;
        if let Some(r) = self.ramp_up {
            o.ramp_up = r;
        }
        o.keep_alive = self.keep_alive;
        o.reconnect_max = self.reconnect_max;
        o.credentials = self.username.clone().zip(self.password.clone());
        o.faults = self.faults.plan();
        o.tls = self.tls()?;
        Ok(())
    }

    /// The TLS files loaded once here, before any device starts, so a bad path is one
    /// error naming it rather than one per device.
    fn tls(&self) -> Result<Option<TlsOptions>> {
        let Some(ca_file) = &self.ca_file else {
            return Ok(None);
        };
        let mut files = TlsFiles::new(ca_file);
        files.client_cert = self.client_cert.clone();
        files.client_key = self.client_key.clone();
        files.server_name = self.tls_server_name.clone();
        Ok(Some(TlsOptions::load(files)?))
    }
}

/// Cancels `stop` on the first Ctrl-C; exits on the second.
fn stop_on_ctrl_c() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping: draining outstanding readings (Ctrl-C again to quit now)");
            s.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    stop
}

fn write_report(path: &PathBuf, report: &FleetReport) -> Result<()> {
    let json = serde_json::to_vec(report).context("serializing the fleet report")?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

fn print_fleet(report: &FleetReport) {
    println!(
        "devices {}  published {}  acked {}  unacked {}  retransmits {}  connection errors {}  anomalies {}  in {:.2} s",
        report.devices.len(),
        report.published(),
        report.acked(),
        report.unacked(),
        report.retransmits(),
        report.connection_errors(),
        report.anomalies(),
        report.elapsed.as_secs_f64()
    );
    let injected = report.injected();
    if injected.total() > 0 {
        println!("injected faults: {injected}");
    }
    if report.qos == Qos::AtLeastOnce {
        println!(
            "acked rate {:.0} readings/s; publish→PUBACK {}",
            report.acked_per_sec(),
            report.puback_latency
        );
    }
    for (id, d) in report.devices.iter() {
        for b in d.boots().iter().filter(|b| !b.unacked.is_empty()) {
            println!(
                "{id} boot {}: {} unacknowledged {:?}; last error: {}",
                b.boot,
                b.unacked.len(),
                b.unacked,
                d.last_error.as_deref().unwrap_or("-")
            );
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Fleet { fleet, report } => {
            let mut o = FleetOptions::default();
            fleet.apply(&mut o)?;
            let stop = stop_on_ctrl_c();
            let r = firmware_sim::run_fleet(o, stop).await?;
            print_fleet(&r);
            if let Some(path) = &report {
                write_report(path, &r)?;
            }
            let ok = r.qos == Qos::AtMostOnce || (r.unacked() == 0 && r.anomalies() == 0);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Load {
            fleet,
            kafka,
            topic,
            kafka_timeout,
            report,
        } => {
            let mut o = LoadOptions::default();
            fleet.apply(&mut o.fleet)?;
            if let Some(topic) = topic {
                if kafka.is_empty() {
                    bail!("--topic needs --kafka BROKERS");
                }
                o.kafka = Some(KafkaTarget {
                    brokers: kafka,
                    topic,
                });
            }
            o.kafka_timeout = kafka_timeout;
            let stop = stop_on_ctrl_c();
            let r = firmware_sim::run_load(o, stop).await?;
            println!("{r}");
            if let Some(path) = &report {
                write_report(path, &r.fleet)?;
            }
            let mut ok = r.fleet.qos == Qos::AtMostOnce || r.fleet.unacked() == 0;
            if let Some(k) = &r.kafka {
                ok &= k.complete && k.verify.is_ok();
                for p in k.verify.problems().iter().take(20) {
                    println!("{p}");
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Serial(args) => run_serial(args).await,
        Command::ModbusSlave(args) => {
            firmware_sim::modbus::run_cli(args, stop_on_ctrl_c()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            brokers,
            topic,
            report,
            timeout,
        } => {
            let v = match report {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let fleet: FleetReport = serde_json::from_slice(&bytes)
                        .with_context(|| format!("parsing {}", path.display()))?;
                    verify::wait_until_complete(&brokers, &topic, &fleet, timeout).await?
                }
                None => check_stream(&verify::read_topic(&brokers, &topic).await?),
            };
            println!("{v}");
            Ok(if v.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! `firmware-sim`: run a turbine fleet, benchmark a gateway, verify a Kafka topic, write to
//! a serial line, serve Modbus, shape an uplink; the flags are parsed by [`firmware_sim::cli`], the work is
//! done by the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use firmware_sim::cli::{FleetArgs, LinkArgs, LoadLinkArgs, SerialArgs, WorkloadArgs};
use firmware_sim::fleet::{FleetOptions, Qos};
use firmware_sim::load::{KafkaTarget, LoadOptions};
use firmware_sim::serial::{SerialLine, SerialOptions, SerialTarget};
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
        /// Write the fleet report (JSON, including every acknowledged counter) to this file;
        /// `verify --report` checks a topic against it.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Benchmark: drive a fleet as fast as possible, print a progress line per second and
    /// the acknowledged rate and publish→PUBACK latency; with --kafka, also forwarding
    /// completeness and publish→readable-in-Kafka latency. Exits 1 if readings were left
    /// unacknowledged or, with --kafka, acknowledged readings never arrived.
    Load {
        /// Kafka bootstrap brokers (comma-separated host:port) to check forwarding against.
        #[arg(long, value_name = "BROKERS", value_delimiter = ',')]
        #[arg(requires = "topic")]
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
        /// Build each device's payload once and per reading only write its counter and ts
        /// into it (fixed-width fields), instead of sampling the turbine model and encoding
        /// every reading: for saturation runs where the generator's own CPU (the summary's
        /// "generator CPU" line) would be the limit. Payloads keep the device, boot, counter
        /// and ts that PUBACK accounting and --kafka verification read; their sensor values
        /// stay those of the first reading. Works with --payload-format json or binary.
        #[arg(long)]
        fixed_payload: bool,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        link: LoadLinkArgs,
    },
    /// Read a Kafka topic (all partitions, earliest to high watermark) and report, per
    /// device, missing, thinned, duplicated and out-of-order readings and header/key
    /// problems (gap and thinned markers are counted apart; a reading missing where thinned
    /// markers announced every journal sequence around it is thinned, not missing); with
    /// --live-topic, also every device's newest reading on a live topic and its age. Exits
    /// 1 if any rule is broken (duplicates alone are allowed).
    Verify {
        /// Kafka bootstrap brokers, comma-separated host:port.
        #[arg(long, value_name = "BROKERS", value_delimiter = ',')]
        #[arg(default_value = "127.0.0.1:9092")]
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
        /// Also check a live topic (a gateway's live lane, `tidegate-live: 1` records): every
        /// device (of --report, else of --topic) must have a reading there no older than
        /// --live-max-age, and every record must carry the marker.
        #[arg(long, value_name = "TOPIC")]
        live_topic: Option<String>,
        /// With --live-topic: the largest age (now − the reading's ts) of a device's newest
        /// live reading.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, requires = "live_topic")]
        live_max_age: Duration,
    },
    /// Write turbine readings to a serial line, as UART / RS-485 sensors do. Without --port,
    /// create a pseudo-terminal pair and print `serial: /dev/pts/N` (the path the gateway
    /// should open) on stdout first. Runs until --count, --duration or Ctrl-C, then prints
    /// the frames written per device.
    Serial {
        #[command(flatten)]
        line: SerialArgs,
        #[command(flatten)]
        workload: WorkloadArgs,
    },
    /// Serve turbines as Modbus RTU slaves on a new pseudo-terminal: prints
    /// `modbus: /dev/pts/N` (the port the gateway polls) on stdout, then answers until
    /// Ctrl-C. See firmware_sim::modbus for the register map.
    ModbusSlave(firmware_sim::modbus::ModbusSlaveArgs),
    /// A constrained uplink: a TCP proxy from --listen to --target (both loopback) at
    /// --rate bytes/s upstream, with --outage spans where it cuts every connection. Prints
    /// `link: LISTEN -> TARGET`, then a line per --report-every with the bytes up and down
    /// and their rates, until Ctrl-C or SIGTERM, then the totals and the largest 5 s window.
    Link(LinkArgs),
    /// `fleet` for long runs: the same fleet and report, plus one CSV row per
    /// --sample-every (appended to --samples) with the readings published and acknowledged,
    /// the devices connected and that interval's publish→PUBACK p50/p99/max; with --kafka,
    /// reads the topic while it runs and checks it against the report at the end, as
    /// `verify --report` does. Exits 1 if a reading was left unacknowledged or, with
    /// --kafka, an acknowledged one is missing or out of order.
    Soak(firmware_sim::soak::SoakArgs),
}

async fn run_serial(workload: WorkloadArgs, args: SerialArgs) -> Result<ExitCode> {
    use std::io::Write as _;
    let target = match &args.port {
        Some(p) => SerialTarget::Path(p.clone()),
        None => SerialTarget::Pty,
    };
    let mut line = SerialLine::open(&target, args.baud)?;
    println!("serial: {}", line.path().display());
    std::io::stdout().flush().context("writing to stdout")?;
    let mut opts = SerialOptions {
        framing: args.framing.into(),
        ..SerialOptions::default()
    };
    workload.apply(&mut opts.workload);
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

/// Cancels `stop` on the first Ctrl-C or SIGTERM; exits on the second Ctrl-C.
fn stop_on_ctrl_c() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        if first_stop_signal().await {
            eprintln!("stopping: draining outstanding readings (Ctrl-C again to quit now)");
            s.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    stop
}

/// Waits for Ctrl-C or SIGTERM (a service manager, a test killing its child); `false` if
/// neither can be listened for.
async fn first_stop_signal() -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            r = term.recv() => r.is_some(),
        },
        Err(_) => tokio::signal::ctrl_c().await.is_ok(),
    }
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

/// Prints a fleet's report and writes it to `report` if given; `false` if a QoS 1 reading
/// was left unacknowledged or a PUBACK could not be matched.
fn finish_fleet(r: &FleetReport, report: Option<&PathBuf>) -> Result<bool> {
    print_fleet(r);
    if let Some(path) = report {
        write_report(path, r)?;
    }
    Ok(r.qos == Qos::AtMostOnce || (r.unacked() == 0 && r.anomalies() == 0))
}

/// 0 if `ok`, else 1.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Fleet { fleet, report } => {
            let mut o = FleetOptions::default();
            fleet.apply(&mut o)?;
            let stop = stop_on_ctrl_c();
            let r = firmware_sim::run_fleet(o, stop).await?;
            Ok(exit(finish_fleet(&r, report.as_ref())?))
        }
        Command::Soak(args) => {
            let report = args.report.clone();
            let r = firmware_sim::soak::run_cli(args, stop_on_ctrl_c()).await?;
            let mut ok = finish_fleet(&r.fleet, report.as_ref())?;
            if let Some(v) = r.kafka {
                println!("{v}");
                for p in v.problems().iter().take(20) {
                    println!("{p}");
                }
                ok &= v.is_complete() && v.is_ok();
            }
            Ok(exit(ok))
        }
        Command::Load {
            fleet,
            kafka,
            topic,
            kafka_timeout,
            report,
            fixed_payload,
            link,
        } => {
            let mut o = LoadOptions::default();
            fleet.apply(&mut o.fleet)?;
            o.fleet.fixed_payload = fixed_payload;
            o.link = link.options();
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
        Command::Serial { workload, line } => run_serial(workload, line).await,
        Command::Link(args) => {
            firmware_sim::link::run_cli(args.options(), args.report_every, stop_on_ctrl_c())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ModbusSlave(args) => {
            firmware_sim::modbus::run_cli(args, stop_on_ctrl_c()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            brokers,
            topic,
            report,
            timeout,
            live_topic,
            live_max_age,
        } => {
            let (v, devices) = match report {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let fleet: FleetReport = serde_json::from_slice(&bytes)
                        .with_context(|| format!("parsing {}", path.display()))?;
                    let v = verify::wait_until_complete(&brokers, &topic, &fleet, timeout).await?;
                    (v, fleet.devices.keys().cloned().collect::<Vec<_>>())
                }
                None => {
                    let v = check_stream(&verify::read_topic(&brokers, &topic).await?);
                    let devices = v.devices.keys().cloned().collect();
                    (v, devices)
                }
            };
            println!("{v}");
            let mut ok = v.is_ok();
            if let Some(live_topic) = live_topic {
                let table = verify::read_live(&brokers, &live_topic).await?;
                let live = table.check(
                    devices.iter().map(String::as_str),
                    live_max_age,
                    firmware_sim::telemetry::now_ms(),
                );
                println!("{live}");
                for p in live.problems() {
                    println!("{p}");
                }
                ok &= live.is_ok();
            }
            Ok(if ok {
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

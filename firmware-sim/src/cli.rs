//! The flag groups of the `firmware-sim` command line and how they become the library's
//! options: one [`WorkloadArgs`] flattened into `fleet`, `load` and `serial`, the MQTT
//! connection of `fleet` and `load` ([`MqttArgs`], with the workload in [`FleetArgs`]) and
//! the serial line ([`SerialArgs`]), and the shaping link of `link` ([`LinkArgs`]) and of
//! `load` ([`LoadLinkArgs`]).
//!
//! Flags left out keep the defaults of the options they are applied to, so `fleet` (10
//! devices, 1 reading/s), `load` (100 devices, as fast as possible, 100-byte payloads, 10 s)
//! and `serial` (1 device, 1 reading/s) share the flags but not all the defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::faults::{BadValue, FaultPlan};
use crate::fleet::{FleetError, FleetOptions, Protocol, Qos, TlsFiles, TlsOptions};
use crate::framing::Framing;
use crate::link::{LinkOptions, Outage};
use crate::telemetry::PayloadFormat;
use crate::workload::Workload;

/// What the devices do, shared by `fleet`, `load` and `serial` (defaults differ where noted).
#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// Number of turbines [fleet: 10, load: 100, serial: 1].
    #[arg(long, short = 'n')]
    pub devices: Option<usize>,
    /// Number of the first turbine (1 → wt-0001); lets several simulators share a gateway.
    #[arg(long, default_value_t = 1)]
    pub first_device: usize,
    /// Readings per second per device, or "max" for as fast as the window (MQTT) or the
    /// line (serial) takes them [fleet, serial: 1; load: max].
    #[arg(long, value_name = "RATE|max", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Readings per device; the run ends when all are sent [default: until --duration or
    /// Ctrl-C].
    #[arg(long)]
    pub count: Option<u64>,
    /// How long to send, e.g. 30s, 5m [fleet, serial: until --count or Ctrl-C; load: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Pad each payload to exactly this many bytes (JSON below ~190 bytes drops the sensor
    /// values and keeps the identity fields; binary pads with zeros) [fleet, serial:
    /// unpadded; load: 100].
    #[arg(long, value_name = "BYTES")]
    pub payload_size: Option<usize>,
    /// Payload encoding: `json`, or `binary` (the compact form of constrained firmware,
    /// 48 bytes for wt-0001; see firmware_sim::telemetry; serial: needs --framing cobs).
    #[arg(long, value_name = "FORMAT", default_value = "json")]
    pub payload_format: PayloadFormat,
    /// Seed of the turbine model: the same seed gives the same readings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Boot id stamped on every reading (default: the current time in ms).
    #[arg(long)]
    pub boot: Option<u64>,
    #[command(flatten)]
    pub faults: FaultPlan,
}

impl WorkloadArgs {
    /// Sets `w` from the flags given; the others keep `w`'s values.
    pub fn apply(&self, w: &mut Workload) {
        if let Some(n) = self.devices {
            w.devices = n;
        }
        w.first_device = self.first_device;
        match self.rate {
            Some(Rate::Max) => w.rate = None,
            Some(Rate::PerSecond(r)) => w.rate = Some(r),
            None => {}
        }
        if self.count.is_some() {
            w.count = self.count;
        }
        if self.duration.is_some() {
            w.duration = self.duration;
        }
        if self.payload_size.is_some() {
            w.payload_size = self.payload_size;
        }
        w.payload_format = self.payload_format;
        w.seed = self.seed;
        w.boot = self.boot;
        w.faults = self.faults.clone();
    }
}

/// `--rate` values.
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    /// Readings per second per device.
    PerSecond(f64),
    /// As fast as the transport takes them.
    Max,
}

fn parse_rate(s: &str) -> Result<Rate, BadValue> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
        _ => Err(BadValue::new(format!(
            "{s:?} is neither a positive number nor \"max\""
        ))),
    }
}

/// The flags of `fleet` and `load`: the workload and the MQTT connection.
#[derive(Args, Debug)]
pub struct FleetArgs {
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

impl FleetArgs {
    /// Sets `o` from the flags given; the others keep `o`'s values. Fails if the TLS files
    /// cannot be loaded.
    pub fn apply(&self, o: &mut FleetOptions) -> Result<(), FleetError> {
        self.workload.apply(&mut o.workload);
        self.mqtt.apply(o)
    }
}

/// How the devices of `fleet` and `load` reach the broker (defaults differ where noted).
#[derive(Args, Debug)]
pub struct MqttArgs {
    /// MQTT broker (the gateway), host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// MQTT QoS of every reading: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,
    /// Start every connection with a clean session (default: persistent sessions).
    #[arg(long)]
    pub clean_session: bool,
    /// QoS 1 readings a device may have unacknowledged at once [fleet: 10, load: 100].
    #[arg(long)]
    pub window: Option<u16>,
    /// After publishing stops, how long to wait for outstanding PUBACKs.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Spread the first connections over this long [fleet: 0s, load: 500ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ramp_up: Option<Duration>,
    /// MQTT keep-alive (at least 5s for MQTT 5).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// Longest delay between reconnect attempts (it starts at 50ms and doubles).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,
    /// MQTT username.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// MQTT password.
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Connect over TLS, trusting only the CA certificate(s) in this PEM file. --broker
    /// then names the broker's TLS port (usually 8883).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate every device presents, for brokers that require one (with
    /// --client-key).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    #[arg(requires_all = ["ca_file", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    #[arg(requires_all = ["ca_file", "client_cert"])]
    pub client_key: Option<PathBuf>,
    /// Check the broker's certificate against this name instead of the --broker host (for
    /// a broker reached by IP whose certificate names its host name).
    #[arg(long, value_name = "NAME", requires = "ca_file", help_heading = "TLS")]
    pub tls_server_name: Option<String>,
}

impl MqttArgs {
    /// Sets `o` from the flags given; the others keep `o`'s values. Fails if the TLS files
    /// cannot be loaded.
    pub fn apply(&self, o: &mut FleetOptions) -> Result<(), FleetError> {
        o.broker = self.broker.clone();
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
        o.drain_timeout = self.drain_timeout;
        if let Some(r) = self.ramp_up {
            o.ramp_up = r;
        }
        o.keep_alive = self.keep_alive;
        o.reconnect_max = self.reconnect_max;
        o.credentials = self.username.clone().zip(self.password.clone());
        o.tls = self.tls()?;
        Ok(())
    }

    /// The TLS files loaded once here, before any device starts, so a bad path is one
    /// error naming it rather than one per device.
    fn tls(&self) -> Result<Option<TlsOptions>, FleetError> {
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

/// The serial line of `serial`.
#[derive(Args, Debug)]
pub struct SerialArgs {
    /// How readings are framed: `lines` (one JSON reading per line, LF) or `cobs` (COBS
    /// frames of JSON + CRC-16/CCITT-FALSE, 0x00-delimited).
    #[arg(long, value_enum, default_value_t = FramingArg::Lines)]
    pub framing: FramingArg,
    /// Write to this existing device or file (e.g. /dev/ttyUSB0) instead of a new
    /// pseudo-terminal; a tty is put in raw mode at --baud.
    #[arg(long, value_name = "PATH")]
    pub port: Option<PathBuf>,
    /// Baud rate set on a --port that is a tty (a pseudo-terminal ignores it).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// With a pseudo-terminal: after writing stops, wait this long at most for the gateway
    /// to read what is still buffered before closing it (closing discards it).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub linger: Duration,
}

/// `--framing` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FramingArg {
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

/// The link of `firmware-sim link`: a shaping proxy run until Ctrl-C or SIGTERM.
#[derive(Args, Debug)]
pub struct LinkArgs {
    /// Where the link listens, a loopback host:port (port 0: a free port, printed first).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0", value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// Where every connection goes, a loopback host:port (the broker).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub target: SocketAddr,
    /// Bytes per second client → target (what the gateway sends upstream), e.g. 64KiB
    /// [default: unlimited].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub rate: Option<u64>,
    /// Bytes that may pass at once after a quiet spell, upstream [default: one second of
    /// --rate].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, requires = "rate")]
    pub burst: Option<u64>,
    /// Bytes per second target → client [default: unlimited].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub rate_down: Option<u64>,
    /// An outage AFTER+LASTING from the start, e.g. 30s+60s: open connections are cut and
    /// new ones closed at once meanwhile. Repeatable.
    #[arg(long = "outage", value_name = "AFTER+LASTING")]
    pub outages: Vec<Outage>,
    /// Print the bytes up and down and their rates this often.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
}

impl LinkArgs {
    /// The link these flags describe.
    pub fn options(&self) -> LinkOptions {
        LinkOptions {
            listen: self.listen,
            rate: self.rate,
            burst: self.burst,
            rate_down: self.rate_down,
            outages: self.outages.clone(),
            ..LinkOptions::new(self.target)
        }
    }
}

/// The shaping link `load` can run for its duration, between the gateway and its upstream
/// (the gateway is configured to send to --link-listen).
#[derive(Args, Debug)]
#[command(next_help_heading = "Shaping link")]
pub struct LoadLinkArgs {
    /// Run a link listening here (loopback host:port) for the whole run, and report the
    /// bytes through it and its largest 5 s window at the end. A Kafka broker must
    /// advertise this address for its clients to stay on the link (the --kafka consumer
    /// then reads through it too, as downstream bytes).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, requires = "link_target")]
    pub link_listen: Option<SocketAddr>,
    /// Where the link's connections go (loopback host:port): the real broker.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, requires = "link_listen")]
    pub link_target: Option<SocketAddr>,
    /// Bytes per second through the link upstream, e.g. 64KiB [default: unlimited].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, requires = "link_listen")]
    pub link_rate: Option<u64>,
    /// An outage of the link, AFTER+LASTING from the start of the run, e.g. 30s+60s.
    /// Repeatable.
    #[arg(
        long = "link-outage",
        value_name = "AFTER+LASTING",
        requires = "link_listen"
    )]
    pub link_outages: Vec<Outage>,
}

impl LoadLinkArgs {
    /// The link these flags describe, if any.
    pub fn options(&self) -> Option<LinkOptions> {
        let (listen, target) = self.link_listen.zip(self.link_target)?;
        Some(LinkOptions {
            listen,
            rate: self.link_rate,
            outages: self.link_outages.clone(),
            ..LinkOptions::new(target)
        })
    }
}

/// A byte count or rate: `65536`, `64KiB`, `1MiB`, `64KB` (10³), with or without `/s`.
fn parse_bytes(s: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    match t.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => Ok(b.as_u64()),
        Ok(_) => Err(BadValue::new(format!("{s:?} must be at least 1 byte"))),
        Err(e) => Err(BadValue::new(format!("{s:?} is not a byte size: {e}"))),
    }
}

/// `host:port`, resolved to its first address (the link checks that it is loopback).
fn parse_addr(s: &str) -> Result<SocketAddr, BadValue> {
    let first = s
        .to_socket_addrs()
        .map_err(|e| BadValue::new(format!("{s:?} is not a host:port: {e}")))?
        .next();
    first.ok_or_else(|| BadValue::new(format!("{s:?} resolves to no address")))
}

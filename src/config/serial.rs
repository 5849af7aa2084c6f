//! `[[serial]]`: one serial port (UART, RS-485 adapter, pseudo-terminal) read for readings.
//!
//! Every key but `port` has a default. Plain data: the checks are
//! `crate::ingest::serial::config::validate`, which keeps the invariant the port task
//! relies on (a frame that passes `max_frame` always fits in one journal record).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
pub use tidegate_framing::Framing;

/// Parity bit of each character on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Flow control on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None: the device sends whenever it likes (most sensors).
    None,
    /// XON/XOFF characters; only for text (`lines`) devices, since 0x11 and 0x13 could
    /// not appear in binary frames.
    Software,
    /// RTS/CTS lines.
    Hardware,
}

/// One `[[serial]]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// `tidegate check-config` prints the topic a port really uses, the default one included.
#[serde(deny_unknown_fields, into = "Effective")]
pub struct SerialConfig {
    /// Path of the port, e.g. `/dev/ttyUSB0`, or better a stable udev name such as
    /// `/dev/serial/by-id/usb-FTDI_…-if00-port0`. Any path tokio-serial can open,
    /// pseudo-terminals included. A missing port is waited for, not a start-up error.
    pub port: PathBuf,
    /// Line speed in bits per second.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Bits per character, 5 to 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default = "default_flow_control")]
    pub flow_control: FlowControl,
    /// How readings are delimited: `lines` (one UTF-8 reading per line, LF or CRLF) or
    /// `cobs` (COBS frames ending in a CRC-16/CCITT-FALSE, 0x00-delimited).
    #[serde(default = "default_framing")]
    pub framing: Framing,
    /// Topic (and so Kafka key) of every reading from this port. Default
    /// `serial/<file name of port>`, e.g. `serial/ttyUSB0`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Largest reading accepted; a longer frame is dropped (counted, logged) without
    /// being buffered. At most `mqtt.max_packet`.
    #[serde(
        default = "default_max_frame",
        deserialize_with = "crate::config::units::size"
    )]
    pub max_frame: ByteSize,
    /// First delay before opening the port again after it was missing or lost; doubles
    /// up to `backoff_max`.
    #[serde(
        default = "default_backoff_initial",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_initial: Duration,
    /// Longest delay between attempts to open the port.
    #[serde(
        default = "default_backoff_max",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_max: Duration,
}

impl SerialConfig {
    /// A port with every default, for tests and examples.
    pub fn new(port: impl Into<PathBuf>) -> SerialConfig {
        SerialConfig {
            port: port.into(),
            baud: default_baud(),
            data_bits: default_data_bits(),
            parity: default_parity(),
            stop_bits: default_stop_bits(),
            flow_control: default_flow_control(),
            framing: default_framing(),
            topic: None,
            max_frame: default_max_frame(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }

    /// The topic of this port's readings: the configured one, else `serial/<file name>`.
    pub fn topic(&self) -> String {
        match &self.topic {
            Some(t) => t.clone(),
            None => format!(
                "serial/{}",
                self.port
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| self.port.display().to_string())
            ),
        }
    }

    /// The port as readings name their source.
    pub fn source(&self) -> String {
        self.port.display().to_string()
    }
}

/// A [`SerialConfig`] as printed: its topic resolved.
#[derive(Serialize)]
struct Effective {
    port: PathBuf,
    baud: u32,
    data_bits: u8,
    parity: Parity,
    stop_bits: u8,
    flow_control: FlowControl,
    framing: Framing,
    topic: String,
    max_frame: ByteSize,
    #[serde(with = "humantime_serde")]
    backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    backoff_max: Duration,
}

impl From<SerialConfig> for Effective {
    fn from(c: SerialConfig) -> Effective {
        Effective {
            topic: c.topic(),
            port: c.port,
            baud: c.baud,
            data_bits: c.data_bits,
            parity: c.parity,
            stop_bits: c.stop_bits,
            flow_control: c.flow_control,
            framing: c.framing,
            max_frame: c.max_frame,
            backoff_initial: c.backoff_initial,
            backoff_max: c.backoff_max,
        }
    }
}

pub(crate) fn default_baud() -> u32 {
    115_200
}
pub(crate) fn default_data_bits() -> u8 {
    8
}
pub(crate) fn default_parity() -> Parity {
    Parity::None
}
pub(crate) fn default_stop_bits() -> u8 {
    1
}
pub(crate) fn default_flow_control() -> FlowControl {
    FlowControl::None
}
pub(crate) fn default_framing() -> Framing {
    Framing::Lines
}
pub(crate) fn default_max_frame() -> ByteSize {
    ByteSize::kib(64)
}
pub(crate) fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}
pub(crate) fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}

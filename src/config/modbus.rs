//! `[[modbus]]`: which serial port to poll, which slaves on it, and how to read their
//! registers.
//!
//! Plain data with the accessors the poller reads it through; the checks are
//! `crate::ingest::modbus::config::validate`, which reports every problem at once with its
//! full key (`modbus[0].slave[1].register[2].type`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `[[modbus]]`: a serial port (an RS-485 bus) and the slaves polled on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Serial device of the bus, e.g. `/dev/ttyUSB1`. A port that is absent or vanishes is
    /// reopened with backoff; the rest of the daemon runs on.
    pub port: PathBuf,
    /// Line speed. The Modbus serial-line spec's default is 19200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none`, `even` or `odd`. Default `even`: the Modbus serial-line spec makes even
    /// parity the required default (8E1), so a spec-conforming device works without
    /// setting it. Many cheap sensors ship 8N1 instead: set `parity = "none"` for them.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// 7 or 8 (RTU requires 8; 7 only for odd devices).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2 (the spec wants 2 when there is no parity, but most 8N1 devices use 1).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Time between the starts of two polls of every slave on the port.
    #[serde(
        default = "default_interval",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub interval: Duration,
    /// Time a slave has to answer one request before it counts as a timeout.
    #[serde(
        default = "default_timeout",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub timeout: Duration,
    /// Topic of every slave's readings unless the slave sets its own; unset means
    /// `modbus/<slave name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// First delay before reopening a port that is missing or failed; doubles up to
    /// `backoff_max`.
    #[serde(
        default = "default_backoff_initial",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_initial: Duration,
    /// Longest delay between attempts to reopen the port.
    #[serde(
        default = "default_backoff_max",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "crate::config::units::duration"
    )]
    pub backoff_max: Duration,
    /// The slaves polled on this port, in this order.
    #[serde(default)]
    pub slave: Vec<SlaveConfig>,
}

/// One `[[modbus.slave]]`: a device on the bus, polled as one reading per interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaveConfig {
    /// Modbus address of the device, 1 ..= 247.
    pub id: u8,
    /// Name of the device in readings and logs (letters, digits, '-', '_', '.').
    pub name: String,
    /// Topic of this slave's readings (also the Kafka key); overrides the port's `topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// What to read in each poll.
    #[serde(default)]
    pub register: Vec<RegisterConfig>,
}

/// One `[[modbus.slave.register]]`: a value read from the slave each poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Key of the value in the reading's `values` object; unique per slave.
    pub name: String,
    /// Which Modbus table it lives in.
    pub kind: RegisterKind,
    /// Protocol address (0-based, as on the wire: register 30001 of a data sheet is input
    /// register 0).
    pub address: u16,
    /// How the register(s) are interpreted. Default `u16` for registers, `bool` for coils
    /// and discrete inputs (the only type they allow).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    /// Byte and word order of the value; default `big`. Only for register kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_order: Option<ByteOrder>,
    /// The value journaled is `raw * scale + offset`. Default 1. Not for `bool`.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// See `scale`. Default 0.
    #[serde(default)]
    pub offset: f64,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegisterKind {
    /// Read/write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
    /// Read/write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
}

impl RegisterKind {
    /// Whether the table holds 16-bit registers (not bits).
    pub fn is_register(self) -> bool {
        matches!(self, RegisterKind::Holding | RegisterKind::Input)
    }

    /// Most items one read request may ask for (Modbus application protocol, 6.1–6.4).
    pub fn max_per_request(self) -> u16 {
        if self.is_register() {
            125
        } else {
            2000
        }
    }

    /// Label in logs and error texts.
    pub fn label(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        }
    }
}

/// How a value is stored in one or two registers (or one bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
}

impl DataType {
    /// Registers (or bits) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U16 | DataType::I16 | DataType::Bool => 1,
        }
    }
}

/// Order of the bytes of a value across its registers, naming the value's bytes A (most
/// significant) to D:
///
/// | order | 32-bit: register 0, register 1 | 16-bit |
/// |---|---|---|
/// | `big` | AB, CD (the Modbus convention) | AB |
/// | `little` | DC, BA | BA |
/// | `big-swap` | CD, AB (big-endian registers, low word first) | AB |
/// | `little-swap` | BA, DC (bytes swapped in each register) | BA |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ByteOrder {
    Big,
    Little,
    BigSwap,
    LittleSwap,
}

impl RegisterConfig {
    /// The data type in effect (the default depends on the kind).
    pub fn data_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.kind.is_register() {
            DataType::U16
        } else {
            DataType::Bool
        })
    }

    /// The byte order in effect.
    pub fn byte_order(&self) -> ByteOrder {
        self.byte_order.unwrap_or(ByteOrder::Big)
    }
}

impl ModbusConfig {
    /// The topic readings of `slave` are journaled under.
    pub fn topic_of(&self, slave: &SlaveConfig) -> String {
        slave
            .topic
            .clone()
            .or_else(|| self.topic.clone())
            .unwrap_or_else(|| format!("modbus/{}", slave.name))
    }
}

pub(crate) fn default_baud() -> u32 {
    19_200
}
pub(crate) fn default_parity() -> Parity {
    Parity::Even
}
pub(crate) fn default_data_bits() -> u8 {
    8
}
pub(crate) fn default_stop_bits() -> u8 {
    1
}
pub(crate) fn default_interval() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
pub(crate) fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
pub(crate) fn default_scale() -> f64 {
    1.0
}

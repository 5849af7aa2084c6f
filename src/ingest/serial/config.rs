//! Checks of `[[serial]]` sections (the data is `crate::config::serial`).
//!
//! [`validate`] reports every problem at once, each naming its key (`serial[0].baud`),
//! like the rest of the configuration. It keeps one invariant the port task relies on: a
//! frame that passes `max_frame` always fits in one journal record (topic and source
//! within the record's u16 length fields, payload within `mqtt.max_packet`, which is
//! itself at most half of `journal.max_size`).

use std::collections::HashMap;
use std::path::PathBuf;

pub use crate::config::serial::{FlowControl, Framing, Parity, SerialConfig};
use crate::config::MqttConfig;

/// Highest baud rate accepted; above any UART a gateway has, so a larger value is a typo.
const MAX_BAUD: u32 = 12_000_000;

/// Record fields (topic, source) carry a u16 length.
const MAX_NAME: usize = u16::MAX as usize;

/// Appends every problem of the `[[serial]]` sections to `problems`, each naming its key.
pub fn validate(ports: &[SerialConfig], mqtt: &MqttConfig, problems: &mut Vec<String>) {
    let mut seen: HashMap<&PathBuf, usize> = HashMap::new();
    for (i, s) in ports.iter().enumerate() {
        let key = format!("serial[{i}]");
        if s.port.as_os_str().is_empty() {
            problems.push(format!("{key}.port: must not be empty"));
        } else if s.source().len() > MAX_NAME {
            problems.push(format!("{key}.port: longer than {MAX_NAME} bytes"));
        } else if let Some(first) = seen.insert(&s.port, i) {
            problems.push(format!(
                "{key}.port: {:?} is also serial[{first}].port; a port can be read only once",
                s.port.display().to_string()
            ));
        }
        if s.baud == 0 || s.baud > MAX_BAUD {
            problems.push(format!(
                "{key}.baud: {} is outside 1 ..= {MAX_BAUD}",
                s.baud
            ));
        }
        if !(5..=8).contains(&s.data_bits) {
            problems.push(format!(
                "{key}.data_bits: {} is not 5, 6, 7 or 8",
                s.data_bits
            ));
        }
        if !(1..=2).contains(&s.stop_bits) {
            problems.push(format!("{key}.stop_bits: {} is not 1 or 2", s.stop_bits));
        }
        if s.framing == Framing::Cobs && s.flow_control == FlowControl::Software {
            problems.push(format!(
                "{key}.flow_control: \"software\" (XON/XOFF) cannot carry binary cobs frames; use \"none\" or \"hardware\""
            ));
        }
        match &s.topic {
            Some(t) if t.is_empty() => {
                problems.push(format!("{key}.topic: must not be empty (omit it for serial/<port name>)"))
            }
            Some(t) if t.contains(['+', '#']) => problems.push(format!(
                "{key}.topic: {t:?} holds an MQTT wildcard ('+' or '#'), which a reading's topic cannot"
            )),
            Some(t) if t.starts_with('$') => problems.push(format!(
                "{key}.topic: {t:?} starts with '$', which is reserved for broker topics"
            )),
            Some(t) if t.contains('\0') => {
                problems.push(format!("{key}.topic: {t:?} contains a NUL character"))
            }
            Some(t) if t.len() > MAX_NAME => {
                problems.push(format!("{key}.topic: longer than {MAX_NAME} bytes"))
            }
            _ => {}
        }
        if s.max_frame.as_u64() == 0 {
            problems.push(format!("{key}.max_frame: must be at least 1 B"));
        } else if s.max_frame > mqtt.max_packet {
            problems.push(format!(
                "{key}.max_frame: {} is above mqtt.max_packet ({}); a serial reading may be no larger than an MQTT one, so that it fits the journal and every upstream",
                s.max_frame, mqtt.max_packet
            ));
        }
        if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
            problems.push(format!(
                "{key}.backoff_initial: must be above 0 and at most backoff_max ({})",
                humantime::format_duration(s.backoff_max)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::*;
    use crate::config::Config;

    /// Parses with config's own checks and this module's (`crate::validate` runs all).
    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_with(text, Path::new("test.toml"), |c| {
            let mut p = Vec::new();
            validate(&c.serial, &c.mqtt, &mut p);
            p
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_port_alone_gets_the_usual_line_settings_and_a_topic_from_its_name() {
        let c = parse("[[serial]]\nport = \"/dev/ttyUSB0\"\n").expect("valid");
        let s = &c.serial[0];
        assert_eq!(s, &SerialConfig::new("/dev/ttyUSB0"));
        assert_eq!(s.baud, 115_200);
        assert_eq!((s.data_bits, s.parity, s.stop_bits), (8, Parity::None, 1));
        assert_eq!(s.flow_control, FlowControl::None);
        assert_eq!(s.framing, Framing::Lines);
        assert_eq!(s.max_frame, ByteSize::kib(64));
        assert_eq!(s.topic(), "serial/ttyUSB0");
        assert_eq!(s.source(), "/dev/ttyUSB0");
    }

    #[test]
    fn every_key_parses_with_human_units() {
        let c = parse(
            r#"
            [[serial]]
            port = "/dev/serial/by-id/usb-FTDI-if00-port0"
            baud = 9600
            data_bits = 7
            parity = "even"
            stop_bits = 2
            flow_control = "hardware"
            framing = "cobs"
            topic = "plant/pump-3"
            max_frame = "4KiB"
            backoff_initial = "100ms"
            backoff_max = "10s"
            "#,
        )
        .expect("valid");
        let s = &c.serial[0];
        assert_eq!(s.baud, 9600);
        assert_eq!((s.data_bits, s.parity, s.stop_bits), (7, Parity::Even, 2));
        assert_eq!(s.flow_control, FlowControl::Hardware);
        assert_eq!(s.framing, Framing::Cobs);
        assert_eq!(s.topic(), "plant/pump-3");
        assert_eq!(s.max_frame, ByteSize::kib(4));
        assert_eq!(s.backoff_initial, Duration::from_millis(100));
        assert_eq!(s.backoff_max, Duration::from_secs(10));
    }

    #[test]
    fn an_unknown_framing_or_key_is_an_error_naming_it() {
        let err = parse("[[serial]]\nport = \"/dev/ttyS0\"\nframing = \"slip\"\n").unwrap_err();
        assert!(err.contains("framing") && err.contains("slip"), "{err}");
        let err = parse("[[serial]]\nport = \"/dev/ttyS0\"\nbaudrate = 9600\n").unwrap_err();
        assert!(err.contains("baudrate"), "{err}");
        let err = parse("[[serial]]\nbaud = 9600\n").unwrap_err();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let err = parse(
            r#"
            [mqtt]
            max_packet = "64KiB"
            [[serial]]
            port = "/dev/ttyUSB0"
            baud = 0
            data_bits = 9
            stop_bits = 3
            topic = "a/+/b"
            max_frame = "1MiB"
            [[serial]]
            port = "/dev/ttyUSB0"
            topic = ""
            max_frame = "0B"
            backoff_initial = "0s"
            [[serial]]
            port = ""
            framing = "cobs"
            flow_control = "software"
            topic = "$SYS/x"
            "#,
        )
        .unwrap_err();
        for needle in [
            "serial[0].baud",
            "serial[0].data_bits",
            "serial[0].stop_bits",
            "serial[0].topic",
            "serial[0].max_frame",
            "serial[1].port",
            "serial[1].topic",
            "serial[1].max_frame",
            "serial[1].backoff_initial",
            "serial[2].port",
            "serial[2].flow_control",
            "serial[2].topic",
        ] {
            assert!(err.contains(needle), "{needle} missing from:\n{err}");
        }
        assert!(err.contains("also serial[0].port"), "{err}");
    }

    #[test]
    fn the_effective_config_prints_the_topic_in_use_and_reads_back_the_same() {
        let c = parse("[[serial]]\nport = \"/dev/ttyACM0\"\nframing = \"cobs\"\n").expect("valid");
        let printed = toml::to_string(&c).expect("serialize");
        assert!(printed.contains("topic = \"serial/ttyACM0\""), "{printed}");
        let again = parse(&printed).expect("the printed config is valid");
        assert_eq!(again.serial[0].topic(), "serial/ttyACM0");
        assert_eq!(again.serial[0].framing, Framing::Cobs);
    }

    /// The commented `[[serial]]` example in deploy/tidegate.toml, uncommented, is valid
    /// and states the real defaults.
    #[test]
    fn the_shipped_serial_example_is_valid_and_states_the_defaults() {
        let example = include_str!("../../../deploy/tidegate.toml");
        let start = example
            .find("# [[serial]]")
            .expect("deploy/tidegate.toml has a commented [[serial]] example");
        // Setting lines are "# key = value"; prose lines never contain " = ".
        let section: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| *l == "[[serial]]" || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&section).unwrap_or_else(|e| panic!("{e}\n{section}"));
        let s = &c.serial[0];
        let d = SerialConfig::new(&s.port);
        assert_eq!(s.baud, d.baud);
        assert_eq!(
            (s.data_bits, s.parity, s.stop_bits),
            (d.data_bits, d.parity, d.stop_bits)
        );
        assert_eq!(s.flow_control, d.flow_control);
        assert_eq!(s.framing, d.framing);
        assert_eq!(s.max_frame, d.max_frame);
        assert_eq!(s.backoff_initial, d.backoff_initial);
        assert_eq!(s.backoff_max, d.backoff_max);
        assert_eq!(
            s.topic(),
            d.topic(),
            "the example's topic is the default one"
        );
    }
}

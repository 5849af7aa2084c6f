//! Checks of `[[modbus]]` sections (the data is `crate::config::modbus`): every problem
//! is reported at once with its full key (`modbus[0].slave[1].register[2].type`).

use std::collections::HashSet;
use std::time::Duration;

pub use crate::config::modbus::{
    ByteOrder, DataType, ModbusConfig, Parity, RegisterConfig, RegisterKind, SlaveConfig,
};

/// Whether `name` only holds letters, digits, '-', '_' and '.'.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why `topic` cannot be a reading's topic, if it cannot.
fn topic_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("must not be empty")
    } else if topic.contains(['+', '#', '\0']) {
        Some("must not contain the MQTT wildcards '+' or '#'")
    } else if topic.starts_with('$') {
        Some("must not start with '$' (reserved for broker topics)")
    } else if topic.len() > 65_535 {
        Some("is longer than an MQTT topic may be")
    } else {
        None
    }
}

/// Every problem of the `[[modbus]]` sections, each naming its key.
pub fn validate(sections: &[ModbusConfig], p: &mut Vec<String>) {
    let mut ports = HashSet::new();
    for (i, m) in sections.iter().enumerate() {
        let key = format!("modbus[{i}]");
        if m.port.as_os_str().is_empty() {
            p.push(format!("{key}.port: must not be empty"));
        } else if !ports.insert(&m.port) {
            p.push(format!(
                "{key}.port: {} is polled by another [[modbus]] section; put all slaves of one bus in one section",
                m.port.display()
            ));
        }
        if m.baud == 0 {
            p.push(format!("{key}.baud: must be above 0"));
        }
        if !matches!(m.data_bits, 7 | 8) {
            p.push(format!("{key}.data_bits: {} is not 7 or 8", m.data_bits));
        }
        if !matches!(m.stop_bits, 1 | 2) {
            p.push(format!("{key}.stop_bits: {} is not 1 or 2", m.stop_bits));
        }
        if m.interval < Duration::from_millis(10) {
            p.push(format!("{key}.interval: must be at least 10ms"));
        }
        if m.timeout.is_zero() {
            p.push(format!("{key}.timeout: must be above 0"));
        }
        if m.backoff_initial.is_zero() || m.backoff_initial > m.backoff_max {
            p.push(format!(
                "{key}.backoff_initial: must be above 0 and at most backoff_max ({})",
                humantime::format_duration(m.backoff_max)
            ));
        }
        if let Some(t) = &m.topic {
            if let Some(why) = topic_problem(t) {
                p.push(format!("{key}.topic: {t:?} {why}"));
            }
        }
        if m.slave.is_empty() {
            p.push(format!(
                "{key}.slave: a [[modbus]] section needs at least one [[modbus.slave]]"
            ));
        }
        let (mut ids, mut names) = (HashSet::new(), HashSet::new());
        for (j, s) in m.slave.iter().enumerate() {
            let key = format!("{key}.slave[{j}]");
            // 0 is broadcast (no answers), 248..=255 are reserved.
            if !(1..=247).contains(&s.id) {
                p.push(format!("{key}.id: {} is outside 1 ..= 247", s.id));
            } else if !ids.insert(s.id) {
                p.push(format!(
                    "{key}.id: {} is used by another slave on this port",
                    s.id
                ));
            }
            if !is_plain_name(&s.name) {
                p.push(format!(
                    "{key}.name: {:?} must be non-empty letters, digits, '-', '_' and '.'",
                    s.name
                ));
            } else if !names.insert(&s.name) {
                p.push(format!(
                    "{key}.name: {:?} is used by another slave on this port",
                    s.name
                ));
            }
            if let Some(t) = &s.topic {
                if let Some(why) = topic_problem(t) {
                    p.push(format!("{key}.topic: {t:?} {why}"));
                }
            }
            if s.register.is_empty() {
                p.push(format!(
                    "{key}.register: a slave needs at least one [[modbus.slave.register]]"
                ));
            }
            let mut reg_names = HashSet::new();
            for (k, r) in s.register.iter().enumerate() {
                validate_register(&format!("{key}.register[{k}]"), r, &mut reg_names, p);
            }
        }
    }
}

fn validate_register<'a>(
    key: &str,
    r: &'a RegisterConfig,
    names: &mut HashSet<&'a str>,
    p: &mut Vec<String>,
) {
    if r.name.is_empty() {
        p.push(format!("{key}.name: must not be empty"));
    } else if !names.insert(&r.name) {
        p.push(format!(
            "{key}.name: {:?} is used by another register of this slave",
            r.name
        ));
    }
    let ty = r.data_type();
    if r.kind.is_register() && ty == DataType::Bool {
        p.push(format!(
            "{key}.type: \"bool\" is for coils and discrete inputs; a {} register is u16, i16, u32, i32 or f32",
            r.kind.label()
        ));
    }
    if !r.kind.is_register() {
        if ty != DataType::Bool {
            p.push(format!(
                "{key}.type: a {} is a single bit; its type can only be \"bool\"",
                r.kind.label()
            ));
        }
        if r.byte_order.is_some() {
            p.push(format!(
                "{key}.byte_order: a {} is a single bit and has no byte order",
                r.kind.label()
            ));
        }
    }
    if u32::from(r.address) + u32::from(ty.width()) > 65_536 {
        p.push(format!(
            "{key}.address: {} leaves no room for the {} registers of its type",
            r.address,
            ty.width()
        ));
    }
    if ty == DataType::Bool {
        if r.scale != 1.0 || r.offset != 0.0 {
            p.push(format!(
                "{key}.scale: a bool value cannot be scaled or offset"
            ));
        }
    } else {
        if !r.scale.is_finite() || r.scale == 0.0 {
            p.push(format!(
                "{key}.scale: {} must be a finite number other than 0",
                r.scale
            ));
        }
        if !r.offset.is_finite() {
            p.push(format!(
                "{key}.offset: {} must be a finite number",
                r.offset
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::config::modbus::{
        default_backoff_initial, default_backoff_max, default_data_bits, default_interval,
        default_parity, default_stop_bits, default_timeout,
    };

    fn parse(text: &str) -> Vec<ModbusConfig> {
        #[derive(Deserialize)]
        struct Wrap {
            modbus: Vec<ModbusConfig>,
        }
        toml::from_str::<Wrap>(text).expect("parses").modbus
    }

    fn problems(text: &str) -> Vec<String> {
        let mut p = Vec::new();
        validate(&parse(text), &mut p);
        p
    }

    #[test]
    fn a_minimal_section_gets_the_spec_defaults() {
        let m = parse(
            r#"
            [[modbus]]
            port = "/dev/ttyUSB1"
            [[modbus.slave]]
            id = 1
            name = "wt-0001"
            [[modbus.slave.register]]
            name = "wind_ms"
            kind = "input"
            address = 0
            scale = 0.01
            [[modbus.slave.register]]
            name = "running"
            kind = "coil"
            address = 3
            "#,
        );
        assert!(problems_of(&m).is_empty(), "{:?}", problems_of(&m));
        let m = &m[0];
        assert_eq!(
            (m.baud, m.parity, m.data_bits, m.stop_bits),
            (19_200, Parity::Even, 8, 1)
        );
        assert_eq!(m.interval, Duration::from_secs(1));
        assert_eq!(m.timeout, Duration::from_millis(500));
        assert_eq!(m.topic_of(&m.slave[0]), "modbus/wt-0001");
        let r = &m.slave[0].register;
        assert_eq!(
            (r[0].data_type(), r[0].byte_order()),
            (DataType::U16, ByteOrder::Big)
        );
        assert_eq!(r[1].data_type(), DataType::Bool);
    }

    fn problems_of(m: &[ModbusConfig]) -> Vec<String> {
        let mut p = Vec::new();
        validate(m, &mut p);
        p
    }

    #[test]
    fn a_slave_topic_overrides_the_port_topic() {
        let m = parse(
            r#"
            [[modbus]]
            port = "/dev/ttyUSB1"
            topic = "plant/bus1"
            [[modbus.slave]]
            id = 1
            name = "a"
            [[modbus.slave]]
            id = 2
            name = "b"
            topic = "plant/b"
            "#,
        );
        assert_eq!(m[0].topic_of(&m[0].slave[0]), "plant/bus1");
        assert_eq!(m[0].topic_of(&m[0].slave[1]), "plant/b");
    }

    #[test]
    fn every_bad_value_is_named_by_its_full_key() {
        let p = problems(
            r#"
            [[modbus]]
            port = "/dev/ttyUSB1"
            data_bits = 9
            stop_bits = 3
            interval = "1ms"
            timeout = "0s"
            topic = "a/#"
            [[modbus.slave]]
            id = 0
            name = "wt 1"
            [[modbus.slave]]
            id = 2
            name = "ok"
            [[modbus.slave.register]]
            name = "x"
            kind = "input"
            address = 0
            [[modbus.slave.register]]
            name = "x"
            kind = "coil"
            address = 0
            type = "u16"
            byte_order = "little"
            [[modbus.slave.register]]
            name = "flag"
            kind = "holding"
            address = 65535
            type = "bool"
            [[modbus.slave.register]]
            name = "f"
            kind = "holding"
            address = 65535
            type = "f32"
            scale = 0.0
            [[modbus]]
            port = "/dev/ttyUSB1"
            [[modbus.slave]]
            id = 7
            name = "a"
            [[modbus.slave]]
            id = 7
            name = "a"
            "#,
        );
        let text = p.join("\n");
        for needle in [
            "modbus[0].data_bits",
            "modbus[0].stop_bits",
            "modbus[0].interval",
            "modbus[0].timeout",
            "modbus[0].topic",
            "modbus[0].slave[0].id",
            "modbus[0].slave[0].name",
            "modbus[0].slave[0].register:",
            "modbus[0].slave[1].register[1].name",
            "modbus[0].slave[1].register[1].type",
            "modbus[0].slave[1].register[1].byte_order",
            "modbus[0].slave[1].register[2].type",
            "modbus[0].slave[1].register[3].address",
            "modbus[0].slave[1].register[3].scale",
            "modbus[1].port",
            "modbus[1].slave[1].id",
            "modbus[1].slave[1].name",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        // The first register of slave 1 is fine: nothing names it.
        assert!(!text.contains("modbus[0].slave[1].register[0]"), "{text}");
    }

    /// The commented `[[modbus]]` example in deploy/tidegate.toml, uncommented: its TOML
    /// lines are `# key = value` and `# [[table]]`, its prose is anything else.
    fn shipped_example() -> String {
        let text = include_str!("../../../deploy/tidegate.toml");
        let start = text
            .find("# [[modbus]]")
            .expect("the example has a [[modbus]]");
        text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with("[[modbus")
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_shipped_example_is_valid_and_its_stated_defaults_are_the_real_ones() {
        let text = shipped_example();
        let m = parse(&text);
        assert!(problems_of(&m).is_empty(), "{:?}\n{text}", problems_of(&m));
        let m = &m[0];
        assert_eq!(m.baud, crate::config::modbus::default_baud());
        assert_eq!(m.parity, default_parity());
        assert_eq!(m.data_bits, default_data_bits());
        assert_eq!(m.stop_bits, default_stop_bits());
        assert_eq!(m.interval, default_interval());
        assert_eq!(m.timeout, default_timeout());
        assert_eq!(m.backoff_initial, default_backoff_initial());
        assert_eq!(m.backoff_max, default_backoff_max());
        let regs = &m.slave[0].register;
        assert_eq!(regs.len(), 4, "{text}");
        assert_eq!(regs[3].data_type(), DataType::Bool);
    }

    #[test]
    fn a_section_without_slaves_is_an_error() {
        let p = problems("[[modbus]]\nport = \"/dev/ttyS0\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("modbus[0].slave:"), "{p:?}");
    }

    #[test]
    fn unknown_keys_and_types_are_parse_errors_naming_the_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrap {
            modbus: Vec<ModbusConfig>,
        }
        let err = toml::from_str::<Wrap>(
            "[[modbus]]\nport = \"/dev/ttyS0\"\n[[modbus.slave]]\nid = 1\nname = \"a\"\n[[modbus.slave.register]]\nname = \"x\"\nkind = \"input\"\naddress = 0\ntype = \"u64\"\n",
        )
        .expect_err("u64 is not a type");
        assert!(err.to_string().contains("u64"), "{err}");
        let err = toml::from_str::<Wrap>("[[modbus]]\nport = \"/dev/ttyS0\"\nspeed = 9600\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("speed"), "{err}");
    }
}

//! The configuration tree, read from TOML: plain serde data, one file per section, at the
//! bottom of the crate (it imports nothing of the crate outside `config/`).
//!
//! Every section and field has a default, so `tidegate run` with no file is a working
//! gateway (journal in `./tidegate-data`, MQTT on 127.0.0.1:1883, no upstream). Unknown keys
//! are errors, and every problem is reported at once, each naming its key, so an operator
//! fixes a bad file in one pass. Sizes take human units (`"1GiB"`, `"64KiB"`) and durations
//! too (`"2ms"`, `"10s"`).
//!
//! [`Config::validate`] holds the checks that need nothing but the values; a check that
//! needs a stage's logic (topic patterns, broker urls, log filters) belongs to that stage,
//! and `crate::validate` runs both. Loading goes through [`Config::load_with`], so no
//! caller can take a file that only passed half of the checks by accident.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod gateway;
mod http;
mod journal;
mod log;
pub mod modbus;
mod mqtt;
mod mqtt_client;
mod mqtt_subscribe;
mod parse;
pub mod secret;
pub mod serial;
mod units;
mod upstream;

pub use gateway::GatewayConfig;
pub use http::HttpConfig;
pub use journal::{JournalCompression, JournalConfig, OnFull};
pub use log::LogConfig;
pub use modbus::ModbusConfig;
pub use mqtt::{MqttAuthConfig, MqttConfig};
pub use mqtt_client::MqttClientConfig;
pub use mqtt_subscribe::MqttSubscribeConfig;
pub use parse::Problem;
pub use serial::SerialConfig;
pub use upstream::{
    BudgetPeriod, Compression, SaslMechanism, UplinkConfig, UpstreamConfig, UpstreamKind,
};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of this gateway, stamped on every record sent upstream.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The durable local log.
    #[serde(default)]
    pub journal: JournalConfig,
    /// The device-facing MQTT listener.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Where the journal is forwarded to; none means readings are only held locally.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// Serial ports read for readings (`[[serial]]`); none by default.
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
    /// Modbus RTU buses polled for readings (`[[modbus]]`); none by default.
    #[serde(default)]
    pub modbus: Vec<ModbusConfig>,
    /// Existing MQTT brokers whose messages are journaled (`[[mqtt_subscribe]]`); none by
    /// default.
    #[serde(default)]
    pub mqtt_subscribe: Vec<MqttSubscribeConfig>,
    /// The HTTP listener: `/metrics`, `/health` and the status page (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging (`[log]`); changes apply on SIGHUP.
    #[serde(default)]
    pub log: LogConfig,
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read. The I/O error is part of the message, not a `source`:
    /// reported as a chain (`{:#}`) it would be said twice.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file is not valid TOML, does not match the schema, or its values do not make
    /// sense together: every problem found, each with its line and key where it has them.
    #[error("{}", describe(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// `config file F has N errors:` and a line per problem, `F:LINE: key: message` (the form
/// editors and terminals turn into a link to the line).
fn describe(path: &Path, problems: &[Problem]) -> String {
    let n = problems.len();
    let mut out = format!(
        "config file {} has {n} error{}:",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&path.display().to_string());
        if let Some(line) = p.line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
        if let Some(key) = &p.key {
            out.push_str(key);
            out.push_str(": ");
        }
        out.push_str(&p.message);
    }
    out
}

impl Config {
    /// Reads, parses and validates the file at `path`: [`Config::validate`], then
    /// `stage_checks` (the stages' own checks; `crate::validate::check` runs them all).
    pub fn load_with(
        path: &Path,
        stage_checks: impl FnOnce(&Config) -> Vec<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::from_toml_with(&text, path, stage_checks)
    }

    /// Parses and validates TOML text as [`Config::load_with`] does; `path` only names
    /// the source in errors. Every problem is reported at once: those of the text (each
    /// refused key, see `parse`), then those of the values, the latter checked on the
    /// config with the refused keys at their defaults and left out where they are about a
    /// refused key.
    pub fn from_toml_with(
        text: &str,
        path: &Path,
        stage_checks: impl FnOnce(&Config) -> Vec<String>,
    ) -> Result<Config, ConfigError> {
        let (mut problems, config) = parse::parse(text);
        let Some(config) = config else {
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        };
        let refused: Vec<String> = problems.iter().filter_map(|p| p.key.clone()).collect();
        let mut checks = config.validate();
        checks.extend(stage_checks(&config));
        for message in checks {
            // The checks write `key: what is wrong`; a key a parse problem already named
            // (or a key inside it) took its default, so a check of it says nothing new.
            let key = message
                .split_once(": ")
                .map(|(k, _)| k)
                .filter(|k| !k.contains(' '))
                .map(str::to_owned);
            let about_refused = key.as_deref().is_some_and(|k| {
                refused.iter().any(|r| {
                    k == r
                        || k.starts_with(&format!("{r}."))
                        || k.starts_with(&format!("{r}["))
                        // A whole `[[section]]` entry was refused: the entries after it
                        // moved up a number in this config, so the checks' numbers of
                        // that section would name the wrong entries. Its checks wait
                        // for the next run.
                        || r.strip_suffix(']')
                            .and_then(|r| r.rsplit_once('['))
                            .is_some_and(|(section, _)| k.starts_with(&format!("{section}[")))
                })
            });
            if about_refused {
                continue;
            }
            let (key, message) = match key {
                Some(k) => {
                    let rest = message[k.len() + 2..].to_owned();
                    (Some(k), rest)
                }
                None => (None, message),
            };
            problems.push(Problem {
                line: key.as_deref().and_then(|k| parse::line_of_key(text, k)),
                key,
                message,
            });
        }
        // In the order of the file, problems without a line last.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Every problem the values alone show, each naming its key. Empty means these
    /// checks pass; the stages' own checks are separate (see the module docs).
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.gateway.id.trim().is_empty() {
            p.push("gateway.id: must not be empty".to_owned());
        }
        self.journal.validate(&mut p);
        self.mqtt.validate(&self.journal, &mut p);
        if self.http.enabled && self.http.listen == self.mqtt.listen {
            p.push(format!(
                "http.listen: {} is also mqtt.listen; give the HTTP listener its own port",
                self.http.listen
            ));
        }
        let mut names = HashSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            u.validate(&format!("upstream[{i}]"), &mut names, &mut p);
        }
        // A port is read by one section only: a [[serial]] reader and a [[modbus]] poller on
        // one line would garble each other's frames (at run time the second open fails).
        for (i, m) in self.modbus.iter().enumerate() {
            if let Some(j) = self.serial.iter().position(|s| s.port == m.port) {
                p.push(format!(
                    "modbus[{i}].port: {} is also serial[{j}].port; a port is either read for frames or polled, not both",
                    m.port.display()
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::*;

    /// Parses with this module's checks alone (`crate::validate` adds the stages').
    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with(text, Path::new("test.toml"), |_| Vec::new())
    }

    #[test]
    fn a_port_cannot_be_both_a_serial_and_a_modbus_port() {
        let text = "[[serial]]\nport = \"/dev/ttyUSB0\"\n[[modbus]]\nport = \"/dev/ttyUSB0\"\n\
                    [[modbus.slave]]\nid = 1\nname = \"wt-0001\"\n\
                    [[modbus.slave.register]]\nname = \"wind\"\nkind = \"input\"\naddress = 0\n";
        let err = parse(text).expect_err("refused").to_string();
        assert!(
            err.contains("modbus[0].port: /dev/ttyUSB0 is also serial[0].port"),
            "{err}"
        );
        let ok = text.replacen("/dev/ttyUSB0", "/dev/ttyUSB1", 1);
        parse(&ok).expect("different ports are fine");
    }

    #[test]
    fn an_empty_file_gives_the_embedded_defaults() {
        let c = parse("").expect("valid");
        assert_eq!(c.journal.dir, PathBuf::from("./tidegate-data"));
        assert_eq!(c.mqtt.listen, "127.0.0.1:1883".parse().unwrap());
        assert!(c.upstream.is_empty());
        assert_eq!(c.journal.on_full, OnFull::DropOldest);
        assert!(!c.gateway.id.is_empty());
    }

    #[test]
    fn the_documented_example_parses_with_human_units() {
        let c = parse(
            r#"
            [gateway]
            id = "gw-01"
            [journal]
            dir = "/var/lib/tidegate"
            max_size = "1GiB"
            on_full = "reject"
            commit_interval = "2ms"
            [mqtt]
            listen = "0.0.0.0:1883"
            [[upstream]]
            name = "cluster"
            kind = "kafka"
            brokers = ["127.0.0.1:9092"]
            topic = "telemetry"
            max_batch = 5000
            linger = "10ms"
            compression = "lz4"
            "#,
        )
        .expect("valid");
        assert_eq!(c.gateway.id, "gw-01");
        assert_eq!(c.journal.max_size, ByteSize::gib(1));
        assert_eq!(c.journal.on_full, OnFull::Reject);
        assert_eq!(c.journal.commit_interval, Duration::from_millis(2));
        assert_eq!(c.upstream[0].linger, Duration::from_millis(10));
        assert_eq!(c.upstream[0].compression(), Compression::Lz4);
    }

    #[test]
    fn max_age_is_unset_by_default_and_takes_human_units() {
        assert_eq!(parse("").expect("valid").journal.max_age, None);
        let c = parse("[journal]\nmax_age = \"30d\"\n").expect("valid");
        assert_eq!(c.journal.max_age, Some(Duration::from_secs(30 * 24 * 3600)));
    }

    #[test]
    fn a_max_age_under_a_minute_is_refused_with_its_key_and_an_example() {
        let err = parse("[journal]\nmax_age = \"30s\"\n").expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("journal.max_age"), "{text}");
        assert!(text.contains("30s"), "{text}");
        assert!(text.contains("max_age = \"30d\""), "{text}");
        parse("[journal]\nmax_age = \"1m\"\n").expect("one minute is the minimum");
        let err = parse("[journal]\nmax_age = \"a month\"\n").expect_err("must fail");
        assert!(err.to_string().contains("max_age"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = parse("[journal]\nmax_sise = \"1GiB\"\n").expect_err("must fail");
        assert!(err.to_string().contains("max_sise"), "{err}");
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_key() {
        let err = parse(
            r#"
            [journal]
            max_size = "10KiB"
            [[upstream]]
            name = "a"
            kind = "kafka"
            brokers = ["nohost"]
            topic = "bad topic"
            [[upstream]]
            name = "a"
            kind = "kafka"
            "#,
        )
        .expect_err("must fail");
        let text = err.to_string();
        for needle in [
            "journal.max_size",
            "upstream[0].brokers",
            "upstream[0].topic",
            "upstream[1].name",
            "upstream[1].brokers",
            "upstream[1].topic",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_of_sections_with_flattened_client_keys_are_errors_that_name_the_key() {
        for text in [
            "[[upstream]]\nname = \"a\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\nkeep_alvie = \"30s\"\n",
            "[[mqtt_subscribe]]\nurl = \"mqtt://h:1883\"\ntopics = [\"a/#\"]\nkeep_alvie = \"30s\"\n",
        ] {
            let err = parse(text).expect_err("must fail").to_string();
            assert!(err.contains("unknown field `keep_alvie`"), "{err}");
        }
    }

    #[test]
    fn the_key_lists_of_the_sections_with_client_keys_are_their_keys() {
        // Every Option set, so that every key is printed.
        let client = MqttClientConfig {
            client_id: Some("c".into()),
            username: Some("u".into()),
            password_file: Some("/p".into()),
            password_env: Some("P".into()),
            ca_file: Some("/ca".into()),
            client_cert: Some("/c".into()),
            client_key: Some("/k".into()),
            ..MqttClientConfig::with_url("mqtt://h")
        };
        let upstream = UpstreamConfig {
            topic_template: Some("{topic}".into()),
            sasl_mechanism: Some(SaslMechanism::Plain),
            compression_setting: Some(Compression::Zstd),
            client: client.clone(),
            uplink: UplinkConfig {
                bandwidth: Some(ByteSize::kib(64)),
                bandwidth_burst: Some(ByteSize::kib(64)),
                budget: Some(ByteSize::gib(2)),
                ..UplinkConfig::default()
            },
            ..UpstreamConfig::new("u", UpstreamKind::Mqtt)
        };
        let subscribe = MqttSubscribeConfig {
            client,
            ..MqttSubscribeConfig::new("mqtt://h", vec!["a".into()])
        };
        let keys = |v: toml::Table| v.keys().cloned().collect::<std::collections::BTreeSet<_>>();
        let listed = |own: &[&str]| {
            (own.iter().chain(mqtt_client::KEYS))
                .map(|k| k.to_string())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let printed = toml::Table::try_from(&upstream).expect("serialize");
        assert_eq!(keys(printed), listed(upstream::OWN_KEYS));
        let printed = toml::Table::try_from(&subscribe).expect("serialize");
        assert_eq!(keys(printed), listed(mqtt_subscribe::OWN_KEYS));
    }

    #[test]
    fn an_unknown_key_is_named_before_a_missing_one_and_the_known_keys_listed() {
        let err = parse("[[upstream]]\nprobe = 0\n").expect_err("must fail");
        let text = err.to_string();
        assert!(
            text.contains("unknown field `probe`, expected one of `name`, `kind`"),
            "{text}"
        );
        assert!(text.contains("`keep_alive`"), "{text}");
        let err = parse("mqtt_subscribe = [{ probe = 0 }]\n").expect_err("must fail");
        assert!(err.to_string().contains("unknown field `probe`"), "{err}");
    }

    #[test]
    fn the_flattened_client_keys_take_their_values_and_defaults() {
        let c = parse(
            "[[upstream]]\nname = \"a\"\nkind = \"mqtt\"\nurl = \"mqtt://h:1883\"\nkeep_alive = \"10s\"\n\
             [[mqtt_subscribe]]\nurl = \"mqtt://h:1884\"\ntopics = [\"a/#\"]\nprotocol = 4\n",
        )
        .expect("valid");
        let u = &c.upstream[0].client;
        assert_eq!(u.url, "mqtt://h:1883");
        assert_eq!(u.keep_alive, Duration::from_secs(10));
        assert_eq!((u.protocol, u.max_inflight), (5, 100));
        let s = &c.mqtt_subscribe[0];
        assert_eq!((s.client.protocol, s.qos), (4, 1));
        assert_eq!(s.client.keep_alive, Duration::from_secs(30));
        // And they print back under the same keys.
        let printed = toml::to_string(&c).expect("serialize");
        let again = parse(&printed).expect("the printed configuration parses");
        assert_eq!(again, c);
    }

    #[test]
    fn a_bad_size_unit_is_a_parse_error() {
        let err = parse("[journal]\nmax_size = \"lots\"\n").expect_err("must fail");
        assert!(err.to_string().contains("max_size"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example documents every key; it must stay loadable and match the code.
    #[test]
    fn the_shipped_example_config_is_valid_and_its_stated_defaults_are_the_real_ones() {
        // The stages' checks of the same file are in `crate::validate`'s tests.
        let c = Config::from_toml_with(
            include_str!("../../deploy/tidegate.toml"),
            Path::new("deploy/tidegate.toml"),
            |_| Vec::new(),
        )
        .expect("deploy/tidegate.toml is valid");
        let d = Config::default();
        assert_eq!(c.journal.max_size, d.journal.max_size);
        assert_eq!(c.journal.on_full, d.journal.on_full);
        assert_eq!(c.journal.commit_interval, d.journal.commit_interval);
        assert_eq!(c.journal.commit_max_records, d.journal.commit_max_records);
        assert_eq!(c.mqtt.max_packet, d.mqtt.max_packet);
        assert_eq!(c.mqtt.max_connections, d.mqtt.max_connections);
        assert_eq!(c.mqtt.max_inflight, d.mqtt.max_inflight);
        assert_eq!(c.mqtt.connect_timeout, d.mqtt.connect_timeout);
        assert_eq!(c.mqtt.local_subscriptions, d.mqtt.local_subscriptions);
        assert_eq!(c.mqtt.auth, d.mqtt.auth);
        assert_eq!(
            c.mqtt.tls_require_client_cert,
            d.mqtt.tls_require_client_cert
        );
        assert_eq!(c.http, d.http);
        let u = &c.upstream[0];
        assert_eq!(u.max_batch, upstream::default_max_batch());
        assert_eq!(u.linger, upstream::default_linger());
        assert_eq!(u.compression(), upstream::default_compression());
        assert_eq!(u.partitions, upstream::default_partitions());
        assert_eq!(u.request_timeout, upstream::default_request_timeout());
        assert_eq!(u.backoff_initial, upstream::default_backoff_initial());
        assert_eq!(u.backoff_max, upstream::default_backoff_max());
        let fresh = UpstreamConfig::new("x", UpstreamKind::Kafka);
        assert_eq!(u.tls, fresh.tls);
        assert_eq!(u.sasl_mechanism, fresh.sasl_mechanism);
    }
}

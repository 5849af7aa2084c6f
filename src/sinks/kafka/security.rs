//! TLS and SASL for a Kafka upstream: the config keys, their validation, and what the sink
//! hands rskafka (a rustls `ClientConfig`, a `SaslConfig`).
//!
//! Two orthogonal keys instead of Kafka's `security.protocol`: `tls = true|false` and
//! `sasl_mechanism = "plain" | "scram-sha-256" | "scram-sha-512"` (unset: no SASL). Kafka's
//! four protocols are the four combinations (`SSL` = `tls` alone, `SASL_SSL` = both, …; the
//! README has the table), and no combination is contradictory: with `security_protocol`, a
//! `SASL_SSL` without a mechanism or a `PLAINTEXT` with one would need rules of their own.
//! The TLS file keys (`ca_file`, `client_cert`, `client_key`) and the credential keys
//! (`username`, `password_file`, `password_env`) are the ones `kind = "mqtt"` uses.
//!
//! Files and the password are read at every connect, not at start: a CA bundle renewed or a
//! password file rotated on disk is picked up by the next connect, and a missing file is an
//! upstream error (the readings stay in the journal) rather than a daemon that won't start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::{Credentials, SaslConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use crate::config::secret::{PasswordError, PasswordSource};
pub use crate::config::SaslMechanism;
use crate::config::UpstreamConfig;
use crate::tls::SYSTEM_CA_BUNDLES;

/// Checks the TLS and SASL keys of an `[[upstream]]` with `kind = "kafka"`, pushing every
/// problem keyed `{key}.field` with what to do about it.
pub fn validate(u: &UpstreamConfig, key: &str, p: &mut Vec<String>) {
    let password = u.client.password_file.is_some() || u.client.password_env.is_some();
    match u.sasl_mechanism {
        Some(m) => {
            if u.client.username.as_deref().is_none_or(str::is_empty) {
                p.push(format!(
                    "{key}.username: sasl_mechanism = \"{}\" needs the SASL user name",
                    mechanism_key(m)
                ));
            }
            if !password {
                p.push(format!(
                    "{key}.password_file: sasl_mechanism = \"{}\" needs a password; set password_file (a file holding it) or password_env (a variable holding it)",
                    mechanism_key(m)
                ));
            }
        }
        None => {
            for (name, set) in [
                ("username", u.client.username.is_some()),
                ("password_file", u.client.password_file.is_some()),
                ("password_env", u.client.password_env.is_some()),
            ] {
                if set {
                    p.push(format!(
                        "{key}.{name}: only used for SASL; set sasl_mechanism (\"plain\", \"scram-sha-256\" or \"scram-sha-512\") or remove {name}"
                    ));
                }
            }
        }
    }
    if u.client.password_file.is_some() && u.client.password_env.is_some() {
        p.push(format!(
            "{key}.password_file: set password_file or password_env, not both"
        ));
    }
    if u.client.password_env.as_deref().is_some_and(str::is_empty) {
        p.push(format!("{key}.password_env: must name a variable"));
    }
    match (&u.client.client_cert, &u.client.client_key) {
        (Some(_), None) => p.push(format!(
            "{key}.client_key: client_cert is set, so client_key (its PEM private key) is needed too"
        )),
        (None, Some(_)) => p.push(format!(
            "{key}.client_cert: client_key is set, so client_cert (its PEM certificate) is needed too"
        )),
        _ => {}
    }
    if !u.tls {
        for (name, set) in [
            ("ca_file", u.client.ca_file.is_some()),
            ("client_cert", u.client.client_cert.is_some()),
            ("client_key", u.client.client_key.is_some()),
        ] {
            if set {
                p.push(format!(
                    "{key}.{name}: only used over TLS; set tls = true (the brokers' TLS listener) or remove {name}"
                ));
            }
        }
    }
}

/// The config spelling of a mechanism, for messages about the config.
fn mechanism_key(m: SaslMechanism) -> &'static str {
    match m {
        SaslMechanism::Plain => "plain",
        SaslMechanism::ScramSha256 => "scram-sha-256",
        SaslMechanism::ScramSha512 => "scram-sha-512",
    }
}

/// The TLS and SASL settings of one Kafka upstream, as validated config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// `None`: no SASL.
    pub sasl: Option<SaslSettings>,
}

/// The PEM files of a TLS upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA(s) to trust; the system's bundle when `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain) and its private key, for brokers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// SASL mechanism and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: PasswordSource,
}

/// A file or variable a connect needs could not be used. Names the key, the path and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    #[error("cannot read {key} {}: {source}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {} holds no PEM {what}{}", path.display(), detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoPem {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
        detail: Option<String>,
    },
    #[error("ca_file {}: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client_cert / client_key: {0} (is client_key the key of client_cert?)")]
    BadClientCert(rustls::Error),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("tls = true without ca_file, and no system CA bundle found (looked in {}); set ca_file", SYSTEM_CA_BUNDLES.join(", "))]
    NoSystemCa,
}

impl Security {
    /// The TLS and SASL settings of a validated `kind = "kafka"` upstream.
    pub fn from_config(u: &UpstreamConfig) -> Security {
        let tls = u.tls.then(|| TlsFiles {
            ca_file: u.client.ca_file.clone(),
            client_cert: u
                .client
                .client_cert
                .clone()
                .zip(u.client.client_key.clone()),
        });
        let password = u.client.password_source();
        // Validation makes mechanism, user name and password come together.
        let sasl = match (u.sasl_mechanism, &u.client.username, password) {
            (Some(mechanism), Some(username), Some(password)) => Some(SaslSettings {
                mechanism,
                username: username.clone(),
                password,
            }),
            _ => None,
        };
        Security { tls, sasl }
    }

    /// What the connection is, for the log: "plaintext", "TLS", "SASL SCRAM-SHA-512 over TLS", ….
    pub fn describe(&self) -> String {
        match (&self.tls, &self.sasl) {
            (None, None) => "plaintext".to_owned(),
            (Some(_), None) => "TLS".to_owned(),
            (None, Some(s)) => format!("SASL {} without TLS", s.mechanism),
            (Some(_), Some(s)) => format!("SASL {} over TLS", s.mechanism),
        }
    }

    /// The rustls client config for a TLS upstream (files read now), `None` without TLS.
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, SecurityError> {
        self.tls.as_ref().map(TlsFiles::client_config).transpose()
    }

    /// The rskafka SASL config (password read now), `None` without SASL.
    pub fn sasl_config(&self) -> Result<Option<SaslConfig>, SecurityError> {
        let Some(s) = &self.sasl else {
            return Ok(None);
        };
        let credentials = Credentials::new(s.username.clone(), s.password.read()?);
        Ok(Some(match s.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        }))
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::File {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; an error when there is none or the PEM is broken.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    crate::tls::certificates(&read_file(key, path)?).map_err(|e| SecurityError::NoPem {
        key,
        path: path.to_owned(),
        what: "certificate",
        detail: e.detail(),
    })
}

impl TlsFiles {
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in certificates("ca_file", path)? {
                    roots.add(cert).map_err(|source| SecurityError::BadCa {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
            None => roots = crate::tls::system_roots().ok_or(SecurityError::NoSystemCa)?,
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates("client_cert", cert)?;
                let key = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(SecurityError::BadClientCert)?
            }
        };
        Ok(Arc::new(config))
    }
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    crate::tls::private_key(&read_file("client_key", path)?).map_err(|e| SecurityError::NoPem {
        key: "client_key",
        path: path.to_owned(),
        what: "private key (PKCS#8, PKCS#1 or SEC1)",
        detail: e.detail(),
    })
}

/// Why a TLS handshake with `broker` fails, if it does: a fresh connection and handshake,
/// made only after rskafka failed to connect (rskafka keeps the cause as text only). `None`
/// when the handshake succeeds, or TCP itself fails (then rskafka's own error says it).
pub async fn handshake_failure(
    broker: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Option<String> {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = match ServerName::try_from(host.to_owned()) {
        Ok(name) => name,
        Err(e) => return Some(format!("{host:?} is not a valid TLS server name: {e}")),
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(broker).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match connector.connect(name, tcp).await {
            Ok(_) => None,
            Err(e) => Some(
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => tls.to_string(),
                    // Not a TLS verdict: the peer closed or reset (a plaintext listener often
                    // does when sent a ClientHello).
                    None => format!("{e} (is {broker} a TLS listener?)"),
                },
            ),
        }
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, MqttClientConfig, UpstreamKind};

    fn kafka() -> UpstreamConfig {
        UpstreamConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            topic: "t".into(),
            ..UpstreamConfig::new("cloud", UpstreamKind::Kafka)
        }
    }

    /// Parses with config's own checks and this module's (`crate::validate` runs all).
    fn checked(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with(text, Path::new("t.toml"), |c| {
            let mut p = Vec::new();
            for (i, u) in c.upstream.iter().enumerate() {
                if u.kind == UpstreamKind::Kafka {
                    validate(u, &format!("upstream[{i}]"), &mut p);
                }
            }
            p
        })
    }

    fn problems(u: &UpstreamConfig) -> Vec<String> {
        let mut p = Vec::new();
        validate(u, "upstream[0]", &mut p);
        p
    }

    #[test]
    fn plaintext_tls_and_sasl_over_tls_are_valid() {
        assert!(problems(&kafka()).is_empty());
        let tls = UpstreamConfig {
            tls: true,
            client: MqttClientConfig {
                ca_file: Some("/etc/tidegate/ca.pem".into()),
                client_cert: Some("/etc/tidegate/gw.pem".into()),
                client_key: Some("/etc/tidegate/gw.key".into()),
                ..MqttClientConfig::default()
            },
            ..kafka()
        };
        assert!(problems(&tls).is_empty(), "{:?}", problems(&tls));
        let sasl = UpstreamConfig {
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            client: MqttClientConfig {
                username: Some("gw".into()),
                password_env: Some("TIDEGATE_KAFKA_PASSWORD".into()),
                ..tls.client.clone()
            },
            ..tls
        };
        assert!(problems(&sasl).is_empty(), "{:?}", problems(&sasl));
    }

    #[test]
    fn sasl_without_user_or_password_names_the_missing_key() {
        let u = UpstreamConfig {
            sasl_mechanism: Some(SaslMechanism::Plain),
            ..kafka()
        };
        let p = problems(&u);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("upstream[0].username: sasl_mechanism = \"plain\" needs"),
            "{p:?}"
        );
        assert!(p[1].starts_with("upstream[0].password_file: "), "{p:?}");
        assert!(p[1].contains("password_env"), "{p:?}");
    }

    #[test]
    fn credentials_without_a_mechanism_say_to_set_one() {
        let u = UpstreamConfig {
            client: MqttClientConfig {
                username: Some("gw".into()),
                password_file: Some("/run/secret".into()),
                ..MqttClientConfig::default()
            },
            ..kafka()
        };
        let p = problems(&u);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("upstream[0].username: only used for SASL; set sasl_mechanism"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("upstream[0].password_file: only used for SASL"),
            "{p:?}"
        );
    }

    #[test]
    fn both_password_sources_or_an_empty_variable_are_refused() {
        let u = UpstreamConfig {
            sasl_mechanism: Some(SaslMechanism::ScramSha256),
            client: MqttClientConfig {
                username: Some("gw".into()),
                password_file: Some("/run/secret".into()),
                password_env: Some(String::new()),
                ..MqttClientConfig::default()
            },
            ..kafka()
        };
        let p = problems(&u);
        assert!(
            p.iter()
                .any(|m| m
                    == "upstream[0].password_file: set password_file or password_env, not both"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m == "upstream[0].password_env: must name a variable"),
            "{p:?}"
        );
    }

    #[test]
    fn a_client_cert_needs_its_key_and_tls_files_need_tls() {
        let u = UpstreamConfig {
            tls: true,
            client: MqttClientConfig {
                client_cert: Some("/c.pem".into()),
                ..MqttClientConfig::default()
            },
            ..kafka()
        };
        assert_eq!(
            problems(&u),
            ["upstream[0].client_key: client_cert is set, so client_key (its PEM private key) is needed too"]
        );
        let u = UpstreamConfig {
            client: MqttClientConfig {
                ca_file: Some("/ca.pem".into()),
                ..MqttClientConfig::default()
            },
            ..kafka()
        };
        assert_eq!(
            problems(&u),
            ["upstream[0].ca_file: only used over TLS; set tls = true (the brokers' TLS listener) or remove ca_file"]
        );
    }

    #[test]
    fn the_config_file_reports_kafka_security_problems_with_their_keys() {
        let err = checked(
            "[[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"k:9093\"]\ntopic = \"t\"\nsasl_mechanism = \"scram-sha-512\"\nca_file = \"/ca.pem\"\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "upstream[0].username: sasl_mechanism = \"scram-sha-512\" needs",
            "upstream[0].password_file: sasl_mechanism",
            "upstream[0].ca_file: only used over TLS; set tls = true",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let err = checked(
            "[[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"k:9093\"]\ntopic = \"t\"\nsasl_mechanism = \"gssapi\"\n",
        )
        .expect_err("unknown mechanism");
        assert!(err.to_string().contains("sasl_mechanism"), "{err}");
    }

    #[test]
    fn kafka_only_keys_are_refused_on_an_mqtt_upstream() {
        let err = checked(
            "[[upstream]]\nname = \"m\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntls = true\nsasl_mechanism = \"plain\"\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("upstream[0].tls: only for kind = \"kafka\""),
            "{text}"
        );
        assert!(
            text.contains("upstream[0].sasl_mechanism: only for kind = \"kafka\""),
            "{text}"
        );
    }

    #[test]
    fn each_mechanism_maps_to_its_rskafka_sasl_config_with_the_secret_from_file_or_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").expect("write password");
        let var = "TIDEGATE_TEST_KAFKA_SASL_PASSWORD_7f3a";
        // No other test reads or writes this variable.
        std::env::set_var(var, "from-env");
        for (mechanism, source, want) in [
            (
                SaslMechanism::Plain,
                PasswordSource::File(file.clone()),
                "from-file",
            ),
            (
                SaslMechanism::ScramSha256,
                PasswordSource::Env(var.into()),
                "from-env",
            ),
            (
                SaslMechanism::ScramSha512,
                PasswordSource::File(file.clone()),
                "from-file",
            ),
        ] {
            let s = Security {
                tls: None,
                sasl: Some(SaslSettings {
                    mechanism,
                    username: "gw".into(),
                    password: source,
                }),
            };
            let (variant, c) = match s.sasl_config().expect("reads the password") {
                Some(SaslConfig::Plain(c)) => (SaslMechanism::Plain, c),
                Some(SaslConfig::ScramSha256(c)) => (SaslMechanism::ScramSha256, c),
                Some(SaslConfig::ScramSha512(c)) => (SaslMechanism::ScramSha512, c),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(variant, mechanism);
            assert_eq!((c.username.as_str(), c.password.as_str()), ("gw", want));
        }
        let missing = Security {
            tls: None,
            sasl: Some(SaslSettings {
                mechanism: SaslMechanism::Plain,
                username: "gw".into(),
                password: PasswordSource::Env("TIDEGATE_TEST_UNSET_VARIABLE_91c2".into()),
            }),
        };
        let e = missing
            .sasl_config()
            .expect_err("unset variable")
            .to_string();
        assert!(
            e.contains("TIDEGATE_TEST_UNSET_VARIABLE_91c2 (password_env) is not set"),
            "{e}"
        );
    }

    #[test]
    fn from_config_carries_files_and_credentials() {
        let u = UpstreamConfig {
            tls: true,
            sasl_mechanism: Some(SaslMechanism::Plain),
            client: MqttClientConfig {
                ca_file: Some("/ca.pem".into()),
                username: Some("gw".into()),
                password_file: Some("/run/pw".into()),
                ..MqttClientConfig::default()
            },
            ..kafka()
        };
        let s = Security::from_config(&u);
        assert_eq!(
            s.tls.as_ref().and_then(|t| t.ca_file.clone()),
            Some(PathBuf::from("/ca.pem"))
        );
        assert_eq!(
            s.sasl.map(|s| (s.mechanism, s.username, s.password)),
            Some((
                SaslMechanism::Plain,
                "gw".into(),
                PasswordSource::File("/run/pw".into())
            ))
        );
        assert_eq!(Security::from_config(&kafka()), Security::default());
    }

    #[test]
    fn a_missing_or_malformed_pem_file_names_its_key_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let tls = |ca: &Path| Security {
            tls: Some(TlsFiles {
                ca_file: Some(ca.to_owned()),
                client_cert: None,
            }),
            sasl: None,
        };
        let e = tls(&missing).tls_config().expect_err("missing").to_string();
        assert!(
            e.starts_with(&format!("cannot read ca_file {}", missing.display())),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = tls(&junk).tls_config().expect_err("junk").to_string();
        assert!(
            e.starts_with(&format!(
                "ca_file {} holds no PEM certificate",
                junk.display()
            )),
            "{e}"
        );
    }
}

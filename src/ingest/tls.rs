//! The device listener's TLS (`mqtt.tls_listen`): server certificate, and optional client
//! certificates that name the device.
//!
//! This module owns reading the PEM files and the rule that turns a verified client
//! certificate into a device name: its subject CN, else its first DNS SAN. A certificate
//! is only ever read for a name after rustls has verified it against `mqtt.tls_client_ca`,
//! so a name on a certificate from another CA is never seen by [`super::auth`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::config::MqttConfig;

/// Why the TLS listener cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{key}: cannot read PEM from {path}: {reason} ({hint})")]
    Pem {
        key: &'static str,
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },
    #[error("mqtt.tls_cert / mqtt.tls_key: {0} (does the key belong to the certificate?)")]
    Config(#[source] tokio_rustls::rustls::Error),
    #[error("mqtt.tls_cert / mqtt.tls_key: {0} (does the key belong to the certificate?)")]
    ClientVerifier(#[source] tokio_rustls::rustls::server::VerifierBuilderError),
}

/// Accepts TLS connections and names the device of a verified client certificate.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl Acceptor {
    /// Builds the acceptor from `[mqtt]`; `None` when `tls_listen` is not set.
    pub fn from_config(m: &MqttConfig) -> Result<Option<Acceptor>, TlsError> {
        let (Some(_), Some(cert), Some(key)) = (m.tls_listen, &m.tls_cert, &m.tls_key) else {
            return Ok(None);
        };
        let chain = certs("mqtt.tls_cert", cert)?;
        let hint = "a PEM private key (PKCS#8, PKCS#1 or SEC1) readable by the service";
        let key = crate::tls::private_key(&read_pem("mqtt.tls_key", key, hint)?).map_err(|e| {
            TlsError::Pem {
                key: "mqtt.tls_key",
                path: key.clone(),
                reason: match e {
                    crate::tls::PemError::Missing => "no private key in the file".to_owned(),
                    e => e.to_string(),
                },
                hint,
            }
        })?;
        let builder = ServerConfig::builder();
        let builder = match &m.tls_client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs("mqtt.tls_client_ca", ca)? {
                    roots.add(c).map_err(|e| TlsError::Pem {
                        key: "mqtt.tls_client_ca",
                        path: ca.clone(),
                        reason: e.to_string(),
                        hint: "PEM CA certificates",
                    })?;
                }
                let v = WebPkiClientVerifier::builder(Arc::new(roots));
                let v = if m.tls_require_client_cert {
                    v.build()
                } else {
                    v.allow_unauthenticated().build()
                }
                .map_err(TlsError::ClientVerifier)?;
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        Ok(Some(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }))
    }

    /// The handshake; with a verified client certificate, the device it names.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let stream = self.inner.accept(stream).await?;
        let name = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            None => None,
            Some(leaf) => Some(device_name(leaf).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "client certificate names no device (no CN and no DNS SAN)",
                )
            })?),
        };
        Ok((stream, name))
    }
}

/// The PEM file at `path`, read for `key` (errors name the key, the path and `hint`).
fn read_pem(key: &'static str, path: &Path, hint: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Pem {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
        hint,
    })
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let hint = "PEM `CERTIFICATE` blocks readable by the service";
    crate::tls::certificates(&read_pem(key, path, hint)?).map_err(|e| TlsError::Pem {
        key,
        path: path.to_owned(),
        reason: match e {
            crate::tls::PemError::Missing => "no certificate in the file".to_owned(),
            e => e.to_string(),
        },
        hint,
    })
}

/// The device a certificate names: its subject CN, else its first DNS SAN.
pub fn device_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = parsed.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) if !d.is_empty() => Some((*d).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, sans: Vec<String>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(sans).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn a_certificate_names_its_device_by_cn_else_first_dns_san() {
        assert_eq!(
            device_name(&cert(Some("wt-1"), vec!["other.example".into()])).as_deref(),
            Some("wt-1")
        );
        assert_eq!(
            device_name(&cert(None, vec!["wt-2.site4".into(), "x.example".into()])).as_deref(),
            Some("wt-2.site4")
        );
        assert_eq!(device_name(&cert(None, vec!["127.0.0.1".into()])), None);
    }
}

//! TLS for the devices' MQTT connections (rustls, through rumqttc).
//!
//! The files are read and checked once, by [`TlsOptions::load`], into one rustls client
//! config that every device's connection shares through an `Arc`: a fleet of 10,000 devices
//! reads the CA file once, not 10,000 times on every reconnect, and a missing file or a bad
//! PEM is an [`FleetError::InvalidOptions`] naming the file before any device starts, not
//! 10,000 identical connection errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use rumqttc::tokio_rustls::rustls::client::WebPkiServerVerifier;
use rumqttc::tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::FleetError;

/// Where the TLS material of a fleet is, as given (e.g. on the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// PEM file with the certificate(s) of the CA(s) the broker's certificate must chain
    /// to. Only these are trusted: the system's roots are not, so a test CA cannot be
    /// bypassed by accident.
    pub ca_file: PathBuf,
    /// PEM file with the device's certificate (chain), for brokers that require client
    /// certificates. Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// Check the broker's certificate against this name instead of the host of
    /// `FleetOptions::broker`: for a broker reached by an IP address whose certificate only
    /// names its host name. (The TLS SNI extension still carries the broker's host.)
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Trusts the CAs in `ca_file`; no client certificate, the broker's host as server name.
    pub fn new(ca_file: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            ca_file: ca_file.into(),
            client_cert: None,
            client_key: None,
            server_name: None,
        }
    }

    /// Presents `cert` (with its private key `key`) to brokers that ask for a client
    /// certificate.
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Checks the broker's certificate against `name` (see [`TlsFiles::server_name`]).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// TLS for every device of a fleet (`FleetOptions::tls`): [`TlsFiles`], loaded and checked.
/// Cloning it is cheap, the rustls config is shared.
#[derive(Clone)]
pub struct TlsOptions {
    /// What it was loaded from, for `Debug` and [`TlsOptions::files`].
    files: TlsFiles,
    /// The config every connection uses.
    config: Arc<ClientConfig>,
}

impl TlsOptions {
    /// Reads and checks the files: the CA file must hold at least one usable certificate,
    /// a client certificate needs its key and vice versa, and the key must be one rustls
    /// can sign with, and a server name must be a DNS name or an IP address. Any failure is
    /// an [`FleetError::InvalidOptions`] naming the file (or the server name).
    pub fn load(files: TlsFiles) -> Result<TlsOptions, FleetError> {
        let mut roots = RootCertStore::empty();
        for (i, cert) in read_certs("CA file", &files.ca_file)?
            .into_iter()
            .enumerate()
        {
            roots.add(cert).map_err(|e| {
                invalid(
                    "CA file",
                    &files.ca_file,
                    format_args!("certificate {} is not a usable CA certificate: {e}", i + 1),
                )
            })?;
        }
        let builder = match &files.server_name {
            None => ClientConfig::builder().with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| {
                    FleetError::InvalidOptions(format!("TLS server name {name:?}: {e}"))
                })?;
                let inner = WebPkiServerVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| invalid("CA file", &files.ca_file, e))?;
                ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(FixedServerName { name, inner }))
            }
        };
        let config = match (&files.client_cert, &files.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(invalid(
                    "client certificate",
                    cert,
                    "has no client key (set one)",
                ))
            }
            (None, Some(key)) => {
                return Err(invalid(
                    "client key",
                    key,
                    "has no client certificate (set one)",
                ))
            }
            (Some(cert), Some(key_file)) => {
                let chain = read_certs("client certificate", cert)?;
                let key = read_key(key_file)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid("client key", key_file, e))?
            }
        };
        Ok(TlsOptions {
            files,
            config: Arc::new(config),
        })
    }

    /// What it was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The transport of one device's connection; shares the config.
    pub(crate) fn transport(&self) -> Transport {
        Transport::Tls(TlsConfiguration::Rustls(self.config.clone()))
    }
}

impl fmt::Debug for TlsOptions {
    /// The files: the config holds nothing more a reader of a log would want.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsOptions").field(&self.files).finish()
    }
}

/// `TLS <what> <path>: <why>`.
fn invalid(what: &str, path: &Path, why: impl fmt::Display) -> FleetError {
    FleetError::InvalidOptions(format!("TLS {what} {}: {why}", path.display()))
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|e| invalid(what, path, format_args!("cannot be read: {e}")))
}

/// Every certificate in a PEM file; at least one.
fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, FleetError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format_args!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FleetError> {
    let bytes = read("client key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid("client key", path, "holds no PEM private key"),
        e => invalid("client key", path, format_args!("is not valid PEM: {e}")),
    })
}

/// The WebPKI verifier, checking the certificate against a configured name rather than
/// the one rumqttc derives from the broker's host (rumqttc has no setting for that).
/// Everything else — chain, validity, signatures — is the WebPKI verifier's.
#[derive(Debug)]
struct FixedServerName {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<TlsOptions, FleetError>) -> String {
        match r {
            Ok(o) => panic!("loaded: {o:?}"),
            Err(FleetError::InvalidOptions(m)) => m,
            Err(e) => panic!("not InvalidOptions: {e}"),
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("no-such-ca.pem");
        let m = message(TlsOptions::load(TlsFiles::new(&ca)));
        assert!(m.contains(&ca.display().to_string()), "{m}");
        assert!(m.contains("cannot be read"), "{m}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let m = message(TlsOptions::load(TlsFiles::new(&ca)));
        assert!(m.contains("ca.pem: holds no PEM certificate"), "{m}");
    }

    /// A self-signed CA certificate in `dir/ca.pem`.
    fn write_ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.pem()).expect("write");
        path
    }

    #[test]
    fn a_ca_file_loads_and_debug_shows_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write_ca(dir.path());
        let o =
            TlsOptions::load(TlsFiles::new(&ca).with_server_name("broker.example")).expect("loads");
        assert_eq!(o.files().ca_file, ca);
        assert!(format!("{o:?}").contains("broker.example"));
    }

    #[test]
    fn a_client_certificate_needs_a_key_and_a_key_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write_ca(dir.path());
        let mut files = TlsFiles::new(&ca);
        files.client_cert = Some(dir.path().join("client.pem"));
        let m = message(TlsOptions::load(files));
        assert!(m.contains("client.pem: has no client key"), "{m}");
        let mut files = TlsFiles::new(&ca);
        files.client_key = Some(dir.path().join("client.key"));
        let m = message(TlsOptions::load(files));
        assert!(m.contains("client.key: has no client certificate"), "{m}");
    }

    #[test]
    fn a_key_file_without_a_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write_ca(dir.path());
        let key = dir.path().join("client.key");
        // A certificate where the key should be: a mix-up of the two flags.
        std::fs::copy(&ca, &key).expect("copy");
        let m = message(TlsOptions::load(
            TlsFiles::new(&ca).with_client_cert(&ca, &key),
        ));
        assert!(m.contains("client.key: holds no PEM private key"), "{m}");
    }

    #[test]
    fn a_bad_server_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write_ca(dir.path());
        let m = message(TlsOptions::load(
            TlsFiles::new(&ca).with_server_name("not a name"),
        ));
        assert!(m.contains("TLS server name \"not a name\""), "{m}");
    }
}

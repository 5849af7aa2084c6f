//! TLS material shared by every TLS user (the MQTT client, the Kafka sink, the device
//! listener): where the system's CA bundle is, and PEM certificates and keys decoded into
//! rustls types. Reads no configuration and knows no stage.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where CA bundles usually are, for a TLS upstream without `ca_file` (Debian/Ubuntu,
/// RHEL, Alpine/BSD).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The PEM text of the first system CA bundle that can be read, if any.
pub fn system_ca_bundle() -> Option<Vec<u8>> {
    SYSTEM_CA_BUNDLES.iter().find_map(|p| std::fs::read(p).ok())
}

/// Why PEM text gave nothing usable. Callers add the key and path they read it for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// A PEM block is broken.
    #[error("{0}")]
    Malformed(#[source] std::io::Error),
    /// No block of the wanted kind in the text.
    #[error("none in the file")]
    Missing,
}

impl PemError {
    /// What to add after "holds no PEM …": the decoder's complaint, if there was one.
    pub fn detail(&self) -> Option<String> {
        match self {
            PemError::Malformed(e) => Some(e.to_string()),
            PemError::Missing => None,
        }
    }
}

/// Every certificate in `pem`; an error when there is none or a block is broken.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Malformed)?;
    if certs.is_empty() {
        return Err(PemError::Missing);
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    rustls_pemfile::private_key(&mut &*pem)
        .map_err(PemError::Malformed)?
        .ok_or(PemError::Missing)
}

/// A root store of every usable certificate of the system's CA bundle; `None` when there
/// is no bundle or nothing in it is usable. A bundle may hold a certificate webpki cannot
/// use; it is skipped rather than the whole bundle refused.
pub fn system_roots() -> Option<rustls::RootCertStore> {
    let pem = system_ca_bundle()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls_pemfile::certs(&mut pem.as_slice()).filter_map(Result::ok),
    );
    (!roots.is_empty()).then_some(roots)
}

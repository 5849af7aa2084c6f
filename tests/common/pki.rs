//! Test certificates, made by rcgen as PEM files in a temp dir, for every TLS test: the
//! MQTT bridge to Mosquitto, the Kafka upstream behind stunnel, and the device listener.
//!
//! Files: `ca.pem` (the test CA), `other-ca.pem` (a CA that signed nothing but
//! `other_ca` clients), `server.pem`/`server.key` (for 127.0.0.1, signed by the test CA)
//! and `<name>.pem`/`<name>.key` for each client asked for.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;

/// A client certificate to make: its file name, its CN, and whether `other-ca.pem` signs
/// it (a certificate the test CA does not vouch for).
pub struct Client<'a> {
    pub name: &'a str,
    pub cn: &'a str,
    pub other_ca: bool,
}

pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    /// The two CAs, the server certificate and `clients`.
    pub fn new(clients: &[Client<'_>]) -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write a PEM file")
        };
        let mut issuers = Vec::new();
        for name in ["ca", "other-ca"] {
            let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, format!("tidegate test {name}"));
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().expect("CA key");
            write(
                &format!("{name}.pem"),
                ca.self_signed(&key).expect("CA").pem(),
            );
            issuers.push(Issuer::new(ca, key));
        }
        let server = Client {
            name: "server",
            cn: "server",
            other_ca: false,
        };
        for (c, sans, usage) in std::iter::once((
            &server,
            vec!["127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ))
        .chain(
            clients
                .iter()
                .map(|c| (c, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)),
        ) {
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, c.cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert = params
                .signed_by(&key, &issuers[usize::from(c.other_ca)])
                .expect("sign");
            write(&format!("{}.pem", c.name), cert.pem());
            write(&format!("{}.key", c.name), key.serialize_pem());
        }
        TestPki { dir }
    }

    /// The two CAs, the server certificate and one client certificate from the test CA,
    /// `name.pem`/`name.key`, whose CN is `name`.
    pub fn with_client(name: &str) -> TestPki {
        TestPki::new(&[Client {
            name,
            cn: name,
            other_ca: false,
        }])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client config trusting `ca.pem`, presenting `client`'s certificate if given.
    pub fn client_config(&self, client: Option<&str>) -> Arc<ClientConfig> {
        let read = |name: &str| {
            std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
        };
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut read("ca.pem").as_slice()) {
            roots.add(cert.expect("PEM")).expect("a usable CA");
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        Arc::new(match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = rustls_pemfile::certs(&mut read(&format!("{name}.pem")).as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("PEM");
                let key = rustls_pemfile::private_key(&mut read(&format!("{name}.key")).as_slice())
                    .expect("PEM")
                    .expect("a key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client certificate and key match")
            }
        })
    }
}

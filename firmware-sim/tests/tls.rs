//! The fleet's TLS and passwords against a real broker (the test bed's Mosquitto on a free
//! loopback port), with certificates generated here by rcgen: a CA, a broker certificate
//! for `127.0.0.1` and `localhost`, a device certificate.
//!
//! Needs the `mosquitto` and `mosquitto_passwd` binaries: `scripts/test.sh` installs them
//! (or set `TIDEGATE_MOSQUITTO_BIN`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use firmware_sim::fleet::{FleetError, FleetOptions, FleetReport, Protocol, TlsFiles, TlsOptions};
use firmware_sim::testbed::{Mosquitto, MosquittoSetup, MosquittoTls};
use firmware_sim::{run_fleet, CancellationToken};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A CA that signs certificates into its own temp dir.
struct Ca {
    dir: TempDir,
    /// `DIR/ca.pem`.
    cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).expect("write the CA certificate");
        Ca {
            dir,
            cert: path,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (IP addresses or DNS names) with purpose `usage`, signed
    /// by this CA: `(DIR/NAME.pem, DIR/NAME.key)`.
    fn sign(
        &self,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write a certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write a key");
        (cert_path, key_path)
    }

    /// The broker's TLS listener: a certificate for `names`, client certificates checked
    /// against this CA.
    fn listener(&self, names: &[&str]) -> MosquittoTls {
        let (cert, key) = self.sign("broker", names, ExtendedKeyUsagePurpose::ServerAuth);
        MosquittoTls::new(&self.cert, cert, key)
    }

    /// A device certificate and key.
    fn device(&self) -> (PathBuf, PathBuf) {
        self.sign("device", &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn tls_broker(tls: MosquittoTls) -> Mosquitto {
    let mut setup = MosquittoSetup::default();
    setup.tls = Some(tls);
    Mosquitto::start_with(&setup).expect("mosquitto starts with TLS")
}

/// 3 devices × 20 QoS 1 readings, as fast as the window allows.
fn options(broker: &Mosquitto, protocol: Protocol, tls: Option<TlsOptions>) -> FleetOptions {
    let mut o = FleetOptions::default();
    o.broker = broker.addr();
    o.protocol = protocol;
    o.workload.devices = 3;
    o.workload.count = Some(20);
    o.workload.rate = None;
    o.tls = tls;
    o.drain_timeout = Duration::from_secs(20);
    o.reconnect_max = Duration::from_millis(500);
    o
}

/// Options for a fleet that is expected never to connect: it gives up quickly.
fn doomed(mut o: FleetOptions) -> FleetOptions {
    o.workload.count = Some(2);
    o.drain_timeout = Duration::from_secs(2);
    o.reconnect_max = Duration::from_millis(200);
    o
}

fn load(files: TlsFiles) -> TlsOptions {
    TlsOptions::load(files).expect("the TLS files load")
}

async fn run(o: FleetOptions) -> FleetReport {
    run_fleet(o, CancellationToken::new())
        .await
        .expect("the fleet runs")
}

fn assert_all_acked(r: &FleetReport) {
    assert_eq!(r.anomalies(), 0, "{r:#?}");
    assert_eq!(r.acked(), 3 * 20, "{r:#?}");
    assert!(r.all_acked(), "{r:#?}");
}

/// Every device failed every connection attempt, and its last error contains `why` (`""`
/// where the device cannot know why: a broker refusing its certificate just resets the
/// connection).
fn assert_never_connected(r: &FleetReport, why: &str) {
    assert_eq!(r.acked(), 0, "{r:#?}");
    assert!(!r.all_acked());
    for (id, d) in &r.devices {
        assert_eq!(d.connects, 0, "{id} connected: {d:#?}");
        assert!(d.connection_errors > 0, "{id}: {d:#?}");
        let error = d.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains(why),
            "{id}: last error {error:?} lacks {why:?}"
        );
    }
}

async fn every_reading_is_acknowledged_over_tls(protocol: Protocol) {
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["127.0.0.1", "localhost"]));
    let tls = load(TlsFiles::new(&ca.cert));
    assert_all_acked(&run(options(&broker, protocol, Some(tls))).await);
}

#[tokio::test]
async fn every_reading_is_acknowledged_over_tls_with_mqtt_3_1_1() {
    every_reading_is_acknowledged_over_tls(Protocol::V4).await;
}

#[tokio::test]
async fn every_reading_is_acknowledged_over_tls_with_mqtt_5() {
    every_reading_is_acknowledged_over_tls(Protocol::V5).await;
}

#[tokio::test]
async fn the_broker_host_name_is_checked_against_the_certificate() {
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["localhost"]));
    let tls = load(TlsFiles::new(&ca.cert));
    // By name: the certificate's.
    let mut o = options(&broker, Protocol::V4, Some(tls.clone()));
    o.broker = format!("localhost:{}", broker.port());
    assert_all_acked(&run(o).await);
    // By address: not in the certificate.
    let r = run(doomed(options(&broker, Protocol::V4, Some(tls)))).await;
    assert_never_connected(&r, "NotValidForName");
}

#[tokio::test]
async fn a_server_name_reaches_by_address_a_broker_whose_certificate_names_only_its_host() {
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["broker.test"]));
    let tls = load(TlsFiles::new(&ca.cert).with_server_name("broker.test"));
    for protocol in [Protocol::V4, Protocol::V5] {
        assert_all_acked(&run(options(&broker, protocol, Some(tls.clone()))).await);
    }
    // The configured name is the one checked, not any name the certificate has.
    let wrong = load(TlsFiles::new(&ca.cert).with_server_name("other.test"));
    let r = run(doomed(options(&broker, Protocol::V4, Some(wrong)))).await;
    assert_never_connected(&r, "NotValidForName");
}

/// A fleet with `tls` never connects to `broker`, whose log says why (`broker_says`): the
/// devices only see the connection end.
async fn refused_by_the_broker(
    broker: &Mosquitto,
    protocol: Protocol,
    tls: TlsOptions,
    broker_says: &str,
) {
    let r = run(doomed(options(broker, protocol, Some(tls)))).await;
    assert_never_connected(&r, "");
    let log = broker.log();
    assert!(log.contains(broker_says), "{log}");
}

#[tokio::test]
async fn a_listener_requiring_client_certificates_accepts_a_fleet_with_one_and_refuses_one_without()
{
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["127.0.0.1"]).require_client_cert());
    let (cert, key) = ca.device();
    let with_cert = load(TlsFiles::new(&ca.cert).with_client_cert(&cert, &key));
    for protocol in [Protocol::V4, Protocol::V5] {
        assert_all_acked(&run(options(&broker, protocol, Some(with_cert.clone()))).await);
    }
    // Without one the broker ends the handshake (with TLS 1.3, just after it from the
    // client's point of view): no device ever gets a CONNACK.
    let without = load(TlsFiles::new(&ca.cert));
    refused_by_the_broker(
        &broker,
        Protocol::V4,
        without,
        "peer did not return a certificate",
    )
    .await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_broker() {
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["127.0.0.1"]).require_client_cert());
    let stranger = Ca::new("another CA");
    let (cert, key) = stranger.device();
    let tls = load(TlsFiles::new(&ca.cert).with_client_cert(&cert, &key));
    refused_by_the_broker(&broker, Protocol::V5, tls, "certificate verify failed").await;
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_fails_every_connection_with_a_clear_error() {
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["127.0.0.1"]));
    let other = Ca::new("another CA");
    let tls = load(TlsFiles::new(&other.cert));
    for protocol in [Protocol::V4, Protocol::V5] {
        let r = run(doomed(options(&broker, protocol, Some(tls.clone())))).await;
        assert_never_connected(&r, "UnknownIssuer");
        assert_eq!(r.unacked(), 3 * 2, "{r:#?}");
    }
}

#[test]
fn a_missing_ca_file_is_invalid_options_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-ca.pem");
    match TlsOptions::load(TlsFiles::new(&missing)) {
        Err(FleetError::InvalidOptions(m)) => {
            assert!(m.contains(&missing.display().to_string()), "{m}");
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
}

#[test]
fn a_missing_ca_file_makes_the_cli_fail_before_any_device_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-ca.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "fleet",
            "--broker",
            "127.0.0.1:1",
            "--count",
            "1",
            "--ca-file",
        ])
        .arg(&missing)
        .output()
        .expect("firmware-sim runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn the_cli_runs_a_fleet_over_tls_with_a_client_certificate() {
    let ca = Ca::new("test CA");
    let broker = tls_broker(ca.listener(&["127.0.0.1"]).require_client_cert());
    let (cert, key) = ca.device();
    let out = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "fleet",
            "-n",
            "2",
            "--count",
            "5",
            "--rate",
            "max",
            "--mqtt-version",
            "5",
        ])
        .args(["--broker", &broker.addr()])
        .arg("--ca-file")
        .arg(&ca.cert)
        .arg("--client-cert")
        .arg(&cert)
        .arg("--client-key")
        .arg(&key)
        .output()
        .expect("firmware-sim runs");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker that knows user `turbine` (password `s3cret`), over plain TCP or TLS.
fn password_broker(tls: Option<MosquittoTls>) -> Mosquitto {
    let mut setup = MosquittoSetup::default();
    setup.users = vec![("turbine".into(), "s3cret".into())];
    setup.tls = tls;
    Mosquitto::start_with(&setup).expect("mosquitto starts with a password file")
}

fn with_credentials(mut o: FleetOptions, user: &str, password: &str) -> FleetOptions {
    o.credentials = Some((user.into(), password.into()));
    o
}

#[tokio::test]
async fn a_password_file_admits_the_right_credentials_and_refuses_others() {
    let broker = password_broker(None);
    for protocol in [Protocol::V4, Protocol::V5] {
        let o = with_credentials(options(&broker, protocol, None), "turbine", "s3cret");
        assert_all_acked(&run(o).await);
    }
    // MQTT 3.1.1 says "not authorized" (CONNACK return code 5), MQTT 5 "bad user name or
    // password" (reason 0x86) or "not authorized" (0x87); either way, refused.
    for protocol in [Protocol::V4, Protocol::V5] {
        let wrong = with_credentials(options(&broker, protocol, None), "turbine", "wrong");
        assert_never_connected(&run(doomed(wrong)).await, "Connection refused");
        let anonymous = options(&broker, protocol, None);
        assert_never_connected(&run(doomed(anonymous)).await, "Connection refused");
    }
}

#[tokio::test]
async fn credentials_travel_over_tls() {
    let ca = Ca::new("test CA");
    let broker = password_broker(Some(ca.listener(&["127.0.0.1"])));
    let tls = load(TlsFiles::new(&ca.cert));
    let o = with_credentials(
        options(&broker, Protocol::V5, Some(tls)),
        "turbine",
        "s3cret",
    );
    assert_all_acked(&run(o).await);
}

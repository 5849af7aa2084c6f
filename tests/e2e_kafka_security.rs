//! End to end over a secured Kafka: simulated turbines → the real `tidegate` binary → a real
//! Kafka-protocol broker (Tansu), all on loopback.
//!
//! TLS: Tansu listens in plaintext on one port and advertises another, where stunnel
//! terminates TLS with a certificate made here by rcgen and forwards to Tansu. Every
//! connection a client makes after the bootstrap goes to the advertised port, so every
//! byte tidegate (and the verifier) exchanges with the cluster crosses TLS.
//!
//! SASL: Tansu 0.6 cannot complete a SASL login in a test. Without `--authentication` it
//! answers every SaslHandshake with UNSUPPORTED_SASL_MECHANISM; with it, it offers no PLAIN
//! (its SASL server answers NoSharedMechanism) and checks SCRAM against users made with
//! `tansu user create`, a command it then refuses as not authenticated (and the in-memory
//! store does not survive a restart to switch authentication on afterwards); a SCRAM login
//! for a user it does not know ends, from one run to the next, in an early EOF or in no
//! answer at all. So what is tested here against the real broker is a login it refuses
//! deterministically, the mechanism not being enabled (as on a cluster whose listener has
//! no SASL): a clear, fatal error naming the keys to check, and nothing delivered. The
//! mapping of the keys to rskafka's SASL config, and the password read from file or
//! environment, are unit tests (src/sinks/kafka/security.rs).
//!
//! stunnel: `TIDEGATE_STUNNEL_BIN`, else `stunnel4` / `stunnel` on `PATH` or in `/usr/bin`
//! (scripts/test.sh installs Debian's stunnel4).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, Gateway};
use firmware_sim::testbed::{tansu_bin, Process};
use firmware_sim::verify::wait_until_complete_with;
use firmware_sim::{run_fleet, CancellationToken, FleetOptions, FleetReport, Qos};
use rskafka::client::ClientBuilder;

/// Time allowed for every acknowledged reading to become readable in Kafka.
const ARRIVAL: Duration = Duration::from_secs(90);
/// How long a broker or stunnel may take to listen.
const START: Duration = Duration::from_secs(30);

/// Test certificates ([`common::pki`]): the broker's `server.pem` for 127.0.0.1, a
/// `client` certificate, and `other-ca.pem`, a CA that signed nothing the broker has.
struct Certs(common::pki::TestPki);

impl Certs {
    fn new() -> Certs {
        Certs(common::pki::TestPki::new(&[common::pki::Client {
            name: "client",
            cn: "client",
            other_ca: false,
        }]))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path(name)
    }

    /// A rustls client config trusting `ca.pem`, for the verifier.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.0.client_config(None)
    }

    /// [`Certs::client_config`] presenting `client.pem`.
    fn client_config_with_cert(&self) -> Arc<rustls::ClientConfig> {
        self.0.client_config(Some("client"))
    }
}

/// The stunnel binary: `TIDEGATE_STUNNEL_BIN`, else `stunnel4` or `stunnel` on `PATH` or in
/// `/usr/bin`. Fails the test with what to do when there is none.
fn stunnel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_STUNNEL_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TIDEGATE_STUNNEL_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/bin".into());
    dirs.iter()
        .flat_map(|d| [d.join("stunnel4"), d.join("stunnel")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "stunnel is not installed: the Kafka TLS tests put it in front of Tansu. Run \
                 scripts/test.sh (it installs Debian's stunnel4), or `apt-get install stunnel4`, \
                 or set TIDEGATE_STUNNEL_BIN"
            )
        })
}

/// Tansu on a plaintext loopback port, advertising the port where stunnel serves TLS.
struct TlsKafka {
    /// Declared first: killed before the directory holding their config goes.
    _stunnel: Process,
    _tansu: Process,
    tls_port: u16,
    _dir: tempfile::TempDir,
}

impl TlsKafka {
    /// `client_certs`: stunnel refuses clients without a certificate signed by `ca.pem`.
    fn start(certs: &Certs, client_certs: bool) -> TlsKafka {
        let dir = tempfile::tempdir().expect("tempdir");
        let (plain_port, tls_port) = (free_port(), free_port());
        let mut tansu = Command::new(tansu_bin().unwrap_or_else(|e| panic!("{e}")));
        tansu
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{plain_port}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{tls_port}"),
            ])
            .args(["--storage-engine", "memory://tansu/"]);
        let tansu = Process::start(
            "tansu",
            tansu,
            plain_port,
            dir.path().join("tansu.log"),
            START,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let conf = dir.path().join("stunnel.conf");
        let mut text = format!(
            "foreground = yes\npid =\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain_port}\ncert = {}\nkey = {}\n",
            certs.path("server.pem").display(),
            certs.path("server.key").display()
        );
        if client_certs {
            text.push_str(&format!(
                "CAfile = {}\nrequireCert = yes\nverifyChain = yes\n",
                certs.path("ca.pem").display()
            ));
        }
        std::fs::write(&conf, text).expect("write stunnel.conf");
        let mut stunnel = Command::new(stunnel_bin());
        stunnel.arg(&conf);
        let stunnel = Process::start(
            "stunnel",
            stunnel,
            tls_port,
            dir.path().join("stunnel.log"),
            START,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        TlsKafka {
            _stunnel: stunnel,
            _tansu: tansu,
            tls_port,
            _dir: dir,
        }
    }

    fn brokers(&self) -> Vec<String> {
        vec![format!("127.0.0.1:{}", self.tls_port)]
    }
}

/// A gateway forwarding to `brokers` with these extra upstream keys.
fn start_gateway(brokers: &[String], topic: &str, security: &str) -> Gateway {
    Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-sec\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
             [[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [{}]\ntopic = \"{topic}\"\npartitions = 3\nmax_batch = 500\nlinger = \"5ms\"\n\
             request_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"2s\"\n{security}\n",
            dir.join("journal").display(),
            brokers
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

async fn publish(gw: &Gateway, devices: usize, count: u64) -> FleetReport {
    let mut o = FleetOptions::default();
    o.broker = gw.mqtt_addr();
    o.workload.devices = devices;
    o.qos = Qos::AtLeastOnce;
    o.window = 20;
    o.workload.rate = None;
    o.workload.count = Some(count);
    o.drain_timeout = Duration::from_secs(60);
    let report = run_fleet(o, CancellationToken::new())
        .await
        .expect("fleet runs");
    assert!(
        report.all_acked(),
        "every reading acknowledged by the gateway"
    );
    assert_eq!(report.acked(), devices as u64 * count);
    report
}

fn status_json(gw: &Gateway) -> serde_json::Value {
    let out = gw.command(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn upstream<'a>(status: &'a serde_json::Value, field: &str) -> &'a serde_json::Value {
    status["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "cloud"))
        .map(|u| &u[field])
        .unwrap_or_else(|| panic!("no upstream cloud in {status}"))
}

fn daemon_upstream<'a>(status: &'a serde_json::Value, field: &str) -> &'a serde_json::Value {
    status["daemon"]["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "cloud"))
        .map(|u| &u[field])
        .unwrap_or_else(|| panic!("no live upstream cloud in {status}"))
}

/// Waits until the gateway's log holds every one of `needles`; returns the log.
async fn wait_for_log(gw: &Gateway, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = gw.log();
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway log never said {needles:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that every reading of `report` is in `topic`, in order, read with `client`.
async fn assert_all_arrived(
    brokers: &[String],
    topic: &str,
    report: &FleetReport,
    gw: &Gateway,
    client: &firmware_sim::verify::ClientOptions,
) {
    let v = wait_until_complete_with(brokers, topic, report, ARRIVAL, client)
        .await
        .unwrap_or_else(|e| panic!("reading topic {topic}: {e}\ngateway log:\n{}", gw.log()));
    assert!(
        v.is_complete() && v.is_ok() && v.out_of_order() == 0,
        "topic {topic}: {v}\nproblems: {:?}\ngateway log:\n{}",
        v.problems(),
        gw.log()
    );
    assert_eq!(v.duplicates(), 0, "no crash, so no duplicate: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_reach_kafka_over_tls_in_order_and_a_wrong_ca_is_refused_with_the_backlog_kept() {
    let certs = Certs::new();
    let kafka = TlsKafka::start(&certs, false);
    let brokers = kafka.brokers();
    let tls = certs.client_config();
    let over_tls = move |b: ClientBuilder| b.tls_config(tls.clone());

    // The right CA: everything arrives, in order per turbine.
    let security = format!(
        "tls = true\nca_file = \"{}\"\n",
        certs.path("ca.pem").display()
    );
    let gw = start_gateway(&brokers, "secured", &security);
    let report = publish(&gw, 4, 250).await;
    assert_all_arrived(&brokers, "secured", &report, &gw, &over_tls).await;
    let log = gw.log();
    assert!(
        log.contains("Connected to the Kafka cluster.") && log.contains("security=TLS"),
        "{log}"
    );
    drop(gw);

    // A CA that did not sign the broker's certificate: refused, said clearly, nothing sent.
    let security = format!(
        "tls = true\nca_file = \"{}\"\n",
        certs.path("other-ca.pem").display()
    );
    let gw = start_gateway(&brokers, "refused", &security);
    let report = publish(&gw, 2, 50).await;
    let tls_port = kafka.tls_port;
    let expected = format!(
        "upstream cloud: TLS handshake with 127.0.0.1:{tls_port} failed: invalid peer certificate: UnknownIssuer (is ca_file of upstream \"cloud\" the CA that signed the broker's certificate"
    );
    wait_for_log(&gw, &[&expected]).await;
    // The forwarder treats it as needing an operator: retried every backoff_max (2s), not
    // in a loop. Over 8 s that is a handful of attempts.
    let before = daemon_upstream(&status_json(&gw), "failures_total")
        .as_u64()
        .expect("failures_total");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = status_json(&gw);
    let after = daemon_upstream(&status, "failures_total")
        .as_u64()
        .expect("failures_total");
    assert!(
        after - before <= 5,
        "{} failed attempts in 8 s: retried too fast\n{}",
        after - before,
        gw.log()
    );
    assert_eq!(upstream(&status, "backlog").as_u64(), Some(report.acked()));
    assert_eq!(daemon_upstream(&status, "connected"), false);
    assert_eq!(daemon_upstream(&status, "sent_total").as_u64(), Some(0));
    // The status names the cause too, in JSON and as text.
    let last = daemon_upstream(&status, "last_error")
        .as_str()
        .unwrap_or_default();
    assert!(last.starts_with(&expected), "{last}");
    let text = gw.command(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("NOT CONNECTED"), "{text}");
    assert!(text.contains(&format!("last error: {expected}")), "{text}");
    // Nothing of it reached the cluster: the topic was never even created.
    let tls = certs.client_config();
    let topics = ClientBuilder::new(brokers.clone())
        .tls_config(tls)
        .build()
        .await
        .expect("the verifier connects with the right CA")
        .list_topics()
        .await
        .expect("list topics");
    assert!(
        topics.iter().all(|t| t.name != "refused"),
        "{:?}",
        topics.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    drop(gw);

    // A ca_file that is not there: said with the key and the path, nothing sent.
    let missing = certs.path("not-there.pem");
    let security = format!("tls = true\nca_file = \"{}\"\n", missing.display());
    let gw = start_gateway(&brokers, "missing", &security);
    let report = publish(&gw, 1, 20).await;
    let expected = format!("cannot connect: cannot read ca_file {}", missing.display());
    wait_for_log(&gw, &[&expected]).await;
    let status = status_json(&gw);
    assert_eq!(upstream(&status, "backlog").as_u64(), Some(report.acked()));
    let last = daemon_upstream(&status, "last_error")
        .as_str()
        .unwrap_or_default();
    assert!(last.contains(&expected), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl_login_the_broker_refuses_is_a_clear_error_and_nothing_is_delivered() {
    let certs = Certs::new();
    let kafka = TlsKafka::start(&certs, false);
    let brokers = kafka.brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("kafka-password");
    std::fs::write(&password, "s3cret\n").expect("write password");
    let security = format!(
        "tls = true\nca_file = \"{}\"\nsasl_mechanism = \"scram-sha-512\"\nusername = \"gw\"\npassword_file = \"{}\"\n",
        certs.path("ca.pem").display(),
        password.display()
    );
    let gw = start_gateway(&brokers, "refused", &security);
    let report = publish(&gw, 2, 50).await;
    let log = wait_for_log(
        &gw,
        &[
            "Upstream refuses the batch",
            "upstream \"cloud\"",
            "Sasl handshake failed: API error: UnsupportedSaslMechanism",
            "check username, password_file / password_env and sasl_mechanism (SCRAM-SHA-512) of upstream \"cloud\"",
        ],
    )
    .await;
    // Over TLS all along: the handshake got as far as SASL.
    assert!(!log.contains("TLS handshake with"), "{log}");
    let status = status_json(&gw);
    assert_eq!(
        upstream(&status, "backlog").as_u64(),
        Some(report.acked()),
        "{log}"
    );
    assert_eq!(daemon_upstream(&status, "sent_total").as_u64(), Some(0));
    assert_eq!(daemon_upstream(&status, "connected"), false);
    let last = daemon_upstream(&status, "last_error")
        .as_str()
        .unwrap_or_default();
    assert!(
        last.contains("Sasl handshake failed") && last.contains("check username"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_a_client_certificate_gets_the_configured_one() {
    let certs = Certs::new();
    let kafka = TlsKafka::start(&certs, true);
    let brokers = kafka.brokers();
    let security = format!(
        "tls = true\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        certs.path("ca.pem").display(),
        certs.path("client.pem").display(),
        certs.path("client.key").display()
    );
    let gw = start_gateway(&brokers, "mtls", &security);
    let report = publish(&gw, 3, 100).await;
    let tls = certs.client_config_with_cert();
    let with_cert = move |b: ClientBuilder| b.tls_config(tls.clone());
    assert_all_arrived(&brokers, "mtls", &report, &gw, &with_cert).await;
    drop(gw);

    // Without it, the broker's side of the handshake refuses: nothing is delivered.
    let security = format!(
        "tls = true\nca_file = \"{}\"\n",
        certs.path("ca.pem").display()
    );
    let gw = start_gateway(&brokers, "no-cert", &security);
    let report = publish(&gw, 1, 20).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let status = status_json(&gw);
    assert_eq!(
        upstream(&status, "backlog").as_u64(),
        Some(report.acked()),
        "{}",
        gw.log()
    );
    assert_eq!(daemon_upstream(&status, "sent_total").as_u64(), Some(0));
    assert!(
        daemon_upstream(&status, "last_error").as_str().is_some(),
        "{status}"
    );
}

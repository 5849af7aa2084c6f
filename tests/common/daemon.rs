//! The daemon under test: `tidegate run --config FILE` as a child process ([`Gateway`]),
//! on fresh loopback ports (fresh ones again when another process took one first), with
//! its output in a log file printed when a test fails; and [`http_get`] for its HTTP port.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use firmware_sim::testbed::{Process, TestbedError};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::brokers::{free_port, or_fail, retry_on_port_clash};

/// How long the gateway may take to accept MQTT connections.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed gateway may take to exit.
const GATEWAY_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The tidegate daemon, `tidegate run --config DIR/tidegate.toml`, as a child process.
/// Its stdout and stderr go to `DIR/tidegate.log` (appended across restarts), printed if the
/// test panics. Killed on drop.
pub struct Gateway {
    /// Declared before `dir`: killed (and its log printed) before a temp dir is removed.
    process: Process,
    config: PathBuf,
    /// The temp dir [`Gateway::start_fresh`] made for it.
    dir: Option<TempDir>,
    /// `127.0.0.1:PORT` of its HTTP listener (`[http] listen`), when enabled.
    http: Option<String>,
}

impl Gateway {
    /// Writes `config_toml` to `dir/tidegate.toml`, starts the daemon and waits (30 s) until
    /// its `[mqtt] listen` port accepts connections; panics with the log otherwise.
    ///
    /// A config without an `[http]` section gets one on a free loopback port, so that
    /// gateways of tests running in parallel do not all claim the default 9464.
    pub fn start(config_toml: &str, dir: &Path) -> Gateway {
        or_fail(Gateway::try_start(config_toml, dir, &[]))
    }

    /// [`Gateway::start`] in a fresh temp dir (removed when the gateway is dropped) with a
    /// free MQTT port: `config` gets that port and directory and returns the TOML. When
    /// another process took a port first, starts again on fresh ports in a fresh directory
    /// ([`retry_on_port_clash`]), so `config` may be called more than once.
    pub fn start_fresh(config: impl Fn(u16, &Path) -> String) -> Gateway {
        Gateway::start_fresh_with_env(&[], config)
    }

    /// [`Gateway::start_fresh`] with `env` added to the daemon's environment (restarts
    /// included), e.g. a time zone and the test clock of the send-window tests.
    pub fn start_fresh_with_env(
        env: &[(&str, &str)],
        config: impl Fn(u16, &Path) -> String,
    ) -> Gateway {
        retry_on_port_clash(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut g = Gateway::try_start(&config(free_port(), dir.path()), dir.path(), env)?;
            g.dir = Some(dir);
            Ok(g)
        })
    }

    /// [`Gateway::start`] returning the test bed's error (a port clash included) instead of
    /// panicking.
    fn try_start(
        config_toml: &str,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Gateway, TestbedError> {
        let config = dir.join("tidegate.toml");
        let table = toml::from_str::<toml::Table>(config_toml).ok();
        let http_section = table.as_ref().and_then(|t| t.get("http"));
        let (config_toml, http) = match http_section {
            None => {
                let addr = format!("127.0.0.1:{}", free_port());
                (
                    format!("{config_toml}\n[http]\nlisten = \"{addr}\"\n"),
                    Some(addr),
                )
            }
            Some(h) if h.get("enabled").and_then(|e| e.as_bool()) == Some(false) => {
                (config_toml.to_owned(), None)
            }
            Some(h) => (
                config_toml.to_owned(),
                Some(
                    h.get("listen")
                        .and_then(|l| l.as_str())
                        .unwrap_or("127.0.0.1:9464")
                        .to_owned(),
                ),
            ),
        };
        std::fs::write(&config, &config_toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let listen = table
            .as_ref()
            .and_then(|t| t.get("mqtt")?.get("listen")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1:1883".to_owned());
        let mqtt_port = listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the port of mqtt.listen = {listen:?}"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
        command.arg("run").arg("--config").arg(&config).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        command.envs(env.iter().copied());
        let log_path = dir.join("tidegate.log");
        let mut process = Process::start(
            "tidegate",
            command,
            mqtt_port,
            &log_path,
            GATEWAY_START_TIMEOUT,
        )?;
        // A process that took the MQTT port first answers for it while the daemon exits on
        // its bind (or on the HTTP port's): that is a clash too.
        if !process.is_running() {
            return Err(TestbedError::NotListening {
                name: "tidegate".into(),
                port: mqtt_port,
                timeout: GATEWAY_START_TIMEOUT,
                exit: "exited just after its port answered".into(),
                log_path,
                log: process.log(),
            });
        }
        Ok(Gateway {
            process,
            config,
            dir: None,
            http,
        })
    }

    /// `127.0.0.1:PORT` of its HTTP listener (`/metrics`, `/health`, the status page);
    /// panics if the config disabled it.
    pub fn http_addr(&self) -> &str {
        self.http
            .as_deref()
            .expect("this gateway runs with http.enabled = false")
    }

    /// `127.0.0.1:PORT` of its MQTT listener, for firmware-sim's `FleetOptions::broker`.
    pub fn mqtt_addr(&self) -> String {
        self.process.addr()
    }

    /// The port of its MQTT listener.
    pub fn mqtt_port(&self) -> u16 {
        self.process.port()
    }

    /// Path of the config file it runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Its output so far (all runs).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL, as a crash or power cut: no shutdown code runs.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then waits (30 s) for the exit status; panics with the log if it does not
    /// exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.process.pid().expect("tidegate is not running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        signal::kill(pid, Signal::SIGTERM).expect("send SIGTERM");
        match self.process.wait_for_exit(GATEWAY_STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                self.process.kill();
                panic!(
                    "tidegate did not exit within {GATEWAY_STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Rewrites its config file with `edit` (given the file as it is, `[http]` section
    /// included) and sends SIGHUP: the daemon reloads (wait for what the reload changes,
    /// e.g. the log's "Configuration reloaded.").
    pub fn reload(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.config.display()));
        std::fs::write(&self.config, edit(&text))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config.display()));
        let pid = self.process.pid().expect("tidegate is not running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        signal::kill(pid, Signal::SIGHUP).expect("send SIGHUP");
    }

    /// Kills it (SIGKILL, if running) and starts it again with the same config and data.
    pub fn restart(&mut self) {
        or_fail(self.process.restart());
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

/// `GET http://ADDR/PATH` (loopback) with hyper's HTTP/1 client: the status code and body.
/// Panics if nothing answers within 10 s.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(std::io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        driver.abort();
        Ok::<_, std::io::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(10), fetch).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("GET http://{addr}{path}: {e}"),
        Err(_) => panic!("GET http://{addr}{path}: no answer within 10 s"),
    }
}

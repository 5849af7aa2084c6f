//! A child process of the test bed that listens on a loopback port ([`Process`]): started,
//! waited for, restarted, killed on drop, its log kept and shown when a test fails.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{wait_until_listening, TestbedError, POLL_INTERVAL};

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

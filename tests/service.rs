//! tidegate as a systemd service, without systemd: the real daemon talks to a notification
//! socket the test binds (`NOTIFY_SOCKET`, `WATCHDOG_USEC`), gets SIGHUP with good and bad
//! configs, logs in journald's format under `JOURNAL_STREAM`; `deploy/install.sh` runs into
//! a temp root; the unit passes `systemd-analyze verify` where that tool is installed.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Longest wait for anything the daemon is expected to do.
const WAIT: Duration = Duration::from_secs(30);

/// The daemon as a child process with its stderr in `dir/tidegate.log`; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    config: PathBuf,
}

impl Daemon {
    /// Writes `config` to `dir/tidegate.toml` and runs `tidegate run --config` on it with
    /// `env` added and `RUST_LOG` removed (so `log.level` is in charge).
    fn start(dir: &Path, config: &str, env: &[(&str, String)]) -> Daemon {
        let path = dir.join("tidegate.toml");
        std::fs::write(&path, config).expect("write config");
        let log = dir.join("tidegate.log");
        let out = std::fs::File::create(&log).expect("create log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidegate"));
        command
            .args(["run", "--log", "info", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start tidegate");
        Daemon {
            child,
            log,
            config: path,
        }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Waits until the log holds `needle` `times` times; panics with the log otherwise.
    fn wait_for_log(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= times {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{needle:?} not logged {times} times within {WAIT:?}; log:\n{}",
            self.log()
        );
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        signal::kill(pid, sig).expect("send signal");
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and the exit code; panics if it does not exit within [`WAIT`].
    fn terminate(&mut self) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tidegate did not exit after SIGTERM; log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tidegate log ---\n{}", self.log());
        }
    }
}

/// A config with its journal in `dir`, no HTTP port, the MQTT listener on a port the
/// daemon picks (port 0: no other process can take it first, and these tests never
/// connect), plus `extra` TOML.
fn config(dir: &Path, extra: &str) -> String {
    format!(
        r#"[gateway]
id = "gw-svc"
[journal]
dir = "{journal}"
[mqtt]
listen = "127.0.0.1:0"
[http]
enabled = false
{extra}
"#,
        journal = dir.join("journal").display(),
    )
}

/// A Kafka upstream `name` that never answers (a port nothing listens on).
fn upstream(name: &str, topic: &str) -> String {
    format!(
        r#"[[upstream]]
name = "{name}"
kind = "kafka"
brokers = ["127.0.0.1:{port}"]
topic = "{topic}"
backoff_initial = "100ms"
backoff_max = "1s"
"#,
        port = free_port()
    )
}

/// The notification socket a service manager would listen on.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { socket, path }
    }

    fn env(&self, watchdog: Option<Duration>) -> Vec<(&'static str, String)> {
        let mut env = vec![("NOTIFY_SOCKET", self.path.display().to_string())];
        if let Some(w) = watchdog {
            env.push(("WATCHDOG_USEC", w.as_micros().to_string()));
        }
        env
    }

    /// The next message, waiting at most `within`.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(within))
            .expect("set timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Messages until one contains `needle` (which is included); panics after [`WAIT`].
    fn until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(m) = self.next(left) {
                let done = m.lines().any(|l| l == needle);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
        panic!("no {needle:?} within {WAIT:?}; got {seen:?}");
    }

    /// Everything already queued, without waiting.
    fn drain(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).expect("blocking");
        out
    }
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[test]
fn ready_watchdog_pings_and_stopping_arrive_on_the_notify_socket() {
    let dir = TempDir::new().expect("temp dir");
    let notify = NotifySocket::bind(dir.path());
    let mut daemon = Daemon::start(
        dir.path(),
        &config(dir.path(), &upstream("a", "t")),
        &notify.env(Some(Duration::from_secs(1))),
    );
    let before_ready = notify.until("READY=1");
    assert_eq!(count(&before_ready, "WATCHDOG=1"), 0, "{before_ready:?}");
    assert!(
        daemon.log().contains("tidegate started"),
        "READY=1 comes after the journal is open and the listener bound"
    );
    // Pinged while healthy (several times: it is a loop, not a one-off).
    notify.until("WATCHDOG=1");
    notify.until("WATCHDOG=1");
    notify.until("WATCHDOG=1");
    assert_eq!(daemon.terminate(), Some(0));
    let rest = notify.drain();
    assert_eq!(count(&rest, "STOPPING=1"), 1, "{rest:?}");
}

#[test]
fn watchdog_pings_stop_when_an_essential_task_dies() {
    let dir = TempDir::new().expect("temp dir");
    let notify = NotifySocket::bind(dir.path());
    let mut env = notify.env(Some(Duration::from_secs(1)));
    // Test hook: forwarder "a" ends on its own two seconds after its first start.
    env.push(("TIDEGATE_TEST_FORWARDER_EXITS", "a".into()));
    let mut daemon = Daemon::start(
        dir.path(),
        &config(dir.path(), &(upstream("a", "t") + &upstream("b", "t"))),
        &env,
    );
    notify.until("READY=1");
    notify.until("WATCHDOG=1");
    daemon.wait_for_log("watchdog pings stop", 1);
    assert!(
        daemon.log().contains("forwarder:a"),
        "the dead task is named: {}",
        daemon.log()
    );
    // Whatever was sent before the decision is queued by now; after it, nothing.
    notify.drain();
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(m) = notify.next(left) {
            after.push(m);
        }
    }
    assert_eq!(count(&after, "WATCHDOG=1"), 0, "{after:?}");
    // The daemon itself runs on: systemd's watchdog is what restarts it.
    assert!(daemon.is_running());

    // A reload starts the dead forwarder again (the hook kills only its first start), and
    // the pings resume.
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("a: had stopped, restarted", 1);
    daemon.wait_for_log("watchdog pings resume", 1);
    notify.until("WATCHDOG=1");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn sighup_refuses_a_bad_config_and_applies_a_good_one() {
    let dir = TempDir::new().expect("temp dir");
    let notify = NotifySocket::bind(dir.path());
    let good = config(
        dir.path(),
        &(upstream("a", "first") + &upstream("gone", "t")),
    );
    let mut daemon = Daemon::start(dir.path(), &good, &notify.env(None));
    notify.until("READY=1");
    daemon.wait_for_log("Forwarder started.", 2);

    // A config that fails validation: refused, with its key; the old one runs on.
    std::fs::write(
        &daemon.config,
        good.replace(
            "[http]",
            "[log]\nlevel = \"tidegate=nonsense-level\"\n[http]",
        ),
    )
    .expect("write bad config");
    daemon.signal(Signal::SIGHUP);
    let reload = notify.until("READY=1");
    assert_eq!(count(&reload, "RELOADING=1"), 1, "{reload:?}");
    daemon.wait_for_log("Reload refused", 1);
    assert!(daemon.log().contains("log.level"), "{}", daemon.log());
    assert!(daemon.is_running());
    assert_eq!(daemon.log().matches("Forwarder started.").count(), 2);

    // A good one: `a` changes topic (restarted), `gone` is removed (cursor deleted), `b`
    // is new (starts at the oldest reading), the log level changes, and a journal.dir
    // change is only reported as needing a restart.
    let mut new = good
        .replace("topic = \"first\"", "topic = \"second\"")
        .replace("[http]", "[log]\nlevel = \"debug\"\n[http]");
    let gone_start = new
        .find("[[upstream]]\nname = \"gone\"")
        .expect("gone section");
    new.truncate(gone_start);
    new.push_str(&upstream("b", "t"));
    new = new.replace(
        &format!("dir = \"{}\"", dir.path().join("journal").display()),
        &format!("dir = \"{}\"", dir.path().join("elsewhere").display()),
    );
    std::fs::write(&daemon.config, &new).expect("write good config");
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("Configuration reloaded.", 1);
    let log = daemon.log();
    assert!(log.contains("Log level changed."), "{log}");
    assert!(log.contains("a: settings changed, restarted"), "{log}");
    assert!(log.contains("gone: removed"), "{log}");
    assert!(log.contains("b: added"), "{log}");
    assert!(
        log.contains("Upstream is no longer configured; removing its cursor"),
        "{log}"
    );
    assert!(log.contains("needs a restart"), "{log}");
    assert!(
        log.contains("topic=\"second\"") || log.contains("topic=second"),
        "{log}"
    );
    assert!(
        !dir.path().join("elsewhere").exists(),
        "journal.dir is not switched live"
    );
    assert_eq!(daemon.terminate(), Some(0));

    // The cursors the journal keeps are those of the reloaded upstreams. (The new file's
    // journal.dir points elsewhere; the old file names the journal that ran.)
    let old_config = dir.path().join("old.toml");
    std::fs::write(&old_config, &good).expect("write");
    let status = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["status", "--json", "--config"])
        .arg(&old_config)
        .output()
        .expect("run status");
    let text = String::from_utf8_lossy(&status.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let journal = json.get("journal").unwrap_or(&json);
    let mut names: Vec<&str> = journal["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "b"], "{text}");
}

#[test]
fn logs_are_compact_lines_without_colours_or_timestamps_under_journald() {
    let dir = TempDir::new().expect("temp dir");
    let notify = NotifySocket::bind(dir.path());
    let mut env = notify.env(None);
    env.push(("JOURNAL_STREAM", "8:12345".to_owned()));
    let mut daemon = Daemon::start(dir.path(), &config(dir.path(), ""), &env);
    // READY=1 comes once SIGTERM is handled ("tidegate started" is logged a moment
    // before): a SIGTERM sooner would kill it with the default action.
    notify.until("READY=1");
    assert_eq!(daemon.terminate(), Some(0));
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("tidegate started"))
        .expect("start line");
    assert!(
        line.starts_with(" INFO") || line.starts_with("INFO"),
        "no timestamp: {line:?}"
    );
    assert!(!line.contains('\u{1b}'), "no ANSI colours: {line:?}");
    assert!(
        line.contains("gateway=gw-svc"),
        "fields as key=value: {line:?}"
    );
}

/// Runs deploy/install.sh with `args` into `root`.
fn install(root: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--root")
        .arg(root)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .output()
        .expect("run install.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "install.sh {args:?} failed:\n{text}");
    text
}

/// Every file under `root`, relative, with its contents.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root").to_owned();
                out.push((rel, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn install_into_a_temp_root_is_idempotent_and_uninstall_keeps_the_journal() {
    let root = TempDir::new().expect("temp dir");
    let r = root.path();
    install(r, &[]);
    let first = tree(r);
    let names: Vec<String> = first.iter().map(|(p, _)| p.display().to_string()).collect();
    for expected in [
        "usr/local/bin/tidegate",
        "etc/systemd/system/tidegate.service",
        "etc/tidegate/tidegate.toml",
        "usr/lib/sysusers.d/tidegate.conf",
        "usr/share/doc/tidegate/README.md",
        "usr/share/doc/tidegate/docs/configuration.md",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let sysusers =
        std::fs::read_to_string(r.join("usr/lib/sysusers.d/tidegate.conf")).expect("read");
    assert!(sysusers.contains("u tidegate"), "{sysusers}");
    assert!(sysusers.contains("m tidegate dialout"), "{sysusers}");
    {
        use std::os::unix::fs::PermissionsExt;
        let secrets = std::fs::metadata(r.join("etc/tidegate/secrets")).expect("secrets dir");
        assert!(secrets.is_dir());
        assert_eq!(
            secrets.permissions().mode() & 0o777,
            0o750,
            "etc/tidegate/secrets"
        );
    }

    // Again: the same files, and an operator's edit of the config is kept.
    let conf = r.join("etc/tidegate/tidegate.toml");
    let mut edited = std::fs::read_to_string(&conf).expect("read config");
    edited = edited.replace("[gateway]", "# edited by the operator\n[gateway]");
    std::fs::write(&conf, &edited).expect("edit config");
    let out = install(r, &[]);
    assert!(out.contains("kept the existing"), "{out}");
    assert_eq!(std::fs::read_to_string(&conf).expect("read"), edited);
    let second = tree(r);
    assert_eq!(
        first.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        second.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );

    // A journal, then --uninstall: binary and unit gone, config and journal kept.
    let state = r.join("var/lib/tidegate");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("data.mdb"), b"journal").expect("journal");
    install(r, &["--uninstall"]);
    assert!(!r.join("usr/local/bin/tidegate").exists());
    assert!(!r.join("etc/systemd/system/tidegate.service").exists());
    assert_eq!(
        std::fs::read(state.join("data.mdb")).expect("kept"),
        b"journal"
    );
    assert!(conf.exists());
    // Uninstalling twice is fine too.
    install(r, &["--uninstall"]);

    // --purge deletes the journal and the config.
    install(r, &["--uninstall", "--purge"]);
    assert!(!state.exists());
    assert!(!conf.exists());
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; skipped (scripts/test.sh installs it)");
        return;
    };
    assert!(version.status.success());
    let dir = TempDir::new().expect("temp dir");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tidegate.service"),
    )
    .expect("read unit");
    // Verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/tidegate", env!("CARGO_BIN_EXE_tidegate"));
    let path = dir.path().join("tidegate.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown settings are only warnings to verify: any output at all is a failure here.
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

//! The `tidegate` command: a thin shell over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidegate::config::Config;

/// IoT edge ingestion daemon: MQTT readings into a durable LMDB journal, forwarded in
/// ordered batches to Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Without --config it runs on embedded defaults: journal in
    /// ./tidegate-data, MQTT on 127.0.0.1:1883, no upstream.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log filter when RUST_LOG is unset (e.g. "info", "tidegate=debug").
        #[arg(long, default_value = "info,rskafka=error,rumqttd=error")]
        log: String,
    },
    /// Validate a configuration file and print the effective configuration, or every
    /// error with its key. Exits 1 when invalid.
    CheckConfig {
        /// Configuration file (TOML); omit to print the embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show what the journal holds and how far each upstream has got, with the running
    /// daemon's health, connection states and rates when it answers on http.listen. Safe
    /// while the daemon runs (read-only).
    Status {
        /// Configuration file naming the journal directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the journal on disk, read-only and safe while the daemon runs.
    Journal {
        #[command(subcommand)]
        action: JournalAction,
    },
    /// Add a device to a credentials file (mqtt.auth.credentials_file), or set a new
    /// password for one already there. Reads the password as one line from stdin (on a
    /// terminal: prompted, not echoed); creates
    /// the file (mode 0600) if absent; keeps other entries and comments. A running daemon
    /// applies the change on SIGHUP.
    Passwd {
        /// The credentials file.
        file: PathBuf,
        /// The device's username (by default also its MQTT client id).
        username: String,
        /// Publish pattern for this device (repeatable; `%c` client id, `%u` username).
        /// Omitted: a new device gets mqtt.auth.publish, an existing one keeps its own.
        #[arg(long)]
        publish: Vec<String>,
        /// Subscribe pattern for this device (repeatable), as --publish.
        #[arg(long)]
        subscribe: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JournalAction {
    /// Verify every record's checksum, sequence continuity, meta and cursors. Prints a
    /// summary line; exits 1 naming the first bad sequence number if anything is wrong.
    Check {
        /// Configuration file naming the journal directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print a progress line to stderr every N records (0: never).
        #[arg(long, default_value_t = 1_000_000)]
        progress_every: u64,
    },
    /// Print records as JSON lines: seq, ts (ingest ms), topic, source, source_kind, qos,
    /// retain, encoding and payload (UTF-8 text, or base64 when not UTF-8). A record that
    /// does not decode is printed as {"seq":N,"error":"…"} and makes the exit status 1.
    Dump {
        /// Configuration file naming the journal directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// First sequence number to print (or the first held after it).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records to print.
        #[arg(long)]
        limit: Option<u64>,
    },
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(tidegate::validate::load(p)?),
        None => Ok(Config::default()),
    }
}

/// Writes to stdout, treating a closed pipe (`| head`) as the reader's choice, not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, log } => {
            tidegate::telemetry::init_logging(&log);
            let path = config;
            let config = load(path.as_deref())?;
            for warning in config.secret_warnings() {
                tracing::warn!("{warning}");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("tidegate")
                .build()
                .context("cannot start the async runtime")?;
            // The path goes along so that SIGHUP can re-read the file.
            rt.block_on(tidegate::app::run_from(config, path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => match load(config.as_deref()) {
            Ok(c) => {
                for warning in c.secret_warnings() {
                    eprintln!("warning: {warning}");
                }
                // The files the device listener reads at start, as `run` would read them.
                let device_files = tidegate::ingest::auth::AuthState::load(&c.mqtt)
                    .map(drop)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        tidegate::ingest::tls::Acceptor::from_config(&c.mqtt)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = device_files {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
                let text = toml::to_string_pretty(&c).context("cannot print the configuration")?;
                emit(&format!("# effective configuration: valid\n{text}"));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Status { config, json } => {
            let config = load(config.as_deref())?;
            let summary = tidegate::journal::summary_read_only(&config.journal.dir)?;
            // The running daemon's figures when it answers on http.listen; the journal
            // alone otherwise (a stopped daemon is a normal thing to inspect).
            let live = tidegate::status::fetch_live(&config);
            if json {
                let report = tidegate::status::StatusReport {
                    journal: &summary,
                    daemon: live.as_ref().ok(),
                    daemon_error: live.as_ref().err().map(|e| e.to_string()),
                };
                emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            } else {
                emit(&tidegate::status::render(
                    &summary,
                    &config,
                    tidegate::journal::now_ms(),
                    live.as_ref(),
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal { action } => journal(action),
        Command::Passwd {
            file,
            username,
            publish,
            subscribe,
        } => passwd(&file, &username, &publish, &subscribe),
    }
}

fn passwd(
    file: &Path,
    username: &str,
    publish: &[String],
    subscribe: &[String],
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use tidegate::ingest::auth;
    if username.is_empty() {
        anyhow::bail!("the username must not be empty");
    }
    let line = read_password_line(username).context("cannot read the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        anyhow::bail!("empty password refused: give the password as one line on stdin");
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let hash = auth::hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    let (new_text, outcome) = auth::set_device(
        &text,
        file,
        username,
        &hash,
        (!publish.is_empty()).then_some(publish),
        (!subscribe.is_empty()).then_some(subscribe),
    )?;
    // Written beside the file and renamed over it, so a crash leaves the old or the new
    // file, never half of one; created 0600 since it holds password hashes.
    let tmp = file.with_extension("tmp-passwd");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(file) {
        // Keep the mode an operator chose for an existing file (e.g. 0640 for a group).
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    f.write_all(new_text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    let what = match outcome {
        auth::SetOutcome::Added => "added",
        auth::SetOutcome::Replaced => "set a new password for",
    };
    emit(&format!(
        "{}: {what} device {username:?}; send SIGHUP to a running tidegate to apply it\n",
        file.display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn journal(action: JournalAction) -> anyhow::Result<ExitCode> {
    match action {
        JournalAction::Check {
            config,
            progress_every,
        } => {
            let config = load(config.as_deref())?;
            let dir = &config.journal.dir;
            let started = std::time::Instant::now();
            let report = tidegate::journal::cli::check(dir, progress_every, |n| {
                eprintln!(
                    "checked {n} records ({:.1}s)",
                    started.elapsed().as_secs_f64()
                )
            })?;
            for (seq, what) in report.problems.iter().skip(1).take(20) {
                eprintln!("also: seq {seq}: {what}");
            }
            emit(&format!("{}\n", report.summary()));
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JournalAction::Dump {
            config,
            from,
            limit,
        } => {
            let config = load(config.as_deref())?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match tidegate::journal::cli::dump(&config.journal.dir, from, limit, &mut out) {
                Ok(report) if report.bad > 0 => {
                    eprintln!("{} of {} records do not decode", report.bad, report.records);
                    Ok(ExitCode::FAILURE)
                }
                Ok(_) => Ok(ExitCode::SUCCESS),
                // `| head` closing the pipe is the reader's choice.
                Err(tidegate::journal::cli::InspectError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// One line from stdin. On a terminal, a prompt goes to stderr and the typed password is
/// not echoed (echo is restored afterwards, also when the read fails); from a pipe or file
/// the line is read as it is, so scripts and provisioning tools can feed it.
fn read_password_line(username: &str) -> std::io::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let mut saved = None;
    if stdin.is_terminal() {
        eprint!("password for {username}: ");
        // SAFETY: tcgetattr fills the zeroed termios it is given; tcsetattr only reads it.
        // Both act on fd 0, which is_terminal() just found to be a terminal.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                let old = t;
                t.c_lflag &= !libc::ECHO;
                if libc::tcsetattr(0, libc::TCSANOW, &t) == 0 {
                    saved = Some(old);
                }
            }
        }
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(old) = saved {
        // SAFETY: as above; restores the settings read before.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &old);
        }
        eprintln!();
    }
    read.map(|_| line)
}

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
        Some(p) => Ok(Config::load(p)?),
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
    }
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
            let report = tidegate::journal_cli::check(dir, progress_every, |n| {
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
            match tidegate::journal_cli::dump(&config.journal.dir, from, limit, &mut out) {
                Ok(report) if report.bad > 0 => {
                    eprintln!("{} of {} records do not decode", report.bad, report.records);
                    Ok(ExitCode::FAILURE)
                }
                Ok(_) => Ok(ExitCode::SUCCESS),
                // `| head` closing the pipe is the reader's choice.
                Err(tidegate::journal_cli::InspectError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

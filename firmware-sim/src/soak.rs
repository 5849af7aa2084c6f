//! A fleet sampled while it runs, for soaks of hours: [`run_sampled`] runs a fleet and
//! writes one CSV row per interval with what it published and had acknowledged, how many
//! devices were connected, and the publish → PUBACK latency *of that interval*.
//!
//! The whole run's histogram (in [`FleetReport`]) answers "how fast overall"; a soak asks
//! "did it get slower": a p99 that creeps up over an hour is hidden in a run-wide figure, so
//! each row holds only the readings acknowledged since the row before
//! ([`FleetProgress::take_puback`]). `scripts/soak.sh` joins these rows with the gateway's
//! memory, open files and journal size sampled at the same pace.
//!
//! With a Kafka topic ([`KafkaFollow`]), the run also reads the topic *while it runs*, into
//! a [`Checker`], and at the end checks it against the fleet's report (every acknowledged
//! reading there, per device in order, duplicates counted). Reading as the records arrive
//! rather than once at the end keeps the check independent of how long the broker keeps
//! them: the test bed's in-memory Tansu drops a topic's oldest records after a few minutes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::cli::FleetArgs;
use crate::fleet::{run_fleet_with_progress, FleetError, FleetOptions, FleetProgress, FleetReport};
use crate::telemetry::now_ms;
use crate::verify::{Checker, StartAt, TopicReader, VerifyReport};

/// The header of the samples file, in the order [`Sample::row`] writes the fields.
pub const CSV_HEADER: &str = "unix_ms,elapsed_s,published,acked,connected,disconnects,\
                              acked_in_interval,puback_p50_ms,puback_p99_ms,puback_max_ms,\
                              kafka_received";

/// The flags of `firmware-sim soak`: a fleet (as `fleet` takes it) and where its samples go.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Append one CSV row per --sample-every to this file (the header first if it is new).
    #[arg(long, value_name = "FILE")]
    pub samples: PathBuf,
    /// How often to write a row.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Write the fleet report (JSON) to this file at the end; `verify --report` checks a
    /// topic against it.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Kafka bootstrap brokers (comma-separated host:port) to read --topic from while the
    /// fleet runs, and check against the fleet's report at the end.
    #[arg(
        long,
        value_name = "BROKERS",
        value_delimiter = ',',
        requires = "topic"
    )]
    pub kafka: Vec<String>,
    /// Kafka topic the gateway forwards to (with --kafka).
    #[arg(long, value_name = "TOPIC", requires = "kafka")]
    pub topic: Option<String>,
    /// After the fleet stops, how long to wait for every acknowledged reading to be read.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// The topic a soak reads while it runs (see the module docs).
#[derive(Debug, Clone)]
pub struct KafkaFollow {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic the gateway forwards to.
    pub topic: String,
    /// After the fleet stops, how long to wait for every acknowledged reading.
    pub timeout: Duration,
}

/// What a soak did: the fleet's report and, with a [`KafkaFollow`], the check of the topic
/// against it.
#[derive(Debug)]
pub struct SoakReport {
    /// The fleet's report.
    pub fleet: FleetReport,
    /// The topic against the fleet's report; `None` without a Kafka topic.
    pub kafka: Option<VerifyReport>,
}

/// Errors of [`run_sampled`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoakError {
    /// The fleet could not run.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The samples file could not be opened or written.
    #[error("writing the samples to {path}: {source}")]
    Samples {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One row of the samples file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Wall-clock time of the sample, ms since the epoch (to join other samplers' rows).
    pub unix_ms: u64,
    /// Since the fleet started.
    pub elapsed: Duration,
    /// Readings handed to the clients so far.
    pub published: u64,
    /// Readings acknowledged so far.
    pub acked: u64,
    /// Devices connected now.
    pub connected: u64,
    /// Connection losses so far (the fault plan's flaps among them).
    pub disconnects: u64,
    /// Readings acknowledged during the interval.
    pub acked_in_interval: u64,
    /// Publish → PUBACK of the interval's acknowledged readings, µs: median, 99th
    /// percentile, maximum (0 when none was acknowledged).
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub max_us: u64,
    /// Readings read from the Kafka topic so far (0 without one).
    pub kafka_received: u64,
}

impl Sample {
    /// The CSV row (no newline), fields as in [`CSV_HEADER`].
    pub fn row(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "{},{:.1},{},{},{},{},{},{:.3},{:.3},{:.3},{}",
            self.unix_ms,
            self.elapsed.as_secs_f64(),
            self.published,
            self.acked,
            self.connected,
            self.disconnects,
            self.acked_in_interval,
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.kafka_received
        )
    }

    /// Reads `progress` now, taking the latencies recorded since the last sample;
    /// `kafka_received` is the count of readings read from Kafka so far.
    pub fn take(progress: &FleetProgress, started: Instant, kafka_received: u64) -> Sample {
        let snap = progress.snapshot();
        let hist = progress.take_puback();
        Sample {
            unix_ms: now_ms(),
            elapsed: started.elapsed(),
            published: snap.published,
            acked: snap.acked,
            connected: snap.connected,
            disconnects: snap.disconnects,
            acked_in_interval: hist.count(),
            p50_us: hist.quantile(0.50),
            p99_us: hist.quantile(0.99),
            max_us: hist.quantile(1.0),
            kafka_received,
        }
    }
}

/// Opens `path` for appending rows, writing the header if the file is new or empty.
fn open_samples(path: &Path) -> Result<std::fs::File, SoakError> {
    let err = |source| SoakError::Samples {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    if file.metadata().map_err(err)?.len() == 0 {
        writeln!(file, "{CSV_HEADER}").map_err(err)?;
    }
    Ok(file)
}

/// Reads `kafka.topic` from its earliest record into `checker` until `halt`, counting the
/// readings in `received`. Connection and fetch errors (the topic not created yet, the
/// link down) are retried; the cursor is kept across them, so nothing is read twice.
async fn follow(
    kafka: KafkaFollow,
    checker: Arc<Mutex<Checker>>,
    received: Arc<AtomicU64>,
    halt: CancellationToken,
) {
    let mut reader: Option<TopicReader> = None;
    while !halt.is_cancelled() {
        let polled = match reader.as_mut() {
            Some(r) => r.poll().await,
            None => {
                match TopicReader::connect(&kafka.brokers, &kafka.topic, StartAt::Earliest).await {
                    Ok(r) => {
                        reader = Some(r);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match polled {
            Ok(records) if !records.is_empty() => {
                let mut c = checker.lock().unwrap_or_else(|e| e.into_inner());
                for r in &records {
                    if c.add(r).is_some() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                tracing::debug!(error = %e, "reading Kafka failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Runs a fleet as [`run_fleet`](crate::run_fleet) does, writing a [`Sample`] row to
/// `samples` every `every` (each row flushed, so a reader sees it at once) and a last one
/// when the fleet ends; with `kafka`, reads the topic meanwhile and, once the fleet is done,
/// until every acknowledged reading is there or the timeout passes, and checks it.
pub async fn run_sampled(
    opts: FleetOptions,
    samples: &Path,
    every: Duration,
    kafka: Option<KafkaFollow>,
    stop: CancellationToken,
) -> Result<SoakReport, SoakError> {
    let mut file = open_samples(samples)?;
    let progress = Arc::new(FleetProgress::default());
    let checker = Arc::new(Mutex::new(Checker::new()));
    let received = Arc::new(AtomicU64::new(0));
    let halt = CancellationToken::new();
    let timeout = kafka.as_ref().map(|k| k.timeout);
    let follower =
        kafka.map(|k| tokio::spawn(follow(k, checker.clone(), received.clone(), halt.clone())));
    let started = Instant::now();
    let fleet = run_fleet_with_progress(opts, stop, progress.clone());
    tokio::pin!(fleet);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    let write = |file: &mut std::fs::File, s: Sample| {
        writeln!(file, "{}", s.row()).map_err(|source| SoakError::Samples {
            path: samples.to_owned(),
            source,
        })
    };
    let sample = || Sample::take(&progress, started, received.load(Ordering::Relaxed));
    let report = loop {
        tokio::select! {
            r = &mut fleet => break r?,
            _ = tick.tick() => write(&mut file, sample())?,
        }
    };
    write(&mut file, sample())?;
    let Some(follower) = follower else {
        return Ok(SoakReport {
            fleet: report,
            kafka: None,
        });
    };
    let check = || {
        checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report(Some(&report))
    };
    let deadline = Instant::now() + timeout.unwrap_or_default();
    while !check().is_complete() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    halt.cancel();
    // The follower only ends on `halt`; a panic in it leaves the checker as it was.
    let _ = follower.await;
    write(&mut file, sample())?;
    let kafka = Some(check());
    Ok(SoakReport {
        fleet: report,
        kafka,
    })
}

/// `firmware-sim soak`: the fleet of `args`, sampled into `args.samples`, with the topic
/// of `args.kafka` followed if given (the binary writes the report to `args.report`).
pub async fn run_cli(args: SoakArgs, stop: CancellationToken) -> Result<SoakReport, SoakError> {
    let mut opts = FleetOptions::default();
    args.fleet.apply(&mut opts)?;
    let kafka = args.topic.clone().map(|topic| KafkaFollow {
        brokers: args.kafka.clone(),
        topic,
        timeout: args.kafka_timeout,
    });
    run_sampled(opts, &args.samples, args.sample_every, kafka, stop).await
}

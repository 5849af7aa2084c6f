//! The benchmark: a fleet publishing as fast as its windows allow, with a progress line per
//! second and, when given a Kafka topic, end-to-end completeness and latency.
//!
//! End-to-end latency is *publish → readable in Kafka*: a consumer task per partition reads
//! the topic while the fleet runs and records, for every reading of this run, the wall-clock
//! time it was read minus the `ts` the device stamped on it when it sampled it (ms
//! resolution, so figures carry up to 1 ms of rounding). Both clocks are this machine's.
//!
//! The report gives the generator's own CPU over the fleet's run ([`LoadReport::generator_cpu`]),
//! so every figure says whether the generator was the limit; with
//! [`FleetOptions::fixed_payload`] the devices patch one payload per boot instead of
//! sampling and encoding each reading, for runs where it would be.
//!
//! With [`LoadOptions::link`], the run also hosts a shaping [`Link`] (the gateway sends to
//! its listening address) from before the fleet starts until the last reading is read back,
//! and reports what went through it ([`LinkSummary`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::fleet::{
    run_fleet_with_progress, FleetError, FleetOptions, FleetProgress, FleetReport, Qos,
};
use crate::latency::{Histogram, LatencySummary};
use crate::link::{Link, LinkError, LinkOptions, LinkSummary};
use crate::telemetry::now_ms;
use crate::verify::{Checker, KafkaReading, StartAt, TopicReader, VerifyError, VerifyReport};
use crate::workload::Workload;

/// The Kafka side of a load run.
#[derive(Debug, Clone)]
pub struct KafkaTarget {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic the gateway forwards to.
    pub topic: String,
}

/// How a load run goes. [`LoadOptions::default`] is the project benchmark: 100 devices,
/// QoS 1, 100-byte payloads, 100 in flight each, as fast as possible, for 10 s.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The fleet.
    pub fleet: FleetOptions,
    /// Where to check forwarding, if anywhere.
    pub kafka: Option<KafkaTarget>,
    /// After publishing stops, how long to wait for every acknowledged reading to be readable
    /// in Kafka.
    pub kafka_timeout: Duration,
    /// Print a progress line this often (`None`: silent).
    pub progress_interval: Option<Duration>,
    /// A shaping link to run for the whole run (outages count from its start, just before
    /// the fleet's).
    pub link: Option<LinkOptions>,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        let fleet = FleetOptions {
            workload: Workload {
                devices: 100,
                payload_size: Some(100),
                rate: None,
                duration: Some(Duration::from_secs(10)),
                ..FleetOptions::default().workload
            },
            qos: Qos::AtLeastOnce,
            window: 100,
            ramp_up: Duration::from_millis(500),
            ..FleetOptions::default()
        };
        LoadOptions {
            fleet,
            kafka: None,
            kafka_timeout: Duration::from_secs(60),
            progress_interval: Some(Duration::from_secs(1)),
            link: None,
        }
    }
}

/// Errors of [`run_load`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The fleet could not run.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Kafka could not be read.
    #[error(transparent)]
    Kafka(#[from] VerifyError),
    /// The shaping link could not start.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The Kafka consumer task panicked (a bug in the simulator).
    #[error("Kafka consumer task failed: {0}")]
    ConsumerTask(#[from] tokio::task::JoinError),
}

/// Forwarding figures of a load run.
#[derive(Debug, Clone)]
pub struct KafkaLoadReport {
    /// The verification of the topic against the fleet's report.
    pub verify: VerifyReport,
    /// Whether every acknowledged reading was found before the timeout.
    pub complete: bool,
    /// Readings of this run read from Kafka (duplicates included).
    pub received: u64,
    /// Publish → readable in Kafka, over the readings of this run.
    pub end_to_end: LatencySummary,
    /// Readings of this run read per second, from the start of the run to the last one read.
    pub forwarded_per_sec: f64,
    /// Readings of this run read by the time the fleet finished (its last PUBACK): set
    /// against the fleet's acknowledged readings, whether forwarding kept up during the run
    /// or left a backlog to drain after it. A lower bound, since the reader may lag.
    pub forwarded_during_run: u64,
    /// From the end of publishing to the last acknowledged reading being readable.
    pub drain_time: Duration,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The fleet's own report.
    pub fleet: FleetReport,
    /// Readings handed to the clients per second, while publishing.
    pub published_per_sec: f64,
    /// Readings acknowledged per second, over the whole run.
    pub acked_per_sec: f64,
    /// Publish → PUBACK latency.
    pub puback: LatencySummary,
    /// Forwarding, when a Kafka target was given.
    pub kafka: Option<KafkaLoadReport>,
    /// What went through the shaping link, when the run had one.
    pub link: Option<LinkSummary>,
    /// CPU this process used (user + system, `getrusage(RUSAGE_SELF)`) from the start of
    /// the fleet to its end: the devices, and with a Kafka target the reader checking it.
    /// Against [`FleetReport::elapsed`] it tells whether the generator was the limit.
    pub generator_cpu: Duration,
    /// Whether the devices sent fixed payloads ([`FleetOptions::fixed_payload`]).
    pub fixed_payload: bool,
}

impl LoadReport {
    /// The generator's CPU over the fleet's run, in cores (1.0 = one core all the time).
    pub fn generator_cores(&self) -> f64 {
        self.generator_cpu.as_secs_f64() / self.fleet.elapsed.as_secs_f64().max(1e-9)
    }

    /// The generator's CPU per reading published, in µs; 10 µs per reading is one core per
    /// 100,000 readings/s.
    pub fn generator_us_per_reading(&self) -> f64 {
        self.generator_cpu.as_secs_f64() * 1e6 / self.fleet.published().max(1) as f64
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fl = &self.fleet;
        writeln!(
            f,
            "devices {}  published {}  acked {}  unacked {}  retransmits {}  connection errors {}  in {:.2} s",
            fl.devices.len(),
            fl.published(),
            fl.acked(),
            fl.unacked(),
            fl.retransmits(),
            fl.connection_errors(),
            fl.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "acked rate       {:>12.0} readings/s   (published {:.0}/s)",
            self.acked_per_sec, self.published_per_sec
        )?;
        writeln!(f, "publish→PUBACK   {}", self.puback.short())?;
        write!(
            f,
            "generator CPU    {:.2} cores ({:.2} s user+sys over {:.2} s), {:.2} µs/reading = {:.2} cores per 100k readings/s; {} payloads",
            self.generator_cores(),
            self.generator_cpu.as_secs_f64(),
            fl.elapsed.as_secs_f64(),
            self.generator_us_per_reading(),
            self.generator_us_per_reading() / 10.0,
            if self.fixed_payload { "fixed" } else { "model" }
        )?;
        let injected = fl.injected();
        if injected.total() > 0 {
            write!(f, "\ninjected faults  {injected}")?;
        }
        if let Some(k) = &self.kafka {
            writeln!(f)?;
            writeln!(
                f,
                "kafka            {}  received {}  missing {}  thinned {}  duplicates {}  out of order {}  drain {:.2} s",
                if k.complete { "COMPLETE" } else { "INCOMPLETE" },
                k.received,
                k.verify.missing(),
                k.verify.thinned(),
                k.verify.duplicates(),
                k.verify.out_of_order(),
                k.drain_time.as_secs_f64()
            )?;
            writeln!(
                f,
                "forwarded rate   {:>12.0} readings/s   ({} read back by the fleet's end: {:.2} of acked)",
                k.forwarded_per_sec,
                k.forwarded_during_run,
                k.forwarded_during_run as f64 / fl.acked().max(1) as f64
            )?;
            write!(f, "publish→Kafka    {}", k.end_to_end.short())?;
        }
        if let Some(l) = &self.link {
            write!(f, "\n{l}")?;
        }
        Ok(())
    }
}

/// What the consumer tasks pass to the checker: a record and when it was read (µs since
/// the epoch).
type Arrival = (KafkaReading, u64);

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct ConsumerOutcome {
    verify: VerifyReport,
    complete: bool,
    received: u64,
    e2e: Histogram,
    last_arrival: Option<Instant>,
    completed_at: Option<Instant>,
}

/// Consumes the topic until told the fleet's report and every acknowledged reading of it is
/// in, or the timeout after the report passes.
async fn consume(
    target: KafkaTarget,
    boot: u64,
    mut fleet_done: watch::Receiver<Option<Arc<FleetReport>>>,
    timeout: Duration,
    forwarded: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<ConsumerOutcome, VerifyError> {
    // The topic may not exist until the gateway forwards the first batch; if it does, start
    // at its end so earlier runs' records are not read at all. Give up once the fleet is done
    // and the timeout has passed without the topic appearing.
    let mut give_up: Option<tokio::time::Instant> = None;
    let mut start_at = StartAt::Latest;
    let reader = loop {
        let start = TopicReader::connect(&target.brokers, &target.topic, start_at).await;
        match start {
            Ok(r) => break r,
            Err(e) => {
                if give_up.is_none() && fleet_done.borrow().is_some() {
                    give_up = Some(tokio::time::Instant::now() + timeout);
                }
                if stop.is_cancelled() || give_up.is_some_and(|d| tokio::time::Instant::now() >= d)
                {
                    let report = fleet_done.borrow().clone();
                    return Ok(ConsumerOutcome {
                        verify: Checker::new().report(report.as_deref()),
                        complete: false,
                        received: 0,
                        e2e: Histogram::new(),
                        last_arrival: None,
                        completed_at: None,
                    });
                }
                if matches!(e, VerifyError::TopicNotFound(_)) {
                    // Created during this run: all of it is this run's.
                    start_at = StartAt::Earliest;
                }
                tracing::debug!(error = %e, "topic not readable yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<Vec<Arrival>>(64);
    let halt = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for mut p in reader.split() {
        let tx = tx.clone();
        let halt = halt.clone();
        readers.spawn(async move {
            loop {
                let batch = tokio::select! {
                    _ = halt.cancelled() => return Ok::<(), VerifyError>(()),
                    b = p.poll(Duration::from_millis(50)) => b,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, partition = p.partition(), "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    continue;
                }
                let t = now_us();
                let batch: Vec<Arrival> = batch.into_iter().map(|r| (r, t)).collect();
                if tx.send(batch).await.is_err() {
                    return Ok(());
                }
            }
        });
    }
    drop(tx);

    let mut checker = Checker::new();
    let mut e2e = Histogram::new();
    let mut received = 0u64;
    let mut last_arrival = None;
    let mut report: Option<Arc<FleetReport>> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut completed_at = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                for (r, at_us) in batch {
                    if let Some(id) = checker.add(&r) {
                        if id.boot == boot {
                            received += 1;
                            forwarded.fetch_add(1, Ordering::Relaxed);
                            e2e.record(at_us.saturating_sub(id.ts.saturating_mul(1000)));
                            last_arrival = Some(Instant::now());
                        }
                    }
                }
            }
            changed = fleet_done.changed(), if report.is_none() => {
                if changed.is_err() {
                    break;
                }
                report = fleet_done.borrow().clone();
                if report.is_some() {
                    deadline = Some(tokio::time::Instant::now() + timeout);
                }
            }
            _ = tick.tick() => {}
        }
        if let Some(rep) = &report {
            if checker.report(Some(rep)).is_complete() {
                completed_at = Some(Instant::now());
                break;
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
        }
    }
    halt.cancel();
    while readers.join_next().await.is_some() {}
    // Drain what the readers had already sent.
    while let Ok(batch) = rx.try_recv() {
        for (r, at_us) in batch {
            if let Some(id) = checker.add(&r) {
                if id.boot == boot {
                    received += 1;
                    e2e.record(at_us.saturating_sub(id.ts.saturating_mul(1000)));
                }
            }
        }
    }
    let verify = match &report {
        Some(rep) => checker.report(Some(rep)),
        None => checker.report(None),
    };
    Ok(ConsumerOutcome {
        complete: report.is_some() && verify.is_complete(),
        verify,
        received,
        e2e,
        last_arrival,
        completed_at,
    })
}

/// Runs a load test; see [`LoadOptions`]. `stop` ends publishing early (the run still drains
/// and reports).
pub async fn run_load(opts: LoadOptions, stop: CancellationToken) -> Result<LoadReport, LoadError> {
    let mut fleet_opts = opts.fleet.clone();
    let boot = *fleet_opts.workload.boot.get_or_insert_with(now_ms);
    let progress = Arc::new(FleetProgress::default());
    let forwarded = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(None);
    // Up before anything that may connect through it; dropped (closed) at the end of the run.
    let link = match opts.link.clone() {
        Some(l) => Some(Link::start(l).await?),
        None => None,
    };

    let consumer = opts.kafka.clone().map(|target| {
        tokio::spawn(consume(
            target,
            boot,
            done_rx,
            opts.kafka_timeout,
            forwarded.clone(),
            stop.clone(),
        ))
    });
    // Give the consumer a moment to position itself at the end of the topic.
    if consumer.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let started = Instant::now();
    let printer = opts.progress_interval.map(|every| {
        let progress = progress.clone();
        let forwarded = forwarded.clone();
        let kafka = opts.kafka.is_some();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut last = progress.snapshot();
            let mut last_fwd = 0;
            loop {
                tick.tick().await;
                let now = progress.snapshot();
                let fwd = forwarded.load(Ordering::Relaxed);
                let secs = every.as_secs_f64();
                let mut line = format!(
                    "[{:>5.1}s] published {:>9.0}/s  acked {:>9.0}/s  connected {:>5}  acked total {}",
                    started.elapsed().as_secs_f64(),
                    (now.published - last.published) as f64 / secs,
                    (now.acked - last.acked) as f64 / secs,
                    now.connected,
                    now.acked
                );
                if kafka {
                    line.push_str(&format!(
                        "  kafka {:>9.0}/s  total {}",
                        (fwd - last_fwd) as f64 / secs,
                        fwd
                    ));
                }
                println!("{line}");
                last = now;
                last_fwd = fwd;
            }
        })
    });

    let cpu_before = process_cpu();
    let fleet = run_fleet_with_progress(fleet_opts, stop.clone(), progress.clone()).await;
    let generator_cpu = process_cpu().saturating_sub(cpu_before);
    let forwarded_during_run = forwarded.load(Ordering::Relaxed);
    let fleet = match fleet {
        Ok(f) => f,
        Err(e) => {
            if let Some(p) = printer {
                p.abort();
            }
            return Err(e.into());
        }
    };
    let publish_end = Instant::now();
    let fleet = Arc::new(fleet);
    let _ = done_tx.send(Some(fleet.clone()));

    let kafka = match consumer {
        Some(handle) => {
            let outcome = handle.await??;
            let span = outcome
                .last_arrival
                .map(|t| t.saturating_duration_since(started))
                .unwrap_or_default();
            Some(KafkaLoadReport {
                complete: outcome.complete,
                received: outcome.received,
                end_to_end: outcome.e2e.summary(),
                forwarded_per_sec: outcome.received as f64 / span.as_secs_f64().max(1e-9),
                forwarded_during_run,
                drain_time: outcome
                    .completed_at
                    .unwrap_or_else(Instant::now)
                    .saturating_duration_since(publish_end),
                verify: outcome.verify,
            })
        }
        None => None,
    };
    if let Some(p) = printer {
        p.abort();
    }
    let fleet = Arc::try_unwrap(fleet).unwrap_or_else(|a| (*a).clone());
    Ok(LoadReport {
        published_per_sec: fleet.published() as f64 / fleet.publish_elapsed.as_secs_f64().max(1e-9),
        acked_per_sec: fleet.acked_per_sec(),
        puback: fleet.puback_latency,
        fleet,
        kafka,
        link: link.as_ref().map(Link::summary),
        generator_cpu,
        fixed_payload: opts.fleet.fixed_payload,
    })
}

/// CPU time (user + system) this process has used so far; zero if the kernel will not
/// say, which then shows as a generator using no CPU.
fn process_cpu() -> Duration {
    use nix::libc;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass, which outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

//! Serial ingest over real pseudo-terminals: firmware-sim's turbines write framed readings
//! to a pty, tidegate's port task (or the whole daemon) reads the other side.
//!
//! The first tests drive [`tidegate::ingest::serial::run_port`] against a journal in a
//! temp dir and read the journal back, so that every counter can be checked exactly; the
//! last ones run the real `tidegate` binary with a real Kafka-protocol broker (Tansu).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::metrics::scrape;
use common::status::{eventually, poll};
use common::{Fleet, Gateway, Tansu};
use firmware_sim::{
    run_serial, wait_until_complete, CancellationToken, FaultCounts, FaultPlan, Framing, ReadingId,
    SerialLine, SerialOptions, SerialReport, SerialTarget, Workload,
};
use tidegate::config::{JournalConfig, OnFull};
use tidegate::ingest::serial::{run_port, SerialConfig};
use tidegate::journal::{Journal, WriterHandle};
use tidegate::record::{Record, SourceKind};
use tidegate::telemetry::{get, SerialCounters};

/// Time allowed for frames to reach the journal, or readings Kafka.
const ARRIVAL: Duration = Duration::from_secs(60);

/// A journal in a temp dir with no upstream.
struct TestJournal {
    journal: Journal,
    writer: WriterHandle,
    _dir: tempfile::TempDir,
}

impl TestJournal {
    fn open() -> TestJournal {
        Self::open_with(JournalConfig::default())
    }

    fn open_with(config: JournalConfig) -> TestJournal {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = JournalConfig {
            dir: dir.path().join("journal"),
            ..config
        };
        let (journal, writer) = Journal::open(&config, &[]).expect("open journal");
        TestJournal {
            journal,
            writer,
            _dir: dir,
        }
    }

    /// Every record held, in sequence order.
    async fn records(&self) -> Vec<Record> {
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || j.read_from(1, usize::MAX, usize::MAX))
            .await
            .expect("join")
            .expect("read journal")
            .into_iter()
            .map(|r| r.expect("record passes its checksum"))
            .collect()
    }

    async fn close(self) {
        drop(self.journal);
        let w = self.writer;
        let _ = tokio::task::spawn_blocking(move || w.join()).await;
    }
}

/// A port task reading `config` into `journal`.
struct PortTask {
    counters: Arc<SerialCounters>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl PortTask {
    fn start(config: SerialConfig, journal: &Journal) -> PortTask {
        // The port's log lines, captured and shown when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,rskafka=error")
            .with_test_writer()
            .try_init();
        let counters = Arc::new(SerialCounters::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_port(
            config,
            journal.clone(),
            counters.clone(),
            stop.clone(),
        ));
        PortTask {
            counters,
            stop,
            task,
        }
    }

    /// Waits until `what` of the counters holds.
    async fn wait_for(&self, what: &str, cond: impl Fn(&SerialCounters) -> bool) {
        poll(ARRIVAL, async || {
            if cond(&self.counters) {
                Ok(())
            } else {
                Err(self.counters.summary())
            }
        })
        .await
        .unwrap_or_else(|last| panic!("timed out waiting for {what}: {last}"));
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the port task stops promptly")
            .expect("the port task does not panic");
    }
}

fn port_config(path: &Path, framing: Framing) -> SerialConfig {
    let mut c = SerialConfig::new(path);
    c.framing = framing;
    c.topic = Some(format!("serial/test-{framing}"));
    // Quick retries keep the vanish-and-return test short.
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(200);
    c
}

fn sim(framing: Framing, devices: usize, count: u64, boot: u64) -> SerialOptions {
    SerialOptions {
        framing,
        workload: Workload {
            devices,
            count: Some(count),
            rate: None,
            boot: Some(boot),
            ..Workload::default()
        },
    }
}

/// Writes `opts` to `line` and waits until the reader has taken every byte.
async fn write_all(line: &mut SerialLine, opts: SerialOptions) -> SerialReport {
    let report = tokio::time::timeout(ARRIVAL, run_serial(line, opts, CancellationToken::new()))
        .await
        .expect("the simulator finishes writing")
        .expect("the simulator writes");
    assert!(
        line.drain(ARRIVAL).await,
        "tidegate read everything written"
    );
    report
}

/// The readings among `records`, per (device, boot), in journal order; and how many
/// records were not readings (garbage that is a valid frame).
fn readings(records: &[Record]) -> (BTreeMap<(String, u64), Vec<u64>>, u64) {
    let mut by_device: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    let mut other = 0;
    for r in records {
        match ReadingId::parse(&r.reading.payload) {
            Some(id) => by_device
                .entry((id.device, id.boot))
                .or_default()
                .push(id.seq),
            None => other += 1,
        }
    }
    (by_device, other)
}

/// Every device of `report` wrote counters `1..=count` under `boot`; `got` must hold each
/// of them in order (duplicates, sent back to back, are allowed to repeat).
fn assert_in_order(got: &BTreeMap<(String, u64), Vec<u64>>, report: &SerialReport, boot: u64) {
    for (device, &count) in &report.frames {
        let mut seqs = got
            .get(&(device.clone(), boot))
            .unwrap_or_else(|| panic!("nothing from {device} boot {boot}"))
            .clone();
        seqs.dedup();
        assert_eq!(
            seqs,
            (1..=count).collect::<Vec<_>>(),
            "{device} boot {boot}: every reading, in order"
        );
    }
}

fn rejected_total(c: &SerialCounters) -> u64 {
    c.rejections().iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_of_both_framings_reach_the_journal_in_order_over_a_pty() {
    for framing in [Framing::Lines, Framing::Cobs] {
        let tj = TestJournal::open();
        let mut line = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
        let config = port_config(line.path(), framing);
        let port = PortTask::start(config.clone(), &tj.journal);
        let report = write_all(&mut line, sim(framing, 3, 300, 7)).await;
        assert_eq!(report.total_frames(), 900);
        port.wait_for("900 frames", |c| get(&c.frames_accepted) == 900)
            .await;
        let c = &port.counters;
        assert_eq!(get(&c.bytes), report.bytes, "{framing}");
        assert_eq!(rejected_total(c), 0, "{framing}: {}", c.summary());
        assert_eq!(get(&c.connected), 1);
        assert_eq!(get(&c.reconnects), 0);

        let records = tj.records().await;
        assert_eq!(records.len(), 900);
        for r in &records {
            assert_eq!(r.reading.source_kind, SourceKind::Serial);
            assert_eq!(r.reading.source, line.path().display().to_string());
            assert_eq!(r.reading.topic, format!("serial/test-{framing}"));
        }
        let (got, other) = readings(&records);
        assert_eq!(other, 0);
        assert_in_order(&got, &report, 7);
        let counters = port.counters.clone();
        port.stop().await;
        assert_eq!(get(&counters.connected), 0, "closed at shutdown");
        assert_eq!(rejected_total(&counters), 0, "no frame was in progress");
        tj.close().await;
    }
}

/// The faults every device injected, summed.
fn injected(report: &SerialReport) -> FaultCounts {
    report.total_faults()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_bad_crcs_truncated_and_oversized_frames_are_rejected_exactly_and_every_good_frame_arrives(
) {
    let plan = FaultPlan {
        noise_rate: 0.04,
        bad_crc_rate: 0.04,
        truncated_rate: 0.04,
        oversized_rate: 0.02,
        // Over the port's 64 KiB max_frame.
        oversized_bytes: 70_000,
        malformed_json_rate: 0.03,
        duplicate_rate: 0.03,
        ..FaultPlan::default()
    };
    let (devices, count, seed) = (3usize, 400u64, 11u64);
    for framing in [Framing::Cobs, Framing::Lines] {
        let tj = TestJournal::open();
        let mut line = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
        let port = PortTask::start(port_config(line.path(), framing), &tj.journal);
        let mut opts = sim(framing, devices, count, 3);
        opts.workload.seed = seed;
        opts.workload.faults = plan.clone();
        let report = write_all(&mut line, opts).await;
        // The simulator injected exactly what the plan says for this seed.
        let mut want = FaultCounts::default();
        for n in 1..=devices {
            want.merge(&plan.expected(seed, n, count));
        }
        let f = injected(&report);
        assert_eq!(f, want);
        assert!(
            f.noise > 0 && f.bad_crc > 0 && f.truncated > 0 && f.oversized > 0,
            "{f}"
        );

        // What tidegate can tell is bad: in cobs, everything but malformed JSON (a valid
        // frame) and duplicates; in lines, which has no CRC, the oversized lines and the
        // lines that are not UTF-8 (noise and "bad CRC" lines carry a 0xFF byte).
        let good = report.total_frames() + f.duplicate;
        let (rejected, journaled_garbage) = match framing {
            Framing::Cobs => (
                f.noise + f.bad_crc + f.truncated + f.oversized,
                f.malformed_json,
            ),
            _ => (
                f.noise + f.bad_crc + f.oversized,
                f.malformed_json + f.truncated,
            ),
        };
        port.wait_for("every frame", |c| {
            get(&c.frames_accepted) + rejected_total(c) == good + journaled_garbage + rejected
        })
        .await;
        let c = &port.counters;
        assert_eq!(
            get(&c.frames_accepted),
            good + journaled_garbage,
            "{framing}: {}",
            c.summary()
        );
        assert_eq!(rejected_total(c), rejected, "{framing}: {}", c.summary());
        assert_eq!(get(&c.rejected_oversized), f.oversized, "{framing}");
        match framing {
            Framing::Cobs => {
                assert!(get(&c.rejected_bad_crc) >= f.bad_crc, "{}", c.summary());
                assert_eq!(get(&c.rejected_not_utf8), 0);
            }
            _ => assert_eq!(get(&c.rejected_not_utf8), f.noise + f.bad_crc),
        }
        assert_eq!(get(&c.rejected_full) + get(&c.rejected_unterminated), 0);

        let records = tj.records().await;
        let (got, other) = readings(&records);
        assert_eq!(other, journaled_garbage, "{framing}");
        let readings_held: usize = got.values().map(Vec::len).sum();
        assert_eq!(readings_held as u64, good, "{framing}");
        assert_in_order(&got, &report, 3);
        port.stop().await;
        tj.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_vanishes_and_returns_under_the_same_name_is_read_again() {
    // As udev's /dev/serial/by-id names do, a symlink the test controls stands for the
    // adapter: removed when it is unplugged, pointing at a new pty when it returns.
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("ttyUSB0");
    let tj = TestJournal::open();

    let mut first = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    std::os::unix::fs::symlink(first.path(), &link).expect("symlink");
    let port = PortTask::start(port_config(&link, Framing::Cobs), &tj.journal);
    let before = write_all(&mut first, sim(Framing::Cobs, 2, 100, 1)).await;
    port.wait_for("the first 200 frames", |c| get(&c.frames_accepted) == 200)
        .await;

    // Unplugged: the pty's controller closes (reads fail with EIO) and the name goes.
    drop(first);
    std::fs::remove_file(&link).expect("remove symlink");
    port.wait_for("the port to be lost", |c| get(&c.connected) == 0)
        .await;
    // Several attempts fail while it is away; none counts as a reconnect.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&port.counters.reconnects), 0);

    // Plugged in again: a new pty under the same name.
    let mut second = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    assert_ne!(second.path(), Path::new(""));
    std::os::unix::fs::symlink(second.path(), &link).expect("symlink");
    port.wait_for("the port to be back", |c| get(&c.connected) == 1)
        .await;
    let after = write_all(&mut second, sim(Framing::Cobs, 2, 100, 2)).await;
    port.wait_for("all 400 frames", |c| get(&c.frames_accepted) == 400)
        .await;
    assert_eq!(get(&port.counters.reconnects), 1);
    assert_eq!(
        rejected_total(&port.counters),
        0,
        "{}",
        port.counters.summary()
    );

    let records = tj.records().await;
    let (got, other) = readings(&records);
    assert_eq!(other, 0);
    assert_in_order(&got, &before, 1);
    assert_in_order(&got, &after, 2);
    // Everything from before the unplug is journaled before everything after it.
    let boots: Vec<u64> = records
        .iter()
        .filter_map(|r| ReadingId::parse(&r.reading.payload).map(|id| id.boot))
        .collect();
    assert!(boots.windows(2).all(|w| w[0] <= w[1]), "boots in order");
    assert!(records
        .iter()
        .all(|r| r.reading.source == link.display().to_string()));
    port.stop().await;
    tj.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_a_full_journal_refuses_under_reject_are_counted_and_the_rest_keep_their_order() {
    // No upstream, so nothing is ever trimmed: once 1 MiB is held, every frame is refused.
    let tj = TestJournal::open_with(JournalConfig {
        max_size: bytesize::ByteSize::mib(1),
        on_full: OnFull::Reject,
        // Stored as sent, so 1 MiB of frames fills it.
        compression: tidegate::config::JournalCompression::None,
        ..JournalConfig::default()
    });
    let mut line = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    let port = PortTask::start(port_config(line.path(), Framing::Cobs), &tj.journal);
    let mut opts = sim(Framing::Cobs, 1, 1000, 9);
    opts.workload.payload_size = Some(2000); // about 2 MB in all
    let report = write_all(&mut line, opts).await;
    port.wait_for("every frame accounted for", |c| {
        get(&c.frames_accepted) + get(&c.rejected_full) == 1000
    })
    .await;
    let c = &port.counters;
    let accepted = get(&c.frames_accepted);
    assert!(get(&c.rejected_full) > 0, "{}", c.summary());
    assert!(accepted > 100, "{}", c.summary());
    assert_eq!(rejected_total(c), get(&c.rejected_full));
    assert_eq!(report.total_frames(), 1000);
    // What was taken is the start of the stream, in order.
    let records = tj.records().await;
    assert_eq!(records.len() as u64, accepted);
    let (got, _) = readings(&records);
    assert_eq!(
        got[&("wt-0001".to_owned(), 9)],
        (1..=accepted).collect::<Vec<_>>()
    );
    port.stop().await;
    tj.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_never_exists_is_waited_for_and_stops_on_shutdown() {
    let tj = TestJournal::open();
    let port = PortTask::start(
        port_config(Path::new("/nonexistent/tidegate/ttyUSB9"), Framing::Lines),
        &tj.journal,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&port.counters.connected), 0);
    assert_eq!(get(&port.counters.reconnects), 0);
    assert!(!port.task.is_finished(), "it keeps trying");
    port.stop().await;
    tj.close().await;
}

// ---- The daemon, end to end -----------------------------------------------------------

fn gateway_config(
    mqtt: u16,
    dir: &Path,
    kafka: u16,
    topic: &str,
    ports: &[(PathBuf, Framing)],
) -> String {
    let mut c = format!(
        "[gateway]\nid = \"gw-serial\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\ntopic = \"{topic}\"\n\
         partitions = 3\nlinger = \"5ms\"\nrequest_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n",
        dir.join("journal").display()
    );
    for (path, framing) in ports {
        c.push_str(&format!(
            "[[serial]]\nport = \"{}\"\nframing = \"{framing}\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n",
            path.display()
        ));
    }
    c
}

/// Reads `topic` until it holds `want` records (or fails after [`ARRIVAL`]).
async fn read_until(
    tansu: &Tansu,
    topic: &str,
    want: usize,
    gw: &Gateway,
) -> Vec<firmware_sim::KafkaReading> {
    eventually(
        gw,
        format_args!("{want} records in {topic}"),
        ARRIVAL,
        async || {
            let records = firmware_sim::verify::read_topic(&tansu.brokers(), topic)
                .await
                .unwrap_or_default();
            if records.len() >= want {
                Ok(records)
            } else {
                Err(format!("{} records", records.len()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_readings_of_both_framings_reach_kafka_in_order_keyed_by_port_topic() {
    let tansu = Tansu::start();
    let mut lines = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    let mut cobs = SerialLine::open(&SerialTarget::Pty, 115_200).expect("pty");
    let ports = [
        (lines.path().to_path_buf(), Framing::Lines),
        (cobs.path().to_path_buf(), Framing::Cobs),
    ];
    let mut gw =
        Gateway::start_fresh(|mqtt, dir| gateway_config(mqtt, dir, tansu.port(), "serial", &ports));
    let mut faulty = sim(Framing::Cobs, 2, 300, 5);
    faulty.workload.first_device = 3;
    faulty.workload.faults = FaultPlan {
        noise_rate: 0.05,
        bad_crc_rate: 0.05,
        truncated_rate: 0.05,
        ..FaultPlan::default()
    };
    let (a, b) = tokio::join!(
        write_all(&mut lines, sim(Framing::Lines, 2, 300, 4)),
        write_all(&mut cobs, faulty),
    );
    let records = read_until(&tansu, "serial", 1200, &gw).await;
    assert_eq!(records.len(), 1200, "exactly the good frames, once each");

    let key_of = |path: &Path| format!("serial/{}", path.file_name().unwrap().to_string_lossy());
    // Per key (one port), records come in partition-offset order: check each device's
    // readings are all there, in order.
    let mut got: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    let mut records = records;
    records.sort_by_key(|r| (r.partition, r.offset));
    for r in &records {
        let id = ReadingId::parse(&r.payload).expect("only readings reach Kafka");
        let want_key = if id.boot == 4 {
            key_of(lines.path())
        } else {
            key_of(cobs.path())
        };
        assert_eq!(r.key.as_deref(), Some(want_key.as_bytes()));
        assert_eq!(r.header("tidegate-gateway"), Some(&b"gw-serial"[..]));
        got.entry((id.device, id.boot)).or_default().push(id.seq);
    }
    assert_in_order(&got, &a, 4);
    assert_in_order(&got, &b, 5);
    let f = b.total_faults();
    assert!(f.garbage() > 0);
    // The daemon counts each rejected frame under its port.
    let cobs_port = cobs.path().display().to_string();
    let rejected: f64 = scrape(&gw)
        .await
        .samples
        .iter()
        .filter(|s| {
            s.metric == "tidegate_readings_rejected_total"
                && s.labels.get("source") == Some("serial")
                && s.labels.get("input") == Some(cobs_port.as_str())
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(rejected > 0.0, "no rejection counted for {cobs_port}");
    // SIGTERM with ports open: they stop reading and the daemon exits 0.
    let status = gw.terminate();
    assert!(status.success(), "{status:?}\n{}", gw.log());
    assert_eq!(
        gw.log().matches("Serial port closed for shutdown").count(),
        2,
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_port_that_never_exists_does_not_stop_the_mqtt_side() {
    let tansu = Tansu::start();
    let missing = PathBuf::from("/nonexistent/tidegate/ttyUSB7");
    let ports = [(missing.clone(), Framing::Cobs)];
    let mut gw = Gateway::start_fresh(|mqtt, dir| {
        gateway_config(mqtt, dir, tansu.port(), "mqtt-beside", &ports)
    });
    let started = tokio::time::Instant::now();
    let report = Fleet::new(gw.mqtt_addr(), 5)
        .window(10)
        .count(200)
        .run()
        .await;
    assert!(report.all_acked());
    let v = wait_until_complete(&tansu.brokers(), "mqtt-beside", &report, ARRIVAL)
        .await
        .expect("read topic");
    assert!(v.is_complete() && v.is_ok(), "{v}\n{}", gw.log());
    // Tried several times (every 500 ms at most) by now, and said once.
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    let log = gw.log();
    assert_eq!(
        log.matches("Serial port cannot be opened").count(),
        1,
        "the missing port is logged once:\n{log}"
    );
    // A port being waited for does not hold up shutdown.
    let status = gw.terminate();
    assert!(status.success(), "{status:?}\n{}", gw.log());
}

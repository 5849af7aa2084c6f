//! Modbus RTU polling against firmware-sim's slave turbines on real pseudo-terminals.
//!
//! Most tests run the poller as a library against a journal in a temp dir, so they can
//! read the journal and the per-slave counters directly; the last one runs the real daemon
//! with a Kafka-protocol broker (Tansu) and an MQTT fleet beside the Modbus bus.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::status::{eventually, poll};
use common::Fleet;
use firmware_sim::modbus::{ModbusBus, ModbusOptions, PATTERN_F32, PATTERN_I32, PATTERN_U32};
use firmware_sim::telemetry::{Turbine, TurbineState};
use firmware_sim::{wait_until_complete, CancellationToken};
use serde_json::Value;
use tidegate::config::JournalConfig;
use tidegate::ingest::modbus::{self, ModbusConfig};
use tidegate::journal::{Journal, WriterHandle};
use tidegate::record::{Reading, Record, SourceKind};
use tidegate::telemetry::{get, ModbusCounters};
use tokio::task::JoinHandle;

/// Longest a test waits for something the poller should do within a few intervals.
const WAIT: Duration = Duration::from_secs(20);

/// The simulator's model step, long enough that a poll sees one step.
const STEP: Duration = Duration::from_millis(500);

/// The `[[modbus]]` section at `port` with `slaves` (TOML of `[[modbus.slave]]` tables).
fn section(port: &Path, slaves: &str) -> String {
    format!(
        "[[modbus]]\nport = \"{}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n{slaves}",
        port.display()
    )
}

/// A slave table with `registers` (TOML of `[[modbus.slave.register]]` tables).
fn slave(id: u8, name: &str, registers: &str) -> String {
    format!("[[modbus.slave]]\nid = {id}\nname = \"{name}\"\n{registers}")
}

fn register(name: &str, kind: &str, address: u16, ty: &str, order: &str, scale: f64) -> String {
    let mut r = format!(
        "[[modbus.slave.register]]\nname = \"{name}\"\nkind = \"{kind}\"\naddress = {address}\n"
    );
    if !ty.is_empty() {
        r.push_str(&format!("type = \"{ty}\"\n"));
    }
    if !order.is_empty() {
        r.push_str(&format!("byte_order = \"{order}\"\n"));
    }
    if scale != 1.0 {
        r.push_str(&format!("scale = {scale}\n"));
    }
    r
}

/// The live registers of the simulated turbine (see firmware_sim::modbus).
fn live_registers() -> String {
    [
        register("wind_ms", "input", 0, "", "", 0.01),
        register("rpm", "input", 1, "u16", "big", 0.01),
        register("temp_c", "input", 2, "i16", "", 0.01),
        register("vib_mm_s", "input", 3, "u16", "", 0.01),
        register("power_kw", "input", 4, "f32", "big", 1.0),
        register("energy_kwh", "input", 6, "u32", "big-swap", 0.001),
        register("step", "input", 8, "u32", "big", 1.0),
        register("state", "input", 10, "u16", "", 1.0),
        register("running", "discrete", 0, "", "", 1.0),
        register("storm", "discrete", 1, "bool", "", 1.0),
        register("enabled", "coil", 0, "", "", 1.0),
    ]
    .concat()
}

/// The constant holding registers in every type and byte order.
fn pattern_registers() -> String {
    let mut r = vec![
        register("rated_kw", "holding", 100, "u16", "", 1.0),
        register("i16_big", "holding", 101, "i16", "big", 0.1),
        register("i16_little", "holding", 102, "i16", "little", 0.1),
    ];
    for (k, order) in ["big", "little", "big-swap", "little-swap"]
        .iter()
        .enumerate()
    {
        let k = k as u16;
        r.push(register(
            &format!("u32_{order}"),
            "holding",
            110 + 2 * k,
            "u32",
            order,
            1.0,
        ));
        r.push(register(
            &format!("i32_{order}"),
            "holding",
            120 + 2 * k,
            "i32",
            order,
            0.001,
        ));
        r.push(register(
            &format!("f32_{order}"),
            "holding",
            130 + 2 * k,
            "f32",
            order,
            2.0,
        ));
    }
    r.concat()
}

/// The poller under test with its own journal.
struct Rig {
    journal: Journal,
    /// Kept so the writer thread is not detached before the journal handles are gone.
    _writer: WriterHandle,
    counters: Arc<ModbusCounters>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Parses and validates `toml` like the daemon does and starts polling its first
    /// `[[modbus]]`.
    fn start(toml: &str) -> Rig {
        let config = tidegate::validate::from_toml(toml, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let bus: ModbusConfig = config.modbus[0].clone();
        let dir = tempfile::tempdir().expect("temp dir");
        let journal_config = JournalConfig {
            dir: dir.path().join("journal"),
            ..config.journal.clone()
        };
        let (journal, writer) = Journal::open(&journal_config, &[]).expect("journal");
        let counters = Arc::new(modbus::counters_for(&bus));
        let stop = CancellationToken::new();
        let task = tokio::spawn(modbus::run(
            bus,
            journal.clone(),
            counters.clone(),
            stop.clone(),
        ));
        Rig {
            journal,
            _writer: writer,
            counters,
            stop,
            task: Some(task),
            _dir: dir,
        }
    }

    /// Every record journaled so far with its payload.
    fn readings(&self) -> Vec<(Record, Value)> {
        self.journal
            .read_from(1, 1_000_000, usize::MAX)
            .expect("read the journal")
            .into_iter()
            .map(|r| {
                let r = r.expect("record decodes");
                let v = serde_json::from_slice(&r.reading.payload).expect("payload is JSON");
                (r, v)
            })
            .collect()
    }

    /// Readings of slave `name`.
    fn readings_of(&self, name: &str) -> Vec<Value> {
        self.readings()
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| v["name"] == name)
            .collect()
    }

    /// Waits until `cond` holds, or fails with `what`.
    async fn wait_for(&self, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
        poll(WAIT, async || {
            if cond(self) {
                Ok(())
            } else {
                Err(self.counters.to_string())
            }
        })
        .await
        .unwrap_or_else(|last| panic!("timed out waiting for {what}; counters: {last}"));
    }

    /// Counters of the slave at `index` (config order).
    fn slave(&self, index: usize) -> &tidegate::telemetry::ModbusSlaveCounters {
        &self.counters.slaves[index].1
    }

    /// Stops polling (promptly, without a panic); the journal stays readable.
    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("the poller stops promptly")
                .expect("the poller does not panic");
        }
    }
}

fn bus(slaves: &[u8], corrupt_every: Option<u64>) -> ModbusBus {
    ModbusBus::start(ModbusOptions {
        slaves: slaves.to_vec(),
        corrupt_every,
        seed: 7,
        boot: 1,
        step: STEP,
        sim_step: Duration::from_secs(1),
    })
    .expect("the slave bus starts")
}

fn close_to(v: &Value, want: f64, tolerance: f64) -> bool {
    v.as_f64()
        .is_some_and(|got| (got - want).abs() <= tolerance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_reach_the_journal_with_scaled_values_of_every_type_and_byte_order() {
    let sim = bus(&[1], None);
    let registers = live_registers() + &pattern_registers();
    let mut rig = Rig::start(&section(sim.path(), &slave(1, "wt-0001", &registers)));
    rig.wait_for("four readings", |r| r.readings().len() >= 4)
        .await;

    let readings = rig.readings();
    let port = sim.path().display().to_string();
    for (i, (record, v)) in readings.iter().enumerate() {
        assert_eq!(record.reading.topic, "modbus/wt-0001");
        assert_eq!(record.reading.source, format!("modbus:{port}:1"));
        assert_eq!(record.reading.source_kind, SourceKind::Serial);
        assert_eq!(v["slave"], 1);
        assert_eq!(v["name"], "wt-0001");
        assert_eq!(
            v["seq"],
            i as u64 + 1,
            "one reading per poll, in order: {v}"
        );
        assert!(
            v["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000),
            "{v}"
        );
        assert!(v.get("errors").is_none(), "every register read: {v}");
        let values = &v["values"];

        // The constants, in every type and byte order, scaled.
        assert_eq!(values["rated_kw"], 2000, "{values}");
        assert_eq!(values["i16_big"], -20.0);
        assert_eq!(values["i16_little"], -20.0);
        for order in ["big", "little", "big-swap", "little-swap"] {
            assert_eq!(
                values[format!("u32_{order}")],
                PATTERN_U32,
                "{order}: {values}"
            );
            assert_eq!(
                values[format!("i32_{order}")],
                f64::from(PATTERN_I32) / 1000.0,
                "{order}"
            );
            assert_eq!(
                values[format!("f32_{order}")],
                f64::from(PATTERN_F32) * 2.0,
                "{order}"
            );
        }

        // The live values are the model's at the step the slave reports.
        let step = values["step"].as_u64().expect("step is an integer");
        let mut model = Turbine::new(7, 1, 1, 1.0);
        let mut want = model.step(0);
        for _ in 1..step {
            want = model.step(0);
        }
        assert!(
            close_to(&values["wind_ms"], want.wind_ms, 0.0051),
            "{values} vs {want:?}"
        );
        assert!(
            close_to(&values["rpm"], want.rpm, 0.0051),
            "{values} vs {want:?}"
        );
        assert!(
            close_to(&values["temp_c"], want.temp_c, 0.0051),
            "{values} vs {want:?}"
        );
        assert!(
            close_to(&values["vib_mm_s"], want.vib_mm_s, 0.0051),
            "{values} vs {want:?}"
        );
        assert!(
            close_to(&values["power_kw"], want.power_kw, 1e-3),
            "{values} vs {want:?}"
        );
        assert!(
            values["energy_kwh"].as_f64().is_some_and(|e| e >= 0.0),
            "{values}"
        );
        let state = model.state();
        assert_eq!(
            values["state"],
            match state {
                TurbineState::Idle => 0,
                TurbineState::Running => 1,
                TurbineState::Storm => 2,
            }
        );
        // The discrete inputs are another request of the poll: the model may have stepped
        // in between.
        model.step(0);
        let bits = |s: TurbineState| (s == TurbineState::Running, s == TurbineState::Storm);
        let got = (values["running"].as_bool(), values["storm"].as_bool());
        assert!(
            [bits(state), bits(model.state())]
                .iter()
                .any(|&(r, s)| got == (Some(r), Some(s))),
            "{values}"
        );
        assert_eq!(values["enabled"], true);
    }
    let c = rig.slave(0);
    assert_eq!(
        (
            get(&c.timeouts),
            get(&c.crc_errors),
            get(&c.exceptions),
            get(&c.protocol_errors)
        ),
        (0, 0, 0, 0)
    );
    let polls = get(&c.polls);
    rig.stop().await;
    // Contiguous registers share a request, registers apart do not: input 0..=10, holding
    // 100..=102, 110..=117, 120..=127 and 130..=137, discrete 0..=1 and coil 0 are seven
    // requests per poll.
    let answered = sim.stats().answered.load(Ordering::Relaxed);
    assert!(
        answered <= polls * 7 && answered + 7 >= polls * 7,
        "{answered} answers for {polls} polls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_crc_errors_and_exceptions_are_counted_per_slave_while_other_slaves_keep_flowing()
{
    // Slave 3 is not on the bus; every 4th answer on the bus is corrupted.
    let sim = bus(&[1, 2], Some(4));
    let wind = register("wind_ms", "input", 0, "", "", 0.01);
    let bogus = register("bogus", "holding", 500, "", "", 1.0);
    let slaves = [
        slave(1, "wt-0001", &wind),
        slave(2, "wt-0002", &(wind.clone() + &bogus)),
        slave(3, "wt-0003", &wind),
    ]
    .concat();
    let mut rig = Rig::start(&section(sim.path(), &slaves));
    rig.wait_for(
        "crc errors on both answering slaves and 5 readings of each",
        |r| {
            get(&r.slave(0).crc_errors) > 0
                && get(&r.slave(1).crc_errors) > 0
                && get(&r.slave(0).readings) >= 5
                && get(&r.slave(1).readings) >= 5
        },
    )
    .await;
    rig.stop().await;
    let (one, two, three) = (rig_slave(&rig, 0), rig_slave(&rig, 1), rig_slave(&rig, 2));

    // Slave 3 never answers: every poll is one timeout, nothing is journaled.
    // (The last poll may have been cut short by the stop.)
    assert!(
        three.timeouts <= three.polls && three.timeouts + 1 >= three.polls,
        "{three:?}"
    );
    assert_eq!(
        (three.readings, three.crc_errors, three.exceptions),
        (0, 0, 0)
    );
    assert!(rig.readings_of("wt-0003").is_empty());

    // Slave 2's bogus register is an exception in every poll whose answer was not
    // corrupted; its wind reading still flows, with the error beside it.
    assert_eq!(two.timeouts, 0, "{two:?}");
    assert!(two.exceptions + two.crc_errors >= two.polls - 1, "{two:?}");
    assert!(two.exceptions > 0, "{two:?}");
    let readings = rig.readings_of("wt-0002");
    assert!(readings.iter().any(|v| {
        v["values"]["wind_ms"].is_number()
            && v["errors"]["bogus"] == "exception 0x02: illegal data address"
    }));

    // Slave 1 only sees the corrupted answers; each is one CRC error and one poll without
    // a reading.
    assert_eq!(
        (one.timeouts, one.exceptions, one.protocol_errors),
        (0, 0, 0),
        "{one:?}"
    );
    assert!(one.polls - one.readings <= one.crc_errors + 1, "{one:?}");
    let readings = rig.readings_of("wt-0001");
    assert!(readings.iter().all(|v| v.get("errors").is_none()));
    // Gaps in seq are exactly the polls that read nothing.
    let seqs: Vec<u64> = readings.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Every corrupted answer was counted as a CRC error, once (the last may have been cut
    // off by the stop).
    let corrupted = sim.stats().corrupted.load(Ordering::Relaxed);
    let crc = one.crc_errors + two.crc_errors;
    assert!(
        crc <= corrupted && crc + 1 >= corrupted,
        "{crc} CRC errors, {corrupted} corrupted"
    );
}

/// A snapshot of one slave's counters.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // read through Debug in failure messages
struct Snapshot {
    polls: u64,
    readings: u64,
    timeouts: u64,
    crc_errors: u64,
    exceptions: u64,
    protocol_errors: u64,
}

fn rig_slave(rig: &Rig, i: usize) -> Snapshot {
    let c = rig.slave(i);
    Snapshot {
        polls: get(&c.polls),
        readings: get(&c.readings),
        timeouts: get(&c.timeouts),
        crc_errors: get(&c.crc_errors),
        exceptions: get(&c.exceptions),
        protocol_errors: get(&c.protocol_errors),
    }
}

/// Points the symbolic link `link` at the bus's pty (the stable port path of the config).
fn link(link: &Path, sim: &ModbusBus) {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(sim.path(), link).expect("symlink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_port_is_retried_and_polling_resumes_when_it_comes_and_after_it_vanishes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port: PathBuf = dir.path().join("ttyRS485");
    let mut rig = Rig::start(&section(
        &port,
        &slave(1, "wt-0001", &register("wind_ms", "input", 0, "", "", 0.01)),
    ));
    // Absent: retried with backoff, nothing journaled, the poller keeps going.
    rig.wait_for("three failed opens", |r| {
        get(&r.counters.port_failures) >= 3
    })
    .await;
    assert_eq!(get(&rig.counters.port_open), 0);
    assert!(rig.readings().is_empty());

    // It appears: polling starts.
    let sim = bus(&[1], None);
    link(&port, &sim);
    rig.wait_for("readings once the port exists", |r| r.readings().len() >= 3)
        .await;
    assert_eq!(get(&rig.counters.port_open), 1);

    // It vanishes (the adapter is unplugged): the port is closed and retried.
    sim.stop().await;
    std::fs::remove_file(&port).expect("unlink");
    rig.wait_for("the port to be closed", |r| get(&r.counters.port_open) == 0)
        .await;
    let before = rig.readings().len();
    // Two failed attempts to open it again: any reading journaled while it is gone would
    // have been by then.
    let failures = get(&rig.counters.port_failures);
    rig.wait_for("two failed attempts to reopen it", |r| {
        get(&r.counters.port_failures) >= failures + 2
    })
    .await;
    assert_eq!(
        rig.readings().len(),
        before,
        "nothing journaled while it is gone"
    );

    // It comes back (on another pty, as a re-plugged adapter may): polling resumes.
    let sim = bus(&[1], None);
    link(&port, &sim);
    rig.wait_for("readings after the port came back", |r| {
        r.readings().len() >= before + 3
    })
    .await;
    assert_eq!(get(&rig.counters.port_open), 1);
    rig.stop().await;
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_a_full_journal_refuses_are_counted_as_lost_and_polling_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = dir.path().join("ttyRS485");
    let mut rig = Rig::start(&format!(
        "[journal]\nmax_size = \"1MiB\"\non_full = \"reject\"\n[mqtt]\nmax_packet = \"64KiB\"\n{}",
        section(
            &port,
            &slave(1, "wt-0001", &register("wind_ms", "input", 0, "", "", 0.01))
        )
    ));
    // Fill the journal while the port does not exist yet, down to the last few bytes: a
    // Modbus reading is larger than the smallest filler.
    let filler = |i: u64, size: usize| Reading {
        ingest_ms: i,
        source_kind: SourceKind::MqttListener,
        source: "filler".into(),
        topic: "filler".into(),
        // A JSON string, so that `readings()` can parse every payload.
        payload: format!("\"{}\"", "x".repeat(size)).into(),
        qos: 1,
        retain: false,
    };
    let mut i = 0;
    for size in [60 * 1024, 4096, 256, 8] {
        while rig
            .journal
            .append(vec![filler(i, size)])
            .await
            .expect("append")
            .accepted
            == 1
        {
            i += 1;
            assert!(i < 10_000, "1 MiB fills up");
        }
    }
    let held = rig.readings().len();

    let sim = bus(&[1], None);
    link(&port, &sim);
    rig.wait_for("three refused readings", |r| {
        get(&r.slave(0).rejected_full) >= 3
    })
    .await;
    rig.stop().await;
    let c = rig_slave(&rig, 0);
    assert_eq!(c.readings, 0, "{c:?}");
    assert_eq!((c.timeouts, c.crc_errors, c.exceptions), (0, 0, 0), "{c:?}");
    assert_eq!(rig.readings().len(), held, "nothing was journaled");
    assert!(
        get(&rig.slave(0).rejected_full) + 1 >= c.polls,
        "every answered poll was refused"
    );
}

/// The daemon with MQTT devices, a Modbus bus that works and one whose port never exists,
/// forwarding to Kafka: the missing port disturbs nothing, and Modbus readings arrive in
/// Kafka keyed by their topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_readings_reach_kafka_and_a_port_that_never_exists_does_not_stop_mqtt() {
    let tansu = common::Tansu::start();
    let sim = bus(&[1], None);
    let never = Path::new("/dev/tidegate-test-no-such-tty");
    let modbus = section(
        sim.path(),
        &slave(
            1,
            "wt-0001",
            &(register("wind_ms", "input", 0, "", "", 0.01)
                + &register("u32_little", "holding", 112, "u32", "little", 1.0)),
        ),
    ) + &section(
        never,
        &slave(5, "ghost", &register("x", "input", 0, "", "", 1.0)),
    );
    let kafka = tansu.port();
    let gw = common::Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-modbus\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n[[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\ntopic = \"mb\"\nlinger = \"5ms\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n{modbus}",
            dir.join("journal").display()
        )
    });

    let report = Fleet::new(gw.mqtt_addr(), 3)
        .window(10)
        .first_device(100)
        .count(50)
        .drain_timeout(Duration::from_secs(30))
        .run()
        .await;
    assert!(
        report.all_acked(),
        "MQTT keeps working beside a missing Modbus port"
    );
    let v = wait_until_complete(&tansu.brokers(), "mb", &report, WAIT * 3)
        .await
        .unwrap_or_else(|e| panic!("reading Kafka: {e}\n{}", gw.log()));
    assert!(v.is_complete(), "{v}\n{}", gw.log());

    let modbus_records = eventually(&gw, "3 Modbus readings in Kafka", WAIT, async || {
        let records = firmware_sim::verify::read_topic(&tansu.brokers(), "mb")
            .await
            .expect("read topic");
        let mb: Vec<_> = records
            .into_iter()
            .filter(|r| r.key.as_deref() == Some(&b"modbus/wt-0001"[..]))
            .collect();
        if mb.len() >= 3 {
            Ok(mb)
        } else {
            Err(format!("{} Modbus readings", mb.len()))
        }
    })
    .await;
    for r in &modbus_records {
        let v: Value = serde_json::from_slice(&r.payload).expect("JSON payload");
        assert_eq!(v["values"]["u32_little"], PATTERN_U32, "{v}");
        assert!(v["values"]["wind_ms"].is_number(), "{v}");
        assert_eq!(r.header("tidegate-gateway"), Some(&b"gw-modbus"[..]));
    }
    let log = gw.log();
    assert_eq!(
        log.matches("Cannot open the Modbus port").count(),
        1,
        "the missing port is logged once:\n{log}"
    );
    drop(sim);
}

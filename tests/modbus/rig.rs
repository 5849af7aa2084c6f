//! The Modbus tests' rig: the `[[modbus]]` config they poll, the poller under test with its
//! own journal ([`Rig`]) and firmware-sim's slave bus.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use firmware_sim::modbus::{ModbusBus, ModbusOptions};
use firmware_sim::CancellationToken;
use serde_json::Value;
use tidegate::config::JournalConfig;
use tidegate::ingest::modbus::{self, ModbusConfig};
use tidegate::journal::{Journal, WriterHandle};
use tidegate::record::Record;
use tidegate::telemetry::ModbusCounters;
use tokio::task::JoinHandle;

use crate::common::status::poll;

/// Longest a test waits for something the poller should do within a few intervals.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The simulator's model step, long enough that a poll sees one step.
pub(crate) const STEP: Duration = Duration::from_millis(500);

/// The `[[modbus]]` section at `port` with `slaves` (TOML of `[[modbus.slave]]` tables).
pub(crate) fn section(port: &Path, slaves: &str) -> String {
    format!(
        "[[modbus]]\nport = \"{}\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n{slaves}",
        port.display()
    )
}

/// A slave table with `registers` (TOML of `[[modbus.slave.register]]` tables).
pub(crate) fn slave(id: u8, name: &str, registers: &str) -> String {
    format!("[[modbus.slave]]\nid = {id}\nname = \"{name}\"\n{registers}")
}

pub(crate) fn register(
    name: &str,
    kind: &str,
    address: u16,
    ty: &str,
    order: &str,
    scale: f64,
) -> String {
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
pub(crate) fn live_registers() -> String {
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
pub(crate) fn pattern_registers() -> String {
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
pub(crate) struct Rig {
    pub(crate) journal: Journal,
    /// Kept so the writer thread is not detached before the journal handles are gone.
    _writer: WriterHandle,
    pub(crate) counters: Arc<ModbusCounters>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Parses and validates `toml` like the daemon does and starts polling its first
    /// `[[modbus]]`.
    pub(crate) fn start(toml: &str) -> Rig {
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
    pub(crate) fn readings(&self) -> Vec<(Record, Value)> {
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
    pub(crate) fn readings_of(&self, name: &str) -> Vec<Value> {
        self.readings()
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| v["name"] == name)
            .collect()
    }

    /// Waits until `cond` holds, or fails with `what`.
    pub(crate) async fn wait_for(&self, what: &str, mut cond: impl FnMut(&Rig) -> bool) {
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
    pub(crate) fn slave(&self, index: usize) -> &tidegate::telemetry::ModbusSlaveCounters {
        &self.counters.slaves[index].1
    }

    /// Stops polling (promptly, without a panic); the journal stays readable.
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("the poller stops promptly")
                .expect("the poller does not panic");
        }
    }
}

pub(crate) fn bus(slaves: &[u8], corrupt_every: Option<u64>) -> ModbusBus {
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

pub(crate) fn close_to(v: &Value, want: f64, tolerance: f64) -> bool {
    v.as_f64()
        .is_some_and(|got| (got - want).abs() <= tolerance)
}

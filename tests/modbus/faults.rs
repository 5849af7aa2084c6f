//! Faults on the bus and behind it: timeouts, CRC errors and exceptions counted per slave
//! while the others keep flowing, a port that comes and goes, and readings a full journal
//! refuses.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use firmware_sim::modbus::ModbusBus;
use tidegate::record::{Reading, SourceKind};
use tidegate::telemetry::get;

use crate::rig::{bus, register, section, slave, Rig};

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
        "[journal]\nmax_size = \"1MiB\"\non_full = \"reject\"\ncompression = \"none\"\n[mqtt]\nmax_packet = \"64KiB\"\n{}",
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

//! Disk trouble: the journal on a small tmpfs of the test's own, filled until LMDB's writes
//! fail with `ENOSPC`. tidegate must not panic or exit, must acknowledge nothing whose commit
//! failed, must say why on `/health` (503) and in its log, must keep forwarding what it
//! holds, and must take readings again by itself once space is freed — the devices, which
//! kept every refused reading, then deliver them. Needs root for `mount -t tmpfs` (the
//! tests run as root here and in CI); skipped with a message otherwise, and failed under
//! `CI=true`.
//!
//! The journal's reserve file is proven on its own, deterministically: with a reader of
//! the test's pinning every LMDB page and a file of the test's filling the disk, nothing
//! but the reserve can give the journal room.

mod common;
mod support;

use std::time::Duration;

use common::faults::{gateway_on, or_skip};
use common::metrics::scrape;
use common::status::{eventually, health, wait_for_backlog, wait_for_health};
use common::{free_port, Fleet, Gateway, Tansu};
use firmware_sim::{wait_until_complete, Protocol};
use support::tmpfs::Tmpfs;

const TOPIC: &str = "disk";
/// What the tests need of the machine for a disk of their own.
const NEEDS: &str = "a tmpfs of its own (root and mount(8))";
/// The `[journal]` keys of every test here: `max_size` far above what the disk holds, so
/// that only the disk can fill up, `reject`, so that nothing is dropped, and readings stored
/// uncompressed, so that the fleet's megabytes are megabytes on the disk.
const JOURNAL: &str = "max_size = \"256MiB\"\non_full = \"reject\"\ncompression = \"none\"";
/// The reserve file the journal writer keeps next to its environment
/// (`tidegate::journal::writer::RESERVE_FILE`).
const RESERVE_FILE: &str = "reserve.tidegate";

/// The fleet of these tests: turbines sending 1000-byte readings, that keep what is
/// refused and reconnect quickly, with two minutes to get it all in at the end.
fn fleet(gw: &Gateway, devices: usize, count: u64) -> Fleet {
    Fleet::new(gw.mqtt_addr(), devices)
        .count(count)
        .payload_size(1000)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .drain_timeout(Duration::from_secs(120))
}

/// Times the journal environment was reopened after a failed write: at least once when
/// the disk filled.
async fn reopens(gw: &Gateway) -> u64 {
    scrape(gw)
        .await
        .count("tidegate_journal_reopens_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_readings_without_acknowledging_them_and_recovers_when_space_is_freed()
{
    let Some(fs) = or_skip(Tmpfs::mount("8m"), NEEDS) else {
        return;
    };
    let kafka_port = free_port();
    let mut gw = gateway_on(
        &fs.path().join("journal"),
        "gw-disk",
        JOURNAL,
        kafka_port,
        TOPIC,
    );
    // With the cluster not yet there, nothing is forwarded, so nothing frees room in the
    // journal.
    let filler = fs.fill_leaving("filler", 1536 * 1024);

    // MQTT 3.1.1 devices (no PUBACK, connection closed) and MQTT 5 ones (PUBACK 0x97 and
    // DISCONNECT 0x97) side by side; 8 MB of readings for 1.5 MiB of free space.
    let v4 = fleet(&gw, 4, 1000).spawn();
    let v5 = fleet(&gw, 4, 1000)
        .first_device(5)
        .protocol(Protocol::V5)
        .spawn();

    let body = wait_for_health(
        &gw,
        503,
        "journal not accepting writes: disk full",
        Duration::from_secs(60),
    )
    .await;
    eprintln!("/health while the disk is full: {body}");
    assert!(gw.is_running(), "tidegate exited:\n{}", gw.log());
    // It stays that way while the disk is full: the writer's next attempts fail too (each
    // reopens the environment) and it does not exit.
    let failed = reopens(&gw).await;
    eventually(
        &gw,
        "two more failed attempts",
        Duration::from_secs(60),
        async || match reopens(&gw).await {
            n if n >= failed + 2 => Ok(()),
            n => Err(format!("{} more", n - failed)),
        },
    )
    .await;
    let (s, _) = health(&gw).await;
    assert_eq!(s, 503);
    assert!(gw.is_running(), "tidegate exited:\n{}", gw.log());

    // Space comes back and the cluster comes up: the journal takes readings again by
    // itself, and the devices deliver what they kept.
    std::fs::remove_file(&filler).expect("remove the filler");
    let tansu = Tansu::start_on(kafka_port);
    wait_for_health(&gw, 200, "ok", Duration::from_secs(60)).await;
    let v4 = v4.await.expect("v4 task").expect("v4 fleet");
    let v5 = v5.await.expect("v5 task").expect("v5 fleet");
    for (name, report) in [("3.1.1", &v4), ("5", &v5)] {
        assert!(
            report.all_acked(),
            "MQTT {name}: every reading accepted after recovery, {} left\n{}",
            report.unacked(),
            gw.log()
        );
    }
    assert!(
        v5.devices.values().map(|d| d.rejected).sum::<u64>() > 0,
        "MQTT 5 devices saw refusals (0x97)"
    );
    assert!(
        v4.connection_errors() > 0,
        "MQTT 3.1.1 devices had their connections closed"
    );
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut v5_out_of_order = 0;
    for (report, protocol) in [(&v4, Protocol::V4), (&v5, Protocol::V5)] {
        let v = wait_until_complete(&tansu.brokers(), TOPIC, report, Duration::from_secs(120))
            .await
            .expect("read Kafka");
        assert!(
            v.is_complete() && v.missing() == 0,
            "every acknowledged reading is in Kafka: {v}\nproblems: {:?}\nlog:\n{}",
            v.problems(),
            gw.log()
        );
        // firmware-sim's MQTT 5 devices resend a reading refused with 0x97 behind later
        // ones still queued in rumqttc (the same happens under on_full = "reject" without
        // any disk trouble), so order is checked on the MQTT 3.1.1 devices only; tidegate's
        // per-connection fence is the same for both versions.
        if protocol == Protocol::V4 {
            assert!(
                v.is_ok(),
                "MQTT 3.1.1 readings in order: {v}\nproblems: {:?}",
                v.problems()
            );
        } else {
            v5_out_of_order = v.out_of_order();
        }
        delivered += v.received() - v.duplicates();
        duplicates += v.duplicates();
    }
    let m = scrape(&gw).await;
    assert_eq!(m.value("tidegate_healthy", &[]), 1.0, "accepting again");
    assert!(m.count("tidegate_journal_refused_unwritable_total", &[]) > 0);
    let log = gw.log();
    assert!(!log.contains("panicked"), "no panic anywhere:\n{log}");
    eprintln!(
        "FAULT disk-full: acknowledged {} delivered {delivered} lost 0 duplicated {duplicates} (refusals: MQTT5 0x97 {}, MQTT3.1.1 closed connections {}; MQTT5 simulator resends out of order {v5_out_of_order})",
        v4.acked() + v5.acked(),
        v5.devices.values().map(|d| d.rejected).sum::<u64>(),
        v4.connection_errors()
    );
    gw.terminate();
}

/// The journal fills the disk by itself (nothing else on it) while the cluster is away.
/// LMDB needs fresh pages even to delete, so without the writer's reserve file the
/// forwarded readings could never be trimmed when no page of its own is free: the daemon
/// must get out of this alone, with no space freed by anyone, once the cluster takes the
/// backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_the_journal_itself_recovers_once_the_backlog_is_forwarded() {
    let Some(fs) = or_skip(Tmpfs::mount("8m"), NEEDS) else {
        return;
    };
    let journal = fs.path().join("journal");
    let kafka_port = free_port();
    let gw = gateway_on(&journal, "gw-self-full", JOURNAL, kafka_port, "self");
    // 12 MB of readings for an 8 MiB disk.
    let fleet = fleet(&gw, 4, 3000).spawn();
    wait_for_health(
        &gw,
        503,
        "journal not accepting writes: disk full",
        Duration::from_secs(60),
    )
    .await;
    let tansu = Tansu::start_on(kafka_port);
    let report = fleet.await.unwrap().expect("fleet");
    assert!(
        report.all_acked(),
        "every reading accepted once the backlog was forwarded: {} left\n{}",
        report.unacked(),
        gw.log()
    );
    let v = wait_until_complete(&tansu.brokers(), "self", &report, Duration::from_secs(120))
        .await
        .expect("read Kafka");
    assert!(
        v.is_complete() && v.is_ok(),
        "{v}\nproblems: {:?}\nlog:\n{}",
        v.problems(),
        gw.log()
    );
    // How it got out depends on timing: when the trimming commits find no free page of
    // LMDB's own, the reserve file is given back (most runs); when pages freed by earlier
    // commits are reusable at once (no reader still holding them), the journal recovers on
    // those. The reserve on its own is the next test's.
    let used_reserve = !journal.join(RESERVE_FILE).exists();
    assert!(
        reopens(&gw).await > 0,
        "the disk never filled, so nothing was tested:\n{}",
        gw.log()
    );
    wait_for_health(&gw, 200, "ok", Duration::from_secs(30)).await;
    eprintln!(
        "FAULT disk-filled-by-journal: acknowledged {} delivered {} lost 0 duplicated {} (room made by {})",
        report.acked(),
        v.received() - v.duplicates(),
        v.duplicates(),
        if used_reserve { "the reserve file" } else { "LMDB's own free pages" }
    );
}

/// Holds a read transaction on the journal in `dir` from another process's view (a thread
/// of the test's, through LMDB's lock file), until dropped. While it is held LMDB may
/// reuse no page freed after it began: every commit of the daemon's needs pages the disk
/// has not given yet.
struct PinnedSnapshot {
    release: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PinnedSnapshot {
    fn take(dir: &std::path::Path) -> PinnedSnapshot {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (pinned, is_pinned) = std::sync::mpsc::channel::<()>();
        let dir = dir.to_owned();
        let thread = std::thread::spawn(move || {
            let mut opts = heed::EnvOpenOptions::new();
            opts.max_dbs(4);
            // SAFETY: READ_ONLY only restricts this handle; the daemon writes through its
            // own, and LMDB's lock file coordinates the two processes' views.
            unsafe {
                opts.flags(heed::EnvFlags::READ_ONLY);
            }
            // SAFETY: the journal is the daemon's; this handle only reads.
            let env = unsafe { opts.open(&dir) }.expect("open the journal read-only");
            let txn = env.read_txn().expect("a read transaction");
            pinned.send(()).expect("tell the test");
            let _ = released.recv();
            drop(txn);
        });
        is_pinned.recv().expect("the snapshot is held");
        PinnedSnapshot {
            release,
            thread: Some(thread),
        }
    }
}

impl Drop for PinnedSnapshot {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reserve file, forced: a reader of the test's pins every LMDB page (so commits can
/// reuse none, however they are timed) and a file of the test's fills the rest of the
/// disk. The next readings' commit fails, and so does the `on_full` commit after it;
/// the only room left is the reserve, which the journal gives back and then takes the
/// readings in. Once the pin goes and the cluster takes the backlog, the journal runs on
/// its own freed pages, the test's file still in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_with_no_page_to_reuse_is_got_out_of_through_the_reserve_file() {
    let Some(fs) = or_skip(Tmpfs::mount("8m"), NEEDS) else {
        return;
    };
    let journal = fs.path().join("journal");
    let reserve = journal.join(RESERVE_FILE);
    let kafka_port = free_port();
    let gw = gateway_on(&journal, "gw-reserve", JOURNAL, kafka_port, "reserve");
    eventually(
        &gw,
        "the reserve file",
        Duration::from_secs(30),
        async || {
            if reserve.exists() {
                Ok(())
            } else {
                Err(format!("no {}", reserve.display()))
            }
        },
    )
    .await;

    // Some readings in, then the pin; then more readings, which use up whatever pages
    // were free before the pin, so that from here on every commit needs fresh pages.
    let before = fleet(&gw, 4, 25).run().await;
    assert!(before.all_acked(), "{}", gw.log());
    let pin = PinnedSnapshot::take(&journal);
    let burn = fleet(&gw, 4, 25).first_device(5).run().await;
    assert!(burn.all_acked(), "{}", gw.log());
    assert_eq!(reopens(&gw).await, 0, "the disk had room so far");

    // The disk full of the test's own file: nothing the journal does can free any of it.
    let filler = fs.fill_leaving("filler", 0);
    let appended = scrape(&gw)
        .await
        .count("tidegate_journal_appended_total", &[]);
    // 40 KB of readings: far less than the reserve's 1 MiB.
    let during = fleet(&gw, 2, 20).first_device(9).run().await;
    assert!(
        during.all_acked(),
        "the reserve let every reading in: {} left\n{}",
        during.unacked(),
        gw.log()
    );
    let m = scrape(&gw).await;
    assert!(
        m.count("tidegate_journal_reopens_total", &[]) > 0,
        "the disk filled: a commit failed and the environment was reopened\n{}",
        gw.log()
    );
    assert_eq!(
        m.count("tidegate_journal_appended_total", &[]),
        appended + 40,
        "every reading of the full disk was journaled"
    );
    assert!(!reserve.exists(), "the reserve file was given back");
    assert!(filler.exists(), "the test's file still fills the disk");

    // The pin goes and the cluster comes: the backlog is forwarded and trimmed, and the
    // journal takes readings on the pages that freed, the disk as full as before.
    drop(pin);
    let tansu = Tansu::start_on(kafka_port);
    wait_for_backlog(&gw, "cluster", 0).await;
    let after = fleet(&gw, 2, 20).first_device(11).run().await;
    assert!(after.all_acked(), "{}", gw.log());
    wait_for_health(&gw, 200, "ok", Duration::from_secs(30)).await;
    for report in [&before, &burn, &during, &after] {
        let v = wait_until_complete(
            &tansu.brokers(),
            "reserve",
            report,
            Duration::from_secs(120),
        )
        .await
        .expect("read Kafka");
        assert!(v.is_complete() && v.missing() == 0, "{v}\n{}", gw.log());
    }
    assert!(filler.exists());
    eprintln!(
        "FAULT disk-full-reserve: the reserve file was given back and took {} readings with every page pinned",
        during.acked()
    );
}

//! Power cuts: the journal on a filesystem that forgets every write not yet synced when
//! the power fails ([`support::forgetful_fs`], FUSE, each unsynced page kept or lost by a
//! seeded coin flip), with tidegate SIGKILLed at random moments while a fleet publishes
//! and the cluster takes what is forwarded. After every cut the filesystem comes back with
//! only what reached its platter and tidegate starts again on it.
//!
//! The claim checked: every reading a device saw acknowledged, in any run, reaches Kafka
//! (acknowledged ⊆ delivered), in order per device and boot; duplicates (cursors not yet
//! stored at the cut) are counted. Needs /dev/fuse and the right to mount (root here and
//! in CI); skipped with a message otherwise, and failed under `CI=true`.

mod common;
mod support;

use std::time::Duration;

use common::faults::{gateway_on, or_skip};
use common::fleet::assert_arrived;
use common::metrics::scrape;
use common::status::{health, poll};
use common::{Fleet, Gateway, Tansu};
use firmware_sim::CancellationToken;
use support::forgetful_fs::ForgetfulFs;

/// What the tests need of the machine to mount the forgetful filesystem.
const NEEDS: &str = "a FUSE mount (/dev/fuse and the right to mount)";

/// Times the journal environment was reopened after a failed write.
async fn reopens(gw: &Gateway) -> u64 {
    scrape(gw)
        .await
        .count("tidegate_journal_reopens_total", &[])
}

/// The fleet of a power-cut run: 4 turbines, 10 in flight each, reconnecting quickly.
fn fleet(gw: &Gateway) -> Fleet {
    Fleet::new(gw.mqtt_addr(), 4)
        .window(10)
        .reconnect(Duration::from_millis(50), Duration::from_millis(200))
}

const TOPIC: &str = "power";
const CUTS: u64 = 6;
/// Time allowed for every acknowledged reading to reach Kafka after the last restart.
const ARRIVAL: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_power_cuts_at_random_moments_every_acknowledged_reading_is_delivered() {
    let Some(mut fs) = or_skip(ForgetfulFs::mount(), NEEDS) else {
        return;
    };
    let tansu = Tansu::start();
    let mut gw = gateway_on(fs.path(), "gw-power", "", tansu.port(), TOPIC);

    let mut reports = Vec::new();
    let mut lost_pages = 0;
    let mut kept_pages = 0;
    for cut in 0..=CUTS {
        let stop = CancellationToken::new();
        let fleet = fleet(&gw)
            .count(if cut == CUTS { 300 } else { 1_000_000 })
            .drain_timeout(Duration::from_secs(2))
            .spawn_until(stop.clone());
        if cut < CUTS {
            // A moment from "just started" to "well into the run", different every cut.
            let wait = 300 + (cut * 7919 + 1733) % 2200;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            // The disk stops first (a sync in progress fails), then the process.
            fs.power_off();
            gw.kill();
            let r = fs.power_cut(0x9e37_79b9_7f4a_7c15 ^ cut);
            kept_pages += r.pages_kept;
            lost_pages += r.pages_lost;
            stop.cancel();
        }
        let report = fleet.await.unwrap().expect("fleet");
        eprintln!(
            "run {cut}: acknowledged {} of {} published",
            report.acked(),
            report.published()
        );
        reports.push(report);
        if cut < CUTS {
            gw.restart();
        }
    }
    assert!(
        reports.last().is_some_and(|r| r.all_acked()),
        "after the last restart every reading is acknowledged\n{}",
        gw.log()
    );
    // How many pages were unsynced at a cut depends on where the writer was (usually
    // between commits, so few); that the filesystem forgets them is checked on its own in
    // `the_filesystem_forgets_unsynced_writes_and_keeps_synced_ones`. Here: the journal's
    // syncs really went through it.
    assert!(fs.syncs() > 0, "the journal synced through the filesystem");

    let mut acknowledged = 0;
    let mut delivered = 0;
    let mut duplicates = 0;
    for report in &reports {
        // Every acknowledged reading delivered, in order.
        let v = assert_arrived(&tansu.brokers(), TOPIC, report, ARRIVAL, &gw).await;
        acknowledged += report.acked();
        delivered += v.received() - v.duplicates();
        duplicates += v.duplicates();
    }
    eprintln!(
        "FAULT power-cut x{CUTS}: acknowledged {acknowledged} delivered {delivered} lost 0 duplicated {duplicates} (unsynced pages forgotten {lost_pages}, kept by chance {kept_pages}, syncs {})",
        fs.syncs()
    );
    gw.terminate();
}

/// The tool itself: a write never synced is gone after a cut, a synced one is kept, and a
/// write on an `O_DSYNC` descriptor is durable at once.
#[test]
fn the_filesystem_forgets_unsynced_writes_and_keeps_synced_ones() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(mut fs) = or_skip(ForgetfulFs::mount(), NEEDS) else {
        return;
    };
    let mnt = fs.path().to_owned();
    let path = |name: &str| mnt.join(name);
    let mut synced = std::fs::File::create(path("synced")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_data().unwrap();
    synced.write_all(b" and lost").unwrap();
    let mut dsync = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(path("dsync"))
        .unwrap();
    dsync.write_all(b"durable at once").unwrap();
    std::fs::File::create(path("never")).unwrap();
    drop((synced, dsync));
    assert_eq!(
        std::fs::read(path("synced")).unwrap(),
        b"kept and lost",
        "reads see every write before the cut"
    );
    fs.power_cut_losing_all_unsynced();
    assert_eq!(std::fs::read(path("synced")).unwrap(), b"kept");
    assert_eq!(std::fs::read(path("dsync")).unwrap(), b"durable at once");
    assert!(
        !path("never").exists(),
        "a file never synced does not survive"
    );
}

/// EIO from fsync, with Linux's semantics (the failed pages are dropped, so a retried
/// fsync would report success without them): tidegate must refuse the readings of the
/// failed commit, never retry the sync in place, reopen the environment, take readings
/// again by itself, and after a final power cut every acknowledged reading is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_retried_in_place_and_the_journal_recovers_by_reopening() {
    let Some(mut fs) = or_skip(ForgetfulFs::mount(), NEEDS) else {
        return;
    };
    let tansu = Tansu::start();
    let mut gw = gateway_on(fs.path(), "gw-eio", "", tansu.port(), "eio");
    let fleet = fleet(&gw).rate(100.0).count(1000).spawn();
    // Fail syncs once readings are flowing through the journal.
    let syncs = fs.syncs();
    poll(Duration::from_secs(30), async || match fs.syncs() {
        n if n >= syncs + 20 => Ok(()),
        n => Err(format!("{n} syncs")),
    })
    .await
    .unwrap_or_else(|last| panic!("the journal never synced: {last}\n{}", gw.log()));
    let reopens_before = reopens(&gw).await;
    fs.fail_syncs(3);
    // The refusing state is short (the writer tries again after 250 ms, 500 ms, 1 s):
    // look for it on /health while it lasts, and in the counters in any case.
    let mut seen_on_health = None;
    let _ = poll(Duration::from_secs(20), async || {
        let (status, body) = health(&gw).await;
        if status == 503 && body.contains("journal not accepting writes") {
            seen_on_health = Some(body);
        }
        if fs.failed_syncs() < 3 {
            Err(String::new())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(
        fs.failed_syncs(),
        3,
        "the writer synced again after the failures"
    );
    let report = fleet.await.unwrap().expect("fleet");
    assert!(
        report.all_acked(),
        "refused readings were resent and accepted after the reopen: {} left\n{}",
        report.unacked(),
        gw.log()
    );
    let m = scrape(&gw).await;
    assert!(
        m.count("tidegate_journal_reopens_total", &[]) > reopens_before,
        "the failed syncs reopened the environment:\n{}",
        gw.log()
    );
    assert!(
        m.count("tidegate_journal_refused_unwritable_total", &[]) > 0,
        "readings of the failed commits were refused:\n{}",
        gw.log()
    );
    assert_eq!(m.value("tidegate_healthy", &[]), 1.0, "accepting again");
    // The operator reads the cause in the log.
    assert!(gw.log().contains("Input/output error"), "{}", gw.log());
    assert!(gw.is_running(), "no exit, no restart needed:\n{}", gw.log());
    // The proof that nothing was acknowledged on the strength of a failed sync: cut the
    // power now, and every acknowledged reading is still there.
    gw.kill();
    fs.power_cut(0xe10);
    gw.restart();
    let v = assert_arrived(&tansu.brokers(), "eio", &report, ARRIVAL, &gw).await;
    eprintln!(
        "FAULT fsync-EIO x3 then power cut: acknowledged {} delivered {} lost 0 duplicated {} (/health while refusing: {:?})",
        report.acked(),
        v.received() - v.duplicates(),
        v.duplicates(),
        seen_on_health.map(|b| b.replace('\n', " | "))
    );
    gw.terminate();
}

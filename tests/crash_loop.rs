//! The crash loop: turbines publish at QoS 1 and record every PUBACK while the real
//! `tidegate` binary is killed with SIGKILL at random moments, again and again, and
//! restarted each time. At the end every acknowledged reading must be in Kafka (real Tansu),
//! in order per device, and no journal record may have been delivered twice: after each
//! restart the Kafka sink reads the tail of every partition and skips what is already there.
//!
//! The kill moments come from a seeded RNG; the seed is printed, and
//! `TIDEGATE_CRASH_SEED=<seed>` replays the same schedule (the moments, not the interleaving
//! with the daemon's own timing). `TIDEGATE_CRASH_KILLS` sets the number of kills (default 20).
//!
//! Exactly once, both ways a copy could appear: a journal record is delivered once
//! (`replays == 0`: the Kafka sink's tail read), and a reading a device re-sends because the
//! kill fell between the commit and its PUBACK reaching the device is recognised by its
//! packet id and fingerprint and not journaled twice (`journal::Packet`). So every
//! acknowledged reading is in Kafka exactly once (`duplicates == 0`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fleet, Gateway, Tansu};
use firmware_sim::wait_until_complete;
use rand::{Rng, SeedableRng};

fn config(mqtt_port: u16, dir: &Path, kafka_port: u16) -> String {
    // Small batches and a short linger: many batches are in flight or awaiting their cursor
    // store at any moment, so kills land in the window the tail read has to cover.
    format!(
        "[gateway]\nid = \"gw-crash\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n\
         [mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\nmax_packet = \"64KiB\"\n\
         [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka_port}\"]\n\
         topic = \"crash-loop\"\npartitions = 3\nmax_batch = 100\nlinger = \"2ms\"\n\
         request_timeout = \"5s\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n",
        dir.join("journal").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_delivers_every_acknowledged_reading_once_and_in_order() {
    let seed: u64 = std::env::var("TIDEGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let kills: u32 = std::env::var("TIDEGATE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("crash loop: seed {seed} (TIDEGATE_CRASH_SEED={seed} replays it), {kills} kills");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tansu = Tansu::start();
    let mut gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, tansu.port()));
    let started = Instant::now();

    // 2,000 readings/s for about 35 s: the kills land mid-stream.
    let fleet = Fleet::new(gw.mqtt_addr(), 20)
        .window(10)
        .rate(100.0)
        .count(3_500)
        .reconnect(Duration::from_millis(20), Duration::from_millis(300))
        .spawn();

    // Processes that lived well past the sink's one-second settle before its tail read
    // (kafka::tail::TAIL_SETTLE): each of them must have read the tails.
    let mut long_lived = 0;
    for i in 0..kills {
        // Anywhere from just after a start (forwarder still waiting to read the tails, which
        // it does a second after its start) to a second and a half of steady forwarding.
        let wait = Duration::from_millis(rng.random_range(300..2_500));
        if wait >= Duration::from_secs(2) {
            long_lived += 1;
        }
        tokio::time::sleep(wait).await;
        gw.kill();
        println!(
            "kill {:>2} at {:>5.1}s (after {wait:?} up)",
            i + 1,
            started.elapsed().as_secs_f64()
        );
        gw.restart();
    }

    let report = fleet.await.expect("fleet task").expect("fleet");
    assert!(
        report.all_acked(),
        "devices re-send what was not acknowledged: {} left",
        report.unacked()
    );
    let v = wait_until_complete(
        &tansu.brokers(),
        "crash-loop",
        &report,
        Duration::from_secs(90),
    )
    .await
    .expect("read the topic");
    let device_resends = v.duplicates() - v.replays;
    println!(
        "crash loop: seed {seed}, {kills} kills in {:.1}s; acknowledged {}, delivered {} records, \
         missing {}, replayed by the gateway {}, device re-sends journaled twice {}, out of order {}",
        started.elapsed().as_secs_f64(),
        report.acked(),
        v.readings,
        v.missing(),
        v.replays,
        device_resends,
        v.out_of_order()
    );
    let log = gw.log();
    if v.replays > 0 {
        // Where the replayed records sit, for the failure message.
        let records = firmware_sim::verify::read_topic(&tansu.brokers(), "crash-loop")
            .await
            .expect("read the topic");
        let mut seen = std::collections::HashMap::new();
        for r in &records {
            let seq = r
                .header("tidegate-seq")
                .map(|s| String::from_utf8_lossy(s).into_owned());
            if let Some(first) = seen.insert(seq.clone(), (r.partition, r.offset)) {
                println!(
                    "replayed seq {:?}: first at partition {} offset {}, again at partition {} offset {}",
                    seq, first.0, first.1, r.partition, r.offset
                );
            }
        }
        for line in log.lines().filter(|l| {
            l.contains("Read the topic's tail")
                || l.contains("Skipping")
                || l.contains("Forwarder started")
        }) {
            println!("{line}");
        }
    }
    assert!(
        v.is_complete() && v.is_ok(),
        "seed {seed}: {v}\nproblems: {:?}",
        v.problems()
    );
    assert_eq!(
        v.missing(),
        0,
        "seed {seed}: acknowledged readings lost: {v}"
    );
    assert_eq!(v.out_of_order(), 0, "seed {seed}: {v}");
    assert_eq!(
        v.replays, 0,
        "seed {seed}: journal records delivered twice (the tail read failed): {v}"
    );
    assert_eq!(
        device_resends, 0,
        "seed {seed}: device re-sends journaled twice (not recognised at ingest): {v}"
    );
    assert_eq!(v.unparseable + v.gap_markers, 0, "seed {seed}: {v}");
    // Every process that lived past the settle read the tails, and so did the last one,
    // which ran until the end. (How many of the shorter-lived ones got there depends on
    // the seed: half of them on average, so that count proves nothing.)
    let tail_reads = log.matches("Read the topic's tail").count();
    assert!(
        tail_reads > long_lived,
        "the restarts read the tail: {tail_reads} tail reads, {long_lived} processes up 2 s or more, and the last one"
    );
}

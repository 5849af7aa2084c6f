//! `journal.on_full = "thin"` end to end, the real `tidegate` binary against a real
//! Kafka-protocol broker (Tansu): a journal of a few MiB is offered about three times what
//! it holds by ten turbines (with alarm readings on a `keep_whole` topic) while the
//! upstream is down; when the upstream comes back,
//!
//! - every device's delivered history spans the whole outage (its first and last readings
//!   arrive), with no hole inside thinned spans as wide as the factor reached (≤ 64);
//! - every alarm arrives;
//! - the thinned markers match what is missing: every journal sequence that never arrived
//!   lies in an announced span, and every announced span misses readings and holds about
//!   1/factor of its telemetry (at most twice that: the first and last reading of each topic
//!   in each chunk thinned are kept too) and every alarm;
//! - nothing is dropped, duplicated or reordered.
//!
//! The same outage under `drop-oldest` runs beside it and is printed (longest hole per
//! device, alarms lost), for comparison, not asserted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{eventually, free_port, seq_of, status_json, wait_for_backlog, Fleet, Gateway, Tansu};
use firmware_sim::verify::{read_topic, Checker, KafkaReading};
use firmware_sim::{device_id, CancellationToken, FleetReport, VerifyReport};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Turbines of the fleet.
const DEVICES: usize = 10;
/// The journal's cap: a few MiB.
const MAX_SIZE: &str = "2MiB";
/// How much the fleet offers, as a multiple of the readings the journal held when it first
/// reached its cap.
const OFFERED: u64 = 3;
/// Pause between two rounds of alarms (one per device).
const ALARM_EVERY: Duration = Duration::from_millis(100);
/// Readings per second per turbine: slow enough that the poll of `status` stops the fleet
/// close to [`OFFERED`] times the capacity.
const RATE: f64 = 300.0;
/// The `keep_whole` filter of the alarms.
const ALARMS: &str = "turbines/+/alarm";

fn config(mqtt_port: u16, dir: &Path, kafka_port: u16, on_full: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-thin\"\n\
         [journal]\ndir = \"{}\"\nmax_size = \"{MAX_SIZE}\"\non_full = \"{on_full}\"\n\
         keep_whole = [\"{ALARMS}\"]\n\
         [mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n\
         [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka_port}\"]\n\
         topic = \"thin\"\npartitions = 3\nmax_batch = 200\nlinger = \"5ms\"\n\
         request_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n",
        dir.join("journal").display()
    )
}

fn is_alarm(r: &KafkaReading) -> bool {
    r.key.as_deref().is_some_and(|k| k.ends_with(b"/alarm"))
}

/// An alarm reading's (device, number).
fn alarm_id(r: &KafkaReading) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(&r.payload).ok()?;
    Some((v["device"].as_str()?.to_owned(), v["alarm"].as_u64()?))
}

/// Publishes a round of alarms (one per device, QoS 1) every [`ALARM_EVERY`] until `stop`;
/// returns the (device, number) of those acknowledged.
async fn alarms(mqtt_port: u16, stop: CancellationToken) -> BTreeSet<(String, u64)> {
    let mut opts = MqttOptions::new("alarm-panel", "127.0.0.1", mqtt_port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 100);
    let mut acked = BTreeSet::new();
    for n in 1.. {
        for d in 1..=DEVICES {
            let payload = format!(r#"{{"device":"{}","alarm":{n}}}"#, device_id(d));
            client
                .publish(
                    format!("turbines/{}/alarm", device_id(d)),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("queue an alarm");
        }
        let mut round = 0;
        while round < DEVICES {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => round += 1,
                Ok(_) => {}
                Err(e) => panic!("alarm publisher: {e}"),
            }
        }
        acked.extend((1..=DEVICES).map(|d| (device_id(d), n)));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(ALARM_EVERY) => {}
        }
    }
    acked
}

/// What one outage left: the fleet's and the alarms' acknowledgements, the journal's
/// figures when the upstream came back, and everything the topic then held.
struct Outage {
    report: FleetReport,
    alarms: BTreeSet<(String, u64)>,
    /// `status --json` just before the upstream came back.
    status: serde_json::Value,
    /// Readings the journal held when it first reached its cap.
    cap_at: u64,
    /// Readings journaled (the fleet's and the alarms).
    offered: u64,
    records: Vec<KafkaReading>,
    gateway: Gateway,
}

impl Outage {
    /// The verifier's report on the telemetry and markers; the alarms count only as journal
    /// sequences that arrived.
    fn verify(&self) -> VerifyReport {
        let mut c = Checker::new();
        let mut records: Vec<&KafkaReading> = self.records.iter().collect();
        records.sort_by_key(|r| (r.partition, r.offset));
        for r in records {
            if is_alarm(r) {
                c.add_other(r);
            } else {
                c.add(r);
            }
        }
        c.report(Some(&self.report))
    }

    fn alarms_delivered(&self) -> BTreeSet<(String, u64)> {
        self.records
            .iter()
            .filter(|r| is_alarm(r))
            .filter_map(alarm_id)
            .collect()
    }

    /// Per device, the most consecutive readings it lost, thinned or not.
    fn longest_holes(&self, v: &VerifyReport) -> BTreeMap<String, u64> {
        v.devices
            .iter()
            .map(|(d, dv)| {
                let widest = dv
                    .missing
                    .iter()
                    .chain(&dv.thinned)
                    .map(|(a, b)| b - a + 1)
                    .max()
                    .unwrap_or(0);
                (d.clone(), widest)
            })
            .collect()
    }
}

/// Runs the fleet and the alarms into a gateway whose upstream is down, then brings the
/// upstream up and reads everything it receives. The fleet sends `per_device` readings
/// from each turbine, or without it, goes on until the journal has been offered
/// [`OFFERED`] times the readings it held when it first reached its cap.
async fn outage(on_full: &str, per_device: Option<u64>) -> Outage {
    let kafka_port = free_port();
    let gateway = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, kafka_port, on_full));
    let stop = CancellationToken::new();
    let alarm_task = tokio::spawn(alarms(gateway.mqtt_port(), stop.clone()));
    let fleet = Fleet::new(gateway.mqtt_addr(), DEVICES).rate(RATE);
    let mut cap_at = None;
    let report = match per_device {
        Some(n) => fleet.count(n).run().await,
        None => {
            let fleet = fleet.spawn_until(stop.clone());
            // The cap is reached when the journal first removes or thins something.
            eventually(
                &gateway,
                format_args!("{OFFERED}× the journal's capacity offered"),
                Duration::from_secs(600),
                async || {
                    let s = status_json(&gateway);
                    let journaled = s["next_seq"].as_u64().unwrap_or(1) - 1;
                    let removed = s["dropped_total"].as_u64().unwrap_or(0)
                        + s["thinned_total"].as_u64().unwrap_or(0);
                    if cap_at.is_none() && removed > 0 {
                        cap_at = s["records"].as_u64();
                    }
                    if cap_at.is_some_and(|cap| journaled >= OFFERED * cap) {
                        return Ok(());
                    }
                    // `status` is a process of its own: not more often than this.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err(format!("{journaled} journaled, cap reached at {cap_at:?}"))
                },
            )
            .await;
            stop.cancel();
            fleet.await.expect("fleet task").expect("the fleet runs")
        }
    };
    stop.cancel();
    let alarms = alarm_task.await.expect("alarm task");
    let status = status_json(&gateway);
    let cap_at = cap_at.unwrap_or(0);
    let offered = status["next_seq"].as_u64().unwrap_or(1) - 1;

    let tansu = Tansu::start_on(kafka_port);
    wait_for_backlog(&gateway, "cluster", 0).await;
    let records = read_topic(&tansu.brokers(), "thin").await.expect("read");
    Outage {
        report,
        alarms,
        status,
        cap_at,
        offered,
        records,
        gateway,
    }
}

/// The thinned spans of a `status --json`, as "N spans: F1×a, F2×b …" (factor and count).
fn spans(status: &serde_json::Value) -> String {
    let mut by_factor: BTreeMap<u64, usize> = BTreeMap::new();
    let spans = status["thinned"].as_array().cloned().unwrap_or_default();
    for s in &spans {
        *by_factor
            .entry(s["factor"].as_u64().unwrap_or(0))
            .or_default() += 1;
    }
    let parts: Vec<String> = by_factor
        .iter()
        .rev()
        .map(|(f, n)| format!("{n} at 1/{f}"))
        .collect();
    format!("{} spans ({})", spans.len(), parts.join(", "))
}

fn print_side_by_side(thin: &Outage, tv: &VerifyReport, drop: &Outage, dv: &VerifyReport) {
    let (th, dh) = (thin.longest_holes(tv), drop.longest_holes(dv));
    let lost = |o: &Outage| o.alarms.difference(&o.alarms_delivered()).count();
    eprintln!(
        "same outage, {DEVICES} devices, journal max_size {MAX_SIZE}, offered about {OFFERED}× its capacity:"
    );
    for (name, o, v) in [("thin", thin, tv), ("drop-oldest", drop, dv)] {
        eprintln!(
            "{name:>12}: journaled {} (acked {} readings + {} alarms){}; journal: dropped_total {}, thinned_total {}, spans {}; delivered {} readings, {} missing, {} thinned (widest {}), factor up to {}, alarms lost {} of {}",
            o.offered,
            o.report.acked(),
            o.alarms.len(),
            match o.cap_at {
                0 => String::new(),
                cap => format!(", {cap} held when the cap was first reached"),
            },
            o.status["dropped_total"],
            o.status["thinned_total"],
            spans(&o.status),
            v.received(),
            v.missing(),
            v.thinned(),
            v.widest_thinned_hole(),
            v.thin_factor_max,
            lost(o),
            o.alarms.len()
        );
    }
    eprintln!(
        "{:<10} {:>22} {:>22}",
        "device", "longest hole (thin)", "(drop-oldest)"
    );
    for (d, h) in &th {
        eprintln!("{d:<10} {h:>22} {:>22}", dh.get(d).copied().unwrap_or(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinning_keeps_every_devices_whole_outage_and_every_alarm_and_its_markers_name_what_is_missing(
) {
    let thin = outage("thin", None).await;
    let tv = thin.verify();
    // As many readings per device as the largest count the thinned run's fleet sent.
    let per_device = thin
        .report
        .devices
        .values()
        .filter_map(|d| d.acked.last())
        .max();
    let drop = outage("drop-oldest", per_device).await;
    let dv = drop.verify();
    print_side_by_side(&thin, &tv, &drop, &dv);
    let log = || thin.gateway.log();

    // Thinning happened, and never fell back to dropping.
    assert!(
        thin.status["thinned_total"].as_u64() > Some(0),
        "{}\n{}",
        thin.status,
        log()
    );
    assert_eq!(
        thin.status["dropped_total"].as_u64(),
        Some(0),
        "{}",
        thin.status
    );
    let gaps = thin
        .records
        .iter()
        .filter(|r| r.header("tidegate-gap").is_some())
        .count();
    assert_eq!(gaps, 0, "no gap marker: nothing dropped");

    // Delivered: in order, once, every device from its first reading to its last, no
    // reading missing that no marker announced.
    assert_eq!(
        (tv.unparseable, tv.replays, tv.out_of_order(), tv.foreign),
        (0, 0, 0, 0),
        "{tv}"
    );
    assert_eq!(tv.missing(), 0, "every missing reading was announced: {tv}");
    assert!(tv.thinned() > 0, "{tv}");
    for (device, d) in &thin.report.devices {
        let (first, last) = (d.acked.first(), d.acked.last());
        let absent = |c: Option<u64>| {
            c.is_some_and(|c| {
                tv.devices[device]
                    .thinned
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&c))
            })
        };
        assert!(
            !absent(first) && !absent(last),
            "{device}: its first ({first:?}) and last ({last:?}) readings arrive: {tv}"
        );
    }
    assert!(
        (2..=64).contains(&tv.thin_factor_max),
        "factor reached {}: {tv}",
        tv.thin_factor_max
    );
    assert!(
        tv.widest_thinned_hole() < tv.thin_factor_max,
        "no hole wider than the factor reached: {tv}"
    );

    // Every alarm (keep_whole) arrives.
    let delivered_alarms = thin.alarms_delivered();
    let lost: Vec<_> = thin.alarms.difference(&delivered_alarms).collect();
    assert!(lost.is_empty(), "alarms lost: {lost:?}");

    // The markers match what is missing, by journal sequence.
    let next_seq = thin.status["next_seq"].as_u64().expect("next_seq");
    let delivered: BTreeSet<u64> = thin
        .records
        .iter()
        .filter(|r| r.thinned().is_none())
        .map(seq_of)
        .collect();
    // One span per `last`: a batch from a cursor inside a span announces the rest of it.
    let mut spans: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (first, last, factor) in thin.records.iter().filter_map(KafkaReading::thinned) {
        let span = spans.entry(last).or_insert((first, factor));
        assert_eq!(span.1, factor, "one span, one factor");
        span.0 = span.0.min(first);
    }
    let announced = |s: u64| spans.range(s..).next().is_some_and(|(_, &(f, _))| f <= s);
    let unannounced: Vec<u64> = (1..next_seq)
        .filter(|s| !delivered.contains(s) && !announced(*s))
        .take(10)
        .collect();
    assert!(
        unannounced.is_empty(),
        "journal sequences missing outside every announced span: {unannounced:?}"
    );
    let alarm_seqs: BTreeSet<u64> = thin
        .records
        .iter()
        .filter(|r| is_alarm(r))
        .map(seq_of)
        .collect();
    for (&last, &(first, factor)) in &spans {
        let held: Vec<&KafkaReading> = thin
            .records
            .iter()
            .filter(|r| r.thinned().is_none() && (first..=last).contains(&seq_of(r)))
            .collect();
        let topics: BTreeSet<&[u8]> = held.iter().filter_map(|r| r.key.as_deref()).collect();
        let alarms = alarm_seqs.range(first..=last).count() as u64;
        let telemetry = held.len() as u64 - alarms;
        let len = last - first + 1;
        // About 1/factor of the telemetry journaled in the span, never all of it. Twice that
        // is allowed: each chunk thinned keeps the first and the last reading of every topic
        // in it, and chunks of one factor merge into one span. A span whose factor claimed
        // more than twice the thinning done would exceed it.
        let bound = 2 * (len - alarms).div_ceil(factor) + 2 * topics.len() as u64;
        assert!(
            telemetry < len - alarms && telemetry <= bound,
            "span {first}..{last} at 1/{factor}: {telemetry} telemetry readings of {} held ({alarms} alarms, {} topics), at most {bound} expected",
            len - alarms,
            topics.len()
        );
        eprintln!(
            "span {first}..{last} at 1/{factor}: {telemetry} of {} telemetry readings held, 1 in {:.1}",
            len - alarms,
            (len - alarms) as f64 / telemetry.max(1) as f64
        );
    }
}

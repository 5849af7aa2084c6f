//! Tests of the verification rules on hand-made streams of records.

use super::*;
use crate::fleet::{DeviceReport, Protocol, Qos};
use crate::latency::Histogram;
use crate::seqset::SeqSet;
use crate::telemetry::topic_for;
use crate::telemetry::Turbine;

const BOOT: u64 = 77;

fn reading(device_n: usize, seq: u64, offset: i64) -> KafkaReading {
    let mut t = Turbine::new(1, device_n, BOOT, 1.0);
    let mut r = t.step(1_000);
    r.seq = seq;
    KafkaReading {
        partition: device_n as i32 % 3,
        offset,
        key: Some(topic_for(&r.device).into_bytes()),
        payload: r.to_json(),
        headers: vec![
            (GATEWAY_HEADER.into(), b"gw-test".to_vec()),
            (SEQ_HEADER.into(), offset.to_string().into_bytes()),
        ],
        timestamp_ms: 1_000,
    }
}

fn stream(device_n: usize, seqs: &[u64]) -> Vec<KafkaReading> {
    seqs.iter()
        .enumerate()
        .map(|(i, &s)| reading(device_n, s, i as i64))
        .collect()
}

fn fleet(acked: &[(usize, std::ops::RangeInclusive<u64>)]) -> FleetReport {
    let devices = acked
        .iter()
        .map(|(n, r)| {
            let d = DeviceReport {
                boot: BOOT,
                topic: topic_for(&crate::device_id(*n)),
                published: *r.end(),
                acked: r.clone().collect(),
                ..DeviceReport::default()
            };
            (crate::device_id(*n), d)
        })
        .collect();
    FleetReport {
        broker: "test".into(),
        qos: Qos::AtLeastOnce,
        protocol: Protocol::V4,
        devices,
        puback_latency: Default::default(),
        elapsed: Duration::from_secs(1),
        publish_elapsed: Duration::from_secs(1),
        puback_histogram: Histogram::new(),
    }
}

#[test]
fn a_complete_ordered_stream_passes() {
    let v = check(&stream(1, &[1, 2, 3, 4, 5]), &fleet(&[(1, 1..=5)]));
    assert!(v.is_ok() && v.is_complete(), "{v}");
    assert_eq!(v.devices["wt-0001"].received, 5);
    assert_eq!((v.duplicates(), v.foreign), (0, 0));
}

#[test]
fn every_boot_of_a_rebooted_device_is_checked_with_binary_payloads_too() {
    use crate::fleet::BootReport;
    // Boot 77 wrote 1..=3 (JSON), boot 78 wrote 1..=4 (binary); counter 2 of the first
    // boot never arrived.
    let mut records = Vec::new();
    let mut t = Turbine::new(1, 1, BOOT, 1.0);
    for seq in [1, 3] {
        let mut r = t.step(1_000);
        r.seq = seq;
        records.push(r.to_json());
    }
    t.reboot(BOOT + 1);
    for _ in 1..=4 {
        records.push(t.step(2_000).to_binary());
    }
    let readings: Vec<KafkaReading> = records
        .into_iter()
        .enumerate()
        .map(|(i, payload)| KafkaReading {
            payload,
            ..reading(1, 0, i as i64)
        })
        .collect();
    let mut f = fleet(&[(1, 1..=4)]);
    if let Some(d) = f.devices.get_mut("wt-0001") {
        d.boot = BOOT + 1;
        d.earlier_boots.push(BootReport {
            boot: BOOT,
            published: 3,
            acked: (1..=3).collect(),
            unacked: SeqSet::new(),
        });
    }
    let v = check(&readings, &f);
    assert_eq!(v.devices["wt-0001"].boot, BOOT + 1);
    assert!(v.devices["wt-0001"].is_ok(), "{v}");
    assert_eq!(v.devices["wt-0001"].received, 4);
    let first = &v.devices[&format!("wt-0001@{BOOT}")];
    assert_eq!(first.missing, vec![(2, 2)], "{v}");
    assert!(!v.is_complete());
    assert_eq!((v.foreign, v.unparseable), (0, 0));
}

#[test]
fn a_planted_gap_is_reported_as_missing() {
    let v = check(&stream(1, &[1, 2, 4, 5]), &fleet(&[(1, 1..=5)]));
    assert!(!v.is_complete() && !v.is_ok());
    assert_eq!(v.devices["wt-0001"].missing, vec![(3, 3)]);
    assert_eq!(v.devices["wt-0001"].out_of_order, 0);
}

#[test]
fn unacknowledged_readings_may_be_absent() {
    // 5 was published but its PUBACK never came: not missing.
    let v = check(&stream(1, &[1, 2, 3, 4]), &fleet(&[(1, 1..=4)]));
    assert!(v.is_ok(), "{v}");
    // ...and present is fine too.
    let v = check(&stream(1, &[1, 2, 3, 4, 5]), &fleet(&[(1, 1..=4)]));
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.devices["wt-0001"].unacked_received, 1);
}

#[test]
fn a_planted_duplicate_is_counted() {
    let v = check(&stream(1, &[1, 2, 2, 3]), &fleet(&[(1, 1..=3)]));
    assert_eq!(v.devices["wt-0001"].duplicates, 1);
    assert_eq!(v.devices["wt-0001"].out_of_order, 0);
    assert!(v.is_ok(), "duplicates are allowed: {v}");
}

#[test]
fn a_planted_reordering_is_caught() {
    let v = check(&stream(1, &[1, 2, 4, 3, 5]), &fleet(&[(1, 1..=5)]));
    let d = &v.devices["wt-0001"];
    assert_eq!(d.out_of_order, 1);
    assert_eq!(d.reorder_examples, vec![(4, 3)]);
    assert_eq!(d.missing_count, 0);
    assert!(!v.is_ok());
}

#[test]
fn a_contiguous_replay_after_a_crash_is_duplicates_only() {
    // Crash after 7 was forwarded but before the cursor moved past 4: 5..=7 replayed.
    let v = check(
        &stream(1, &[1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9]),
        &fleet(&[(1, 1..=9)]),
    );
    let d = &v.devices["wt-0001"];
    assert_eq!((d.duplicates, d.out_of_order, d.missing_count), (3, 0, 0));
    assert!(v.is_ok(), "{v}");
}

#[test]
fn missing_headers_wrong_keys_and_split_partitions_are_reported() {
    let mut s = stream(2, &[1, 2, 3, 4]);
    s[0].headers.retain(|(k, _)| k != GATEWAY_HEADER);
    s[1].headers.retain(|(k, _)| k != SEQ_HEADER);
    s[2].headers[1].1 = b"x1".to_vec();
    s[3].key = Some(b"turbines/wt-9999/telemetry".to_vec());
    let v = check(&s, &fleet(&[(2, 1..=4)]));
    let d = &v.devices["wt-0002"];
    assert_eq!(
        (
            d.missing_gateway_header,
            d.missing_seq_header,
            d.bad_seq_header,
            d.wrong_key
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(d.problems().len(), 4, "{:?}", d.problems());

    let mut s = stream(2, &[1, 2]);
    s[1].partition = 9;
    let v = check(&s, &fleet(&[(2, 1..=2)]));
    assert!(!v.is_ok());
}

#[test]
fn other_boots_and_devices_are_foreign_and_a_silent_device_is_all_missing() {
    let mut s = stream(1, &[1, 2]);
    let mut old = reading(1, 1, 10);
    old.payload = String::from_utf8(old.payload)
        .expect("utf8")
        .replace("\"boot\":77", "\"boot\":5")
        .into_bytes();
    s.push(old);
    s.extend(stream(3, &[1]));
    s.push(KafkaReading {
        payload: b"not json".to_vec(),
        ..reading(1, 1, 20)
    });
    let v = check(&s, &fleet(&[(1, 1..=2), (2, 1..=3)]));
    assert_eq!(v.foreign, 2);
    assert_eq!(v.unparseable, 1);
    assert_eq!(v.devices["wt-0002"].missing, vec![(1, 3)]);
}

#[test]
fn gap_markers_are_counted_apart_and_a_resent_journal_record_is_a_replay() {
    let mut s = stream(1, &[1, 2, 3]);
    // The gateway sends journal record 2 again (same gateway, epoch, seq: "1"), at offset 3:
    // a replay.
    s.push(KafkaReading {
        offset: 3,
        ..reading(1, 2, 1)
    });
    s.push(KafkaReading {
        key: Some(b"$tidegate/gap".to_vec()),
        payload: Vec::new(),
        headers: vec![
            (GATEWAY_HEADER.into(), b"gw-test".to_vec()),
            (SEQ_HEADER.into(), b"40".to_vec()),
            (GAP_HEADER.into(), b"17..40".to_vec()),
        ],
        ..reading(1, 0, 9)
    });
    let v = check(&s, &fleet(&[(1, 1..=3)]));
    assert_eq!((v.gap_markers, v.gap_readings), (1, 24));
    assert_eq!(
        (v.replays, v.duplicates(), v.unparseable, v.foreign),
        (1, 1, 0, 0)
    );
    assert_eq!(
        v.replay_examples,
        vec![Replay {
            seq: "1".into(),
            first: (1, 1),
            again: (1, 3)
        }]
    );
    assert!(v.to_string().contains(
        "replayed tidegate-seq 1: first at partition 1 offset 1, again at partition 1 offset 3"
    ));
    assert!(v.is_ok(), "{v}");
}

#[test]
fn without_a_fleet_report_holes_below_the_highest_counter_are_gaps() {
    let mut s = stream(1, &[1, 2, 5, 3]);
    s.extend(stream(2, &[1, 2, 3]));
    let v = check_stream(&s);
    assert_eq!(v.devices["wt-0001"].missing, vec![(4, 4)]);
    assert_eq!(v.devices["wt-0001"].out_of_order, 1);
    assert!(v.devices["wt-0002"].is_ok());
}

/// Device `device_n`'s reading `counter`, journaled as `journal_seq`, at `offset`.
fn journaled(device_n: usize, counter: u64, journal_seq: u64, offset: i64) -> KafkaReading {
    let mut r = reading(device_n, counter, offset);
    r.headers = vec![
        (GATEWAY_HEADER.into(), b"gw-test".to_vec()),
        (SEQ_HEADER.into(), journal_seq.to_string().into_bytes()),
    ];
    r
}

/// A thinned marker announcing journal sequences `span` at `factor` (`None`: no factor
/// header).
fn thinned_marker(span: &str, factor: Option<&str>, offset: i64) -> KafkaReading {
    let mut headers = vec![
        (GATEWAY_HEADER.into(), b"gw-test".to_vec()),
        (SEQ_HEADER.into(), b"1".to_vec()),
        (THINNED_HEADER.into(), span.as_bytes().to_vec()),
    ];
    if let Some(f) = factor {
        headers.push((THIN_FACTOR_HEADER.into(), f.as_bytes().to_vec()));
    }
    KafkaReading {
        partition: 2,
        offset,
        key: Some(b"$tidegate/thinned".to_vec()),
        payload: Vec::new(),
        headers,
        timestamp_ms: 1_000,
    }
}

/// Readings of device `device_n` as (counter, journal seq), at offsets from `offset`.
fn journaled_stream(device_n: usize, readings: &[(u64, u64)], offset: i64) -> Vec<KafkaReading> {
    readings
        .iter()
        .enumerate()
        .map(|(i, &(c, j))| journaled(device_n, c, j, offset + i as i64))
        .collect()
}

#[test]
fn a_hole_whose_journal_sequences_were_all_announced_is_thinned_not_missing() {
    // Device 1: counters = journal seqs 1..=9, of which 3, 5, 6, 7 were thinned away.
    let mut s = journaled_stream(1, &[(1, 1), (2, 2), (4, 4), (8, 8), (9, 9)], 0);
    // Device 2: 3 and 4 (journal 12, 13) missing where nothing was announced; 6 (journal
    // 15..=17 between 5 and 7) missing where only 15 and 16 were.
    s.extend(journaled_stream(
        2,
        &[(1, 10), (2, 11), (5, 14), (7, 18)],
        100,
    ));
    // Device 3: counters 1 and 2 before its first delivered reading are missing even inside
    // a span: thinning keeps each topic's first reading of a span.
    s.extend(journaled_stream(3, &[(3, 24), (4, 26)], 200));
    // Device 4: 2..=4 missing between journal 30 and 35, where 31 and 32 arrived (device
    // 5's readings, delivered whole) and 33 and 34 were announced: thinned.
    s.extend(journaled_stream(4, &[(1, 30), (5, 35)], 400));
    s.extend(journaled_stream(5, &[(1, 31), (2, 32)], 500));
    // Device 6: 2 missing between journal 40 and 41, with no journal sequence between
    // them: never journaled, so missing whatever was announced.
    s.extend(journaled_stream(6, &[(1, 40), (3, 41)], 600));
    // Two markers of one span, the second from an upstream cursor inside it, and one more
    // span; overlapping announcements are one union of journal sequences.
    s.push(thinned_marker("3..5", Some("2"), 300));
    s.push(thinned_marker("5..7", Some("4"), 301));
    s.push(thinned_marker("15..16", Some("2"), 302));
    s.push(thinned_marker("21..26", Some("2"), 303));
    s.push(thinned_marker("33..34", Some("8"), 304));
    s.push(thinned_marker("38..45", Some("2"), 305));
    let v = check(
        &s,
        &fleet(&[
            (1, 1..=9),
            (2, 1..=7),
            (3, 1..=4),
            (4, 1..=5),
            (5, 1..=2),
            (6, 1..=3),
        ]),
    );

    let d1 = &v.devices["wt-0001"];
    assert_eq!(
        (d1.missing_count, d1.thinned.clone()),
        (0, vec![(3, 3), (5, 7)])
    );
    assert_eq!((d1.thinned_count, d1.widest_thinned_hole), (4, 3));
    assert!(d1.is_ok(), "{v}");
    let d2 = &v.devices["wt-0002"];
    assert_eq!(d2.missing, vec![(3, 4), (6, 6)]);
    assert_eq!(d2.thinned_count, 0);
    let d3 = &v.devices["wt-0003"];
    assert_eq!(d3.missing, vec![(1, 2)]);
    assert_eq!(d3.thinned_count, 0);
    let d4 = &v.devices["wt-0004"];
    assert_eq!((d4.missing_count, d4.thinned.clone()), (0, vec![(2, 4)]));
    assert_eq!(v.devices["wt-0006"].missing, vec![(2, 2)]);

    assert_eq!(
        (
            v.thinned_markers,
            v.thinned_spans.clone(),
            v.thin_factor_max
        ),
        (6, vec![(3, 7), (15, 16), (21, 26), (33, 34), (38, 45)], 8)
    );
    assert_eq!((v.thinned(), v.widest_thinned_hole()), (7, 3));
    assert_eq!((v.foreign, v.unparseable, v.replays), (0, 0, 0), "{v}");
    let text = v.to_string();
    assert!(
        text.contains("7 thinned (widest hole 3)")
            && text.contains(
                "6 thinned markers announcing 23 journal sequences in 5 spans (factor up to 8)"
            ),
        "{text}"
    );
}

#[test]
fn without_a_fleet_report_a_thinned_hole_is_not_a_gap_and_a_bad_marker_is_unparseable() {
    let mut s = journaled_stream(1, &[(1, 1), (4, 4), (5, 5)], 0);
    s.push(thinned_marker("2..3", Some("4"), 10));
    s.push(thinned_marker("2..3", None, 11));
    s.push(thinned_marker("3-2", Some("4"), 12));
    let v = check_stream(&s);
    let d = &v.devices["wt-0001"];
    assert_eq!((d.missing_count, d.thinned.clone()), (0, vec![(2, 3)]));
    assert_eq!((v.thinned_markers, v.unparseable, v.foreign), (1, 2, 0));
}

#[test]
fn a_record_noted_as_other_data_counts_as_delivered_between_thinned_readings() {
    // Journal 2 is device 1's alarm, not a turbine reading; 3..=5 were thinned.
    let mut s = journaled_stream(1, &[(1, 1), (3, 6)], 0);
    s.push(thinned_marker("3..5", Some("4"), 10));
    let mut alarm = journaled(1, 2, 2, 20);
    alarm.payload = br#"{"alarm":1}"#.to_vec();
    let mut c = Checker::new();
    for r in &s {
        c.add(r);
    }
    let without = c.report(None);
    assert_eq!(
        without.devices["wt-0001"].missing,
        vec![(2, 2)],
        "2 looks lost"
    );
    c.add_other(&alarm);
    let with = c.report(None);
    let d = &with.devices["wt-0001"];
    assert_eq!((d.missing_count, d.thinned.clone()), (0, vec![(2, 2)]));
    assert_eq!((with.unparseable, with.foreign), (0, 0));
}

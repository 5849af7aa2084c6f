//! Tests of the turbine model (determinism, physical bounds, sensor rates) and of the
//! payload encodings.

use super::payload::BINARY_TAIL;
use super::*;

fn run(seed: u64, n: usize, steps: usize) -> Vec<Reading> {
    let mut t = Turbine::new(seed, n, 7, 1.0);
    (0..steps).map(|i| t.step(1_000 + i as u64)).collect()
}

#[test]
fn same_seed_and_device_give_the_same_readings() {
    assert_eq!(run(42, 3, 2_000), run(42, 3, 2_000));
}

#[test]
fn different_seeds_or_devices_give_different_readings() {
    let a = run(42, 3, 100);
    assert_ne!(a, run(43, 3, 100));
    let b = run(42, 4, 100);
    assert_ne!(
        a.iter().map(|r| r.wind_ms).collect::<Vec<_>>(),
        b.iter().map(|r| r.wind_ms).collect::<Vec<_>>()
    );
}

#[test]
fn counters_start_at_one_and_increase_by_one() {
    let r = run(1, 1, 50);
    assert!(r.iter().enumerate().all(|(i, x)| x.seq == i as u64 + 1));
    assert!(r.iter().all(|x| x.device == "wt-0001" && x.boot == 7));
}

#[test]
fn readings_stay_within_physical_bounds_and_follow_the_power_curve() {
    let mut states = std::collections::HashSet::new();
    // Ten-second steps over ~115 days per device: storms and calms both happen.
    for n in 1..=10 {
        let mut t = Turbine::new(9, n, 1, 10.0);
        for i in 0..100_000u64 {
            let r = t.step(i);
            states.insert(t.state());
            assert!((0.0..=MAX_WIND_MS).contains(&r.wind_ms), "{r:?}");
            assert!((0.0..=RATED_RPM).contains(&r.rpm), "{r:?}");
            assert!((0.0..=RATED_POWER_KW).contains(&r.power_kw), "{r:?}");
            assert!(
                (TEMP_RANGE_C.0..=TEMP_RANGE_C.1).contains(&r.temp_c),
                "{r:?}"
            );
            assert!((0.0..=MAX_VIB_MM_S).contains(&r.vib_mm_s), "{r:?}");
            assert!((0.0..360.0).contains(&r.wind_dir_deg), "{r:?}");
            assert!((0.0..=100.0).contains(&r.humidity_pct), "{r:?}");
            if r.wind_ms < CUT_IN_MS || r.wind_ms > CUT_OUT_MS {
                assert_eq!(r.power_kw, 0.0, "{r:?}");
            }
            if t.state() == TurbineState::Running {
                let curve = power_curve_kw(r.wind_ms);
                assert!((r.power_kw - curve).abs() <= 0.06 * RATED_POWER_KW, "{r:?}");
                if r.wind_ms >= RATED_WIND_MS {
                    assert!(r.power_kw >= 0.95 * RATED_POWER_KW, "{r:?}");
                }
            }
        }
    }
    assert!(states.contains(&TurbineState::Running), "{states:?}");
    assert!(states.contains(&TurbineState::Idle), "{states:?}");
}

#[test]
fn power_curve_has_cut_in_rated_and_cut_out() {
    assert_eq!(power_curve_kw(2.9), 0.0);
    assert!(power_curve_kw(3.5) > 0.0);
    assert!(power_curve_kw(8.0) < power_curve_kw(10.0));
    assert_eq!(power_curve_kw(12.0), RATED_POWER_KW);
    assert_eq!(power_curve_kw(25.0), RATED_POWER_KW);
    assert_eq!(power_curve_kw(25.1), 0.0);
}

#[test]
fn json_payload_has_the_documented_fields() {
    let r = run(5, 12, 3).pop().expect("three readings");
    let v: serde_json::Value = serde_json::from_slice(&r.to_json()).expect("valid JSON");
    assert_eq!(v["device"], "wt-0012");
    assert_eq!(v["boot"], 7);
    assert_eq!(v["seq"], 3);
    for k in [
        "ts",
        "wind_ms",
        "wind_dir_deg",
        "rpm",
        "power_kw",
        "temp_c",
        "humidity_pct",
        "vib_mm_s",
    ] {
        assert!(v[k].is_number(), "{k} in {v}");
    }
    let id = ReadingId::parse(&r.to_json()).expect("id");
    assert_eq!((id.device.as_str(), id.boot, id.seq), ("wt-0012", 7, 3));
}

#[test]
fn padded_payloads_have_the_exact_target_size_and_stay_valid_json() {
    let mut t = Turbine::new(1, 1, 1_732_000_000, 1.0);
    let mut buf = Vec::new();
    for target in [100usize, 180, 512, 4096] {
        let r = t.step(1_732_000_000_123);
        r.encode_json(Some(target), &mut buf);
        assert_eq!(buf.len(), target, "{}", String::from_utf8_lossy(&buf));
        let id = ReadingId::parse(&buf).expect("valid JSON");
        assert_eq!(id.seq, r.seq);
        assert_eq!(parse_seq(&buf), Some(r.seq));
    }
    // The 100-byte form drops the sensor values but keeps the identity.
    let r = t.step(1);
    r.encode_json(Some(100), &mut buf);
    let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
    assert!(v.get("wind_ms").is_none());
    // Too small to pad: identity only, unpadded.
    r.encode_json(Some(10), &mut buf);
    assert!(ReadingId::parse(&buf).is_some());
}

#[test]
fn slow_sensors_are_sampled_at_their_own_jittered_rates() {
    // One-second steps for an hour: temperature changes about every 10 s, humidity about
    // every 30 s, never faster than the period minus its jitter; wind changes every step.
    let r = run(3, 2, 3_600);
    let change_gaps = |f: &dyn Fn(&Reading) -> f64| -> Vec<u64> {
        let mut last_change = 0u64;
        let mut gaps = Vec::new();
        for w in r.windows(2) {
            if f(&w[1]) != f(&w[0]) {
                gaps.push(w[1].seq - last_change);
                last_change = w[1].seq;
            }
        }
        gaps.remove(0);
        gaps
    };
    for (name, gaps, period) in [
        ("temp_c", change_gaps(&|x| x.temp_c), TEMP_SAMPLE_S),
        (
            "humidity_pct",
            change_gaps(&|x| x.humidity_pct),
            HUMIDITY_SAMPLE_S,
        ),
    ] {
        let lo = (period * (1.0 - SAMPLE_JITTER)).floor() as u64;
        let hi = (period * (1.0 + SAMPLE_JITTER)).ceil() as u64 + 1;
        assert!(
            gaps.len() as f64 > 3_600.0 / hi as f64 - 2.0,
            "{name}: {gaps:?}"
        );
        assert!(
            gaps.iter().all(|g| (lo..=hi).contains(g)),
            "{name}: {gaps:?}"
        );
        assert!(
            gaps.iter().any(|&g| g != gaps[0]),
            "{name} has no jitter: {gaps:?}"
        );
    }
    assert!(r.windows(2).all(|w| w[0].wind_ms != w[1].wind_ms));
}

#[test]
fn binary_payload_round_trips_at_its_resolution_and_is_compact() {
    for (i, r) in run(8, 1, 500).into_iter().enumerate() {
        let bin = r.to_binary();
        assert_eq!(bin.len(), 3 + "wt-0001".len() + BINARY_TAIL);
        assert!(bin.len() * 3 < r.to_json().len(), "binary form is compact");
        let back = Reading::decode_binary(&bin).expect("decodes");
        assert_eq!(
            (&back.device, back.boot, back.seq, back.ts),
            (&r.device, r.boot, r.seq, r.ts)
        );
        for (a, b, res) in [
            (back.wind_ms, r.wind_ms, 0.01),
            (back.wind_dir_deg, r.wind_dir_deg, 0.1),
            (back.rpm, r.rpm, 0.01),
            (back.power_kw, r.power_kw, 0.1),
            (back.temp_c, r.temp_c, 0.01),
            (back.humidity_pct, r.humidity_pct, 0.01),
            (back.vib_mm_s, r.vib_mm_s, 0.01),
        ] {
            assert!((a - b).abs() <= res / 2.0 + 1e-9, "reading {i}: {a} vs {b}");
        }
        let id = ReadingId::parse(&bin).expect("id of a binary payload");
        assert_eq!((id.seq, id.boot), (r.seq, r.boot));
        assert_eq!(parse_seq(&bin), Some(r.seq));
    }
}

#[test]
fn binary_payload_pads_with_zeros_and_refuses_anything_else() {
    let r = run(8, 12, 3).pop().expect("three readings");
    let mut buf = Vec::new();
    r.encode(PayloadFormat::Binary, Some(100), &mut buf);
    assert_eq!(buf.len(), 100);
    assert_eq!(ReadingId::parse(&buf).map(|id| id.seq), Some(3));
    let exact = r.to_binary();
    // Every cut is refused, as is a wrong magic, version or a non-zero trailing byte.
    for cut in 0..exact.len() {
        assert!(
            Reading::decode_binary(&exact[..cut]).is_none(),
            "cut at {cut}"
        );
        assert!(parse_seq(&exact[..cut]).is_none(), "cut at {cut}");
    }
    let mut bad = exact.clone();
    bad[1] = BINARY_VERSION + 1;
    assert!(ReadingId::parse(&bad).is_none());
    let mut bad = buf.clone();
    bad[99] = 1;
    assert!(ReadingId::parse(&bad).is_none());
    let mut bad = exact.clone();
    bad[2] = 0;
    assert!(ReadingId::parse(&bad).is_none());
    // JSON is still read as JSON.
    assert_eq!(ReadingId::parse(&r.to_json()).map(|id| id.seq), Some(3));
    assert_eq!("binary".parse(), Ok(PayloadFormat::Binary));
    assert!("xml".parse::<PayloadFormat>().is_err());
}

#[test]
fn parse_seq_finds_the_counter() {
    assert_eq!(
        parse_seq(br#"{"device":"wt-0001","boot":1,"seq":123,"ts":5}"#),
        Some(123)
    );
    assert_eq!(parse_seq(br#"{"seq":}"#), None);
    assert_eq!(parse_seq(b"garbage"), None);
}

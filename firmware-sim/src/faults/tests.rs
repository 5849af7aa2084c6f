//! Tests of fault injection: decisions exact and deterministic per seed and device, faulty
//! streams that decode to exactly the good readings.

use super::*;
use crate::framing::{Decoder, Framing};
use crate::telemetry::{ReadingId, Turbine};

fn plan() -> FaultPlan {
    FaultPlan {
        malformed_json_rate: 0.1,
        oversized_rate: 0.02,
        oversized_bytes: 2000,
        duplicate_rate: 0.05,
        noise_rate: 0.03,
        bad_crc_rate: 0.04,
        truncated_rate: 0.06,
        ..FaultPlan::default()
    }
}

#[test]
fn the_default_plan_injects_nothing() {
    let p = FaultPlan::default();
    assert!(p.is_empty());
    assert_eq!(p.expected(1, 1, 10_000), FaultCounts::default());
    assert!(!plan().is_empty());
}

#[test]
fn decisions_are_exactly_what_the_seeded_rng_draws() {
    let p = FaultPlan {
        malformed_json_rate: 0.1,
        ..FaultPlan::default()
    };
    let got = p.expected(42, 3, 10_000);
    // The same draws, made by hand: six per reading, malformed JSON second.
    let mut rng = FaultRng::new(42, 3);
    let mut want = 0;
    for _ in 0..10_000 {
        let draws: Vec<f64> = (0..6).map(|_| rng.0.random()).collect();
        want += u64::from(draws[1] < 0.1);
    }
    assert_eq!(got.malformed_json, want);
    assert_eq!(got.total(), want);
    // Within a sane band of 10% of 10 000 (± ~3.5 σ).
    assert!((900..=1100).contains(&want), "{want}");
}

#[test]
fn decisions_are_deterministic_per_seed_and_device() {
    let p = plan();
    assert_eq!(p.expected(7, 1, 5_000), p.expected(7, 1, 5_000));
    assert_ne!(p.expected(7, 1, 5_000), p.expected(8, 1, 5_000));
    assert_ne!(p.expected(7, 1, 5_000), p.expected(7, 2, 5_000));
    let mut a = FaultRng::new(7, 1);
    let mut b = FaultRng::new(7, 1);
    for i in 1..=1000 {
        assert_eq!(p.decide(i, &mut a), p.decide(i, &mut b));
    }
}

#[test]
fn raising_one_rate_does_not_move_the_others() {
    let a = plan().expected(5, 1, 5_000);
    let b = FaultPlan {
        duplicate_rate: 0.5,
        ..plan()
    }
    .expected(5, 1, 5_000);
    assert_eq!(a.malformed_json, b.malformed_json);
    assert_eq!(a.truncated, b.truncated);
    assert!(b.duplicate > a.duplicate);
}

#[test]
fn rates_of_zero_and_one_are_never_and_always() {
    let p = FaultPlan {
        duplicate_rate: 1.0,
        ..FaultPlan::default()
    };
    let c = p.expected(1, 1, 1000);
    assert_eq!(c.duplicate, 1000);
    assert_eq!(c.total(), 1000);
}

#[test]
fn reboots_flaps_and_bursts_follow_their_period() {
    let p = FaultPlan {
        reboot_every: Some(100),
        flap_every: Some(50),
        burst: Some((3, 10)),
        ..FaultPlan::default()
    };
    let expected = p.expected(1, 1, 1000);
    assert_eq!((expected.reboot, expected.flap), (9, 19));
    let mut rng = FaultRng::new(1, 1);
    assert!(p.decide(1, &mut rng).is_empty());
    assert_eq!(p.decide(51, &mut rng), vec![Fault::Flap]);
    assert_eq!(p.decide(101, &mut rng), vec![Fault::Reboot, Fault::Flap]);
    assert!(p.reboot_due(201) && !p.reboot_due(200) && !p.reboot_due(1));
    assert!(!Fault::Flap.is_garbage());
    let burst: Vec<u64> = (1..=25).filter(|&i| p.in_burst(i)).collect();
    assert_eq!(burst, vec![1, 2, 3, 11, 12, 13, 21, 22, 23]);
}

#[test]
fn a_flap_rate_drops_devices_at_their_own_moments_and_moves_no_other_fault() {
    let flapping = FaultPlan {
        flap_rate: 0.01,
        ..plan()
    };
    // The other faults fall on exactly the same readings as without flaps.
    let mut a = FaultRng::new(9, 1);
    let mut b = FaultRng::new(9, 1);
    let mut flaps = Vec::new();
    for i in 1..=20_000 {
        let plain = plan().decide(i, &mut a);
        let mut with = flapping.decide(i, &mut b);
        if with.first() == Some(&Fault::Flap) {
            flaps.push(i);
            with.remove(0);
        }
        assert_eq!(plain, with, "reading {i}");
    }
    // About 1 % of 20 000 (± ~3.5 σ), at moments of this device's own.
    assert!((150..=250).contains(&flaps.len()), "{}", flaps.len());
    let other = flapping.expected(9, 2, 20_000).flap;
    let mut c = FaultRng::new(9, 2);
    let other_flaps: Vec<u64> = (1..=20_000)
        .filter(|&i| flapping.decide(i, &mut c).contains(&Fault::Flap))
        .collect();
    assert_eq!(other, other_flaps.len() as u64);
    assert_ne!(flaps, other_flaps);
}

#[test]
fn bad_plans_are_refused() {
    let bad = [
        FaultPlan {
            noise_rate: 1.5,
            ..FaultPlan::default()
        },
        FaultPlan {
            duplicate_rate: -0.1,
            ..FaultPlan::default()
        },
        FaultPlan {
            reboot_every: Some(0),
            ..FaultPlan::default()
        },
        FaultPlan {
            flap_every: Some(0),
            ..FaultPlan::default()
        },
        FaultPlan {
            burst: Some((0, 5)),
            ..FaultPlan::default()
        },
    ];
    for p in bad {
        assert!(p.validate().is_err(), "{p:?}");
    }
    assert!(plan().validate().is_ok());
    assert!(plan().validate_for_mqtt().is_err());
    let flapping = FaultPlan {
        flap_every: Some(5),
        reboot_every: Some(7),
        ..FaultPlan::default()
    };
    assert!(flapping.validate_for_mqtt().is_ok());
    assert!(flapping.validate_for_serial().is_err());
    let random_flaps = FaultPlan {
        flap_rate: 0.001,
        ..FaultPlan::default()
    };
    assert!(random_flaps.validate_for_mqtt().is_ok());
    assert!(random_flaps.validate_for_serial().is_err());
    let not_a_probability = FaultPlan {
        flap_rate: 1.5,
        ..FaultPlan::default()
    };
    assert!(not_a_probability.validate().is_err());
}

#[test]
fn clock_skew_moves_ts_both_ways() {
    let p = FaultPlan {
        clock_skew_ms: -500,
        ..FaultPlan::default()
    };
    assert_eq!(p.skew(1_000), 500);
    assert_eq!(p.skew(100), 0);
    let p = FaultPlan {
        clock_skew_ms: 250,
        ..FaultPlan::default()
    };
    assert_eq!(p.skew(1_000), 1_250);
}

/// A stream of faulty frames decodes to exactly the good readings (plus duplicates) and
/// one rejected frame or unparseable payload per garbage fault.
fn stream_decodes_exactly(framing: Framing) {
    let p = plan();
    let (readings, max_frame) = (3_000u64, 1024);
    let mut turbine = Turbine::new(9, 1, 1, 1.0);
    let mut rng = FaultRng::new(9, 1);
    let (mut stream, mut json) = (Vec::new(), Vec::new());
    let mut injected = FaultCounts::default();
    for i in 1..=readings {
        let faults = p.decide(i, &mut rng);
        faults.iter().for_each(|&f| injected.add(f));
        let r = turbine.step(1_000 + i);
        r.encode_json(None, &mut json);
        p.encode_serial(framing, &faults, &r, &json, &mut rng, &mut stream)
            .expect("encodes");
    }
    assert_eq!(injected, p.expected(9, 1, readings));
    // Feed it in odd chunks, as a serial line does.
    let mut d = Decoder::new(framing, max_frame);
    let (mut good, mut rejected) = (Vec::new(), 0u64);
    for chunk in stream.chunks(37) {
        for r in d.push(chunk) {
            match r.ok().and_then(|p| ReadingId::parse(&p)) {
                Some(id) => good.push(id.seq),
                None => rejected += 1,
            }
        }
    }
    assert_eq!(d.finish(), None);
    assert_eq!(rejected, injected.garbage());
    assert_eq!(good.len() as u64, readings + injected.duplicate);
    good.dedup();
    assert_eq!(good, (1..=readings).collect::<Vec<_>>());
    assert!(injected.garbage() > 500, "{injected}");
}

#[test]
fn a_faulty_lines_stream_gives_back_exactly_the_good_readings() {
    stream_decodes_exactly(Framing::Lines);
}

#[test]
fn a_faulty_cobs_stream_gives_back_exactly_the_good_readings() {
    stream_decodes_exactly(Framing::Cobs);
}

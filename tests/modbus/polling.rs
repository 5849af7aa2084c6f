//! Polling that works: every register type and byte order reaches the journal with its
//! scale applied.

use std::sync::atomic::Ordering;

use firmware_sim::modbus::{PATTERN_F32, PATTERN_I32, PATTERN_U32};
use firmware_sim::telemetry::{Turbine, TurbineState};
use tidegate::record::SourceKind;
use tidegate::telemetry::get;

use crate::rig::{bus, close_to, live_registers, pattern_registers, section, slave, Rig};

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

//! The real daemon with a Modbus bus beside an MQTT fleet, forwarding to Kafka: a port that
//! never exists disturbs nothing, and Modbus readings arrive keyed by their topic.

use std::path::Path;
use std::time::Duration;

use firmware_sim::modbus::PATTERN_U32;
use firmware_sim::wait_until_complete;
use serde_json::Value;

use crate::common::status::eventually;
use crate::common::Fleet;
use crate::rig::{bus, register, section, slave, WAIT};

/// The daemon with MQTT devices, a Modbus bus that works and one whose port never exists,
/// forwarding to Kafka: the missing port disturbs nothing, and Modbus readings arrive in
/// Kafka keyed by their topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_readings_reach_kafka_and_a_port_that_never_exists_does_not_stop_mqtt() {
    let tansu = crate::common::Tansu::start();
    let sim = bus(&[1], None);
    let never = Path::new("/dev/tidegate-test-no-such-tty");
    let modbus = section(
        sim.path(),
        &slave(
            1,
            "wt-0001",
            &(register("wind_ms", "input", 0, "", "", 0.01)
                + &register("u32_little", "holding", 112, "u32", "little", 1.0)),
        ),
    ) + &section(
        never,
        &slave(5, "ghost", &register("x", "input", 0, "", "", 1.0)),
    );
    let kafka = tansu.port();
    let gw = crate::common::Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-modbus\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n[[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\ntopic = \"mb\"\nlinger = \"5ms\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n{modbus}",
            dir.join("journal").display()
        )
    });

    let report = Fleet::new(gw.mqtt_addr(), 3)
        .window(10)
        .first_device(100)
        .count(50)
        .drain_timeout(Duration::from_secs(30))
        .run()
        .await;
    assert!(
        report.all_acked(),
        "MQTT keeps working beside a missing Modbus port"
    );
    let v = wait_until_complete(&tansu.brokers(), "mb", &report, WAIT * 3)
        .await
        .unwrap_or_else(|e| panic!("reading Kafka: {e}\n{}", gw.log()));
    assert!(v.is_complete(), "{v}\n{}", gw.log());

    let modbus_records = eventually(&gw, "3 Modbus readings in Kafka", WAIT, async || {
        let records = firmware_sim::verify::read_topic(&tansu.brokers(), "mb")
            .await
            .expect("read topic");
        let mb: Vec<_> = records
            .into_iter()
            .filter(|r| r.key.as_deref() == Some(&b"modbus/wt-0001"[..]))
            .collect();
        if mb.len() >= 3 {
            Ok(mb)
        } else {
            Err(format!("{} Modbus readings", mb.len()))
        }
    })
    .await;
    for r in &modbus_records {
        let v: Value = serde_json::from_slice(&r.payload).expect("JSON payload");
        assert_eq!(v["values"]["u32_little"], PATTERN_U32, "{v}");
        assert!(v["values"]["wind_ms"].is_number(), "{v}");
        assert_eq!(r.header("tidegate-gateway"), Some(&b"gw-modbus"[..]));
    }
    let log = gw.log();
    assert_eq!(
        log.matches("Cannot open the Modbus port").count(),
        1,
        "the missing port is logged once:\n{log}"
    );
    drop(sim);
}

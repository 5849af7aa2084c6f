//! Upgrades: a journal written by an earlier tidegate opens with this one and is forwarded
//! in order; a journal from a newer tidegate is refused with "upgrade tidegate".
//!
//! `tests/fixtures/journal-v1/data.mdb` is a real journal of layout 1 and record format 1:
//! six readings on two topics, and the cursor of an upstream named `cloud` still at the
//! first of them. It was written by the daemon itself through MQTT; the ignored test
//! `regenerate_the_fixture_journal` writes it again (only do that when the format changes
//! on purpose, and keep the old fixture under a new name). LMDB files on Linux hold only the
//! pages written, so it stays a few dozen KiB.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, Gateway, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// What the fixture holds, in journal order: (topic, payload).
const READINGS: [(&str, &str); 6] = [
    ("fixture/wt-1", r#"{"n":1,"wind":7.5}"#),
    ("fixture/wt-2", r#"{"n":1,"wind":6.0}"#),
    ("fixture/wt-1", r#"{"n":2,"wind":7.9}"#),
    ("fixture/wt-2", r#"{"n":2,"wind":6.4}"#),
    ("fixture/wt-1", r#"{"n":3,"wind":8.1}"#),
    ("fixture/wt-2", r#"{"n":3,"wind":6.6}"#),
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1")
}

/// A copy of the fixture journal in `dir/journal` (opening a journal writes to it).
fn copy_fixture(dir: &Path) -> PathBuf {
    let journal = dir.join("journal");
    std::fs::create_dir_all(&journal).expect("journal dir");
    std::fs::copy(fixture().join("data.mdb"), journal.join("data.mdb")).expect("copy fixture");
    journal
}

fn base_config(journal: &Path, mqtt_port: u16) -> String {
    format!(
        "[gateway]\nid = \"gw-upgrade\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n",
        journal.display()
    )
}

fn tidegate(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .expect("run tidegate")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_of_the_previous_release_opens_and_is_forwarded_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = copy_fixture(dir.path());

    // Read-only first: what it holds and where `cloud` stands.
    let config = dir.path().join("status.toml");
    std::fs::write(&config, base_config(&journal, free_port())).expect("write");
    let out = tidegate(&["status", "--json"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let summary = json.get("journal").unwrap_or(&json);
    assert_eq!(summary["records"], 6, "{text}");
    assert_eq!(summary["upstreams"][0]["name"], "cloud", "{text}");
    assert_eq!(summary["upstreams"][0]["backlog"], 6, "{text}");

    // Then the daemon forwards it to an MQTT upstream named `cloud`, from its cursor.
    let broker = Mosquitto::start();
    let mut opts = MqttOptions::new("upgrade-check", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 100);
    client
        .subscribe("fixture/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        let mut gateway = None;
        let mut got = Vec::new();
        while got.len() < READINGS.len() {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    gateway = Some(Gateway::start_fresh(|mqtt, _dir| {
                        format!(
                            "{}[[upstream]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\n",
                            base_config(&journal, mqtt),
                            broker.port()
                        )
                    }));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => got.push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                )),
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        (got, gateway)
    })
    .await;
    let (got, mut gateway) = received.expect("the fixture's readings arrive within 30 s");
    let expected: Vec<(String, String)> = READINGS
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, expected);
    if let Some(g) = gateway.as_mut() {
        assert!(g.terminate().success());
    }
}

/// Sets `meta.format` of the journal in `dir` (what a newer tidegate would write).
fn set_layout_version(dir: &Path, version: u64) {
    use heed::byteorder::BigEndian;
    use heed::types::{Str, U64};
    let mut opts = heed::EnvOpenOptions::new();
    opts.max_dbs(4);
    // SAFETY: the test owns this copy of the journal; nothing else opens it meanwhile.
    let env = unsafe { opts.open(dir) }.expect("open journal");
    let txn = env.write_txn().expect("txn");
    env.create_databases_and_commit(txn, |dbo, txn| -> Result<_, heed::Error> {
        let meta = dbo.create_database::<Str, U64<BigEndian>>(txn, Some("meta"))?;
        meta.put(txn, "format", &version)?;
        Ok(heed::CommitOrAbort::<_, ()>::Commit(()))
    })
    .expect("write meta.format");
}

#[test]
fn a_journal_from_a_newer_tidegate_is_refused_with_upgrade_tidegate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = copy_fixture(dir.path());
    set_layout_version(&journal, 2);
    let config = dir.path().join("tidegate.toml");
    std::fs::write(&config, base_config(&journal, free_port())).expect("write");

    for args in [&["run"][..], &["status"][..]] {
        let out = tidegate(args, &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("layout version 2"), "{args:?}: {err}");
        assert!(err.contains("Upgrade tidegate"), "{args:?}: {err}");
    }
}

/// Sets the format version byte of the newest record (what a newer tidegate would write).
fn set_last_record_version(dir: &Path, version: u8) {
    use heed::byteorder::BigEndian;
    use heed::types::{Bytes, U64};
    let mut opts = heed::EnvOpenOptions::new();
    opts.max_dbs(4);
    // SAFETY: the test owns this copy of the journal; nothing else opens it meanwhile.
    let env = unsafe { opts.open(dir) }.expect("open journal");
    let txn = env.write_txn().expect("txn");
    env.create_databases_and_commit(txn, |dbo, txn| -> Result<_, heed::Error> {
        let records = dbo.create_database::<U64<BigEndian>, Bytes>(txn, Some("records"))?;
        let (seq, value) = records.last(txn)?.expect("the fixture holds records");
        let mut value = value.to_vec();
        value[0] = version;
        records.put(txn, &seq, &value)?;
        Ok(heed::CommitOrAbort::<_, ()>::Commit(()))
    })
    .expect("rewrite the last record");
}

#[test]
fn records_from_a_newer_tidegate_are_refused_with_upgrade_tidegate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = copy_fixture(dir.path());
    set_last_record_version(&journal, 2);
    let config = dir.path().join("tidegate.toml");
    std::fs::write(&config, base_config(&journal, free_port())).expect("write");
    let out = tidegate(&["run"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("format version 2"), "{err}");
    assert!(err.to_lowercase().contains("upgrade tidegate"), "{err}");
}

/// Writes the fixture again with the daemon of this build; see the module docs.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "regenerates tests/fixtures/journal-v1; run on purpose only"]
async fn regenerate_the_fixture_journal() {
    let journal = fixture();
    let _ = std::fs::remove_dir_all(&journal);
    // `cloud` points at a port nothing listens on, so its cursor stays at the first reading.
    let nothing = free_port();
    let mut gateway = Gateway::start_fresh(|mqtt, _dir| {
        format!(
            "{}[[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{nothing}\"]\ntopic = \"t\"\n",
            base_config(&journal, mqtt),
        )
    });
    let mqtt = gateway.mqtt_port();
    let mut opts = MqttOptions::new("fixture-writer", "127.0.0.1", mqtt);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 100);
    for (topic, payload) in READINGS {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    let mut acked = 0;
    while acked < READINGS.len() {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.expect("poll") {
            acked += 1;
        }
    }
    assert!(gateway.terminate().success());
    let _ = std::fs::remove_file(journal.join("lock.mdb"));
}

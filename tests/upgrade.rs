//! Upgrades: a journal written by an earlier tidegate opens with this one and is forwarded
//! in order; a journal from a newer tidegate is refused with "upgrade tidegate".
//!
//! Two real journals, both written by the daemon itself through MQTT, are kept as fixtures.
//! LMDB files on Linux hold only the pages written, so each stays a few dozen KiB.
//!
//! - `tests/fixtures/journal-v1/data.mdb`: layout 1 and record format 1: six readings on two
//!   topics, and the cursor of an upstream named `cloud` still at the first of them.
//! - `tests/fixtures/journal-v1-r14/data.mdb`: layout 1 and record format 1 as the last
//!   uncompressed releases wrote them (up to issue 14, before compression at rest): with the
//!   `epoch` meta key, the `sessions` database (the MQTT re-send memory, one row per
//!   publishing client), and the `budget.period/edge` and `budget.used/edge` meta keys of an
//!   upstream with a data budget. Twelve readings on three topics ([`R14_READINGS`]); the
//!   cursor of `cloud` is still at the first of them, the cursor of `edge` past the first
//!   [`R14_EDGE_SENT`] (it delivered them before its broker went away), so the test proves
//!   each upstream resumes exactly where it was.
//!
//! The ignored tests `regenerate_the_fixture_journal` and `regenerate_the_r14_fixture_journal`
//! write them again. Only run them with a build of the format the fixture stands for (the
//! point of a fixture is that today's build did not write it): when the format changes on
//! purpose, keep the old fixtures and add one under a new name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, wait_for_backlog, Gateway, Mosquitto};
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

/// What the r14 fixture holds, in journal order: (topic, payload); seqs 1 to 12.
const R14_READINGS: [(&str, &str); 12] = [
    ("fixture/wt-1", r#"{"n":1,"wind":7.5}"#),
    ("fixture/wt-2", r#"{"n":1,"wind":6.0}"#),
    ("fixture/wt-3", r#"{"n":1,"wind":9.2}"#),
    ("fixture/wt-1", r#"{"n":2,"wind":7.9}"#),
    ("fixture/wt-2", r#"{"n":2,"wind":6.4}"#),
    ("fixture/wt-3", r#"{"n":2,"wind":9.0}"#),
    ("fixture/wt-1", r#"{"n":3,"wind":8.1}"#),
    ("fixture/wt-2", r#"{"n":3,"wind":6.6}"#),
    ("fixture/wt-3", r#"{"n":3,"wind":8.7}"#),
    ("fixture/wt-1", r#"{"n":4,"wind":8.4}"#),
    ("fixture/wt-2", r#"{"n":4,"wind":6.9}"#),
    ("fixture/wt-3", r#"{"n":4,"wind":8.8}"#),
];

/// How many of [`R14_READINGS`] the r14 fixture's upstream `edge` had delivered.
const R14_EDGE_SENT: usize = 5;

/// The fixture journal directory `name` under tests/fixtures.
fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture() -> PathBuf {
    fixture_dir("journal-v1")
}

/// A copy of the fixture journal in `dir/journal` (opening a journal writes to it).
fn copy_fixture(dir: &Path) -> PathBuf {
    copy_fixture_named(dir, "journal-v1")
}

/// A copy of the fixture journal `name` in `dir/journal`.
fn copy_fixture_named(dir: &Path, name: &str) -> PathBuf {
    let journal = dir.join("journal");
    std::fs::create_dir_all(&journal).expect("journal dir");
    std::fs::copy(fixture_dir(name).join("data.mdb"), journal.join("data.mdb"))
        .expect("copy fixture");
    journal
}

/// `status --json` of the journal in `journal`, read-only (no daemon needed); the journal
/// summary.
fn journal_status(dir: &Path, journal: &Path) -> serde_json::Value {
    let config = dir.join("status.toml");
    std::fs::write(&config, base_config(journal, free_port())).expect("write");
    let out = tidegate(&["status", "--json"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    json.get("journal").cloned().unwrap_or(json)
}

/// The backlog of `name` in a journal summary.
fn backlog_of(summary: &serde_json::Value, name: &str) -> u64 {
    summary["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name))
        .and_then(|u| u["backlog"].as_u64())
        .unwrap_or_else(|| panic!("no backlog for {name} in {summary}"))
}

/// Starts a daemon on `journal` with the `[[upstream]]` sections `upstreams(broker port)`
/// once a subscriber to `filter` on a fresh Mosquitto is subscribed, and returns the first
/// `want` publishes it receives (topic, payload), in order, with the still running gateway.
async fn forward_to_mosquitto(
    journal: &Path,
    upstreams: impl Fn(u16) -> String,
    filter: &str,
    want: usize,
) -> (Vec<(String, String)>, Gateway) {
    let broker = Mosquitto::start();
    let mut opts = MqttOptions::new("upgrade-check", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        let mut gateway = None;
        let mut got = Vec::new();
        while got.len() < want {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    gateway = Some(Gateway::start_fresh(|mqtt, _dir| {
                        format!("{}{}", base_config(journal, mqtt), upstreams(broker.port()))
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
    let (got, gateway) = received.unwrap_or_else(|_| panic!("{want} readings arrive within 30 s"));
    (got, gateway.expect("the gateway started on SUBACK"))
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
    let summary = journal_status(dir.path(), &journal);
    assert_eq!(summary["records"], 6, "{summary}");
    assert_eq!(summary["upstreams"][0]["name"], "cloud", "{summary}");
    assert_eq!(summary["upstreams"][0]["backlog"], 6, "{summary}");

    // Then the daemon forwards it to an MQTT upstream named `cloud`, from its cursor.
    let (got, mut gateway) = forward_to_mosquitto(
        &journal,
        |port| {
            format!("[[upstream]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\n")
        },
        "fixture/#",
        READINGS.len(),
    )
    .await;
    let expected: Vec<(String, String)> = READINGS
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert!(gateway.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_of_the_format_before_compression_opens_and_each_upstream_resumes_at_its_cursor()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = copy_fixture_named(dir.path(), "journal-v1-r14");

    // Read-only first: what it holds, its epoch, and where each upstream stands.
    let before = journal_status(dir.path(), &journal);
    assert_eq!(before["records"], R14_READINGS.len(), "{before}");
    let epoch = before["epoch"].as_u64();
    assert!(epoch.is_some(), "the fixture has an epoch: {before}");
    assert_eq!(backlog_of(&before, "cloud"), 12, "{before}");
    assert_eq!(
        backlog_of(&before, "edge"),
        (R14_READINGS.len() - R14_EDGE_SENT) as u64,
        "{before}"
    );

    // Both upstreams publish to one broker, each under its own prefix: `cloud` sends all
    // twelve, `edge` only those after its cursor, each in journal order.
    let want = 2 * R14_READINGS.len() - R14_EDGE_SENT;
    let (got, mut gateway) = forward_to_mosquitto(
        &journal,
        |port| {
            format!(
                "[[upstream]]\nname = \"cloud\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic_prefix = \"cloud/\"\n\
                 [[upstream]]\nname = \"edge\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic_prefix = \"edge/\"\nbudget = \"1GiB\"\n"
            )
        },
        "+/fixture/#",
        want,
    )
    .await;
    let sent_by = |prefix: &str| -> Vec<(String, String)> {
        got.iter()
            .filter_map(|(t, p)| Some((t.strip_prefix(prefix)?.to_owned(), p.clone())))
            .collect()
    };
    let expected = |from: usize| -> Vec<(String, String)> {
        R14_READINGS[from..]
            .iter()
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect()
    };
    assert_eq!(sent_by("cloud/"), expected(0), "all received: {got:?}");
    assert_eq!(
        sent_by("edge/"),
        expected(R14_EDGE_SENT),
        "all received: {got:?}"
    );
    // The broker passes a publish on before the upstream has its PUBACK and advances.
    wait_for_backlog(&gateway, "cloud", 0).await;
    wait_for_backlog(&gateway, "edge", 0).await;
    assert!(gateway.terminate().success());

    // The journal kept its identity: the same epoch, nothing left to send.
    let after = journal_status(dir.path(), &journal);
    assert_eq!(after["epoch"].as_u64(), epoch, "{after}");
    assert_eq!(backlog_of(&after, "cloud"), 0, "{after}");
    assert_eq!(backlog_of(&after, "edge"), 0, "{after}");
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
    // One past the layout this build writes.
    let newer = tidegate::journal::store::JOURNAL_FORMAT + 1;
    set_layout_version(&journal, newer);
    let config = dir.path().join("tidegate.toml");
    std::fs::write(&config, base_config(&journal, free_port())).expect("write");

    for args in [&["run"][..], &["status"][..]] {
        let out = tidegate(args, &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("layout version {newer}")),
            "{args:?}: {err}"
        );
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
    // One past every value format this build reads: records and compressed blocks.
    let newer = tidegate::journal::block::BLOCK_VERSION.max(tidegate::record::FORMAT_VERSION) + 1;
    set_last_record_version(&journal, newer);
    let config = dir.path().join("tidegate.toml");
    std::fs::write(&config, base_config(&journal, free_port())).expect("write");
    let out = tidegate(&["run"], &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("format version {newer}")), "{err}");
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
    publish_acked(&client, &mut events, &READINGS).await;
    assert!(gateway.terminate().success());
    // Only the data file is the fixture: the lock file and the disk-full reserve are
    // made again by whichever daemon opens a copy.
    let _ = std::fs::remove_file(journal.join("lock.mdb"));
    let _ = std::fs::remove_file(journal.join("reserve.tidegate"));
}

/// Writes the r14 fixture again with the daemon of this build; see the module docs (only
/// with a build of that format). `edge` delivers the first [`R14_EDGE_SENT`] readings to a
/// Mosquitto that is then stopped; `cloud` points at a port nothing listens on.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "regenerates tests/fixtures/journal-v1-r14; run on purpose only"]
async fn regenerate_the_r14_fixture_journal() {
    let journal = fixture_dir("journal-v1-r14");
    let _ = std::fs::remove_dir_all(&journal);
    let nothing = free_port();
    let broker = Mosquitto::start();
    let mut gateway = Gateway::start_fresh(|mqtt, _dir| {
        format!(
            "{}[[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{nothing}\"]\ntopic = \"t\"\n\
             [[upstream]]\nname = \"edge\"\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"edge/\"\nbudget = \"1GiB\"\n",
            base_config(&journal, mqtt),
            broker.port()
        )
    });
    let mqtt = gateway.mqtt_port();
    let mut opts = MqttOptions::new("fixture-writer", "127.0.0.1", mqtt);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 100);
    let (first, rest) = R14_READINGS.split_at(R14_EDGE_SENT);
    publish_acked(&client, &mut events, first).await;
    // `edge` delivers these, then loses its broker before the rest arrive.
    wait_for_backlog(&gateway, "edge", 0).await;
    drop(broker);
    publish_acked(&client, &mut events, rest).await;
    wait_for_backlog(
        &gateway,
        "edge",
        (R14_READINGS.len() - R14_EDGE_SENT) as u64,
    )
    .await;
    wait_for_backlog(&gateway, "cloud", R14_READINGS.len() as u64).await;
    assert!(gateway.terminate().success());
    // Only the data file is the fixture: the lock file and the disk-full reserve are
    // made again by whichever daemon opens a copy.
    let _ = std::fs::remove_file(journal.join("lock.mdb"));
    let _ = std::fs::remove_file(journal.join("reserve.tidegate"));
}

/// Publishes `readings` at QoS 1 and waits for their PUBACKs.
async fn publish_acked(
    client: &AsyncClient,
    events: &mut rumqttc::EventLoop,
    readings: &[(&str, &str)],
) {
    for (topic, payload) in readings {
        client
            .publish(*topic, QoS::AtLeastOnce, false, *payload)
            .await
            .expect("publish");
    }
    let mut acked = 0;
    while acked < readings.len() {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.expect("poll") {
            acked += 1;
        }
    }
}

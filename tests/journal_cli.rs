//! `tidegate journal check` and `tidegate journal dump` on real journals written by the real
//! daemon: a good one (while the daemon runs, and after), and a copy with one record's bytes
//! flipped on disk.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Fleet, Gateway};
use firmware_sim::telemetry::PayloadFormat;

/// One record per value (`compression = "none"`), so a payload can be found on disk.
fn config(mqtt_port: u16, dir: &Path) -> String {
    format!(
        "[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\ncompression = \"none\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n",
        dir.join("journal").display()
    )
}

/// The default journal: readings in compressed blocks.
fn config_zstd(mqtt_port: u16, dir: &Path) -> String {
    format!(
        "[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n",
        dir.join("journal").display()
    )
}

fn tidegate(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run tidegate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn publish(gw: &Gateway, devices: usize, count: u64, format: PayloadFormat, first: usize) {
    let report = Fleet::new(gw.mqtt_addr(), devices)
        .first_device(first)
        .window(10)
        .count(count)
        .payload_format(format)
        .drain_timeout(Duration::from_secs(30))
        .run()
        .await;
    assert!(report.all_acked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_good_journal_and_names_the_first_record_whose_bytes_were_flipped() {
    let mut gw = Gateway::start_fresh(config);
    publish(&gw, 3, 40, PayloadFormat::Json, 1).await;
    publish(&gw, 1, 30, PayloadFormat::Binary, 4).await;

    // While the daemon runs: read-only, consistent, exit 0.
    let out = gw.command(&["journal", "check", "--progress-every", "50"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "journal OK: 150 records (seq 1..=150), 0 cursors"
    );
    assert!(
        text(&out.stderr).contains("checked 150 records"),
        "progress on stderr: {}",
        text(&out.stderr)
    );

    // dump: JSON lines with the expected sequence numbers; text as text, binary as base64.
    let out = gw.command(&["journal", "dump", "--from", "100", "--limit", "60"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (100..=150).collect::<Vec<_>>(), "from 100, 51 held");
    for l in &lines {
        assert!(
            l["ts"].as_u64().is_some_and(|t| t > 1_700_000_000_000),
            "{l}"
        );
        assert!(
            l["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("turbines/")),
            "{l}"
        );
        assert_eq!(l["qos"], 1, "{l}");
        assert!(l["source"].is_string(), "{l}");
    }
    assert!(lines.iter().any(|l| l["encoding"] == "utf8"));
    assert!(
        lines.iter().any(|l| l["encoding"] == "base64"),
        "the binary payloads are base64"
    );
    let sample = lines
        .iter()
        .find(|l| l["seq"] == 100)
        .expect("seq 100")
        .clone();

    // A stopped daemon's journal, copied, with record 77's payload bytes flipped on disk.
    assert!(gw.terminate().success());
    let out = gw.command(&["journal", "dump", "--from", "77", "--limit", "1"]);
    let victim: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim()).expect("one JSON line");
    assert_eq!(victim["seq"], 77);
    assert_eq!(victim["encoding"], "utf8", "records 1..=120 are JSON");
    let payload = victim["payload"]
        .as_str()
        .expect("payload")
        .as_bytes()
        .to_vec();

    let copy = tempfile::tempdir().expect("temp dir");
    let journal = copy.path().join("journal");
    std::fs::create_dir_all(&journal).expect("mkdir");
    let source = gw.config_path().parent().expect("dir").join("journal");
    std::fs::copy(source.join("data.mdb"), journal.join("data.mdb")).expect("copy data.mdb");
    let mut data = std::fs::read(journal.join("data.mdb")).expect("read data.mdb");
    // Every copy of the payload (LMDB may keep stale copies in free pages): the live one
    // among them.
    let mut flipped = 0;
    let mut at = 0;
    while let Some(i) = data[at..]
        .windows(payload.len())
        .position(|w| w == payload.as_slice())
    {
        let pos = at + i + payload.len() / 2;
        data[pos] ^= 0x20;
        flipped += 1;
        at = pos + 1;
    }
    assert!(flipped >= 1, "the payload is in data.mdb as it is");
    std::fs::write(journal.join("data.mdb"), &data).expect("write data.mdb");
    let copy_config = copy.path().join("tidegate.toml");
    std::fs::write(&copy_config, config(1, copy.path())).expect("config");

    let out = tidegate(&["journal", "check"], &copy_config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let summary = text(&out.stdout);
    assert!(
        summary.starts_with("journal BAD: first bad seq 77: record 77 fails its checksum"),
        "{summary}"
    );

    let out = tidegate(
        &["journal", "dump", "--from", "76", "--limit", "3"],
        &copy_config,
    );
    assert_eq!(out.status.code(), Some(1), "a bad record makes dump exit 1");
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["seq"], 76);
    assert!(lines[1]["error"]
        .as_str()
        .is_some_and(|e| e.contains("checksum")));
    assert_eq!(lines[2]["seq"], 78);

    // The original is untouched, and the good sample reads the same after the stop.
    let out = gw.command(&["journal", "check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let out = gw.command(&["journal", "dump", "--from", "100", "--limit", "1"]);
    let again: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
    assert_eq!(again, sample);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_a_journal_of_blocks_and_names_a_block_whose_bytes_were_flipped() {
    let mut gw = Gateway::start_fresh(config_zstd);
    publish(&gw, 3, 40, PayloadFormat::Json, 1).await;
    publish(&gw, 1, 30, PayloadFormat::Binary, 4).await;
    let out = gw.command(&["journal", "check"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout).trim(),
        "journal OK: 150 records (seq 1..=150), 0 cursors"
    );
    let out = gw.command(&["journal", "dump", "--from", "77", "--limit", "2"]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(
        lines.iter().map(|l| l["seq"].clone()).collect::<Vec<_>>(),
        vec![77, 78],
        "dump starts inside a block at the seq asked for"
    );
    assert!(gw.terminate().success());

    // A copy with a byte flipped in every zstd frame on disk (live or stale): the first
    // block is named, with the readings lost with it.
    let copy = tempfile::tempdir().expect("temp dir");
    let journal = copy.path().join("journal");
    std::fs::create_dir_all(&journal).expect("mkdir");
    let source = gw.config_path().parent().expect("dir").join("journal");
    let mut data = std::fs::read(source.join("data.mdb")).expect("read data.mdb");
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut flipped = 0;
    let mut at = 0;
    while let Some(i) = data[at..].windows(4).position(|w| w == ZSTD_MAGIC) {
        let pos = at + i + 12;
        data[pos] ^= 0x20;
        flipped += 1;
        at = pos + 1;
    }
    assert!(flipped >= 1, "the blocks are zstd frames");
    std::fs::write(journal.join("data.mdb"), &data).expect("write data.mdb");
    let copy_config = copy.path().join("tidegate.toml");
    std::fs::write(&copy_config, config_zstd(1, copy.path())).expect("config");
    let out = tidegate(&["journal", "check"], &copy_config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let summary = text(&out.stdout);
    assert!(
        summary.starts_with("journal BAD: first bad seq 1: block 1..="),
        "{summary}"
    );
    assert!(summary.contains("readings, all lost with it"), "{summary}");
}

#[test]
fn check_on_a_directory_without_a_journal_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("tidegate.toml");
    std::fs::write(&cfg, config(1, dir.path())).expect("config");
    let out = tidegate(&["journal", "check"], &cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no journal in"),
        "{}",
        text(&out.stderr)
    );
}

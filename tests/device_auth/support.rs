//! The device-auth tests' gateway and its reading back: a gateway with two devices and
//! their credentials file (written by `tidegate passwd`), its journal's topics and its
//! `/metrics` counters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::metrics::scrape;
use crate::common::Gateway;

/// Longest wait for anything the daemon does.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Runs `tidegate passwd FILE USER [extra…]` with `password` on stdin.
pub(crate) fn passwd(
    file: &Path,
    user: &str,
    password: &str,
    extra: &[&str],
) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tidegate passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("tidegate passwd")
}

pub(crate) fn passwd_ok(file: &Path, user: &str, password: &str, extra: &[&str]) {
    let out = passwd(file, user, password, extra);
    assert!(
        out.status.success(),
        "tidegate passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gateway whose devices are wt-1 (publish and subscribe under turbines/%c/) and wt-2
/// (the defaults: publish `turbines/%c/#`, subscribe `turbines/%c/#`), passwords `pw-1`
/// and `pw-2`. `extra_mqtt` goes into `[mqtt]`.
pub(crate) fn gateway(extra_mqtt: &str) -> (Gateway, PathBuf) {
    gateway_with(|| extra_mqtt.to_owned())
}

/// [`gateway`] with `[mqtt]` keys made afresh at each start (a port of their own is then
/// a fresh one after a port clash).
pub(crate) fn gateway_with(extra_mqtt: impl Fn() -> String) -> (Gateway, PathBuf) {
    let creds_dir = tempfile::tempdir().expect("tempdir").keep();
    let creds = creds_dir.join("devices.toml");
    passwd_ok(
        &creds,
        "wt-1",
        "pw-1\n",
        &["--publish", "turbines/%c/#", "--subscribe", "turbines/%c/#"],
    );
    passwd_ok(&creds, "wt-2", "pw-2\n", &[]);
    let gw = start_with_credentials(
        &creds,
        extra_mqtt,
        "publish = [\"turbines/%c/#\"]\nsubscribe = [\"turbines/%c/#\"]\n",
    );
    (gw, creds)
}

/// A gateway checking devices against the credentials file `creds`: `extra_mqtt` goes into
/// `[mqtt]` (made afresh at each start) and `extra_auth` into `[mqtt.auth]`.
pub(crate) fn start_with_credentials(
    creds: &Path,
    extra_mqtt: impl Fn() -> String,
    extra_auth: &str,
) -> Gateway {
    Gateway::start_fresh(|port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n{}\n\n[mqtt.auth]\ncredentials_file = \"{}\"\n{extra_auth}",
            dir.join("journal").display(),
            extra_mqtt(),
            creds.display()
        )
    })
}

pub(crate) fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port")
}

/// The topics the journal holds, in order (`tidegate journal dump`).
pub(crate) fn journal_topics(gw: &Gateway) -> Vec<String> {
    let out = gw.command(&["journal", "dump"]);
    assert!(
        out.status.success(),
        "journal dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["topic"].as_str().map(str::to_owned))
        .collect()
}

/// A counter of `/metrics` whose labels include `labels`.
pub(crate) async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    scrape(gw).await.find(name, labels).map(|v| v as u64)
}

/// Publishes refused as outside the device's rights.
pub(crate) async fn publishes_refused(gw: &Gateway) -> Option<u64> {
    metric(
        gw,
        "tidegate_readings_rejected_total",
        &[("reason", "not_authorized")],
    )
    .await
}

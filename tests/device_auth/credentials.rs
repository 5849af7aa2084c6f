//! The credentials file and start-up: what `tidegate passwd` writes, a malformed file
//! stopping `run` and `check-config`, and the warning about an open listener without
//! authentication.

use crate::common::status::wait_for_log;
use crate::common::Gateway;
use crate::support::{passwd, passwd_ok};

#[test]
fn passwd_creates_a_private_file_refuses_an_empty_password_and_keeps_comments() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("devices.toml");
    let out = passwd(&file, "wt-1", "\n", &[]);
    assert!(!out.status.success(), "an empty password was accepted");
    assert!(!file.exists(), "a refused run wrote the file");
    let out = passwd(&file, "wt-1", "s3cret\n", &["--publish", "turbines/%c/#"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("added device \"wt-1\""));
    let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, format!("# site 4 turbines\n{text}")).expect("add a comment");
    let out = passwd(&file, "wt-1", "other\n", &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("set a new password"));
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("# site 4 turbines\n"), "{text}");
    assert!(text.contains("turbines/%c/#"), "rights kept: {text}");
    assert_eq!(text.matches("[[device]]").count(), 1, "{text}");
}

#[test]
fn a_malformed_credentials_file_stops_start_up_and_check_config_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("devices.toml");
    std::fs::write(
        &creds,
        "# site 4\n[[device]]\nusername = \"wt-1\"\npassword_hash = \"not-a-hash\"\n",
    )
    .expect("write creds");
    let config = dir.path().join("tidegate.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n[http]\nenabled = false\n[mqtt.auth]\ncredentials_file = \"{}\"\n",
            dir.path().join("journal").display(),
            crate::common::free_port(),
            creds.display()
        ),
    )
    .expect("write config");
    for args in [&["check-config"][..], &["run"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tidegate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted it: {stderr}");
        assert!(
            stderr.contains(&format!("{} line 2", creds.display())),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("tidegate passwd"), "{args:?}: {stderr}");
    }
}

/// The warning is an operator-facing log line, so the log is what is checked; its absence
/// is judged once the start line, logged after it would have been, is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_open_to_the_network_without_authentication_is_warned_about_at_start() {
    const WARNING: &str = "Device authentication is off and the MQTT listener is reachable";
    const STARTED: &str = "tidegate started";
    // Bound on every interface (connections still only come from loopback).
    let open = Gateway::start_fresh(|port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"0.0.0.0:{port}\"\n",
            dir.join("journal").display()
        )
    });
    wait_for_log(&open, &[WARNING, "Set [mqtt.auth] credentials_file"]).await;
    // Loopback only: nothing to warn about.
    let local = Gateway::start_fresh(|port, dir| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join("journal").display()
        )
    });
    let log = wait_for_log(&local, &[STARTED]).await;
    assert!(!log.contains(WARNING), "{log}");
    // Open, but with authentication on: nothing to warn about either.
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("devices.toml");
    passwd_ok(&creds, "wt-1", "pw-1\n", &[]);
    let guarded = Gateway::start_fresh(|port, journal| {
        format!(
            "[journal]\ndir = \"{}\"\n\n[mqtt]\nlisten = \"0.0.0.0:{port}\"\n\n[mqtt.auth]\ncredentials_file = \"{}\"\n",
            journal.join("journal").display(),
            creds.display()
        )
    });
    let log = wait_for_log(&guarded, &[STARTED]).await;
    assert!(!log.contains(WARNING), "{log}");
}

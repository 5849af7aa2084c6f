//! The command line: `check-config` and `status` as an operator runs them.

use std::process::Command;

fn tidegate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .output()
        .expect("run tidegate")
}

#[test]
fn check_config_prints_the_effective_configuration_of_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"gw-7\"\n[journal]\nmax_size = \"64MiB\"\n",
    )
    .unwrap();
    let out = tidegate(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("id = \"gw-7\""), "{text}");
    assert!(text.contains("max_size = \"64.0 MiB\""), "{text}");
    assert!(
        text.contains("on_full = \"drop-oldest\""),
        "defaults are filled in: {text}"
    );
}

#[test]
fn check_config_names_every_bad_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[journal]\nmax_size = \"100KiB\"\n[[upstream]]\nname = \"a\"\nkind = \"kafka\"\nbrokers = [\"nohost\"]\n",
    )
    .unwrap();
    let out = tidegate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    for key in [
        "journal.max_size",
        "upstream[0].brokers",
        "upstream[0].topic",
    ] {
        assert!(text.contains(key), "{key} not named in:\n{text}");
    }
    let missing = tidegate(&["check-config", "--config", "/nonexistent/tidegate.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/tidegate.toml"));
}

#[test]
fn status_without_a_journal_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            "[journal]\ndir = \"{}\"\n",
            dir.path().join("none").display()
        ),
    )
    .unwrap();
    let out = tidegate(&["status", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("no journal") && text.contains("none"),
        "{text}"
    );
}

//! The command line: `check-config` and `status` as an operator runs them.

use std::path::Path;
use std::process::{Command, Output};

fn tidegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .output()
        .expect("run tidegate")
}

/// Runs `tidegate <args…> --config FILE`, FILE holding `config(dir)` in a fresh temp dir.
fn tidegate_on(args: &[&str], config: impl FnOnce(&Path) -> String) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.toml");
    std::fs::write(&path, config(dir.path())).expect("write config");
    let path = path.to_str().expect("a UTF-8 temp path");
    tidegate(&[args, &["--config", path]].concat())
}

#[test]
fn check_config_prints_the_effective_configuration_of_a_valid_file() {
    let out = tidegate_on(&["check-config"], |_| {
        "[gateway]\nid = \"gw-7\"\n[journal]\nmax_size = \"64MiB\"\n".into()
    });
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
    let out = tidegate_on(&["check-config"], |_| {
        "[journal]\nmax_size = \"100KiB\"\n[[upstream]]\nname = \"a\"\nkind = \"kafka\"\nbrokers = [\"nohost\"]\n".into()
    });
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
    let out = tidegate_on(&["status"], |dir| {
        format!("[journal]\ndir = \"{}\"\n", dir.join("none").display())
    });
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("no journal") && text.contains("none"),
        "{text}"
    );
}

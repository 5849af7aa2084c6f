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

/// Five mistakes of different kinds in three sections (a size, a policy name, an address,
/// an unknown key, a duration): one run names them all, each with the file and line, the
/// key, what was found and a valid value.
#[test]
fn check_config_reports_every_mistake_in_one_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"gw-1\"\n\n\
         [journal]\nmax_size = \"10 apples\"\non_full = \"maybe\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:99999\"\nmax_conections = 10\n\n\
         [[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\n\
         topic = \"t\"\nlinger = \"fast\"\n",
    )
    .expect("write config");
    let file = path.to_str().expect("a UTF-8 temp path");
    let out = tidegate(&["check-config", "--config", file]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("has 5 errors"), "{text}");
    for expected in [
        format!(r#"{file}:5: journal.max_size: invalid value: string "10 apples", expected a size like "512MiB""#),
        format!("{file}:6: journal.on_full: unknown variant `maybe`, expected one of `drop-oldest`, `reject`, `thin`"),
        format!(r#"{file}:9: mqtt.listen: invalid value: string "127.0.0.1:99999", expected an address and port like "127.0.0.1:1883""#),
        format!("{file}:10: mqtt.max_conections: unknown field `max_conections`, expected one of"),
        format!(r#"{file}:17: upstream[0].linger: invalid value: string "fast", expected a duration like "10s""#),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }
    // The lines come in the file's order.
    let at = |needle: &str| text.find(needle).expect("reported");
    assert!(at("journal.max_size") < at("journal.on_full"));
    assert!(at("mqtt.max_conections") < at("upstream[0].linger"));

    // Fixed, the same file reads: nothing was reported that was not wrong.
    let fixed = std::fs::read_to_string(&path)
        .expect("read back")
        .replace("10 apples", "10MiB")
        .replace("maybe", "reject")
        .replace("99999", "1883")
        .replace("max_conections", "max_connections")
        .replace("\"fast\"", "\"5ms\"");
    std::fs::write(&path, fixed).expect("write config");
    let out = tidegate(&["check-config", "--config", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file that is not there says so once, with its path (the I/O error is not repeated as
/// a cause of itself).
#[test]
fn a_missing_config_file_names_its_cause_once() {
    for command in ["check-config", "run"] {
        let out = tidegate(&[command, "--config", "/nonexistent/tidegate.toml"]);
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(
                "cannot read config file /nonexistent/tidegate.toml: No such file or directory"
            ),
            "{command}: {text}"
        );
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{command}: {text}"
        );
    }
}

/// The manual page the Debian package installs (deploy/debian/tidegate.1) names every
/// command and every option that `tidegate … --help` lists, so the two cannot drift apart.
#[test]
fn the_manual_page_names_every_command_and_option() {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/debian/tidegate.1"),
    )
    .expect("read the manual page");
    // roff's escapes (`\-` for a hyphen, `\fB` for a font) out of the way.
    let page = page
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\fI", "")
        .replace("\\-", "-");
    let help = |args: &[&str]| -> String {
        let out = tidegate(&[args, &["--help"]].concat());
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A help text's commands (the first word of each line under "Commands:") and its
    // long options.
    let commands = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_owned)
            .collect()
    };
    let options = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .filter(|w| w.starts_with("--"))
            .map(|w| w.trim_end_matches([',', '.', ')']).to_owned())
            .filter(|w| {
                w.len() > 2
                    && w.chars()
                        .skip(2)
                        .all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect()
    };
    let mut checked = 0;
    let top = help(&[]);
    let mut paths: Vec<Vec<String>> = commands(&top).into_iter().map(|c| vec![c]).collect();
    assert!(paths.len() >= 5, "{top}");
    while let Some(path) = paths.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let name = path.join(" ");
        assert!(
            page.contains(&name),
            "the manual page does not name `{name}`"
        );
        for option in options(&text) {
            assert!(
                page.contains(&option),
                "the manual page does not name `{name} {option}`"
            );
            checked += 1;
        }
        for sub in commands(&text) {
            let mut p = path.clone();
            p.push(sub);
            paths.push(p);
        }
    }
    assert!(
        checked >= 10,
        "only {checked} options found in the help texts"
    );
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

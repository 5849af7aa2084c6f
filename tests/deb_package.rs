//! The Debian package, as an operator uses it: built with cargo-deb (`scripts/build-deb.sh`),
//! listed with `dpkg-deb -c`, installed with `dpkg -i` (the unit passes `systemd-analyze
//! verify`, the installed conffile passes `check-config`, the user and the 0700 state
//! directory exist, the unit is enabled), upgraded over an edited conffile (the edit
//! stays), removed with `dpkg -r` (the journal and the config stay) and purged with
//! `dpkg -P` (no file of the package is left).
//!
//! It installs the package on this machine, so it needs root, dpkg, and no tidegate
//! package already installed: scripts/test.sh runs the suite as root on a throwaway CI
//! machine, where (`CI=true`) a missing one fails the test. Elsewhere it says which is
//! missing and checks nothing. The package
//! holds the binary this test run built (the dev profile, stripped): what the test proves
//! is the packaging, which is the same for the release build `scripts/build-deb.sh` makes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `program args…`, failing the test with its output if it fails.
fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `id ARGS…` as a number (`-u`: this process's user; `-u tidegate`: that user's).
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "tidegate"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Why this machine cannot run the test, if it cannot.
fn unsuitable() -> Option<String> {
    if id(&["-u"]) != Some(0) {
        return Some("not root".into());
    }
    for tool in ["dpkg", "dpkg-deb", "dpkg-query", "deb-systemd-helper"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if Command::new("dpkg-query")
        .args(["-W", "tidegate"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("a tidegate package is already on this machine: it is left alone".into());
    }
    None
}

/// Purges the package if the test stops half-way, so the machine is left as it was.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", "tidegate"]).output();
    }
}

#[test]
fn the_debian_package_installs_upgrades_removes_and_purges_cleanly() {
    if let Some(why) = unsuitable() {
        // CI runs the suite as root on a machine of its own: there the test must run.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the Debian package test cannot run under CI=true: {why}"
        );
        eprintln!("the Debian package test needs root and dpkg on a machine without tidegate installed: {why}; skipped (scripts/test.sh runs it in CI)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = tempfile::tempdir().expect("temp dir");

    // 1. Build it, from the binary this run built.
    let built = Command::new("bash")
        .arg(root.join("scripts/build-deb.sh"))
        .args(["--no-build", "--profile", "dev", "--output"])
        .arg(out_dir.path())
        .current_dir(root)
        .output()
        .expect("run scripts/build-deb.sh");
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "build-deb.sh failed:\n{stdout}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(
        name.starts_with(&format!("tidegate_{}-", env!("CARGO_PKG_VERSION")))
            && name.ends_with(".deb"),
        "package name {name}"
    );
    assert!(deb.exists(), "{}", deb.display());
    let deb = deb.to_str().expect("a UTF-8 path");

    // 2. What it holds.
    let listing = String::from_utf8_lossy(&run("dpkg-deb", &["-c", deb]).stdout).into_owned();
    let files: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    for expected in [
        "/usr/bin/tidegate",
        "/lib/systemd/system/tidegate.service",
        "/etc/tidegate/tidegate.toml",
        "/usr/lib/sysusers.d/tidegate.conf",
        "/usr/lib/tmpfiles.d/tidegate.conf",
        "/usr/share/doc/tidegate/copyright",
        "/usr/share/man/man1/tidegate.1.gz",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} not in:\n{listing}"
        );
    }
    let conffiles = run("dpkg-deb", &["-I", deb, "conffiles"]);
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout).trim(),
        "/etc/tidegate/tidegate.toml"
    );
    let unit = std::fs::read_to_string(root.join("deploy/tidegate.service")).expect("unit");
    assert!(
        unit.contains("/usr/local/bin/tidegate"),
        "the source unit changed: update build-deb.sh"
    );

    // 3. Install it.
    let _purge = Purge;
    run("dpkg", &["-i", deb]);
    assert!(installed());
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/tidegate.service"],
    );
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        !complaints.contains("tidegate.service"),
        "systemd-analyze verify complained:\n{complaints}"
    );
    run(
        "/usr/bin/tidegate",
        &["check-config", "--config", "/etc/tidegate/tidegate.toml"],
    );
    run("getent", &["passwd", "tidegate"]);
    let state = std::fs::metadata("/var/lib/tidegate").expect("state directory");
    assert!(state.is_dir());
    assert_eq!(state.permissions().mode() & 0o7777, 0o700);
    assert_eq!(Some(state.uid()), id(&["-u", "tidegate"]));
    let conf = std::fs::metadata("/etc/tidegate/tidegate.toml").expect("config");
    assert_eq!(conf.permissions().mode() & 0o7777, 0o640);
    assert_eq!(Some(conf.gid()), id(&["-g", "tidegate"]));
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/tidegate.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "the unit is not enabled: {} missing",
        wants.display()
    );

    // An upgrade (the same package again) keeps the operator's edit of the conffile.
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string("/etc/tidegate/tidegate.toml").expect("read config")
    );
    std::fs::write("/etc/tidegate/tidegate.toml", &edited).expect("edit config");
    run("dpkg", &["-i", deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/tidegate/tidegate.toml").expect("read config"),
        edited
    );

    // 4. Remove: the program goes, the journal and the config stay.
    std::fs::write("/var/lib/tidegate/data.mdb", b"journal").expect("write journal file");
    run("dpkg", &["-r", "tidegate"]);
    assert!(!Path::new("/usr/bin/tidegate").exists());
    assert!(!Path::new("/lib/systemd/system/tidegate.service").exists());
    assert_eq!(
        std::fs::read("/var/lib/tidegate/data.mdb").expect("the journal stays"),
        b"journal"
    );
    assert!(
        Path::new("/etc/tidegate/tidegate.toml").exists(),
        "the config stays"
    );

    // 5. Purge: nothing of it is left.
    run("dpkg", &["-P", "tidegate"]);
    assert!(!installed());
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for gone in ["/var/lib/tidegate", "/etc/tidegate"] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    assert!(
        wants.symlink_metadata().is_err(),
        "{} left after purge",
        wants.display()
    );
}

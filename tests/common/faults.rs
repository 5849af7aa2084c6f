//! The set-up shared by the fault tests (`tests/disk_full.rs`, `tests/power_cut.rs`): a
//! fault that cannot be set up skips the test with a message outside CI and fails it under
//! `CI=true` (the README's fault table cites these tests as proof, so CI must not pass
//! them without running them), and a gateway whose journal lives on the fault's mount and
//! forwards to one Kafka upstream.

use std::path::Path;

use super::daemon::Gateway;

/// Whether this run is CI's (`CI=true`, as CI services and `scripts/test.sh` set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The fault, when it could be set up. Otherwise, with `needs` saying what the test needs
/// (e.g. "a tmpfs of its own") and the reason: under `CI=true` the test fails; elsewhere
/// it prints `SKIPPED: …` and the caller returns.
pub fn or_skip<T>(setup: Result<T, String>, needs: &str) -> Option<T> {
    match setup {
        Ok(t) => Some(t),
        Err(why) if in_ci() => {
            panic!("this fault test needs {needs} and {why}; under CI=true it must run (scripts/test.sh installs what it needs)")
        }
        Err(why) => {
            eprintln!("SKIPPED: this fault test needs {needs} and {why}");
            None
        }
    }
}

/// A gateway with its journal in `journal` (on the fault's mount) and one Kafka upstream,
/// `cluster`, on `127.0.0.1:kafka_port` writing `topic`; `journal_extra` adds `[journal]`
/// keys. The cluster need not be up yet.
pub fn gateway_on(
    journal: &Path,
    id: &str,
    journal_extra: &str,
    kafka_port: u16,
    topic: &str,
) -> Gateway {
    Gateway::start_fresh(|mqtt, _dir| {
        format!(
            "[gateway]\nid = \"{id}\"\n[journal]\ndir = \"{}\"\ncommit_interval = \"1ms\"\n{journal_extra}\n\
             [mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nmax_packet = \"64KiB\"\n\
             [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka_port}\"]\ntopic = \"{topic}\"\npartitions = 3\n\
             max_batch = 500\nlinger = \"5ms\"\nrequest_timeout = \"5s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n",
            journal.display()
        )
    })
}

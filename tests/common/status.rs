//! What the daemon says about itself, read the way an operator reads it — `tidegate status
//! --json`, `/health`, its log — and [`eventually`], the one poll loop every wait of the
//! suite goes through (a wait on a figure, never a sleep and a hope).

use std::fmt::Display;
use std::time::Duration;

use super::daemon::{http_get, Gateway};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);
/// Longest a backlog may take to reach the value a test waits for (a drain through a
/// real broker, on a loaded two-core machine).
pub const SETTLE: Duration = Duration::from_secs(90);

/// Calls `probe` every [`POLL`] until it returns `Ok`, for at most `within`; on timeout
/// the `Err` carries what the last probe saw.
pub async fn poll<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(t) => return Ok(t),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`poll`], failing the test after `within` with `what`, what the last probe saw and the
/// gateway's log.
pub async fn eventually<T>(
    gw: &Gateway,
    what: impl Display,
    within: Duration,
    probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    match poll(within, probe).await {
        Ok(t) => t,
        Err(last) => panic!(
            "waited {within:?} for {what}; last seen: {last}\ngateway log:\n{}",
            gw.log()
        ),
    }
}

/// `tidegate status --json` of the gateway's config, parsed.
pub fn status_json(gw: &Gateway) -> serde_json::Value {
    let out = gw.command(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// The entry of `upstream` in a `status --json`.
pub fn upstream<'a>(status: &'a serde_json::Value, upstream: &str) -> &'a serde_json::Value {
    status["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == upstream))
        .unwrap_or_else(|| panic!("no upstream {upstream} in {status}"))
}

/// Readings journaled but not yet forwarded to `upstream`, in a `status --json`.
pub fn backlog(status: &serde_json::Value, name: &str) -> u64 {
    upstream(status, name)["backlog"]
        .as_u64()
        .unwrap_or_else(|| panic!("no backlog for {name} in {status}"))
}

/// Waits (up to [`SETTLE`]) until `status --json` shows a backlog of `want` for `upstream`.
pub async fn wait_for_backlog(gw: &Gateway, upstream: &str, want: u64) {
    eventually(
        gw,
        format_args!("a backlog of {want} for {upstream}"),
        SETTLE,
        async || {
            let b = backlog(&status_json(gw), upstream);
            if b == want {
                Ok(())
            } else {
                Err(format!("backlog {b}"))
            }
        },
    )
    .await
}

/// `GET /health`: the status code and body.
pub async fn health(gw: &Gateway) -> (u16, String) {
    http_get(gw.http_addr(), "/health").await
}

/// Waits (up to `within`) until `/health` answers `status` with a body containing `text`;
/// returns the body.
pub async fn wait_for_health(gw: &Gateway, status: u16, text: &str, within: Duration) -> String {
    eventually(
        gw,
        format_args!("/health to answer {status} with {text:?}"),
        within,
        async || match health(gw).await {
            (s, body) if s == status && body.contains(text) => Ok(body),
            (s, body) => Err(format!("{s}: {body}")),
        },
    )
    .await
}

/// Waits (up to 60 s) until the gateway's log holds every one of `needles`; returns the
/// log. For operator-facing lines that are themselves the behaviour under test, and for
/// states no figure shows (e.g. a subscription being active).
pub async fn wait_for_log(gw: &Gateway, needles: &[&str]) -> String {
    eventually(
        gw,
        format_args!("the log to say {needles:?}"),
        Duration::from_secs(60),
        async || {
            let log = gw.log();
            match needles.iter().find(|n| !log.contains(**n)) {
                None => Ok(log),
                Some(n) => Err(format!("no {n:?} yet")),
            }
        },
    )
    .await
}

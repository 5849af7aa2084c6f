//! The `tidegate status` view: what the journal holds, and what the running daemon says.
//!
//! Two sources, each optional in its own way:
//!
//! * the **journal**, opened read-only ([`crate::journal::summary_read_only`]): records and
//!   bytes held, per upstream its stored cursor, backlog and oldest unsent reading. This
//!   works whether the daemon runs or not, and is the authority on backlog.
//! * the **daemon**, asked over `http.listen` for `/api/status` ([`fetch_live`]): whether
//!   it is healthy, each upstream's connection state, ingest and forward rates, and on a
//!   constrained uplink each lane's rate, the data budget and the send windows
//!   ([`crate::http::uplink`]). When the daemon is not running or `[http]` is disabled,
//!   the view says so and shows the journal alone.
//!
//! # Invariant
//!
//! `status --json` keeps the journal summary's fields at the top level, unchanged
//! (`records`, `upstreams[].name`, `upstreams[].backlog`, …: scripts and tests read them);
//! the daemon's figures are added under `daemon` (or `null`, with `daemon_error`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, OnFull};
use crate::http::StatusSnapshot;
use crate::journal::Summary;

/// How long `status` waits for the daemon before showing the journal alone.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the running daemon's figures are not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// `[http]` is disabled in the config, so there is no one to ask.
    #[error("http.enabled = false: no live figures")]
    Disabled,
    /// Nothing answered at the address (daemon not running, or another port).
    #[error("no daemon answering on http.listen = {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    /// Something answered, but not with tidegate's status.
    #[error("http.listen = {addr} answered, but not with tidegate's status: {reason}")]
    BadAnswer { addr: SocketAddr, reason: String },
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport<'a> {
    #[serde(flatten)]
    pub journal: &'a Summary,
    /// The daemon's own figures, when it answered.
    pub daemon: Option<&'a StatusSnapshot>,
    /// Why `daemon` is null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_error: Option<String>,
}

/// Asks the daemon at `config.http.listen` for `/api/status`, within [`LIVE_TIMEOUT`].
pub fn fetch_live(config: &Config) -> Result<StatusSnapshot, LiveError> {
    if !config.http.enabled {
        return Err(LiveError::Disabled);
    }
    let addr = config.http.listen;
    // A daemon bound to every interface is asked on loopback.
    let target = if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    };
    let unreachable = |reason: String| LiveError::Unreachable { addr, reason };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("cannot start a runtime: {e}")))?;
    let body = rt.block_on(async {
        tokio::time::timeout(LIVE_TIMEOUT, get(target, "/api/status"))
            .await
            .unwrap_or_else(|_| {
                Err(Fetch::Unreachable(format!(
                    "no answer within {LIVE_TIMEOUT:?}"
                )))
            })
    });
    match body {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LiveError::BadAnswer {
            addr,
            reason: e.to_string(),
        }),
        Err(Fetch::Unreachable(reason)) => Err(unreachable(reason)),
        Err(Fetch::Bad(reason)) => Err(LiveError::BadAnswer { addr, reason }),
    }
}

enum Fetch {
    Unreachable(String),
    Bad(String),
}

/// `GET path` on `addr` with hyper's HTTP/1 client; the body if the answer is 200.
async fn get(addr: SocketAddr, path: &str) -> Result<bytes::Bytes, Fetch> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Fetch::Unreachable(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Fetch::Unreachable(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| Fetch::Bad(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Fetch::Unreachable(e.to_string()))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(Fetch::Bad(format!("HTTP {}", response.status())));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Fetch::Bad(e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok(body)
}

/// How full an upstream's backlog bar is, 0 to 1: the bytes its unsent readings take
/// (their share of the records held, times the bytes held) against `journal.max_size`. So
/// a full bar is a journal full of readings that upstream has not had, where `on_full`
/// starts to act; a share of the records held would draw 2 unsent readings of 2 held as
/// a full bar. The status page draws its bar the same way (`assets/app.js`).
pub fn backlog_share(backlog: u64, records: u64, bytes_held: u64, max_size: u64) -> f64 {
    if records == 0 || max_size == 0 {
        return 0.0;
    }
    let unsent = bytes_held as f64 * (backlog.min(records) as f64 / records as f64);
    (unsent / max_size as f64).min(1.0)
}

/// Width of the backlog bar, in characters.
const BAR: usize = 20;

fn age(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn rate(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
        None => "-".to_owned(),
    }
}

/// Renders `summary` (and the daemon's figures, if it answered) for a terminal; `now_ms`
/// gives ages.
pub fn render(
    summary: &Summary,
    config: &Config,
    now_ms: u64,
    live: Result<&StatusSnapshot, &LiveError>,
) -> String {
    let mut s = String::new();
    let max = config.journal.max_size.as_u64().max(1);
    match live {
        Ok(d) => {
            let _ = writeln!(
                s,
                "daemon    {} (gateway {}, v{}), up {}; {}",
                if d.healthy { "healthy" } else { "UNHEALTHY" },
                d.gateway,
                d.version,
                age(d.now_ms.saturating_sub(d.started_ms) / 1000),
                if d.problems.is_empty() {
                    "no problems".to_owned()
                } else {
                    d.problems.join("; ")
                }
            );
            for w in &d.warnings {
                let _ = writeln!(s, "warning   {w}");
            }
            let _ = writeln!(
                s,
                "ingest    {} ({} journaled since start, {} MQTT devices connected)",
                rate(d.ingest.per_s),
                d.journal.appended_total,
                d.ingest.mqtt_connections
            );
        }
        Err(e) => {
            let _ = writeln!(s, "daemon    not reachable ({e}); journal figures only");
        }
    }
    let _ = writeln!(s, "journal   {}", summary.dir.display());
    let _ = writeln!(
        s,
        "records   {} held (seq {}..{}), next seq {}",
        summary.records,
        summary.first_seq.map_or("-".into(), |v| v.to_string()),
        summary.last_seq.map_or("-".into(), |v| v.to_string()),
        summary.next_seq
    );
    let per_reading = if summary.records > 0 {
        format!(
            "; {:.0} B per reading (compression {})",
            summary.bytes_held as f64 / summary.records as f64,
            config.journal.compression
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "size      {} of {} max ({:.1}%), {} on disk{per_reading}",
        bytesize::ByteSize::b(summary.bytes_held),
        config.journal.max_size,
        summary.bytes_held as f64 * 100.0 / max as f64,
        bytesize::ByteSize::b(summary.disk_bytes)
    );
    if summary.dropped_total > 0 {
        let _ = writeln!(
            s,
            "dropped   {} readings deleted by on_full = \"drop-oldest\" before every upstream had them",
            summary.dropped_total
        );
    }
    if summary.expired_total > 0 || config.journal.max_age.is_some() {
        let limit = config.journal.max_age.map_or_else(
            || "unset now".to_owned(),
            |a| humantime::format_duration(a).to_string(),
        );
        let _ = writeln!(
            s,
            "expired   {} readings removed by journal.max_age ({limit}) before every upstream had them",
            summary.expired_total
        );
    }
    if summary.thinned_total > 0
        || !summary.thinned.is_empty()
        || config.journal.on_full == OnFull::Thin
    {
        let held = crate::http::resolution::describe(&summary.thinned)
            .unwrap_or_else(|| "the history held is at full resolution".to_owned());
        let _ = writeln!(
            s,
            "thinned   {} readings removed by on_full = \"thin\"; {held}",
            summary.thinned_total
        );
    }
    if summary.upstreams.is_empty() {
        let _ = writeln!(
            s,
            "upstreams none configured: readings are held until one is"
        );
    }
    for u in &summary.upstreams {
        let share = backlog_share(
            u.backlog,
            summary.records,
            summary.bytes_held,
            config.journal.max_size.as_u64(),
        );
        let filled = ((share * BAR as f64).round() as usize).min(BAR);
        let oldest = u
            .oldest_unsent_ms
            .map(|t| age(now_ms.saturating_sub(t) / 1000))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            "upstream  {:<16} [{}{}] {:>5.1}% of max_size  backlog {:>10}  oldest unsent {:>12}  cursor {}",
            u.name,
            "#".repeat(filled),
            ".".repeat(BAR - filled),
            share * 100.0,
            u.backlog,
            oldest,
            u.cursor
        );
        if let Ok(d) = live {
            match d.upstreams.iter().find(|x| x.name == u.name) {
                Some(x) => {
                    let _ = write!(
                        s,
                        "  {}  forwarding {}  sent {}  failures {}",
                        if x.connected {
                            "connected"
                        } else {
                            "NOT CONNECTED"
                        },
                        rate(x.sent_per_s),
                        x.sent_total,
                        x.failures_total
                    );
                    if let Some(e) = &x.last_error {
                        let _ = write!(s, "\n    last error: {e}");
                    }
                    for line in x.uplink.iter().flat_map(|u| u.lines(d.now_ms)) {
                        let _ = write!(s, "\n{line}");
                    }
                }
                None => {
                    let _ = write!(s, "  (not configured in the running daemon)");
                }
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::ThinnedSpan;

    fn summary(expired_total: u64) -> Summary {
        Summary {
            dir: "/var/lib/tidegate".into(),
            records: 0,
            first_seq: None,
            last_seq: None,
            next_seq: 1,
            epoch: None,
            bytes_held: 0,
            disk_bytes: 0,
            dropped_total: 0,
            expired_total,
            thinned_total: 0,
            thinned: Vec::new(),
            upstreams: Vec::new(),
        }
    }

    fn render_with(summary: &Summary, config: &Config) -> String {
        render(summary, config, 0, Err(&LiveError::Disabled))
    }

    #[test]
    fn the_backlog_bar_is_a_share_of_max_size_not_of_the_records_held() {
        // 2 unsent readings of 2 held, 400 bytes, 1 GiB cap: next to nothing.
        assert!(backlog_share(2, 2, 400, 1 << 30) < 1e-6);
        // Half the records unsent in a journal at its cap: half a bar.
        assert!((backlog_share(500, 1000, 1 << 30, 1 << 30) - 0.5).abs() < 1e-9);
        // All unsent in a full journal: a full bar, never more.
        assert_eq!(backlog_share(1000, 1000, 2 << 30, 1 << 30), 1.0);
        assert_eq!(backlog_share(5, 0, 0, 1 << 30), 0.0);
    }

    #[test]
    fn status_shows_the_bytes_each_reading_takes_and_the_compression() {
        let config = Config::default();
        let mut held = summary(0);
        assert!(
            !render_with(&held, &config).contains("per reading"),
            "none held"
        );
        held.records = 1000;
        held.bytes_held = 33_500;
        let text = render_with(&held, &config);
        assert!(
            text.contains("on disk; 34 B per reading (compression zstd)"),
            "{text}"
        );
    }

    #[test]
    fn status_shows_the_age_limit_and_what_it_removed() {
        let mut config = Config::default();
        assert!(
            !render_with(&summary(0), &config).contains("expired"),
            "no limit, nothing removed: no line"
        );
        config.journal.max_age = Some(Duration::from_secs(30 * 24 * 3600));
        let text = render_with(&summary(1234), &config);
        assert!(
            text.contains("expired   1234 readings removed by journal.max_age (30days)"),
            "{text}"
        );
        config.journal.max_age = None;
        let text = render_with(&summary(7), &config);
        assert!(
            text.contains("expired   7 readings removed by journal.max_age (unset now)"),
            "{text}"
        );
    }

    #[test]
    fn status_shows_the_resolution_of_the_history_held() {
        let mut config = Config::default();
        assert!(
            !render_with(&summary(0), &config).contains("thinned"),
            "drop-oldest, nothing thinned: no line"
        );
        config.journal.on_full = OnFull::Thin;
        let text = render_with(&summary(0), &config);
        assert!(
            text.contains(
                "thinned   0 readings removed by on_full = \"thin\"; the history held is at full resolution"
            ),
            "{text}"
        );
        let hour: u64 = 3_600_000;
        let span = |first, first_h, last_h, factor| ThinnedSpan {
            first,
            last: first + 999,
            factor,
            first_ms: 1_800_000_000_000 + first_h * hour,
            last_ms: 1_800_000_000_000 + last_h * hour,
        };
        let thinned = Summary {
            thinned_total: 1234,
            thinned: vec![span(1, 0, 4, 8), span(1001, 4, 6, 8), span(2001, 6, 8, 2)],
            ..summary(0)
        };
        // Spans held speak even once on_full is set back to drop-oldest.
        config.journal.on_full = OnFull::DropOldest;
        let text = render_with(&thinned, &config);
        assert!(
            text.contains(
                "thinned   1234 readings removed by on_full = \"thin\"; oldest 6h at 1/8, then 2h at 1/2"
            ),
            "{text}"
        );
    }
}

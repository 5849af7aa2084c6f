//! The monitoring listener (`[http]`): `/metrics`, `/health`, the status page and its JSON.
//!
//! This module owns the `http.listen` socket and everything served on it:
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format ([`metrics`]) |
//! | `GET /health` | `200 ok`, or `503` with one reason per line ([`crate::health`]); warnings (a spent data budget) as `warning:` lines; JSON with `Accept: application/json` or `?format=json` ([`HealthReport`]) |
//! | `GET /` | the status page: one HTML file and one script, embedded in the binary |
//! | `GET /api/status` | the page's live figures as JSON ([`StatusSnapshot`]); also read by `tidegate status` |
//! | `GET /api/history` | the last hour, one sample every 5 s ([`history`]) |
//!
//! # Invariants
//!
//! 1. **Read-only, no second count.** Nothing served here changes the daemon's state. Every
//!    figure is read at request time from the counters the stages already keep
//!    ([`crate::telemetry`], [`crate::journal::JournalCounters`]) or from one read
//!    transaction of the journal; this module counts nothing itself except its history.
//! 2. **Never takes the daemon down.** A port that cannot be bound is a start-up error
//!    naming `http.listen` ([`HttpError::Bind`]); once running, a failed accept is retried,
//!    a failed request or connection ends that connection only, and nothing here returns
//!    an error to the daemon.
//! 3. **Bounded.** The history is a fixed ring of [`history::CAPACITY`] samples;
//!    connections are capped at [`MAX_CONNECTIONS`] (each must send its headers within
//!    10 s) and requests in progress at [`MAX_CONCURRENT_REQUESTS`]; responses are built
//!    from fixed-size figures (no per-reading data).
//! 4. **Self-contained page.** The status page loads nothing from elsewhere (gateways are
//!    often offline): its HTML, CSS and script are compiled into the binary.

pub mod history;
pub mod metrics;
pub mod resolution;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::journal::{Journal, Summary, ThinnedSpan};
use crate::telemetry::{
    get as read, ForwardCounters, IngestCounters, ModbusCounters, MqttSubscribeCounters,
    SerialCounters,
};
use history::History;

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on http.listen = {addr}: {source} (choose a free port for http.listen, or set http.enabled = false)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Requests served at once; more wait for a slot. A scrape, the page's two polls and a
/// `tidegate status` need a handful; the cap keeps a misbehaving client from making the
/// daemon open many journal read transactions at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 16;

/// Longest an open connection gets to finish its request at shutdown before it is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Connections open at once; more are closed as soon as they are accepted (a scraper or
/// a browser tries again). Each costs a task and hyper's buffers, some KiB.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send a request's headers before its connection is closed, so that
/// silent connections do not hold the [`MAX_CONNECTIONS`] slots.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The status page and its script (the page names a `data:` icon, so that browsers do not
/// ask for `/favicon.ico`).
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");

/// One upstream as the monitoring side sees it.
#[derive(Debug, Clone)]
pub struct UpstreamSource {
    pub name: String,
    /// `kafka` or `mqtt`.
    pub kind: &'static str,
    pub counters: Arc<ForwardCounters>,
}

/// The upstreams the daemon forwards to now, shared with whoever starts and stops
/// forwarders (a reload replaces the list; the listener reads it at every request).
#[derive(Debug, Clone, Default)]
pub struct UpstreamList(Arc<std::sync::RwLock<Vec<UpstreamSource>>>);

impl UpstreamList {
    pub fn new(upstreams: Vec<UpstreamSource>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(upstreams)))
    }

    /// Replaces the list (after a reload started or stopped forwarders).
    pub fn set(&self, upstreams: Vec<UpstreamSource>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = upstreams;
    }

    /// The list now.
    pub fn get(&self) -> Vec<UpstreamSource> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl UpstreamSource {
    /// The upstreams of `config` with their counters (matched by name; an upstream without
    /// counters yet is left out until the next [`UpstreamList::set`]).
    pub fn list(
        config: &[crate::config::UpstreamConfig],
        counters: &[(String, Arc<ForwardCounters>)],
    ) -> Vec<UpstreamSource> {
        config
            .iter()
            .filter_map(|u| {
                let (_, c) = counters.iter().find(|(n, _)| *n == u.name)?;
                Some(UpstreamSource {
                    name: u.name.clone(),
                    kind: match u.kind {
                        crate::config::UpstreamKind::Kafka => "kafka",
                        crate::config::UpstreamKind::Mqtt => "mqtt",
                    },
                    counters: c.clone(),
                })
            })
            .collect()
    }
}

/// Everything the listener reads: the journal handle and the counters of every stage.
///
/// Built once by [`crate::app`] from the same `Arc`s the stages bump.
pub struct Sources {
    pub gateway: String,
    /// When the daemon started, ms since the Unix epoch.
    pub started_ms: u64,
    pub journal: Journal,
    /// `journal.max_size` in bytes.
    pub max_size: u64,
    /// The MQTT listener's address (labels its readings).
    pub mqtt_listen: SocketAddr,
    pub ingest: Arc<IngestCounters>,
    /// The upstreams now; a reload replaces the list.
    pub upstreams: UpstreamList,
    pub serial: Vec<(String, Arc<SerialCounters>)>,
    pub modbus: Vec<Arc<ModbusCounters>>,
    pub subscriptions: Vec<(String, Arc<MqttSubscribeCounters>)>,
    /// The task-liveness registry; `/health` asks it.
    pub health: Health,
}

impl Sources {
    /// Whether the daemon is healthy, and if not every reason.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = match self.health.check() {
            Ok(()) => Vec::new(),
            Err(p) => p,
        };
        // The journal's own verdict, in case no probe was given to the registry.
        if self.journal.is_failed() && !problems.iter().any(|p| p.starts_with("journal")) {
            problems.push("journal failed: the writer stopped after an LMDB error".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// What an operator should know that does not make the daemon unhealthy: each upstream
    /// whose backlog waits for the next data-budget period ([`uplink::warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        let upstreams = self.upstreams.get();
        uplink::warnings(upstreams.iter().map(|u| (u.name.as_str(), &*u.counters)))
    }
}

/// Binds `addr` for [`serve`]. Done at start-up, before anything else is started, so that
/// a taken port stops the daemon with an error naming the key.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// What the handlers share. `sources` is weak: [`serve`] holds the only strong reference
/// (with the sampler), so when it returns the journal handle inside is dropped even if a
/// slow client still holds a connection task — shutdown never waits on a browser.
#[derive(Clone)]
struct AppState {
    sources: Weak<Sources>,
    history: Arc<History>,
    registry: Arc<prometheus_client::registry::Registry>,
}

/// Serves the listener until `stop`, and samples the history every
/// [`history::SAMPLE_INTERVAL`] meanwhile. Returns when both have stopped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sources: Arc<Sources>,
    stop: CancellationToken,
) {
    let history = Arc::new(History::new());
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(metrics::DaemonCollector::new(Arc::downgrade(
        &sources,
    ))));
    let state = AppState {
        sources: Arc::downgrade(&sources),
        history: history.clone(),
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/api/status", get(api_status))
        .route("/api/history", get(api_history))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        .with_state(state);

    match listener.local_addr() {
        Ok(a) => {
            tracing::info!(listen = %a, "HTTP listener ready: /metrics, /health, status page at /.");
            if !a.ip().is_loopback() {
                tracing::warn!(listen = %a, "http.listen is not a loopback address: /metrics, /health and the status page are open to the network without authentication.");
            }
        }
        // Bound but unable to say where (not seen in practice): the listener still serves.
        Err(e) => {
            tracing::info!(error = %e, "HTTP listener ready: /metrics, /health, status page at /.")
        }
    }

    let guard = sources.health.register("http", false);
    let sampler = tokio::spawn(history::run(sources.clone(), history, stop.clone()));
    accept(listener, app, &stop).await;
    guard.retire();
    let _ = sampler.await;
    // `sources` (and the journal handle in it) is dropped here.
}

/// Accepts connections until `stop`, each served by hyper's HTTP/1 server in its own task;
/// then lets open ones finish (at most [`SHUTDOWN_GRACE`]).
///
/// Not `axum::serve`: it can neither cap connections nor time out a client that never
/// sends its headers, and both bound what a misbehaving client costs the daemon.
async fn accept(listener: tokio::net::TcpListener, app: Router, stop: &CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    let mut refused_logged = false;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning; MQTT devices come first.
                    tracing::warn!(error = %e, "Accepting an HTTP connection failed; retrying shortly.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(%peer, max = MAX_CONNECTIONS, "Refusing an HTTP connection: too many open (logged once).");
                refused_logged = true;
            }
            continue; // dropping the stream closes it
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
                    }
                }
                _ = stop.cancelled() => {
                    // Finish the request in progress, close an idle keep-alive at once.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The answer once the listener is stopping and the sources are gone.
fn stopping() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "unhealthy\nshutting down\n",
    )
        .into_response()
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    // The collector opens a journal read transaction: off the async workers.
    let registry = state.registry.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// `/health` as JSON (`Accept: application/json` or `?format=json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HealthReport {
    /// `ok` or `unhealthy`, as the first line of the text answer.
    pub status: String,
    pub healthy: bool,
    /// Why not healthy; empty when healthy.
    pub problems: Vec<String>,
    /// What does not make the daemon unhealthy but should be known, e.g. `"cloud: data
    /// budget spent: backlog paused until 2027-01-01 00:00 +01:00"`.
    pub warnings: Vec<String>,
}

/// Whether the client asked for JSON.
fn wants_json(headers: &HeaderMap, uri: &Uri) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let query = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
    accept || query
}

async fn health(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(sources) = state.sources.upgrade() else {
        return stopping();
    };
    let (code, problems) = match sources.check() {
        Ok(()) => (StatusCode::OK, Vec::new()),
        Err(problems) => (StatusCode::SERVICE_UNAVAILABLE, problems),
    };
    let warnings = sources.warnings();
    let healthy = problems.is_empty();
    if wants_json(&headers, &uri) {
        let report = HealthReport {
            status: if healthy { "ok" } else { "unhealthy" }.to_owned(),
            healthy,
            problems,
            warnings,
        };
        return (code, Json(report)).into_response();
    }
    // Text: the first line is the verdict, then one reason per line, then the warnings,
    // so that a check reading the first line or the status code is not misled by them.
    let mut text = if healthy { "ok\n" } else { "unhealthy\n" }.to_owned();
    for p in &problems {
        text.push_str(p);
        text.push('\n');
    }
    for w in &warnings {
        text.push_str("warning: ");
        text.push_str(w);
        text.push('\n');
    }
    (code, text).into_response()
}

async fn api_status(State(state): State<AppState>) -> Response {
    let Some(sources) = state.sources.upgrade() else {
        return stopping();
    };
    let history = state.history.clone();
    match tokio::task::spawn_blocking(move || StatusSnapshot::take(&sources, &history)).await {
        Ok(snapshot) => Json(snapshot).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n").into_response(),
    }
}

async fn api_history(State(state): State<AppState>) -> Response {
    Json(state.history.export()).into_response()
}

/// The daemon's state now, as `/api/status` serves it.
///
/// Field names are part of the interface: the status page and `tidegate status --json`
/// read them. Add fields; do not rename them.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusSnapshot {
    pub gateway: String,
    pub version: String,
    pub started_ms: u64,
    pub now_ms: u64,
    pub healthy: bool,
    /// Why not healthy; empty when healthy.
    pub problems: Vec<String>,
    /// What does not make it unhealthy but should be known (as `/health` says them).
    #[serde(default)]
    pub warnings: Vec<String>,
    pub journal: JournalStatus,
    pub ingest: IngestStatus,
    pub upstreams: Vec<UpstreamStatus>,
}

/// The journal part of [`StatusSnapshot`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JournalStatus {
    /// Records held (`None` when the journal could not be read).
    pub records: Option<u64>,
    pub bytes_held: u64,
    pub max_size: u64,
    pub disk_bytes: Option<u64>,
    /// Readings committed since start.
    pub appended_total: u64,
    pub rejected_full_total: u64,
    pub dropped_full_total: u64,
    /// Readings removed for `journal.max_age` since start (absent from daemons without it).
    #[serde(default)]
    pub expired_total: u64,
    /// Readings removed by `on_full = "thin"` since start (absent from daemons without it).
    #[serde(default)]
    pub thinned_total: u64,
    /// The thinned spans held, oldest first (empty when the journal could not be read, or
    /// from daemons without thinning).
    #[serde(default)]
    pub thinned: Vec<ThinnedSpan>,
    /// The resolution of the history held, in words ([`resolution::describe`]); absent
    /// while no span is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    pub failed: bool,
}

/// The ingest part of [`StatusSnapshot`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct IngestStatus {
    /// MQTT devices connected now.
    pub mqtt_connections: u64,
    /// Readings committed per second over the last sample interval (`None` until two
    /// samples exist).
    pub per_s: Option<f64>,
    /// Readings received per input since start, e.g. `("mqtt", "127.0.0.1:1883", 120)`.
    pub inputs: Vec<InputStatus>,
}

/// One input's readings in [`IngestStatus`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InputStatus {
    pub source: String,
    pub input: String,
    pub received_total: u64,
    pub rejected_total: u64,
}

/// One upstream in [`StatusSnapshot`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub kind: String,
    pub connected: bool,
    /// Records held that it has not delivered (from its stored cursor).
    pub backlog: Option<u64>,
    /// Ingest time of its oldest unsent record, ms since the epoch.
    pub oldest_unsent_ms: Option<u64>,
    /// Age of that record now, seconds.
    pub oldest_unsent_age_s: Option<f64>,
    pub sent_total: u64,
    pub failures_total: u64,
    pub retries_total: u64,
    /// Readings `on_full = "thin"` removed before it had them (absent from daemons without
    /// thinning).
    #[serde(default)]
    pub thinned_readings_total: u64,
    /// Records delivered per second over the last sample interval.
    pub sent_per_s: Option<f64>,
    /// While it is failing, the last attempt's error (TLS, login, unreachable, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its lanes, bandwidth, budget and send windows; absent when it sets none of them
    /// (no bandwidth, budget, windows or live lane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<uplink::UplinkStatus>,
}

impl StatusSnapshot {
    /// Reads every figure now (blocking: opens a journal read transaction).
    pub fn take(sources: &Sources, history: &History) -> StatusSnapshot {
        let summary = sources.journal.summary();
        if let Err(e) = &summary {
            tracing::debug!(error = %e, "Status without the journal summary.");
        }
        Self::build(sources, summary.ok().as_ref(), history)
    }

    fn build(sources: &Sources, summary: Option<&Summary>, history: &History) -> StatusSnapshot {
        let now = crate::journal::now_ms();
        let c = sources.journal.counters();
        let (problems, healthy) = match sources.check() {
            Ok(()) => (Vec::new(), true),
            Err(p) => (p, false),
        };
        let rates = history.latest_rates();
        let upstreams = sources
            .upstreams
            .get()
            .iter()
            .map(|u| {
                let held = summary.and_then(|s| s.upstreams.iter().find(|x| x.name == u.name));
                let oldest = held.and_then(|h| h.oldest_unsent_ms);
                let sample = rates.as_ref().and_then(|r| r.upstream(&u.name));
                UpstreamStatus {
                    name: u.name.clone(),
                    kind: u.kind.to_owned(),
                    connected: read(&u.counters.connected) == 1,
                    backlog: held.map(|h| h.backlog),
                    oldest_unsent_ms: oldest,
                    oldest_unsent_age_s: oldest.map(|t| now.saturating_sub(t) as f64 / 1000.0),
                    sent_total: read(&u.counters.sent),
                    failures_total: read(&u.counters.failures),
                    retries_total: read(&u.counters.retries),
                    thinned_readings_total: read(&u.counters.thinned_readings),
                    sent_per_s: sample.map(|s| s.sent_per_s),
                    last_error: u.counters.last_error.lock().ok().and_then(|e| e.clone()),
                    uplink: uplink::UplinkStatus::read(
                        &u.counters,
                        uplink::LaneRates {
                            backlog: sample.map(|s| s.wire_bytes_per_s),
                            live: sample.and_then(|s| s.live_wire_bytes_per_s),
                        },
                        now,
                    ),
                }
            })
            .collect();
        StatusSnapshot {
            gateway: sources.gateway.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ms: sources.started_ms,
            now_ms: now,
            healthy,
            problems,
            warnings: sources.warnings(),
            journal: JournalStatus {
                records: summary.map(|s| s.records),
                bytes_held: read(&c.bytes_held),
                max_size: sources.max_size,
                disk_bytes: summary.map(|s| s.disk_bytes),
                appended_total: read(&c.appended),
                rejected_full_total: read(&c.rejected_full),
                dropped_full_total: read(&c.dropped_full),
                expired_total: read(&c.expired),
                thinned_total: read(&c.thinned),
                thinned: summary.map(|s| s.thinned.clone()).unwrap_or_default(),
                resolution: summary.and_then(|s| resolution::describe(&s.thinned)),
                failed: sources.journal.is_failed(),
            },
            ingest: IngestStatus {
                mqtt_connections: read(&sources.ingest.connections_active),
                per_s: rates.map(|r| r.ingest_per_s),
                inputs: metrics::inputs(sources)
                    .into_iter()
                    .map(|i| InputStatus {
                        source: i.source.to_owned(),
                        input: i.input,
                        received_total: i.received,
                        rejected_total: i.rejected.iter().map(|(_, n)| n).sum(),
                    })
                    .collect(),
            },
            upstreams,
        }
    }
}

//! `/metrics`: the daemon's counters in the Prometheus text format.
//!
//! A [`prometheus_client`] collector that reads, at scrape time, the atomics every stage
//! already keeps ([`crate::telemetry`], [`crate::journal::JournalCounters`]) and one journal
//! summary (records held, per-upstream backlog and oldest unsent reading). Nothing is
//! counted twice: the stages stay free of any metrics library, and a scrape costs one LMDB
//! read transaction.
//!
//! # Names
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tidegate_readings_received_total` | counter | `source` (mqtt, serial, modbus, mqtt_subscribe), `input` |
//! | `tidegate_readings_rejected_total` | counter | `source`, `input`, `reason` |
//! | `tidegate_input_connected` | gauge | `source`, `input` (serial and Modbus ports, subscribed brokers) |
//! | `tidegate_modbus_poll_errors_total` | counter | `input`, `kind` (timeout, crc, exception, protocol) |
//! | `tidegate_mqtt_connections` | gauge | — devices connected now |
//! | `tidegate_mqtt_connections_accepted_total`, `…_refused_total` | counter | — |
//! | `tidegate_mqtt_auth_refused_total` | counter | `reason` (bad_credentials, not_authorized, client_id, subscribe, revoked) |
//! | `tidegate_journal_records`, `tidegate_journal_bytes`, `tidegate_journal_max_bytes`, `tidegate_journal_disk_bytes` | gauge | — |
//! | `tidegate_journal_appended_total`, `…_commits_total`, `…_rejected_full_total`, `…_dropped_full_total`, `…_expired_total`, `…_thinned_total`, `…_trimmed_total`, `…_refused_unwritable_total`, `…_reopens_total` | counter | — |
//! | `tidegate_journal_commit_duration_seconds` | histogram | — (write transaction, including its sync) |
//! | `tidegate_journal_failed` | gauge | — 1 after an LMDB error |
//! | `tidegate_upstream_sent_total`, `…_batches_total`, `…_send_failures_total`, `…_retries_total`, `…_lost_total`, `…_corrupt_skipped_total`, `…_duplicates_skipped_total`, `…_gap_markers_total`, `…_gap_readings_total`, `…_thinned_readings_total`, `…_thinned_markers_total` | counter | `upstream`, `kind` |
//! | `tidegate_upstream_connected`, `tidegate_upstream_backlog_records`, `tidegate_upstream_oldest_unsent_age_seconds` | gauge | `upstream`, `kind` |
//! | `tidegate_upstream_wire_bytes_total`, `tidegate_upstream_wire_received_bytes_total` | counter | `upstream`, `lane` (backlog; live with a live lane) |
//! | `tidegate_upstream_bandwidth_bytes_per_second` | gauge | `upstream` (with a `bandwidth`) |
//! | `tidegate_upstream_live_readings_total`, `…_live_urgent_total`, `…_live_skipped_total` | counter | `upstream` (with a live lane) |
//! | `tidegate_upstream_live_active` | gauge | `upstream` (with a live lane) |
//! | `tidegate_upstream_newest_delivered_age_seconds` | gauge | `upstream`, `lane` (with an uplink, once the lane delivered) |
//! | `tidegate_upstream_budget_bytes`, `…_budget_used_bytes`, `…_budget_left_bytes`, `…_budget_spent`, `…_budget_exhausted_at_seconds` (when projected) | gauge | `upstream` (with a `budget`) |
//! | `tidegate_upstream_send_window_open` | gauge | `upstream` (with `send_windows`) |
//! | `tidegate_healthy` | gauge | — 1 when `/health` answers 200 |
//! | `tidegate_info` | gauge | `gateway`, `version` (always 1) |
//! | `tidegate_open_sockets` | gauge | — every open connection and listener |
//! | `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds` | gauge | — |

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::uplink::configured;
use super::{Sources, UpstreamSource};
use crate::telemetry::{get, ForwardCounters, UplinkCounters};

/// Labels of one sample: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// The collector registered with the `/metrics` registry.
pub struct DaemonCollector {
    /// Weak, like the handlers' state: a scrape during shutdown finds nothing rather than
    /// keeping the journal open.
    sources: Weak<Sources>,
}

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonCollector").finish_non_exhaustive()
    }
}

impl DaemonCollector {
    pub fn new(sources: Weak<Sources>) -> Self {
        Self { sources }
    }
}

/// One input's readings, as both `/metrics` and `/api/status` show them.
pub struct InputFigures {
    pub source: &'static str,
    pub input: String,
    pub received: u64,
    /// `(reason, count)`.
    pub rejected: Vec<(&'static str, u64)>,
    /// Whether the port is open / the broker connected; `None` for the MQTT listener.
    pub connected: Option<bool>,
}

/// Every input's figures, in a fixed order: the MQTT listener, serial ports, Modbus
/// slaves, subscribed brokers.
pub fn inputs(s: &Sources) -> Vec<InputFigures> {
    let mut out = Vec::new();
    let i = &s.ingest;
    out.push(InputFigures {
        source: "mqtt",
        input: s.mqtt_listen.to_string(),
        received: get(&i.readings_received),
        rejected: vec![
            ("full", get(&i.rejected_full)),
            ("malformed", get(&i.rejected_malformed)),
            ("oversized", get(&i.rejected_oversized)),
            ("system_topic", get(&i.rejected_system_topic)),
            ("topic", get(&i.rejected_topic)),
            ("not_authorized", get(&i.rejected_not_authorized)),
        ],
        connected: None,
    });
    for (port, c) in &s.serial {
        out.push(InputFigures {
            source: "serial",
            input: port.clone(),
            received: get(&c.frames_accepted),
            rejected: c.rejections().to_vec(),
            connected: Some(get(&c.connected) == 1),
        });
    }
    for bus in &s.modbus {
        for (slave, c) in &bus.slaves {
            out.push(InputFigures {
                source: "modbus",
                input: format!("{} {slave}", bus.port),
                received: get(&c.readings),
                rejected: vec![("full", get(&c.rejected_full))],
                connected: Some(get(&bus.port_open) == 1),
            });
        }
    }
    for (url, c) in &s.subscriptions {
        out.push(InputFigures {
            source: "mqtt_subscribe",
            input: url.clone(),
            received: get(&c.acknowledged),
            rejected: vec![
                ("full", get(&c.rejected_full)),
                ("loop", get(&c.loop_dropped)),
                ("topic", get(&c.rejected_topic)),
            ],
            connected: Some(get(&c.connected) == 1),
        });
    }
    out
}

/// Writes one metric family: its descriptor, then one sample per row.
fn family<V: Copy + Into<Value>>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let mut f = m.encode_family(&labels)?;
        match (kind, v.into()) {
            (MetricType::Counter, Value::U(v)) => {
                f.encode_counter::<NoLabelSet, _, u64>(&v, None)?
            }
            (MetricType::Counter, Value::F(v)) => {
                f.encode_counter::<NoLabelSet, _, f64>(&v, None)?
            }
            (_, Value::U(v)) => f.encode_gauge(&(v as i64))?,
            (_, Value::F(v)) => f.encode_gauge(&v)?,
        }
    }
    Ok(())
}

/// A sample's value: counts stay integers, ages and sizes in bytes may be floats.
#[derive(Clone, Copy)]
pub enum Value {
    U(u64),
    F(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::U(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F(v)
    }
}

fn one<V>(v: V) -> [(Labels, V); 1] {
    [(Vec::new(), v)]
}

/// `VmRSS` of this process, in bytes, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open file descriptors of this process, and how many of them are sockets, from
/// `/proc/self/fd` (Linux). One `readlink` per descriptor: about a millisecond per 10,000.
fn open_fds() -> Option<(u64, u64)> {
    let (mut all, mut sockets) = (0, 0);
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        all += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Some((all, sockets))
}

impl Collector for DaemonCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let Some(s) = self.sources.upgrade() else {
            return Ok(());
        };
        let s = &*s;
        let e = &mut e;

        family(
            e,
            "tidegate_info",
            "Gateway id and tidegate version; always 1.",
            Gauge,
            [(
                vec![
                    ("gateway", s.gateway.clone()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ],
                1u64,
            )],
        )?;
        family(
            e,
            "tidegate_healthy",
            "1 when /health answers 200: the journal accepts writes and every essential task is alive.",
            Gauge,
            one(u64::from(s.check().is_ok())),
        )?;

        // Ingest, per input.
        let inputs = inputs(s);
        let label =
            |i: &InputFigures| vec![("source", i.source.to_owned()), ("input", i.input.clone())];
        family(
            e,
            "tidegate_readings_received",
            "Readings handed to the journal, per input (serial: frames committed; mqtt_subscribe: messages journaled and acknowledged).",
            Counter,
            inputs.iter().map(|i| (label(i), i.received)),
        )?;
        family(
            e,
            "tidegate_readings_rejected",
            "Readings or packets refused, per input and reason; none of them reached the journal.",
            Counter,
            inputs.iter().flat_map(|i| {
                i.rejected.iter().map(move |(reason, n)| {
                    let mut l = label(i);
                    l.push(("reason", (*reason).to_owned()));
                    (l, *n)
                })
            }),
        )?;
        family(
            e,
            "tidegate_input_connected",
            "1 while a serial or Modbus port is open or a subscribed broker is connected.",
            Gauge,
            inputs
                .iter()
                .filter_map(|i| i.connected.map(|c| (label(i), u64::from(c)))),
        )?;
        family(
            e,
            "tidegate_modbus_poll_errors",
            "Failed Modbus polls, per slave and kind.",
            Counter,
            s.modbus.iter().flat_map(|bus| {
                bus.slaves.iter().flat_map(move |(slave, c)| {
                    [
                        ("timeout", get(&c.timeouts)),
                        ("crc", get(&c.crc_errors)),
                        ("exception", get(&c.exceptions)),
                        ("protocol", get(&c.protocol_errors)),
                    ]
                    .into_iter()
                    .map(move |(kind, n)| {
                        (
                            vec![
                                ("input", format!("{} {slave}", bus.port)),
                                ("kind", kind.to_owned()),
                            ],
                            n,
                        )
                    })
                })
            }),
        )?;
        family(
            e,
            "tidegate_mqtt_connections",
            "MQTT devices connected now.",
            Gauge,
            one(get(&s.ingest.connections_active)),
        )?;
        family(
            e,
            "tidegate_mqtt_connections_accepted",
            "MQTT connections that completed CONNECT.",
            Counter,
            one(get(&s.ingest.connections_accepted)),
        )?;
        family(
            e,
            "tidegate_mqtt_connections_refused",
            "MQTT connections refused (over mqtt.max_connections, bad client id, bad CONNECT, failed TLS handshake or device authentication).",
            Counter,
            one(get(&s.ingest.connections_refused)),
        )?;
        family(
            e,
            "tidegate_mqtt_auth_refused",
            "Device authentication and rights refusals on the MQTT listener, per reason (bad_credentials, not_authorized, client_id: CONNECTs; subscribe: SUBSCRIBE filters; revoked: connections closed by a reload). Refused publishes are tidegate_readings_rejected_total{reason=\"not_authorized\"}.",
            Counter,
            [
                ("bad_credentials", get(&s.ingest.auth_bad_credentials)),
                ("not_authorized", get(&s.ingest.auth_not_authorized)),
                ("client_id", get(&s.ingest.auth_client_id)),
                ("subscribe", get(&s.ingest.subscribe_not_authorized)),
                ("revoked", get(&s.ingest.auth_revoked)),
            ]
            .into_iter()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n)),
        )?;

        // Journal.
        let c = s.journal.counters();
        let summary = s.journal.summary().ok();
        if let Some(sum) = &summary {
            family(
                e,
                "tidegate_journal_records",
                "Readings the journal holds.",
                Gauge,
                one(sum.records),
            )?;
            family(
                e,
                "tidegate_journal_disk_bytes",
                "Size of the journal's LMDB files.",
                Gauge,
                one(sum.disk_bytes),
            )?;
        }
        family(
            e,
            "tidegate_journal_bytes",
            "Accounted bytes of the readings held (what journal.max_size bounds).",
            Gauge,
            one(get(&c.bytes_held)),
        )?;
        family(
            e,
            "tidegate_journal_max_bytes",
            "journal.max_size.",
            Gauge,
            one(s.max_size),
        )?;
        for (name, help, v) in [
            (
                "tidegate_journal_appended",
                "Readings committed to the journal since start.",
                &c.appended,
            ),
            (
                "tidegate_journal_commits",
                "Journal write transactions committed since start.",
                &c.commits,
            ),
            (
                "tidegate_journal_rejected_full",
                "Readings refused by on_full = \"reject\" since start.",
                &c.rejected_full,
            ),
            (
                "tidegate_journal_dropped_full",
                "Readings deleted by on_full = \"drop-oldest\" before every upstream had them, since start.",
                &c.dropped_full,
            ),
            (
                "tidegate_journal_expired",
                "Readings removed for journal.max_age before every upstream had them, since start.",
                &c.expired,
            ),
            (
                "tidegate_journal_thinned",
                "Readings removed by on_full = \"thin\" (the spans they were in are kept at a lower resolution), since start.",
                &c.thinned,
            ),
            (
                "tidegate_journal_trimmed",
                "Readings removed because every upstream had them, since start.",
                &c.trimmed,
            ),
            (
                "tidegate_journal_refused_unwritable",
                "Readings refused because the journal could not be written (disk full, I/O error), since start.",
                &c.refused_unwritable,
            ),
            (
                "tidegate_journal_reopens",
                "Times the journal environment was closed and opened again after a failed write, since start.",
                &c.reopens,
            ),
        ] {
            family(e, name, help, Counter, one(get(v)))?;
        }
        {
            let (sum, count, buckets) = c.commit_latency.snapshot();
            let m = e.encode_descriptor(
                "tidegate_journal_commit_duration_seconds",
                "Time of each journal write transaction, from opening it to the end of its sync.",
                None,
                MetricType::Histogram,
            )?;
            let mut m = m;
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        family(
            e,
            "tidegate_journal_failed",
            "1 after an LMDB error: the journal refuses writes until tidegate restarts.",
            Gauge,
            one(u64::from(s.journal.is_failed())),
        )?;

        // Upstreams.
        let upstreams = s.upstreams.get();
        let up =
            |u: &UpstreamSource| vec![("upstream", u.name.clone()), ("kind", u.kind.to_owned())];
        for (name, help, pick) in [
            (
                "tidegate_upstream_sent",
                "Records the upstream acknowledged.",
                (|c| &c.sent)
                    as fn(&crate::telemetry::ForwardCounters) -> &std::sync::atomic::AtomicU64,
            ),
            (
                "tidegate_upstream_batches",
                "Batches the upstream acknowledged.",
                |c| &c.batches,
            ),
            (
                "tidegate_upstream_send_failures",
                "Failed send attempts (the batch stays in the journal and is sent again).",
                |c| &c.failures,
            ),
            (
                "tidegate_upstream_retries",
                "Batches sent again after a failed attempt.",
                |c| &c.retries,
            ),
            (
                "tidegate_upstream_lost",
                "Records removed by on_full = \"drop-oldest\" or journal.max_age before this upstream had them.",
                |c| &c.lost_to_drop_oldest,
            ),
            (
                "tidegate_upstream_corrupt_skipped",
                "Records skipped because they failed their checksum in the journal.",
                |c| &c.corrupt_skipped,
            ),
            (
                "tidegate_upstream_duplicates_skipped",
                "Records not sent because the upstream already held them (found by reading the partitions' tails after a restart or an unknown outcome).",
                |c| &c.duplicates_skipped,
            ),
            (
                "tidegate_upstream_gap_markers",
                "Gap markers sent in place of readings drop-oldest deleted before this upstream had them.",
                |c| &c.gap_markers_sent,
            ),
            (
                "tidegate_upstream_gap_readings",
                "Readings the gap markers sent to this upstream stand for.",
                |c| &c.gap_readings,
            ),
            (
                "tidegate_upstream_thinned_readings",
                "Readings on_full = \"thin\" removed before this upstream had them (it gets the span at a lower resolution, not a gap).",
                |c| &c.thinned_readings,
            ),
            (
                "tidegate_upstream_thinned_markers",
                "Thinned markers sent in front of spans held at a lower resolution.",
                |c| &c.thinned_markers_sent,
            ),
        ] {
            family(
                e,
                name,
                help,
                Counter,
                upstreams.iter().map(|u| (up(u), get(pick(&u.counters)))),
            )?;
        }
        family(
            e,
            "tidegate_upstream_connected",
            "1 while the upstream's last send attempt succeeded.",
            Gauge,
            upstreams
                .iter()
                .map(|u| (up(u), get(&u.counters.connected))),
        )?;
        if let Some(sum) = &summary {
            let held = |u: &UpstreamSource| sum.upstreams.iter().find(|x| x.name == u.name);
            family(
                e,
                "tidegate_upstream_backlog_records",
                "Records held that the upstream has not acknowledged (from its stored cursor).",
                Gauge,
                upstreams
                    .iter()
                    .filter_map(|u| held(u).map(|h| (up(u), h.backlog))),
            )?;
            let now = crate::journal::now_ms();
            family(
                e,
                "tidegate_upstream_oldest_unsent_age_seconds",
                "Age of the oldest reading the upstream has not acknowledged; 0 when it has them all.",
                Gauge,
                upstreams.iter().filter_map(|u| {
                    held(u).map(|h| {
                        let age = h
                            .oldest_unsent_ms
                            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
                        (up(u), age)
                    })
                }),
            )?;
        }

        uplinks(e, &upstreams)?;

        // Process.
        if let Some(rss) = resident_bytes() {
            family(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Gauge,
                one(rss),
            )?;
        }
        if let Some((fds, sockets)) = open_fds() {
            family(
                e,
                "process_open_fds",
                "Open file descriptors: device and upstream connections, the journal, ports.",
                Gauge,
                one(fds),
            )?;
            family(
                e,
                "tidegate_open_sockets",
                "Sockets open in the process: device, upstream and HTTP connections, and the listeners.",
                Gauge,
                one(sockets),
            )?;
        }
        family(
            e,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            Gauge,
            one(s.started_ms as f64 / 1000.0),
        )?;
        Ok(())
    }
}

/// The constrained-uplink families (docs/constrained-uplinks.md): each with series only for
/// the upstreams that have its feature, so that no budget series exists without a budget.
fn uplinks(e: &mut DescriptorEncoder, upstreams: &[UpstreamSource]) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    fn x(u: &UpstreamSource) -> &UplinkCounters {
        &u.counters.uplink
    }
    let up = |u: &UpstreamSource| vec![("upstream", u.name.clone())];
    let lane = |u: &UpstreamSource, lane: &str| {
        vec![("upstream", u.name.clone()), ("lane", lane.to_owned())]
    };
    // `(upstream, lane label, that lane's counters)`: the backlog lane of every upstream
    // (its wire bytes are counted with or without limits), the live lane where there is one.
    let lanes: Vec<(&UpstreamSource, &str, &ForwardCounters)> = upstreams
        .iter()
        .flat_map(|u| {
            std::iter::once((u, "backlog", &*u.counters))
                .chain(u.counters.uplink.live_lane().map(|l| (u, "live", &**l)))
        })
        .collect();
    family(
        e,
        "tidegate_upstream_wire_bytes",
        "Bytes written to the upstream's sockets, per lane (Kafka requests after compression and framing, MQTT packets): what bandwidth limits.",
        Counter,
        lanes.iter().map(|(u, l, c)| (lane(u, l), get(&c.wire_sent))),
    )?;
    family(
        e,
        "tidegate_upstream_wire_received_bytes",
        "Bytes read from the upstream's sockets, per lane (Kafka responses, MQTT acknowledgements).",
        Counter,
        lanes.iter().map(|(u, l, c)| (lane(u, l), get(&c.wire_received))),
    )?;
    family(
        e,
        "tidegate_upstream_bandwidth_bytes_per_second",
        "bandwidth: bytes per second both lanes may write together.",
        Gauge,
        upstreams
            .iter()
            .filter(|u| get(&x(u).bandwidth) > 0)
            .map(|u| (up(u), get(&x(u).bandwidth))),
    )?;
    let live: Vec<(&UpstreamSource, &ForwardCounters)> = upstreams
        .iter()
        .filter_map(|u| x(u).live_lane().map(|l| (u, &**l)))
        .collect();
    family(
        e,
        "tidegate_upstream_live_readings",
        "Readings the live lane delivered (each topic's newest while the backlog is behind, and urgent readings).",
        Counter,
        live.iter().map(|(u, l)| (up(u), get(&l.sent))),
    )?;
    family(
        e,
        "tidegate_upstream_live_urgent",
        "Urgent readings the live lane delivered (also in tidegate_upstream_live_readings_total).",
        Counter,
        live.iter()
            .map(|(u, _)| (up(u), get(&x(u).live_urgent_sent))),
    )?;
    family(
        e,
        "tidegate_upstream_live_skipped",
        "Readings the live lane did not send (replaced by a newer one of the topic, or while it failed or was over its share); the history still has them.",
        Counter,
        live.iter().map(|(u, _)| (up(u), get(&x(u).live_skipped))),
    )?;
    family(
        e,
        "tidegate_upstream_live_active",
        "1 while the live lane sends: the backlog is behind by more than live_after, or waits for a window or the budget.",
        Gauge,
        live.iter().map(|(u, _)| (up(u), get(&x(u).live_active))),
    )?;
    let now = crate::journal::now_ms();
    family(
        e,
        "tidegate_upstream_newest_delivered_age_seconds",
        "Age of the newest reading the lane delivered (from its ingest time); absent until the lane has delivered one.",
        Gauge,
        upstreams
            .iter()
            .filter(|u| configured(x(u)))
            .flat_map(|u| {
                [
                    ("backlog", get(&x(u).backlog_newest_ms)),
                    ("live", get(&x(u).live_newest_ms)),
                ]
                .into_iter()
                .filter(|(_, t)| *t != 0)
                .map(move |(l, t)| (lane(u, l), now.saturating_sub(t) as f64 / 1000.0))
            }),
    )?;
    let budgets: Vec<&UpstreamSource> = upstreams
        .iter()
        .filter(|u| get(&x(u).budget_limit) > 0)
        .collect();
    for (name, help, value) in [
        (
            "tidegate_upstream_budget_bytes",
            "budget: bytes per period, both lanes, sent and received.",
            (|u| get(&u.budget_limit)) as fn(&UplinkCounters) -> u64,
        ),
        (
            "tidegate_upstream_budget_used_bytes",
            "Bytes of the budget used in the current period.",
            |u| get(&u.budget_used),
        ),
        (
            "tidegate_upstream_budget_left_bytes",
            "Bytes of the budget left in the current period.",
            |u| get(&u.budget_limit).saturating_sub(get(&u.budget_used)),
        ),
        (
            "tidegate_upstream_budget_spent",
            "1 while the backlog waits for the next budget period (only live_reserve is left, for the live lane).",
            |u| get(&u.budget_spent),
        ),
    ] {
        family(
            e,
            name,
            help,
            Gauge,
            budgets.iter().map(|u| (up(u), value(x(u)))),
        )?;
    }
    family(
        e,
        "tidegate_upstream_budget_exhausted_at_seconds",
        "When the budget runs out at the rate used so far in the period (Unix time); absent when it lasts the period.",
        Gauge,
        budgets
            .iter()
            .filter(|u| get(&x(u).budget_exhaustion_ms) > 0)
            .map(|u| (up(u), get(&x(u).budget_exhaustion_ms) as f64 / 1000.0)),
    )?;
    family(
        e,
        "tidegate_upstream_send_window_open",
        "1 while a send window is open (the backlog may be sent).",
        Gauge,
        upstreams
            .iter()
            .filter(|u| get(&x(u).windows_configured) == 1)
            .map(|u| (up(u), get(&x(u).window_open))),
    )
}

#[cfg(test)]
mod tests;

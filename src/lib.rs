//! tidegate: an IoT edge ingestion daemon.
//!
//! Sensors send readings over MQTT (to tidegate's own listener, or to a local broker
//! tidegate subscribes to) and over serial lines (framed readings, or Modbus RTU polls);
//! tidegate commits every reading to a durable LMDB journal before acknowledging it, and
//! forwards the journal in ordered batches to upstream clusters (Apache Kafka, or an
//! upstream MQTT broker) whenever they are reachable.
//!
//! ```text
//!  devices ──MQTT──────▶ ingest::listener ───────┐
//!  local broker ─MQTT──▶ ingest::mqtt_subscribe ─┤
//!  UART / RS-485 ──────▶ ingest::serial ─────────┼─▶ Reading ─▶ journal (LMDB, group commit)
//!  Modbus RTU slaves ◀─▶ ingest::modbus ─────────┘                │ durable, then ack
//!                                                                 ▼
//!                              forward::Forwarder (one per upstream, own cursor)
//!                                   │ ordered batches, retry with backoff
//!                                   ▼
//!                              sinks::kafka, sinks::mqtt
//! ```
//!
//! # Layout
//!
//! From the top down; a module imports only from the layers below it, and
//! `tests/layers.rs` keeps it so (no import cycle among these modules either).
//!
//! * CLI shell (`main.rs`) and [`status`] — the `status` view.
//! * [`app`] — wiring and the shutdown order; [`service`] — systemd readiness/watchdog
//!   notifications and the SIGHUP reload; [`validate`] — the one full check of a
//!   configuration (config's own rules plus every stage's), used by `run`,
//!   `check-config` and the reload.
//! * [`http`] — the monitoring listener: `/metrics`, `/health`, the status page;
//!   [`health`] — which long-running tasks are alive, the health and watchdog verdicts.
//! * The stages:
//!   * [`ingest`] — every way readings come in, and it only appends: the device-facing
//!     MQTT listener ([`ingest::listener`]) on its codec, with device authentication and
//!     topic rights ([`ingest::auth`]) and its TLS listener ([`ingest::tls`]),
//!     subscriptions to an existing broker ([`ingest::mqtt_subscribe`]), serial ports
//!     ([`ingest::serial`], framings from the `tidegate-framing` crate) and Modbus RTU
//!     polling ([`ingest::modbus`]). It imports no forwarder and no sink.
//!   * [`forward`] — the per-upstream loop (cursor → batch → send → cursor), the link's
//!     limits and live lane ([`forward::uplink`]), and the [`forward::Forwarders`]
//!     supervisor that starts, restarts and stops them.
//!   * [`sinks`] — the [`sinks::Sink`] seam, the Kafka sink and the MQTT upstream sink;
//!     they get batches, never cursors, and know no source.
//!   * [`journal`] — the LMDB store, the group-commit writer thread, retention, and
//!     `tidegate journal check|dump` ([`journal::cli`]); the only user of heed.
//! * Shared by the stages, knowing none of them: [`mqtt_client`] — one MQTT client
//!   connection and its keys, for the MQTT sink and the subscriber; [`backoff`]; [`tls`] —
//!   CA bundles and PEM decoding; [`calendar`] — send windows and budget periods in local
//!   time; [`telemetry`] — logging and counters.
//! * [`record`] — [`record::Record`], the typed markers and their versioned, checksummed
//!   encoding; imports nothing of the crate.
//! * [`config`] — the TOML configuration tree: plain serde data and defaults, one file per
//!   section, with the checks that need nothing but the values; imports nothing of the
//!   crate.

pub mod app;
pub mod backoff;
pub mod calendar;
pub mod config;
pub mod forward;
pub mod health;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod mqtt_client;
pub mod record;
pub mod service;
pub mod sinks;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod validate;

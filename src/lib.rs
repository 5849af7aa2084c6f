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
//! * [`config`] — the TOML configuration tree, defaults and validation.
//! * [`record`] — [`record::Record`] and its versioned, checksummed encoding.
//! * [`ingest`] — every way readings come in: the device-facing MQTT listener
//!   ([`ingest::listener`]) on its codec, with device authentication and topic rights
//!   ([`ingest::auth`]) and its TLS listener ([`ingest::tls`]), subscriptions to an existing broker
//!   ([`ingest::mqtt_subscribe`]), serial ports ([`ingest::serial`], framings from the
//!   `tidegate-framing` crate) and Modbus RTU polling ([`ingest::modbus`]).
//! * [`journal`] — the LMDB store, the group-commit writer thread, retention;
//!   [`journal_cli`] — `tidegate journal check|dump`, read-only.
//! * [`forward`] — the per-upstream loop: cursor → batch → send → cursor.
//! * [`sinks`] — the [`sinks::Sink`] seam, the Kafka sink and the MQTT upstream sink.
//! * [`telemetry`] — logging and counters.
//! * [`health`] — which long-running tasks are alive; the daemon's health and watchdog verdicts.
//! * [`service`] — systemd readiness/watchdog notifications and SIGHUP reload.
//! * [`http`] — the monitoring listener: `/metrics`, `/health`, the status page.
//! * [`app`] — wiring and the shutdown order; [`status`] — the `status` view.

pub mod app;
pub mod backoff;
pub mod config;
pub mod forward;
pub mod health;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod journal_cli;
pub mod mqtt_client;
pub mod record;
pub mod service;
pub mod sinks;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod validate;

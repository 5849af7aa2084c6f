//! tidegate: an IoT edge ingestion daemon.
//!
//! Sensors publish readings over MQTT; tidegate commits every reading to a durable LMDB
//! journal before acknowledging it, and forwards the journal in ordered batches to
//! upstream clusters (Apache Kafka) whenever they are reachable.
//!
//! ```text
//!  devices ──MQTT──▶ ingest::broker ──▶ Reading ──▶ journal (LMDB, group commit)
//!                                                       │ durable, then PUBACK
//!                                                       ▼
//!                              forward::Forwarder (one per upstream, own cursor)
//!                                   │ ordered batches, retry with backoff
//!                                   ▼
//!                              sinks::kafka
//! ```
//!
//! # Layout
//!
//! * [`config`] — the TOML configuration tree, defaults and validation.
//! * [`record`] — [`record::Record`] and its versioned, checksummed encoding.
//! * [`ingest`] — the device-facing MQTT listener ([`ingest::broker`]) on its codec.
//! * [`journal`] — the LMDB store, the group-commit writer thread, retention.
//! * [`forward`] — the per-upstream loop: cursor → batch → send → cursor.
//! * [`sinks`] — the [`sinks::Sink`] seam and the Kafka sink.
//! * [`telemetry`] — logging and counters.
//! * [`app`] — wiring and the shutdown order; [`status`] — the `status` view.

pub mod app;
pub mod config;
pub mod forward;
pub mod ingest;
pub mod journal;
pub mod record;
pub mod sinks;
pub mod status;
pub mod telemetry;

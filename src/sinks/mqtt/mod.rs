//! The MQTT sink: forwards journal batches to an upstream MQTT broker (the bridge's
//! upstream direction, `[[upstream]] kind = "mqtt"`).
//!
//! # What it owns
//!
//! [`MqttSink`] owns one client connection to the upstream broker ([`client`]), the mapping
//! of a [`Record`] to an MQTT publish, and the memory of how much of a failed batch the
//! broker already acknowledged. Backoff and retry are the forwarder's
//! ([`crate::forward`]); the sink makes one attempt per [`Sink::send`].
//!
//! # Record mapping
//!
//! | MQTT publish              | from the record                                        |
//! |---------------------------|--------------------------------------------------------|
//! | topic                     | `topic_prefix` + `reading.topic`, or `topic_template`  |
//! | payload                   | `reading.payload`, byte for byte                       |
//! | QoS                       | 1, retain off                                          |
//! | user property `tidegate-gateway` (MQTT 5) | the gateway id                         |
//! | user property `tidegate-seq` (MQTT 5)     | the journal sequence, decimal ASCII    |
//!
//! # Invariants
//!
//! * **Ordered.** A batch is published in journal order on one connection, with at most
//!   `max_inflight` publishes unacknowledged; MQTT keeps a connection's order, and a broker
//!   acknowledges in order. `send` returns `Ok` only when every publish of the batch has its
//!   PUBACK — the forwarder's only reason to move its cursor.
//! * **No resend but the forwarder's.** On any failure (connection lost, no PUBACK within
//!   `request_timeout`, negative PUBACK) the connection and its event loop are dropped, with
//!   everything rumqttc still held for it; the forwarder then resends the batch on a fresh
//!   connection. rumqttc's own resend of pending publishes after a reconnect never runs, so
//!   it cannot interleave with the forwarder's and reorder.
//! * **A retry skips only an acknowledged prefix.** PUBACKs come in publish order, so what
//!   was acknowledged of a failed batch is a prefix of it; the retry of the same batch
//!   starts after that prefix. Anything after it is sent again (at least once): the
//!   `tidegate-seq` property lets a consumer drop the duplicate.
//!
//! A broker that refuses one publish with a negative PUBACK (MQTT 5: not authorized, quota
//! exceeded) may already have accepted later publishes of the window; the retry then
//! delivers the refused one after them. This is the one case where a consumer can see a
//! device's readings out of order (the sequence property shows it); not-authorized and bad
//! topic refusals are fatal (logged at ERROR, retried slowly) since they need an operator.

pub mod client;
pub mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use crate::config::UpstreamConfig;
use crate::record::Record;
use crate::sinks::{Sink, SinkError};
use client::{Endpoint, Event, EventLoop, Requests};

/// How a record's topic becomes the upstream topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicMap {
    /// `prefix` + the record's topic.
    Prefix(String),
    /// The template with `{topic}` and `{gateway}` replaced.
    Template(String),
}

impl TopicMap {
    /// The map an upstream's config asks for.
    pub fn from_config(config: &UpstreamConfig) -> TopicMap {
        match &config.topic_template {
            Some(t) => TopicMap::Template(t.clone()),
            None => TopicMap::Prefix(config.topic_prefix.clone()),
        }
    }

    /// The upstream topic of a record with `topic`.
    pub fn apply(&self, topic: &str, gateway: &str) -> String {
        match self {
            TopicMap::Prefix(p) => format!("{p}{topic}"),
            TopicMap::Template(t) => t.replace("{gateway}", gateway).replace("{topic}", topic),
        }
    }

    /// The fixed start of every topic this map produces (for the loop check of the
    /// config): the prefix, or the template up to its first `{topic}`.
    pub fn fixed_prefix(&self, gateway: &str) -> String {
        match self {
            TopicMap::Prefix(p) => p.clone(),
            TopicMap::Template(t) => {
                let head = t.split("{topic}").next().unwrap_or("");
                head.replace("{gateway}", gateway)
            }
        }
    }
}

/// Delivers batches to one upstream MQTT broker. See the [module docs](self).
pub struct MqttSink {
    /// What does not change between connections.
    ctx: Ctx,
    /// The live connection; `None` before the first send and after any failure.
    conn: Option<(Requests, EventLoop)>,
    /// First sequence of the batch being retried and how many of its records (from the
    /// front) the broker already acknowledged.
    acked: Option<(u64, usize)>,
    /// Connections made, for the log: the first is logged at INFO, reconnects at DEBUG
    /// (the forwarder logs the outage and the recovery).
    connects: u64,
}

/// The sink's settings, apart from the connection (an event loop is not `Sync`, so it
/// is never borrowed across an await through `&self`).
struct Ctx {
    /// The upstream's name, for logs and errors.
    upstream: String,
    /// How to connect.
    endpoint: Endpoint,
    /// How topics are mapped.
    topics: TopicMap,
    /// Value of the `tidegate-gateway` property.
    gateway: Arc<str>,
    /// Longest wait for the next PUBACK (or the CONNACK) before the attempt counts as failed.
    request_timeout: Duration,
}

impl MqttSink {
    /// A sink for `config`'s broker (`kind = "mqtt"`), stamping publishes with
    /// `gateway_id`. Does no I/O: the first [`Sink::send`] connects.
    pub fn new(config: &UpstreamConfig, gateway_id: &str) -> Result<MqttSink, String> {
        Ok(MqttSink {
            ctx: Ctx {
                upstream: config.name.clone(),
                endpoint: config.mqtt_endpoint(gateway_id)?,
                topics: TopicMap::from_config(config),
                gateway: Arc::from(gateway_id),
                request_timeout: config.request_timeout,
            },
            conn: None,
            acked: None,
            connects: 0,
        })
    }
}

impl Ctx {
    fn error(&self, fatal: bool, what: impl std::fmt::Display) -> SinkError {
        let message = format!(
            "upstream {:?} (MQTT broker {}): {what}",
            self.upstream, self.endpoint.url
        );
        if fatal {
            SinkError::Fatal(message)
        } else {
            SinkError::Retryable(message)
        }
    }

    /// Opens a fresh connection and waits for the CONNACK.
    async fn connect(&self, connects: &mut u64) -> Result<(Requests, EventLoop), SinkError> {
        // Room for a whole window of publishes plus a DISCONNECT: `publish` never finds
        // the channel full while the window has room.
        let capacity = usize::from(self.endpoint.max_inflight) + 16;
        let (requests, mut events) = self
            .endpoint
            .open(capacity)
            .map_err(|e| self.error(true, e))?;
        let deadline = tokio::time::Instant::now() + self.endpoint.connect_timeout;
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Err(_) => {
                    return Err(self.error(
                        false,
                        format!(
                            "no CONNACK within {}",
                            humantime::format_duration(self.endpoint.connect_timeout)
                        ),
                    ))
                }
                Ok(Err(f)) => return Err(self.error(f.fatal, format!("connecting: {}", f.message))),
                Ok(Ok(Event::Connected { session_present })) => {
                    *connects += 1;
                    if *connects == 1 {
                        info!(upstream = %self.upstream, broker = %self.endpoint.url, client_id = %self.endpoint.client_id, protocol = self.endpoint.protocol, session_present, "Connected to the upstream MQTT broker.");
                    } else {
                        debug!(upstream = %self.upstream, broker = %self.endpoint.url, session_present, "Reconnected to the upstream MQTT broker.");
                    }
                    return Ok((requests, events));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Publishes `todo` (the unacknowledged rest of a batch) and waits for every PUBACK.
    /// Returns how many of `todo`, from the front, were acknowledged, and the error if not
    /// all were.
    async fn deliver(
        &self,
        requests: &Requests,
        events: &mut EventLoop,
        todo: &[Record],
    ) -> (usize, Option<SinkError>) {
        let window = usize::from(self.endpoint.max_inflight.max(1));
        let mut queued = 0;
        let mut written = 0;
        let mut acked = vec![false; todo.len()];
        let mut acked_count = 0;
        let mut prefix = 0;
        // Packet id → index in `todo`; an id is reused only after its PUBACK.
        let mut in_flight: HashMap<u16, usize> = HashMap::with_capacity(window);
        let mut deadline = tokio::time::Instant::now() + self.request_timeout;
        while acked_count < todo.len() {
            while queued < todo.len() && queued - acked_count < window {
                let r = &todo[queued];
                let topic = self.topics.apply(&r.reading.topic, &self.gateway);
                if topic.is_empty() || topic.len() > usize::from(u16::MAX) {
                    return (
                        prefix,
                        Some(self.error(
                            true,
                            format!(
                                "reading {} maps to an unusable topic ({} bytes); fix topic_prefix / topic_template",
                                r.seq,
                                topic.len()
                            ),
                        )),
                    );
                }
                if requests
                    .publish(topic, r.reading.payload.clone(), &self.gateway, r.seq)
                    .is_err()
                {
                    return (
                        prefix,
                        Some(self.error(false, "the connection's request queue closed")),
                    );
                }
                queued += 1;
            }
            let event = match tokio::time::timeout_at(deadline, events.poll()).await {
                Err(_) => {
                    return (
                        prefix,
                        Some(self.error(
                            false,
                            format!(
                                "no PUBACK within request_timeout ({}); {} of {} publishes acknowledged",
                                humantime::format_duration(self.request_timeout),
                                acked_count,
                                todo.len()
                            ),
                        )),
                    )
                }
                Ok(Err(f)) => {
                    return (
                        prefix,
                        Some(self.error(
                            f.fatal,
                            format!(
                                "{}; {} of {} publishes acknowledged",
                                f.message,
                                acked_count,
                                todo.len()
                            ),
                        )),
                    )
                }
                Ok(Ok(e)) => e,
            };
            match event {
                Event::Sent(pkid) => {
                    in_flight.insert(pkid, written);
                    written += 1;
                }
                Event::Acked(pkid) => {
                    // An id we do not know is a late PUBACK of an earlier connection's
                    // session; rumqttc refuses those before we see them.
                    if let Some(i) = in_flight.remove(&pkid) {
                        if !acked[i] {
                            acked[i] = true;
                            acked_count += 1;
                        }
                        while prefix < todo.len() && acked[prefix] {
                            prefix += 1;
                        }
                        deadline = tokio::time::Instant::now() + self.request_timeout;
                    }
                }
                _ => {}
            }
        }
        (todo.len(), None)
    }
}

impl Sink for MqttSink {
    async fn send(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let skip = match self.acked {
            Some((seq, n)) if seq == first.seq => n.min(batch.len()),
            _ => 0,
        };
        let (requests, mut events) = match self.conn.take() {
            Some(c) => c,
            None => self.ctx.connect(&mut self.connects).await?,
        };
        let (done, error) = self
            .ctx
            .deliver(&requests, &mut events, &batch[skip..])
            .await;
        match error {
            None => {
                self.acked = None;
                self.conn = Some((requests, events));
                Ok(())
            }
            Some(e) => {
                // Dropping `requests` and `events` closes the socket and forgets whatever
                // rumqttc still held for this connection (see the module docs).
                self.acked = Some((first.seq, skip + done));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;

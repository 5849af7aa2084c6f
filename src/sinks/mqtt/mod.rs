//! The MQTT sink: forwards journal batches to an upstream MQTT broker (the bridge's
//! upstream direction, `[[upstream]] kind = "mqtt"`).
//!
//! # What it owns
//!
//! [`MqttSink`] owns one client connection to the upstream broker ([`crate::mqtt_client`]), the mapping
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
//! The bridge has no marker record: it asks for no gap or thinned markers
//! ([`Sink::wants_gap_markers`] is false), so readings removed by drop-oldest or
//! `max_age`, and readings thinning removed, are counted and logged by the forwarder only;
//! a consumer sees the `tidegate-seq` numbers skip.
//!
//! # The live lane
//!
//! [`MqttSink::live`] is the same sink for an upstream's live lane: topic
//! `live_topic_prefix` + `reading.topic`, **retained** (a new subscriber gets each device's
//! current value at once), user property `tidegate-live` = `1` under MQTT 5, its own client
//! id `<client id>-live` (so it does not take the history connection's place on the broker)
//! and a clean session (nothing to resume: the live lane is best effort).
//!
//! # Wire bytes
//!
//! Each PUBLISH the sink writes adds its exact encoded size to the upstream's `wire_sent`,
//! and each PUBACK its size to `wire_received` ([`wire`] says what is not counted).
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
//! # Connection
//!
//! [`MqttSink::new`] does no I/O; the first `send` connects. The connection's event loop
//! then runs in its own task for as long as the connection lives, so keep-alive pings go
//! out between batches and an idle connection stays open; one that was lost while idle
//! is replaced at the next `send` before anything is published on it. The session is
//! persistent unless `clean_session` is set. The sink relies on what MQTT 3.1.1 and 5
//! (§4.4) require of a broker resuming a session: it resends its own PUBLISH and PUBREL
//! packets, never a PUBACK, so every PUBACK on a connection answers a publish made on that
//! connection. For a broker that does otherwise, set `clean_session = true`: tidegate's
//! journal, not the broker's session, is what holds unsent readings.
//!
//! A broker that refuses one publish with a negative PUBACK (MQTT 5: not authorized, quota
//! exceeded) may already have accepted later publishes of the window; the retry then
//! delivers the refused one after them. This is the one case where a consumer can see a
//! device's readings out of order (the sequence property shows it); not-authorized and bad
//! topic refusals are fatal (logged at ERROR, retried slowly) since they need an operator.

pub mod config;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::config::UpstreamConfig;
use crate::mqtt_client::topics::TopicMap;
use crate::mqtt_client::{BrokerUrlError, Endpoint, Event, EventLoop, Failure, Requests};
use crate::record::{Item, Record};
use crate::sinks::{Attachment, Sink, SinkError};
use crate::telemetry::ForwardCounters;

/// Delivers batches to one upstream MQTT broker. See the [module docs](self).
pub struct MqttSink {
    /// What does not change between connections.
    ctx: Ctx,
    /// The live connection; `None` before the first send and after any failure.
    conn: Option<Connection>,
    /// Where the batch being retried starts and how many of its records (from the front)
    /// the broker already acknowledged.
    acked: Option<(crate::record::Position, usize)>,
    /// Connections made, for the log: the first is logged at INFO, reconnects at DEBUG
    /// (the forwarder logs the outage and the recovery).
    connects: u64,
}

/// The sink's settings, apart from the connection.
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
    /// The live lane's sink ([`MqttSink::live`]): retained publishes, `tidegate-live`.
    live: bool,
    /// The upstream's counters (wire bytes), from [`Sink::attach`].
    counters: Option<Arc<ForwardCounters>>,
}

/// One live connection. Its event loop is polled by its own task for the connection's
/// whole life, so keep-alive pings go out between batches too; the task passes on only
/// what the sink waits for. Dropping the connection aborts the task, which drops the
/// event loop and everything rumqttc held for it (see the module docs).
struct Connection {
    requests: Requests,
    /// Connected, Sent, Acked, or the failure that ended the loop (the last item).
    events: mpsc::Receiver<Result<Event, Failure>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Polls `events` until it fails, passing on what the sink needs. Each publish yields one
/// `Sent` and one `Acked`, so a channel of twice the window never fills while the sink is
/// between batches.
async fn drive(mut events: EventLoop, out: mpsc::Sender<Result<Event, Failure>>) {
    loop {
        match events.poll().await {
            Ok(e @ (Event::Connected { .. } | Event::Sent(_) | Event::Acked(_))) => {
                if out.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(f) => {
                let _ = out.send(Err(f)).await;
                return;
            }
        }
    }
}

impl MqttSink {
    /// A sink for `config`'s broker (`kind = "mqtt"`), stamping publishes with
    /// `gateway_id`. Does no I/O: the first [`Sink::send`] connects.
    pub fn new(config: &UpstreamConfig, gateway_id: &str) -> Result<MqttSink, BrokerUrlError> {
        let endpoint = config::endpoint(config, gateway_id)?;
        let topics = TopicMap::from_config(config);
        Ok(MqttSink::with(config, gateway_id, endpoint, topics, false))
    }

    /// The sink of `config`'s live lane: publishes to `live_topic_prefix` + the reading's
    /// topic, retained, marked `tidegate-live`, as client `<client id>-live` with a clean
    /// session (see the [module docs](self#the-live-lane)). Does no I/O.
    pub fn live(config: &UpstreamConfig, gateway_id: &str) -> Result<MqttSink, BrokerUrlError> {
        let mut endpoint = config::endpoint(config, gateway_id)?;
        endpoint.client_id.push_str("-live");
        endpoint.clean_session = true;
        let topics = TopicMap::Prefix(config.uplink.live_topic_prefix.clone());
        Ok(MqttSink::with(config, gateway_id, endpoint, topics, true))
    }

    fn with(
        config: &UpstreamConfig,
        gateway_id: &str,
        endpoint: Endpoint,
        topics: TopicMap,
        live: bool,
    ) -> MqttSink {
        MqttSink {
            ctx: Ctx {
                upstream: config.name.clone(),
                endpoint,
                topics,
                gateway: Arc::from(gateway_id),
                request_timeout: config.request_timeout,
                live,
                counters: None,
            },
            conn: None,
            acked: None,
            connects: 0,
        }
    }
}

impl Ctx {
    /// Adds to the upstream's wire bytes, once attached.
    fn count_wire(&self, sent: usize, received: usize) {
        if let Some(c) = &self.counters {
            c.wire_sent.fetch_add(sent as u64, Ordering::Relaxed);
            c.wire_received
                .fetch_add(received as u64, Ordering::Relaxed);
        }
    }

    fn error(&self, fatal: bool, what: impl std::fmt::Display) -> SinkError {
        let message = format!(
            "upstream {:?} (MQTT broker {}): {what}",
            self.upstream, self.endpoint.url
        );
        if fatal {
            SinkError::fatal(message)
        } else {
            SinkError::retryable(message)
        }
    }

    /// Opens a fresh connection and waits for the CONNACK.
    async fn connect(&self, connects: &mut u64) -> Result<Connection, SinkError> {
        let window = usize::from(self.endpoint.max_inflight.max(1));
        // Room for a whole window of publishes: `publish` never finds it full.
        let (requests, events) = self
            .endpoint
            .open(window + 16)
            .map_err(|e| self.error(true, e))?;
        let (tx, rx) = mpsc::channel(2 * window + 4);
        let mut conn = Connection {
            requests,
            events: rx,
            driver: tokio::spawn(drive(events, tx)),
        };
        let deadline = tokio::time::Instant::now() + self.endpoint.connect_timeout;
        loop {
            match tokio::time::timeout_at(deadline, conn.events.recv()).await {
                Err(_) => {
                    return Err(self.error(
                        false,
                        format!(
                            "no CONNACK within {}",
                            humantime::format_duration(self.endpoint.connect_timeout)
                        ),
                    ))
                }
                Ok(None) => return Err(self.error(false, "the connection ended")),
                Ok(Some(Err(f))) => {
                    return Err(self.error(f.fatal, format!("connecting: {}", f.message)))
                }
                Ok(Some(Ok(Event::Connected { session_present }))) => {
                    *connects += 1;
                    if *connects == 1 {
                        info!(upstream = %self.upstream, broker = %self.endpoint.url, client_id = %self.endpoint.client_id, protocol = self.endpoint.protocol, session_present, "Connected to the upstream MQTT broker.");
                    } else {
                        debug!(upstream = %self.upstream, broker = %self.endpoint.url, session_present, "Reconnected to the upstream MQTT broker.");
                    }
                    return Ok(conn);
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Publishes `todo` (the unacknowledged rest of a batch) and waits for every PUBACK.
    /// Returns how many of `todo`, from the front, were acknowledged, and the error if not
    /// all were.
    async fn deliver(&self, conn: &mut Connection, todo: &[Item]) -> (usize, Option<SinkError>) {
        let window = usize::from(self.endpoint.max_inflight.max(1));
        let mut queued = 0;
        // Indexes in `todo` of the publishes queued and not yet written, with their encoded
        // sizes, in queue order: rumqttc writes them in that order, and a gap (queued as
        // nothing) has no index here.
        let mut unwritten: VecDeque<(usize, usize)> = VecDeque::with_capacity(window);
        let mut acked = vec![false; todo.len()];
        let mut acked_count = 0;
        let mut prefix = 0;
        // Packet id → index in `todo`; an id is reused only after its PUBACK.
        let mut in_flight: HashMap<u16, usize> = HashMap::with_capacity(window);
        let mut deadline = tokio::time::Instant::now() + self.request_timeout;
        while acked_count < todo.len() {
            while queued < todo.len() && queued - acked_count < window {
                let r: &Record = match &todo[queued] {
                    Item::Reading(r) => r,
                    // The bridge has no marker record of its own (it asks for no gap or
                    // thinned markers): nothing to publish, so nothing to wait for.
                    Item::Gap(_) | Item::Thinned(_) => {
                        acked[queued] = true;
                        acked_count += 1;
                        queued += 1;
                        while prefix < todo.len() && acked[prefix] {
                            prefix += 1;
                        }
                        continue;
                    }
                };
                let topic = self.topics.apply(&r.reading.topic, &self.gateway);
                // Ingest and config validation rule these out; checked here so a bad
                // topic is an operator error naming the reading, not a retry loop.
                if topic.is_empty()
                    || topic.len() > usize::from(u16::MAX)
                    || topic.contains(['+', '#', '\0'])
                {
                    return (
                        prefix,
                        Some(self.error(
                            true,
                            format!(
                                "reading {} maps to an unusable topic ({} bytes, or a wildcard); fix topic_prefix / topic_template",
                                r.seq,
                                topic.len()
                            ),
                        )),
                    );
                }
                let size = wire::publish_size(
                    self.endpoint.protocol,
                    &topic,
                    r.reading.payload.len(),
                    &self.gateway,
                    r.seq,
                    self.live,
                );
                if conn
                    .requests
                    .publish(
                        topic,
                        r.reading.payload.clone(),
                        &self.gateway,
                        r.seq,
                        self.live,
                    )
                    .is_err()
                {
                    return (
                        prefix,
                        Some(self.error(false, "the connection's request queue closed")),
                    );
                }
                unwritten.push_back((queued, size));
                queued += 1;
            }
            let event = match tokio::time::timeout_at(deadline, conn.events.recv()).await {
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
                Ok(None) => {
                    return (
                        prefix,
                        Some(self.error(false, "the connection ended")),
                    )
                }
                Ok(Some(Err(f))) => {
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
                Ok(Some(Ok(e))) => e,
            };
            match event {
                Event::Sent(pkid) => {
                    if let Some((i, size)) = unwritten.pop_front() {
                        in_flight.insert(pkid, i);
                        self.count_wire(size, 0);
                    }
                }
                Event::Acked(pkid) => {
                    // rumqttc refuses a PUBACK for an id it has nothing in flight under
                    // (an error, so a new connection) before we see it.
                    if let Some(i) = in_flight.remove(&pkid) {
                        self.count_wire(0, wire::puback_size(self.endpoint.protocol));
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
    async fn send(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let skip = match self.acked {
            Some((at, n)) if at == first.position() => n.min(batch.len()),
            _ => 0,
        };
        // A connection that failed while idle (the broker restarted, say) is replaced
        // now, before anything is published on it: that is no failure of this batch.
        if let Some(conn) = &mut self.conn {
            if let Ok(Err(f)) = conn.events.try_recv() {
                debug!(upstream = %self.ctx.upstream, error = %f.message, "The idle upstream MQTT connection was lost; reconnecting.");
                self.conn = None;
            }
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.ctx.connect(&mut self.connects).await?,
        };
        let (done, error) = self.ctx.deliver(&mut conn, &batch[skip..]).await;
        match error {
            None => {
                self.acked = None;
                self.conn = Some(conn);
                Ok(())
            }
            Some(e) => {
                // Dropping `conn` closes the socket and forgets whatever rumqttc still
                // held for this connection (see the module docs).
                self.acked = Some((first.position(), skip + done));
                Err(e)
            }
        }
    }

    fn attach(&mut self, attachment: Attachment) {
        self.ctx.counters = Some(attachment.counters);
    }
}

#[cfg(test)]
mod tests;

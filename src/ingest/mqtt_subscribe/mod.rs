//! MQTT subscription ingest: tidegate as a client of an existing broker (`[[mqtt_subscribe]]`),
//! the bridge's downstream direction.
//!
//! Each section gets one task ([`run`]) that keeps one connection to its broker for the
//! daemon's life: it connects with a persistent session (so the broker queues what arrives
//! while tidegate is away), subscribes to the configured filters, and journals every
//! message with its original topic (source kind `mqtt-subscribe`, source = the broker's
//! url, payload byte for byte).
//!
//! # Invariants
//!
//! 1. **Durable before acknowledged.** rumqttc runs with manual acknowledgements. The
//!    messages ready at once are journaled as one request; their PUBACKs are queued only
//!    after that request's commit, in the order the messages arrived (a separate task awaits
//!    the commits in submit order, as the listener's writer half does). A crash at any
//!    instant leaves every unacknowledged message with the broker, which redelivers it.
//! 2. **Acknowledgements stay on their connection.** A connection's client and event loop
//!    are used once ([`crate::mqtt_client`]): after any failure both are dropped,
//!    so an acknowledgement still queued for a lost connection can never acknowledge a
//!    different message (same packet id) on the next one.
//! 3. **A full journal is never acknowledged away.** Under `on_full = "reject"` a refused
//!    message is not acknowledged; a per-connection [`Fence`] refuses everything after it,
//!    the connection is dropped without DISCONNECT and opened again after a backoff, and
//!    the broker redelivers from the first unacknowledged message, in order.
//! 4. **No loops.** A message carrying the MQTT 5 user property `tidegate-gateway` equal to
//!    this gateway's id was forwarded by this gateway: it is acknowledged and dropped, never
//!    journaled (counted as `loop_dropped`). With the config rule that refuses a
//!    subscription to what an MQTT upstream publishes on the same broker
//!    ([`config::validate`]), a forwarded reading cannot come back.
//!
//! Redelivery makes this at least once: a message journaled whose PUBACK was lost (crash,
//! connection drop) is journaled again when the broker resends it.

pub mod config;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::MqttSubscribeConfig;

use crate::backoff::Backoff;
use crate::journal::{now_ms, Appended, Fence, Journal, JournalError};
use crate::mqtt_client::{Delivery, Endpoint, Event, EventLoop, Requests};
use crate::record::{Reading, SourceKind};
use crate::telemetry::{add, MqttSubscribeCounters};

/// Messages waiting between the event loop and the journal. With the commits in flight it
/// bounds memory when a 3.1.1 broker sends faster than the journal commits.
const DELIVERY_QUEUE: usize = 1024;

/// Most messages in one journal request.
const MAX_BATCH: usize = 1000;

/// Journal requests of one connection waiting for their commit.
const MAX_IN_FLIGHT: usize = 8;

/// Longest a stopping subscription waits for its last acknowledgements to be written.
const STOP_DRAIN: Duration = Duration::from_secs(5);

/// What the task needs besides its config.
pub struct Subscription {
    /// Position in the file, for the default client id and the logs.
    pub index: usize,
    pub config: MqttSubscribeConfig,
    pub gateway_id: String,
    /// Largest message accepted (`mqtt.max_packet`).
    pub max_packet: usize,
    pub journal: Journal,
    pub counters: Arc<MqttSubscribeCounters>,
}

/// How one connection ended.
enum Ended {
    /// Shutdown.
    Stopped,
    /// Connection refused or lost.
    Lost { error: String },
    /// The journal refused a message (`on_full = "reject"`).
    Full,
    /// The journal stopped; the daemon is stopping.
    JournalGone,
}

/// Runs one `[[mqtt_subscribe]]` until `stop`.
pub async fn run(sub: Subscription, stop: CancellationToken) {
    let endpoint = match config::endpoint(&sub.config, sub.index, &sub.gateway_id, sub.max_packet) {
        Ok(e) => e,
        Err(e) => {
            // Validation refuses such a url; this only guards a hand-built config.
            tracing::error!(index = sub.index, error = %e, "MQTT subscription not started: bad url.");
            return;
        }
    };
    let span = tracing::info_span!("mqtt_subscribe", broker = %endpoint.url, client_id = %endpoint.client_id);
    async move {
        let mut backoff = Backoff::new(sub.config.backoff_initial, sub.config.backoff_max);
        let mut log = ConnectionLog::default();
        loop {
            let ended = session(&sub, &endpoint, &stop, &mut log).await;
            sub.counters
                .connected
                .store(0, std::sync::atomic::Ordering::Relaxed);
            // Only a connection that stayed up ends an outage: one that drops again at
            // once (a broker refusing our SUBSCRIBE, a message it cannot deliver) keeps
            // the backoff growing and is not logged again.
            let stable = log
                .connected_at
                .take()
                .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION);
            if stable {
                backoff.reset();
                log.problem = None;
            }
            let problem = match ended {
                Ended::Stopped | Ended::JournalGone => break,
                Ended::Lost { error } => error,
                Ended::Full => FULL.to_owned(),
            };
            if log.problem.as_deref() != Some(problem.as_str()) {
                if problem == FULL {
                    tracing::warn!("Journal full (on_full = \"reject\"): not acknowledging, disconnecting from the broker; it keeps the messages and redelivers them when tidegate reconnects.");
                } else {
                    tracing::warn!(error = %problem, retry_max = %humantime::format_duration(sub.config.backoff_max), "MQTT subscription cannot connect or lost its connection; unacknowledged messages stay with the broker. Retrying with backoff (logged again only if the error changes).");
                }
                log.problem = Some(problem);
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            add(&sub.counters.reconnects, 1);
        }
        tracing::info!("MQTT subscription stopped.");
    }
    .instrument(span)
    .await
}

/// What the connection log lines depend on, across connections.
#[derive(Default)]
struct ConnectionLog {
    /// The problem last logged, while it lasts: the same one is not logged again.
    problem: Option<String>,
    /// When the current connection came up.
    connected_at: Option<Instant>,
    /// When a reconnection was last logged at INFO.
    last_reconnect_log: Option<Instant>,
    ever_connected: bool,
}

/// The problem of a full journal, as [`ConnectionLog::problem`] holds it.
const FULL: &str = "journal full";

/// A connection up this long ends an outage: backoff starts over and the next problem is
/// logged even if it is the same as the last.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Reconnections are logged at INFO at most this often; the rest at DEBUG.
const RECONNECT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the event loop's task hands the journaling loop.
enum FromBroker {
    Delivery(Delivery),
    Subscribed { refused: usize },
    Failed(String),
}

/// One connection: connect, subscribe, journal and acknowledge until it ends.
async fn session(
    sub: &Subscription,
    endpoint: &Endpoint,
    stop: &CancellationToken,
    log: &mut ConnectionLog,
) -> Ended {
    // Room for every acknowledgement that can be pending (queued deliveries plus those
    // being journaled) and the SUBSCRIBE and DISCONNECT: `ack` never finds it full.
    let capacity = DELIVERY_QUEUE + MAX_IN_FLIGHT * MAX_BATCH + 16;
    let (requests, mut events) = match endpoint.open(capacity) {
        Ok(pair) => pair,
        Err(e) => {
            return Ended::Lost {
                error: e.to_string(),
            }
        }
    };
    // Connect (bounded by rumqttc's connection timeout; shutdown interrupts it).
    let session_present = loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            p = events.poll() => p,
        };
        match polled {
            Ok(Event::Connected { session_present }) => break session_present,
            Ok(_) => {}
            Err(f) => return Ended::Lost { error: f.message },
        }
    };
    sub.counters
        .connected
        .store(1, std::sync::atomic::Ordering::Relaxed);
    log.connected_at = Some(Instant::now());
    if !log.ever_connected {
        tracing::info!(session_present, topics = ?sub.config.topics, qos = sub.config.qos, protocol = endpoint.protocol, "MQTT subscription connected.");
    } else if log
        .last_reconnect_log
        .is_none_or(|t| t.elapsed() >= RECONNECT_LOG_INTERVAL)
    {
        log.last_reconnect_log = Some(Instant::now());
        tracing::info!(
            session_present,
            "MQTT subscription connected again; the broker redelivers what is unacknowledged (logged at most once a minute)."
        );
    } else {
        tracing::debug!(session_present, "MQTT subscription connected again.");
    }
    log.ever_connected = true;
    // Subscribing again on a resumed session is harmless and makes a changed `topics`
    // take effect (MQTT 5: retained messages only for new subscriptions).
    if requests
        .subscribe(&sub.config.topics, sub.config.qos)
        .is_err()
    {
        return Ended::Lost {
            error: "the connection closed before SUBSCRIBE".into(),
        };
    }

    // The event loop runs in its own task: polling it must never be cancelled halfway
    // (see the client module), and it must keep running while we wait for commits.
    let (to_journal, mut from_broker) = mpsc::channel::<FromBroker>(DELIVERY_QUEUE);
    let driver_kill = CancellationToken::new();
    let driver = tokio::spawn(drive(events, to_journal, driver_kill.clone()).in_current_span());

    let (to_acker, acks) = mpsc::channel(MAX_IN_FLIGHT);
    let refused = CancellationToken::new();
    let acker = tokio::spawn(
        acknowledge(
            acks,
            requests.clone(),
            sub.counters.clone(),
            refused.clone(),
        )
        .in_current_span(),
    );

    let fence = Fence::new();
    let source = endpoint.url.to_string();
    let ended = loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break Ended::Stopped,
            _ = refused.cancelled() => break Ended::Full,
            m = from_broker.recv() => m,
        };
        let mut batch = Vec::new();
        let mut failed = None;
        let mut next = first;
        loop {
            match next {
                None => {
                    failed = Some("the connection's event loop ended".to_owned());
                    break;
                }
                Some(FromBroker::Failed(e)) => {
                    failed = Some(e);
                    break;
                }
                Some(FromBroker::Subscribed { refused }) => {
                    if refused > 0 {
                        tracing::error!(refused, topics = ?sub.config.topics, "The broker refused some topic filters (not authorized?); their messages are not received.");
                    } else {
                        // Once per connection, i.e. once per outage: not a repeating line.
                        tracing::info!(
                            "MQTT subscription active: the broker confirmed every topic filter."
                        );
                    }
                }
                Some(FromBroker::Delivery(d)) => batch.push(d),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            match from_broker.try_recv() {
                Ok(m) => next = Some(m),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            if let Err(gone) = journal_batch(sub, &source, &fence, batch, &to_acker).await {
                break gone;
            }
        }
        if let Some(error) = failed {
            break Ended::Lost { error };
        }
    };

    match ended {
        Ended::Stopped => {
            // Let the acknowledgements of what was journaled go out, then say goodbye:
            // the broker keeps the session and the rest for the next start.
            drop(from_broker);
            drop(to_acker);
            let finish = async {
                let _ = acker.await;
                let _ = requests.disconnect();
                let _ = driver.await;
            };
            if tokio::time::timeout(STOP_DRAIN, finish).await.is_err() {
                tracing::warn!("MQTT subscription: the last acknowledgements were not written in time; the broker redelivers those messages.");
            }
            driver_kill.cancel();
        }
        _ => {
            // Dropping the connection without DISCONNECT: unacknowledged messages stay
            // queued in the session for the next connection.
            driver_kill.cancel();
            drop(to_acker);
            let _ = driver.await;
        }
    }
    ended
}

/// Polls the event loop, passing deliveries on, until it fails, our DISCONNECT is out,
/// or `kill`.
async fn drive(mut events: EventLoop, out: mpsc::Sender<FromBroker>, kill: CancellationToken) {
    // Once the journaling side is gone (shutdown), deliveries are dropped unacknowledged:
    // the broker keeps them. Polling goes on so the last acknowledgements are written.
    let mut open = true;
    loop {
        let polled = tokio::select! {
            _ = kill.cancelled() => return,
            p = events.poll() => p,
        };
        let message = match polled {
            Ok(Event::Delivered(d)) => FromBroker::Delivery(d),
            Ok(Event::Subscribed { refused }) => FromBroker::Subscribed { refused },
            Ok(Event::Disconnected) => return,
            Ok(_) => continue,
            Err(f) => FromBroker::Failed(f.message),
        };
        let failed = matches!(message, FromBroker::Failed(_));
        if open {
            tokio::select! {
                _ = kill.cancelled() => return,
                sent = out.send(message) => open = sent.is_ok(),
            }
        }
        if failed {
            return;
        }
    }
}

/// One journal request's deliveries: each with its index among the request's readings, or
/// `None` for one that is acknowledged without being journaled (loop, bad topic).
type AckPlan = (
    Option<oneshot::Receiver<Result<Appended, JournalError>>>,
    Vec<(Delivery, Option<usize>)>,
);

/// Turns deliveries into readings, submits them as one request and hands the plan to the
/// acknowledging task.
async fn journal_batch(
    sub: &Subscription,
    source: &str,
    fence: &Fence,
    batch: Vec<Delivery>,
    to_acker: &mpsc::Sender<AckPlan>,
) -> Result<(), Ended> {
    let now = now_ms();
    let mut readings = Vec::with_capacity(batch.len());
    let mut plan = Vec::with_capacity(batch.len());
    for d in batch {
        add(&sub.counters.received, 1);
        if d.gateway.as_deref() == Some(sub.gateway_id.as_str()) {
            add(&sub.counters.loop_dropped, 1);
            plan.push((d, None));
            continue;
        }
        let topic = match std::str::from_utf8(&d.topic) {
            Ok(t) if !t.is_empty() && !t.starts_with('$') && !t.contains(['+', '#', '\0']) => {
                t.to_owned()
            }
            _ => {
                add(&sub.counters.rejected_topic, 1);
                tracing::warn!(topic = %String::from_utf8_lossy(&d.topic), "Dropping a message with an unusable topic (not UTF-8, empty, wildcard or '$'); acknowledged so the broker does not resend it.");
                plan.push((d, None));
                continue;
            }
        };
        plan.push((d.clone(), Some(readings.len())));
        readings.push(Reading {
            ingest_ms: now,
            source_kind: SourceKind::MqttSubscription,
            source: source.to_owned(),
            topic,
            payload: d.payload,
            qos: d.qos,
            retain: d.retain,
        });
    }
    let commit = if readings.is_empty() {
        None
    } else {
        match sub
            .journal
            .submit_fenced(readings, Some(fence.clone()))
            .await
        {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::error!(error = %e, "Journal unavailable; MQTT subscription stops without acknowledging.");
                return Err(Ended::JournalGone);
            }
        }
    };
    if to_acker.send((commit, plan)).await.is_err() {
        return Err(Ended::JournalGone);
    }
    Ok(())
}

/// Awaits each request's commit in submit order and queues the acknowledgements of what it
/// holds, in arrival order. At the first refused reading it stops acknowledging and
/// cancels `refused`.
async fn acknowledge(
    mut plans: mpsc::Receiver<AckPlan>,
    requests: Requests,
    counters: Arc<MqttSubscribeCounters>,
    refused: CancellationToken,
) {
    let mut acking = true;
    while let Some((commit, plan)) = plans.recv().await {
        let accepted = match commit {
            None => usize::MAX,
            Some(rx) => match rx.await {
                Ok(Ok(a)) => a.accepted,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Journal commit failed; not acknowledging (the broker redelivers).");
                    acking = false;
                    0
                }
                Err(_) => {
                    acking = false;
                    0
                }
            },
        };
        for (delivery, index) in plan {
            let journaled = match index {
                Some(i) if i >= accepted => {
                    add(&counters.rejected_full, 1);
                    if acking {
                        acking = false;
                        refused.cancel();
                    }
                    continue;
                }
                Some(_) => true,
                None => false,
            };
            if acking {
                // A closed queue means the connection is gone: the broker redelivers.
                if requests.ack(&delivery).is_err() {
                    acking = false;
                    continue;
                }
                if journaled {
                    add(&counters.acknowledged, 1);
                }
            }
        }
    }
}

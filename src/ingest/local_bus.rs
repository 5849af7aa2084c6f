//! The local bus: committed readings fanned out to local MQTT subscribers through an
//! embedded, listener-less rumqttd router.
//!
//! This module owns three things:
//!
//! * the rumqttd router (`Broker::new` spawns its thread, `router-0`); it has **no network
//!   listeners** and is reached only through in-process links;
//! * the `local-bus` thread, which owns the one publishing link (`tidegate-ingest`) and moves
//!   readings from [`LocalBus::publish`]'s bounded queue into the router;
//! * one link per [`Subscription`], created by [`LocalBus::subscribe`].
//!
//! # Delivery is best effort, QoS 0
//!
//! The journal, not the bus, is the durable path: a reading reaches the bus only after its
//! journal commit, and nothing on the bus can hold back, slow down or lose a journaled
//! reading. In exchange the bus promises little:
//!
//! * [`LocalBus::publish`] never blocks. When its queue ([`MAX_QUEUED`]) is full because the
//!   `local-bus` thread or the router is behind, readings are dropped *for subscribers* and
//!   counted in [`LocalBus::dropped`].
//! * Subscribers get QoS 0. The router keeps, per filter, a log of at most
//!   [`SEGMENT_COUNT`] × [`SEGMENT_SIZE`] bytes (topic + payload); a subscriber that falls
//!   further behind silently skips to the oldest reading still held (rumqttd logs
//!   "Read cursor start jumped"). Such losses are not in [`LocalBus::dropped`].
//! * Within one filter readings arrive in publish order. A reading matching two filters of
//!   one subscription is delivered once per filter (rumqttd keeps one log per filter).
//!
//! # Retained readings
//!
//! The retain flag is passed to rumqttd, which keeps the last retained reading of each topic
//! (in memory, one per topic, until the process exits) and replays the matching ones to each
//! new filter with `retain = true`, at most [`MAX_READ`] of them per filter. Live readings
//! always arrive with `retain = false`, as MQTT requires. rumqttd also forgets a topic's
//! retained reading when *any* reading with an empty payload is published on it.
//!
//! # Limits
//!
//! No unsubscribe: a filter stays until its [`Subscription`] is dropped, which disconnects
//! the link. Filters must be valid MQTT filters not starting with `$` (no shared
//! subscriptions). rumqttd never frees a filter's log, so every distinct filter ever
//! subscribed costs up to its log size until the process exits, and its router thread
//! cannot be stopped: dropping the [`LocalBus`] ends subscriptions and the `local-bus`
//! thread, while `router-0` stays, idle, until exit.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{self, Disconnect, DisconnectReasonCode, Packet, Publish, Unsubscribe};
use rumqttd::{Broker, Config, Notification, RouterConfig};
use tokio_util::sync::CancellationToken;

/// Client id of the link the `local-bus` thread publishes on. Subscription links always
/// carry a `~n` suffix, so a device cannot take this id over.
pub const PUBLISHER_ID: &str = "tidegate-ingest";
/// Subscriptions [`LocalBus::start`] allows at once (one per device connection that
/// subscribes); [`LocalBus::start_with`] sets another limit.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;
/// Bytes (topic + payload + 4, as rumqttd counts them) per router log segment. Small,
/// because the journal is the durable log and gateways have little RAM.
pub const SEGMENT_SIZE: usize = 256 * 1024;
/// Segments a filter's log keeps; the oldest is dropped when a new one starts. Each held
/// reading also costs rumqttd ~230 bytes of bookkeeping plus its allocation, so a busy
/// filter of 120-byte readings holds ~3,500 of them in 2-3 MB.
pub const SEGMENT_COUNT: usize = 2;
/// Readings the router hands a subscriber per read (rumqttd's
/// `max_outgoing_packet_count`); also the most retained readings a new filter replays.
pub const MAX_READ: u64 = 256;
/// Readings [`LocalBus::publish`] queues for the `local-bus` thread before dropping
/// (about 20 ms at 200k readings/s).
pub const MAX_QUEUED: usize = 4096;
/// Topic + payload bytes queued for the `local-bus` thread before dropping.
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;
/// Readings handed to the router but not yet taken by it; above this the router is
/// behind and the `local-bus` thread waits for it, so readings pile up in (and overflow
/// from) the [`MAX_QUEUED`] queue instead. Each costs rumqttd a 392-byte `Packet` in two
/// buffers that keep their peak size.
pub const ROUTER_BACKLOG: usize = 2048;
/// Readings the `local-bus` thread hands the router per wake-up (one `DeviceData` event).
const CHUNK: usize = 256;
/// How soon the `local-bus` thread first looks whether a backlogged router has caught up;
/// the wait doubles up to [`ROUTER_POLL_MAX`].
const ROUTER_POLL: Duration = Duration::from_micros(100);
const ROUTER_POLL_MAX: Duration = Duration::from_millis(10);
/// A router backlogged this long is checked for being alive at all.
const ROUTER_STALL: Duration = Duration::from_secs(1);

/// Why the bus could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The rumqttd router thread could not be started.
    #[error("cannot start the local bus router: {0}")]
    Router(String),
    /// The `local-bus` thread could not be spawned.
    #[error("cannot spawn the local-bus thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// rumqttd refused or lost a local link (boxed: rumqttd's error holds the event it
    /// could not send, ~800 bytes).
    #[error("local bus link failed: {0}")]
    Link(#[source] Box<LinkError>),
    /// The bus was dropped, or its router thread died.
    #[error("the local bus has stopped")]
    Stopped,
    /// Every subscription slot is in use.
    #[error("the local bus already has its maximum of {max} subscriptions")]
    TooManySubscriptions { max: usize },
}

/// The embedded router and the `local-bus` thread that feeds it. One per process.
pub struct LocalBus {
    /// Creates subscription links (`Broker::link` blocks briefly on the router thread).
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    /// Cancelled when the bus is dropped or stops: every [`Subscription::next`] ends.
    stop: CancellationToken,
    max_subscriptions: usize,
}

/// State shared by the publishers, the `local-bus` thread and the subscriptions.
struct Shared {
    state: Mutex<State>,
    /// Wakes the `local-bus` thread when work arrives in an empty `state`.
    work: Condvar,
    /// Readings not handed to the router (see [`LocalBus::dropped`]).
    dropped: AtomicU64,
    /// Set once the router or the `local-bus` thread is gone; publishing then only counts.
    stopped: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Topics and payloads of `queued`, back to back. Copying them here, rather than
    /// keeping the caller's `Bytes`, costs a memcpy and never pins the socket read buffer
    /// a payload was sliced from.
    bytes: Vec<u8>,
    queued: Vec<Queued>,
    /// Links of dropped subscriptions, for the thread to disconnect.
    closing: Vec<Closing>,
    /// Link-id suffixes in use per (sanitized) client id; a dropped subscription's suffix is
    /// reused, so rumqttd's per-client-id bookkeeping (it keeps a little for every id it
    /// has seen) stays bounded by the devices, not by their reconnections.
    suffixes: HashMap<String, Vec<u32>>,
    /// Subscription links the router may still count (released after their DISCONNECT).
    links: usize,
    /// The [`LocalBus`] was dropped: the thread ends once every subscription has closed.
    shutdown: bool,
}

/// A reading waiting for the `local-bus` thread: its topic is `State::bytes[start..topic_end]`
/// and its payload `[topic_end..end]`, `start` being the previous reading's `end`.
struct Queued {
    topic_end: usize,
    end: usize,
    retain: bool,
}

/// A dropped subscription's link, to disconnect, and its suffix to free afterwards.
struct Closing {
    tx: Arc<Mutex<LinkTx>>,
    client: String,
    suffix: u32,
}

fn link_error(e: LinkError) -> BusError {
    BusError::Link(Box::new(e))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalBus {
    /// Starts the router thread (`router-0`), its publishing link and the `local-bus`
    /// thread, allowing [`DEFAULT_MAX_SUBSCRIPTIONS`] subscriptions.
    pub fn start() -> Result<LocalBus, BusError> {
        Self::start_with(DEFAULT_MAX_SUBSCRIPTIONS)
    }

    /// [`LocalBus::start`] with room for `max_subscriptions` subscriptions at once
    /// (rumqttd sizes its connection tables for that many up front).
    pub fn start_with(max_subscriptions: usize) -> Result<LocalBus, BusError> {
        let max_subscriptions = max_subscriptions.clamp(1, u16::MAX as usize);
        let config = Config {
            router: RouterConfig {
                // rumqttd refuses every connection when this is 0 (its default); +1 for
                // the publishing link.
                max_connections: max_subscriptions + 1,
                max_outgoing_packet_count: MAX_READ,
                max_segment_size: SEGMENT_SIZE,
                max_segment_count: SEGMENT_COUNT,
                ..RouterConfig::default()
            },
            // No v4/v5/ws listeners, console, bridge or metrics: local links only.
            ..Config::default()
        };
        // `Broker::new` spawns the router thread and unwraps the spawn; `Broker::start`
        // is not called: it only starts listeners and errors when there are none.
        let broker = catch_unwind(AssertUnwindSafe(|| Broker::new(config))).map_err(|p| {
            BusError::Router(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "router thread panicked on start".to_owned()),
            )
        })?;
        let (tx, rx) = broker.link(PUBLISHER_ID).map_err(link_error)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("local-bus".to_owned())
                .spawn(move || feed_router(shared, stop, tx, rx))
                .map_err(BusError::Spawn)?
        };
        drop(thread); // detached: it outlives the bus until the last subscription closes
        Ok(LocalBus {
            broker: Arc::new(broker),
            shared,
            stop,
            max_subscriptions,
        })
    }

    /// Hands committed readings to the router for local subscribers. Never blocks the caller
    /// (the listener calls it from its ack path); if the router is behind, readings are
    /// dropped for subscribers and counted (`dropped()`), never for the journal.
    ///
    /// Costs one short lock and a copy of topic and payload; prefer
    /// [`LocalBus::publish_batch`] for several readings.
    pub fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        self.publish_batch(std::iter::once((topic, payload, retain)));
    }

    /// [`LocalBus::publish`] for many readings under one lock. The iterator runs while
    /// the queue is locked, so it should only yield readings already at hand.
    pub fn publish_batch<T: AsRef<str>>(
        &self,
        readings: impl IntoIterator<Item = (T, Bytes, bool)>,
    ) {
        let mut dropped = 0u64;
        let mut queued_any = false;
        let stopped = self.shared.stopped.load(Ordering::Relaxed);
        let mut st = lock(&self.shared.state);
        let was_empty = st.queued.is_empty();
        for (topic, payload, retain) in readings {
            let topic = topic.as_ref();
            if stopped
                || !routable(topic)
                || st.queued.len() >= MAX_QUEUED
                || st.bytes.len() + topic.len() + payload.len() > MAX_QUEUED_BYTES
            {
                dropped += 1;
                continue;
            }
            st.bytes.extend_from_slice(topic.as_bytes());
            let topic_end = st.bytes.len();
            st.bytes.extend_from_slice(&payload);
            let end = st.bytes.len();
            st.queued.push(Queued {
                topic_end,
                end,
                retain,
            });
            queued_any = true;
        }
        drop(st);
        if was_empty && queued_any {
            self.shared.work.notify_one();
        }
        if dropped > 0 {
            self.shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Readings not handed to the router since start: queue full (the `local-bus` thread
    /// or the router behind), bus stopped, or a topic rumqttd cannot route (one starting
    /// with a non-ASCII character would panic its matcher). Readings a slow subscriber
    /// skips inside the router are not counted here.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// A subscription for one device connection (client id used for the link, suffixed to
    /// be unique).
    ///
    /// The link id is `client_id` with `+ $ # /` replaced by `_`, then `~n`, `n` being the
    /// smallest suffix that id has free. Add filters with [`Subscription::add_filter`].
    pub async fn subscribe(&self, client_id: &str) -> Result<Subscription, BusError> {
        if self.stop.is_cancelled() || self.shared.stopped.load(Ordering::Relaxed) {
            return Err(BusError::Stopped);
        }
        let reservation = self.reserve(client_id)?;
        let broker = self.broker.clone();
        let stop = self.stop.clone();
        // `Broker::link` does a blocking send and waits for the router's CONNACK. Building
        // the Subscription inside the task means a cancelled caller still drops (and so
        // disconnects) the link.
        tokio::task::spawn_blocking(move || {
            let mut slot = reservation;
            let (tx, rx) = broker.link(&slot.link_id).map_err(link_error)?;
            let tx = Arc::new(Mutex::new(tx));
            slot.linked = Some(tx.clone());
            Ok(Subscription {
                link_id: slot.link_id.clone(),
                _slot: slot,
                tx,
                rx,
                inbox: VecDeque::new(),
                pending_subacks: 0,
                needs_wake: false,
                stop,
            })
        })
        .await
        .map_err(|_| BusError::Stopped)?
    }

    /// Takes a subscription slot and a link-id suffix, released when the returned value
    /// is dropped (after disconnecting, once it belongs to a [`Subscription`]).
    fn reserve(&self, client_id: &str) -> Result<Reservation, BusError> {
        let client: String = client_id
            .chars()
            .map(|c| {
                if matches!(c, '+' | '$' | '#' | '/') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let mut st = lock(&self.shared.state);
        if st.links >= self.max_subscriptions {
            return Err(BusError::TooManySubscriptions {
                max: self.max_subscriptions,
            });
        }
        let used = st.suffixes.entry(client.clone()).or_default();
        let suffix = (0u32..).find(|n| !used.contains(n)).unwrap_or(u32::MAX);
        used.push(suffix);
        st.links += 1;
        Ok(Reservation {
            link_id: format!("{client}~{suffix}"),
            client,
            suffix,
            shared: self.shared.clone(),
            linked: None,
        })
    }
}

impl Drop for LocalBus {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_one();
        self.stop.cancel();
    }
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("dropped", &self.dropped())
            .field("max_subscriptions", &self.max_subscriptions)
            .finish_non_exhaustive()
    }
}

/// A subscription slot: freed on drop, directly if no link was made, else by the
/// `local-bus` thread after it has disconnected the link.
struct Reservation {
    link_id: String,
    client: String,
    suffix: u32,
    shared: Arc<Shared>,
    /// The link to disconnect, once there is one.
    linked: Option<Arc<Mutex<LinkTx>>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        match self.linked.take() {
            Some(tx) => st.closing.push(Closing {
                tx,
                client: std::mem::take(&mut self.client),
                suffix: self.suffix,
            }),
            None => release(&mut st, &self.client, self.suffix),
        }
        drop(st);
        // Either way the thread has work, or may now end after a shutdown.
        self.shared.work.notify_one();
    }
}

fn release(st: &mut State, client: &str, suffix: u32) {
    st.links = st.links.saturating_sub(1);
    if let Some(used) = st.suffixes.get_mut(client) {
        used.retain(|&n| n != suffix);
        if used.is_empty() {
            st.suffixes.remove(client);
        }
    }
}

/// One device connection's view of the bus: its filters and the readings matching them.
/// Dropping it disconnects its link.
pub struct Subscription {
    link_id: String,
    /// Disconnects the link and frees the slot on drop.
    _slot: Reservation,
    /// Shared with the blocking task of [`Subscription::add_filter`] and, after drop, with
    /// the `local-bus` thread.
    tx: Arc<Mutex<LinkTx>>,
    rx: LinkRx,
    /// Readings taken from the link but not yet returned by `next`.
    inbox: VecDeque<(String, Bytes, bool)>,
    /// SUBSCRIBEs sent whose SUBACK has not arrived.
    pending_subacks: usize,
    /// The router parked this link (`Notification::Unschedule`) and has not been told
    /// it may send more; kept across a cancelled `wake`.
    needs_wake: bool,
    stop: CancellationToken,
}

impl Subscription {
    /// Adds a filter (MQTT wildcards + and #). Returns false if the filter is invalid.
    ///
    /// Invalid: empty, `#` not alone as the last level, `+` not alone in its level, NUL,
    /// over 65535 bytes, or starting with `$` (system topics and shared subscriptions are
    /// not offered). Returns once the router has the filter, so every reading published
    /// afterwards is matched against it.
    pub async fn add_filter(&mut self, filter: &str) -> Result<bool, BusError> {
        if !valid_filter(filter) {
            return Ok(false);
        }
        if self.stop.is_cancelled() {
            return Err(BusError::Stopped);
        }
        let tx = self.tx.clone();
        let filter = filter.to_owned();
        // `LinkTx::subscribe` does a blocking send to the router's channel.
        tokio::task::spawn_blocking(move || lock(&tx).subscribe(filter).map_err(link_error))
            .await
            .map_err(|_| BusError::Stopped)??;
        self.pending_subacks += 1;
        while self.pending_subacks > 0 {
            self.pump().await?;
        }
        Ok(true)
    }

    /// Next message for this subscriber: (topic, payload, retain). None when the bus stopped.
    pub async fn next(&mut self) -> Option<(String, Bytes, bool)> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Some(m);
            }
            self.pump().await.ok()?;
        }
    }

    /// The link's client id, as rumqttd logs it.
    pub fn link_id(&self) -> &str {
        &self.link_id
    }

    /// Takes one notification from the router and acts on it.
    async fn pump(&mut self) -> Result<(), BusError> {
        if self.needs_wake {
            // The router paused this link when its buffer filled; it resumes on `Ready`,
            // which must be sent exactly once per `Unschedule`.
            self.rx.wake().await.map_err(|_| BusError::Stopped)?;
            self.needs_wake = false;
        }
        let notification = tokio::select! {
            _ = self.stop.cancelled() => return Err(BusError::Stopped),
            n = self.rx.next() => n.map_err(|_| BusError::Stopped)?,
        };
        match notification {
            None => {}
            Some(Notification::Forward(forward)) => {
                let publish = forward.publish;
                if let Ok(topic) = String::from_utf8(publish.topic.to_vec()) {
                    self.inbox
                        .push_back((topic, publish.payload, publish.retain));
                }
            }
            Some(Notification::Unschedule) => {
                self.needs_wake = true;
                self.rx.wake().await.map_err(|_| BusError::Stopped)?;
                self.needs_wake = false;
            }
            Some(Notification::Disconnect(..)) => return Err(BusError::Stopped),
            Some(n @ Notification::DeviceAck(_)) => {
                if let Some(Packet::SubAck(..)) = Option::<Packet>::from(n) {
                    self.pending_subacks = self.pending_subacks.saturating_sub(1);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("link_id", &self.link_id)
            .field("buffered", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

/// MQTT filter syntax, plus tidegate's refusals (`$`, NUL). rumqttd itself accepts
/// `a/#/b` and disconnects the link on a `$` filter, so both are checked here.
fn valid_filter(filter: &str) -> bool {
    !filter.is_empty()
        && filter.len() <= u16::MAX as usize
        && !filter.starts_with('$')
        && !filter.contains('\0')
        && protocol::valid_filter(filter)
}

/// Whether rumqttd can route a topic: its matcher slices the first byte as a `str`, which
/// panics the router thread on a topic starting with a multi-byte character.
fn routable(topic: &str) -> bool {
    topic.as_bytes().first().is_some_and(u8::is_ascii)
}

/// The `local-bus` thread: moves queued readings into the router and disconnects the links
/// of dropped subscriptions, until the bus is dropped and the last subscription closed.
fn feed_router(shared: Arc<Shared>, stop: CancellationToken, mut tx: LinkTx, _rx: LinkRx) {
    /// Marks the bus stopped however the thread ends, so nobody waits on it.
    struct Exit(Arc<Shared>, CancellationToken);
    impl Drop for Exit {
        fn drop(&mut self) {
            self.0.stopped.store(true, Ordering::Relaxed);
            self.1.cancel();
        }
    }
    let _exit = Exit(shared.clone(), stop.clone());
    // The router thread is gone (it panicked): publishing only counts from now on, and
    // subscribers' `next` ends.
    let router_died = || {
        shared.stopped.store(true, Ordering::Relaxed);
        stop.cancel();
    };

    let mut bytes = Vec::new();
    let mut queued = Vec::new();
    let mut closing = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut backoff = ROUTER_POLL;
    let mut waited = Duration::ZERO;
    loop {
        {
            let mut st = lock(&shared.state);
            while st.queued.is_empty() && st.closing.is_empty() {
                if st.shutdown && st.links == 0 {
                    disconnect(&mut tx);
                    return;
                }
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            // Swap, so both sides keep their allocations.
            std::mem::swap(&mut st.bytes, &mut bytes);
            std::mem::swap(&mut st.queued, &mut queued);
            std::mem::swap(&mut st.closing, &mut closing);
        }

        for c in closing.drain(..) {
            disconnect(&mut lock(&c.tx));
            release(&mut lock(&shared.state), &c.client, c.suffix);
        }

        let mut start = 0;
        let mut readings = queued.drain(..).map(|q| {
            let topic = &bytes[start..q.topic_end];
            let payload = &bytes[q.topic_end..q.end];
            start = q.end;
            Packet::Publish(compact(topic, payload, q.retain), None)
        });
        while readings.len() > 0 {
            if shared.stopped.load(Ordering::Relaxed) {
                shared
                    .dropped
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
                break;
            }
            if tx.buffer().len() >= ROUTER_BACKLOG {
                // The router has not taken the previous chunks yet. Wait for it (rumqttd
                // offers no signal for that): meanwhile `publish` queues, and drops once
                // its queue is full, so only a lasting overload loses readings.
                std::thread::sleep(backoff);
                waited += backoff;
                backoff = (backoff * 2).min(ROUTER_POLL_MAX);
                if waited >= ROUTER_STALL {
                    waited = Duration::ZERO;
                    if !probe(&mut tx) {
                        router_died();
                    }
                }
                continue;
            }
            backoff = ROUTER_POLL;
            waited = Duration::ZERO;
            // Built before taking the buffer's lock, which the router swaps it under.
            chunk.extend(readings.by_ref().take(CHUNK));
            let n = chunk.len();
            if !send(&mut tx, &mut chunk) {
                shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                router_died();
            }
        }
        drop(readings);
        bytes.clear();
    }
}

/// A publish whose topic and payload share one allocation of exactly their size. Kept by
/// the router's log (possibly for hours, on a rarely matching filter), a reading must not
/// hold a larger buffer alive.
fn compact(topic: &[u8], payload: &[u8], retain: bool) -> Publish {
    let mut buf = Vec::with_capacity(topic.len() + payload.len());
    buf.extend_from_slice(topic);
    buf.extend_from_slice(payload);
    let buf = Bytes::from(buf);
    Publish::new(buf.slice(..topic.len()), buf.slice(topic.len()..), retain)
}

/// Moves `packets` into the link's buffer and tells the router once. False if the router
/// is gone.
fn send(tx: &mut LinkTx, packets: &mut Vec<Packet>) -> bool {
    let Some(last) = packets.pop() else {
        return true;
    };
    tx.buffer().extend(packets.drain(..));
    // `LinkTx::send` pushes `last` and sends one `DeviceData` event; it has no await
    // point (the channel send inside blocks, which only this thread minds), so it
    // completes on the first poll.
    matches!(tx.send(last).now_or_never(), Some(Ok(_)))
}

/// Whether the router thread still takes events: sends it an UNSUBSCRIBE without filters,
/// which it ignores.
fn probe(tx: &mut LinkTx) -> bool {
    let packet = Packet::Unsubscribe(
        Unsubscribe {
            pkid: 0,
            filters: Vec::new(),
        },
        None,
    );
    matches!(tx.send(packet).now_or_never(), Some(Ok(_)))
}

/// Sends DISCONNECT on a link, so the router frees its connection and subscriptions.
fn disconnect(tx: &mut LinkTx) {
    let packet = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    let _ = tx.send(packet).now_or_never();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(5);

    async fn next(sub: &mut Subscription) -> (String, Bytes, bool) {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a reading within 5 s")
            .expect("bus running")
    }

    /// Waits until the `local-bus` thread has taken everything queued, then a little for
    /// the router.
    async fn settle(bus: &LocalBus) {
        let deadline = Instant::now() + WAIT;
        while !lock(&bus.shared.state).queued.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[test]
    fn the_bus_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        fn sendable<T: Send>() {}
        shared::<LocalBus>();
        sendable::<Subscription>();
    }

    #[tokio::test]
    async fn a_subscriber_receives_matching_readings_in_order_and_no_others() {
        let bus = LocalBus::start().expect("bus");
        let mut sub = bus.subscribe("dashboard").await.expect("subscribe");
        assert!(sub
            .add_filter("turbines/+/telemetry")
            .await
            .expect("filter"));

        for i in 0..1000u32 {
            let wt = i % 3;
            bus.publish(
                &format!("turbines/wt-{wt}/telemetry"),
                Bytes::from(i.to_string()),
                false,
            );
            bus.publish(&format!("turbines/wt-{wt}/status"), Bytes::from("x"), false);
        }
        bus.publish("other/topic", Bytes::from("no"), false);
        bus.publish("turbines/wt-9/telemetry", Bytes::from("end"), false);

        for i in 0..1000u32 {
            let (topic, payload, retain) = next(&mut sub).await;
            assert_eq!(topic, format!("turbines/wt-{}/telemetry", i % 3));
            assert_eq!(payload, Bytes::from(i.to_string()));
            assert!(!retain);
        }
        let (topic, payload, _) = next(&mut sub).await;
        assert_eq!(
            (topic.as_str(), &payload[..]),
            ("turbines/wt-9/telemetry", &b"end"[..])
        );
        assert_eq!(bus.dropped(), 0);
    }

    #[tokio::test]
    async fn two_subscribers_both_receive_and_hash_matches_every_topic() {
        let bus = LocalBus::start().expect("bus");
        let mut a = bus.subscribe("a").await.expect("subscribe");
        let mut b = bus.subscribe("b").await.expect("subscribe");
        assert!(a.add_filter("turbines/+/telemetry").await.expect("filter"));
        assert!(b.add_filter("#").await.expect("filter"));

        bus.publish_batch([
            ("turbines/wt-1/telemetry", Bytes::from("t1"), false),
            ("site/meter", Bytes::from("m1"), false),
            ("turbines/wt-2/telemetry", Bytes::from("t2"), false),
        ]);

        assert_eq!(next(&mut a).await.1, Bytes::from("t1"));
        assert_eq!(next(&mut a).await.1, Bytes::from("t2"));
        let got: Vec<_> = [next(&mut b).await, next(&mut b).await, next(&mut b).await]
            .into_iter()
            .map(|(t, p, _)| (t, p))
            .collect();
        assert_eq!(
            got,
            vec![
                ("turbines/wt-1/telemetry".to_owned(), Bytes::from("t1")),
                ("site/meter".to_owned(), Bytes::from("m1")),
                ("turbines/wt-2/telemetry".to_owned(), Bytes::from("t2")),
            ]
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_never_reads_does_not_block_publish() {
        let bus = LocalBus::start().expect("bus");
        let mut idle = bus.subscribe("idle").await.expect("subscribe");
        assert!(idle.add_filter("#").await.expect("filter"));
        let mut reader = bus.subscribe("reader").await.expect("subscribe");
        assert!(reader
            .add_filter("turbines/+/telemetry")
            .await
            .expect("filter"));

        let payload = Bytes::from(vec![7u8; 64]);
        let started = Instant::now();
        let flood = async {
            for _ in 0..100_000 {
                bus.publish("turbines/wt-1/telemetry", payload.clone(), false);
            }
        };
        tokio::time::timeout(Duration::from_secs(2), flood)
            .await
            .expect("100k publishes within 2 s");
        eprintln!(
            "100k publishes with an idle subscriber: {:?}, dropped {}",
            started.elapsed(),
            bus.dropped()
        );

        settle(&bus).await;
        let dropped = bus.dropped();
        for i in 0..10u32 {
            bus.publish("turbines/wt-2/telemetry", Bytes::from(i.to_string()), false);
        }
        // The reader skips whatever of the flood it missed and gets the later readings.
        let mut later = Vec::new();
        let deadline = Instant::now() + WAIT;
        while later.len() < 10 && Instant::now() < deadline {
            let (topic, payload, _) = next(&mut reader).await;
            if topic == "turbines/wt-2/telemetry" {
                later.push(payload);
            }
        }
        let expected: Vec<_> = (0..10u32).map(|i| Bytes::from(i.to_string())).collect();
        assert_eq!(later, expected);
        assert_eq!(bus.dropped(), dropped, "later readings were not dropped");
        drop(idle);
    }

    #[tokio::test]
    async fn an_invalid_filter_is_refused_and_the_subscription_keeps_working() {
        let bus = LocalBus::start().expect("bus");
        let mut sub = bus
            .subscribe("dev/with+odd#chars$")
            .await
            .expect("subscribe");
        assert_eq!(sub.link_id(), "dev_with_odd_chars_~0");
        for bad in ["a/#/b", "a/b#", "a+/b", "", "$SYS/#", "$share/g/a", "a/\0"] {
            assert!(!sub.add_filter(bad).await.expect("no error"), "{bad:?}");
        }
        assert!(sub.add_filter("a/+").await.expect("filter"));
        bus.publish("a/b", Bytes::from("ok"), false);
        assert_eq!(next(&mut sub).await.1, Bytes::from("ok"));
    }

    #[tokio::test]
    async fn a_topic_starting_with_a_multibyte_character_is_dropped_not_routed() {
        let bus = LocalBus::start().expect("bus");
        let mut sub = bus.subscribe("s").await.expect("subscribe");
        assert!(sub.add_filter("#").await.expect("filter"));
        // rumqttd's matcher would panic the router thread on this topic.
        bus.publish("é/temp", Bytes::from("x"), false);
        bus.publish("a/é", Bytes::from("fine"), false);
        assert_eq!(bus.dropped(), 1);
        let (topic, payload, _) = next(&mut sub).await;
        assert_eq!((topic.as_str(), &payload[..]), ("a/é", &b"fine"[..]));
    }

    #[tokio::test]
    async fn a_retained_reading_is_replayed_to_a_later_subscriber() {
        let bus = LocalBus::start().expect("bus");
        let mut early = bus.subscribe("early").await.expect("subscribe");
        assert!(early.add_filter("site/+").await.expect("filter"));
        bus.publish("site/meter", Bytes::from("42"), true);
        // Live delivery carries retain = false.
        assert_eq!(
            next(&mut early).await,
            ("site/meter".into(), Bytes::from("42"), false)
        );

        let mut late = bus.subscribe("late").await.expect("subscribe");
        assert!(late.add_filter("site/#").await.expect("filter"));
        assert_eq!(
            next(&mut late).await,
            ("site/meter".into(), Bytes::from("42"), true)
        );
    }

    #[tokio::test]
    async fn dropped_subscriptions_free_their_router_connection_and_link_id() {
        let bus = LocalBus::start_with(2).expect("bus");
        let _keep = bus.subscribe("dev").await.expect("first");
        let second = bus.subscribe("dev").await.expect("second");
        assert_eq!(second.link_id(), "dev~1", "a live id is not reused");
        assert!(matches!(
            bus.subscribe("other").await,
            Err(BusError::TooManySubscriptions { max: 2 })
        ));
        drop(second);
        // Distinct client ids: the router (max_connections = 2 + publisher) refuses the
        // link unless each dropped subscription was really disconnected.
        for i in 0..5 {
            let mut sub = subscribe_when_free(&bus, &format!("dev-{i}")).await;
            assert_eq!(sub.link_id(), format!("dev-{i}~0"));
            assert!(sub.add_filter("x").await.expect("filter"));
        }
        let again = subscribe_when_free(&bus, "dev").await;
        assert_eq!(again.link_id(), "dev~1", "a freed suffix is reused");
    }

    /// Subscribes, waiting for a slot: a dropped subscription's slot returns once the
    /// local-bus thread has disconnected its link.
    async fn subscribe_when_free(bus: &LocalBus, client_id: &str) -> Subscription {
        let deadline = Instant::now() + WAIT;
        loop {
            match bus.subscribe(client_id).await {
                Ok(sub) => return sub,
                Err(BusError::TooManySubscriptions { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => panic!("subscribing {client_id}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn next_returns_none_once_the_bus_is_dropped() {
        let bus = LocalBus::start().expect("bus");
        let mut sub = bus.subscribe("s").await.expect("subscribe");
        assert!(sub.add_filter("#").await.expect("filter"));
        drop(bus);
        let end = tokio::time::timeout(WAIT, sub.next()).await.expect("ends");
        assert!(end.is_none());
        assert!(matches!(sub.add_filter("a").await, Err(BusError::Stopped)));
    }

    fn vm_rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Prints publish cost and throughput, with and without a reading subscriber, and the
    /// RSS the bus costs. Run alone, in release:
    /// `cargo test --release -p tidegate --lib local_bus::tests::throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; prints, asserts nothing about speed"]
    async fn throughput_and_memory() {
        const N: usize = 200_000;
        let queued = |bus: &LocalBus| lock(&bus.shared.state).queued.len();
        let rss0 = vm_rss_kib();
        let bus = LocalBus::start().expect("bus");
        let rss_started = vm_rss_kib();
        let topics: Vec<String> = (0..500)
            .map(|i| format!("turbines/wt-{i}/telemetry"))
            .collect();
        let payload = Bytes::from(vec![b'x'; 120]);

        // A. Caller-side cost of accepted publishes: bursts below MAX_QUEUED, timing only
        // the calls.
        for batch in [1usize, 64] {
            let d0 = bus.dropped();
            let mut spent = Duration::ZERO;
            let mut i = 0;
            while i < N {
                let t = Instant::now();
                let burst_end = (i + 2048).min(N);
                while i < burst_end {
                    let end = (i + batch).min(burst_end);
                    bus.publish_batch(
                        (i..end).map(|j| (topics[j % 500].as_str(), payload.clone(), false)),
                    );
                    i = end;
                }
                spent += t.elapsed();
                while queued(&bus) > 0 {
                    tokio::task::yield_now().await;
                }
            }
            eprintln!(
                "A. caller cost, batch {batch}: {:.0} ns/reading ({:.1} M readings/s of caller time), dropped {}",
                spent.as_nanos() as f64 / N as f64,
                N as f64 / spent.as_secs_f64() / 1e6,
                bus.dropped() - d0
            );
        }

        // B/C. Sustained: publish as fast as the bus takes readings (pausing while the
        // queue is over half full), until all are in the router / received.
        async fn paced(bus: &LocalBus, topics: &[String], payload: &Bytes, batch: usize) {
            let mut i = 0;
            while i < N {
                while lock(&bus.shared.state).queued.len() > MAX_QUEUED / 2 {
                    tokio::task::yield_now().await;
                }
                let end = (i + batch).min(N);
                bus.publish_batch(
                    (i..end).map(|j| (topics[j % 500].as_str(), payload.clone(), false)),
                );
                i = end;
            }
        }
        for batch in [1usize, 64] {
            let d0 = bus.dropped();
            let t = Instant::now();
            paced(&bus, &topics, &payload, batch).await;
            while queued(&bus) > 0 {
                tokio::task::yield_now().await;
            }
            eprintln!(
                "B. sustained, no subscriber, batch {batch}: {:.0} readings/s into the router, dropped {}",
                N as f64 / t.elapsed().as_secs_f64(),
                bus.dropped() - d0
            );
        }
        let rss_no_sub = vm_rss_kib();

        // C. One subscriber on `#` reading as fast as it can, readings published at a
        // fixed rate (a batch every millisecond) for one second.
        let mut sub = bus.subscribe("bench").await.expect("subscribe");
        assert!(sub.add_filter("#").await.expect("filter"));
        for rate in [100_000usize, 200_000, 400_000] {
            let reader = tokio::spawn(async move {
                let mut n = 0usize;
                while let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(300), sub.next()).await
                {
                    if m.0 == "end" {
                        break;
                    }
                    n += 1;
                }
                (sub, n)
            });
            let d0 = bus.dropped();
            let per_ms = rate / 1000;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let t = Instant::now();
            for ms in 0..1000 {
                tick.tick().await;
                bus.publish_batch((0..per_ms).map(|j| {
                    (
                        topics[(ms * per_ms + j) % 500].as_str(),
                        payload.clone(),
                        false,
                    )
                }));
            }
            let took = t.elapsed();
            bus.publish("end", Bytes::new(), false);
            let (s, received) = reader.await.expect("reader");
            sub = s;
            eprintln!(
                "C. one subscriber on #, {rate} readings/s offered ({:.0}/s achieved): \
                 received {received} of {rate}, dropped {}",
                rate as f64 / took.as_secs_f64(),
                bus.dropped() - d0
            );
        }
        let rss_end = vm_rss_kib();
        eprintln!(
            "VmRSS KiB: before start {rss0:?}, after start {rss_started:?}, \
             after 4 x {N} readings without subscriber {rss_no_sub:?}, \
             after 700k more with one subscriber {rss_end:?}"
        );
    }

    /// Publishes 200k readings at 200k/s (a batch of 200 per millisecond, 500 topics,
    /// 120-byte payloads) and prints the process's VmRSS before and after.
    async fn rss_for_200k_readings(with_subscriber: bool) {
        let rss0 = vm_rss_kib();
        let bus = LocalBus::start().expect("bus");
        let rss_started = vm_rss_kib();
        let topics: Vec<String> = (0..500)
            .map(|i| format!("turbines/wt-{i}/telemetry"))
            .collect();
        let payload = Bytes::from(vec![b'x'; 120]);
        let reader = if with_subscriber {
            let mut sub = bus.subscribe("rss").await.expect("subscribe");
            assert!(sub.add_filter("turbines/#").await.expect("filter"));
            Some(tokio::spawn(async move {
                let mut n = 0usize;
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(300), sub.next()).await
                {
                    n += 1;
                }
                n
            }))
        } else {
            None
        };
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for ms in 0..1000 {
            tick.tick().await;
            bus.publish_batch((0..200).map(|j| {
                (
                    topics[(ms * 200 + j) % 500].as_str(),
                    payload.clone(),
                    false,
                )
            }));
        }
        let received = match reader {
            Some(r) => r.await.expect("reader"),
            None => {
                settle(&bus).await;
                0
            }
        };
        let rss_end = vm_rss_kib();
        eprintln!(
            "subscriber: {with_subscriber}, received {received}, dropped {}; VmRSS KiB before start \
             {rss0:?}, after start {rss_started:?}, after 200k readings {rss_end:?}",
            bus.dropped()
        );
    }

    /// `cargo test --release -p tidegate --lib local_bus::tests::rss_200k_readings_without -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; run alone"]
    async fn rss_200k_readings_without_subscriber() {
        rss_for_200k_readings(false).await;
    }

    /// `cargo test --release -p tidegate --lib local_bus::tests::rss_200k_readings_with -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement; run alone"]
    async fn rss_200k_readings_with_a_subscriber() {
        rss_for_200k_readings(true).await;
    }
}

//! The local bus: committed readings fanned out to local MQTT subscribers through an
//! embedded, listener-less rumqttd router. This file owns the router's setup and the
//! [`LocalBus`] handle (publishing into its queue, opening subscriptions); the
//! `local-bus` thread is in [`feeder`], a subscriber's link in [`subscription`].
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

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkError, LinkTx};
use rumqttd::{Broker, Config, RouterConfig};
use tokio_util::sync::CancellationToken;

mod feeder;
mod subscription;
#[cfg(test)]
mod tests;

use subscription::Reservation;
pub use subscription::Subscription;

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

impl State {
    /// Frees a subscription's slot and link-id suffix.
    fn release(&mut self, client: &str, suffix: u32) {
        self.links = self.links.saturating_sub(1);
        if let Some(used) = self.suffixes.get_mut(client) {
            used.retain(|&n| n != suffix);
            if used.is_empty() {
                self.suffixes.remove(client);
            }
        }
    }
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
                .spawn(move || feeder::feed_router(shared, stop, tx, rx))
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
            let (tx, rx) = broker.link(&reservation.link_id).map_err(link_error)?;
            Ok(Subscription::new(reservation, tx, rx, stop))
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
        Ok(Reservation::new(client, suffix, self.shared.clone()))
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

/// Whether rumqttd can route a topic: its matcher slices the first byte as a `str`, which
/// panics the router thread on a topic starting with a multi-byte character.
fn routable(topic: &str) -> bool {
    topic.as_bytes().first().is_some_and(u8::is_ascii)
}

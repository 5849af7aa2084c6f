//! Forwarding: one [`Forwarder`] per upstream moves the journal to its sink in order.
//!
//! A forwarder owns its upstream's cursor (the next sequence to send, stored in the
//! journal). Its loop: wait for records past the cursor; let a batch fill for up to
//! `linger`; read up to `max_batch` records; send them with [`Sink::send`] until the
//! upstream acknowledges all of them, backing off with jitter between failures; then move
//! the cursor past the batch. The cursor moves on acknowledgement and nothing else, and a
//! failed batch is retried before anything later is read (invariant 2, *Ordered*). Each
//! forwarder runs on its own, so a dead upstream never holds another back (invariant 5).
//!
//! # Gaps are explicit
//!
//! When `drop-oldest` or `journal.max_age` removed readings past the cursor before this
//! upstream sent them, the next batch carries an [`Item::Gap`] naming the removed range in
//! front of the reading after it, for a sink that wants them ([`Sink::wants_gap_markers`]),
//! so the upstream learns of the loss instead of seeing silence. How a gap looks on the wire
//! is the sink's business (the Kafka sink sends a record with the `tidegate-gap` header).
//!
//! # Thinning is not loss
//!
//! A hole inside a span `on_full = "thin"` thinned is the span's lower resolution, not a
//! loss: it is counted apart (`thinned_readings`), and the batch carries one
//! [`Item::Thinned`] per span announcing the range from the cursor on and its factor, in
//! front of the span's first reading the batch sends, once per forwarder run ([`assemble`]
//! says how holes are told apart and when a span is announced again).
//!
//! # Constrained links
//!
//! An upstream with `bandwidth`, `budget`, `send_windows` or a live lane has an
//! [`uplink::Uplink`]: before each attempt the forwarder waits in [`uplink::Uplink::admit`]
//! (window, budget, bandwidth tokens) and afterwards charges what its sink wrote; batches
//! are read no larger than the bandwidth bucket. This only delays the history, never skips
//! or reorders it. The live lane ([`live`]) runs beside the forwarder on the same `Uplink`.

mod assemble;
mod live;
mod supervisor;
pub mod uplink;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::UpstreamConfig;
use crate::journal::{Journal, ReadBatch};
use crate::record::Item;
use crate::sinks::{Attachment, Sink, SinkError};
use crate::telemetry::{add, ForwardCounters};

use assemble::{assemble, Announced};
pub use supervisor::Forwarders;
use uplink::{Lane, Uplink};

/// Bytes of record values read into one batch at most; sinks split further as their
/// protocol requires.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How often a still-failing upstream is logged again.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Items read for one send, and the cursor after them.
type Batch = (Vec<Item>, u64);

/// Moves one upstream's share of the journal.
pub struct Forwarder<S: Sink> {
    config: UpstreamConfig,
    journal: Journal,
    sink: S,
    counters: Arc<ForwardCounters>,
    /// The link's limits and live lane, when the upstream sets any.
    uplink: Option<Arc<Uplink>>,
}

impl<S: Sink> Forwarder<S> {
    pub fn new(
        config: UpstreamConfig,
        journal: Journal,
        sink: S,
        counters: Arc<ForwardCounters>,
    ) -> Self {
        Self {
            config,
            journal,
            sink,
            counters,
            uplink: None,
        }
    }

    /// The forwarder sending its batches through `uplink`'s windows, budget and bandwidth.
    pub fn with_uplink(mut self, uplink: Option<Arc<Uplink>>) -> Self {
        self.uplink = uplink;
        self
    }

    /// Most bytes of record values one batch reads: what the bandwidth bucket takes at
    /// once on a limited link.
    fn max_batch_bytes(&self) -> usize {
        self.uplink
            .as_ref()
            .and_then(|u| u.max_raw_bytes(Lane::Backlog))
            .map_or(MAX_BATCH_BYTES, |m| m.min(MAX_BATCH_BYTES))
    }

    /// Runs until `shutdown`. A batch already being sent is finished (or fails) first, so
    /// shutdown never abandons a request whose outcome is unknown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.config.name.clone();
        let mut cursor = match self.journal.cursor(&name) {
            Ok(Some(c)) => c,
            Ok(None) => 1,
            Err(e) => {
                tracing::error!(upstream = %name, error = %e, "Cannot read the upstream's cursor; it forwards nothing until tidegate restarts.");
                return;
            }
        };
        let epoch = match self.journal.epoch() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(upstream = %name, error = %e, "Cannot read the journal's epoch; it forwards nothing until tidegate restarts.");
                return;
            }
        };
        self.sink.attach(Attachment {
            epoch,
            counters: self.counters.clone(),
        });
        let gap_markers = self.sink.wants_gap_markers();
        // What this run announced of thinned spans, across its batches (see `assemble`).
        let announced = Arc::new(Mutex::new(Announced::default()));
        tracing::info!(upstream = %name, cursor, epoch, brokers = ?self.config.brokers, topic = %self.config.topic, "Forwarder started.");
        let mut committed = self.journal.committed();
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut failing_since: Option<Instant> = None;
        let mut last_failure_log: Option<Instant> = None;
        // While a batch is being sent, the next one is read (when a full one is waiting)
        // and the previous cursor is being stored: the upstream is kept busy.
        let mut prefetched: Option<tokio::task::JoinHandle<Option<Batch>>> = None;
        let mut cursor_store: Option<tokio::task::JoinHandle<bool>> = None;
        'batches: loop {
            let batch = match prefetched.take() {
                Some(handle) => handle.await.ok().flatten(),
                None => {
                    // Wait until something past the cursor is committed.
                    let last = *committed.borrow_and_update();
                    if last < cursor {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            changed = committed.changed() => {
                                if changed.is_err() {
                                    break;
                                }
                                continue;
                            }
                            // While idle, status still sees windows open and close and a
                            // budget period roll over.
                            _ = tokio::time::sleep(uplink::RECHECK), if self.uplink.is_some() => {
                                if let Some(u) = &self.uplink {
                                    u.refresh_now();
                                }
                                continue;
                            }
                        }
                    }
                    // Let a small batch fill up, unless a full one is already there.
                    if last + 1 - cursor < self.config.max_batch as u64
                        && !self.config.linger.is_zero()
                    {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(self.config.linger) => {}
                        }
                    }
                    read_batch(
                        self.journal.clone(),
                        name.clone(),
                        self.counters.clone(),
                        cursor,
                        (self.config.max_batch, self.max_batch_bytes()),
                        (gap_markers, announced.clone()),
                    )
                    .await
                }
            };
            let Some((items, next)) = batch else {
                // Journal read failed: already logged; try again later.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(self.config.backoff_max) => continue,
                }
            };
            if next > cursor && *committed.borrow() + 1 >= next + self.config.max_batch as u64 {
                prefetched = Some(tokio::spawn(read_batch(
                    self.journal.clone(),
                    name.clone(),
                    self.counters.clone(),
                    next,
                    (self.config.max_batch, self.max_batch_bytes()),
                    (gap_markers, announced.clone()),
                )));
            }
            if !items.is_empty() {
                if let Some(u) = &self.uplink {
                    u.set_position(cursor, items.first().map(Item::ingest_ms));
                }
                let raw: u64 = items.iter().map(|i| raw_size(i) as u64).sum();
                // Send until acknowledged; a failure retries this same batch.
                loop {
                    let admitted = match &self.uplink {
                        Some(u) => match u.admit(Lane::Backlog, raw, &shutdown).await {
                            Some(a) => a,
                            None => break 'batches,
                        },
                        None => None,
                    };
                    let started = Instant::now();
                    let before = live::wire(&self.counters);
                    let result = self.sink.send(&items).await;
                    if let Some(u) = &self.uplink {
                        let after = live::wire(&self.counters);
                        u.settle(
                            Lane::Backlog,
                            admitted,
                            after.0 - before.0,
                            after.1 - before.1,
                        );
                        u.store_budget(false).await;
                    }
                    match result {
                        Ok(()) => {
                            if let Some(u) = &self.uplink {
                                if let Some(newest) = items
                                    .iter()
                                    .rev()
                                    .find_map(|i| i.as_reading().map(|r| r.reading.ingest_ms))
                                {
                                    u.delivered(Lane::Backlog, newest);
                                }
                            }
                            tracing::debug!(upstream = %name, items = items.len(), first_seq = cursor, took = ?started.elapsed(), "Batch acknowledged.");
                            let mut markers = 0;
                            for item in &items {
                                match item {
                                    Item::Reading(_) => continue,
                                    Item::Gap(gap) => {
                                        add(&self.counters.gap_markers_sent, 1);
                                        add(&self.counters.gap_readings, gap.readings());
                                        tracing::info!(upstream = %name, first_seq = gap.first, last_seq = gap.last, "Gap marker delivered: the upstream knows these readings were dropped.");
                                    }
                                    Item::Thinned(t) => {
                                        add(&self.counters.thinned_markers_sent, 1);
                                        tracing::debug!(upstream = %name, first_seq = t.first, last_seq = t.last, factor = t.factor, "Thinned marker delivered.");
                                    }
                                }
                                markers += 1;
                            }
                            add(&self.counters.sent, (items.len() - markers) as u64);
                            add(&self.counters.batches, 1);
                            self.counters
                                .connected
                                .store(1, std::sync::atomic::Ordering::Relaxed);
                            if let Some(since) = failing_since.take() {
                                if let Ok(mut last) = self.counters.last_error.lock() {
                                    *last = None;
                                }
                                tracing::info!(upstream = %name, attempts = backoff.attempts(), down_for = ?since.elapsed(), "Upstream reachable again; backlog draining.");
                            }
                            backoff.reset();
                            break;
                        }
                        Err(e) => {
                            add(&self.counters.failures, 1);
                            if let Ok(mut last) = self.counters.last_error.lock() {
                                *last = Some(e.to_string());
                            }
                            self.counters
                                .connected
                                .store(0, std::sync::atomic::Ordering::Relaxed);
                            let now = Instant::now();
                            failing_since.get_or_insert(now);
                            let due = last_failure_log
                                .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_INTERVAL);
                            if due {
                                last_failure_log = Some(now);
                                let backlog =
                                    committed.borrow().saturating_add(1).saturating_sub(cursor);
                                match &e {
                                    SinkError::Fatal { .. } => {
                                        tracing::error!(upstream = %name, error = %e, backlog, "Upstream refuses the batch; holding the cursor until an operator acts. Retrying slowly.")
                                    }
                                    _ => {
                                        tracing::warn!(upstream = %name, error = %e, backlog, attempts = backoff.attempts() + 1, "Upstream unreachable; readings stay in the journal and are retried with backoff (logged again every 30s while it lasts).")
                                    }
                                }
                            }
                            let delay = if e.is_retryable() {
                                backoff.next_delay()
                            } else {
                                self.config.backoff_max
                            };
                            tokio::select! {
                                _ = shutdown.cancelled() => break 'batches,
                                _ = tokio::time::sleep(delay) => add(&self.counters.retries, 1),
                            }
                        }
                    }
                }
            }
            // Store the cursor in the background; the writer keeps the highest, so stores
            // that finish out of order never move it back.
            if let Some(previous) = cursor_store.take() {
                if previous.await.ok() != Some(true) {
                    break;
                }
            }
            let journal = self.journal.clone();
            let upstream = name.clone();
            cursor_store = Some(tokio::spawn(async move {
                match journal.set_cursor(&upstream, next).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(upstream = %upstream, error = %e, "Cannot store the cursor; stopping this forwarder (the batch will be resent after restart).");
                        false
                    }
                }
            }));
            cursor = next;
            if let Some(u) = &self.uplink {
                if next > *committed.borrow() {
                    u.set_position(next, None);
                }
            }
        }
        if let Some(previous) = cursor_store.take() {
            let _ = previous.await;
        }
        if let Some(u) = &self.uplink {
            u.store_budget(true).await;
        }
        if let Some(p) = prefetched.take() {
            p.abort();
        }
        tracing::info!(upstream = %name, cursor, "Forwarder stopped.");
    }
}

/// Reads the next batch at `cursor`: the decodable records, and the cursor after them.
/// Holes are told as thinning or loss ([`assemble`]); gaps, thinning and corrupt records
/// are counted and logged; with `markers`, gaps and thinned spans become [`Item::Gap`] and
/// [`Item::Thinned`] markers in the batch. `announced` is the run's memory of thinned
/// announcements, shared by the batches it reads one after another.
async fn read_batch(
    journal: Journal,
    name: String,
    counters: Arc<ForwardCounters>,
    cursor: u64,
    (max, max_bytes): (usize, usize),
    (markers, announced): (bool, Arc<Mutex<Announced>>),
) -> Option<Batch> {
    let read =
        tokio::task::spawn_blocking(move || journal.read_batch(cursor, max, max_bytes)).await;
    let read = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            tracing::error!(upstream = %name, error = %e, "Reading the journal failed.");
            return None;
        }
        Err(e) => {
            tracing::error!(upstream = %name, error = %e, "Journal read task failed.");
            return None;
        }
    };
    Some(batch_from(
        &name,
        &counters,
        cursor,
        read,
        (markers, &announced),
    ))
}

/// The batch a journal read at `cursor` makes ([`assemble`]), with its gaps, thinning and
/// corrupt records counted and logged.
fn batch_from(
    name: &str,
    counters: &ForwardCounters,
    cursor: u64,
    read: ReadBatch,
    (markers, announced): (bool, &Mutex<Announced>),
) -> Batch {
    let batch = {
        let mut announced = announced.lock().unwrap_or_else(|p| p.into_inner());
        assemble(cursor, read, &mut announced, markers)
    };
    for gap in &batch.gaps {
        let lost = gap.readings();
        add(&counters.lost_to_drop_oldest, lost);
        tracing::warn!(upstream = %name, lost, first_seq = gap.first, last_seq = gap.last, "Readings were removed (on_full = \"drop-oldest\" or journal.max_age) before this upstream sent them.");
    }
    add(&counters.thinned_readings, batch.thinned);
    for t in &batch.announced {
        tracing::info!(upstream = %name, first_seq = t.first, last_seq = t.last, factor = t.factor, marker = markers, "Readings in this span are held at about one in `factor` per topic (on_full = \"thin\"); this upstream gets the ones kept.");
    }
    for e in &batch.corrupt {
        add(&counters.corrupt_skipped, 1);
        tracing::error!(upstream = %name, error = %e, "Skipping a journal record that fails its checksum; this reading is lost.");
    }
    (batch.items, batch.next)
}

/// The raw bytes of an item for the bandwidth estimate.
fn raw_size(item: &Item) -> usize {
    match item {
        Item::Reading(r) => live::raw_size(r),
        Item::Gap(_) | Item::Thinned(_) => 64,
    }
}

#[cfg(test)]
mod tests;

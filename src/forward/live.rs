//! The live lane of one upstream: while its history is behind, each topic's newest reading
//! (at most once per `live_interval`) and every urgent reading (at once) go to the live
//! topic, so current values are seen before the backlog has drained.
//!
//! The lane reads the journal as it is committed, from the head it found at start, and
//! keeps per topic only the newest reading: its memory and its traffic are bounded by the
//! number of topics, not by the ingest rate. It is **best effort**: a send that fails is
//! not retried (the next interval sends newer values), and a reading may be replaced
//! before it is sent; counted in `live_skipped`. The history is never touched.
//!
//! # Invariant
//!
//! Nothing goes out twice once the history has caught up: the lane sends only while
//! [`Uplink::live_active`], and drops every reading below the history's cursor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::uplink::{Lane, Uplink};
use crate::journal::Journal;
use crate::record::{Item, Record};
use crate::sinks::{Attachment, Sink};
use crate::telemetry::{add, ForwardCounters};

/// Most readings read from the journal per wake-up; past that the lane jumps ahead (it
/// samples anyway).
const MAX_READ: usize = 20_000;
/// Most urgent readings held for sending; more while the lane cannot send are skipped.
const MAX_URGENT: usize = 10_000;
/// Bytes of one journal read.
const READ_BYTES: usize = 4 * 1024 * 1024;

/// One upstream's live lane.
pub struct LiveLane<S: Sink> {
    name: String,
    interval: Duration,
    journal: Journal,
    sink: S,
    uplink: Arc<Uplink>,
    counters: Arc<ForwardCounters>,
}

impl<S: Sink> LiveLane<S> {
    /// The lane of upstream `name`, sending through `sink` (built for the live topic)
    /// and counting in `counters` (the lane's own).
    pub fn new(
        name: String,
        interval: Duration,
        journal: Journal,
        sink: S,
        uplink: Arc<Uplink>,
        counters: Arc<ForwardCounters>,
    ) -> Self {
        LiveLane {
            name,
            interval,
            journal,
            sink,
            uplink,
            counters,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let epoch = self.journal.epoch().ok().flatten();
        self.sink.attach(Attachment {
            epoch,
            counters: self.counters.clone(),
        });
        let mut committed = self.journal.committed();
        // Fresh readings only: what is committed now is the history's business.
        let mut seen = *committed.borrow_and_update();
        let mut latest: HashMap<String, Record> = HashMap::new();
        let mut urgent: VecDeque<Record> = VecDeque::new();
        let mut next_tick = Instant::now() + self.interval;
        tracing::info!(upstream = %self.name, interval = ?self.interval, "Live lane started.");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = committed.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(next_tick.into()) => {}
            }
            let head = *committed.borrow_and_update();
            if head > seen {
                seen = self.read_new(seen, head, &mut latest, &mut urgent).await;
            }
            let uplink = &self.uplink;
            // What the history delivered is never sent live.
            let cursor = uplink.history_cursor();
            latest.retain(|_, r| r.seq >= cursor);
            if !uplink.live_active() {
                // Caught up: the history delivers urgent readings at once. The newest
                // reading per topic is kept, so that a lane turning active sends it even
                // if its topic publishes nothing newer.
                urgent.clear();
                next_tick = Instant::now() + self.interval;
                continue;
            }
            urgent.retain(|r| r.seq >= cursor);
            if !urgent.is_empty() {
                let batch: Vec<Record> = urgent.drain(..).collect();
                let n = batch.len() as u64;
                if self.send(batch, &shutdown).await {
                    add(self.uplink_urgent(), n);
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + self.interval;
                if !latest.is_empty() {
                    let batch: Vec<Record> = latest.drain().map(|(_, r)| r).collect();
                    self.send(batch, &shutdown).await;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        self.uplink.store_budget(true).await;
        tracing::info!(upstream = %self.name, "Live lane stopped.");
    }

    fn uplink_urgent(&self) -> &std::sync::atomic::AtomicU64 {
        &self.uplink.counters().uplink.live_urgent_sent
    }

    /// Reads what was committed after `seen` up to `head` into the newest-per-topic map
    /// and the urgent queue; returns the new `seen`.
    async fn read_new(
        &self,
        seen: u64,
        head: u64,
        latest: &mut HashMap<String, Record>,
        urgent: &mut VecDeque<Record>,
    ) -> u64 {
        let skipped = &self.uplink.counters().uplink.live_skipped;
        // Far behind (a burst, or the lane was busy sending): sample from near the head.
        let from = if head - seen > MAX_READ as u64 {
            add(skipped, head - seen - MAX_READ as u64);
            head - MAX_READ as u64 + 1
        } else {
            seen + 1
        };
        let journal = self.journal.clone();
        let read =
            tokio::task::spawn_blocking(move || journal.read_from(from, MAX_READ, READ_BYTES))
                .await;
        let records = match read {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.name, error = %e, "Live lane: reading the journal failed; trying again at the next commit.");
                return seen;
            }
            Err(e) => {
                tracing::warn!(upstream = %self.name, error = %e, "Live lane: journal read task failed.");
                return seen;
            }
        };
        // A reading replaced while the lane is idle was never due on it: not a skip.
        let sampling = self.uplink.live_active();
        let mut last = seen;
        for r in records.into_iter().flatten() {
            last = last.max(r.seq);
            if self.uplink.is_urgent(&r.reading.topic) {
                if urgent.len() >= MAX_URGENT {
                    add(skipped, 1);
                    continue;
                }
                urgent.push_back(r);
            } else if latest.insert(r.reading.topic.clone(), r).is_some() && sampling {
                add(skipped, 1);
            }
        }
        // A read that returned less than asked for (bytes) is continued at the next wake.
        last.max(from.saturating_sub(1))
    }

    /// Sends `records` (in sequence order, in batches that fit the live bucket); counts a
    /// failure as skipped readings. Returns whether all were delivered.
    async fn send(&mut self, mut records: Vec<Record>, shutdown: &CancellationToken) -> bool {
        records.sort_by_key(|r| r.seq);
        let max = self.uplink.max_raw_bytes(Lane::Live).unwrap_or(usize::MAX);
        let mut ok = true;
        let mut rest = records.as_slice();
        while !rest.is_empty() {
            let mut raw = 0usize;
            let n = rest
                .iter()
                .take_while(|r| {
                    raw += raw_size(r);
                    raw <= max
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let raw: u64 = batch.iter().map(|r| raw_size(r) as u64).sum();
            let Some(admitted) = self.uplink.admit(Lane::Live, raw, shutdown).await else {
                return false;
            };
            let items: Vec<Item> = batch.iter().cloned().map(Item::Reading).collect();
            let (sent0, recv0) = wire(&self.counters);
            let result = self.sink.send(&items).await;
            let (sent1, recv1) = wire(&self.counters);
            self.uplink
                .settle(Lane::Live, admitted, sent1 - sent0, recv1 - recv0);
            match result {
                Ok(()) => {
                    add(&self.counters.sent, items.len() as u64);
                    add(&self.counters.batches, 1);
                    if let Some(newest) = batch.iter().map(|r| r.reading.ingest_ms).max() {
                        self.uplink.delivered(Lane::Live, newest);
                    }
                }
                Err(e) => {
                    ok = false;
                    add(&self.counters.failures, 1);
                    add(
                        &self.uplink.counters().uplink.live_skipped,
                        items.len() as u64,
                    );
                    tracing::debug!(upstream = %self.name, error = %e, readings = items.len(), "Live lane: send failed; newer values go at the next interval.");
                    // The rest would most likely fail the same way.
                    add(
                        &self.uplink.counters().uplink.live_skipped,
                        rest.len() as u64,
                    );
                    break;
                }
            }
        }
        self.uplink.store_budget(false).await;
        ok
    }
}

/// The bytes of a reading the bandwidth estimate starts from: its value and key, and
/// about what its headers take.
pub(super) fn raw_size(r: &Record) -> usize {
    r.reading.payload.len() + r.reading.topic.len() + 64
}

/// A lane's wire counters now: bytes sent and received.
pub(super) fn wire(c: &ForwardCounters) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (c.wire_sent.load(Relaxed), c.wire_received.load(Relaxed))
}

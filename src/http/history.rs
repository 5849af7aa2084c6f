//! The last hour of the daemon's figures, for the status page's charts.
//!
//! A sampler task reads the counters and the journal summary every [`SAMPLE_INTERVAL`] and
//! appends one [`Sample`]: ingest rate, records held, and per upstream its forward rate,
//! backlog and the bytes per second each of its lanes wrote. Rates are differences between two samples' counter totals divided by the time
//! between them, so a slow sample never shows as a spike.
//!
//! # Invariant
//!
//! The ring holds at most [`CAPACITY`] samples (one hour at 5 s); the oldest is dropped
//! first. Memory is fixed by the number of upstreams, whatever the traffic.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Sources;
use crate::telemetry::get;

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept: one hour.
pub const CAPACITY: usize = 720;

/// One point of the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When it was taken, ms since the Unix epoch.
    pub t_ms: u64,
    /// Readings committed per second since the previous sample.
    pub ingest_per_s: f64,
    /// Records the journal held (`None` if it could not be read).
    pub journal_records: Option<u64>,
    /// Per upstream configured when it was taken (a reload may add or remove some).
    pub upstreams: Vec<UpstreamSample>,
}

/// One upstream's point in a [`Sample`].
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSample {
    pub name: String,
    /// Records delivered per second since the previous sample.
    pub sent_per_s: f64,
    /// Records held that it has not delivered.
    pub backlog: Option<u64>,
    /// Bytes per second its backlog lane (the history) wrote to the wire.
    pub wire_bytes_per_s: f64,
    /// Bytes per second its live lane wrote; absent without a live lane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_wire_bytes_per_s: Option<f64>,
}

/// What `/api/history` serves.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryExport {
    pub interval_ms: u64,
    pub capacity: usize,
    /// Every upstream name found in the samples, in order of first appearance.
    pub upstreams: Vec<String>,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

/// The rates of the latest sample, for `/api/status`.
#[derive(Debug, Clone)]
pub struct Rates {
    pub ingest_per_s: f64,
    /// Per upstream.
    pub upstreams: Vec<UpstreamSample>,
}

impl Rates {
    /// The rates of upstream `name`, if the sample has it.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamSample> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Counter totals at one instant; rates are the difference between two of these.
struct Totals {
    at: Instant,
    appended: u64,
    upstreams: Vec<UpstreamTotals>,
}

/// One upstream's counter totals in [`Totals`].
struct UpstreamTotals {
    name: String,
    /// Records sent.
    sent: u64,
    /// Bytes its backlog lane wrote.
    wire: u64,
    /// Bytes its live lane wrote, if it has one.
    live_wire: Option<u64>,
}

struct Ring {
    samples: VecDeque<Sample>,
    last: Option<Totals>,
}

/// The ring buffer of samples, shared by the sampler and the request handlers.
pub struct History {
    ring: Mutex<Ring>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History {
            ring: Mutex::new(Ring {
                samples: VecDeque::with_capacity(CAPACITY),
                last: None,
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every update leaves the ring consistent, so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a sample now: reads the counters of `sources` and the journal summary
    /// (blocking: one read transaction). The first call only sets the baseline.
    pub fn record(&self, sources: &Sources) {
        let summary = sources.journal.summary().ok();
        let upstreams = sources.upstreams.get();
        let totals = Totals {
            at: Instant::now(),
            appended: get(&sources.journal.counters().appended),
            upstreams: upstreams
                .iter()
                .map(|u| UpstreamTotals {
                    name: u.name.clone(),
                    sent: get(&u.counters.sent),
                    wire: get(&u.counters.wire_sent),
                    live_wire: u.counters.uplink.live_lane().map(|l| get(&l.wire_sent)),
                })
                .collect(),
        };
        let mut ring = self.ring();
        if let Some(last) = ring.last.take() {
            let secs = totals.at.duration_since(last.at).as_secs_f64().max(0.001);
            // A counter new since the last sample (an upstream or live lane a reload
            // started) counts from 0; one that went back (replaced) from its new value.
            let rate = |now: u64, before: Option<u64>| {
                now.saturating_sub(before.map_or(0, |b| b.min(now))) as f64 / secs
            };
            let upstreams = totals
                .upstreams
                .iter()
                .map(|u| {
                    let before = last.upstreams.iter().find(|x| x.name == u.name);
                    UpstreamSample {
                        name: u.name.clone(),
                        sent_per_s: rate(u.sent, before.map(|b| b.sent)),
                        backlog: summary.as_ref().and_then(|s| {
                            s.upstreams
                                .iter()
                                .find(|x| x.name == u.name)
                                .map(|x| x.backlog)
                        }),
                        wire_bytes_per_s: rate(u.wire, before.map(|b| b.wire)),
                        live_wire_bytes_per_s: u
                            .live_wire
                            .map(|w| rate(w, before.and_then(|b| b.live_wire))),
                    }
                })
                .collect();
            push(
                &mut ring.samples,
                Sample {
                    t_ms: crate::journal::now_ms(),
                    ingest_per_s: rate(totals.appended, Some(last.appended)),
                    journal_records: summary.as_ref().map(|s| s.records),
                    upstreams,
                },
            );
        }
        ring.last = Some(totals);
    }

    /// The latest sample's rates, once there is one.
    pub fn latest_rates(&self) -> Option<Rates> {
        self.ring().samples.back().map(|s| Rates {
            ingest_per_s: s.ingest_per_s,
            upstreams: s.upstreams.clone(),
        })
    }

    /// Every sample, oldest first.
    pub fn export(&self) -> HistoryExport {
        let samples: Vec<Sample> = self.ring().samples.iter().cloned().collect();
        let mut upstreams: Vec<String> = Vec::new();
        for u in samples.iter().flat_map(|s| &s.upstreams) {
            if !upstreams.contains(&u.name) {
                upstreams.push(u.name.clone());
            }
        }
        HistoryExport {
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            capacity: CAPACITY,
            upstreams,
            samples,
        }
    }
}

/// Appends `sample`, dropping the oldest once [`CAPACITY`] are held.
fn push(samples: &mut VecDeque<Sample>, sample: Sample) {
    if samples.len() == CAPACITY {
        samples.pop_front();
    }
    samples.push_back(sample);
}

/// Samples every [`SAMPLE_INTERVAL`] until `stop`.
pub async fn run(sources: Arc<Sources>, history: Arc<History>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    // A stalled machine must not produce a burst of samples afterwards.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (s, h) = (sources.clone(), history.clone());
        if tokio::task::spawn_blocking(move || h.record(&s))
            .await
            .is_err()
        {
            tracing::warn!("A history sample failed; the status page's charts have a gap.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64) -> Sample {
        Sample {
            t_ms,
            ingest_per_s: 0.0,
            journal_records: Some(0),
            upstreams: Vec::new(),
        }
    }

    #[test]
    fn the_ring_keeps_the_last_hour_and_drops_the_oldest_first() {
        let h = History::new();
        for t in 0..(CAPACITY as u64 + 10) {
            push(&mut h.ring().samples, sample(t));
        }
        let e = h.export();
        assert_eq!(e.samples.len(), CAPACITY);
        assert_eq!(e.samples[0].t_ms, 10);
        assert_eq!(e.samples.last().map(|s| s.t_ms), Some(CAPACITY as u64 + 9));
    }
}

//! The driver of one device's MQTT connection, written once for MQTT 3.1.1 and 5 over
//! [`Link`]: it polls the event loop for the whole boot, reconnects with exponential backoff
//! (with jitter) and re-sends every unacknowledged reading in counter order and before
//! anything newer, and credits each PUBACK to its counter (through `tracker`) so that the
//! window and the report stay exact.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::link::{self, Link, LinkEvent};
use super::options::Qos;
use super::report::FleetProgress;
use super::tracker::AckTracker;
use super::RunConfig;

/// State a device's publisher and driver share.
pub(super) struct DeviceShared {
    /// QoS 1 readings handed to the client and not yet acknowledged: counter → payload
    /// (kept for re-sending).
    pub(super) outstanding: Mutex<BTreeMap<u64, Bytes>>,
    /// In-flight window: one permit per reading that may be outstanding.
    pub(super) window: Semaphore,
    /// Signalled when `outstanding` becomes empty.
    pub(super) drained: Notify,
    /// Signalled by the publisher when the fault plan drops the connection.
    pub(super) flap: Notify,
}

impl DeviceShared {
    /// Nothing outstanding yet, `window` readings allowed in flight.
    pub(super) fn new(window: u16) -> DeviceShared {
        DeviceShared {
            outstanding: Mutex::new(BTreeMap::new()),
            window: Semaphore::new(usize::from(window)),
            drained: Notify::new(),
            flap: Notify::new(),
        }
    }
}

/// What the driver returns.
pub(super) struct DriverOutcome {
    pub(super) tracker: AckTracker,
    pub(super) connects: u64,
    pub(super) connection_errors: u64,
    pub(super) rejected: u64,
    pub(super) last_error: Option<String>,
}

/// Locks one of the maps a device's tasks share.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated in a way that matters
    // here; keep going with the data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Credits the PUBACK for `pkid`: the counter leaves `outstanding` and frees a window slot.
fn acknowledge(t: &mut AckTracker, pkid: u16, shared: &DeviceShared, progress: &FleetProgress) {
    if let Some((seq, latency)) = t.on_puback(pkid, Instant::now()) {
        let (removed, empty) = {
            let mut o = lock(&shared.outstanding);
            let removed = o.remove(&seq).is_some();
            (removed, o.is_empty())
        };
        if removed {
            shared.window.add_permits(1);
            progress.acked.fetch_add(1, Ordering::Relaxed);
            progress.record_puback(latency);
        } else {
            // Acknowledged twice (a re-send of an already acknowledged reading).
            debug!(seq, "PUBACK for a reading no longer outstanding");
        }
        if empty {
            shared.drained.notify_one();
        }
    }
}

/// Polls the event loop until the device disconnects or is aborted; see the module docs.
pub(super) async fn drive<L: Link>(
    mut link: L,
    shared: Arc<DeviceShared>,
    cfg: Arc<RunConfig>,
    topic: String,
    abort: CancellationToken,
) -> DriverOutcome {
    let qos1 = cfg.opts.qos == Qos::AtLeastOnce;
    let window = usize::from(cfg.opts.window);
    let mut limit = window;
    let mut t = AckTracker::new(1);
    let mut out = DriverOutcome {
        tracker: AckTracker::new(1),
        connects: 0,
        connection_errors: 0,
        rejected: 0,
        last_error: None,
    };
    let mut backoff = cfg.opts.reconnect_min;
    let mut connected = false;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let progress = &cfg.progress;

    loop {
        let pending_before = link.pending_len();
        let polled = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            _ = shared.flap.notified() => None,
            r = link.poll() => Some(r),
        };
        let polled = match polled {
            Some(r) => r,
            None => {
                // A flapping link: drop the socket without DISCONNECT, then recover exactly
                // as from a network failure.
                link.drop_connection();
                Err(link::LinkError {
                    message: "connection dropped by the fault plan (flap)".into(),
                    rejected: false,
                })
            }
        };
        match polled {
            Ok(event) => {
                let from_pending = pending_before > 0 && link.pending_len() + 1 == pending_before;
                match event {
                    LinkEvent::ConnAck {
                        session_present,
                        receive_max,
                    } => {
                        debug!(session_present, ?receive_max, "connected");
                        if !connected {
                            connected = true;
                            progress.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        out.connects += 1;
                        if link.buffered_events() > 0 {
                            // Events from the previous connection would be misattributed.
                            t.anomalies += 1;
                        }
                        backoff = cfg.opts.reconnect_min;
                        if let Some(r) = receive_max {
                            limit = usize::from(r).min(window);
                        }
                    }
                    LinkEvent::PublishWritten(pkid) if pkid != 0 && qos1 => {
                        t.on_publish_written(
                            pkid,
                            from_pending,
                            link.collision_clear(),
                            Instant::now(),
                        );
                    }
                    LinkEvent::PublishWritten(_) => t.sent += 1,
                    LinkEvent::AwaitAck(pkid) => t.on_await_ack(pkid, from_pending),
                    LinkEvent::PubAck(pkid) => acknowledge(&mut t, pkid, &shared, progress),
                    LinkEvent::DisconnectWritten => break,
                    LinkEvent::Other => {}
                }
            }
            Err(e) => {
                if connected {
                    connected = false;
                    progress.connected.fetch_sub(1, Ordering::Relaxed);
                    progress.disconnects.fetch_add(1, Ordering::Relaxed);
                    info!(error = %e.message, "connection lost; reconnecting");
                } else {
                    debug!(error = %e.message, "connection attempt failed");
                }
                out.connection_errors += 1;
                if e.rejected {
                    out.rejected += 1;
                }
                out.last_error = Some(e.message);
                if qos1 {
                    // PUBACKs rumqttc processed before the error are real; credit them
                    // before the packet ids are forgotten.
                    for pkid in link.drain_buffered_acks() {
                        acknowledge(&mut t, pkid, &shared, progress);
                    }
                    // A broker that refused a publish (MQTT 5 failure reason code) is done
                    // with that packet id, and rumqttc has dropped it: keeping the later
                    // written publishes under their own ids would send them ahead of the
                    // refused reading. Re-send everything unacknowledged in counter order.
                    let requeued = link.rewrite_pending(!e.rejected);
                    if requeued.disconnect {
                        break;
                    }
                    let unacked: Vec<u64> = lock(&shared.outstanding).keys().copied().collect();
                    debug!(
                        requeued_max = ?requeued.max_seq,
                        kept = requeued.kept.len(),
                        parked = ?requeued.parked,
                        unacked = unacked.len(),
                        first_unacked = ?unacked.first(),
                        "requeueing unacknowledged readings"
                    );
                    t.on_connection_lost(
                        requeued.max_seq,
                        &requeued.kept,
                        requeued.parked,
                        unacked,
                    );
                }
                let jitter = rng.random_range(0.5..1.0);
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => break,
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                }
                backoff = (backoff * 2).min(cfg.opts.reconnect_max);
            }
        }
        if qos1 && t.has_resends() {
            let room = limit.saturating_sub(link.pending_len() + link.inflight());
            let seqs = t.refill(room);
            if !seqs.is_empty() {
                debug!(count = seqs.len(), first = seqs[0], "re-sending");
                let o = lock(&shared.outstanding);
                for seq in seqs {
                    let dup = t.was_sent(seq);
                    match o.get(&seq) {
                        Some(payload) => link.push_resend(&topic, payload.clone(), dup),
                        None => t.anomalies += 1,
                    }
                }
            }
        }
    }
    if connected {
        progress.connected.fetch_sub(1, Ordering::Relaxed);
    }
    out.tracker = t;
    out
}

//! The `local-bus` thread: owns moving queued readings into the rumqttd router in
//! chunks, waiting (never blocking publishers) while the router is behind, noticing a dead
//! router, and disconnecting the links of dropped subscriptions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish, Unsubscribe};
use tokio_util::sync::CancellationToken;

use super::{lock, Shared, CHUNK, ROUTER_BACKLOG, ROUTER_POLL, ROUTER_POLL_MAX, ROUTER_STALL};

/// The `local-bus` thread: moves queued readings into the router and disconnects the links
/// of dropped subscriptions, until the bus is dropped and the last subscription closed.
pub(super) fn feed_router(
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut tx: LinkTx,
    _rx: LinkRx,
) {
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
            lock(&shared.state).release(&c.client, c.suffix);
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

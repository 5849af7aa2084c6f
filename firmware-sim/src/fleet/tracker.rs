//! PUBACK accounting: which counter does a PUBACK for packet id `pkid` acknowledge?
//!
//! rumqttc reports only packet ids (`Outgoing::Publish(pkid)` when a PUBLISH is written,
//! `Incoming::PubAck(pkid)` when it is acknowledged), never the payload. This tracker
//! shadows the event loop so that every written PUBLISH is tied to its counter:
//!
//! - A PUBLISH comes from one of three places, and the connection driver tells which:
//!   1. the event loop's `pending` queue, whose content the driver rewrites after every
//!      connection loss and mirrors in [`AckTracker::pending`] (counter, and the packet id
//!      it keeps if it is a re-send of a PUBLISH already written);
//!   2. a collision resolved by an incoming PUBACK (rumqttc parks a publish whose packet id
//!      is still in flight and writes it once that id is acknowledged) — the counter parked
//!      by [`AckTracker::on_await_ack`];
//!   3. the client's request channel, which delivers the publisher's readings in counter
//!      order, so the counter is simply the next one expected from the channel.
//! - A packet id may briefly carry two counters (the collision case: rumqttc writes the
//!   parked publish *before* it reports the PUBACK that freed the id), so each id has a
//!   FIFO of counters and a PUBACK acknowledges the oldest.
//! - When the connection drops, rumqttc moves every unacknowledged PUBLISH, with its packet
//!   id, to `pending` and appends what was still queued in the request channel. As MQTT
//!   requires, written publishes are re-sent with their *own* packet ids (so a PUBACK the
//!   broker sends for the earlier copy — e.g. after resuming a persisted session — still
//!   names the right counter). The driver keeps those in `pending`, sorted by counter (MQTT 5
//!   rumqttc lists them by packet id, which is not counter order once ids wrap), and moves the
//!   never-written ones to [`AckTracker::resend`], which is fed into `pending` no faster than
//!   the in-flight limit allows: fresh packet ids then never wrap onto one still in flight,
//!   and nothing newer overtakes an older reading.
//! - PUBACKs rumqttc processed just before an error are still in its event buffer, which
//!   survives reconnects; the driver credits them before resetting (see
//!   `Link::drain_buffered_acks`).
//!
//! The tracker is plain data so these rules are tested without a broker (below) and against
//! Mosquitto, killed and restarted mid-run (`tests/mosquitto_fleet.rs`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::latency::Histogram;
use crate::seqset::SeqSet;

/// The shadow of one connection's QoS 1 state; see the module docs.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// Counters written under each packet id and not yet acknowledged, oldest first.
    by_pkid: HashMap<u16, VecDeque<u64>>,
    /// The publish rumqttc parked because its packet id was still in flight.
    collided: Option<(u16, u64)>,
    /// The counter the next PUBLISH taken from the request channel carries.
    channel_next: u64,
    /// The publishes in the event loop's `pending` queue, in queue order: counter, and the
    /// packet id it keeps (`None`: rumqttc assigns a fresh one).
    pending: VecDeque<(u64, Option<u16>)>,
    /// Counters waiting to be re-sent once the in-flight limit leaves room.
    resend: VecDeque<u64>,
    /// When each unacknowledged counter was first written (PUBACK latency).
    first_sent: HashMap<u64, Instant>,
    /// Counters acknowledged with a PUBACK.
    pub acked: SeqSet,
    /// First write → PUBACK latency.
    pub latency: Histogram,
    /// PUBLISH packets written, re-sends included.
    pub sent: u64,
    /// PUBLISH packets written for a counter that had been written before.
    pub retransmits: u64,
    /// Events that contradict the shadow state (should stay 0; reported, never panics).
    pub anomalies: u64,
}

impl AckTracker {
    /// A tracker whose first reading from the channel carries counter `first_seq`.
    pub(crate) fn new(first_seq: u64) -> AckTracker {
        AckTracker {
            by_pkid: HashMap::new(),
            collided: None,
            channel_next: first_seq,
            pending: VecDeque::new(),
            resend: VecDeque::new(),
            first_sent: HashMap::new(),
            acked: SeqSet::new(),
            latency: Histogram::new(),
            sent: 0,
            retransmits: 0,
            anomalies: 0,
        }
    }

    /// Where the request the event loop just took came from: counter, and the packet id it
    /// already had (a re-send of a written PUBLISH).
    fn origin(&mut self, from_pending: bool) -> Option<(u64, Option<u16>)> {
        if from_pending {
            let item = self.pending.pop_front();
            if item.is_none() {
                self.anomalies += 1;
            }
            item
        } else {
            let seq = self.channel_next;
            self.channel_next += 1;
            Some((seq, None))
        }
    }

    /// A QoS 1 PUBLISH with `pkid` was written. `from_pending`: the event loop took it from
    /// its `pending` queue during this poll. `collision_clear`: the event loop has no parked
    /// publish any more. Returns the counter it carries.
    pub(crate) fn on_publish_written(
        &mut self,
        pkid: u16,
        from_pending: bool,
        collision_clear: bool,
        now: Instant,
    ) -> Option<u64> {
        let (seq, kept_pkid) = match self.collided {
            Some((p, seq)) if !from_pending && collision_clear && p == pkid => {
                self.collided = None;
                (seq, None)
            }
            _ => self.origin(from_pending)?,
        };
        self.sent += 1;
        if self.first_sent.contains_key(&seq) || self.acked.contains(seq) {
            self.retransmits += 1;
        } else {
            self.first_sent.insert(seq, now);
        }
        let queue = self.by_pkid.entry(pkid).or_default();
        match kept_pkid {
            // A re-send under its own packet id: normally still mapped (unless a PUBACK for
            // the earlier copy already came).
            Some(p) if p == pkid => {
                if !queue.contains(&seq) {
                    queue.push_back(seq);
                }
            }
            Some(_) => {
                self.anomalies += 1;
                queue.push_back(seq);
            }
            None => queue.push_back(seq),
        }
        Some(seq)
    }

    /// rumqttc parked a publish because `pkid` is still in flight (`Outgoing::AwaitAck`).
    pub(crate) fn on_await_ack(&mut self, pkid: u16, from_pending: bool) {
        if let Some((seq, _)) = self.origin(from_pending) {
            if self.collided.is_some() {
                // rumqttc would have overwritten (lost) the previously parked publish; it is
                // still unacknowledged, so the next connection loss re-sends it.
                self.anomalies += 1;
            }
            self.collided = Some((pkid, seq));
        }
    }

    /// A PUBACK for `pkid` arrived. Returns the counter it acknowledges and the latency since
    /// that counter was first written; `None` for a PUBACK nothing was waiting for.
    pub(crate) fn on_puback(&mut self, pkid: u16, now: Instant) -> Option<(u64, Duration)> {
        let Some(seq) = self.by_pkid.get_mut(&pkid).and_then(VecDeque::pop_front) else {
            self.anomalies += 1;
            return None;
        };
        let latency = self
            .first_sent
            .remove(&seq)
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if self.acked.insert(seq) {
            self.latency.record_duration(latency);
        }
        Some((seq, latency))
    }

    /// The connection dropped and the driver rewrote the event loop's `pending` queue.
    /// `requeued_max`: the highest counter among the publishes rumqttc had moved there;
    /// `kept`: the written publishes left in `pending` for re-sending under their own packet
    /// ids, in queue order; `parked`: the publish rumqttc still holds on a packet-id collision;
    /// `unacked`: every counter handed to the client and not yet acknowledged, increasing.
    pub(crate) fn on_connection_lost(
        &mut self,
        requeued_max: Option<u64>,
        kept: &[(u16, u64)],
        parked: Option<(u16, u64)>,
        unacked: impl IntoIterator<Item = u64>,
    ) {
        if let Some(m) = requeued_max {
            // Whatever was drained from the channel left it.
            self.channel_next = self.channel_next.max(m + 1);
        }
        self.by_pkid.clear();
        for &(pkid, seq) in kept {
            self.by_pkid.entry(pkid).or_default().push_back(seq);
        }
        self.pending = kept.iter().map(|&(p, s)| (s, Some(p))).collect();
        self.collided = parked;
        let next = self.channel_next;
        let held: std::collections::HashSet<u64> = kept
            .iter()
            .map(|&(_, s)| s)
            .chain(parked.map(|(_, s)| s))
            .collect();
        self.resend = unacked
            .into_iter()
            .take_while(|&s| s < next)
            .filter(|s| !held.contains(s))
            .collect();
    }

    /// Moves up to `room` counters from the re-send queue to `pending` and returns them; the
    /// caller pushes their publishes onto the event loop's `pending` queue in this order.
    pub(crate) fn refill(&mut self, room: usize) -> Vec<u64> {
        let n = room.min(self.resend.len());
        let out: Vec<u64> = self.resend.drain(..n).collect();
        self.pending.extend(out.iter().map(|&s| (s, None)));
        out
    }

    /// Whether counters are waiting to be re-sent.
    pub(crate) fn has_resends(&self) -> bool {
        !self.resend.is_empty()
    }

    /// Whether `seq` has been written at least once.
    pub(crate) fn was_sent(&self, seq: u64) -> bool {
        self.first_sent.contains_key(&seq) || self.acked.contains(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn in_order_acks_map_packet_ids_to_counters() {
        let mut t = AckTracker::new(1);
        for pkid in 1..=3 {
            assert_eq!(
                t.on_publish_written(pkid, false, true, now()),
                Some(pkid as u64)
            );
        }
        assert_eq!(t.on_puback(1, now()).map(|x| x.0), Some(1));
        // Packet id 1 is reused for counter 4.
        assert_eq!(t.on_publish_written(1, false, true, now()), Some(4));
        assert_eq!(t.on_puback(2, now()).map(|x| x.0), Some(2));
        assert_eq!(t.on_puback(3, now()).map(|x| x.0), Some(3));
        assert_eq!(t.on_puback(1, now()).map(|x| x.0), Some(4));
        assert_eq!(t.acked.iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!((t.sent, t.retransmits, t.anomalies), (4, 0, 0));
        assert_eq!(t.latency.count(), 4);
    }

    #[test]
    fn a_collision_is_written_before_the_puback_that_frees_its_packet_id() {
        // Window of 2: ids 1, 2; the broker acks 2 first, so counter 3 gets id 1 again
        // while 1 is still in flight and rumqttc parks it.
        let mut t = AckTracker::new(1);
        t.on_publish_written(1, false, true, now());
        t.on_publish_written(2, false, true, now());
        assert_eq!(t.on_puback(2, now()).map(|x| x.0), Some(2));
        t.on_await_ack(1, false);
        // PUBACK(1) arrives: rumqttc writes the parked publish first, then reports the ack.
        assert_eq!(t.on_publish_written(1, false, true, now()), Some(3));
        assert_eq!(t.on_puback(1, now()).map(|x| x.0), Some(1));
        assert_eq!(t.on_puback(1, now()).map(|x| x.0), Some(3));
        // The channel continues with counter 4.
        assert_eq!(t.on_publish_written(2, false, true, now()), Some(4));
        assert_eq!(t.anomalies, 0);
    }

    #[test]
    fn after_a_connection_loss_written_publishes_keep_their_ids_and_drained_ones_wait_for_room() {
        let mut t = AckTracker::new(1);
        for pkid in 1..=4 {
            t.on_publish_written(pkid, false, true, now());
        }
        t.on_puback(1, now());
        t.on_puback(3, now()); // out of order: 2 and 4 stay unacked
                               // Connection lost. rumqttc kept 2 (id 2) and 4 (id 4) and had drained counters 5 and
                               // 6 from the channel; the publisher has handed 7 to the channel since.
        t.on_connection_lost(Some(6), &[(2, 2), (4, 4)], None, [2, 4, 5, 6, 7]);
        assert!(t.has_resends());
        // A stale PUBACK for the earlier copy of 4 (a resumed session) names the right counter.
        assert_eq!(t.on_puback(4, now()).map(|x| x.0), Some(4));
        // Re-send of 2 under its own id.
        assert_eq!(t.on_publish_written(2, true, true, now()), Some(2));
        // Re-send of 4: the driver cannot know the broker already acknowledged it.
        assert_eq!(t.on_publish_written(4, true, true, now()), Some(4));
        // Room for one more: 5 gets a fresh id.
        assert_eq!(t.refill(1), vec![5]);
        assert_eq!(t.on_publish_written(5, true, true, now()), Some(5));
        assert_eq!(t.on_puback(2, now()).map(|x| x.0), Some(2));
        assert_eq!(t.refill(5), vec![6]);
        assert!(!t.has_resends());
        assert_eq!(t.on_publish_written(6, true, true, now()), Some(6));
        // Then the channel: 7 is next.
        assert_eq!(t.on_publish_written(7, false, true, now()), Some(7));
        for pkid in [4, 5, 6, 7] {
            t.on_puback(pkid, now());
        }
        assert_eq!(
            t.acked.iter().collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        // 2 and 4 were written twice; 5 and 6 (drained, never written) once.
        assert_eq!((t.sent, t.retransmits, t.anomalies), (9, 2, 0));
    }

    #[test]
    fn a_connection_loss_while_resending_starts_the_resend_over() {
        let mut t = AckTracker::new(1);
        for pkid in 1..=3 {
            t.on_publish_written(pkid, false, true, now());
        }
        t.on_connection_lost(None, &[(1, 1), (2, 2), (3, 3)], None, [1, 2, 3]);
        t.on_publish_written(1, true, true, now());
        // Lost again before anything was acknowledged; 4 and 5 had been drained meanwhile.
        t.on_connection_lost(Some(5), &[(1, 1), (2, 2), (3, 3)], None, [1, 2, 3, 4, 5]);
        assert_eq!(t.refill(2), vec![4, 5]);
        for pkid in 1..=5 {
            assert_eq!(
                t.on_publish_written(pkid, true, true, now()),
                Some(pkid as u64)
            );
        }
        for pkid in 1..=5 {
            t.on_puback(pkid, now());
        }
        assert_eq!(t.acked.len(), 5);
        assert_eq!(t.on_publish_written(6, false, true, now()), Some(6));
        assert_eq!(t.anomalies, 0);
    }

    #[test]
    fn a_parked_publish_survives_a_connection_loss() {
        let mut t = AckTracker::new(1);
        t.on_publish_written(1, false, true, now());
        t.on_await_ack(1, false); // counter 2 parked behind id 1
        t.on_connection_lost(None, &[(1, 1)], Some((1, 2)), [1, 2]);
        assert!(!t.has_resends());
        assert_eq!(t.on_publish_written(1, true, false, now()), Some(1));
        // PUBACK(1): rumqttc writes the parked publish, then reports the ack.
        assert_eq!(t.on_publish_written(1, false, true, now()), Some(2));
        assert_eq!(t.on_puback(1, now()).map(|x| x.0), Some(1));
        assert_eq!(t.on_puback(1, now()).map(|x| x.0), Some(2));
        assert_eq!(t.anomalies, 0);
    }

    #[test]
    fn a_publish_rumqttc_dropped_is_resent_under_a_fresh_id() {
        // MQTT 5: a PUBACK with a failure reason makes rumqttc drop the publish and error.
        let mut t = AckTracker::new(1);
        t.on_publish_written(1, false, true, now());
        t.on_publish_written(2, false, true, now());
        t.on_connection_lost(None, &[(2, 2)], None, [1, 2]);
        assert_eq!(t.refill(10), vec![1]);
        assert_eq!(t.on_publish_written(2, true, true, now()), Some(2));
        assert_eq!(t.on_publish_written(3, true, true, now()), Some(1));
        assert_eq!(t.on_puback(3, now()).map(|x| x.0), Some(1));
        assert_eq!(t.on_puback(2, now()).map(|x| x.0), Some(2));
        assert_eq!(t.anomalies, 0);
    }

    #[test]
    fn an_unexpected_puback_is_counted_not_attributed() {
        let mut t = AckTracker::new(1);
        assert_eq!(t.on_puback(9, now()), None);
        assert_eq!(t.anomalies, 1);
        assert!(t.acked.is_empty());
    }
}

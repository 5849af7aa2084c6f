//! The read half of a device connection: owns turning the packets of each socket read
//! into one journal submission plus the acks that wait for it, in packet order, and the
//! checks a publish passes before it may be journaled (topic, rights, QoS 2 duplicates).
//! Nothing is acknowledged here: the [`writer`](super::writer) does that after the commit.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::read_buffer::ReadBuffer;
use super::session::ConnAuth;
use super::subscriptions::{sub_codes, Subscriptions};
use super::writer::{Action, LocalReading, Out, Pending};
use super::{Ctx, LogLimit};
use crate::ingest::codec::{
    self, AckReason, CodecError, DisconnectReason, Frame, Inbound, Publish, Version,
};
use crate::journal::{now_ms, Fence, Packet};
use crate::record::{Reading, SourceKind};
use crate::telemetry::add;

/// How often a repeating refusal is logged at most, per connection.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the read loop ends: `Break(reason)` closes the connection, telling an MQTT 5
/// device `reason` if there is one.
type Flow = ControlFlow<Option<DisconnectReason>>;

/// What the reader borrows from its session.
pub(super) struct Conn<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) client_id: &'a str,
    pub(super) version: Version,
    /// To the connection's writer.
    pub(super) tx: mpsc::Sender<Out>,
    /// Cancelled by shutdown or takeover; ends the local subscription with the connection.
    pub(super) conn_token: &'a CancellationToken,
    /// QoS 2 packet ids received and not yet released.
    pub(super) awaiting_rel: &'a Mutex<HashSet<u16>>,
    /// Whether the journal remembers packet ids to recognise the device's re-sends.
    pub(super) remember_packets: bool,
    pub(super) auth: ConnAuth,
}

/// A connection's reader: its session's parts and what it keeps between reads.
pub(super) struct Reader<'a> {
    conn: Conn<'a>,
    /// Publishes refused on this connection as outside its rights, and their log limit.
    refused: u32,
    refusal_log: LogLimit,
    /// The connection's local subscription, opened at its first SUBSCRIBE.
    subscriptions: Subscriptions,
    /// Once the journal refuses one of this connection's readings, it refuses all later
    /// ones too, and the connection closes: the device resends in order on a new one.
    fence: Fence,
}

/// What the packets of one socket read become: one journal submission and the actions
/// that wait for it, in packet order.
#[derive(Default)]
struct Batch {
    readings: Vec<Reading>,
    packets: Vec<Option<Packet>>,
    /// For local subscribers, while any are open.
    local: Vec<LocalReading>,
    actions: Vec<Action>,
}

impl Batch {
    /// Queues the ack of a QoS 1/2 publish (a QoS 0 one has none); `index` is the
    /// reading's place in the batch, `None` when it is not journaled.
    fn ack(&mut self, qos: u8, pkid: u16, index: Option<usize>, reason: AckReason) {
        if qos > 0 {
            self.actions.push(Action::Ack {
                qos,
                pkid,
                index,
                reason,
            });
        }
    }
}

impl<'a> Reader<'a> {
    pub(super) fn new(conn: Conn<'a>) -> Reader<'a> {
        Reader {
            conn,
            refused: 0,
            refusal_log: LogLimit::new(REFUSAL_LOG_INTERVAL),
            subscriptions: Subscriptions::default(),
            fence: Fence::new(),
        }
    }

    /// Tells the writer to close the connection after what is queued (with `reason` to an
    /// MQTT 5 device); the reader's end of the channel goes with it.
    pub(super) async fn close(mut self, reason: Option<DisconnectReason>) {
        let _ = self.conn.tx.send(Out::Close(reason)).await;
    }
}

/// Reads packets until the device leaves, an error, takeover, revocation or shutdown.
/// Returns the reason to give the device (MQTT 5), if any.
///
/// Takes its state by reference: an async fn keeps its arguments for its whole life
/// beside what it moves them into, and this one lives as long as the connection.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut ReadBuffer,
    reader: &mut Reader<'_>,
    keep_alive: u16,
    writer_done: &CancellationToken,
    revoke: &CancellationToken,
) -> Option<DisconnectReason> {
    let max = reader.conn.ctx.config.max_packet.as_u64() as usize;
    // MQTT: the server may close after 1.5 keep-alive periods of silence.
    let idle = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
    loop {
        // Parse everything already buffered into one journal submission.
        let mut batch = Batch::default();
        let stop = reader.parse(buf.bytes(), max, &mut batch).await;
        if let ControlFlow::Break(reason) = reader.submit(&mut batch).await {
            return reason;
        }
        if let ControlFlow::Break(reason) = stop {
            return reason;
        }

        buf.prepare();
        let bytes = buf.bytes();
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, rd.read_buf(bytes)).await.ok(),
                None => Some(rd.read_buf(bytes).await),
            }
        };
        let n = tokio::select! {
            // A child of conn_token: one wait covers shutdown, takeover and revocation, so
            // authentication adds nothing to a read.
            _ = revoke.cancelled() => return Some(reader.revoked()),
            _ = writer_done.cancelled() => return None,
            r = read => match r {
                None => {
                    tracing::info!("Closing connection: no packet within 1.5 keep-alive periods.");
                    return Some(DisconnectReason::KeepAliveTimeout);
                }
                Some(Ok(0)) | Some(Err(_)) => return None,
                Some(Ok(n)) => n,
            },
        };
        buf.record(n);
    }
}

impl Reader<'_> {
    /// Turns every complete packet in `buf` into `batch`; breaks at the packet that ends
    /// the connection (what came before it is still journaled and acknowledged).
    async fn parse(&mut self, buf: &mut BytesMut, max: usize, batch: &mut Batch) -> Flow {
        loop {
            match codec::read(self.conn.version, buf, max) {
                Ok(Frame::Incomplete) => return ControlFlow::Continue(()),
                Ok(Frame::Packet(p)) => self.packet(p, batch).await?,
                Err(e) => return ControlFlow::Break(Some(self.rejected(e))),
            }
        }
    }

    async fn packet(&mut self, packet: Inbound, batch: &mut Batch) -> Flow {
        match packet {
            Inbound::Publish(p) => return self.publish(p, batch),
            Inbound::PubRel { pkid } => {
                self.conn
                    .awaiting_rel
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pkid);
                batch.actions.push(Action::PubComp(pkid));
            }
            Inbound::PingReq => batch.actions.push(Action::PingResp),
            // Boxed: opening a subscription awaits the bus through several layers, and that
            // state, kept inline, would size every connection's task for its whole life.
            Inbound::Subscribe { pkid, filters } => {
                Box::pin(self.subscribe(pkid, filters, batch)).await
            }
            Inbound::Unsubscribe { pkid, filters } => {
                batch.actions.push(Action::UnsubAck { pkid, filters })
            }
            Inbound::Ignored => {}
            Inbound::Disconnect => return ControlFlow::Break(None),
            Inbound::Unexpected(what) => {
                add(&self.conn.ctx.counters.rejected_malformed, 1);
                tracing::warn!(packet = what, "Closing connection: protocol error.");
                return ControlFlow::Break(Some(DisconnectReason::ProtocolError));
            }
        }
        ControlFlow::Continue(())
    }

    /// A PUBLISH: journaled unless its topic, the device's rights or a QoS 2 resend say
    /// otherwise; its ack (if any) takes its place in the batch's order either way.
    fn publish(&mut self, p: Publish, batch: &mut Batch) -> Flow {
        let counters = &self.conn.ctx.counters;
        if p.topic_alias.is_some() {
            add(&counters.rejected_topic, 1);
            tracing::warn!("Closing connection: topic alias used but none was offered.");
            return ControlFlow::Break(Some(DisconnectReason::TopicAliasInvalid));
        }
        let topic = match validate_topic(p.topic) {
            Ok(t) => t,
            Err(why) => {
                add(&counters.rejected_topic, 1);
                tracing::warn!(reason = why, "Closing connection: invalid publish topic.");
                return ControlFlow::Break(Some(topic_disconnect_reason(why)));
            }
        };
        if topic.starts_with('$') {
            add(&counters.rejected_system_topic, 1);
            batch.ack(p.qos, p.pkid, None, AckReason::TopicNameInvalid);
            return ControlFlow::Continue(());
        }
        if !self.may_publish(&topic) {
            return self.refuse_publish(&topic, p.qos, p.pkid, batch);
        }
        if p.qos == 2 && !self.first_receipt(p.pkid) {
            // Resent before PUBREL: already journaled.
            batch.ack(p.qos, p.pkid, None, AckReason::Success);
            return ControlFlow::Continue(());
        }
        let ctx = self.conn.ctx;
        let index = batch.readings.len();
        if ctx.bus.is_some() && ctx.subscribers.load(Ordering::Relaxed) > 0 {
            batch
                .local
                .push((topic.clone(), p.payload.clone(), p.retain));
        }
        batch.readings.push(Reading {
            ingest_ms: now_ms(),
            source_kind: SourceKind::MqttListener,
            source: self.conn.client_id.to_owned(),
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
        });
        let remember = p.qos > 0 && self.conn.remember_packets;
        batch.packets.push(remember.then_some(Packet {
            pkid: p.pkid,
            dup: p.dup,
        }));
        batch.ack(p.qos, p.pkid, Some(index), AckReason::Success);
        ControlFlow::Continue(())
    }

    /// Whether the device may publish on `topic` (always, without authentication).
    fn may_publish(&self, topic: &str) -> bool {
        self.conn
            .auth
            .rights
            .as_ref()
            .is_none_or(|r| r.may_publish(topic))
    }

    /// A publish outside the device's rights: never journaled, and the readings around it
    /// go on in order. MQTT 5 answers it 0x87; 3.1.1, which has no negative ack, closes
    /// after `max_refused_publishes`, since the device would resend the withheld one for
    /// ever.
    fn refuse_publish(&mut self, topic: &str, qos: u8, pkid: u16, batch: &mut Batch) -> Flow {
        add(&self.conn.ctx.counters.rejected_not_authorized, 1);
        self.refused = self.refused.saturating_add(1);
        let refused = self.refused;
        if let Some(skipped) = self.refusal_log.allow() {
            tracing::warn!(topic = %topic, refused, skipped, "Refusing publish: topic outside the device's rights (not journaled).");
        }
        if self.conn.version == Version::V5 {
            batch.ack(qos, pkid, None, AckReason::NotAuthorized);
        } else if refused >= self.conn.auth.max_refused {
            tracing::warn!(refused, "Closing connection: too many publishes outside the device's rights (mqtt.auth.max_refused_publishes).");
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// Records a QoS 2 packet id as received; `false` if it already was (a resend).
    fn first_receipt(&self, pkid: u16) -> bool {
        self.conn
            .awaiting_rel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pkid)
    }

    /// A SUBSCRIBE: filters outside the device's rights never reach the bus; the rest
    /// are added to the connection's local subscription.
    async fn subscribe(&mut self, pkid: u16, filters: Vec<String>, batch: &mut Batch) {
        let conn = &self.conn;
        let allowed: Vec<bool> = filters
            .iter()
            .map(|f| conn.auth.rights.as_ref().is_none_or(|r| r.may_subscribe(f)))
            .collect();
        let denied = allowed.iter().filter(|a| !**a).count();
        if denied > 0 {
            add(&conn.ctx.counters.subscribe_not_authorized, denied as u64);
            if let Some(skipped) = self.refusal_log.allow() {
                tracing::warn!(
                    refused = denied,
                    skipped,
                    "Refusing SUBSCRIBE filters outside the device's rights."
                );
            }
        }
        let filters: Vec<String> = filters
            .into_iter()
            .zip(&allowed)
            .filter(|(_, a)| **a)
            .map(|(f, _)| f)
            .collect();
        let granted = self
            .subscriptions
            .add(conn.ctx, conn.client_id, filters, &conn.tx, conn.conn_token)
            .await;
        batch.actions.push(Action::SubAck {
            pkid,
            granted: sub_codes(&allowed, granted),
        });
    }

    /// Counts a packet that could not be read and says how to close over it.
    fn rejected(&self, e: CodecError) -> DisconnectReason {
        let counters = &self.conn.ctx.counters;
        let reason = if matches!(e, CodecError::TooLarge { .. }) {
            add(&counters.rejected_oversized, 1);
            DisconnectReason::PacketTooLarge
        } else {
            add(&counters.rejected_malformed, 1);
            DisconnectReason::Malformed
        };
        tracing::warn!(error = %e, "Closing connection: rejected packet; the readings before it are kept.");
        reason
    }

    /// Hands a batch's readings to the journal (one submission, behind the connection's
    /// fence) and its actions to the writer. Breaks when the journal or the writer is gone.
    async fn submit(&mut self, batch: &mut Batch) -> Flow {
        let Batch {
            readings,
            packets,
            local,
            actions,
        } = std::mem::take(batch);
        if readings.is_empty() && actions.is_empty() {
            return ControlFlow::Continue(());
        }
        let commit = if readings.is_empty() {
            None
        } else {
            let ctx = self.conn.ctx;
            add(&ctx.counters.readings_received, readings.len() as u64);
            // Boxed, one allocation a batch: the submission holds the request twice over
            // while it waits for room in the journal's queue, and kept inline that would
            // size every connection's task, idle or not, for its whole life.
            let submission = Box::pin(ctx.journal.submit_packets(
                readings,
                packets,
                Some(self.fence.clone()),
            ));
            match submission.await {
                Ok(rx) => Some(rx),
                Err(e) => {
                    tracing::error!(error = %e, "Journal unavailable; closing the connection without acknowledging.");
                    return ControlFlow::Break(Some(DisconnectReason::ShuttingDown));
                }
            }
        };
        let out = Out::Batch(Box::new(Pending {
            commit,
            actions,
            local,
        }));
        if self.conn.tx.send(out).await.is_err() {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// Why the connection's revoke token fired: shutdown, takeover, or a reload that
    /// changed the device's grant.
    fn revoked(&self) -> DisconnectReason {
        let ctx = self.conn.ctx;
        if ctx.shutdown.is_cancelled() {
            DisconnectReason::ShuttingDown
        } else if self.conn.conn_token.is_cancelled() {
            DisconnectReason::SessionTakenOver
        } else {
            add(&ctx.counters.auth_revoked, 1);
            tracing::info!("Closing connection: a reload changed or removed the device's credentials or rights; it must log in again.");
            DisconnectReason::NotAuthorized
        }
    }
}

/// A publish topic must be UTF-8, non-empty and free of wildcards.
fn validate_topic(topic: Bytes) -> Result<String, &'static str> {
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| TOPIC_NOT_UTF8)?;
    if topic.is_empty() {
        return Err("empty topic");
    }
    if topic.contains(['+', '#']) {
        return Err("wildcard in a publish topic");
    }
    if topic.contains('\0') {
        return Err(TOPIC_NUL);
    }
    Ok(topic)
}

const TOPIC_NOT_UTF8: &str = "topic is not UTF-8";
const TOPIC_NUL: &str = "NUL in topic";

/// The MQTT 5 reason for closing over a bad topic: ill-formed UTF-8 (a NUL included) makes
/// the packet malformed (0x81, spec 1.5.4); an empty or wildcard topic is a protocol error.
fn topic_disconnect_reason(why: &str) -> DisconnectReason {
    if why == TOPIC_NOT_UTF8 || why == TOPIC_NUL {
        DisconnectReason::Malformed
    } else {
        DisconnectReason::ProtocolError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_topics_with_wildcards_or_bad_utf8_are_refused() {
        assert!(validate_topic(Bytes::from_static(b"turbines/wt-1/telemetry")).is_ok());
        assert!(validate_topic(Bytes::from_static(b"a/+/b")).is_err());
        assert!(validate_topic(Bytes::from_static(b"a/#")).is_err());
        assert!(validate_topic(Bytes::from_static(b"")).is_err());
        assert!(validate_topic(Bytes::from_static(b"\xff\xfe")).is_err());
    }
}

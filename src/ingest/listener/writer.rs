//! The write half of a device connection: owns the ack order. It awaits each batch's
//! journal commit in the order the reader queued them and only then writes that batch's
//! acknowledgements (invariant 1: durable before acknowledged), so a device's acks keep
//! the order of its publishes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::ingest::codec::{self, AckReason, DisconnectReason, SubCode, Version};
use crate::ingest::local_bus::LocalBus;
use crate::journal::{Appended, JournalError};
use crate::telemetry::{add, IngestCounters};

/// An acknowledgement waiting for its commit.
#[derive(Debug)]
pub(super) enum Action {
    /// PUBACK (QoS 1) or PUBREC (QoS 2) of the reading at `index` in the batch; `None`
    /// when the reading was not journaled and `reason` says why.
    Ack {
        qos: u8,
        pkid: u16,
        index: Option<usize>,
        reason: AckReason,
    },
    PubComp(u16),
    PingResp,
    SubAck {
        pkid: u16,
        granted: Vec<SubCode>,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
}

/// The journal's answer to one batch's submission.
pub(super) type Commit = oneshot::Receiver<Result<Appended, JournalError>>;

/// What the reader hands the writer, over the connection's [`channel`].
///
/// Kept to 16 bytes, its larger variants boxed: the channel keeps one empty node of it
/// for as long as the connection lasts.
pub(super) enum Out {
    Batch(Box<Pending>),
    /// A reading for this connection's local subscription (QoS 0, written at once).
    Deliver(Box<LocalReading>),
    Close(Option<DisconnectReason>),
}

/// A batch's acknowledgements waiting for its commit.
pub(super) struct Pending {
    pub(super) commit: Option<Commit>,
    pub(super) actions: Vec<Action>,
    /// Each reading of the batch, for local subscribers once committed; empty when there
    /// is no bus.
    pub(super) local: Vec<LocalReading>,
}

/// A reading as local subscribers get it: (topic, payload, retain).
pub(super) type LocalReading = (String, Bytes, bool);

/// Batches the reader may queue ahead of the writer (plus one per sender).
const QUEUED: usize = 64;

/// The channel from a connection's reader (and its local subscription) to its writer.
///
/// futures' bounded channel rather than tokio's: tokio's allocates its shared state
/// (512 bytes, padded to cache lines) and a block of 32 slots as soon as it is made,
/// about 1 KiB that every connection, idle or not, holds for its whole life; this one
/// takes about 250 bytes, and a node per message sent.
pub(super) fn channel() -> (mpsc::Sender<Out>, mpsc::Receiver<Out>) {
    mpsc::channel(QUEUED)
}

/// The write half and what it needs to encode acks.
pub(super) struct Writer<W> {
    wr: W,
    version: Version,
    counters: Arc<IngestCounters>,
    bus: Option<Arc<LocalBus>>,
    /// QoS 2 packet ids the reader holds as received; a refused one is forgotten here so
    /// that the device's resend is journaled.
    awaiting_rel: Arc<Mutex<HashSet<u16>>>,
    /// Grows to the largest batch of acknowledgements written, from nothing: a device that
    /// sends a reading a second needs 4 bytes of it.
    out: BytesMut,
}

/// Whether the connection goes on after a message ([`Step::Stop`]: the writer is done,
/// and has shut the socket down where it had something to say).
#[derive(PartialEq, Eq)]
enum Step {
    Next,
    Stop,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(super) fn new(
        wr: W,
        version: Version,
        counters: Arc<IngestCounters>,
        bus: Option<Arc<LocalBus>>,
        awaiting_rel: Arc<Mutex<HashSet<u16>>>,
    ) -> Self {
        Writer {
            wr,
            version,
            counters,
            bus,
            awaiting_rel,
            out: BytesMut::new(),
        }
    }

    /// Writes what the reader queues until it closes the connection or a write fails;
    /// cancels `done` when it ends, however it ends, so the reader stops too.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Out>, done: CancellationToken) {
        let _done = done.drop_guard();
        while let Some(msg) = rx.next().await {
            let step = match msg {
                Out::Deliver(reading) => {
                    let (topic, payload, retain) = *reading;
                    codec::write_publish(self.version, &topic, payload, retain, &mut self.out);
                    self.flush().await
                }
                Out::Batch(pending) => self.batch(*pending).await,
                Out::Close(reason) => {
                    if let Some(r) = reason {
                        codec::write_disconnect(self.version, r, &mut self.out);
                        let _ = self.wr.write_all(&self.out).await;
                    }
                    let _ = self.wr.shutdown().await;
                    Step::Stop
                }
            };
            if step == Step::Stop {
                return;
            }
        }
    }

    /// Writes what is encoded, if anything.
    async fn flush(&mut self) -> Step {
        if !self.out.is_empty() {
            if self.wr.write_all(&self.out).await.is_err() {
                return Step::Stop;
            }
            self.out.clear();
        }
        Step::Next
    }

    /// Awaits a batch's commit, then hands its accepted readings to local subscribers
    /// and writes its acks. A reading the journal refused ends the connection after them.
    async fn batch(&mut self, pending: Pending) -> Step {
        let Pending {
            commit,
            actions,
            local,
        } = pending;
        let Some(accepted) = self.committed(commit).await else {
            return Step::Stop;
        };
        if let Some(bus) = &self.bus {
            if !local.is_empty() {
                bus.publish_batch(local.into_iter().take(accepted));
            }
        }
        let refused = self.encode_acks(actions, accepted);
        if self.flush().await == Step::Stop {
            return Step::Stop;
        }
        if refused {
            // DEBUG: every device resends and is refused again while the journal is
            // full; the journal writer sums the refusals up every 10 s at WARN.
            tracing::debug!("Journal full (on_full = \"reject\"): refusing the device's readings and closing its connection; it keeps them and resends.");
            self.out.clear();
            codec::write_disconnect(self.version, DisconnectReason::QuotaExceeded, &mut self.out);
            let _ = self.wr.write_all(&self.out).await;
            let _ = self.wr.shutdown().await;
            return Step::Stop;
        }
        Step::Next
    }

    /// How many of the batch's readings the journal accepted (all of them when it had
    /// none). `None` when the commit failed or the journal is gone: nothing of the batch
    /// may be acknowledged, and the socket is shut down.
    async fn committed(&mut self, commit: Option<Commit>) -> Option<usize> {
        let Some(rx) = commit else {
            return Some(usize::MAX);
        };
        match rx.await {
            Ok(Ok(a)) => Some(a.accepted),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Journal commit failed; closing without acknowledging.");
                let _ = self.wr.shutdown().await;
                None
            }
            Err(_) => {
                let _ = self.wr.shutdown().await;
                None
            }
        }
    }

    /// Encodes the acks of a batch whose first `accepted` readings were journaled.
    /// Returns whether the journal refused one: then nothing later from this connection
    /// can be journaled (see [`Fence`](crate::journal::Fence)), so it closes after this
    /// batch and the device resends from the refused reading on a new connection.
    fn encode_acks(&mut self, actions: Vec<Action>, accepted: usize) -> bool {
        let version = self.version;
        let mut refused = false;
        for action in actions {
            match action {
                Action::Ack {
                    qos,
                    pkid,
                    index,
                    reason,
                } => {
                    let reason = match index {
                        Some(i) if i >= accepted => {
                            self.refused(qos, pkid);
                            refused = true;
                            if version == Version::V4 {
                                // 3.1.1 has no negative ack: withhold it.
                                break;
                            }
                            AckReason::QuotaExceeded
                        }
                        Some(_) => {
                            add(&self.counters.readings_acknowledged, 1);
                            reason
                        }
                        None => reason,
                    };
                    codec::write_ack(version, qos, pkid, reason, &mut self.out);
                }
                Action::PubComp(pkid) => codec::write_pubcomp(version, pkid, &mut self.out),
                Action::PingResp => codec::write_pingresp(&mut self.out),
                Action::SubAck { pkid, granted } => {
                    codec::write_suback(version, pkid, &granted, &mut self.out)
                }
                Action::UnsubAck { pkid, filters } => {
                    codec::write_unsuback(version, pkid, filters, &mut self.out)
                }
            }
        }
        refused
    }

    /// Counts a reading the journal refused; a QoS 2 one is forgotten as received, so
    /// its resend is not taken for a duplicate.
    fn refused(&self, qos: u8, pkid: u16) {
        add(&self.counters.rejected_full, 1);
        if qos == 2 {
            self.awaiting_rel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pkid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_reader_queues_takes_16_bytes() {
        // The channel keeps an empty node of it for the connection's whole life.
        assert!(std::mem::size_of::<Out>() <= 16);
    }
}

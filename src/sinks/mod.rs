//! Sinks: the upstream systems a forwarder delivers journal batches to.
//!
//! A [`Sink`] is the seam between the generic forwarding loop (cursor, batching, retry,
//! backoff — see [`crate::forward`]) and one upstream protocol. A sink must deliver a batch
//! in order and report success only when the upstream has acknowledged every record of it;
//! the forwarder advances its cursor on that success and on nothing else.
//!
//! Sinks: [`kafka`] (a Kafka-protocol cluster) and [`mqtt`] (an upstream MQTT broker, the
//! bridge's upstream direction).

use std::future::Future;
use std::sync::Arc;

use crate::record::Record;
use crate::telemetry::ForwardCounters;

pub mod kafka;
pub mod mqtt;

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The upstream may accept the batch later (unreachable, timed out, leader moved,
    /// throttled). The forwarder backs off and sends the same batch again.
    #[error("{0}")]
    Retryable(String),
    /// The upstream refuses the batch and will keep refusing it until an operator acts
    /// (topic missing and not allowed to create it, authorization denied, record larger
    /// than the cluster accepts). The forwarder logs at ERROR and retries slowly, holding
    /// the cursor: nothing later is sent ahead of it.
    #[error("{0}")]
    Fatal(String),
}

impl SinkError {
    /// Whether the error is expected to clear up by itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_))
    }
}

/// One upstream protocol.
pub trait Sink: Send {
    /// Delivers `batch` — records in journal order, contiguous sequence numbers — and
    /// resolves once the upstream has acknowledged all of them.
    ///
    /// On error the forwarder calls `send` again with the *same* batch before anything
    /// later. A sink may remember which part of that batch was already acknowledged and
    /// skip it on the retry; it must never send a later record before an earlier one of the
    /// same key has been acknowledged.
    fn send(&mut self, batch: &[Record]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once by the forwarder before the first [`Sink::send`]: the journal's epoch
    /// (with the gateway id and sequence number it names a reading for good) and the
    /// upstream's counters. A sink that de-duplicates after a restart needs the epoch.
    fn attach(&mut self, _attachment: Attachment) {}

    /// Whether the forwarder should put a gap marker ([`crate::forward::gap_marker`]) into
    /// a batch where `drop-oldest` removed readings this upstream had not sent. A sink
    /// that says yes must deliver the marker as its protocol's explicit gap record; others
    /// see only readings.
    fn wants_gap_markers(&self) -> bool {
        false
    }
}

/// What a forwarder hands its sink at start; see [`Sink::attach`].
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The journal's epoch; `None` only for a journal opened read-only by an older build.
    pub epoch: Option<u64>,
    /// The upstream's counters (a sink bumps `duplicates_skipped`).
    pub counters: Arc<ForwardCounters>,
}

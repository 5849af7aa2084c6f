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

use crate::record::Record;

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
}

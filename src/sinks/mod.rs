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

use crate::record::Item;
use crate::telemetry::ForwardCounters;

pub mod kafka;
pub mod mqtt;

/// The underlying error a [`SinkError`] keeps as its source.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a batch was not delivered.
///
/// `message` is the whole operator-facing sentence (it names the upstream, what was being
/// done, the cause and the fix; logs and `status` show it), so `Display` prints it alone.
/// `source` keeps the underlying error, when there is one, for whoever walks the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The upstream may accept the batch later (unreachable, timed out, leader moved,
    /// throttled). The forwarder backs off and sends the same batch again.
    #[error("{message}")]
    Retryable {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// The upstream refuses the batch and will keep refusing it until an operator acts
    /// (topic missing and not allowed to create it, authorization denied, record larger
    /// than the cluster accepts). The forwarder logs at ERROR and retries slowly, holding
    /// the cursor: nothing later is sent ahead of it.
    #[error("{message}")]
    Fatal {
        message: String,
        #[source]
        source: Option<Cause>,
    },
}

impl SinkError {
    /// A retryable error with no underlying error of its own (a timeout, say).
    pub fn retryable(message: impl Into<String>) -> SinkError {
        SinkError::Retryable {
            message: message.into(),
            source: None,
        }
    }

    /// A fatal error with no underlying error of its own (a missing topic, say).
    pub fn fatal(message: impl Into<String>) -> SinkError {
        SinkError::Fatal {
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping `cause` as its source.
    pub fn caused_by(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> SinkError {
        match &mut self {
            SinkError::Retryable { source, .. } | SinkError::Fatal { source, .. } => {
                *source = Some(cause.into())
            }
        }
        self
    }

    /// Whether the error is expected to clear up by itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable { .. })
    }

    /// The operator-facing sentence.
    pub fn message(&self) -> &str {
        match self {
            SinkError::Retryable { message, .. } | SinkError::Fatal { message, .. } => message,
        }
    }

    /// This error made fatal with `message` (an operator must act after all), keeping
    /// its source.
    pub fn into_fatal(self, message: impl Into<String>) -> SinkError {
        let source = match self {
            SinkError::Retryable { source, .. } | SinkError::Fatal { source, .. } => source,
        };
        SinkError::Fatal {
            message: message.into(),
            source,
        }
    }
}

/// One upstream protocol.
pub trait Sink: Send {
    /// Delivers `batch` — items in journal order (increasing
    /// [`Position`](crate::record::Position)): readings, a [`Gap`](crate::record::Gap) in
    /// place of readings removed before this upstream had them, and a
    /// [`Thinned`](crate::record::Thinned) marker in front of the first reading of a span
    /// kept at a lower resolution (markers only for a sink that
    /// [wants them](Sink::wants_gap_markers)) — and resolves once the upstream has
    /// acknowledged all of them.
    ///
    /// On error the forwarder calls `send` again with the *same* batch before anything
    /// later. A sink may remember which part of that batch was already acknowledged and
    /// skip it on the retry; it must never send a later record before an earlier one of the
    /// same key has been acknowledged.
    fn send(&mut self, batch: &[Item]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once by the forwarder before the first [`Sink::send`]: the journal's epoch
    /// (with the gateway id and sequence number it names a reading for good) and the
    /// upstream's counters. A sink that de-duplicates after a restart needs the epoch.
    fn attach(&mut self, _attachment: Attachment) {}

    /// Whether the forwarder should put markers into a batch: a gap marker ([`Item::Gap`])
    /// where `drop-oldest` or `max_age` removed readings this upstream had not sent, and a
    /// thinned marker ([`Item::Thinned`]) in front of a span `on_full = "thin"` holds at a
    /// lower resolution. A sink that says yes must deliver each as its protocol's explicit
    /// marker record; others see only readings (the forwarder counts and logs the rest).
    fn wants_gap_markers(&self) -> bool {
        false
    }
}

/// Attaches fresh counters under `epoch` to a sink driven on its own, without a forwarder
/// (tests, benchmarks), and returns them: its wire bytes and skipped duplicates land there.
pub fn attach_counters(sink: &mut impl Sink, epoch: Option<u64>) -> Arc<ForwardCounters> {
    let counters = Arc::new(ForwardCounters::default());
    sink.attach(Attachment {
        epoch,
        counters: counters.clone(),
    });
    counters
}

/// What a forwarder hands its sink at start; see [`Sink::attach`].
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The journal's epoch; `None` only for a journal opened read-only by an older build.
    pub epoch: Option<u64>,
    /// The upstream's counters (a sink bumps `duplicates_skipped`, `wire_sent` and
    /// `wire_received`).
    pub counters: Arc<ForwardCounters>,
}

//! Classification of the Kafka sink's failures into retryable or fatal (with the hint an
//! operator needs), whether the connection must be rebuilt, and the [`SinkError`] that
//! names the upstream and keeps the Kafka error as its source.

use std::future::Future;
use std::time::Duration;

use rskafka::client::error::{Error as KafkaError, ProtocolError, RequestError};

use super::KafkaSink;
use crate::sinks::SinkError;

impl KafkaSink {
    /// Runs one network call with the request timeout, turning any failure into a
    /// [`SinkError`] that names the upstream and what was being done.
    pub(super) async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(what, Failure::Kafka(e))),
            Err(_) => Err(self.error(what, Failure::TimedOut)),
        }
    }

    /// The error for `failure` while doing `what`.
    pub(super) fn error(&self, what: &str, failure: Failure) -> SinkError {
        let verdict = failure.verdict();
        let message = format!(
            "{}: {what} failed: {}{}",
            self.target,
            failure.describe(self.request_timeout),
            verdict.hint.map(|h| format!("; {h}")).unwrap_or_default()
        );
        failure.into_error(verdict.severity, message)
    }
}

/// A failed network call.
#[derive(Debug)]
pub(super) enum Failure {
    Kafka(KafkaError),
    /// No answer within `request_timeout`.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Severity {
    Retryable,
    Fatal,
}

impl Severity {
    pub(super) fn error(self, message: String) -> SinkError {
        match self {
            Severity::Retryable => SinkError::retryable(message),
            Severity::Fatal => SinkError::fatal(message),
        }
    }
}

/// How to treat a failure.
#[derive(Debug, Clone, Copy)]
pub(super) struct Verdict {
    pub(super) severity: Severity,
    /// Whether the cached connection and partition clients must be dropped.
    pub(super) reconnect: bool,
    /// What an operator should do, for fatal errors.
    pub(super) hint: Option<&'static str>,
}

impl Verdict {
    pub(super) const RETRY: Verdict = Verdict {
        severity: Severity::Retryable,
        reconnect: false,
        hint: None,
    };
    pub(super) const RECONNECT: Verdict = Verdict {
        severity: Severity::Retryable,
        reconnect: true,
        hint: None,
    };

    pub(super) fn fatal(hint: &'static str) -> Verdict {
        Verdict {
            severity: Severity::Fatal,
            reconnect: false,
            hint: Some(hint),
        }
    }
}

impl Failure {
    pub(super) fn describe(&self, timeout: Duration) -> String {
        match self {
            Failure::Kafka(e) => e.to_string(),
            Failure::TimedOut => format!(
                "no answer within request_timeout ({})",
                humantime::format_duration(timeout)
            ),
        }
    }

    pub(super) fn verdict(&self) -> Verdict {
        match self {
            Failure::TimedOut => Verdict::RECONNECT,
            Failure::Kafka(e) => classify(e),
        }
    }

    /// The [`SinkError`] of `severity` saying `message`, keeping the Kafka error as its
    /// source.
    pub(super) fn into_error(self, severity: Severity, message: String) -> SinkError {
        let error = severity.error(message);
        match self {
            Failure::Kafka(e) => error.caused_by(e),
            Failure::TimedOut => error,
        }
    }
}

/// Sorts an rskafka error into retryable or fatal, and says whether the connection must be
/// rebuilt.
pub(super) fn classify(error: &KafkaError) -> Verdict {
    match error {
        KafkaError::ServerError { protocol_error, .. } => classify_protocol(protocol_error),
        KafkaError::Request(e) => classify_request(e),
        KafkaError::Connection(e) => match e {
            rskafka::ConnectionError::SyncVersions(_) => Verdict {
                reconnect: true,
                ..Verdict::fatal(
                    "the broker does not support the Kafka API versions tidegate needs \
                     (Kafka 0.11 or later)",
                )
            },
            rskafka::ConnectionError::SaslFailed(_) => Verdict {
                reconnect: true,
                ..Verdict::fatal("check the upstream's credentials")
            },
            _ => Verdict::RECONNECT,
        },
        // rskafka gave up retrying errors it considers transient.
        KafkaError::RetryFailed(_) | KafkaError::Timeout | KafkaError::InvalidResponse(_) => {
            Verdict::RECONNECT
        }
        _ => Verdict::RECONNECT,
    }
}

pub(super) fn classify_request(error: &RequestError) -> Verdict {
    match error {
        RequestError::NoVersionMatch { .. } => Verdict {
            reconnect: true,
            ..Verdict::fatal(
                "the broker does not support a Kafka API version tidegate needs \
                 (Kafka 0.11 or later)",
            )
        },
        RequestError::Poisoned(inner) => classify_request(inner),
        // I/O, framing and decoding errors: the connection is unusable.
        _ => Verdict::RECONNECT,
    }
}

pub(super) fn classify_protocol(error: &ProtocolError) -> Verdict {
    use ProtocolError as P;
    match error {
        // Metadata is stale: leadership moved or the topic is (re)appearing.
        P::UnknownTopicOrPartition
        | P::LeaderNotAvailable
        | P::NotLeaderOrFollower
        | P::BrokerNotAvailable
        | P::ReplicaNotAvailable
        | P::NetworkException
        | P::NotController
        | P::FencedLeaderEpoch
        | P::UnknownLeaderEpoch
        | P::ListenerNotFound
        | P::PreferredLeaderNotAvailable
        | P::EligibleLeadersNotAvailable => Verdict::RECONNECT,
        // Transient on the broker side; the connection is fine.
        P::UnknownServerError
        | P::CorruptMessage
        | P::RequestTimedOut
        | P::NotEnoughReplicas
        | P::NotEnoughReplicasAfterAppend
        | P::KafkaStorageError
        | P::CoordinatorLoadInProgress
        | P::CoordinatorNotAvailable
        | P::NotCoordinator
        | P::OffsetNotAvailable
        | P::ReassignmentInProgress
        | P::ThrottlingQuotaExceeded
        | P::ConcurrentTransactions
        | P::OperationNotAttempted => Verdict::RETRY,
        P::TopicAuthorizationFailed
        | P::ClusterAuthorizationFailed
        | P::TransactionalIdAuthorizationFailed => Verdict::fatal(
            "grant this client WRITE (and DESCRIBE, plus CREATE if create_topic is set) on \
             the topic",
        ),
        P::SaslAuthenticationFailed | P::UnsupportedSaslMechanism | P::IllegalSaslState => {
            Verdict::fatal("check the upstream's authentication settings")
        }
        P::MessageTooLarge | P::RecordListTooLarge => Verdict::fatal(
            "a reading is larger than the cluster accepts; raise the topic's \
             max.message.bytes (and the broker's message.max.bytes) or lower \
             mqtt.max_packet",
        ),
        P::InvalidTopicException => Verdict::fatal("fix the upstream's topic name"),
        P::InvalidReplicationFactor | P::InvalidPartitions | P::InvalidReplicaAssignment => {
            Verdict::fatal(
                "the cluster refuses the upstream's partitions / replication_factor; create \
                 the topic by hand or change those settings",
            )
        }
        P::PolicyViolation | P::InvalidConfig => {
            Verdict::fatal("the cluster's policy refuses this request; ask its operator")
        }
        P::UnsupportedVersion | P::UnsupportedForMessageFormat => Verdict::fatal(
            "the broker does not support the request tidegate sends (Kafka 0.11 or later)",
        ),
        P::UnsupportedCompressionType => Verdict::fatal(
            "the broker does not support the configured compression; choose another codec",
        ),
        P::InvalidTimestamp => Verdict::fatal(
            "the broker refuses the record timestamps; check this gateway's clock and the \
             topic's message.timestamp.*.max.ms",
        ),
        _ => Verdict::fatal("the cluster refuses the request; see the error"),
    }
}

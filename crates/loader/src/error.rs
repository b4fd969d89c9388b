//! The loader's errors, each with its cause kept, and what retrying can do about each
//! ([`Retry`], the lake's classification): every stage returns these, and the commit stage
//! decides from [`Error::retry`] whether a failed batch is retried at once, later, a few
//! times, or stops the loader.

use floe_lake::Retry;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Lake-layer failure (catalog, files, commit).
    #[error(transparent)]
    Lake(#[from] floe_lake::Error),
    /// An aggregate definition or query failed.
    #[error(transparent)]
    Aggregate(#[from] floe_aggregate::Error),
    /// Schema-layer failure (decoder set-up, dead-letter schema).
    #[error(transparent)]
    Schema(#[from] floe_schema::Error),
    /// A message was rejected and no dead-letter destination is configured: loading stops
    /// rather than drop data.
    #[error("{source_name}: message rejected and no dead-letter table is configured: {reason}")]
    Rejected {
        /// Where the message came from (`file:… line N`, `topic[p]@offset`).
        source_name: String,
        /// Why.
        reason: String,
    },
    /// Configuration is unusable; the message names the setting.
    #[error("configuration: {0}")]
    Config(String),
    /// The computed columns or rules failed on a chunk as a whole (not one row).
    #[error("transform: {0}")]
    Transform(String),
    /// Kafka client failure.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What floe was doing.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// Producing dead letters to their topic failed.
    #[error("producing to dead-letter topic {topic}: {source}")]
    DeadLetterTopic {
        /// The dead-letter topic.
        topic: String,
        /// The producer's error.
        #[source]
        source: KafkaError,
    },
    /// Reading input failed.
    #[error("{context}: {source}")]
    Io {
        /// What floe was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A step of a batch failed; `source` says why.
    #[error("{doing}: {source}")]
    During {
        /// The step (`rebuilding the dedup state`).
        doing: &'static str,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// A task of floe's own failed (panicked or was cancelled).
    #[error("internal: {0}")]
    Internal(String),
    /// A pipeline's flushes failed in a way retrying does not mend: the loader stops. Nothing
    /// of the failed batch is committed; a restart reads it again.
    #[error("{table}: {source}; stopping: {verdict}")]
    Stopped {
        /// The pipeline's table.
        table: String,
        /// Why the flush failed.
        #[source]
        source: Box<Error>,
        /// Why it is not retried (again).
        verdict: String,
    },
}

impl Error {
    /// `source` with what floe was doing when it failed.
    pub fn during(doing: &'static str, source: impl Into<Error>) -> Self {
        Error::During {
            doing,
            source: Box::new(source.into()),
        }
    }

    /// A Kafka client failure while doing `context`.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }

    /// Whether trying again later may succeed: the lake's storage or catalog failed in a way
    /// that can heal (unreachable, timed out, a lost race).
    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::Transient
    }

    /// What retrying the operation that failed can do.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Lake(e) => e.retry(),
            Error::Aggregate(e) if e.retryable() => Retry::Unknown,
            Error::DeadLetterTopic { source, .. } => produce_retry(source),
            Error::During { source, .. } => source.retry(),
            Error::Io { .. } => Retry::Transient,
            Error::Kafka { .. } | Error::Internal(_) => Retry::Unknown,
            Error::Aggregate(_)
            | Error::Schema(_)
            | Error::Rejected { .. }
            | Error::Config(_)
            | Error::Transform(_)
            | Error::Stopped { .. } => Retry::Permanent,
        }
    }
}

/// What retrying a refused send can do: a message the broker refuses for its size or for
/// authorization is refused again; a broker unreachable, slow or electing a leader may heal;
/// anything else is of unknown kind.
fn produce_retry(e: &KafkaError) -> Retry {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed,
        ) => Retry::Permanent,
        Some(
            C::MessageTimedOut
            | C::RequestTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::QueueFull
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend,
        ) => Retry::Transient,
        _ => Retry::Unknown,
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a batch's flush failed.
#[derive(Debug)]
pub(crate) enum FlushError {
    /// Another writer committed these offsets: rewind now, no pause.
    Fenced(floe_lake::Error),
    /// Anything else: rewind after a pause, or stop, as its class ([`Error::retry`]) says.
    Failed(Error),
}

impl From<Error> for FlushError {
    /// Fenced when the table already holds the batch's offsets; failed otherwise.
    fn from(e: Error) -> Self {
        match e {
            Error::Lake(e @ floe_lake::Error::OffsetsAlreadyCommitted { .. }) => {
                FlushError::Fenced(e)
            }
            e => FlushError::Failed(e),
        }
    }
}

impl From<floe_lake::Error> for FlushError {
    fn from(e: floe_lake::Error) -> Self {
        Error::Lake(e).into()
    }
}

impl From<floe_aggregate::Error> for FlushError {
    fn from(e: floe_aggregate::Error) -> Self {
        Error::Aggregate(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_failure_keeps_the_class_of_its_cause() {
        let fenced = FlushError::from(floe_lake::Error::OffsetsAlreadyCommitted {
            table: "lake.events".into(),
            topic: "events".into(),
            partition: 0,
            committed: 10,
            batch_first: 5,
        });
        assert!(matches!(fenced, FlushError::Fenced(_)));
        let overflow = Error::Aggregate(floe_aggregate::Error::Output {
            name: "total".into(),
            target: "lake.t".into(),
            message: "column total: Int64 does not cast to Int32".into(),
        });
        let FlushError::Failed(f) = FlushError::from(overflow) else {
            panic!("not fenced")
        };
        assert_eq!(f.retry(), Retry::Permanent);
        let storage = floe_lake::Error::Io {
            context: "writing".into(),
            source: std::io::Error::other("connection reset"),
        };
        let f = Error::during("rebuilding the dedup state", storage);
        assert_eq!(f.retry(), Retry::Transient);
        assert!(
            f.to_string()
                .starts_with("rebuilding the dedup state: writing"),
            "{f}"
        );
        let topic = |code| Error::DeadLetterTopic {
            topic: "events.dead-letters".into(),
            source: KafkaError::MessageProduction(code),
        };
        assert_eq!(
            topic(RDKafkaErrorCode::MessageSizeTooLarge).retry(),
            Retry::Permanent
        );
        assert_eq!(
            topic(RDKafkaErrorCode::AllBrokersDown).retry(),
            Retry::Transient
        );
        let stopped = Error::Stopped {
            table: "lake.events".into(),
            source: Box::new(topic(RDKafkaErrorCode::AllBrokersDown)),
            verdict: "it failed 5 times in a row".into(),
        };
        assert_eq!(stopped.retry(), Retry::Permanent);
        assert!(
            stopped
                .to_string()
                .starts_with("lake.events: producing to dead-letter topic")
        );
    }
}

//! Loading messages into tables: a [`sink::TableSink`] decodes each message against the table's
//! current schema, streams accepted rows into Parquet as they arrive, collects dead letters
//! with their reasons, and on flush commits rows and dead letters exactly once.
#![deny(missing_docs)]

pub mod aggregates;
pub mod config;
pub mod file;
pub mod generate;
pub mod kafka;
pub mod lines;
pub mod metrics;
pub mod produce;
pub mod replay;
pub mod run;
pub mod sink;
pub mod transform;

pub use floe_lake::Retry;
pub use sink::{FlushReport, SinkOptions, TableSink};

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
    /// Kafka client failure.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Reading input failed.
    #[error("{context}: {source}")]
    Io {
        /// What floe was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A task of floe's own failed (panicked or was cancelled).
    #[error("internal: {0}")]
    Internal(String),
    /// A pipeline's flushes failed in a way retrying does not mend: the loader stops. Nothing
    /// of the failed batch is committed; a restart reads it again.
    #[error("{table}: {reason}; stopping: {verdict}")]
    Stopped {
        /// The pipeline's table.
        table: String,
        /// Why the flush failed.
        reason: String,
        /// Why it is not retried (again).
        verdict: String,
    },
}

impl Error {
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
            Error::Io { .. } => Retry::Transient,
            Error::Kafka(_) | Error::Internal(_) => Retry::Unknown,
            Error::Aggregate(_)
            | Error::Schema(_)
            | Error::Rejected { .. }
            | Error::Config(_)
            | Error::Stopped { .. } => Retry::Permanent,
        }
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Incremental aggregates beside the raw table. Each definition in `sql/aggregates/` is a
//! DataFusion query over the virtual table `batch` (one flush's events, decoded and
//! deduplicated) that yields additive partial rows; partials of one key merge into exact
//! totals ([`definition::Merge`]), so each flush commits its partials exactly once and readers,
//! compaction and late events all see exact totals.
#![deny(missing_docs)]

pub mod date_bin;
pub mod dedup;
pub mod definition;
pub mod engine;
pub mod guard;
pub mod input;
pub mod query;

pub use definition::{AggregateDef, Merge};
pub use engine::{Aggregator, Form};

/// Errors of aggregates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition file is unusable; the message names the file and the problem.
    #[error("aggregate definition {0}")]
    Definition(String),
    /// A query failed to plan or run.
    #[error("aggregate {name}: {source}")]
    Query {
        /// The definition.
        name: String,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A schema change to `table` would break an aggregate reading it.
    #[error(
        "{table}: the change would break aggregate {name} (sql/aggregates/{name}.sql): {source}\n\
         change the query first (it reads the table's columns by name), or pass --force"
    )]
    Breaks {
        /// The table changed.
        table: String,
        /// The aggregate.
        name: String,
        /// Why its query no longer plans.
        #[source]
        source: Box<Error>,
    },
    /// The query's output does not fit the target table.
    #[error("aggregate {name}: output does not fit {target}: {message}")]
    Output {
        /// The definition.
        name: String,
        /// The target table.
        target: String,
        /// What does not fit.
        message: String,
    },
}

impl Error {
    /// Whether running the same batch again may succeed: only when the query ran out of
    /// memory or failed on I/O. A definition that does not plan, a value that overflows its
    /// type or does not fit the target table fails the same way every time.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Query { source, .. } => datafusion_retryable(source),
            Error::Definition(_) | Error::Output { .. } | Error::Breaks { .. } => false,
        }
    }
}

fn datafusion_retryable(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    match e {
        E::ResourcesExhausted(_) | E::IoError(_) | E::ObjectStore(_) => true,
        E::ArrowError(e, _) => matches!(**e, arrow_schema::ArrowError::IoError(..)),
        E::Context(_, inner) | E::Diagnostic(_, inner) => datafusion_retryable(inner),
        E::Shared(inner) => datafusion_retryable(inner),
        _ => false,
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

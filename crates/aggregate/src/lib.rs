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
pub mod input;

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

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

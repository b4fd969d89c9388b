//! Table maintenance, safe while loaders and other engines keep committing: compaction of
//! small files ([`compact`]), retention ([`retention`]), manifest rewrite ([`manifests`]),
//! snapshot expiry ([`expire`]) and orphan-file removal ([`orphans`]).
//!
//! Every operation is a builder with a `dry_run` switch and returns a report of what it did
//! (files, bytes, rows, snapshots before → after). Every change goes through floe's one commit
//! protocol ([`floe_lake::Committer`]): compare-and-swap on the table's metadata location, so a
//! loader's append racing a maintenance commit retries instead of losing either side, and a
//! rewrite whose source files vanished meanwhile fails for that group only.
#![deny(missing_docs)]

pub mod compact;
pub mod expire;
pub mod files;
pub mod maintain;
pub mod manifests;
pub mod orphans;
pub mod retention;

/// Errors of maintenance operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Lake-layer failure (catalog, files, commit).
    #[error(transparent)]
    Lake(#[from] floe_lake::Error),
    /// iceberg-rust failure (manifests, data files).
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Listing or deleting files in storage.
    #[error("storage: {0}")]
    Storage(String),
    /// The operation does not apply to this table or its options are wrong; names the cause.
    #[error("{0}")]
    Config(String),
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Config(format!("arrow: {e}"))
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use maintain::{Steps, TableReport, maintain};

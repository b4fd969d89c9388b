//! floe's lake layer: the SQL catalog, Parquet data files and the one commit protocol every
//! writer uses (appends with Kafka offsets, replaces, deletes), with compare-and-swap on the
//! catalog's metadata location.
#![deny(missing_docs)]

pub mod catalog;
pub mod commit;
pub mod compat;
pub mod config;
mod error;
pub mod evolve;
pub mod fail;
pub mod loads;
pub mod marks;
pub mod metrics;
pub mod offsets;
pub mod partition;
pub mod scan;
pub mod state;
pub mod summary;
pub mod writer;

pub use catalog::{Catalog, parse_table_ident};
pub use commit::{Change, CommitRequest, Committed, Committer, RetryPolicy};
pub use config::{CatalogConfig, S3Config};
pub use error::{Error, Result, Retry};
pub use marks::{PositionSet, applied_positions};
pub use offsets::{OffsetRange, Offsets, committed_offsets};
pub use writer::DataWriter;

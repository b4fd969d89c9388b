//! Loading messages into tables, exactly once, as a pipeline of named stages that `floe run`,
//! `floe load` and `floe dlq replay` drive; only the [`source`] differs (Kafka, lines of a
//! file, dead letters):
//!
//! - [`source`]: where messages come from, and where each partition resumes;
//! - `decode`: the table's decoder, kept current with its schema;
//! - [`transform`]: computed columns and rules over each decoded chunk;
//! - `batch`: the offset ranges each table is to record, and which table takes which row;
//! - `write`: Parquet files as chunks arrive (the pipeline's writer task);
//! - `commit`: the raw table, then the dead letters and the [`aggregates`];
//! - [`dead_letters`]: one builder, the stop rule, the table and topic sinks;
//! - [`telemetry`]: typed events that log and count.
#![deny(missing_docs)]

pub mod aggregates;
mod batch;
mod commit;
pub mod config;
pub mod dead_letters;
mod decode;
mod error;
mod pipeline;
pub mod replay;
mod retry;
pub mod source;
pub mod telemetry;
pub mod transform;
mod write;

pub use error::{Error, Result};
pub use floe_lake::Retry;
pub use pipeline::PipelineTotals;

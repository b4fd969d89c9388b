//! floe's schema layer: table definitions (`schemas/*.json`), the Iceberg → Arrow schema
//! mapping (field ids kept) and the JSON → Arrow decoder with per-record error isolation.
//!
//! Nothing here does I/O: the catalog, storage and commits live in `floe-lake`.
#![deny(missing_docs)]

pub mod dead_letter;
pub mod decode;
mod error;
pub mod mapping;
pub mod names;
pub mod partition_range;
pub mod table_def;

pub use decode::{DecodeError, DecodeErrorKind, Decoder, DecoderOptions, RecordMeta};
pub use error::{Error, Result};
pub use mapping::{Mapping, MappingError, Pointer, Setting};
pub use partition_range::PartitionRange;
pub use table_def::TableDefinition;

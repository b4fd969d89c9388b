//! Errors of the schema crate (table definitions and decoder set-up; per-record decode
//! failures are [`crate::DecodeError`], which is data, not an error of the program).

/// A schema-layer error: the input (a table definition, a schema) is unusable as given.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A table definition file is not valid JSON or not a valid Iceberg definition.
    #[error("table definition {source_name}: {message}")]
    InvalidDefinition {
        /// Where the definition came from (file path or table name).
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A mapping entry (envelope, projection, computed column, rule) cannot work.
    #[error("mapping {0}")]
    Mapping(String),
    /// The schema uses a type or setting floe cannot decode into or readers cannot read.
    #[error("unsupported schema: {0}")]
    Unsupported(String),
    /// A table property floe reads has an invalid value.
    #[error("table property {key} = {value:?}: {message}")]
    InvalidProperty {
        /// The property key.
        key: String,
        /// The value found.
        value: String,
        /// Why it is rejected.
        message: String,
    },
    /// Error from iceberg-rust while converting schemas.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Errors of the lake layer, classified by what the caller should do next.

/// A lake-layer error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration is unusable (bad URI, unsupported scheme): fix the config and restart.
    #[error("configuration: {0}")]
    Config(String),
    /// The catalog database failed (connection, query).
    #[error("catalog database: {context}: {source}")]
    Catalog {
        /// What floe was doing.
        context: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// An Iceberg REST catalog request failed.
    #[error("REST catalog {catalog}: {context}: {detail}")]
    Rest {
        /// The catalog's URI (secrets masked) and warehouse.
        catalog: String,
        /// What floe was doing.
        context: String,
        /// What the failure tells.
        failure: crate::catalog::RestFailure,
        /// The HTTP status, when a reply came.
        status: Option<u16>,
        /// The server's message or the transport error.
        detail: String,
    },
    /// The named table does not exist.
    #[error("table {0} does not exist (create it with `floe table create`)")]
    NoSuchTable(String),
    /// The table already exists.
    #[error("table {0} already exists")]
    TableExists(String),
    /// Another writer kept winning the compare-and-swap; the commit gave up after retrying.
    #[error("commit to {table} lost the race {attempts} times in a row; giving up")]
    CommitConflict {
        /// Table name.
        table: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The batch covers Kafka offsets the table already holds (another writer committed them):
    /// drop the batch and resume from the table's committed offsets.
    #[error(
        "offsets already committed to {table}: {topic}[{partition}] is committed up to {committed}, \
         batch starts at {batch_first}"
    )]
    OffsetsAlreadyCommitted {
        /// Table name.
        table: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The table's next offset for that partition.
        committed: i64,
        /// First offset of the rejected batch.
        batch_first: i64,
    },
    /// Positions the commit applies were already applied by another commit (e.g. two replays
    /// of the same dead letters raced).
    #[error("{table}: {example} was already applied under floe.applied.{name} by another commit")]
    AlreadyApplied {
        /// Table name.
        table: String,
        /// The marks' name.
        name: String,
        /// One position applied twice.
        example: String,
    },
    /// Another run of the same load (file or load id) committed lines since this run read the
    /// table's load mark: two runs of one load raced. Run the load again to finish it.
    #[error(
        "{table}: load {id} is recorded up to line {recorded}, but this run continued from line \
         {base}: another run of the same load committed meanwhile; run the load again to finish it"
    )]
    LoadConflict {
        /// Table name.
        table: String,
        /// The load's id.
        id: String,
        /// The next line the table records.
        recorded: i64,
        /// The next line this run read.
        base: i64,
    },
    /// Files a replace or delete wanted to remove are no longer live in the table.
    #[error("{table}: {count} file(s) to be replaced are no longer in the table (e.g. {example})")]
    FilesGone {
        /// Table name.
        table: String,
        /// How many.
        count: usize,
        /// One of them.
        example: String,
    },
    /// Another engine committed a delete file that may remove rows of a data file this
    /// rewrite replaces, after the rewrite read it: committing would bring the deleted rows
    /// back. Plan the rewrite again from the table's current state.
    #[error(
        "{table}: {delete_file} (committed meanwhile by another writer) deletes rows of {data_file}, \
         which this rewrite replaces; the rewrite must be planned again"
    )]
    ConcurrentDelete {
        /// Table name.
        table: String,
        /// The data file the rewrite removes.
        data_file: String,
        /// The newer delete file.
        delete_file: String,
    },
    /// The catalog update was sent but its outcome could not be learned (the connection broke
    /// and the table could not be read back, or its history no longer tells). The commit may
    /// or may not have landed: its files are left in place (orphan removal collects them if it
    /// did not), and the caller re-reads the table's state before going on.
    #[error(
        "{table}: the outcome of the commit is unknown ({reason}); re-read the table before retrying"
    )]
    CommitStateUnknown {
        /// Table name.
        table: String,
        /// Why it could not be told.
        reason: String,
    },
    /// The table uses something floe cannot read or write correctly (format v3, deletion
    /// vectors); names it and what to do.
    #[error("{0}")]
    Unsupported(String),
    /// A data-layer problem (schema, decoder set-up).
    #[error(transparent)]
    Schema(#[from] floe_schema::Error),
    /// iceberg-rust reported an error (I/O on data or metadata files, invalid metadata).
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        /// What floe was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What the caller of a failed operation should do next (as iceberg-rust's `retryable()`,
/// with a third answer for failures whose cause cannot be told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The cause may heal (a service unreachable or slow, a lost race, a commit whose outcome
    /// is unknown): retry with backoff for as long as it takes.
    Transient,
    /// Whether the cause heals is unknown: retry a bounded number of times, then stop.
    Unknown,
    /// The same operation fails the same way again (configuration, an incompatible schema, a
    /// value that does not fit its column): stop with the reason, or dead-letter its cause.
    Permanent,
}

impl Retry {
    /// The lower-case name (`transient`, `unknown`, `permanent`), for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Retry::Transient => "transient",
            Retry::Unknown => "unknown",
            Retry::Permanent => "permanent",
        }
    }
}

impl Error {
    /// Whether retrying the same operation later may succeed (transient failures and races).
    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::Transient
    }

    /// What retrying the operation that failed can do.
    pub fn retry(&self) -> Retry {
        match self {
            // Races: the next attempt starts from the table's new state.
            Error::CommitConflict { .. }
            | Error::ConcurrentDelete { .. }
            | Error::CommitStateUnknown { .. }
            | Error::OffsetsAlreadyCommitted { .. }
            | Error::AlreadyApplied { .. }
            | Error::FilesGone { .. } => Retry::Transient,
            Error::Catalog { source, .. } => catalog_retry(source),
            Error::Rest { failure, .. } => {
                if failure.is_transient() {
                    Retry::Transient
                } else {
                    Retry::Permanent
                }
            }
            Error::Iceberg(e) => iceberg_retry(e),
            Error::Io { .. } => Retry::Transient,
            // The same run of a load cannot go on from where it read; a new run resumes
            // from the recorded line.
            Error::LoadConflict { .. }
            | Error::Config(_)
            | Error::NoSuchTable(_)
            | Error::TableExists(_)
            | Error::Unsupported(_)
            | Error::Schema(_) => Retry::Permanent,
        }
    }

    pub(crate) fn catalog(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let context = context.into();
        move |source| Error::Catalog { context, source }
    }
}

/// Storage I/O may heal: iceberg-rust wraps every object-store failure as `Unexpected`
/// (after the storage layer's own retries) and marks lost catalog races retryable. Its local
/// file system reports a file it cannot read as `DataInvalid` with the OS error in the text
/// only (out of file descriptors as well as a file that is gone): tried a few times. Invalid
/// or unsupported metadata, a missing table and the like do not heal.
fn iceberg_retry(e: &iceberg::Error) -> Retry {
    use iceberg::ErrorKind;
    if e.retryable() {
        return Retry::Transient;
    }
    match e.kind() {
        ErrorKind::Unexpected | ErrorKind::CatalogCommitConflicts => Retry::Transient,
        ErrorKind::DataInvalid
            if [
                "Failed to read file",
                "Failed to open file",
                "Failed to get metadata for",
            ]
            .iter()
            .any(|p| e.message().starts_with(p)) =>
        {
            Retry::Unknown
        }
        _ => Retry::Permanent,
    }
}

/// The catalog database: a connection, a pool or a lock may heal (PostgreSQL SQLSTATE
/// classes 08 connection, 40 transaction rollback, 53 insufficient resources, 57 operator
/// intervention; SQLite busy or locked); what the query or the configuration gets wrong does
/// not; other database errors are of unknown kind.
fn catalog_retry(e: &sqlx::Error) -> Retry {
    match e {
        sqlx::Error::Configuration(_)
        | sqlx::Error::InvalidArgument(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => Retry::Permanent,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let sqlite_busy = code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            if sqlite_busy || ["08", "40", "53", "57"].iter().any(|c| code.starts_with(c)) {
                Retry::Transient
            } else {
                Retry::Unknown
            }
        }
        sqlx::Error::RowNotFound => Retry::Unknown,
        _ => Retry::Transient,
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_what_retrying_can_do() {
        let iceberg = |kind, message: &str| Error::Iceberg(iceberg::Error::new(kind, message));
        let cases = [
            (
                Error::CommitConflict {
                    table: "t".into(),
                    attempts: 5,
                },
                Retry::Transient,
            ),
            (
                Error::CommitStateUnknown {
                    table: "t".into(),
                    reason: "connection reset".into(),
                },
                Retry::Transient,
            ),
            (
                Error::Catalog {
                    context: "swap".into(),
                    source: sqlx::Error::PoolTimedOut,
                },
                Retry::Transient,
            ),
            (
                Error::Catalog {
                    context: "connect".into(),
                    source: sqlx::Error::Configuration("bad uri".into()),
                },
                Retry::Permanent,
            ),
            (
                iceberg(
                    iceberg::ErrorKind::Unexpected,
                    "Failure in doing io operation",
                ),
                Retry::Transient,
            ),
            (
                iceberg(
                    iceberg::ErrorKind::DataInvalid,
                    "Failed to read file /w/m.json: Too many open files (os error 24)",
                ),
                Retry::Unknown,
            ),
            (
                iceberg(iceberg::ErrorKind::DataInvalid, "invalid partition spec"),
                Retry::Permanent,
            ),
            (
                iceberg(iceberg::ErrorKind::FeatureUnsupported, "format v3"),
                Retry::Permanent,
            ),
            (
                Error::Io {
                    context: "writing".into(),
                    source: std::io::Error::other("disk"),
                },
                Retry::Transient,
            ),
            (Error::Config("catalog.uri".into()), Retry::Permanent),
            (Error::NoSuchTable("lake.x".into()), Retry::Permanent),
            (
                Error::Unsupported("deletion vectors".into()),
                Retry::Permanent,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.retry(), want, "{error}");
            assert_eq!(error.is_retryable(), want == Retry::Transient, "{error}");
        }
    }
}

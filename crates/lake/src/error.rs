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

impl Error {
    /// Whether retrying the same operation later may succeed (transient failures and races).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::CommitConflict { .. }
            | Error::ConcurrentDelete { .. }
            | Error::CommitStateUnknown { .. } => true,
            Error::Catalog { source, .. } => !matches!(
                source,
                sqlx::Error::Configuration(_) | sqlx::Error::ColumnNotFound(_)
            ),
            // Storage I/O (iceberg-rust wraps every object-store failure as `Unexpected`,
            // after the storage layer's own retries) may heal; invalid or unsupported
            // metadata, a missing table and the like do not.
            Error::Iceberg(e) => e.retryable() || e.kind() == iceberg::ErrorKind::Unexpected,
            Error::Io { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn catalog(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let context = context.into();
        move |source| Error::Catalog { context, source }
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Reading a table file by file: the live data files of the current snapshot (with their
//! manifest entries' partition and sequence numbers) and a reader that streams one data file's
//! rows in the table's current schema (columns matched by field id, so files written under
//! older schemas read correctly).
//!
//! Rewrites (dead-letter clean-up, compaction, retention) work per file, so they need this
//! rather than a whole-table scan.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use iceberg::Runtime;
use iceberg::arrow::ArrowReaderBuilder;
use iceberg::io::FileIO;
use iceberg::scan::{ArrowRecordBatchStream, FileScanTask};
use iceberg::spec::{DataFile, ManifestContentType, ManifestFile, ManifestList, TableMetadata};
use iceberg::table::Table;

use crate::Result;

/// The manifests of `metadata`'s current snapshot, from its manifest list (none without a
/// snapshot).
pub async fn current_manifests(
    file_io: &FileIO,
    metadata: &TableMetadata,
) -> Result<Vec<ManifestFile>> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(Vec::new());
    };
    let bytes = file_io.new_input(snapshot.manifest_list())?.read().await?;
    Ok(
        ManifestList::parse_with_version(&bytes, metadata.format_version())?
            .consume_entries()
            .into_iter()
            .collect(),
    )
}

/// A data file live in a table's current snapshot.
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// The manifest entry's data file (path, partition, counts, bounds).
    pub data_file: DataFile,
    /// The partition spec the file was written with.
    pub partition_spec_id: i32,
    /// The data sequence number of the entry.
    pub sequence_number: Option<i64>,
}

/// Every live data file of the current snapshot (empty for a table with no snapshot).
pub async fn live_data_files(file_io: &FileIO, metadata: &TableMetadata) -> Result<Vec<LiveFile>> {
    live_files(file_io, metadata, ManifestContentType::Data).await
}

/// Every live delete file (position or equality deletes) of the current snapshot.
pub async fn live_delete_files(
    file_io: &FileIO,
    metadata: &TableMetadata,
) -> Result<Vec<LiveFile>> {
    live_files(file_io, metadata, ManifestContentType::Deletes).await
}

async fn live_files(
    file_io: &FileIO,
    metadata: &TableMetadata,
    content: ManifestContentType,
) -> Result<Vec<LiveFile>> {
    let mut out = Vec::new();
    for manifest_file in current_manifests(file_io, metadata).await? {
        if manifest_file.content != content {
            continue;
        }
        let manifest = manifest_file.load_manifest(file_io).await?;
        for entry in manifest.entries() {
            if entry.is_alive() {
                out.push(LiveFile {
                    data_file: entry.data_file().clone(),
                    partition_spec_id: manifest_file.partition_spec_id,
                    sequence_number: entry.sequence_number(),
                });
            }
        }
    }
    Ok(out)
}

/// Streams the rows of single data files of a table, in its current schema.
pub struct FileReader {
    file_io: FileIO,
    tasks: HashMap<String, Vec<FileScanTask>>,
    schema: iceberg::spec::SchemaRef,
}

impl FileReader {
    /// Plans a scan of the table's current snapshot (all columns). Refuses a table with
    /// deletion vectors (format v3), whose deletes iceberg-rust 0.10 would not apply.
    pub async fn new(table: &Table) -> Result<Self> {
        let mut tasks: HashMap<String, Vec<FileScanTask>> = HashMap::new();
        if table.metadata().current_snapshot().is_some() {
            let scan = table.scan().select_all().build()?;
            let mut stream = scan.plan_files().await?;
            while let Some(task) = stream.try_next().await? {
                if let Some(dv) = task
                    .deletes
                    .iter()
                    .find(|d| d.file_path.ends_with(".puffin"))
                {
                    return Err(crate::Error::Unsupported(format!(
                        "{}: {} is a deletion vector (Iceberg format v3); floe cannot apply \
                         deletion vectors, so it neither reads nor rewrites this table's rows",
                        table.identifier(),
                        dv.file_path
                    )));
                }
                tasks
                    .entry(task.data_file_path.clone())
                    .or_default()
                    .push(task);
            }
        }
        // iceberg-rust scans a snapshot in the schema it was committed with, which lags the
        // current one when another engine added a column since (no snapshot yet).
        let metadata = table.metadata();
        let schema = metadata
            .current_snapshot()
            .and_then(|s| s.schema_id())
            .and_then(|id| metadata.schema_by_id(id))
            .cloned()
            .unwrap_or_else(|| metadata.current_schema().clone());
        Ok(Self {
            file_io: table.file_io().clone(),
            tasks,
            schema,
        })
    }

    /// Whether delete files (row-level deletes, e.g. from Trino's `DELETE`) apply to the data
    /// file at `path`. Its rows as read exclude the deleted ones.
    pub fn has_deletes(&self, path: &str) -> bool {
        self.tasks
            .get(path)
            .is_some_and(|tasks| tasks.iter().any(|t| !t.deletes.is_empty()))
    }

    /// The schema the rows come in (the current snapshot's): what a rewrite writes them with
    /// ([`crate::DataWriter::with_schema`]).
    pub fn schema(&self) -> iceberg::spec::SchemaRef {
        self.schema.clone()
    }

    /// The delete files that apply to the data file at `path`.
    pub fn deletes_of(&self, path: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .tasks
            .get(path)
            .into_iter()
            .flatten()
            .flat_map(|t| t.deletes.iter().map(|d| d.file_path.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The rows of the data file at `path` (no rows if the file is not in the planned
    /// snapshot), with row-level deletes applied.
    pub fn read(&self, path: &str) -> Result<ArrowRecordBatchStream> {
        let tasks = self.tasks.get(path).cloned().unwrap_or_default();
        let reader = ArrowReaderBuilder::new(self.file_io.clone(), Runtime::current())
            .with_data_file_concurrency_limit(1)
            .build();
        let stream = futures::stream::iter(tasks.into_iter().map(Ok)).boxed();
        Ok(reader.read(stream)?.stream())
    }
}

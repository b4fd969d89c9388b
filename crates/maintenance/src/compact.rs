//! Compaction: per partition (of each partition spec the table's files were written with),
//! bin-pack the data files smaller than three quarters of the target size
//! (`write.target-file-size-bytes`, default 128 MiB) into files near the target, in the
//! current spec, and commit each bin as an Iceberg `replace` snapshot.
//!
//! - Row-level deletes (position deletes as Trino and Spark write them, equality deletes as
//!   Flink writes them) are applied: a file any delete file applies to is always rewritten,
//!   alone if need be, and the commit removes the delete files no remaining data file needs,
//!   so they leave the live set. The commit is validated against deletes committed after the
//!   compaction read the table ([`floe_lake::Error::ConcurrentDelete`]): such a bin is skipped
//!   rather than bringing deleted rows back.
//!
//! - Streaming: rows flow file by file from the Parquet reader into the rolling Parquet
//!   writer, so memory holds one row group, not the partition. When the table has a sort order
//!   the rows of a bin are sorted before writing, which holds one output file in memory.
//! - Each bin commits on its own. If one of its source files left the table meanwhile (another
//!   compaction, retention, Trino's `optimize`), that bin's commit fails with "files gone", its
//!   new files are deleted and the other bins still land. Appends racing a compaction never
//!   fail: the commit protocol rebuilds the replace on top of them.
//! - Row counts are checked: a bin whose rewritten rows differ from its sources' record counts
//!   is not committed.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use floe_lake::commit::{Change, CommitRequest};
use floe_lake::scan::{FileReader, LiveFile, live_data_files, live_delete_files};
use floe_lake::writer::target_file_size;
use floe_lake::{Committer, DataWriter, parse_table_ident};
use futures::TryStreamExt;
use iceberg::spec::{DataContentType, DataFile, Struct, TableMetadata};

use crate::{Error, Result};

/// Progress callback: (bytes of source files rewritten so far, bytes to rewrite).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Compacts one table.
#[derive(Clone)]
pub struct Compact {
    table: String,
    target_file_size: Option<u64>,
    min_input_files: usize,
    dry_run: bool,
    progress: Option<Progress>,
    fold: Option<floe_aggregate::AggregateDef>,
}

/// What a compaction did (or would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompactReport {
    /// The table.
    pub table: String,
    /// Partitions that had files to compact.
    pub partitions: usize,
    /// Bins planned (each one commit).
    pub bins: usize,
    /// Bins committed.
    pub bins_committed: usize,
    /// Bins skipped because a source file left the table meanwhile, or another engine
    /// deleted rows of one meanwhile.
    pub bins_skipped: usize,
    /// Errors of bins that failed otherwise.
    pub errors: Vec<String>,
    /// Live data files before.
    pub files_before: usize,
    /// Live data files after (as far as this compaction is concerned).
    pub files_after: usize,
    /// Bytes of live data files before.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
    /// Rows rewritten.
    pub rows_rewritten: u64,
    /// Files that row-level delete files applied to (rewritten with the deletes applied).
    pub files_with_deletes: usize,
    /// Delete files that left the table.
    pub delete_files_removed: usize,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// One bin: files of one partition rewritten together.
struct Bin {
    files: Vec<DataFile>,
    bytes: u64,
    with_deletes: bool,
}

impl Compact {
    /// Compaction with the table's target file size and at least 2 files per bin.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            target_file_size: None,
            min_input_files: 2,
            dry_run: false,
            progress: None,
            fold: None,
        }
    }

    /// Overrides the table's `write.target-file-size-bytes`.
    pub fn target_file_size(mut self, bytes: u64) -> Self {
        self.target_file_size = Some(bytes.max(1));
        self
    }

    /// A partition is compacted when it has at least this many small files (default 2).
    pub fn min_input_files(mut self, n: usize) -> Self {
        self.min_input_files = n.max(2);
        self
    }

    /// Report only.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The table holds partials of this aggregate: rewritten files get one row per key, merged
    /// with the definition's merge functions (totals unchanged).
    pub fn fold(mut self, def: floe_aggregate::AggregateDef) -> Self {
        self.fold = Some(def);
        self
    }

    /// Reports progress while rewriting.
    pub fn progress(mut self, f: Progress) -> Self {
        self.progress = Some(f);
        self
    }

    /// Runs the compaction.
    pub async fn execute(&self, committer: &Committer) -> Result<CompactReport> {
        let catalog = committer.catalog();
        let ident = parse_table_ident(&self.table)?;
        let table = catalog.load_table(&ident).await?;
        let metadata = table.metadata();
        floe_lake::compat::check_format(&self.table, metadata)?;
        let target = self
            .target_file_size
            .unwrap_or_else(|| target_file_size(metadata.properties()) as u64);
        let live = live_data_files(catalog.file_io(), metadata).await?;
        let mut report = CompactReport {
            table: self.table.clone(),
            files_before: live.len(),
            files_after: live.len(),
            bytes_before: live.iter().map(|f| f.data_file.file_size_in_bytes()).sum(),
            dry_run: self.dry_run,
            ..Default::default()
        };
        report.bytes_after = report.bytes_before;
        let planned_seq = metadata
            .current_snapshot()
            .map(|s| s.sequence_number())
            .unwrap_or(0);
        let reader = FileReader::new(&table).await?;
        let delete_files: HashMap<String, DataFile> =
            live_delete_files(catalog.file_io(), metadata)
                .await?
                .into_iter()
                .map(|f| (f.data_file.file_path().to_string(), f.data_file))
                .collect();
        report.files_with_deletes = live
            .iter()
            .filter(|f| reader.has_deletes(f.data_file.file_path()))
            .count();
        let bins = self.plan(live, &reader, target, &mut report);
        report.bins = bins.len();
        if self.dry_run || bins.is_empty() {
            if self.dry_run {
                report.files_after = report.files_before
                    - bins.iter().map(|b| b.files.len()).sum::<usize>()
                    + bins.len();
            }
            return Ok(report);
        }

        let total: u64 = bins.iter().map(|b| b.bytes).sum();
        let mut done = 0u64;
        for bin in bins {
            let removed_bytes: u64 = bin.files.iter().map(|f| f.file_size_in_bytes()).sum();
            let removed_count = bin.files.len();
            let deletes: Vec<DataFile> = bin
                .files
                .iter()
                .flat_map(|f| reader.deletes_of(f.file_path()))
                .collect::<std::collections::BTreeSet<String>>()
                .into_iter()
                .filter_map(|p| delete_files.get(&p).cloned())
                .collect();
            let n_deletes = deletes.len();
            match self
                .rewrite(committer, &reader, metadata, bin, deletes, planned_seq)
                .await
            {
                Ok((added, rows)) => {
                    report.delete_files_removed += n_deletes;
                    report.bins_committed += 1;
                    report.rows_rewritten += rows;
                    report.files_after = report.files_after - removed_count + added.len();
                    report.bytes_after = report.bytes_after - removed_bytes
                        + added.iter().map(|f| f.file_size_in_bytes()).sum::<u64>();
                }
                Err(Error::Lake(floe_lake::Error::FilesGone { .. })) => {
                    tracing::info!(table = %self.table, "a bin's source files left the table meanwhile; skipped");
                    report.bins_skipped += 1;
                }
                Err(Error::Lake(e @ floe_lake::Error::ConcurrentDelete { .. })) => {
                    tracing::info!(table = %self.table, reason = %e, "another writer deleted rows of a bin's files meanwhile; skipped (the next run compacts it)");
                    report.bins_skipped += 1;
                }
                Err(e) => {
                    tracing::error!(table = %self.table, error = %e, "compacting a bin failed");
                    report.errors.push(e.to_string());
                }
            }
            done += removed_bytes;
            if let Some(p) = &self.progress {
                p(done, total);
            }
        }
        tracing::info!(
            table = %self.table,
            files_before = report.files_before,
            files_after = report.files_after,
            bins = report.bins_committed,
            skipped = report.bins_skipped,
            "compaction done"
        );
        Ok(report)
    }

    /// Bins per partition of each spec: small files and files with row-level deletes,
    /// first-fit decreasing by size. A bin of one file is kept only if deletes apply to it.
    fn plan(
        &self,
        live: Vec<LiveFile>,
        reader: &FileReader,
        target: u64,
        report: &mut CompactReport,
    ) -> Vec<Bin> {
        let small = target / 4 * 3;
        let mut partitions: HashMap<(i32, Struct), Vec<(DataFile, bool)>> = HashMap::new();
        for f in live {
            let deleted = reader.has_deletes(f.data_file.file_path());
            if f.data_file.content_type() != DataContentType::Data
                || (f.data_file.file_size_in_bytes() >= small && !deleted)
            {
                continue;
            }
            partitions
                .entry((f.partition_spec_id, f.data_file.partition().clone()))
                .or_default()
                .push((f.data_file, deleted));
        }
        let mut bins = Vec::new();
        for (_, mut files) in partitions {
            let any_deletes = files.iter().any(|(_, d)| *d);
            if files.len() < self.min_input_files && !any_deletes {
                continue;
            }
            report.partitions += 1;
            files.sort_by_key(|(f, _)| std::cmp::Reverse(f.file_size_in_bytes()));
            let mut part_bins: Vec<Bin> = Vec::new();
            for (f, deleted) in files {
                let size = f.file_size_in_bytes();
                match part_bins.iter_mut().find(|b| b.bytes + size <= target) {
                    Some(b) => {
                        b.bytes += size;
                        b.with_deletes |= deleted;
                        b.files.push(f);
                    }
                    None => part_bins.push(Bin {
                        files: vec![f],
                        bytes: size,
                        with_deletes: deleted,
                    }),
                }
            }
            bins.extend(
                part_bins
                    .into_iter()
                    .filter(|b| b.files.len() >= 2 || b.with_deletes),
            );
        }
        bins
    }

    /// Rewrites one bin and commits it; returns the added files and the rows.
    async fn rewrite(
        &self,
        committer: &Committer,
        reader: &FileReader,
        metadata: &TableMetadata,
        bin: Bin,
        deletes: Vec<DataFile>,
        planned_seq: i64,
    ) -> Result<(Vec<DataFile>, u64)> {
        let catalog = committer.catalog();
        // Rows as read: the record counts, less what delete files remove (at most all).
        let expected: u64 = bin.files.iter().map(|f| f.record_count()).sum();
        let exact = deletes.is_empty();
        let mut writer = DataWriter::with_schema(catalog.file_io(), metadata, reader.schema())?;
        let sort = sort_columns(metadata);
        let written: Result<u64> = async {
            let mut rows = 0u64;
            let mut buffered: Vec<RecordBatch> = Vec::new();
            let buffer = !sort.is_empty() || self.fold.is_some();
            for f in &bin.files {
                let mut stream = reader.read(f.file_path())?;
                while let Some(batch) = stream.try_next().await.map_err(floe_lake::Error::from)? {
                    rows += batch.num_rows() as u64;
                    if !buffer {
                        writer.write(&batch).await?;
                    } else {
                        buffered.push(batch);
                    }
                }
            }
            if !buffered.is_empty() {
                let mut batch =
                    arrow_select::concat::concat_batches(&buffered[0].schema(), &buffered)?;
                drop(buffered);
                if let Some(def) = &self.fold {
                    let merged = floe_aggregate::Aggregator::new(vec![def.clone()])
                        .merge(0, &[batch.clone()])
                        .await
                        .map_err(|e| Error::Config(e.to_string()))?;
                    batch = floe_aggregate::engine::conform(def, &merged, &batch.schema())
                        .map_err(|e| Error::Config(e.to_string()))?;
                }
                writer.write(&sort_batch(&batch, &sort)?).await?;
            }
            Ok(rows)
        }
        .await;
        let rows = match written {
            Ok(r) => r,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        if (exact && rows != expected) || rows > expected {
            // Rows read must match the manifests (a folded bin writes fewer).
            writer.abort().await;
            return Err(Error::Config(format!(
                "{}: read {rows} rows from files whose manifests say {expected}; bin not compacted",
                self.table
            )));
        }
        let added = writer.close().await?;
        floe_lake::fail::point("compact-before-commit");
        let mut removed = bin.files;
        removed.extend(deletes);
        let mut req = CommitRequest::new(Change::Replace {
            removed,
            added: added.clone(),
        })
        .validate_from(planned_seq)
        .written_with(metadata.default_partition_spec_id());
        req.properties
            .insert("floe.operation".into(), "compact".into());
        let committed = committer
            .commit(&parse_table_ident(&self.table)?, req)
            .await?;
        floe_lake::metrics::record_commit(&self.table, &committed);
        Ok((added, rows))
    }
}

/// (column name, descending, nulls first) of the table's sort order, identity fields only.
fn sort_columns(metadata: &TableMetadata) -> Vec<(String, bool, bool)> {
    let schema = metadata.current_schema();
    metadata
        .default_sort_order()
        .fields
        .iter()
        .filter(|f| f.transform == iceberg::spec::Transform::Identity)
        .filter_map(|f| {
            schema.field_by_id(f.source_id).map(|field| {
                (
                    field.name.clone(),
                    f.direction == iceberg::spec::SortDirection::Descending,
                    f.null_order == iceberg::spec::NullOrder::First,
                )
            })
        })
        .collect()
}

fn sort_batch(batch: &RecordBatch, sort: &[(String, bool, bool)]) -> Result<RecordBatch> {
    let columns: Vec<arrow_ord::sort::SortColumn> = sort
        .iter()
        .filter_map(|(name, desc, nulls_first)| {
            batch
                .column_by_name(name)
                .map(|c| arrow_ord::sort::SortColumn {
                    values: c.clone(),
                    options: Some(arrow_schema::SortOptions {
                        descending: *desc,
                        nulls_first: *nulls_first,
                    }),
                })
        })
        .collect();
    if columns.is_empty() {
        return Ok(batch.clone());
    }
    let indices = arrow_ord::sort::lexsort_to_indices(&columns, None)?;
    Ok(arrow_select::take::take_record_batch(batch, &indices)?)
}

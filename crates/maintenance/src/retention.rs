//! Retention: remove the rows whose partition time is older than a cutoff.
//!
//! The table must be partitioned by a time transform (`hour`, `day`, `month` or `year`) of a
//! timestamp or date column. For each live data file:
//! - its partition lies entirely before the cutoff, or the column's upper bound is below it:
//!   the whole file goes, by metadata only;
//! - its partition lies entirely at or after the cutoff, or the column's lower bound is: kept;
//! - otherwise (the partition straddles the cutoff) the file is rewritten without the rows
//!   older than the cutoff. Rows with a NULL time are kept.
//!
//! Everything lands in one `overwrite` (or `delete`) snapshot. Rewritten files are read with
//! row-level deletes applied, and delete files that only applied to removed or rewritten files
//! leave the table with them. If a file left the table meanwhile (a compaction won), or another
//! engine deleted rows of a rewritten file meanwhile, the retention starts over on the new
//! state.

use std::time::Duration;

use arrow_array::{Array, ArrayRef, BooleanArray, Date32Array, RecordBatch, Scalar};
use arrow_array::{TimestampMicrosecondArray, TimestampNanosecondArray};
use arrow_schema::DataType;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use floe_lake::commit::{Change, CommitRequest};
use floe_lake::scan::{FileReader, LiveFile, live_data_files, live_delete_files};
use floe_lake::{Committer, DataWriter, parse_table_ident};
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, Literal, PrimitiveLiteral, PrimitiveType, TableMetadata, Transform, Type,
};

use crate::{Error, Result};

/// Removes old rows from one table.
#[derive(Debug, Clone)]
pub struct Retention {
    table: String,
    cutoff: DateTime<Utc>,
    dry_run: bool,
}

/// What retention did (or would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetentionReport {
    /// The table.
    pub table: String,
    /// Rows older than this were removed.
    pub cutoff: String,
    /// The partition column the cutoff applies to.
    pub column: String,
    /// Files removed whole (metadata only).
    pub files_deleted: usize,
    /// Files rewritten without their old rows.
    pub files_rewritten: usize,
    /// Rows removed.
    pub rows_deleted: u64,
    /// Bytes of live data files before.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// The time partition of a table: source column and transform.
struct TimePartition {
    column: String,
    source_id: i32,
    field_index: usize,
    transform: Transform,
    source_type: PrimitiveType,
}

enum Verdict {
    Keep,
    Delete,
    Rewrite,
}

impl Retention {
    /// Removes rows older than `now - keep`.
    pub fn keep(table: impl Into<String>, keep: Duration) -> Self {
        let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        Self::before(table, cutoff)
    }

    /// Removes rows older than `cutoff`.
    pub fn before(table: impl Into<String>, cutoff: DateTime<Utc>) -> Self {
        Self {
            table: table.into(),
            cutoff,
            dry_run: false,
        }
    }

    /// Report only.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Runs the retention (retrying from scratch if a file it removes vanished meanwhile).
    pub async fn execute(&self, committer: &Committer) -> Result<RetentionReport> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(committer).await {
                Err(Error::Lake(
                    floe_lake::Error::FilesGone { .. } | floe_lake::Error::ConcurrentDelete { .. },
                )) if attempt < 5 => {
                    tracing::info!(table = %self.table, "files changed meanwhile; retention starts over");
                }
                other => return other,
            }
        }
    }

    /// One run on the table's current state: removes or rewrites the files holding old rows
    /// in one snapshot (or, dry, only counts).
    async fn attempt(&self, committer: &Committer) -> Result<RetentionReport> {
        let catalog = committer.catalog();
        let ident = parse_table_ident(&self.table)?;
        let table = catalog.load_table(&ident).await?;
        let metadata = table.metadata();
        floe_lake::compat::check_format(&self.table, metadata)?;
        let part = time_partition(&self.table, metadata)?;
        let live = live_data_files(catalog.file_io(), metadata).await?;
        let mut report = RetentionReport {
            table: self.table.clone(),
            cutoff: self.cutoff.to_rfc3339(),
            column: part.column.clone(),
            bytes_before: live.iter().map(|f| f.data_file.file_size_in_bytes()).sum(),
            dry_run: self.dry_run,
            ..Default::default()
        };
        report.bytes_after = report.bytes_before;
        let cutoff_us = self.cutoff.timestamp_micros();
        let (deleted, rewrite) = sort_files(live, metadata, &part, cutoff_us);
        report.files_deleted = deleted.len();
        report.files_rewritten = rewrite.len();
        report.rows_deleted = deleted.iter().map(|f| f.record_count()).sum();
        report.bytes_after -= deleted
            .iter()
            .chain(&rewrite)
            .map(|f| f.file_size_in_bytes())
            .sum::<u64>();
        if deleted.is_empty() && rewrite.is_empty() {
            return Ok(report);
        }
        if self.dry_run {
            // Counting the rows a rewrite would drop needs the data: read, don't write.
            let reader = FileReader::new(&table).await?;
            report.rows_deleted += rows_before(&reader, &rewrite, &part.column, cutoff_us).await?;
            return Ok(report);
        }

        let planned_seq = metadata
            .current_snapshot()
            .map(|s| s.sequence_number())
            .unwrap_or(0);
        let reader = FileReader::new(&table).await?;
        let delete_files =
            applied_deletes(catalog.file_io(), metadata, &reader, &deleted, &rewrite).await?;
        let mut writer = DataWriter::with_schema(catalog.file_io(), metadata, reader.schema())?;
        let rewritten = write_kept_rows(&mut writer, &reader, &rewrite, &part.column, cutoff_us);
        let dropped = match rewritten.await {
            Ok(d) => d,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        report.rows_deleted += dropped;
        let added = writer.close().await?;
        report.bytes_after += added.iter().map(|f| f.file_size_in_bytes()).sum::<u64>();
        let mut removed = deleted;
        removed.extend(rewrite);
        removed.extend(delete_files);
        let mut req = CommitRequest::new(if added.is_empty() {
            Change::Delete(removed)
        } else {
            Change::Overwrite { removed, added }
        })
        .validate_from(planned_seq)
        .written_with(metadata.default_partition_spec_id());
        req.properties
            .insert("floe.operation".into(), "retention".into());
        req.properties
            .insert("floe.retention.cutoff".into(), self.cutoff.to_rfc3339());
        let committed = committer.commit(&ident, req).await?;
        floe_lake::metrics::record_commit(&self.table, &committed);
        tracing::info!(table = %self.table, cutoff = %self.cutoff, files_deleted = report.files_deleted, files_rewritten = report.files_rewritten, rows_deleted = report.rows_deleted, "retention applied");
        Ok(report)
    }
}

/// Sorts the live data files by verdict: those removed whole, and those rewritten.
fn sort_files(
    live: Vec<LiveFile>,
    metadata: &TableMetadata,
    part: &TimePartition,
    cutoff_us: i64,
) -> (Vec<DataFile>, Vec<DataFile>) {
    let mut deleted: Vec<DataFile> = Vec::new();
    let mut rewrite: Vec<DataFile> = Vec::new();
    for f in live {
        let verdict = if f.partition_spec_id == metadata.default_partition_spec_id() {
            verdict(&f.data_file, part, cutoff_us)
        } else {
            bounds_verdict(&f.data_file, part, cutoff_us)
        };
        match verdict {
            Verdict::Keep => {}
            Verdict::Delete => deleted.push(f.data_file),
            Verdict::Rewrite => rewrite.push(f.data_file),
        }
    }
    (deleted, rewrite)
}

/// The rows of the `rewrite` files older than the cutoff (what their rewrite drops).
async fn rows_before(
    reader: &FileReader,
    rewrite: &[DataFile],
    column: &str,
    cutoff_us: i64,
) -> Result<u64> {
    let mut rows = 0u64;
    for f in rewrite {
        let mut stream = reader.read(f.file_path())?;
        while let Some(b) = stream.try_next().await.map_err(floe_lake::Error::from)? {
            let keep = keep_mask(&b, column, cutoff_us)?;
            rows += (b.num_rows() - keep.true_count()) as u64;
        }
    }
    Ok(rows)
}

/// The live delete files that apply to the `deleted` or `rewrite` files: they leave the table
/// with them.
async fn applied_deletes(
    file_io: &FileIO,
    metadata: &TableMetadata,
    reader: &FileReader,
    deleted: &[DataFile],
    rewrite: &[DataFile],
) -> Result<Vec<DataFile>> {
    let applied: std::collections::BTreeSet<String> = deleted
        .iter()
        .chain(rewrite)
        .flat_map(|f| reader.deletes_of(f.file_path()))
        .collect();
    Ok(live_delete_files(file_io, metadata)
        .await?
        .into_iter()
        .map(|f| f.data_file)
        .filter(|f| applied.contains(f.file_path()))
        .collect())
}

/// Writes the rows of the `rewrite` files at or after the cutoff (or NULL) to `writer`; the
/// rows dropped. On error the caller aborts the writer.
async fn write_kept_rows(
    writer: &mut DataWriter,
    reader: &FileReader,
    rewrite: &[DataFile],
    column: &str,
    cutoff_us: i64,
) -> Result<u64> {
    let mut dropped = 0u64;
    for f in rewrite {
        let mut stream = reader.read(f.file_path())?;
        while let Some(b) = stream.try_next().await.map_err(floe_lake::Error::from)? {
            let keep = keep_mask(&b, column, cutoff_us)?;
            dropped += (b.num_rows() - keep.true_count()) as u64;
            let kept = arrow_select::filter::filter_record_batch(&b, &keep)?;
            writer.write(&kept).await?;
        }
    }
    Ok(dropped)
}

/// The default spec's time partition field.
fn time_partition(table: &str, metadata: &TableMetadata) -> Result<TimePartition> {
    let spec = metadata.default_partition_spec();
    let schema = metadata.current_schema();
    for (i, f) in spec.fields().iter().enumerate() {
        if !matches!(
            f.transform,
            Transform::Hour | Transform::Day | Transform::Month | Transform::Year
        ) {
            continue;
        }
        let Some(field) = schema.field_by_id(f.source_id) else {
            continue;
        };
        let Type::Primitive(p) = field.field_type.as_ref() else {
            continue;
        };
        if matches!(
            p,
            PrimitiveType::Timestamp
                | PrimitiveType::Timestamptz
                | PrimitiveType::TimestampNs
                | PrimitiveType::TimestamptzNs
                | PrimitiveType::Date
        ) {
            return Ok(TimePartition {
                column: field.name.clone(),
                source_id: f.source_id,
                field_index: i,
                transform: f.transform,
                source_type: p.clone(),
            });
        }
    }
    Err(Error::Config(format!(
        "retention needs {table} to be partitioned by hour, day, month or year of a timestamp or \
         date column; its partition spec is {}",
        serde_json::to_string(spec.as_ref()).unwrap_or_default()
    )))
}

/// Decides from the partition value, then the column bounds.
fn verdict(file: &DataFile, part: &TimePartition, cutoff_us: i64) -> Verdict {
    let value = file
        .partition()
        .fields()
        .get(part.field_index)
        .and_then(|v| v.as_ref());
    let Some(Literal::Primitive(PrimitiveLiteral::Int(v))) = value else {
        return bounds_verdict(file, part, cutoff_us); // NULL partition or unexpected value
    };
    let (start, end) = partition_range_us(part.transform, *v);
    if end <= cutoff_us {
        Verdict::Delete
    } else if start >= cutoff_us {
        Verdict::Keep
    } else {
        bounds_verdict(file, part, cutoff_us)
    }
}

/// Decides from the source column's lower and upper bounds (rewrite when unsure).
fn bounds_verdict(file: &DataFile, part: &TimePartition, cutoff_us: i64) -> Verdict {
    let as_us = |d: &iceberg::spec::Datum| match (d.literal(), &part.source_type) {
        (PrimitiveLiteral::Int(days), PrimitiveType::Date) => {
            Some(i64::from(*days) * 86_400_000_000)
        }
        (PrimitiveLiteral::Long(ns), PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs) => {
            Some(ns.div_euclid(1000))
        }
        (PrimitiveLiteral::Long(us), _) => Some(*us),
        _ => None,
    };
    let lower = file.lower_bounds().get(&part.source_id).and_then(as_us);
    let upper = file.upper_bounds().get(&part.source_id).and_then(as_us);
    let nulls = file
        .null_value_counts()
        .get(&part.source_id)
        .copied()
        .unwrap_or(1);
    match (lower, upper) {
        (Some(lo), _) if lo >= cutoff_us => Verdict::Keep,
        // A date's whole day must be before the cutoff.
        (_, Some(hi)) if nulls == 0 && end_of(hi, &part.source_type) <= cutoff_us => {
            Verdict::Delete
        }
        (None, None) if nulls == file.record_count() => Verdict::Keep,
        _ => Verdict::Rewrite,
    }
}

fn end_of(upper_us: i64, ty: &PrimitiveType) -> i64 {
    match ty {
        PrimitiveType::Date => upper_us + 86_400_000_000,
        _ => upper_us + 1,
    }
}

/// `[start, end)` in epoch micros of partition value `v` under `transform`.
fn partition_range_us(transform: Transform, v: i32) -> (i64, i64) {
    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;
    let month_start = |m: i64| -> i64 {
        let (y, mo) = (1970 + m.div_euclid(12), m.rem_euclid(12) as u32 + 1);
        NaiveDate::from_ymd_opt(y as i32, mo, 1)
            .map(|d| {
                Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
                    .timestamp_micros()
            })
            .unwrap_or(i64::MAX)
    };
    let v = i64::from(v);
    match transform {
        Transform::Hour => (v * HOUR, (v + 1) * HOUR),
        Transform::Day => (v * DAY, (v + 1) * DAY),
        Transform::Month => (month_start(v), month_start(v + 1)),
        Transform::Year => (month_start(v * 12), month_start((v + 1) * 12)),
        _ => (i64::MIN, i64::MAX),
    }
}

/// Rows to keep: time at or after the cutoff, or NULL.
fn keep_mask(batch: &RecordBatch, column: &str, cutoff_us: i64) -> Result<BooleanArray> {
    let col: &ArrayRef = batch
        .column_by_name(column)
        .ok_or_else(|| Error::Config(format!("column {column} missing from a data file")))?;
    let keep = match col.data_type() {
        DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, tz) => {
            let s = TimestampMicrosecondArray::new_scalar(cutoff_us);
            let s = Scalar::new(
                s.into_inner()
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .expect("timestamp")
                    .clone()
                    .with_timezone_opt(tz.clone()),
            );
            arrow_ord::cmp::gt_eq(col, &s)?
        }
        DataType::Timestamp(arrow_schema::TimeUnit::Nanosecond, tz) => {
            let s = TimestampNanosecondArray::from(vec![cutoff_us.saturating_mul(1000)])
                .with_timezone_opt(tz.clone());
            arrow_ord::cmp::gt_eq(col, &Scalar::new(s))?
        }
        DataType::Date32 => {
            // A day is kept if any part of it is at or after the cutoff.
            let day = Utc
                .timestamp_micros(cutoff_us)
                .single()
                .map(|t| t.date_naive().num_days_from_ce() - 719_163)
                .unwrap_or(i32::MAX);
            let s = Date32Array::from(vec![day]);
            arrow_ord::cmp::gt_eq(col, &Scalar::new(s))?
        }
        other => {
            return Err(Error::Config(format!(
                "retention column {column} has type {other}; expected a timestamp or date"
            )));
        }
    };
    // NULL times are kept.
    Ok(keep.iter().map(|v| Some(v.unwrap_or(true))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ranges() {
        let h = 3_600_000_000i64;
        assert_eq!(partition_range_us(Transform::Hour, 5), (5 * h, 6 * h));
        assert_eq!(partition_range_us(Transform::Day, 1), (24 * h, 48 * h));
        // 1970-02 starts after 31 days; year 1 is 1971.
        assert_eq!(partition_range_us(Transform::Month, 1).0, 31 * 24 * h);
        assert_eq!(partition_range_us(Transform::Year, 1).0, 365 * 24 * h);
        assert_eq!(partition_range_us(Transform::Month, -1), (-31 * 24 * h, 0));
    }
}

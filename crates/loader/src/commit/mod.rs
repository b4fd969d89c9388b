//! The commit stage of a batch, on the pipeline's writer task: the raw table first (its rows
//! with the offset ranges they came from; the commit refuses ranges the table already holds),
//! then the dead letters (topic, then table) and the aggregates side by side. Rebuilding dedup
//! state reads raw rows below the aggregates' offsets, so the raw table always leads.
//!
//! Each commit records its [`Marks`] with the data: the offset ranges of the batch, or how
//! far a load got.

mod marks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use floe_lake::Committer;
use floe_lake::OffsetRange;
use floe_lake::commit::{CommitRequest, OffsetsUpdate};
use floe_schema::dead_letter::DeadLetter;
use iceberg::TableIdent;
use iceberg::spec::{DataFile, TableMetadata};

use crate::aggregates::Aggregation;
use crate::aggregates::RowRouting;
use crate::dead_letters::{DeadLetterSinks, Record};
use crate::error::FlushError;
use crate::telemetry::{self, Event};

pub(crate) use marks::{LoadProgress, Mark, Marks};

/// A batch to commit, as the pipeline hands it over.
pub(crate) struct FlushJob {
    pub batch: u64,
    /// The metadata its rows were decoded against.
    pub metadata: Arc<TableMetadata>,
    /// Its last chunk, not sent before.
    pub last: Option<RecordBatch>,
    pub last_routing: Option<Box<RowRouting>>,
    pub dead: Vec<DeadLetter>,
    pub raw_ranges: Vec<OffsetRange>,
    pub dlq_ranges: Vec<OffsetRange>,
    pub agg_ranges: Vec<Vec<OffsetRange>>,
    /// Revocation, shutdown or drained: every table's offsets are recorded, including those
    /// a table with nothing new would otherwise record later (`flush.idle_offsets_interval`).
    pub last_before_stop: bool,
    /// A load's batch: the load read every line before `next` (`done`: its whole input).
    pub load_to: Option<Mark>,
}

/// What a batch's commit did.
pub(crate) struct Flushed {
    /// The raw table after the commit.
    pub metadata: TableMetadata,
    /// The raw table's new snapshot (`None`: no rows, at most marks recorded).
    pub snapshot_id: Option<i64>,
    /// The newest event time among the committed rows (epoch micros), when the table is
    /// partitioned by time.
    pub newest_event_us: Option<i64>,
    pub rows: u64,
    pub dead_letters: u64,
    pub files: usize,
    pub bytes: u64,
}

/// How often the writer reports the table's files per partition (reads its manifests).
const LAYOUT_EVERY: Duration = Duration::from_secs(60);

type Flush<T> = std::result::Result<T, FlushError>;

/// Where a pipeline's batches are committed: its table and its dead letters' sinks, with the
/// marks each commit records.
pub(crate) struct BatchCommitter {
    pub committer: Committer,
    pub marks: Marks,
    pub table: TableIdent,
    /// `table` as text, for logs and metrics.
    pub name: String,
    /// Where the dead letters go.
    pub dead: DeadLetterSinks,
    /// When the table's layout (files per partition) was last reported.
    layout_reported: Option<Instant>,
}

impl BatchCommitter {
    /// Commits batches into `table` with `marks`, dead letters to `dead`.
    pub fn new(
        committer: Committer,
        marks: Marks,
        table: &TableIdent,
        dead: DeadLetterSinks,
    ) -> Self {
        Self {
            committer,
            marks,
            table: table.clone(),
            name: table.to_string(),
            dead,
            layout_reported: None,
        }
    }

    /// Commits a batch whose files are closed: the raw table's `files`, then the dead
    /// letters and the aggregates' `agg_files`, side by side.
    pub async fn commit(
        &mut self,
        job: &FlushJob,
        files: Vec<DataFile>,
        aggregation: Option<&mut Aggregation>,
        agg_files: Vec<Vec<DataFile>>,
    ) -> Flush<Flushed> {
        let rows = files.iter().map(|f| f.record_count()).sum();
        let bytes = files.iter().map(|f| f.file_size_in_bytes()).sum();
        let (file_count, newest_event_us) = (files.len(), newest_event_time(&job.metadata, &files));
        let (metadata, snapshot_id) = self.commit_raw(job, files).await?;
        floe_lake::fail::point("after-table-commit");
        self.report_layout(&metadata);
        let (committer, name) = (&self.committer, &self.name);
        let (record, dead_update) = match &self.marks {
            Marks::Offsets { group } => (
                Record::Offsets {
                    group,
                    ranges: &job.dlq_ranges,
                    last_before_stop: job.last_before_stop,
                },
                None,
            ),
            Marks::Load(load) => {
                let update = job
                    .load_to
                    .and_then(|to| load.update(to, load.dead, !job.dead.is_empty()));
                (Record::Load(update.clone()), update)
            }
        };
        let dead_letters = self.dead.commit(committer, &job.dead, record);
        let aggregates = async {
            let (Some(a), Marks::Offsets { group }) = (aggregation, &self.marks) else {
                return Ok::<_, FlushError>(());
            };
            let rows = a
                .commit(committer, group, &job.agg_ranges, agg_files)
                .await?;
            tracing::debug!(table = %name, rows = ?rows, "aggregates committed");
            Ok(())
        };
        let (dead_letters, aggregated) = futures::future::join(dead_letters, aggregates).await;
        let (dead_letters, ()) = (dead_letters?, aggregated?);
        if let (Marks::Load(load), Some(u)) = (&mut self.marks, &dead_update) {
            load.dead = u.into();
        }
        tracing::debug!(table = %self.name, rows, dead_letters, files = file_count, "batch committed");
        Ok(Flushed {
            metadata,
            snapshot_id,
            newest_event_us,
            rows,
            dead_letters,
            files: file_count,
            bytes,
        })
    }

    /// Commits the batch's rows with their marks: the offsets they came from, or how far the
    /// load got. The table's metadata after, and its new snapshot.
    async fn commit_raw(
        &mut self,
        job: &FlushJob,
        files: Vec<DataFile>,
    ) -> Flush<(TableMetadata, Option<i64>)> {
        let has_rows = !files.is_empty();
        let mut req =
            CommitRequest::append(files).written_with(job.metadata.default_partition_spec_id());
        match &self.marks {
            Marks::Offsets { group } if has_rows || !job.raw_ranges.is_empty() => {
                req.offsets = Some(OffsetsUpdate {
                    group: group.clone(),
                    ranges: job.raw_ranges.clone(),
                });
            }
            Marks::Load(load) => {
                req.load = job
                    .load_to
                    .and_then(|to| load.update(to, load.target, has_rows));
            }
            Marks::Offsets { .. } => {}
        }
        if req.offsets.is_none() && req.load.is_none() {
            if has_rows {
                return Err(FlushError::Failed(crate::Error::Internal(
                    "a load's rows came without the line they got to".into(),
                )));
            }
            let (_, metadata) = self.committer.catalog().load_metadata(&self.table).await?;
            return Ok((metadata, None));
        }
        let started = Instant::now();
        let load = req.load.clone();
        floe_lake::fail::check("before-table-commit")?;
        let done = self.committer.commit(&self.table, req).await?;
        telemetry::TableCommitted {
            table: &self.name,
            took: started.elapsed(),
            attempts: done.attempts,
        }
        .emit();
        if let (Marks::Load(progress), Some(u)) = (&mut self.marks, &load) {
            progress.target = u.into();
        }
        Ok((done.metadata, done.snapshot_id))
    }

    /// Reports the table's layout (files per partition) every [`LAYOUT_EVERY`], in the
    /// background.
    fn report_layout(&mut self, metadata: &TableMetadata) {
        if self
            .layout_reported
            .is_some_and(|t| t.elapsed() < LAYOUT_EVERY)
        {
            return;
        }
        self.layout_reported = Some(Instant::now());
        let file_io = self.committer.catalog().file_io().clone();
        let (meta, name) = (metadata.clone(), self.name.clone());
        tokio::spawn(async move { telemetry::report_layout(&file_io, &meta, &name).await });
    }
}

/// The largest upper bound, among `files`, of the column the table's time partition derives
/// from (the event time), in epoch micros.
fn newest_event_time(metadata: &TableMetadata, files: &[DataFile]) -> Option<i64> {
    use iceberg::spec::PrimitiveLiteral;
    let (field_id, _) = floe_lake::partition::event_time_column(metadata)?;
    files
        .iter()
        .filter_map(|f| f.upper_bounds().get(&field_id))
        .filter_map(|d| match d.literal() {
            PrimitiveLiteral::Long(us) => Some(*us),
            PrimitiveLiteral::Int(days) => Some(i64::from(*days) * 86_400_000_000),
            _ => None,
        })
        .max()
}

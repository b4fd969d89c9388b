//! `floe dlq replay`: re-feed dead letters to their table after a fix (a column added, an
//! alias set), exactly once.
//!
//! 1. The dead letters of the table (optionally filtered by a SQL `WHERE` over the dead-letter
//!    table's columns) are decoded again against the table's *current* schema.
//! 2. Those that now decode are appended to the table in one commit that also records their
//!    source positions (topic, partition, offset) as applied under
//!    `floe.applied.<dead-letter table>` ([`floe_lake::marks`]). The commit is refused if any
//!    of them was applied before, so two replays racing cannot both land a message.
//! 3. The replayed rows are then removed from the dead-letter table (its files holding them are
//!    rewritten without them). If floe dies between 2 and 3, the next replay finds the rows
//!    already applied, does not load them again, and finishes the clean-up.
//! 4. The marks of the removed dead letters are dropped from the table's state (a state-only
//!    commit): they guard nothing once their dead letters are gone, and the state stays as
//!    small as what is pending.
//!
//! Messages that still fail stay in the dead-letter table, untouched.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::{BooleanArray, RecordBatch};
use datafusion::execution::SendableRecordBatchStream;
use floe_lake::commit::{Change, CommitRequest};
use floe_lake::scan::{FileReader, live_data_files};
use floe_lake::{Committer, DataWriter, PositionSet, applied_positions, parse_table_ident};
use floe_schema::RecordMeta;
use futures::TryStreamExt;

use crate::decode::Decoding;
use crate::source::dead_letters::{DeadLetterRows, column, normalize};
use crate::{Error, Result};

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The table the dead letters were meant for (`lake.events`).
    pub table: String,
    /// The dead-letter table (default `<table>_dead_letters`).
    pub dead_letter_table: String,
    /// A SQL boolean expression over the dead-letter table's columns (`error_kind =
    /// 'unknown_field'`); all of the table's dead letters when `None`.
    pub filter: Option<String>,
    /// Decode and count, change nothing.
    pub dry_run: bool,
    /// The mapping of the pipeline that loads the table (laid over the table's own), so
    /// replayed messages are unwrapped, projected, computed and checked as loaded ones are.
    pub mapping: floe_schema::Mapping,
    /// Where `mapping` is configured, for error messages (`pipelines[0]`).
    pub section: String,
}

impl ReplayOptions {
    /// Replays every dead letter of `table` from `<table>_dead_letters`.
    pub fn new(table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            dead_letter_table: crate::dead_letters::default_table(&table),
            table,
            filter: None,
            dry_run: false,
            mapping: floe_schema::Mapping::default(),
            section: "pipeline".into(),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayReport {
    /// Dead letters of the table that matched the filter.
    pub selected: u64,
    /// Of those, rows now appended to the table.
    pub replayed: u64,
    /// Of those, messages that still fail, by error kind (they stay dead letters).
    pub still_failing: BTreeMap<String, u64>,
    /// Of those, messages an earlier replay already loaded (only cleaned up now).
    pub already_replayed: u64,
    /// Of those, dead letters without a source offset, which cannot be tracked and are left.
    pub untracked: u64,
    /// Rows removed from the dead-letter table.
    pub removed_dead_letters: u64,
    /// The table's new snapshot.
    pub snapshot_id: Option<i64>,
    /// The dead-letter table's new snapshot.
    pub dead_letter_snapshot_id: Option<i64>,
    /// Nothing was changed.
    pub dry_run: bool,
}

const ENCODE_ROWS: usize = 65_536;

mod waiting {
    use std::collections::HashSet;

    /// Source positions of the rows waiting for the transform stage, in row order, with a
    /// set for the "same message twice" check.
    #[derive(Default)]
    pub(super) struct Waiting {
        order: Vec<(String, i32, i64)>,
        set: HashSet<(String, i32, i64)>,
    }

    impl Waiting {
        pub(super) fn push(&mut self, p: (String, i32, i64)) {
            self.set.insert(p.clone());
            self.order.push(p);
        }

        pub(super) fn contains(&self, p: &(String, i32, i64)) -> bool {
            self.set.contains(p)
        }

        pub(super) fn drain(&mut self) -> std::vec::IntoIter<(String, i32, i64)> {
            self.set.clear();
            std::mem::take(&mut self.order).into_iter()
        }
    }
}

/// A replay in progress: the decode stage of the table, the dead letters decoded so far
/// and where they came from, and the file they are written to.
struct Replay<'a> {
    opts: &'a ReplayOptions,
    decoding: Decoding,
    /// Positions an earlier replay applied (their dead letters are only cleaned up).
    applied: &'a PositionSet,
    /// Rows decoded and waiting for the transform stage (its rules may still reject them).
    waiting: waiting::Waiting,
    /// Positions of the rows replayed.
    positions: PositionSet,
    report: ReplayReport,
    /// `None` on a dry run.
    writer: Option<DataWriter>,
    ingested_at_us: i64,
}

impl Replay<'_> {
    /// Decodes one batch of dead letters into the replay.
    async fn offer(&mut self, batch: &RecordBatch) -> Result<()> {
        let batch = normalize(batch)?;
        let rows = DeadLetterRows::new(&batch)?;
        let kinds = column(&batch, "error_kind")?.as_string::<i32>();
        for i in 0..batch.num_rows() {
            self.report.selected += 1;
            if kinds.value(i) == floe_schema::DecodeErrorKind::TooLarge.as_str() {
                // Only the start of the message was kept: it can never load.
                self.still_failing("too_large");
                continue;
            }
            self.offer_row(&rows, i);
            if self.decoding.decoder.len() >= ENCODE_ROWS {
                self.write_chunk().await?;
            }
        }
        Ok(())
    }

    /// Decodes dead letter `i` of `rows` unless it cannot be tracked, was replayed before,
    /// or repeats one already taken.
    fn offer_row(&mut self, rows: &DeadLetterRows<'_>, i: usize) {
        let (source, partition, offset) = rows.position(i);
        let source = source.as_ref();
        let Some(offset) = offset else {
            self.report.untracked += 1;
            return;
        };
        let slot = partition.unwrap_or(-1);
        if self.applied.contains(source, slot, offset) {
            self.report.already_replayed += 1;
            return;
        }
        if self.positions.contains(source, slot, offset)
            || self.waiting.contains(&(source.to_string(), slot, offset))
        {
            return; // the same message dead-lettered twice: load it once
        }
        let Some(payload) = rows.payload(i) else {
            self.still_failing("tombstone");
            return;
        };
        let meta = RecordMeta {
            topic: rows.topic(i),
            partition,
            offset: Some(offset),
            timestamp_ms: rows.timestamp_ms(i),
            key: rows.key(i),
            ingested_at_us: self.ingested_at_us,
        };
        let decoder = &mut self.decoding.decoder;
        let decoded = if self.opts.dry_run && self.decoding.stage.is_none() {
            decoder.check(payload, &meta)
        } else {
            decoder.decode(payload, &meta)
        };
        match (decoded, self.decoding.stage.as_mut()) {
            (Ok(()), None) => {
                self.positions.insert(source, slot, offset);
                self.report.replayed += 1;
            }
            (Ok(()), Some(s)) => {
                s.push(&meta, payload, Vec::new(), true, false, false);
                self.waiting.push((source.to_string(), slot, offset));
            }
            (Err(e), _) => self.still_failing(e.kind.as_str()),
        }
    }

    fn still_failing(&mut self, kind: &str) {
        *self
            .report
            .still_failing
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// Runs the rows decoded since the last chunk through the transform stage (the rows it
    /// rejects stay dead letters; the others are `waiting` no more: they count as replayed)
    /// and writes them (unless a dry run).
    async fn write_chunk(&mut self) -> Result<()> {
        if self.decoding.decoder.is_empty() {
            return Ok(());
        }
        let rows = self.decoding.decoder.finish();
        let rows = match self.decoding.stage.as_mut() {
            None => rows,
            Some(stage) => {
                let staged = stage
                    .apply(rows, chrono::Utc::now().timestamp_micros())
                    .map_err(Error::Transform)?;
                for (i, (source, slot, offset)) in self.waiting.drain().enumerate() {
                    if staged.kept.as_ref().is_none_or(|k| k.value(i)) {
                        self.positions.insert(&source, slot, offset);
                        self.report.replayed += 1;
                    }
                }
                for r in &staged.rejected {
                    self.still_failing(r.why.kind);
                }
                staged.rows
            }
        };
        if let Some(w) = &mut self.writer {
            w.write(&rows).await?;
        }
        Ok(())
    }

    /// Reads every selected dead letter into the replay.
    async fn read_all(&mut self, mut stream: SendableRecordBatchStream) -> Result<()> {
        let reading = |e| Error::Config(format!("reading {}: {e}", self.opts.dead_letter_table));
        while let Some(batch) = stream.try_next().await.map_err(reading)? {
            self.offer(&batch).await?;
        }
        self.write_chunk().await
    }
}

/// Replays dead letters as described in the module docs.
pub async fn replay(committer: &Committer, opts: &ReplayOptions) -> Result<ReplayReport> {
    let catalog = committer.catalog();
    let ident = parse_table_ident(&opts.table)?;
    let dl_ident = parse_table_ident(&opts.dead_letter_table)?;
    let (_, metadata) = catalog.load_metadata(&ident).await?;
    let dl_table = catalog.load_table(&dl_ident).await?;
    let read_at = dl_table
        .metadata()
        .current_snapshot()
        .map(|s| s.sequence_number())
        .unwrap_or(0);
    let applied = applied_positions(&metadata, &opts.dead_letter_table)?;
    let stream = crate::source::dead_letters::read(
        &dl_table,
        &opts.dead_letter_table,
        &opts.table,
        opts.filter.as_deref(),
    )
    .await?;
    let spec_id = metadata.default_partition_spec_id();
    let writer = (!opts.dry_run)
        .then(|| DataWriter::new(catalog.file_io(), &metadata))
        .transpose()?;
    let mut run = Replay {
        opts,
        decoding: Decoding::new(&opts.table, metadata, opts.mapping.clone(), &opts.section)?,
        applied: &applied,
        waiting: waiting::Waiting::default(),
        positions: PositionSet::new(),
        report: ReplayReport {
            dry_run: opts.dry_run,
            ..Default::default()
        },
        writer,
        ingested_at_us: chrono::Utc::now().timestamp_micros(),
    };
    let read = run.read_all(stream).await;
    let Replay {
        positions,
        mut report,
        writer,
        ..
    } = run;
    if let Err(e) = read {
        if let Some(w) = writer {
            w.abort().await;
        }
        return Err(e);
    }
    let Some(writer) = writer else {
        return Ok(report); // dry run
    };
    let mut all_applied = applied;
    if positions.is_empty() {
        writer.abort().await;
    } else {
        let files = writer.close().await?;
        let mut req = CommitRequest::append(files)
            .with_applied(&opts.dead_letter_table, positions)
            .written_with(spec_id);
        if let Some(a) = req.applied.as_mut() {
            a.read_at = Some(read_at);
        }
        req.properties
            .insert("floe.operation".into(), "dlq-replay".into());
        let committed = committer.commit(&ident, req).await.map_err(|e| match e {
            floe_lake::Error::AlreadyApplied { .. } => Error::Config(format!(
                "{e}; another replay of these dead letters ran at the same time — run the replay again \
                 (nothing was loaded twice)"
            )),
            e => e.into(),
        })?;
        report.snapshot_id = committed.snapshot_id;
        all_applied = applied_positions(&committed.metadata, &opts.dead_letter_table)?;
    }
    if !all_applied.is_empty() {
        clean_up(committer, opts, all_applied, &mut report).await?;
    }
    Ok(report)
}

/// Removes the replayed rows from the dead-letter table, then their marks from the table's
/// state: with their dead letters gone they have nothing left to guard. A replay that read
/// the dead letters before they left is refused from then on (the horizon).
async fn clean_up(
    committer: &Committer,
    opts: &ReplayOptions,
    applied: PositionSet,
    report: &mut ReplayReport,
) -> Result<()> {
    let (removed, snapshot) =
        remove_applied(committer, &opts.table, &opts.dead_letter_table, &applied).await?;
    report.removed_dead_letters = removed;
    report.dead_letter_snapshot_id = snapshot;
    let dl_ident = parse_table_ident(&opts.dead_letter_table)?;
    let gone_at = committer
        .catalog()
        .load_metadata(&dl_ident)
        .await?
        .1
        .current_snapshot()
        .map(|s| s.sequence_number())
        .unwrap_or(0);
    let mut forget = CommitRequest::append(Vec::new());
    forget.applied = Some(floe_lake::commit::AppliedUpdate {
        name: opts.dead_letter_table.clone(),
        positions: PositionSet::new(),
        forget: applied,
        forget_at: Some(gone_at),
        read_at: None,
    });
    committer
        .commit(&parse_table_ident(&opts.table)?, forget)
        .await?;
    Ok(())
}

/// Rewrites the dead-letter table without the rows of `table` whose positions are in
/// `applied`. Retries if a file it rewrites was replaced meanwhile (e.g. by compaction).
async fn remove_applied(
    committer: &Committer,
    table: &str,
    dead_letter_table: &str,
    applied: &PositionSet,
) -> Result<(u64, Option<i64>)> {
    let catalog = committer.catalog();
    let ident = parse_table_ident(dead_letter_table)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dl = catalog.load_table(&ident).await?;
        let reader = FileReader::new(&dl).await?;
        let mut removed_files = Vec::new();
        let mut removed_rows = 0u64;
        let mut writer =
            DataWriter::with_schema(catalog.file_io(), dl.metadata(), reader.schema())?;
        let rewrite: Result<()> = async {
            for live in live_data_files(catalog.file_io(), dl.metadata()).await? {
                let path = live.data_file.file_path().to_string();
                let batches: Vec<RecordBatch> = reader
                    .read(&path)?
                    .try_collect()
                    .await
                    .map_err(floe_lake::Error::from)?;
                let mut keeps = Vec::with_capacity(batches.len());
                let mut dropped = 0u64;
                for batch in &batches {
                    let normalized = normalize(batch)?;
                    let rows = DeadLetterRows::new(&normalized)?;
                    let targets = column(&normalized, "target_table")?.as_string::<i32>();
                    let keep: BooleanArray = (0..batch.num_rows())
                        .map(|i| {
                            let (source, partition, offset) = rows.position(i);
                            let hit = targets.value(i) == table
                                && offset.is_some_and(|o| {
                                    applied.contains(&source, partition.unwrap_or(-1), o)
                                });
                            Some(!hit)
                        })
                        .collect();
                    dropped += keep.false_count() as u64;
                    keeps.push(keep);
                }
                if dropped == 0 {
                    continue;
                }
                for (batch, keep) in batches.iter().zip(&keeps) {
                    let kept = arrow_select::filter::filter_record_batch(batch, keep)
                        .map_err(|e| Error::Config(format!("filtering {path}: {e}")))?;
                    writer.write(&kept).await?;
                }
                removed_rows += dropped;
                removed_files.push(live.data_file);
            }
            Ok(())
        }
        .await;
        if let Err(e) = rewrite {
            writer.abort().await;
            return Err(e);
        }
        if removed_files.is_empty() {
            writer.abort().await;
            return Ok((0, None));
        }
        let added = writer.close().await?;
        let change = if added.is_empty() {
            Change::Delete(removed_files)
        } else {
            Change::Overwrite {
                removed: removed_files,
                added,
            }
        };
        let read_seq = dl
            .metadata()
            .current_snapshot()
            .map(|s| s.sequence_number())
            .unwrap_or(0);
        let mut req = CommitRequest::new(change)
            .validate_from(read_seq)
            .written_with(dl.metadata().default_partition_spec_id());
        req.properties
            .insert("floe.operation".into(), "dlq-replay-cleanup".into());
        match committer.commit(&ident, req).await {
            Ok(c) => return Ok((removed_rows, c.snapshot_id)),
            Err(floe_lake::Error::FilesGone { .. } | floe_lake::Error::ConcurrentDelete { .. })
                if attempt < 5 =>
            {
                tracing::info!(
                    table = dead_letter_table,
                    "dead-letter files changed meanwhile; cleaning up again"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
}

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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use datafusion::prelude::{Expr, SessionContext, col, lit};
use floe_lake::commit::{Change, CommitRequest};
use floe_lake::scan::{FileReader, live_data_files};
use floe_lake::{Committer, DataWriter, PositionSet, applied_positions, parse_table_ident};
use floe_schema::{Decoder, RecordMeta};
use futures::TryStreamExt;
use iceberg_datafusion::IcebergStaticTableProvider;

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
            dead_letter_table: format!("{table}_dead_letters"),
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

/// Runs the rows decoded since the last chunk through the transform stage (the rows it
/// rejects stay dead letters; the others are `waiting` no more: they count as replayed) and
/// writes them (unless a dry run).
async fn write_chunk(
    decoder: &mut Decoder,
    stage: Option<&mut crate::transform::Stage>,
    waiting: &mut waiting::Waiting,
    positions: &mut PositionSet,
    report: &mut ReplayReport,
    writer: Option<&mut DataWriter>,
) -> Result<()> {
    if decoder.is_empty() {
        return Ok(());
    }
    let rows = decoder.finish();
    let rows = match stage {
        None => rows,
        Some(stage) => {
            let staged = stage
                .apply(rows, chrono::Utc::now().timestamp_micros())
                .map_err(Error::Config)?;
            for (i, (source, slot, offset)) in waiting.drain().enumerate() {
                if staged.kept.as_ref().is_none_or(|k| k.value(i)) {
                    positions.insert(&source, slot, offset);
                    report.replayed += 1;
                }
            }
            for r in &staged.rejected {
                *report
                    .still_failing
                    .entry(r.why.kind.to_string())
                    .or_default() += 1;
            }
            staged.rows
        }
    };
    if let Some(w) = writer {
        w.write(&rows).await?;
    }
    Ok(())
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
    let mut report = ReplayReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };

    let ctx = SessionContext::new();
    let provider = IcebergStaticTableProvider::try_new_from_table(dl_table.clone())
        .await
        .map_err(|e| Error::Config(format!("opening {}: {e}", opts.dead_letter_table)))?;
    ctx.register_table("dead_letters", Arc::new(provider))
        .map_err(|e| Error::Config(e.to_string()))?;
    let reading = |e: datafusion::error::DataFusionError| {
        Error::Config(format!("reading {}: {e}", opts.dead_letter_table))
    };
    let df = ctx.table("dead_letters").await.map_err(reading)?;
    let mut predicate = col("target_table").eq(lit(opts.table.as_str()));
    if let Some(f) = &opts.filter {
        predicate = predicate.and(parse_where(&ctx, f, df.schema(), &opts.dead_letter_table)?);
    }
    let mut columns = vec![
        "source_topic",
        "source_partition",
        "source_offset",
        "source_key",
        "source_timestamp",
        "payload",
        "error_kind",
    ];
    if df.schema().has_column_with_unqualified_name("source_load") {
        columns.push("source_load");
    }
    let mut stream = df
        .filter(predicate)
        .and_then(|df| df.select_columns(&columns))
        .map_err(reading)?
        .execute_stream()
        .await
        .map_err(reading)?;

    let (mut decoder, mut stage) =
        crate::transform::prepare(&opts.table, &metadata, &opts.mapping, &opts.section)?;
    // Rows decoded and waiting for the transform stage (its rules may still reject them).
    let mut waiting: waiting::Waiting = Default::default();
    let mut writer = (!opts.dry_run)
        .then(|| DataWriter::new(catalog.file_io(), &metadata))
        .transpose()?;
    let mut positions = PositionSet::new();
    let ingested_at_us = chrono::Utc::now().timestamp_micros();
    let outcome: Result<()> = async {
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| Error::Config(format!("reading {}: {e}", opts.dead_letter_table)))?
        {
            let batch = normalize(&batch)?;
            let rows = DeadLetterRows::new(&batch)?;
            let kinds = column(&batch, "error_kind")?.as_string::<i32>();
            for i in 0..batch.num_rows() {
                report.selected += 1;
                if kinds.value(i) == floe_schema::DecodeErrorKind::TooLarge.as_str() {
                    // Only the start of the message was kept: it can never load.
                    *report.still_failing.entry("too_large".into()).or_default() += 1;
                    continue;
                }
                let (source, partition, offset) = rows.position(i);
                let source = source.as_ref();
                let Some(offset) = offset else {
                    report.untracked += 1;
                    continue;
                };
                let slot = partition.unwrap_or(-1);
                if applied.contains(source, slot, offset) {
                    report.already_replayed += 1;
                    continue;
                }
                if positions.contains(source, slot, offset)
                    || waiting.contains(&(source.to_string(), slot, offset))
                {
                    continue; // the same message dead-lettered twice: load it once
                }
                let Some(payload) = rows.payload(i) else {
                    *report.still_failing.entry("tombstone".into()).or_default() += 1;
                    continue;
                };
                let meta = RecordMeta {
                    topic: rows.topic(i),
                    partition,
                    offset: Some(offset),
                    timestamp_ms: rows.timestamp_ms(i),
                    key: rows.key(i),
                    ingested_at_us,
                };
                let decoded = if opts.dry_run && stage.is_none() {
                    decoder.check(payload, &meta)
                } else {
                    decoder.decode(payload, &meta)
                };
                match decoded {
                    Ok(()) => match stage.as_mut() {
                        None => {
                            positions.insert(source, slot, offset);
                            report.replayed += 1;
                        }
                        Some(s) => {
                            s.push(&meta, payload, Vec::new(), true, false, false);
                            waiting.push((source.to_string(), slot, offset));
                        }
                    },
                    Err(e) => {
                        *report
                            .still_failing
                            .entry(e.kind.as_str().to_string())
                            .or_default() += 1;
                    }
                }
                if decoder.len() >= ENCODE_ROWS {
                    write_chunk(
                        &mut decoder,
                        stage.as_mut(),
                        &mut waiting,
                        &mut positions,
                        &mut report,
                        writer.as_mut(),
                    )
                    .await?;
                }
            }
        }
        write_chunk(
            &mut decoder,
            stage.as_mut(),
            &mut waiting,
            &mut positions,
            &mut report,
            writer.as_mut(),
        )
        .await
    }
    .await;
    if let Err(e) = outcome {
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
            .written_with(metadata.default_partition_spec_id());
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
        let (removed, snapshot) = remove_applied(
            committer,
            &opts.table,
            &opts.dead_letter_table,
            &all_applied,
        )
        .await?;
        report.removed_dead_letters = removed;
        report.dead_letter_snapshot_id = snapshot;
        // Their dead letters are gone: the marks have nothing left to guard. A replay that
        // read the dead letters before they left is refused from now on (the horizon).
        let gone_at = catalog
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
            forget: all_applied,
            forget_at: Some(gone_at),
            read_at: None,
        });
        committer.commit(&ident, forget).await?;
    }
    Ok(report)
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

/// Parses `--where` text as one boolean expression over the dead-letter table's columns
/// (DataFusion's SQL expression parser; never pasted into a statement). Subqueries, aggregates
/// and window functions are refused.
fn parse_where(
    ctx: &SessionContext,
    text: &str,
    schema: &datafusion::common::DFSchema,
    dead_letter_table: &str,
) -> Result<Expr> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::logical_expr::ExprSchemable;
    let columns = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let bad = |why: String| {
        Error::Config(format!(
            "--where {text:?} is not one boolean expression over {dead_letter_table}'s columns \
             ({columns}): {why}"
        ))
    };
    let expr = ctx
        .parse_sql_expr(text, schema)
        .map_err(|e| bad(e.to_string()))?;
    let mut refused = None;
    expr.apply(|e| {
        let what = match e {
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => Some("a subquery"),
            Expr::AggregateFunction(_) => Some("an aggregate function"),
            Expr::WindowFunction(_) => Some("a window function"),
            Expr::Placeholder(_) => Some("a placeholder"),
            _ => None,
        };
        if let Some(what) = what {
            refused = Some(what);
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .map_err(|e| bad(e.to_string()))?;
    if let Some(what) = refused {
        return Err(bad(format!("{what} is not allowed")));
    }
    let ty = expr.get_type(schema).map_err(|e| bad(e.to_string()))?;
    if ty != arrow_schema::DataType::Boolean && ty != arrow_schema::DataType::Null {
        return Err(bad(format!("it is of type {ty}, not boolean")));
    }
    Ok(expr)
}

/// Typed access to a dead-letter batch's source columns.
struct DeadLetterRows<'a> {
    topic: &'a arrow_array::StringArray,
    /// `source_load` (dead-letter tables created before floe 0.2 may lack it).
    load: Option<&'a arrow_array::StringArray>,
    partition: &'a arrow_array::PrimitiveArray<Int32Type>,
    offset: &'a arrow_array::PrimitiveArray<Int64Type>,
    key: &'a arrow_array::BinaryArray,
    timestamp: &'a arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    payload: &'a arrow_array::BinaryArray,
}

impl<'a> DeadLetterRows<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self> {
        let typed = |name: &str| -> Result<&'a dyn Array> { column(batch, name) };
        let wrong = |name: &str| {
            Error::Config(format!(
                "dead-letter column {name} has an unexpected type (is this a floe dead-letter table?)"
            ))
        };
        Ok(Self {
            topic: typed("source_topic")?
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong("source_topic"))?,
            load: match batch.column_by_name("source_load") {
                None => None,
                Some(c) => Some(
                    c.as_string_opt::<i32>()
                        .ok_or_else(|| wrong("source_load"))?,
                ),
            },
            partition: typed("source_partition")?
                .as_primitive_opt()
                .ok_or_else(|| wrong("source_partition"))?,
            offset: typed("source_offset")?
                .as_primitive_opt()
                .ok_or_else(|| wrong("source_offset"))?,
            key: typed("source_key")?
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("source_key"))?,
            timestamp: typed("source_timestamp")?
                .as_primitive_opt()
                .ok_or_else(|| wrong("source_timestamp"))?,
            payload: typed("payload")?
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("payload"))?,
        })
    }

    /// The row's position: its source (the topic; for a line of a load, `file:<path>@<load
    /// id>`, as line numbers are unique only within a load), partition and offset.
    fn position(&self, i: usize) -> (Cow<'a, str>, Option<i32>, Option<i64>) {
        let topic = self.topic.value(i);
        let source = match self.load.filter(|l| l.is_valid(i)) {
            Some(load) => Cow::Owned(format!("{topic}@{}", load.value(i))),
            None => Cow::Borrowed(topic),
        };
        (
            source,
            self.partition.is_valid(i).then(|| self.partition.value(i)),
            self.offset.is_valid(i).then(|| self.offset.value(i)),
        )
    }

    fn topic(&self, i: usize) -> &'a str {
        self.topic.value(i)
    }

    fn payload(&self, i: usize) -> Option<&'a [u8]> {
        self.payload.is_valid(i).then(|| self.payload.value(i))
    }

    fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.key.is_valid(i).then(|| self.key.value(i))
    }

    fn timestamp_ms(&self, i: usize) -> Option<i64> {
        self.timestamp
            .is_valid(i)
            .then(|| self.timestamp.value(i).div_euclid(1000))
    }
}

/// Casts view-typed string/binary columns (DataFusion may produce them) to the plain types.
fn normalize(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow_schema::{DataType, Field, Schema};
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = match field.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
            DataType::BinaryView | DataType::LargeBinary => Some(DataType::Binary),
            _ => None,
        };
        match target {
            Some(t) => {
                let cast = datafusion::arrow::compute::cast(col, &t)
                    .map_err(|e| Error::Config(format!("reading {}: {e}", field.name())))?;
                fields.push(Field::new(field.name(), t, field.is_nullable()));
                columns.push(cast);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(col.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::Config(format!("reading dead letters: {e}")))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| {
            Error::Config(format!(
                "the dead-letter table has no column {name} (is this a floe dead-letter table?)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> u32 {
        std::env::var("FLOE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn dead_letter_schema() -> datafusion::common::DFSchema {
        let def = floe_schema::TableDefinition::dead_letter("lake.t_dead_letters").unwrap();
        let arrow = iceberg::arrow::schema_to_arrow_schema(&def.schema).unwrap();
        datafusion::common::DFSchema::try_from(arrow).unwrap()
    }

    /// Text built from what SQL injections and honest filters are made of.
    fn where_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("error_kind"),
            Just("source_offset"),
            Just("source_topic"),
            Just("payload"),
            Just("failed_at"),
            Just("no_such"),
            Just("'unknown_field'"),
            Just("'it''s'"),
            Just("'"),
            Just("\""),
            Just("42"),
            Just("-1e400"),
            Just("NULL"),
            Just("TRUE"),
            Just("="),
            Just("<>"),
            Just("<"),
            Just("+"),
            Just("||"),
            Just("AND"),
            Just("OR"),
            Just("NOT"),
            Just("LIKE"),
            Just("IN"),
            Just("IS"),
            Just("BETWEEN"),
            Just("("),
            Just(")"),
            Just(","),
            Just(";"),
            Just("--"),
            Just("/*"),
            Just("*/"),
            Just("SELECT"),
            Just("FROM dead_letters"),
            Just("UNION"),
            Just("DROP TABLE x"),
            Just("count(*)"),
            Just("row_number() OVER ()"),
            Just("lower("),
            Just("CAST("),
            Just("AS INT"),
            Just("CASE WHEN"),
            Just("THEN"),
            Just("ELSE"),
            Just("END"),
            Just("$1"),
            Just("*"),
        ];
        prop_oneof![
            4 => prop::collection::vec(token, 1..24).prop_map(|t| t.join(" ")),
            1 => "\\PC{0,64}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        /// Any `--where` text is one boolean expression over the columns, or refused naming
        /// `--where`; never a panic, never a statement, subquery or aggregate.
        #[test]
        fn fuzz_where_is_one_boolean_expression_or_refused(text in where_text()) {
            let ctx = SessionContext::new();
            let schema = dead_letter_schema();
            match parse_where(&ctx, &text, &schema, "lake.t_dead_letters") {
                Ok(expr) => {
                    use datafusion::logical_expr::ExprSchemable;
                    let ty = expr.get_type(&schema).unwrap();
                    prop_assert!(
                        matches!(ty, arrow_schema::DataType::Boolean | arrow_schema::DataType::Null),
                        "{text:?} gave {ty}"
                    );
                    use datafusion::common::tree_node::TreeNode;
                    let forbidden = expr
                        .exists(|e| {
                            Ok(matches!(
                                e,
                                Expr::ScalarSubquery(_)
                                    | Expr::Exists(_)
                                    | Expr::InSubquery(_)
                                    | Expr::AggregateFunction(_)
                                    | Expr::WindowFunction(_)
                                    | Expr::Placeholder(_)
                            ))
                        })
                        .unwrap();
                    prop_assert!(!forbidden, "{text:?}: {expr}");
                }
                Err(e) => prop_assert!(e.to_string().contains("--where"), "{e}"),
            }
        }
    }
}

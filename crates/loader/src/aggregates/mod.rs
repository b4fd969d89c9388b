//! Aggregates in the loader: every flushed batch of a pipeline, deduplicated by event id, feeds
//! the pipeline's aggregate definitions; each flush commits one partial result per aggregate
//! table, with the batch's Kafka offsets (exactly once, like the raw table).
//!
//! - Rows reach the writer task in chunks. Each chunk is deduplicated ([`Deduper`]) and run
//!   through the aggregate queries at once; partials pile up per aggregate and are merged when
//!   they grow and at flush, so memory holds partial rows, not events.
//! - Dedup decisions stay pending until the flush's commits land; a failed flush forgets them
//!   and the rewound messages are judged again from the same state.
//! - On assignment, the state of each partition is rebuilt from the raw table: the ids of its
//!   rows within the window that precede the aggregates' committed offsets. (The raw table
//!   needs the `_kafka_partition` and `_kafka_offset` columns, and `_kafka_topic` when a
//!   pipeline reads several topics.)

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, BooleanArray, RecordBatch};
use floe_aggregate::dedup::{Deduper, Part};
use floe_aggregate::{AggregateDef, Aggregator, Form};
use floe_lake::commit::{CommitRequest, OffsetsUpdate};
use floe_lake::{Committer, OffsetRange};
use iceberg::TableIdent;

mod partials;
mod tables;

pub use tables::{dedup_columns, ensure_tables, select};

use crate::telemetry::{AggregateStage, CpuMeter, thread_cpu};
use crate::{Error, Result};
use partials::PartialStream;
use tables::load_recent_keys;

/// Partial rows per aggregate beyond which they are merged during a batch (and twice the rows
/// the last merge left, so merging stays linear when partials hardly fold, e.g. a high
/// cardinality key).
const MERGE_ROWS: usize = 200_000;

/// Partials are merged (during a batch and before writing) only while merging pays: the
/// latest chunk's partial had at most this share of the chunk's rows. A key that rarely
/// repeats within a chunk (a high-cardinality combination) rarely repeats across chunks of
/// the same hours either; merging such partials costs a second aggregation for nothing.
const MERGE_PAYS: f64 = 0.8;

/// An aggregate whose latest grouped chunk yielded more than this share of its rows makes its
/// partials in [`Form::Rows`] (one row per event, no grouping): grouping keys that hardly
/// repeat costs a hash aggregation for a few percent fewer rows. The default of
/// `pipelines[].aggregate_rows_form_share`.
pub const ROWS_FORM_SHARE: f64 = 0.9;

/// How a pipeline's aggregation is tuned (`pipelines[]` keys).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// How far back in event time duplicates are recognised (`dedup_window`).
    pub dedup_window: std::time::Duration,
    /// Event ids the dedup state holds at most (`dedup_max_keys`).
    pub dedup_max_keys: usize,
    /// Share of distinct keys from which a chunk's partials skip grouping
    /// (`aggregate_rows_form_share`, [`ROWS_FORM_SHARE`]).
    pub rows_form_share: f64,
}

/// In [`Form::Rows`], every this many chunks run grouped, to see whether keys repeat now.
const ROWS_PROBE_EVERY: u32 = 16;

/// Per row of a chunk: where it came from and which tables take it.
#[derive(Debug, Default)]
pub struct RowRouting {
    /// Topic index (into the pipeline's topics) and partition of each row.
    pub parts: Vec<(u16, i32)>,
    /// Rows for the raw table; `None`: all.
    pub raw: Option<Vec<bool>>,
    /// Per aggregate, rows it still needs; `None`: all.
    pub aggs: Vec<Option<Vec<bool>>>,
}

/// An aggregate table a pipeline feeds.
#[derive(Clone)]
pub struct AggTable {
    /// The definition.
    pub def: AggregateDef,
    /// The table.
    pub ident: TableIdent,
}

/// The columns dedup uses.
#[derive(Debug, Clone)]
pub struct DedupColumns {
    /// Event id.
    pub key: String,
    /// Event time (the raw table's time-partition source column).
    pub time: String,
}

/// The writer task's aggregation state for one pipeline.
pub struct Aggregation {
    tables: Vec<AggTable>,
    aggregator: Aggregator,
    dedup: Deduper,
    dedup_meters: DedupMeters,
    columns: DedupColumns,
    topics: Vec<String>,
    partials: Vec<Vec<RecordBatch>>,
    partial_rows: Vec<usize>,
    /// The chunk schema and the columns of it the aggregates read.
    read: Option<(arrow_schema::SchemaRef, Vec<usize>)>,
    /// Per aggregate: rows the last merge left (during this flush).
    merged_rows: Vec<usize>,
    /// Per aggregate: partial rows / input rows of the latest chunk run grouped.
    chunk_ratio: Vec<f64>,
    /// Per aggregate: whether it has a [`Form::Rows`] (for the chunk schema in `read`).
    rows_form: Vec<bool>,
    /// Per aggregate: chunks made in [`Form::Rows`] since the last grouped one.
    rows_run: Vec<u32>,
    /// CPU time of each stage, counted.
    cpu: StageMeters,
    /// Queries running on the runtime's other threads while the writer encodes Parquet: per
    /// chunk, the partials of every aggregate (in order).
    running: std::collections::VecDeque<Running>,
    /// Per aggregate: its partials streaming to Parquet during this batch (when they do not
    /// fold), opened at the first such partial.
    streams: Vec<Option<PartialStream>>,
    catalog: floe_lake::Catalog,
    /// [`Tuning::rows_form_share`].
    rows_form_share: f64,
}

/// The dedup state's size, kept under its cap.
struct DedupMeters {
    table: String,
    max_keys: usize,
    keys: metrics::Gauge,
    evictions: metrics::Counter,
}

impl DedupMeters {
    fn new(table: &str, max_keys: usize) -> Self {
        Self {
            table: table.to_string(),
            max_keys,
            keys: metrics::gauge!(crate::telemetry::DEDUP_KEYS, "table" => table.to_string()),
            evictions: metrics::counter!(crate::telemetry::DEDUP_EVICTIONS, "table" => table.to_string()),
        }
    }

    /// Enforces the cap: what it forgot is counted and logged.
    fn capped(&self, dedup: &mut Deduper) {
        if let Some(e) = dedup.enforce_cap() {
            self.evictions.increment(e.keys as u64);
            let before = chrono::DateTime::from_timestamp_micros(e.before_us)
                .map_or_else(|| e.before_us.to_string(), |t| t.to_rfc3339());
            tracing::warn!(
                table = %self.table,
                forgotten = e.keys,
                event_time_before = %before,
                held = e.held,
                dedup_max_keys = self.max_keys,
                "the dedup state reached dedup_max_keys: forgot the oldest event ids before \
                 their dedup_window ended; a later duplicate of one of them is counted again \
                 in the aggregates (raise dedup_max_keys or shorten dedup_window)"
            );
        }
        self.keys.set(dedup.held() as f64);
    }
}

/// The CPU meters of a pipeline's aggregate path.
struct StageMeters {
    dedup: CpuMeter,
    query: CpuMeter,
    write: CpuMeter,
}

/// One chunk's queries: (aggregate index, form, input rows, partial) when done.
type Running = tokio::task::JoinHandle<Result<Vec<(usize, Form, usize, RecordBatch)>>>;

/// Chunks whose queries may run at once.
const RUNNING_CHUNKS: usize = 3;

impl Aggregation {
    /// Aggregation of `tables` for a pipeline reading `topics` into `source` (the raw table,
    /// which labels its CPU metrics).
    pub fn new(
        source: &str,
        tables: Vec<AggTable>,
        columns: DedupColumns,
        topics: Vec<String>,
        catalog: floe_lake::Catalog,
        tuning: Tuning,
    ) -> Self {
        let (window, max_keys) = (tuning.dedup_window, tuning.dedup_max_keys);
        let aggregator = Aggregator::new(tables.iter().map(|t| t.def.clone()).collect());
        let n = tables.len();
        Self {
            tables,
            aggregator,
            dedup: Deduper::new(window).with_max_keys(max_keys),
            dedup_meters: DedupMeters::new(source, max_keys),
            columns,
            topics,
            partials: vec![Vec::new(); n],
            partial_rows: vec![0; n],
            read: None,
            merged_rows: vec![0; n],
            chunk_ratio: vec![0.0; n],
            rows_form: vec![false; n],
            rows_run: vec![0; n],
            cpu: StageMeters {
                dedup: CpuMeter::new(source, AggregateStage::Dedup),
                query: CpuMeter::new(source, AggregateStage::Query),
                write: CpuMeter::new(source, AggregateStage::Write),
            },
            running: std::collections::VecDeque::new(),
            streams: (0..n).map(|_| None).collect(),
            catalog,
            rows_form_share: tuning.rows_form_share,
        }
    }

    /// The aggregate tables.
    pub fn tables(&self) -> &[AggTable] {
        &self.tables
    }

    /// Deduplicates a chunk of decoded rows and folds it into the partials.
    pub async fn add(&mut self, rows: &RecordBatch, routing: &RowRouting) -> Result<()> {
        let n = rows.num_rows();
        if n == 0 {
            return Ok(());
        }
        let cpu = thread_cpu();
        let first = self.first_sightings(rows, routing)?;
        self.dedup_meters.capped(&mut self.dedup);
        // Timed in two parts, around the awaits below: a task may resume on another thread,
        // whose CPU clock is another one.
        self.cpu.dedup.since(cpu);
        let rows = self.project(rows).await?;
        let cpu = thread_cpu();
        let forms: Vec<Form> = (0..self.tables.len()).map(|i| self.form(i)).collect();
        let inputs = self.inputs(&rows, routing, &first)?;
        self.cpu.dedup.since(cpu);
        let aggregator = self.aggregator.clone();
        let cpu = self.cpu.query.clone();
        // The queries run on another task; results are folded in order.
        let queries = async move {
            let mut out = Vec::new();
            for (which, batch) in inputs {
                if batch.num_rows() == 0 {
                    continue;
                }
                let rows = batch.num_rows();
                for i in which {
                    let partial = aggregator.partial(i, forms[i], &batch).await?;
                    out.push((i, forms[i], rows, partial));
                }
            }
            Ok(out)
        };
        self.running
            .push_back(tokio::spawn(async move { cpu.time(queries).await }));
        while self.running.len() > RUNNING_CHUNKS {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Per row: whether it is the first sighting of its event id (within the dedup window)
    /// that some aggregate still needs; a row without an id always counts.
    fn first_sightings(
        &mut self,
        rows: &RecordBatch,
        routing: &RowRouting,
    ) -> Result<BooleanArray> {
        let n = rows.num_rows();
        let keys = rows
            .column_by_name(&self.columns.key)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| {
                Error::Config(format!(
                    "dedup_column {}: not a string column of the table",
                    self.columns.key
                ))
            })?;
        let times = rows
            .column_by_name(&self.columns.time)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| {
                Error::Config(format!(
                    "event-time column {} is not a timestamp column",
                    self.columns.time
                ))
            })?;
        let every_row = routing.aggs.iter().any(Option::is_none);
        let wanted = |i: usize| every_row || routing.aggs.iter().flatten().any(|m| m[i]);
        let mut first = arrow_array::builder::BooleanBufferBuilder::new(n);
        let mut i = 0;
        while i < n {
            // Rows come in runs of one partition: one state lookup per run.
            let (t, p) = routing.parts[i];
            let part: Part = (self.topics[t as usize].clone(), p);
            let state = self.dedup.part(&part);
            while i < n && routing.parts[i] == (t, p) {
                let keep = if !wanted(i) {
                    false
                } else if keys.is_null(i) {
                    // A NULL id cannot be deduplicated: it counts.
                    true
                } else {
                    let time = if times.is_null(i) { 0 } else { times.value(i) };
                    state.first(keys.value(i).as_bytes(), time)
                };
                first.append(keep);
                i += 1;
            }
        }
        Ok(BooleanArray::new(first.finish(), None))
    }

    /// The columns of `rows` the queries read (only those are copied by the filters); a new
    /// chunk schema also tells which aggregates have a rows form for it.
    async fn project(&mut self, rows: &RecordBatch) -> Result<RecordBatch> {
        let schema = rows.schema();
        let (read, known) = match &self.read {
            Some((s, read)) if *s == schema => (read.clone(), true),
            _ => (self.aggregator.columns_read(&schema).await?, false),
        };
        let rows = rows
            .project(&read)
            .map_err(|e| Error::Config(format!("projecting the aggregates' columns: {e}")))?;
        if !known {
            for i in 0..self.tables.len() {
                self.rows_form[i] = self.aggregator.has_rows_form(i, &rows.schema()).await?;
            }
            self.read = Some((schema, read));
        }
        Ok(rows)
    }

    /// The rows each aggregate takes (first sightings it still needs), as (aggregates, rows)
    /// pairs: one pair for all when every aggregate takes every first sighting.
    fn inputs(
        &self,
        rows: &RecordBatch,
        routing: &RowRouting,
        first: &BooleanArray,
    ) -> Result<Vec<(Vec<usize>, RecordBatch)>> {
        let n = rows.num_rows();
        let keep = |mask: &BooleanArray| -> Result<RecordBatch> {
            if mask.true_count() == n {
                return Ok(rows.clone());
            }
            arrow_select::filter::filter_record_batch(rows, mask)
                .map_err(|e| Error::Config(format!("filtering duplicates: {e}")))
        };
        if routing.aggs.iter().all(Option::is_none) {
            return Ok(vec![((0..self.tables.len()).collect(), keep(first)?)]);
        }
        (0..self.tables.len())
            .map(|i| {
                let mask: BooleanArray = match &routing.aggs[i] {
                    None => first.clone(),
                    Some(m) => (0..n).map(|r| Some(first.value(r) && m[r])).collect(),
                };
                Ok((vec![i], keep(&mask)?))
            })
            .collect()
    }

    /// Folds the oldest running chunk's partials in.
    async fn collect_one(&mut self) -> Result<()> {
        let Some(handle) = self.running.pop_front() else {
            return Ok(());
        };
        let partials = handle
            .await
            .map_err(|e| Error::Internal(format!("aggregate task: {e}")))??;
        for (i, form, rows, p) in partials {
            if form == Form::Grouped {
                self.chunk_ratio[i] = p.num_rows() as f64 / rows.max(1) as f64;
            }
            self.push(i, p).await?;
        }
        Ok(())
    }

    /// The form of aggregate `i`'s next partials: rows while its keys hardly repeat, grouped
    /// now and then to measure again.
    fn form(&mut self, i: usize) -> Form {
        if self.rows_form[i]
            && self.chunk_ratio[i] > self.rows_form_share
            && self.rows_run[i] < ROWS_PROBE_EVERY
        {
            self.rows_run[i] += 1;
            Form::Rows
        } else {
            if self.rows_run[i] > 0 {
                tracing::trace!(table = %self.tables[i].ident, "aggregating a chunk grouped to measure its keys");
            }
            self.rows_run[i] = 0;
            Form::Grouped
        }
    }

    async fn push(&mut self, i: usize, partial: RecordBatch) -> Result<()> {
        if partial.num_rows() == 0 {
            return Ok(());
        }
        if self.chunk_ratio[i] > MERGE_PAYS {
            // Merging would not pay: write the partials out now, on the stream's task.
            let stream = self.streams[i].get_or_insert_with(|| {
                tracing::debug!(table = %self.tables[i].ident, ratio = self.chunk_ratio[i], "partials do not fold; writing them as they come");
                PartialStream::open(
                    self.catalog.clone(),
                    self.tables[i].clone(),
                    self.cpu.write.clone(),
                )
            });
            for held in self.partials[i].drain(..) {
                stream.send(held).await;
            }
            self.partial_rows[i] = 0;
            self.merged_rows[i] = 0;
            stream.send(partial).await;
            return Ok(());
        }
        self.partial_rows[i] += partial.num_rows();
        self.partials[i].push(partial);
        if self.partial_rows[i] > MERGE_ROWS.max(2 * self.merged_rows[i])
            && self.partials[i].len() > 1
        {
            self.merge(i).await?;
        }
        Ok(())
    }

    async fn merge(&mut self, i: usize) -> Result<()> {
        let merged = self
            .cpu
            .query
            .time(self.aggregator.merge(i, &self.partials[i]))
            .await?;
        self.partial_rows[i] = merged.num_rows();
        self.merged_rows[i] = merged.num_rows();
        self.partials[i] = vec![merged];
        Ok(())
    }

    /// Ends the batch's partials: waits for its running queries, merges what is held and
    /// closes every aggregate's Parquet files. Returns the files of each aggregate table.
    pub async fn finish(&mut self) -> Result<Vec<Vec<iceberg::spec::DataFile>>> {
        while !self.running.is_empty() {
            self.collect_one().await?;
        }
        let mut streams = Vec::with_capacity(self.tables.len());
        for i in 0..self.tables.len() {
            // Held partials were all pushed while merging paid (else they would stream).
            if self.partials[i].len() > 1 {
                self.merge(i).await?;
            }
            // Held partials go the way streamed ones went (or open a stream of their own).
            let stream = self.streams[i].take().or_else(|| {
                (!self.partials[i].is_empty()).then(|| {
                    PartialStream::open(
                        self.catalog.clone(),
                        self.tables[i].clone(),
                        self.cpu.write.clone(),
                    )
                })
            });
            if let Some(stream) = &stream {
                for held in self.partials[i].drain(..) {
                    stream.send(held).await;
                }
            }
            streams.push(stream);
        }
        // Each stream encodes on a task of its own: they close side by side.
        futures::future::try_join_all(streams.into_iter().map(|s| async move {
            match s {
                Some(s) => s.finish().await,
                None => Ok(Vec::new()),
            }
        }))
        .await
    }

    /// Commits each aggregate's `files` (from [`Self::finish`]) with `ranges[i]` (the batch's
    /// offsets for that table), the tables side by side, then makes the batch's dedup
    /// decisions permanent. Returns rows committed per table.
    pub async fn commit(
        &mut self,
        committer: &Committer,
        group: &str,
        ranges: &[Vec<OffsetRange>],
        files: Vec<Vec<iceberg::spec::DataFile>>,
    ) -> floe_lake::Result<Vec<u64>> {
        let write = &self.cpu.write;
        let commits =
            self.tables
                .iter()
                .zip(ranges)
                .zip(files)
                .map(|((table, range), files)| async move {
                    if range.is_empty() && files.is_empty() {
                        return Ok(0);
                    }
                    let rows = files.iter().map(|f| f.record_count()).sum();
                    let mut req = CommitRequest::append(files);
                    req.offsets = Some(OffsetsUpdate {
                        group: group.to_string(),
                        ranges: range.clone(),
                    });
                    req.properties
                        .insert("floe.operation".into(), "aggregate".into());
                    req.properties
                        .insert("floe.aggregate".into(), table.def.name.clone());
                    let done = write.time(committer.commit(&table.ident, req)).await?;
                    floe_lake::metrics::record_commit(&table.ident.to_string(), &done);
                    floe_lake::fail::point("after-aggregate-commit");
                    Ok::<_, floe_lake::Error>(rows)
                });
        let rows = futures::future::try_join_all(commits).await?;
        self.clear();
        self.dedup.commit();
        Ok(rows)
    }

    /// Drops the batch's partials and dedup decisions (failed or discarded flush).
    pub fn discard(&mut self) {
        self.clear();
        self.dedup.discard();
    }

    fn clear(&mut self) {
        for h in self.running.drain(..) {
            h.abort();
        }
        for s in &mut self.streams {
            if let Some(s) = s.take() {
                s.abort();
            }
        }
        for p in &mut self.partials {
            p.clear();
        }
        self.partial_rows.iter_mut().for_each(|r| *r = 0);
        self.merged_rows.iter_mut().for_each(|r| *r = 0);
    }

    /// Replaces the dedup state of `parts` with the ids the raw table holds below each one's
    /// offset (`None`: nothing is aggregated yet), and forgets `revoked`.
    pub async fn rebuild(
        &mut self,
        committer: &Committer,
        raw: &TableIdent,
        parts: &[(Part, Option<i64>)],
    ) -> floe_lake::Result<()> {
        floe_lake::fail::check("dedup-rebuild")?;
        let mut loaded = load_recent_keys(
            committer,
            raw,
            &self.columns,
            &self.topics,
            self.dedup.window_us(),
            parts,
        )
        .await?;
        let n: usize = loaded.values().map(Vec::len).sum();
        for (part, _) in parts {
            let keys = loaded.remove(part).unwrap_or_default();
            self.dedup.load(part.clone(), keys);
        }
        tracing::info!(table = %raw, partitions = parts.len(), ids = n, kept = self.dedup.len(), "dedup state rebuilt from the raw table");
        self.dedup_meters.capped(&mut self.dedup);
        Ok(())
    }

    /// Drops the dedup state of partitions no longer owned.
    pub fn forget(&mut self, parts: &[Part]) {
        self.dedup.forget(parts);
    }
}

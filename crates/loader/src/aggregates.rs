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

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use floe_aggregate::dedup::{Deduper, Part, key_hash};
use floe_aggregate::engine::conform;
use floe_aggregate::{AggregateDef, Aggregator, Form};
use floe_lake::commit::{CommitRequest, OffsetsUpdate};
use floe_lake::{Committer, DataWriter, OffsetRange, parse_table_ident};
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::expr::Reference;
use iceberg::spec::{Datum, TableMetadata};

use crate::metrics::{AggregateStage, CpuMeter, thread_cpu};
use crate::{Error, Result};

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
/// repeat costs a hash aggregation for a few percent fewer rows.
const ROWS_PAY: f64 = 0.9;

/// [`ROWS_PAY`], or the environment variable `FLOE_AGGREGATE_ROWS_PAY` (a tuning knob: above
/// 1, partials are always grouped).
fn rows_pay() -> f64 {
    static PAY: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *PAY.get_or_init(|| {
        std::env::var("FLOE_AGGREGATE_ROWS_PAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ROWS_PAY)
    })
}

/// In [`Form::Rows`], every this many chunks run grouped, to see whether keys repeat now.
const ROWS_PROBE_EVERY: u32 = 16;

/// Partials queued per streaming writer (backpressure on the writer task beyond it).
const STREAM_QUEUE: usize = 4;

/// What a streaming partial writer receives.
enum ToStream {
    Rows(RecordBatch),
    /// The flush failed or was discarded: delete what was written.
    Abort,
}

/// An aggregate's partials written to Parquet on a task of their own: as they come, while
/// the batch is still being consumed, for aggregates whose partials do not fold (merging them
/// would not pay, and writing them all at flush would put their encoding on the commit's
/// critical path); at flush for the ones held and merged.
struct PartialStream {
    tx: tokio::sync::mpsc::Sender<ToStream>,
    done: tokio::task::JoinHandle<Result<Vec<iceberg::spec::DataFile>>>,
}

impl PartialStream {
    fn open(catalog: floe_lake::Catalog, table: AggTable, cpu: CpuMeter) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ToStream>(STREAM_QUEUE);
        let work = async move {
            let (_, meta) = catalog.load_metadata(&table.ident).await?;
            let target = Arc::new(
                iceberg::arrow::schema_to_arrow_schema(meta.current_schema())
                    .map_err(floe_lake::Error::from)?,
            );
            let mut w = DataWriter::for_partials(catalog.file_io(), &meta)?;
            while let Some(msg) = rx.recv().await {
                let rows = match msg {
                    ToStream::Rows(rows) => rows,
                    ToStream::Abort => {
                        w.abort().await;
                        return Ok(Vec::new());
                    }
                };
                let written = match conform(&table.def, &rows, &target) {
                    Ok(shaped) => w.write(&shaped).await.map_err(Error::from),
                    Err(e) => Err(Error::from(e)),
                };
                if let Err(e) = written {
                    w.abort().await;
                    return Err(e);
                }
            }
            Ok(w.close().await?)
        };
        let done = tokio::spawn(async move { cpu.time(work).await });
        Self { tx, done }
    }

    /// Sends rows; a writer that stopped (an error) is reported at [`Self::finish`].
    async fn send(&self, rows: RecordBatch) {
        let _ = self.tx.send(ToStream::Rows(rows)).await;
    }

    /// Closes the stream and returns its files.
    async fn finish(self) -> Result<Vec<iceberg::spec::DataFile>> {
        drop(self.tx);
        self.done
            .await
            .map_err(|e| Error::Internal(format!("aggregate writer task: {e}")))?
    }

    /// Drops what was written (without waiting).
    fn abort(self) {
        let tx = self.tx;
        if tx.try_send(ToStream::Abort).is_err()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = tx.send(ToStream::Abort).await;
            });
        }
    }
}

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
            keys: metrics::gauge!(crate::metrics::DEDUP_KEYS, "table" => table.to_string()),
            evictions: metrics::counter!(crate::metrics::DEDUP_EVICTIONS, "table" => table.to_string()),
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
        window: std::time::Duration,
        max_keys: usize,
        topics: Vec<String>,
        catalog: floe_lake::Catalog,
    ) -> Self {
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
        let first = BooleanArray::new(first.finish(), None);
        self.dedup_meters.capped(&mut self.dedup);
        // Timed in two parts, around the awaits below: a task may resume on another thread,
        // whose CPU clock is another one.
        self.cpu.dedup.since(cpu);
        // Only the columns the queries read are copied by the filter.
        let schema = rows.schema();
        let (read, known) = match &self.read {
            Some((s, read)) if *s == schema => (read.clone(), true),
            _ => (self.aggregator.columns_read(&schema).await?, false),
        };
        let rows = rows
            .project(&read)
            .map_err(|e| Error::Config(format!("projecting the aggregates' columns: {e}")))?;
        if !known {
            // A new chunk schema: which aggregates have a rows form for it (then it is known).
            for i in 0..self.tables.len() {
                self.rows_form[i] = self.aggregator.has_rows_form(i, &rows.schema()).await?;
            }
            self.read = Some((schema, read));
        }
        let cpu = thread_cpu();
        let forms: Vec<Form> = (0..self.tables.len()).map(|i| self.form(i)).collect();
        let keep = |mask: &BooleanArray| -> Result<RecordBatch> {
            if mask.true_count() == n {
                return Ok(rows.clone());
            }
            arrow_select::filter::filter_record_batch(&rows, mask)
                .map_err(|e| Error::Config(format!("filtering duplicates: {e}")))
        };
        // The queries run on another task; results are folded in order.
        let mut inputs: Vec<(Vec<usize>, RecordBatch)> = Vec::new();
        if routing.aggs.iter().all(Option::is_none) {
            inputs.push(((0..self.tables.len()).collect(), keep(&first)?));
        } else {
            for i in 0..self.tables.len() {
                let mask: BooleanArray = match &routing.aggs[i] {
                    None => first.clone(),
                    Some(m) => (0..n).map(|r| Some(first.value(r) && m[r])).collect(),
                };
                inputs.push((vec![i], keep(&mask)?));
            }
        }
        self.cpu.dedup.since(cpu);
        let aggregator = self.aggregator.clone();
        let cpu = self.cpu.query.clone();
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
            && self.chunk_ratio[i] > rows_pay()
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

/// The aggregate tables a pipeline feeds: the named definitions, or every definition whose
/// source is the pipeline's table.
pub fn select<'a>(
    defs: &'a [AggregateDef],
    table: &str,
    names: Option<&[String]>,
) -> Result<Vec<&'a AggregateDef>> {
    match names {
        None => Ok(defs
            .iter()
            .filter(|d| d.source.as_deref() == Some(table))
            .collect()),
        Some(names) => names
            .iter()
            .map(|n| {
                defs.iter().find(|d| d.name == *n).ok_or_else(|| {
                    Error::Config(format!(
                        "aggregates: no definition named {n} (known: {})",
                        defs.iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect(),
    }
}

/// The dedup columns of a raw table, checked: the id column, the event time (source of the
/// time partition), and the Kafka metadata columns the state is rebuilt from.
pub fn dedup_columns(
    table: &str,
    metadata: &TableMetadata,
    key: &str,
    topics: usize,
) -> Result<DedupColumns> {
    let schema = metadata.current_schema();
    if schema.field_by_name(key).is_none() {
        return Err(Error::Config(format!(
            "dedup_column {key}: {table} has no such column"
        )));
    }
    let mut needed = vec!["_kafka_partition", "_kafka_offset"];
    if topics > 1 {
        needed.push("_kafka_topic");
    }
    for c in needed {
        if schema.field_by_name(c).is_none() {
            return Err(Error::Config(format!(
                "aggregates need column {c} in {table} to rebuild their dedup state after a restart; add it (floe fills it)"
            )));
        }
    }
    let time = floe_lake::partition::event_time_column(metadata)
        .map(|(_, name)| name)
        .ok_or_else(|| {
            Error::Config(format!(
                "aggregates need {table} partitioned by the event time (hour/day/month/year of a timestamp)"
            ))
        })?;
    Ok(DedupColumns {
        key: key.to_string(),
        time,
    })
}

/// Ids (with event time) of the raw table's recent rows, per partition, below each partition's
/// offset.
async fn load_recent_keys(
    committer: &Committer,
    raw: &TableIdent,
    columns: &DedupColumns,
    topics: &[String],
    window_us: i64,
    parts: &[(Part, Option<i64>)],
) -> floe_lake::Result<HashMap<Part, Vec<(u128, i64)>>> {
    let mut out: HashMap<Part, Vec<(u128, i64)>> = HashMap::new();
    let below: HashMap<&Part, i64> = parts
        .iter()
        .filter_map(|(p, o)| o.map(|o| (p, o)))
        .collect();
    if below.is_empty() {
        return Ok(out);
    }
    let catalog = committer.catalog();
    let table = catalog.load_table(raw).await?;
    let metadata = table.metadata();
    if metadata.current_snapshot().is_none() {
        return Ok(out);
    }
    let time_id = metadata
        .current_schema()
        .field_by_name(&columns.time)
        .map(|f| f.id)
        .unwrap_or(-1);
    let watermark = floe_lake::scan::live_data_files(catalog.file_io(), metadata)
        .await?
        .iter()
        .filter_map(|f| f.data_file.upper_bounds().get(&time_id))
        .filter_map(|d| match d.literal() {
            iceberg::spec::PrimitiveLiteral::Long(v) => Some(*v),
            _ => None,
        })
        .max();
    let Some(watermark) = watermark else {
        return Ok(out);
    };
    // Twice the window: partitions lag the newest one; each partition trims to its own.
    let horizon = watermark.saturating_sub(window_us.saturating_mul(2));
    let mut select = vec![
        columns.key.as_str(),
        columns.time.as_str(),
        "_kafka_partition",
        "_kafka_offset",
    ];
    let multi = topics.len() > 1;
    if multi {
        select.push("_kafka_topic");
    }
    let scan = table
        .scan()
        .select(select)
        .with_filter(
            Reference::new(columns.time.clone())
                .greater_than_or_equal_to(Datum::timestamptz_micros(horizon)),
        )
        .build()?;
    let mut stream = scan.to_arrow().await?;
    while let Some(b) = stream.try_next().await? {
        let keys = b.column(0).as_string::<i32>();
        let times = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let partitions = b.column(2).as_primitive::<Int32Type>();
        let offsets = b.column(3).as_primitive::<Int64Type>();
        let topic_col = multi.then(|| b.column(4).as_string::<i32>());
        for i in 0..b.num_rows() {
            if keys.is_null(i) || partitions.is_null(i) || offsets.is_null(i) {
                continue;
            }
            let topic = match &topic_col {
                Some(t) if t.is_valid(i) => t.value(i).to_string(),
                Some(_) => continue,
                None => topics[0].clone(),
            };
            let part: Part = (topic, partitions.value(i));
            if below.get(&part).is_some_and(|b| offsets.value(i) < *b) {
                let t = if times.is_null(i) { 0 } else { times.value(i) };
                out.entry(part)
                    .or_default()
                    .push((key_hash(keys.value(i).as_bytes()), t));
            }
        }
    }
    Ok(out)
}

/// Creates the aggregate tables from their definitions in `schemas` if missing; returns their
/// identifiers.
pub async fn ensure_tables(
    committer: &Committer,
    defs: &[&AggregateDef],
    definitions: &[floe_schema::TableDefinition],
) -> Result<Vec<AggTable>> {
    let mut out = Vec::new();
    for def in defs {
        let ident = parse_table_ident(&def.target)?;
        if committer
            .catalog()
            .find_metadata_location(&ident)
            .await?
            .is_none()
        {
            let table_def = definitions
                .iter()
                .find(|d| d.full_name() == def.target)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "aggregate {}: table {} does not exist and schemas/ has no definition of it",
                        def.name, def.target
                    ))
                })?;
            committer
                .catalog()
                .create_table_if_missing(table_def)
                .await?;
        }
        out.push(AggTable {
            def: (*def).clone(),
            ident,
        });
    }
    Ok(out)
}

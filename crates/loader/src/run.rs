//! `floe run`: Kafka → Iceberg, exactly once.
//!
//! Threads: one consumer thread polls librdkafka and decodes each message straight from the
//! fetched buffer into the pipeline's Arrow builders; every `CHUNK_ROWS` rows the decoded
//! chunk goes over a bounded channel to the pipeline's writer task (on the tokio runtime),
//! which encodes Parquet as chunks arrive and commits on flush. The bounded channel gives
//! back-pressure: memory holds at most a few chunks per pipeline whatever the backlog.
//!
//! Exactly once, per table (raw and dead-letter table each):
//! - On assignment, each table's committed offsets are read from its snapshots; consumption
//!   starts at the smallest and a message already committed to a table is skipped for it.
//! - A flush commits rows with the offset ranges they came from; the commit refuses ranges
//!   that overlap what the table holds (another writer got there first). Any failed flush
//!   rewinds the pipeline to the tables' committed offsets; by the class of its failure
//!   ([`Retry`]) it is then retried after a pause for as long as the failure lasts
//!   (transient), a few times (unknown), or not at all: a permanent failure stops the loader
//!   with the table and the reason.
//! - At most one flush per pipeline is in flight, so a later batch can never commit over a
//!   gap left by a failed one.
//! - Kafka group offsets are committed after the Iceberg commit, for lag monitoring only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use floe_lake::commit::{CommitRequest, OffsetsUpdate};
use floe_lake::{Committer, DataWriter, OffsetRange, committed_offsets, parse_table_ident};
use floe_schema::dead_letter::DeadLetter;
use floe_schema::{DecodeError, Decoder, DecoderOptions, RecordMeta, TableDefinition};
use iceberg::TableIdent;
use iceberg::spec::TableMetadata;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::runtime::Handle;

use crate::aggregates::{AggTable, Aggregation, RowRouting};
use crate::config::{KafkaConfig, LimitsConfig, PipelineConfig};
use crate::metrics as m;
use crate::transform::Stage;
use crate::{Error, Result, Retry};

/// Decoded rows handed to the Parquet encoder at a time.
const CHUNK_ROWS: usize = 65_536;

/// `CHUNK_ROWS`, or the environment variable `FLOE_CHUNK_ROWS` (a tuning and testing knob:
/// small chunks exercise the chunk-by-chunk paths with few messages).
fn chunk_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("FLOE_CHUNK_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(CHUNK_ROWS)
    })
}
/// Chunks queued per pipeline before the consumer waits (back-pressure).
const CHANNEL_CHUNKS: usize = 8;

/// What `floe run` does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Kafka connection and group.
    pub kafka: KafkaConfig,
    /// Topic → table pipelines.
    pub pipelines: Vec<PipelineConfig>,
    /// Stop (after a final commit) once every assigned partition is read to its end.
    pub until_drained: bool,
    /// Read every partition of the topics without joining the consumer group (a single
    /// loader, e.g. quickstart and benchmarks; no group-join delay).
    pub static_assignment: bool,
    /// Aggregate definitions pipelines may run (`sql/aggregates`).
    pub aggregates: Vec<floe_aggregate::AggregateDef>,
    /// Table definitions (`schemas/`), to create missing aggregate tables.
    pub table_definitions: Vec<TableDefinition>,
    /// What one message may cost: a larger one is a dead letter `too_large`.
    pub limits: LimitsConfig,
}

/// Totals of a run, per pipeline (table).
#[derive(Debug, Clone, Default)]
pub struct PipelineTotals {
    /// Messages received from Kafka for this pipeline.
    pub received: u64,
    /// Rows committed to the table.
    pub accepted: u64,
    /// Dead letters committed.
    pub dead_lettered: u64,
    /// Tombstones (null values) skipped.
    pub tombstones: u64,
    /// Messages skipped because the tables already held them.
    pub already_committed: u64,
    /// Commits of the target table.
    pub commits: u64,
    /// Flushes that failed and were rewound.
    pub rewinds: u64,
}

enum ToWriter {
    Chunk {
        batch: u64,
        rows: RecordBatch,
        metadata: Arc<TableMetadata>,
        routing: Option<Box<RowRouting>>,
    },
    Flush(Box<FlushJob>),
    Discard {
        batch: u64,
    },
    /// Partitions assigned: rebuild their dedup state below these offsets.
    Assigned(Vec<((String, i32), Option<i64>)>),
    /// Partitions revoked: forget their dedup state.
    Revoked(Vec<(String, i32)>),
}

struct FlushJob {
    batch: u64,
    metadata: Arc<TableMetadata>,
    last: Option<RecordBatch>,
    last_routing: Option<Box<RowRouting>>,
    dead: Vec<DeadLetter>,
    raw_ranges: Vec<OffsetRange>,
    dlq_ranges: Vec<OffsetRange>,
    agg_ranges: Vec<Vec<OffsetRange>>,
    /// Revocation, shutdown or drained: every table's offsets are recorded, including those
    /// a table with nothing new would otherwise record later (`flush.idle_offsets_interval`).
    last_before_stop: bool,
}

struct Flushed {
    metadata: TableMetadata,
    /// The newest event time among the committed rows (epoch micros), when the table is
    /// partitioned by time.
    newest_event_us: Option<i64>,
    rows: u64,
    dead_letters: u64,
    files: usize,
    bytes: u64,
}

enum FlushFailure {
    /// Another writer committed these offsets: rewind now.
    Fenced(String),
    /// Anything else: rewind after a pause, or stop, as its class says.
    Failed(Failure),
}

/// Why a flush failed, and what retrying can do about it.
#[derive(Debug)]
struct Failure {
    retry: Retry,
    reason: String,
}

impl Failure {
    /// `e`, with what floe was doing.
    fn context(e: impl Into<Error>, doing: &str) -> Self {
        let f = Self::from(e.into());
        Self {
            reason: format!("{doing}: {}", f.reason),
            ..f
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self {
            retry: e.retry(),
            reason: e.to_string(),
        }
    }
}

impl From<floe_lake::Error> for Failure {
    fn from(e: floe_lake::Error) -> Self {
        Self::from(Error::Lake(e))
    }
}

impl From<Failure> for FlushFailure {
    fn from(f: Failure) -> Self {
        FlushFailure::Failed(f)
    }
}

/// A failed step of a flush: fenced when the table already holds the batch's offsets.
fn flush_failure<E: Into<Error>>(e: E) -> FlushFailure {
    match e.into() {
        Error::Lake(e @ floe_lake::Error::OffsetsAlreadyCommitted { .. }) => {
            FlushFailure::Fenced(e.to_string())
        }
        e => FlushFailure::Failed(e.into()),
    }
}

/// Failed flushes in a row, of a failure whose class is unknown, before the loader stops.
const UNKNOWN_ATTEMPTS: u32 = 5;

/// After `failures` failed flushes in a row, the last of class `retry`: the pause before the
/// next attempt, or `None` to stop. Transient failures are retried for as long as they last,
/// unknown ones [`UNKNOWN_ATTEMPTS`] times, permanent ones never.
fn retry_after(retry: Retry, failures: u32) -> Option<Duration> {
    match retry {
        Retry::Transient => Some(backoff(failures)),
        Retry::Unknown if failures < UNKNOWN_ATTEMPTS => Some(backoff(failures)),
        Retry::Unknown | Retry::Permanent => None,
    }
}

struct Outcome {
    batch: u64,
    result: std::result::Result<Flushed, FlushFailure>,
}

type Tp = (String, i32);

/// Maps keyed by topic-partition, touched for every message: a fast non-cryptographic hash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Batch {
    id: u64,
    messages: u64,
    bytes: u64,
    started: Option<Instant>,
    raw_ranges: FastMap<Tp, (i64, i64)>,
    dlq_ranges: FastMap<Tp, (i64, i64)>,
    agg_ranges: Vec<FastMap<Tp, (i64, i64)>>,
    /// Per decoded row of the current chunk, when the pipeline has aggregates.
    routing: Option<RowRouting>,
    dead: Vec<DeadLetter>,
    chunks_sent: bool,
}

impl Batch {
    fn new(id: u64, aggregates: usize) -> Self {
        Self {
            id,
            agg_ranges: vec![FastMap::default(); aggregates],
            routing: (aggregates > 0).then(|| RowRouting {
                aggs: vec![Some(Vec::new()); aggregates],
                raw: Some(Vec::new()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Keeps the entries of `v` (one per row) whose row is kept.
fn retain_rows<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut row = keep.iter();
    v.retain(|_| *row.next().expect("one entry per row"));
}

/// Takes the routing collected for a chunk as it is (to be filtered before it is sent).
fn take_raw_routing(routing: &mut Option<RowRouting>) -> Option<RowRouting> {
    let r = routing.as_mut()?;
    Some(RowRouting {
        parts: std::mem::take(&mut r.parts),
        raw: r.raw.as_mut().map(std::mem::take),
        aggs: r
            .aggs
            .iter_mut()
            .map(|m| m.as_mut().map(std::mem::take))
            .collect(),
    })
}

/// Turns the routing collected for a chunk into the form sent: all-true masks become `None`.
fn take_routing(routing: &mut Option<RowRouting>) -> Option<Box<RowRouting>> {
    let mut out = take_raw_routing(routing)?;
    let n = out.aggs.len();
    let all = |m: &Option<Vec<bool>>| m.as_ref().is_none_or(|m| m.iter().all(|b| *b));
    if all(&out.raw) {
        out.raw = None;
    }
    for m in &mut out.aggs {
        if all(m) {
            *m = None;
        }
    }
    debug_assert_eq!(out.aggs.len(), n);
    Some(Box::new(out))
}

struct Pipe {
    cfg: PipelineConfig,
    name: String,
    raw: TableIdent,
    dlq: Option<TableIdent>,
    metadata: Arc<TableMetadata>,
    newer_metadata: Option<TableMetadata>,
    /// `newer_metadata` decodes differently (schema, aliases): cut the batch to adopt it.
    schema_change_pending: bool,
    /// A metadata reload in progress (the table may be changed by other tools at any time).
    refreshing: Option<tokio::task::JoinHandle<floe_lake::Result<TableMetadata>>>,
    last_refresh: Instant,
    /// A schema and mapping the decoder cannot be built for (logged once; not retried every
    /// batch, but a fixed mapping on the same schema is tried).
    unusable_schema: Option<(i32, DecoderOptions)>,
    decoder: Decoder,
    /// Computed columns and rules, when the mapping has any.
    stage: Option<Stage>,
    /// Where the pipeline's mapping is configured, for error messages (`pipelines[0]`).
    section: String,
    /// Why this pipeline must stop (a row rejected with no dead-letter table); its batch is
    /// already discarded.
    stop: Option<Error>,
    batch: Batch,
    in_flight: Option<(u64, BTreeMap<Tp, i64>)>,
    to_writer: tokio::sync::mpsc::Sender<ToWriter>,
    outcomes: mpsc::Receiver<Outcome>,
    /// Per table, the offset from which messages are still to be committed.
    raw_from: FastMap<Tp, i64>,
    dlq_from: FastMap<Tp, i64>,
    /// Per aggregate table, the offset from which messages are still to be aggregated.
    agg_from: Vec<FastMap<Tp, i64>>,
    aggs: Vec<TableIdent>,
    /// Failed flushes (and failed attempts to rewind after them) in a row: the backoff.
    failures: u32,
    /// Failed flushes in a row whose failure's class is unknown (bounded).
    unknown_failures: u32,
    /// A failed flush was discarded: the pipeline's partitions are paused and its messages
    /// ignored until, at this instant, they are sought back to the tables' committed offsets.
    /// Retried (later each time) while the tables cannot be read.
    rewind_at: Option<Instant>,
    totals: PipelineTotals,
    meters: Meters,
}

/// Metric handles registered once per pipeline. The hot path counts in plain integers;
/// [`Meters::publish`] adds them to the shared counters every few dozen messages.
struct Meters {
    pending: Pending,
    received: metrics::Counter,
    accepted: metrics::Counter,
    skipped: metrics::Counter,
    tombstones: metrics::Counter,
    bytes: metrics::Counter,
    dead: HashMap<&'static str, metrics::Counter>,
    table: String,
}

impl Meters {
    fn new(table: &str) -> Self {
        let t = table.to_string();
        Self {
            received: metrics::counter!(m::MESSAGES_RECEIVED, "table" => t.clone()),
            accepted: metrics::counter!(m::MESSAGES_ACCEPTED, "table" => t.clone()),
            skipped: metrics::counter!(m::MESSAGES_SKIPPED, "table" => t.clone()),
            tombstones: metrics::counter!(m::TOMBSTONES, "table" => t.clone()),
            bytes: metrics::counter!(m::MESSAGE_BYTES, "table" => t.clone()),
            dead: HashMap::new(),
            table: t,
            pending: Pending::default(),
        }
    }

    fn publish(&mut self) {
        let p = std::mem::take(&mut self.pending);
        for (counter, n) in [
            (&self.received, p.received),
            (&self.accepted, p.accepted),
            (&self.skipped, p.skipped),
            (&self.tombstones, p.tombstones),
            (&self.bytes, p.bytes),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    fn dead_lettered(&mut self, kind: &'static str) {
        let table = &self.table;
        self.dead
            .entry(kind)
            .or_insert_with(|| metrics::counter!(m::MESSAGES_DEAD_LETTERED, "table" => table.clone(), "kind" => kind))
            .increment(1);
    }
}

#[derive(Default)]
struct Pending {
    received: u64,
    accepted: u64,
    skipped: u64,
    tombstones: u64,
    bytes: u64,
}

struct State {
    pipes: Vec<Pipe>,
    by_topic: FastMap<String, usize>,
    assigned: Vec<Tp>,
    next_offset: FastMap<Tp, i64>,
    fatal: Option<Error>,
    ingested_at_us: i64,
    last_commit: Instant,
    max_message_bytes: usize,
}

struct Env {
    rt: Handle,
    committer: Committer,
    group: String,
    health: Arc<m::Health>,
}

/// The consumer context: rebalances start partitions at the offsets committed in Iceberg.
struct Ctx {
    state: Arc<Mutex<State>>,
    env: Arc<Env>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            // Wrong credentials do not heal by retrying: stop with the broker's reason
            // instead of a loader that waits forever for its first message.
            KafkaError::Global(
                RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed,
            ) => {
                tracing::error!(error = %error, reason, "kafka authentication failed");
                let mut st = self.state.lock().expect("state lock");
                st.fatal.get_or_insert(Error::Kafka(format!(
                    "authentication failed: {reason} (check kafka.properties \
                     security.protocol / sasl.* and kafka.property_files)"
                )));
            }
            e => tracing::warn!(error = %e, reason, "kafka client error"),
        }
    }

    fn stats(&self, stats: Statistics) {
        let mut total = 0i64;
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    total += part.consumer_lag;
                    metrics::gauge!(m::CONSUMER_LAG, "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
        self.env.health.set_lag(total);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut st = self.state.lock().expect("state lock");
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let tps: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                match st.start_offsets_retrying(&self.env, &tps) {
                    Ok(starts) => {
                        for (tp, start) in &starts {
                            let offset = match start {
                                Some(o) => Offset::Offset(*o),
                                None => Offset::Beginning,
                            };
                            let _ = tpl.set_partition_offset(&tp.0, tp.1, offset);
                        }
                        tracing::info!(
                            partitions = tps.len(),
                            "partitions assigned; starting at the offsets committed in Iceberg"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading committed offsets failed");
                        st.fatal.get_or_insert(e);
                    }
                }
                st.assigned.extend(tps);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match r {
                    // A partition held for a rewind when it was revoked is not held now.
                    Ok(()) => {
                        let _ = consumer.resume(tpl);
                    }
                    Err(e) => {
                        st.fatal
                            .get_or_insert(Error::Kafka(format!("assigning partitions: {e}")));
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked; committing what was consumed"
                );
                st.flush_all_and_wait(consumer, &self.env);
                let revoked: HashSet<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                st.forget(&revoked);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    st.fatal
                        .get_or_insert(Error::Kafka(format!("unassigning partitions: {e}")));
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

impl State {
    /// Reads each table's committed offsets for `tps`, records where each table resumes and
    /// returns where consumption starts (the smallest; `None` = from the beginning).
    /// With `assigned`, pipelines with aggregates rebuild the dedup state of the partitions.
    fn start_offsets(
        &mut self,
        env: &Env,
        tps: &[Tp],
        assigned: bool,
    ) -> Result<Vec<(Tp, Option<i64>)>> {
        let mut starts: HashMap<Tp, Option<i64>> = HashMap::new();
        for pipe in &mut self.pipes {
            let mine: Vec<&Tp> = tps
                .iter()
                .filter(|tp| pipe.cfg.topics.contains(&tp.0))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (raw, dlq, aggs) = env.rt.block_on(pipe.read_committed(env))?;
            let mut rebuild = Vec::new();
            for tp in mine {
                let r = raw.get(&tp.0).and_then(|m| m.get(&tp.1)).copied();
                let d = dlq
                    .as_ref()
                    .map(|o| o.get(&tp.0).and_then(|m| m.get(&tp.1)).copied());
                pipe.raw_from.insert(tp.clone(), r.unwrap_or(i64::MIN));
                match d {
                    Some(d) => {
                        pipe.dlq_from.insert(tp.clone(), d.unwrap_or(i64::MIN));
                    }
                    None => {
                        pipe.dlq_from.insert(tp.clone(), i64::MAX);
                    }
                }
                let mut start = match d {
                    Some(d) => r.zip(d).map(|(r, d)| r.min(d)),
                    None => r,
                };
                // Aggregates: the smallest committed offset; `None` (not yet aggregated) wins.
                let mut agg_min: Option<Option<i64>> = None;
                for (k, offsets) in aggs.iter().enumerate() {
                    let a = offsets.get(&tp.0).and_then(|m| m.get(&tp.1)).copied();
                    pipe.agg_from[k].insert(tp.clone(), a.unwrap_or(i64::MIN));
                    start = start.zip(a).map(|(s, a)| s.min(a));
                    agg_min = Some(match agg_min {
                        None => a,
                        Some(m) => m.zip(a).map(|(m, a)| m.min(a)),
                    });
                }
                if let Some(below) = agg_min {
                    rebuild.push((tp.clone(), below));
                }
                starts.insert(tp.clone(), start);
                // Where reading resumes: from the beginning, nothing is read yet (a rewind
                // must not leave the position it came from, which `drained` would trust).
                match start {
                    Some(s) => self.next_offset.insert(tp.clone(), s),
                    None => self.next_offset.remove(tp),
                };
            }
            if assigned && !rebuild.is_empty() {
                let _ = pipe.to_writer.blocking_send(ToWriter::Assigned(rebuild));
            }
        }
        Ok(starts.into_iter().collect())
    }

    fn forget(&mut self, tps: &HashSet<Tp>) {
        self.assigned.retain(|tp| !tps.contains(tp));
        for tp in tps {
            self.next_offset.remove(tp);
            for p in &mut self.pipes {
                p.raw_from.remove(tp);
                p.dlq_from.remove(tp);
                for a in &mut p.agg_from {
                    a.remove(tp);
                }
            }
        }
        for p in &self.pipes {
            let mine: Vec<Tp> = tps
                .iter()
                .filter(|tp| p.cfg.topics.contains(&tp.0))
                .cloned()
                .collect();
            if !mine.is_empty() {
                let _ = p.to_writer.blocking_send(ToWriter::Revoked(mine));
            }
        }
    }

    /// [`State::start_offsets`] for newly assigned partitions, tried again while the tables
    /// cannot be read for a reason that may heal (storage or catalog unreachable), for up to
    /// [`ASSIGN_RETRY`]: the consumer cannot poll meanwhile, and past Kafka's
    /// `max.poll.interval.ms` the group would drop this member.
    fn start_offsets_retrying(&mut self, env: &Env, tps: &[Tp]) -> Result<Vec<(Tp, Option<i64>)>> {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            match self.start_offsets(env, tps, true) {
                Err(e) if e.is_retryable() && started.elapsed() < ASSIGN_RETRY => {
                    failures += 1;
                    let pause = backoff(failures);
                    tracing::error!(error = %e, retry_in = ?pause, "reading the committed offsets of assigned partitions failed; retrying");
                    std::thread::sleep(pause);
                }
                r => return r,
            }
        }
    }

    /// Flushes every pipeline and waits for the commits (revocation, shutdown, drained).
    fn flush_all_and_wait<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, env: &Env) {
        for p in &mut self.pipes {
            p.meters.publish();
        }
        for i in 0..self.pipes.len() {
            self.wait_in_flight(i, consumer, env);
            if self.pipes[i].start_flush(true) {
                self.wait_in_flight(i, consumer, env);
            }
        }
    }

    fn wait_in_flight<C: ConsumerContext>(
        &mut self,
        i: usize,
        consumer: &BaseConsumer<C>,
        env: &Env,
    ) {
        if self.pipes[i].in_flight.is_none() {
            return;
        }
        match self.pipes[i].outcomes.recv() {
            Ok(o) => self.on_outcome(i, o, consumer, env),
            Err(_) => {
                self.fatal
                    .get_or_insert(Error::Kafka("writer task stopped".into()));
            }
        }
    }

    fn drain_outcomes<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, env: &Env) {
        for i in 0..self.pipes.len() {
            while let Ok(o) = self.pipes[i].outcomes.try_recv() {
                self.on_outcome(i, o, consumer, env);
            }
        }
    }

    fn on_outcome<C: ConsumerContext>(
        &mut self,
        i: usize,
        o: Outcome,
        consumer: &BaseConsumer<C>,
        env: &Env,
    ) {
        let pipe = &mut self.pipes[i];
        let Some((batch, positions)) = pipe.in_flight.take() else {
            return;
        };
        debug_assert_eq!(batch, o.batch);
        match o.result {
            Ok(f) => {
                pipe.failures = 0;
                pipe.unknown_failures = 0;
                pipe.totals.accepted += f.rows;
                pipe.totals.dead_lettered += f.dead_letters;
                pipe.totals.commits += 1;
                let labels = [("table", pipe.name.clone())];
                metrics::counter!(m::ROWS_COMMITTED, &labels).increment(f.rows);
                metrics::counter!(m::DEAD_LETTERS_COMMITTED, &labels).increment(f.dead_letters);
                metrics::counter!(m::FILES_WRITTEN, &labels).increment(f.files as u64);
                metrics::counter!(m::BYTES_WRITTEN, &labels).increment(f.bytes);
                metrics::counter!(m::BATCHES, &labels).increment(1);
                metrics::gauge!(m::LAST_COMMIT, &labels).set(chrono::Utc::now().timestamp() as f64);
                if let Some(newest) = f.newest_event_us {
                    let lag = chrono::Utc::now().timestamp_micros() - newest;
                    metrics::gauge!(m::FRESHNESS, &labels).set(lag as f64 / 1e6);
                }
                self.last_commit = Instant::now();
                env.health.committed();
                pipe.last_refresh = Instant::now();
                pipe.offer(f.metadata);
                floe_lake::fail::point("before-kafka-commit");
                // Lag monitoring only: the truth is in the table.
                let mut tpl = TopicPartitionList::new();
                for ((t, p), next) in &positions {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*next));
                }
                if tpl.count() > 0
                    && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
                {
                    tracing::debug!(error = %e, "committing group offsets (for lag only) failed");
                }
            }
            Err(failure) => {
                pipe.totals.rewinds += 1;
                let pause = match &failure {
                    FlushFailure::Fenced(why) => {
                        tracing::warn!(table = %pipe.name, reason = %why, "batch already committed by another writer; rewinding");
                        Duration::ZERO
                    }
                    FlushFailure::Failed(f) => {
                        pipe.failures += 1;
                        let attempts = match f.retry {
                            Retry::Unknown => {
                                pipe.unknown_failures += 1;
                                pipe.unknown_failures
                            }
                            _ => pipe.failures,
                        };
                        metrics::counter!(m::FLUSH_FAILURES, "table" => pipe.name.clone(), "class" => f.retry.as_str())
                            .increment(1);
                        match retry_after(f.retry, attempts) {
                            Some(pause) => {
                                tracing::error!(table = %pipe.name, error = %f.reason, class = f.retry.as_str(), retry_in = ?pause, "commit failed; rewinding to the committed offsets and retrying");
                                pause
                            }
                            None => {
                                let verdict = match f.retry {
                                    Retry::Unknown => format!(
                                        "it failed {attempts} times in a row; the batch is read \
                                         again after a restart"
                                    ),
                                    _ => "retrying cannot mend this; fix the cause and restart \
                                          (the batch is read again)"
                                        .to_string(),
                                };
                                tracing::error!(table = %pipe.name, error = %f.reason, class = f.retry.as_str(), "commit failed; stopping the loader: {verdict}");
                                self.fatal.get_or_insert(Error::Stopped {
                                    table: pipe.name.clone(),
                                    reason: f.reason.clone(),
                                    verdict,
                                });
                                // Its messages are ignored until the loader stops (next poll).
                                STOPPING
                            }
                        }
                    }
                };
                metrics::counter!(m::REWINDS, "table" => pipe.name.clone()).increment(1);
                self.hold(i, consumer, pause);
                if pause.is_zero() {
                    self.rewind_due(consumer, env);
                }
            }
        }
    }

    /// The partitions of pipeline `i`, as assigned now.
    fn assigned_to(&self, i: usize) -> Vec<Tp> {
        self.assigned
            .iter()
            .filter(|tp| self.pipes[i].cfg.topics.contains(&tp.0))
            .cloned()
            .collect()
    }

    /// Drops pipeline `i`'s unflushed batch and holds its partitions for `pause`, after which
    /// [`State::rewind_due`] seeks them back to what the tables hold. The consumer keeps
    /// polling meanwhile (other pipelines go on; the group keeps this member).
    fn hold<C: ConsumerContext>(&mut self, i: usize, consumer: &BaseConsumer<C>, pause: Duration) {
        self.pipes[i].discard();
        self.pipes[i].rewind_at = Some(Instant::now() + pause);
        let tpl = tp_list(&self.assigned_to(i));
        if tpl.count() > 0
            && let Err(e) = consumer.pause(&tpl)
        {
            // Only saves fetching what is ignored until the rewind.
            tracing::debug!(error = %e, "pausing partitions failed");
        }
    }

    /// Rewinds the pipelines whose hold is over. One whose tables cannot be read (storage or
    /// catalog unreachable) stays held and is tried again later; an error that retrying does
    /// not mend stops the loader.
    fn rewind_due<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, env: &Env) {
        let now = Instant::now();
        for i in 0..self.pipes.len() {
            if self.pipes[i].rewind_at.is_none_or(|at| at > now) {
                continue;
            }
            match self.rewind(i, consumer, env) {
                Ok(()) => self.pipes[i].rewind_at = None,
                Err(e) if e.is_retryable() => {
                    let pipe = &mut self.pipes[i];
                    pipe.failures += 1;
                    let pause = backoff(pipe.failures);
                    tracing::error!(table = %pipe.name, error = %e, retry_in = ?pause, "reading the committed offsets to rewind to failed; retrying");
                    pipe.rewind_at = Some(now + pause);
                }
                Err(e) => {
                    tracing::error!(table = %self.pipes[i].name, error = %e, "reading the committed offsets to rewind to failed");
                    self.fatal.get_or_insert(e);
                }
            }
        }
    }

    /// Seeks pipeline `i`'s partitions back to what its tables hold, and resumes them.
    fn rewind<C: ConsumerContext>(
        &mut self,
        i: usize,
        consumer: &BaseConsumer<C>,
        env: &Env,
    ) -> Result<()> {
        let tps = self.assigned_to(i);
        let starts = self.start_offsets(env, &tps, false)?;
        for (tp, start) in starts {
            let offset = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
            consumer
                .seek(&tp.0, tp.1, offset, Duration::from_secs(10))
                .map_err(|e| Error::Kafka(format!("seeking {}[{}]: {e}", tp.0, tp.1)))?;
        }
        let tpl = tp_list(&tps);
        if tpl.count() > 0 {
            consumer
                .resume(&tpl)
                .map_err(|e| Error::Kafka(format!("resuming {tps:?}: {e}")))?;
        }
        Ok(())
    }
}

/// How long newly assigned partitions wait for their tables' committed offsets to become
/// readable before the loader gives up (and stops, to be restarted).
const ASSIGN_RETRY: Duration = Duration::from_secs(120);

/// How long a pipeline that stops the loader is held (longer than the loader lives on).
const STOPPING: Duration = Duration::from_secs(3600);

/// The pause after `failures` failed attempts in a row: 0.5 s, doubling up to 32 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.clamp(1, 7)))
}

fn tp_list(tps: &[Tp]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    tpl
}

impl Pipe {
    async fn read_committed(
        &self,
        env: &Env,
    ) -> Result<(
        floe_lake::Offsets,
        Option<floe_lake::Offsets>,
        Vec<floe_lake::Offsets>,
    )> {
        let catalog = env.committer.catalog();
        let (_, raw) = catalog.load_metadata(&self.raw).await?;
        let raw = committed_offsets(&raw, &env.group)?;
        let dlq = match &self.dlq {
            Some(ident) => {
                let (_, meta) = catalog.load_metadata(ident).await?;
                Some(committed_offsets(&meta, &env.group)?)
            }
            None => None,
        };
        let mut aggs = Vec::with_capacity(self.aggs.len());
        for ident in &self.aggs {
            let (_, meta) = catalog.load_metadata(ident).await?;
            aggs.push(committed_offsets(&meta, &env.group)?);
        }
        Ok((raw, dlq, aggs))
    }

    fn discard(&mut self) {
        let _ = self.decoder.finish();
        if let Some(stage) = &mut self.stage {
            stage.clear();
        }
        let id = self.batch.id;
        if self.batch.chunks_sent || !self.aggs.is_empty() {
            let _ = self
                .to_writer
                .blocking_send(ToWriter::Discard { batch: id });
        }
        self.batch = Batch::new(id + 1, self.aggs.len());
    }

    /// Sends the batch to be committed; `false` when nothing to do or a flush is in flight.
    /// `last_before_stop`: the partitions are about to be revoked or the loader to stop.
    fn start_flush(&mut self, last_before_stop: bool) -> bool {
        // With nothing new, a last flush still goes when a table may hold offsets it has not
        // recorded yet (the dead-letter table's, `flush.idle_offsets_interval`).
        let records_idle_offsets = last_before_stop && self.dlq.is_some();
        if self.in_flight.is_some() || (self.batch.messages == 0 && !records_idle_offsets) {
            return false;
        }
        let (last, last_routing) = if self.stop.is_some() || self.decoder.is_empty() {
            (None, None)
        } else {
            match self.take_chunk() {
                Some((rows, routing)) => (Some(rows), routing),
                None => (None, None),
            }
        };
        if self.stop.is_some() {
            return false;
        }
        let next = Batch::new(self.batch.id + 1, self.aggs.len());
        let b = std::mem::replace(&mut self.batch, next);
        let ranges = |r: &FastMap<Tp, (i64, i64)>| -> Vec<OffsetRange> {
            let mut v: Vec<OffsetRange> = r
                .iter()
                .map(|((t, p), (first, next))| OffsetRange {
                    topic: t.clone(),
                    partition: *p,
                    first: *first,
                    next: *next,
                })
                .collect();
            v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            v
        };
        let mut positions: BTreeMap<Tp, i64> = BTreeMap::new();
        for (tp, (_, next)) in b
            .raw_ranges
            .iter()
            .chain(b.dlq_ranges.iter())
            .chain(b.agg_ranges.iter().flatten())
        {
            let e = positions.entry(tp.clone()).or_insert(*next);
            *e = (*e).max(*next);
        }
        let job = FlushJob {
            batch: b.id,
            metadata: self.metadata.clone(),
            last,
            last_routing,
            dead: b.dead,
            raw_ranges: ranges(&b.raw_ranges),
            dlq_ranges: ranges(&b.dlq_ranges),
            agg_ranges: b.agg_ranges.iter().map(ranges).collect(),
            last_before_stop,
        };
        self.in_flight = Some((b.id, positions));
        let _ = self.to_writer.blocking_send(ToWriter::Flush(Box::new(job)));
        // A new batch starts: adopt a newer schema now (the decoder is empty).
        if let Some(meta) = self.newer_metadata.take() {
            self.adopt(meta);
        }
        true
    }

    /// Hands the decoded rows over as a chunk, through the transform stage when the mapping
    /// has computed columns or rules: rejected rows become dead letters, and rows decoded only
    /// to learn their dead-letter status drop out. `None` when no row is left. A rejected row
    /// with no dead-letter table discards the batch and records why the loader must stop.
    fn take_chunk(&mut self) -> Option<(RecordBatch, Option<Box<RowRouting>>)> {
        let rows = self.decoded();
        let Some(stage) = self.stage.as_mut() else {
            return Some((rows, take_routing(&mut self.batch.routing)));
        };
        let staged = stage.apply(rows, chrono::Utc::now().timestamp_micros());
        let routing = take_raw_routing(&mut self.batch.routing);
        self.staged(staged, routing)
    }

    /// A full chunk goes to the writer (through the transform stage, if any: its
    /// expressions cost a few nanoseconds per row next to decoding; on a worker thread, the
    /// hand-over and its waits cost more than they saved).
    fn chunk_full(&mut self) {
        if let Some((rows, routing)) = self.take_chunk() {
            self.send_chunk(rows, routing);
        }
    }

    /// The decoder's rows (and its envelope and projection counts to the metrics).
    fn decoded(&mut self) -> RecordBatch {
        let rows = self.decoder.finish();
        m::mapping_applied(&self.name, self.decoder.take_mapping_counts());
        rows
    }

    fn send_chunk(&mut self, rows: RecordBatch, routing: Option<Box<RowRouting>>) {
        self.batch.chunks_sent = true;
        let _ = self.to_writer.blocking_send(ToWriter::Chunk {
            batch: self.batch.id,
            rows,
            metadata: self.metadata.clone(),
            routing,
        });
    }

    /// A transformed chunk: rejected rows become dead letters (or stop the pipeline), the
    /// rest go on with their routing.
    fn staged(
        &mut self,
        staged: std::result::Result<crate::transform::Staged, String>,
        mut routing: Option<RowRouting>,
    ) -> Option<(RecordBatch, Option<Box<RowRouting>>)> {
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                self.halt(Error::Config(e));
                return None;
            }
        };
        let kept = |i: usize| staged.kept.as_ref().is_none_or(|k| k.value(i));
        // Per decoded row: it goes on (passed, and the raw table or an aggregate needs it).
        let goes_on: Vec<bool> = staged
            .needed
            .iter()
            .enumerate()
            .map(|(i, (raw, aggs))| kept(i) && (*raw || *aggs))
            .collect();
        self.meters.pending.accepted += staged
            .needed
            .iter()
            .zip(&goes_on)
            .filter(|((raw, _), g)| **g && *raw)
            .count() as u64;
        for r in staged.rejected {
            if self.dlq.is_none() {
                let d = &r.dead_letter;
                self.halt(Error::Rejected {
                    source_name: crate::sink::describe_source(
                        &d.source_topic,
                        d.source_partition,
                        d.source_offset,
                    ),
                    reason: r.why.message,
                });
                return None;
            }
            self.meters.dead_lettered(r.why.kind);
            if r.source.to_dlq() {
                self.batch.dead.push(r.dead_letter);
            }
        }
        // `staged.rows` holds the passed rows; keep those that go on.
        let of_passed: Vec<bool> = (0..goes_on.len())
            .filter(|&i| kept(i))
            .map(|i| goes_on[i])
            .collect();
        let rows = if of_passed.iter().all(|g| *g) {
            staged.rows
        } else {
            match arrow_select::filter::filter_record_batch(
                &staged.rows,
                &arrow_array::BooleanArray::from(of_passed),
            ) {
                Ok(r) => r,
                Err(e) => {
                    self.halt(Error::Config(format!("transform: {e}")));
                    return None;
                }
            }
        };
        if let Some(r) = &mut routing {
            retain_rows(&mut r.parts, &goes_on);
            for mask in r.raw.iter_mut().chain(r.aggs.iter_mut().flatten()) {
                retain_rows(mask, &goes_on);
            }
        }
        let routing = take_routing(&mut routing);
        (rows.num_rows() > 0).then_some((rows, routing))
    }

    /// Drops the batch and records why the pipeline must stop.
    fn halt(&mut self, e: Error) {
        tracing::error!(table = %self.name, error = %e, "stopping: the batch is not committed");
        self.discard();
        self.stop.get_or_insert(e);
    }

    /// Takes metadata newer than what the pipeline has (after a commit or a reload). A change
    /// of how messages decode (schema, aliases) is adopted at once when the batch is empty,
    /// else the batch is cut so the next one uses it.
    fn offer(&mut self, meta: TableMetadata) {
        let have = self.newer_metadata.as_ref().unwrap_or(&self.metadata);
        if meta.last_updated_ms() < have.last_updated_ms() {
            return; // a reload that started before a commit we already saw
        }
        self.schema_change_pending = self.decoder.differs_for(&meta)
            && self.unusable_schema.as_ref() != Some(&self.decoding(&meta));
        if self.schema_change_pending && self.batch.messages == 0 && self.decoder.is_empty() {
            self.newer_metadata = None;
            self.adopt(meta);
        } else {
            self.newer_metadata = Some(meta);
        }
    }

    /// Starts a reload of the raw table's metadata once per flush interval; takes a finished
    /// one.
    fn refresh(&mut self, env: &Env) {
        if let Some(h) = &self.refreshing {
            if !h.is_finished() {
                return;
            }
            let h = self.refreshing.take().expect("checked above");
            match env.rt.block_on(h) {
                Ok(Ok(meta)) => self.offer(meta),
                Ok(Err(e)) => {
                    tracing::warn!(table = %self.name, error = %e, "reloading the table's metadata failed; retrying")
                }
                Err(e) => {
                    tracing::warn!(table = %self.name, error = %e, "metadata reload task failed")
                }
            }
            return;
        }
        let every = self.cfg.flush.interval.max(Duration::from_millis(100));
        if self.last_refresh.elapsed() < every {
            return;
        }
        self.last_refresh = Instant::now();
        let catalog = env.committer.catalog().clone();
        let ident = self.raw.clone();
        self.refreshing = Some(
            env.rt
                .spawn(async move { catalog.load_metadata(&ident).await.map(|(_, m)| m) }),
        );
    }

    /// What decoding `meta`'s table looks like: its schema id and decoder options.
    fn decoding(&self, meta: &TableMetadata) -> (i32, DecoderOptions) {
        (
            meta.current_schema_id(),
            DecoderOptions::for_pipeline(meta.properties(), &self.decoder.options().pipeline),
        )
    }

    fn adopt(&mut self, meta: TableMetadata) {
        self.schema_change_pending = false;
        if self.decoder.differs_for(&meta) {
            match crate::transform::prepare(&self.name, &meta, &self.cfg.mapping(), &self.section) {
                Ok((d, stage)) => {
                    m::schema_changed(&self.name, &self.metadata, &meta);
                    self.decoder = d;
                    self.stage = stage;
                }
                Err(e) => {
                    let unusable = self.decoding(&meta);
                    if self.unusable_schema.as_ref() != Some(&unusable) {
                        tracing::error!(table = %self.name, schema = meta.current_schema_id(), error = %e, "cannot decode against the new schema or mapping; keeping the old one");
                        self.unusable_schema = Some(unusable);
                    }
                    return;
                }
            }
        }
        self.metadata = Arc::new(meta);
    }

    /// The batch reached its row or byte limit.
    fn full(&self) -> bool {
        self.batch.messages >= self.cfg.flush.max_rows
            || self.batch.bytes >= self.cfg.flush.max_bytes.as_u64()
    }

    fn due(&self, now: Instant) -> bool {
        self.full()
            || (self.schema_change_pending && self.batch.messages > 0)
            || self
                .batch
                .started
                .is_some_and(|s| now.duration_since(s) >= self.cfg.flush.interval)
    }
}

fn update_range(ranges: &mut FastMap<Tp, (i64, i64)>, tp: &Tp, offset: i64) {
    match ranges.get_mut(tp) {
        Some(r) => r.1 = offset + 1,
        None => {
            ranges.insert(tp.clone(), (offset, offset + 1));
        }
    }
}

/// The largest upper bound, among `files`, of the column the table's time partition derives
/// from (the event time), in epoch micros.
fn newest_event_time(metadata: &TableMetadata, files: &[iceberg::spec::DataFile]) -> Option<i64> {
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

/// Runs the loader until shutdown (or until drained). Blocking: call from a thread that is not
/// a tokio worker; `rt` runs the writer tasks and catalog I/O.
pub fn run(
    committer: Committer,
    rt: Handle,
    opts: RunOptions,
    shutdown: Arc<AtomicBool>,
    health: Arc<m::Health>,
) -> Result<Vec<(String, PipelineTotals)>> {
    let env = Arc::new(Env {
        rt: rt.clone(),
        committer: committer.clone(),
        group: opts.kafka.group_id.clone(),
        health,
    });
    let dlq_producer: Option<FutureProducer> = if opts
        .pipelines
        .iter()
        .any(|p| p.dead_letter_topic().is_some())
    {
        Some(
            crate::kafka::producer_config(&opts.kafka)
                .create()
                .map_err(|e| Error::Kafka(format!("creating the dead-letter producer: {e}")))?,
        )
    } else {
        None
    };
    let mut pipes = Vec::new();
    let mut writers = Vec::new();
    let mut by_topic = FastMap::default();
    for (i, cfg) in opts.pipelines.iter().enumerate() {
        cfg.validate(i).map_err(Error::Config)?;
        let raw = parse_table_ident(&cfg.table)?;
        let catalog = committer.catalog().clone();
        let (_, metadata) = rt.block_on(catalog.load_metadata(&raw))?;
        floe_lake::compat::check_metadata(&raw.to_string(), &metadata)?;
        let dlq = match cfg.dead_letter_table() {
            Some(name) => {
                let def = TableDefinition::dead_letter(&name)?;
                rt.block_on(catalog.create_table_if_missing(&def))?;
                Some(parse_table_ident(&name)?)
            }
            None => None,
        };
        let section = format!("pipelines[{i}]");
        let (decoder, stage) =
            crate::transform::prepare(&raw.to_string(), &metadata, &cfg.mapping(), &section)?;
        metrics::gauge!(m::SCHEMA_ID, "table" => raw.to_string())
            .set(metadata.current_schema_id() as f64);
        let selected =
            crate::aggregates::select(&opts.aggregates, &cfg.table, cfg.aggregates.as_deref())?;
        let aggregation = if selected.is_empty() {
            None
        } else {
            let columns = crate::aggregates::dedup_columns(
                &cfg.table,
                &metadata,
                &cfg.dedup_column,
                cfg.topics.len(),
            )
            .map_err(|e| Error::Config(format!("pipelines[{i}]: {e}")))?;
            let tables = rt.block_on(crate::aggregates::ensure_tables(
                &committer,
                &selected,
                &opts.table_definitions,
            ))?;
            tracing::info!(table = %cfg.table, aggregates = ?tables.iter().map(|t| t.ident.to_string()).collect::<Vec<_>>(), "aggregating");
            Some(Aggregation::new(
                &cfg.table,
                tables,
                columns,
                cfg.dedup_window,
                cfg.dedup_max_keys,
                cfg.topics.clone(),
                catalog.clone(),
            ))
        };
        let aggs: Vec<TableIdent> = aggregation
            .as_ref()
            .map(|a| {
                a.tables()
                    .iter()
                    .map(|t: &AggTable| t.ident.clone())
                    .collect()
            })
            .unwrap_or_default();
        let (to_writer, from_consumer) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let (outcome_tx, outcomes) = mpsc::channel();
        let writer = Writer {
            aggregation,
            committer: committer.clone(),
            group: opts.kafka.group_id.clone(),
            table: raw.clone(),
            name: raw.to_string(),
            dlq: dlq.clone(),
            dlq_topic: cfg.dead_letter_topic(),
            producer: dlq_producer.clone(),
            layout_reported: None,
            idle_offsets: IdleOffsets::new(cfg.flush.idle_offsets_interval),
            rebuild: Vec::new(),
        };
        writers.push(rt.spawn(writer.run(from_consumer, outcome_tx)));
        for t in &cfg.topics {
            if by_topic.insert(t.clone(), i).is_some() {
                return Err(Error::Config(format!(
                    "topic {t} feeds two pipelines; give each topic one table"
                )));
            }
        }
        let raw_name = raw.to_string();
        pipes.push(Pipe {
            cfg: cfg.clone(),
            name: raw.to_string(),
            raw,
            dlq,
            metadata: Arc::new(metadata),
            newer_metadata: None,
            schema_change_pending: false,
            refreshing: None,
            last_refresh: Instant::now(),
            unusable_schema: None,
            decoder,
            stage,
            section,
            stop: None,
            batch: Batch::new(0, aggs.len()),
            in_flight: None,
            to_writer,
            outcomes,
            raw_from: FastMap::default(),
            dlq_from: FastMap::default(),
            agg_from: vec![FastMap::default(); aggs.len()],
            aggs,
            failures: 0,
            unknown_failures: 0,
            rewind_at: None,
            meters: Meters::new(&raw_name),
            totals: PipelineTotals::default(),
        });
    }
    let state = Arc::new(Mutex::new(State {
        pipes,
        by_topic,
        assigned: Vec::new(),
        next_offset: FastMap::default(),
        fatal: None,
        ingested_at_us: chrono::Utc::now().timestamp_micros(),
        last_commit: Instant::now(),
        max_message_bytes: opts.limits.max_message_bytes(),
    }));
    let ctx = Ctx {
        state: state.clone(),
        env: env.clone(),
    };
    let consumer: BaseConsumer<Ctx> = crate::kafka::consumer_config(&opts.kafka, &opts.limits)
        .create_with_context(ctx)
        .map_err(|e| Error::Kafka(format!("creating the consumer: {e}")))?;
    let topics: Vec<&str> = opts
        .pipelines
        .iter()
        .flat_map(|p| p.topics.iter().map(String::as_str))
        .collect();
    if opts.static_assignment {
        assign_all(&consumer, &state, &env, &topics)?;
    } else {
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::Kafka(format!("subscribing to {topics:?}: {e}")))?;
    }
    tracing::info!(topics = ?topics, group = %opts.kafka.group_id, brokers = %opts.kafka.brokers, "consuming");

    let result = consume_loop(&consumer, &state, &env, &opts, &shutdown);
    {
        let mut st = state.lock().expect("state lock");
        st.flush_all_and_wait(&consumer, &env);
        if result.is_ok()
            && let Some(e) = st
                .fatal
                .take()
                .or_else(|| st.pipes.iter_mut().find_map(|p| p.stop.take()))
        {
            return Err(e);
        }
    }
    result?;
    if !opts.static_assignment {
        consumer.unsubscribe();
    }
    // Close the Kafka clients before returning: the consumer, then the writer tasks (which
    // hold the dead-letter producer) once their channels close.
    close_consumer(consumer, CONSUMER_CLOSE);
    let pipes = std::mem::take(&mut state.lock().expect("state lock").pipes);
    let totals = pipes
        .iter()
        .map(|p| (p.name.clone(), p.totals.clone()))
        .collect();
    drop(pipes);
    for w in writers {
        let _ = rt.block_on(w);
    }
    Ok(totals)
}

/// How long a stopping loader waits for the consumer to leave its group.
const CONSUMER_CLOSE: Duration = Duration::from_secs(5);

/// Closes `consumer` (leaving the group), waiting at most `within`: librdkafka's close waits
/// for the broker without a deadline, and a loader stopped during a broker outage would never
/// exit. Everything consumed is committed by then; the group's coordinator drops the member
/// at its session timeout instead.
fn close_consumer(consumer: BaseConsumer<Ctx>, within: Duration) {
    let (done_tx, done) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done_tx.send(());
        });
    // (A thread that cannot start dropped the consumer here, waiting.)
    if closing.is_ok() && done.recv_timeout(within).is_err() {
        tracing::warn!(
            waited_s = within.as_secs(),
            "the Kafka consumer did not close (broker unreachable?); stopping without it: \
             everything consumed is committed"
        );
    }
}

/// Runs the loader in this process until every partition is read to its end (quickstart,
/// benchmarks): the blocking loop on a blocking thread, no signal handling, no health checks.
pub async fn run_to_end(
    committer: Committer,
    mut opts: RunOptions,
) -> Result<Vec<(String, PipelineTotals)>> {
    opts.until_drained = true;
    let rt = Handle::current();
    let health = Arc::new(m::Health::new(Duration::from_secs(3600)));
    tokio::task::spawn_blocking(move || {
        run(
            committer,
            rt,
            opts,
            Arc::new(AtomicBool::new(false)),
            health,
        )
    })
    .await
    .map_err(|e| Error::Kafka(format!("loader thread: {e}")))?
}

/// Assigns every partition of `topics` to this consumer, starting at the committed offsets.
fn assign_all(
    consumer: &BaseConsumer<Ctx>,
    state: &Arc<Mutex<State>>,
    env: &Env,
    topics: &[&str],
) -> Result<()> {
    let mut tps: Vec<Tp> = Vec::new();
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(30))
            .map_err(|e| Error::Kafka(format!("reading metadata of {t}: {e}")))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                tps.push((topic.name().to_string(), p.id()));
            }
        }
    }
    let mut st = state.lock().expect("state lock");
    let starts = st.start_offsets_retrying(env, &tps)?;
    let mut tpl = TopicPartitionList::new();
    for (tp, start) in starts {
        tpl.add_partition_offset(
            &tp.0,
            tp.1,
            start.map(Offset::Offset).unwrap_or(Offset::Beginning),
        )
        .map_err(|e| Error::Kafka(e.to_string()))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Kafka(format!("assigning partitions: {e}")))?;
    st.assigned = tps;
    Ok(())
}

/// How long a loader waits without any partition before it says so (and again every as
/// long while it goes on).
const UNASSIGNED_WARNING: Duration = Duration::from_secs(60);

fn consume_loop(
    consumer: &BaseConsumer<Ctx>,
    state: &Arc<Mutex<State>>,
    env: &Arc<Env>,
    opts: &RunOptions,
    shutdown: &AtomicBool,
) -> Result<()> {
    let mut since_clock = 0u32;
    let mut last_drain_check = Instant::now();
    // While no partition is assigned: since when, and when that was last reported.
    let mut unassigned: Option<(Instant, Instant)> = None;
    let mut tp: Tp = (String::new(), -1);
    loop {
        if shutdown.load(Ordering::Relaxed) {
            tracing::info!("shutting down: committing what was consumed");
            return Ok(());
        }
        let polled = consumer.poll(Duration::from_millis(100));
        let mut st = state.lock().expect("state lock");
        if let Some(e) = st.fatal.take() {
            return Err(e);
        }
        if let Some(e) = st.pipes.iter_mut().find_map(|p| p.stop.take()) {
            // A rejected row with no dead-letter table: commit the other pipelines, then stop.
            st.flush_all_and_wait(consumer, env);
            return Err(e);
        }
        since_clock += 1;
        if since_clock >= 512 {
            since_clock = 0;
            st.ingested_at_us = chrono::Utc::now().timestamp_micros();
        }
        let mut idle = false;
        match polled {
            None => idle = true,
            Some(Err(KafkaError::PartitionEOF(_))) => idle = true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!(m::CONSUMER_ERRORS).increment(1);
            }
            Some(Ok(msg)) => {
                // Messages come in runs from one partition: reuse the key.
                if tp.1 != msg.partition() || tp.0 != msg.topic() {
                    tp = (msg.topic().to_string(), msg.partition());
                }
                let offset = msg.offset();
                let Some(&i) = st.by_topic.get(&tp.0) else {
                    continue;
                };
                if st.pipes[i].rewind_at.is_some() {
                    continue; // fetched before the hold; read again after the rewind
                }
                match st.next_offset.get_mut(&tp) {
                    Some(next) => {
                        if offset > *next {
                            // Fine for compacted or transactional topics; data loss otherwise.
                            tracing::warn!(topic = %tp.0, partition = tp.1, expected = *next, got = offset, "offsets skipped: messages before {offset} are gone from Kafka (retention or compaction)");
                            metrics::counter!(m::OFFSETS_SKIPPED, "topic" => tp.0.clone())
                                .increment((offset - *next) as u64);
                        }
                        *next = offset + 1;
                    }
                    None => {
                        st.next_offset.insert(tp.clone(), offset + 1);
                    }
                }
                let ingested = st.ingested_at_us;
                let meta = RecordMeta {
                    topic: &tp.0,
                    partition: Some(tp.1),
                    offset: Some(offset),
                    timestamp_ms: msg.timestamp().to_millis(),
                    key: msg.key(),
                    ingested_at_us: ingested,
                };
                if let Err(e) = process(&mut st, i, &tp, offset, &msg, &meta) {
                    // No dead-letter table: commit what came before, then stop.
                    st.flush_all_and_wait(consumer, env);
                    return Err(e);
                }
                if st.pipes[i].full() {
                    st.wait_in_flight(i, consumer, env);
                    st.pipes[i].start_flush(false);
                }
            }
        }
        if !idle && !since_clock.is_multiple_of(64) {
            continue;
        }
        for p in &mut st.pipes {
            p.meters.publish();
        }
        st.drain_outcomes(consumer, env);
        st.rewind_due(consumer, env);
        for p in &mut st.pipes {
            p.refresh(env);
        }
        let now = Instant::now();
        for i in 0..st.pipes.len() {
            if st.pipes[i].due(now) && st.pipes[i].in_flight.is_none() {
                st.pipes[i].start_flush(false);
            }
        }
        if st.assigned.is_empty() {
            let now = Instant::now();
            let (since, reported) = unassigned.get_or_insert((now, now));
            if now - *reported >= UNASSIGNED_WARNING {
                *reported = now;
                tracing::warn!(
                    group = %env.group,
                    waiting_s = (now - *since).as_secs(),
                    "no partition assigned: the group has more members than the topics have \
                     partitions, or the broker's coordinator lost the assignment; still waiting"
                );
            }
        } else {
            unassigned = None;
        }
        if opts.until_drained && idle && last_drain_check.elapsed() >= Duration::from_millis(200) {
            last_drain_check = Instant::now();
            let t = Instant::now();
            let done = drained(consumer, &st);
            tracing::debug!(took = ?t.elapsed(), done, "drain check");
            if done {
                tracing::info!("every assigned partition is read to its end");
                return Ok(());
            }
        }
    }
}

/// The partition's watermarks as of the last fetch response (no network round trip).
fn cached_watermarks(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; the topic is a valid C
    // string and the out-pointers point to live locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

/// Whether every assigned partition has been read to its high watermark.
fn drained(consumer: &BaseConsumer<Ctx>, st: &State) -> bool {
    if st.assigned.is_empty() || st.pipes.iter().any(|p| p.rewind_at.is_some()) {
        return false;
    }
    // Only the watermarks cached from fetch responses: a partition is judged once its first
    // fetch answered. Asking the broker (ListOffsets) would queue behind the in-flight fetch on
    // the same connection; on a broker slow to answer a large fetch, the request's timeout
    // failed the fetch with it, and the loader re-sent both for ever.
    st.assigned.iter().all(|tp| {
        cached_watermarks(consumer, &tp.0, tp.1).is_some_and(|(low, high)| {
            let next = st.next_offset.get(tp).copied().unwrap_or(low);
            next >= high
        })
    })
}

fn process(
    st: &mut State,
    i: usize,
    tp: &Tp,
    offset: i64,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    meta: &RecordMeta<'_>,
) -> Result<()> {
    let payload = msg.payload();
    let max_message_bytes = st.max_message_bytes;
    let pipe = &mut st.pipes[i];
    let raw_from = pipe.raw_from.get(tp).copied().unwrap_or(i64::MIN);
    let dlq_from = pipe.dlq_from.get(tp).copied().unwrap_or(i64::MAX);
    pipe.meters.pending.received += 1;
    pipe.totals.received += 1;
    floe_lake::fail::point("decode");
    let to_raw = offset >= raw_from;
    let to_dlq = pipe.dlq.is_some() && offset >= dlq_from;
    // Bit k: aggregate table k still needs this message.
    let mut to_aggs: u64 = 0;
    for (k, from) in pipe.agg_from.iter().enumerate() {
        if offset >= from.get(tp).copied().unwrap_or(i64::MIN) {
            to_aggs |= 1 << k;
        }
    }
    if !to_raw && !to_dlq && to_aggs == 0 {
        pipe.totals.already_committed += 1;
        pipe.meters.pending.skipped += 1;
        return Ok(());
    }
    pipe.batch.started.get_or_insert_with(Instant::now);
    pipe.batch.messages += 1;
    let mut rejected: Option<DecodeError> = None;
    match payload {
        None => {
            pipe.totals.tombstones += 1;
            pipe.meters.pending.tombstones += 1;
        }
        Some(bytes) => {
            pipe.batch.bytes += bytes.len() as u64;
            pipe.meters.pending.bytes += bytes.len() as u64;
            // With a transform stage, a message only the dead-letter table still needs is
            // decoded too: its rules decide whether it is a dead letter.
            let keep = to_raw || to_aggs != 0 || (to_dlq && pipe.stage.is_some());
            let result = if bytes.len() > max_message_bytes {
                let (size, limit) = (bytes.len() as u64, max_message_bytes as u64);
                Err(floe_schema::decode::too_large(size, limit))
            } else if keep {
                pipe.decoder.decode(bytes, meta).inspect(|()| {
                    if let Some(stage) = &mut pipe.stage {
                        let headers = owned_headers(msg);
                        stage.push(meta, bytes, headers, to_raw, to_dlq, to_aggs != 0);
                    }
                    if let Some(r) = &mut pipe.batch.routing {
                        let t = pipe.cfg.topics.iter().position(|t| *t == tp.0).unwrap_or(0);
                        r.parts.push((t as u16, tp.1));
                        if let Some(raw) = &mut r.raw {
                            raw.push(to_raw);
                        }
                        for (k, m) in r.aggs.iter_mut().enumerate() {
                            if let Some(m) = m {
                                m.push(to_aggs & (1 << k) != 0);
                            }
                        }
                    }
                })
            } else {
                pipe.decoder.check(bytes, meta)
            };
            if let Err(e) = result {
                rejected = Some(e);
            }
        }
    }
    if let Some(err) = rejected {
        if pipe.dlq.is_none() {
            pipe.batch.messages -= 1;
            return Err(Error::Rejected {
                source_name: crate::sink::describe_source(&tp.0, Some(tp.1), Some(offset)),
                reason: err.to_string(),
            });
        }
        pipe.meters.dead_lettered(err.kind.as_str());
        if to_dlq {
            let mut dl = DeadLetter::from_decode_error(
                &err,
                &pipe.name,
                &tp.0,
                payload.unwrap_or_default(),
                meta.ingested_at_us,
            );
            dl.source_partition = Some(tp.1);
            dl.source_offset = Some(offset);
            dl.source_key = meta.key.map(<[u8]>::to_vec);
            dl.source_timestamp_ms = meta.timestamp_ms;
            // Parsed only for rejected messages: header parsing allocates.
            dl.headers = owned_headers(msg);
            pipe.batch.dead.push(dl);
        }
    } else if payload.is_some() && to_raw && pipe.stage.is_none() {
        // (With a transform stage, rows are counted once their chunk passed it.)
        pipe.meters.pending.accepted += 1;
    }
    if to_raw {
        update_range(&mut pipe.batch.raw_ranges, tp, offset);
    }
    if to_dlq {
        update_range(&mut pipe.batch.dlq_ranges, tp, offset);
    }
    for (k, ranges) in pipe.batch.agg_ranges.iter_mut().enumerate() {
        if to_aggs & (1 << k) != 0 {
            update_range(ranges, tp, offset);
        }
    }
    // Chunks of the next batch may go while a flush is in flight: the writer handles them
    // in order, and a rewind discards them by batch id.
    if pipe.decoder.len() >= chunk_rows() {
        pipe.chunk_full();
        if let Some(e) = pipe.stop.take() {
            return Err(e);
        }
    }
    Ok(())
}

/// A message's headers, owned (for dead letters and the transform stage).
fn owned_headers(msg: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// The writer task of one pipeline: encodes chunks, commits on flush.
struct Writer {
    aggregation: Option<Aggregation>,
    committer: Committer,
    group: String,
    table: TableIdent,
    name: String,
    dlq: Option<TableIdent>,
    dlq_topic: Option<String>,
    producer: Option<FutureProducer>,
    /// When the table's layout (files per partition) was last reported.
    layout_reported: Option<Instant>,
    /// The dead-letter table's offsets not yet recorded (flushes without dead letters).
    idle_offsets: IdleOffsets,
    /// Partitions whose dedup state is still to be rebuilt (with the offset below which their
    /// events are aggregated): a rebuild failed, and is tried again before the state is
    /// next used.
    rebuild: Vec<(Tp, Option<i64>)>,
}

/// Offsets of a table that flushes keep receiving no rows for: recorded with the next rows,
/// or once `interval` has passed since the last record, or before the loader stops — not
/// every flush, so such a table's metadata does not change once a flush. A restart re-reads
/// at most `interval` of the topic for it (the messages are decoded again and still have no
/// row for it).
struct IdleOffsets {
    interval: Duration,
    pending: BTreeMap<(String, i32), (i64, i64)>,
    recorded_at: Instant,
}

impl IdleOffsets {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: BTreeMap::new(),
            recorded_at: Instant::now(),
        }
    }

    /// Adds a flush's ranges; returns every pending range if they are to be recorded now.
    fn take(
        &mut self,
        ranges: &[OffsetRange],
        has_rows: bool,
        last: bool,
    ) -> Option<Vec<OffsetRange>> {
        for r in ranges {
            let e = self
                .pending
                .entry((r.topic.clone(), r.partition))
                .or_insert((r.first, r.next));
            e.0 = e.0.min(r.first);
            e.1 = e.1.max(r.next);
        }
        if self.pending.is_empty()
            || !(has_rows || last || self.recorded_at.elapsed() >= self.interval)
        {
            return None;
        }
        Some(
            self.pending
                .iter()
                .map(|((topic, partition), (first, next))| OffsetRange {
                    topic: topic.clone(),
                    partition: *partition,
                    first: *first,
                    next: *next,
                })
                .collect(),
        )
    }

    /// The ranges [`Self::take`] returned were recorded.
    fn recorded(&mut self) {
        self.pending.clear();
        self.recorded_at = Instant::now();
    }

    /// A flush failed: the loader rewinds to the recorded offsets, so nothing is pending.
    fn forget(&mut self) {
        self.pending.clear();
    }

    /// Partitions revoked: another member records their offsets from now on.
    fn forget_partitions(&mut self, parts: &[Tp]) {
        for tp in parts {
            self.pending.remove(tp);
        }
    }
}

/// How often the writer reports the table's files per partition (reads its manifests).
const LAYOUT_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<ToWriter>,
        outcomes: mpsc::Sender<Outcome>,
    ) {
        let mut current: Option<(u64, DataWriter)> = None;
        let mut failed: Option<(u64, Failure)> = None;
        while let Some(msg) = rx.recv().await {
            match msg {
                ToWriter::Chunk {
                    batch,
                    rows,
                    metadata,
                    routing,
                } => {
                    if failed.as_ref().is_some_and(|f| f.0 == batch) {
                        continue;
                    }
                    let done = match self.rebuilt().await {
                        Ok(()) => {
                            self.chunk(&mut current, batch, &rows, &metadata, routing.as_deref())
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = done {
                        failed = Some((batch, e));
                    }
                }
                ToWriter::Assigned(parts) => {
                    if self.aggregation.is_some() {
                        self.rebuild
                            .retain(|(tp, _)| !parts.iter().any(|(p, _)| p == tp));
                        self.rebuild.extend(parts);
                        // A failure is retried by the next chunk or flush.
                        let _ = self.rebuilt().await;
                    }
                }
                ToWriter::Revoked(parts) => {
                    if let Some(a) = self.aggregation.as_mut() {
                        a.forget(&parts);
                    }
                    self.rebuild.retain(|(tp, _)| !parts.contains(tp));
                    self.idle_offsets.forget_partitions(&parts);
                }
                ToWriter::Discard { batch } => {
                    if let Some(a) = self.aggregation.as_mut() {
                        a.discard();
                    }
                    if let Some((b, w)) = current.take() {
                        if b == batch {
                            w.abort().await;
                        } else {
                            current = Some((b, w));
                        }
                    }
                }
                ToWriter::Flush(job) => {
                    let batch = job.batch;
                    let failure = match failed.take() {
                        Some((b, e)) if b == batch => Some(e),
                        _ => self.rebuilt().await.err(),
                    };
                    let result = match failure {
                        Some(e) => {
                            if let Some((_, w)) = current.take() {
                                w.abort().await;
                            }
                            Err(FlushFailure::Failed(e))
                        }
                        None => self.flush(&mut current, *job).await,
                    };
                    if result.is_err() {
                        self.idle_offsets.forget();
                        if let Some(a) = self.aggregation.as_mut() {
                            a.discard();
                        }
                    }
                    let _ = outcomes.send(Outcome { batch, result });
                }
            }
        }
    }

    /// A chunk of decoded rows: the raw table's share to Parquet, all of it to the aggregates.
    async fn chunk(
        &mut self,
        current: &mut Option<(u64, DataWriter)>,
        batch: u64,
        rows: &RecordBatch,
        metadata: &TableMetadata,
        routing: Option<&RowRouting>,
    ) -> std::result::Result<(), Failure> {
        let raw = match routing.and_then(|r| r.raw.as_ref()) {
            None => None,
            Some(mask) => Some(
                arrow_select::filter::filter_record_batch(
                    rows,
                    &arrow_array::BooleanArray::from(mask.clone()),
                )
                .map_err(|e| Error::Internal(format!("routing rows to the raw table: {e}")))?,
            ),
        };
        self.write(current, batch, raw.as_ref().unwrap_or(rows), metadata)
            .await?;
        if let (Some(a), Some(r)) = (self.aggregation.as_mut(), routing) {
            a.add(rows, r).await?;
        }
        Ok(())
    }

    /// Rebuilds the dedup state of the partitions still waiting for it (the aggregates would
    /// count their events again without it). A failure fails the batch at hand; the next one
    /// tries again.
    async fn rebuilt(&mut self) -> std::result::Result<(), Failure> {
        if self.rebuild.is_empty() {
            return Ok(());
        }
        let Some(a) = self.aggregation.as_mut() else {
            self.rebuild.clear();
            return Ok(());
        };
        match a.rebuild(&self.committer, &self.table, &self.rebuild).await {
            Ok(()) => {
                self.rebuild.clear();
                Ok(())
            }
            Err(e) => {
                let f = Failure::context(e, "rebuilding the dedup state");
                tracing::error!(table = %self.name, error = %f.reason, class = f.retry.as_str(), "rebuilding the dedup state failed; nothing is committed until a later batch rebuilds it");
                Err(f)
            }
        }
    }

    async fn write(
        &self,
        current: &mut Option<(u64, DataWriter)>,
        batch: u64,
        rows: &RecordBatch,
        metadata: &TableMetadata,
    ) -> floe_lake::Result<()> {
        if current.as_ref().is_some_and(|(b, _)| *b != batch)
            && let Some((_, w)) = current.take()
        {
            w.abort().await;
        }
        if current.is_none() {
            *current = Some((
                batch,
                DataWriter::new(self.committer.catalog().file_io(), metadata)?,
            ));
        }
        let (_, w) = current.as_mut().expect("just set");
        w.write(rows).await
    }

    async fn flush(
        &mut self,
        current: &mut Option<(u64, DataWriter)>,
        mut job: FlushJob,
    ) -> std::result::Result<Flushed, FlushFailure> {
        let failed = flush_failure::<floe_lake::Error>;
        if let Some(last) = job.last.take() {
            let routing = job.last_routing.take();
            if let Err(e) = self
                .chunk(current, job.batch, &last, &job.metadata, routing.as_deref())
                .await
            {
                if let Some((_, w)) = current.take() {
                    w.abort().await;
                }
                return Err(FlushFailure::Failed(e));
            }
        }
        // The raw files close while the aggregates' partial files do (each on its own task).
        let raw_files = async {
            match current.take() {
                Some((b, w)) if b == job.batch => w.close().await,
                Some((_, w)) => {
                    w.abort().await;
                    Ok(Vec::new())
                }
                None => Ok(Vec::new()),
            }
        };
        let agg_files = async {
            match self.aggregation.as_mut() {
                Some(a) => a.finish().await,
                None => Ok(Vec::new()),
            }
        };
        let (files, agg_files) = futures::future::join(raw_files, agg_files).await;
        let (files, agg_files) = (
            files.map_err(failed)?,
            agg_files.map_err(flush_failure::<Error>)?,
        );
        floe_lake::fail::point("after-data-files");
        let rows: u64 = files.iter().map(|f| f.record_count()).sum();
        let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
        let n_files = files.len();
        let newest_event_us = newest_event_time(&job.metadata, &files);
        let started = Instant::now();
        let metadata = if !job.raw_ranges.is_empty() || !files.is_empty() {
            let mut req =
                CommitRequest::append(files).written_with(job.metadata.default_partition_spec_id());
            req.offsets = Some(OffsetsUpdate {
                group: self.group.clone(),
                ranges: job.raw_ranges.clone(),
            });
            floe_lake::fail::check("before-table-commit").map_err(failed)?;
            let done = self
                .committer
                .commit(&self.table, req)
                .await
                .map_err(failed)?;
            metrics::histogram!(m::COMMIT_SECONDS, "table" => self.name.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(m::COMMIT_CONFLICTS, "table" => self.name.clone())
                .increment(u64::from(done.attempts - 1));
            done.metadata
        } else {
            self.committer
                .catalog()
                .load_metadata(&self.table)
                .await
                .map_err(failed)?
                .1
        };
        floe_lake::fail::point("after-table-commit");
        if self
            .layout_reported
            .is_none_or(|t| t.elapsed() >= LAYOUT_EVERY)
        {
            self.layout_reported = Some(Instant::now());
            let file_io = self.committer.catalog().file_io().clone();
            let (meta, name) = (metadata.clone(), self.name.clone());
            tokio::spawn(async move { m::report_layout(&file_io, &meta, &name).await });
        }
        // The raw table first: rebuilding dedup state reads raw rows below the aggregates'
        // offsets. Then the dead-letter and aggregate tables, side by side.
        let committer = &self.committer;
        let group = &self.group;
        let idle_offsets = &mut self.idle_offsets;
        let dead_letters = async {
            let Some(dlq) = &self.dlq else {
                return Ok::<_, FlushFailure>(0);
            };
            let Some(dlq_ranges) =
                idle_offsets.take(&job.dlq_ranges, !job.dead.is_empty(), job.last_before_stop)
            else {
                return Ok(0);
            };
            // The topic copy first (at least once), then the table (exactly once).
            produce_dead_letters(self.dlq_topic.as_deref(), self.producer.as_ref(), &job.dead)
                .await?;
            let (_, meta) = committer
                .catalog()
                .load_metadata(dlq)
                .await
                .map_err(failed)?;
            let offsets = OffsetsUpdate {
                group: group.clone(),
                ranges: dlq_ranges,
            };
            crate::sink::commit_dead_letters(committer, dlq, &meta, &job.dead, Some(offsets), None)
                .await
                .map_err(flush_failure::<Error>)?;
            idle_offsets.recorded();
            Ok(job.dead.len() as u64)
        };
        let aggregates = async {
            match self.aggregation.as_mut() {
                Some(a) => a
                    .commit(committer, group, &job.agg_ranges, agg_files)
                    .await
                    .map(Some)
                    .map_err(failed),
                None => Ok(None),
            }
        };
        let (dead_letters, aggregated) = futures::future::join(dead_letters, aggregates).await;
        let (dead_letters, aggregated) = (dead_letters?, aggregated?);
        if let Some(rows) = aggregated {
            tracing::debug!(table = %self.name, rows = ?rows, "aggregates committed");
        }
        tracing::debug!(table = %self.name, rows, dead_letters, files = n_files, "batch committed");
        Ok(Flushed {
            metadata,
            newest_event_us,
            rows,
            dead_letters,
            files: n_files,
            bytes,
        })
    }
}

/// Sends dead letters to the dead-letter topic (when there is one), with why each was
/// rejected and where it came from in headers.
async fn produce_dead_letters(
    topic: Option<&str>,
    producer: Option<&FutureProducer>,
    dead: &[DeadLetter],
) -> std::result::Result<(), Failure> {
    let (Some(topic), Some(producer)) = (topic, producer) else {
        return Ok(());
    };
    let sends = dead.iter().map(|d| {
        let partition = d.source_partition.unwrap_or(-1).to_string();
        let offset = d.source_offset.unwrap_or(-1).to_string();
        let mut headers = OwnedHeaders::new();
        for (k, v) in &d.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let headers = headers
            .insert(Header {
                key: "floe.error.kind",
                value: Some(d.error_kind.as_bytes()),
            })
            .insert(Header {
                key: "floe.error.message",
                value: Some(d.error_message.as_bytes()),
            })
            .insert(Header {
                key: "floe.source.topic",
                value: Some(d.source_topic.as_bytes()),
            })
            .insert(Header {
                key: "floe.source.partition",
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: "floe.source.offset",
                value: Some(offset.as_bytes()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &d.source_key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &d.payload {
            record = record.payload(p.as_slice());
        }
        producer.send(record, Duration::from_secs(30))
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| Failure {
            retry: produce_retry(&e),
            reason: format!("producing to dead-letter topic {topic}: {e}"),
        })?;
    }
    Ok(())
}

/// A message the broker refuses for its size or for authorization is refused again; a broker
/// unreachable, slow or electing a leader may heal; anything else is of unknown kind.
fn produce_retry(e: &KafkaError) -> Retry {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed,
        ) => Retry::Permanent,
        Some(
            C::MessageTimedOut
            | C::RequestTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::QueueFull
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend,
        ) => Retry::Transient,
        _ => Retry::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_retry_for_ever_unknown_ones_a_few_times_permanent_ones_never() {
        for failures in [1, 5, 50, 10_000] {
            let pause = retry_after(Retry::Transient, failures).expect("transient: retried");
            assert!(
                pause <= Duration::from_secs(32),
                "{pause:?} after {failures}"
            );
        }
        assert!(retry_after(Retry::Transient, 2) > retry_after(Retry::Transient, 1));
        for failures in 1..UNKNOWN_ATTEMPTS {
            assert!(retry_after(Retry::Unknown, failures).is_some());
        }
        assert_eq!(retry_after(Retry::Unknown, UNKNOWN_ATTEMPTS), None);
        assert_eq!(retry_after(Retry::Permanent, 1), None);
    }

    #[test]
    fn a_flush_failure_keeps_the_class_of_its_cause() {
        let fenced = flush_failure(floe_lake::Error::OffsetsAlreadyCommitted {
            table: "lake.events".into(),
            topic: "events".into(),
            partition: 0,
            committed: 10,
            batch_first: 5,
        });
        assert!(matches!(fenced, FlushFailure::Fenced(_)));
        let overflow = Error::Aggregate(floe_aggregate::Error::Output {
            name: "total".into(),
            target: "lake.t".into(),
            message: "column total: Int64 does not cast to Int32".into(),
        });
        let FlushFailure::Failed(f) = flush_failure(overflow) else {
            panic!("not fenced")
        };
        assert_eq!(f.retry, Retry::Permanent);
        let storage = floe_lake::Error::Io {
            context: "writing".into(),
            source: std::io::Error::other("connection reset"),
        };
        let f = Failure::context(storage, "rebuilding the dedup state");
        assert_eq!(f.retry, Retry::Transient);
        assert!(f.reason.starts_with("rebuilding the dedup state: writing"));
        let dlq = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(produce_retry(&dlq), Retry::Permanent);
        let down = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(produce_retry(&down), Retry::Transient);
    }
}

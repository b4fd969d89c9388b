//! The Kafka source of `floe run`: Kafka → Iceberg, exactly once.
//!
//! Threads: one consumer thread polls librdkafka and hands each message straight from the
//! fetched buffer to its table's pipeline ([`Pipe::process`]), which decodes it into Arrow
//! builders; every `flush.chunk_rows` rows the decoded chunk goes over a bounded channel to
//! the pipeline's writer task (on the tokio runtime), which encodes Parquet as chunks arrive
//! and commits on flush. The bounded channel gives back-pressure: memory holds at most a few
//! chunks per pipeline whatever the backlog.
//!
//! Exactly once, per table (raw and dead-letter table each):
//! - On assignment, each table's committed offsets are read from its snapshots; consumption
//!   starts at the smallest and a message already committed to a table is skipped for it
//!   ([`resume`]).
//! - A flush commits rows with the offset ranges they came from; the commit refuses ranges
//!   that overlap what the table holds (another writer got there first). Any failed flush
//!   rewinds the pipeline to the tables' committed offsets; by the class of its failure
//!   ([`Retry`]) it is then retried after a pause for as long as the failure lasts
//!   (transient), a few times (unknown), or not at all: a permanent failure stops the loader
//!   with the table and the reason.
//! - At most one flush per pipeline is in flight, so a later batch can never commit over a
//!   gap left by a failed one.
//! - Kafka group offsets are committed after the Iceberg commit, for lag monitoring only.
//!
//! The modules: [`connect`] (clients, assignment, closing), [`rebalance`], [`resume`]
//! (where each partition starts, holds and rewinds), [`drain`] (read to the end).

pub mod connect;
mod drain;
mod rebalance;
mod resume;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_lake::{Committer, Retry};
use floe_schema::{RecordMeta, TableDefinition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;

pub use connect::{consumer_config, is_secret_key, producer_config, redacted};

use crate::batch::{FastMap, Tp};
use crate::commit::Marks;
use crate::config::{KafkaConfig, LimitsConfig, PipelineConfig};
use crate::dead_letters::Headers as OwnedHeaders;
use crate::error::FlushError;
use crate::pipeline::{Payload, Pipe, PipelineTotals, Setup};
use crate::retry::{Next, STOPPING, after_failure};
use crate::telemetry::{self as m, Event};
use crate::write::Outcome;
use crate::{Error, Result};
use connect::Ctx;

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

/// The consumer thread's state, shared with the rebalance callback.
struct State {
    pipes: Vec<Pipe>,
    by_topic: FastMap<String, usize>,
    assigned: Vec<Tp>,
    /// Per partition, the offset after the last message read.
    next_offset: FastMap<Tp, i64>,
    /// Why the loader must stop.
    fatal: Option<Error>,
    ingested_at_us: i64,
}

/// What the consumer thread and its callbacks use.
struct Env {
    rt: Handle,
    committer: Committer,
    group: String,
    health: Arc<m::Health>,
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
    let producer = dead_letter_producer(&opts)?;
    let marks = Marks::Offsets {
        group: opts.kafka.group_id.clone(),
    };
    let setup = Setup {
        committer: &committer,
        rt: &rt,
        marks: &marks,
        max_message_bytes: opts.limits.max_message_bytes(),
        aggregates: &opts.aggregates,
        table_definitions: &opts.table_definitions,
        producer: producer.as_ref(),
    };
    let mut pipes = Vec::new();
    let mut writers = Vec::new();
    let mut by_topic = FastMap::default();
    for (i, cfg) in opts.pipelines.iter().enumerate() {
        let (pipe, writer) = Pipe::open(i, cfg, &setup)?;
        writers.push(writer);
        for t in &cfg.topics {
            if by_topic.insert(t.clone(), i).is_some() {
                return Err(Error::Config(format!(
                    "topic {t} feeds two pipelines; give each topic one table"
                )));
            }
        }
        pipes.push(pipe);
    }
    let state = Arc::new(Mutex::new(State {
        pipes,
        by_topic,
        assigned: Vec::new(),
        next_offset: FastMap::default(),
        fatal: None,
        ingested_at_us: chrono::Utc::now().timestamp_micros(),
    }));
    let consumer = connect::connect(&opts, &state, &env)?;
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
    connect::close_consumer(consumer);
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

/// The producer of the dead-letter topics, when a pipeline has one.
fn dead_letter_producer(opts: &RunOptions) -> Result<Option<FutureProducer>> {
    if !opts
        .pipelines
        .iter()
        .any(|p| p.dead_letter_topic().is_some())
    {
        return Ok(None);
    }
    connect::producer_config(&opts.kafka)
        .create()
        .map(Some)
        .map_err(|e| Error::kafka("creating the dead-letter producer", e))
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
    .map_err(|e| Error::Internal(format!("loader thread: {e}")))?
}

/// How long a loader waits without any partition before it says so (and again every as
/// long while it goes on).
const UNASSIGNED_WARNING: Duration = Duration::from_secs(60);

/// The consumer loop's own bookkeeping between polls.
struct Loop {
    /// Polls since the ingestion clock was last read.
    since_clock: u32,
    last_drain_check: Instant,
    /// While no partition is assigned: since when, and when that was last reported.
    unassigned: Option<(Instant, Instant)>,
    /// The partition of the last message (messages come in runs from one partition).
    tp: Tp,
}

fn consume_loop(
    consumer: &BaseConsumer<Ctx>,
    state: &Arc<Mutex<State>>,
    env: &Arc<Env>,
    opts: &RunOptions,
    shutdown: &AtomicBool,
) -> Result<()> {
    let mut lp = Loop {
        since_clock: 0,
        last_drain_check: Instant::now(),
        unassigned: None,
        tp: (String::new(), -1),
    };
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
        lp.since_clock += 1;
        if lp.since_clock >= 512 {
            lp.since_clock = 0;
            st.ingested_at_us = chrono::Utc::now().timestamp_micros();
        }
        let idle = match polled {
            None | Some(Err(KafkaError::PartitionEOF(_))) => true,
            Some(Err(e)) => {
                m::ConsumerFailed { error: &e }.emit();
                false
            }
            Some(Ok(msg)) => {
                if let Err(e) = st.on_message(&msg, &mut lp.tp, consumer, env) {
                    // No dead-letter table: commit what came before, then stop.
                    st.flush_all_and_wait(consumer, env);
                    return Err(e);
                }
                false
            }
        };
        if !idle && !lp.since_clock.is_multiple_of(64) {
            continue;
        }
        st.housekeeping(consumer, env);
        lp.watch_assignment(&st, env);
        if opts.until_drained && idle && lp.drain_check_due() && drain::drained(consumer, &st) {
            tracing::info!("every assigned partition is read to its end");
            return Ok(());
        }
    }
}

impl Loop {
    /// Warns while no partition is assigned, once every [`UNASSIGNED_WARNING`].
    fn watch_assignment(&mut self, st: &State, env: &Env) {
        if !st.assigned.is_empty() {
            self.unassigned = None;
            return;
        }
        let now = Instant::now();
        let (since, reported) = self.unassigned.get_or_insert((now, now));
        if now - *reported >= UNASSIGNED_WARNING {
            *reported = now;
            tracing::warn!(
                group = %env.group,
                waiting_s = (now - *since).as_secs(),
                "no partition assigned: the group has more members than the topics have \
                 partitions, or the broker's coordinator lost the assignment; still waiting"
            );
        }
    }

    /// Whether to check for the end of the partitions now (at most every 200 ms).
    fn drain_check_due(&mut self) -> bool {
        if self.last_drain_check.elapsed() < Duration::from_millis(200) {
            return false;
        }
        self.last_drain_check = Instant::now();
        true
    }
}

/// A message's headers, owned (for dead letters and the transform stage).
fn owned_headers(msg: &BorrowedMessage<'_>) -> OwnedHeaders {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

impl State {
    /// Hands a message to its pipeline, and starts the pipeline's flush when its batch is
    /// full.
    fn on_message<C: ConsumerContext>(
        &mut self,
        msg: &BorrowedMessage<'_>,
        tp: &mut Tp,
        consumer: &BaseConsumer<C>,
        env: &Env,
    ) -> Result<()> {
        if tp.1 != msg.partition() || tp.0 != msg.topic() {
            *tp = (msg.topic().to_string(), msg.partition());
        }
        let offset = msg.offset();
        let Some(&i) = self.by_topic.get(&tp.0) else {
            return Ok(());
        };
        if self.pipes[i].rewind_at.is_some() {
            return Ok(()); // fetched before the hold; read again after the rewind
        }
        self.advance(tp, offset);
        let meta = RecordMeta {
            topic: &tp.0,
            partition: Some(tp.1),
            offset: Some(offset),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key(),
            ingested_at_us: self.ingested_at_us,
        };
        let payload = msg.payload().map(Payload::from);
        self.pipes[i].process(tp, offset, payload, &meta, || owned_headers(msg))?;
        if self.pipes[i].full() {
            self.wait_in_flight(i, consumer, env);
            self.pipes[i].start_flush(false);
        }
        Ok(())
    }

    /// Records that `tp` was read to `offset`, noting offsets Kafka no longer has.
    fn advance(&mut self, tp: &Tp, offset: i64) {
        match self.next_offset.get_mut(tp) {
            Some(next) => {
                if offset > *next {
                    m::OffsetsSkipped {
                        topic: &tp.0,
                        partition: tp.1,
                        expected: *next,
                        got: offset,
                    }
                    .emit();
                }
                *next = offset + 1;
            }
            None => {
                self.next_offset.insert(tp.clone(), offset + 1);
            }
        }
    }

    /// Between messages, every few dozen polls: publishes the meters, takes the outcomes of
    /// flushes, rewinds what is due, reloads tables' metadata, and flushes due batches.
    fn housekeeping<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, env: &Env) {
        for p in &mut self.pipes {
            p.meters.publish();
        }
        self.drain_outcomes(consumer, env);
        self.rewind_due(consumer, env);
        for p in &mut self.pipes {
            p.refresh(&env.committer, &env.rt);
        }
        let now = Instant::now();
        for p in &mut self.pipes {
            if p.due(now) && p.in_flight.is_none() {
                p.start_flush(false);
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
                    .get_or_insert(Error::Internal("writer task stopped".into()));
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
        let Some((batch, positions)) = self.pipes[i].in_flight.take() else {
            return;
        };
        debug_assert_eq!(batch, o.batch);
        match o.result {
            Ok(f) => {
                self.pipes[i].committed(f);
                env.health.committed();
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
                self.pipes[i].totals.rewinds += 1;
                let pause = self.pause_after(i, failure);
                self.hold(i, consumer, pause);
                if pause.is_zero() {
                    self.rewind_due(consumer, env);
                }
            }
        }
    }

    /// How long pipeline `i` waits before it rewinds after `failure`; a failure not to be
    /// retried (again) stops the loader.
    fn pause_after(&mut self, i: usize, failure: FlushError) -> Duration {
        let pipe = &mut self.pipes[i];
        let error = match failure {
            FlushError::Fenced(e) => {
                m::BatchFenced {
                    table: &pipe.name,
                    error: &e,
                }
                .emit();
                return Duration::ZERO;
            }
            FlushError::Failed(e) => e,
        };
        pipe.failures += 1;
        let class = error.retry();
        let attempts = match class {
            Retry::Unknown => {
                pipe.unknown_failures += 1;
                pipe.unknown_failures
            }
            _ => pipe.failures,
        };
        let next = after_failure(class, attempts);
        m::FlushFailed {
            table: &pipe.name,
            error: &error,
            class,
            next: &next,
        }
        .emit();
        match next {
            Next::RetryIn(pause) => pause,
            Next::Stop(verdict) => {
                self.fatal.get_or_insert(Error::Stopped {
                    table: pipe.name.clone(),
                    source: Box::new(error),
                    verdict,
                });
                // Its messages are ignored until the loader stops (next poll).
                STOPPING
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
}

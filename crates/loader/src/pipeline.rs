//! A pipeline: one table (with its dead-letter and aggregate tables) fed by a source, Kafka or
//! the lines of a load. The source hands it one message at a time ([`Pipe::process`]); it
//! skips what its tables hold, decodes the rest (the decode stage), passes full chunks through
//! the transform stage to its writer task (write, then commit on flush), and keeps the batch:
//! offset ranges per table and the dead letters.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use floe_lake::{Committer, parse_table_ident};
use floe_schema::{DecodeError, RecordMeta, TableDefinition};
use iceberg::TableIdent;
use iceberg::spec::TableMetadata;
use rdkafka::producer::FutureProducer;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::aggregates::{Aggregation, RowRouting};
use crate::batch::{
    Batch, FastMap, Tp, offset_ranges, retain_rows, take_raw_routing, take_routing,
};
use crate::commit::{FlushJob, Flushed, LoadProgress, Mark, Marks};
use crate::config::PipelineConfig;
use crate::dead_letters::{Headers, Rejects};
use crate::decode::Decoding;
use crate::telemetry::{self, Event, Meters};
use crate::transform::Staged;
use crate::write::{Outcome, ToWriter, Writer};
use crate::{Error, Result};

/// Chunks queued per pipeline before the source waits (back-pressure).
const CHANNEL_CHUNKS: usize = 8;

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
    /// Messages the raw table held, read again only for their dead letters, that decoded.
    pub rechecked: u64,
    /// Rejected messages by error kind (dead letters, or not kept when the dead-letter table
    /// held them already).
    pub rejected: BTreeMap<&'static str, u64>,
}

/// What a pipeline is opened with beside its own configuration.
pub(crate) struct Setup<'a> {
    pub committer: &'a Committer,
    pub rt: &'a Handle,
    /// What the commits record beside the rows.
    pub marks: &'a Marks,
    /// A larger message is a dead letter `too_large`.
    pub max_message_bytes: usize,
    pub aggregates: &'a [floe_aggregate::AggregateDef],
    pub table_definitions: &'a [TableDefinition],
    /// The dead-letter producer, when some pipeline has a dead-letter topic.
    pub producer: Option<&'a FutureProducer>,
}

pub(crate) struct Pipe {
    pub cfg: PipelineConfig,
    pub name: String,
    pub raw: TableIdent,
    pub dlq: Option<TableIdent>,
    pub aggs: Vec<TableIdent>,
    /// The decoder and transform stage, kept current with the table.
    decoding: Decoding,
    /// A metadata reload in progress (the table may be changed by other tools at any time).
    refreshing: Option<JoinHandle<floe_lake::Result<TableMetadata>>>,
    pub last_refresh: Instant,
    rejects: Rejects,
    /// Why this pipeline must stop (a row rejected with no dead-letter table); its batch is
    /// already discarded.
    pub stop: Option<Error>,
    pub batch: Batch,
    /// The batch being committed, with the positions its partitions resume from after it.
    pub in_flight: Option<(u64, BTreeMap<Tp, i64>)>,
    to_writer: tokio::sync::mpsc::Sender<ToWriter>,
    pub outcomes: mpsc::Receiver<Outcome>,
    /// Per table, the offset from which messages are still to be committed.
    pub raw_from: FastMap<Tp, i64>,
    pub dlq_from: FastMap<Tp, i64>,
    /// Per aggregate table, the offset from which messages are still to be aggregated.
    pub agg_from: Vec<FastMap<Tp, i64>>,
    /// Failed flushes (and failed attempts to rewind after them) in a row: the backoff.
    pub failures: u32,
    /// Failed flushes in a row whose failure's class is unknown (bounded).
    pub unknown_failures: u32,
    /// A failed flush was discarded: the pipeline's partitions are paused and its messages
    /// ignored until, at this instant, they are sought back to the tables' committed offsets.
    /// Retried (later each time) while the tables cannot be read.
    pub rewind_at: Option<Instant>,
    pub totals: PipelineTotals,
    pub meters: Meters,
    /// Decoded rows handed to the writer at a time.
    chunk_rows: usize,
    /// A larger message is a dead letter `too_large`.
    max_message_bytes: usize,
}

/// A message's value as the source read it.
#[derive(Clone, Copy)]
pub(crate) struct Payload<'a> {
    pub bytes: &'a [u8],
    /// The whole value's size: more than `bytes` when the source kept only its start (a line
    /// over the size limit, read through without being held).
    pub size: u64,
}

impl<'a> From<&'a [u8]> for Payload<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            size: bytes.len() as u64,
        }
    }
}

impl Pipe {
    /// Opens pipeline `index` of the config (see [`Pipe::start`]).
    pub fn open(
        index: usize,
        cfg: &PipelineConfig,
        s: &Setup<'_>,
    ) -> Result<(Self, JoinHandle<()>)> {
        cfg.validate(index).map_err(Error::Config)?;
        Self::start(cfg, &format!("pipelines[{index}]"), s)
    }

    /// Opens a pipeline configured in `section`: checks its table, creates its dead-letter
    /// and aggregate tables when missing, builds its decoder, and starts its writer task.
    pub fn start(
        cfg: &PipelineConfig,
        section: &str,
        s: &Setup<'_>,
    ) -> Result<(Self, JoinHandle<()>)> {
        let raw = parse_table_ident(&cfg.table)?;
        let catalog = s.committer.catalog().clone();
        let (_, metadata) = s.rt.block_on(catalog.load_metadata(&raw))?;
        floe_lake::compat::check_metadata(&raw.to_string(), &metadata)?;
        let dlq = match cfg.dead_letter_table() {
            Some(name) => {
                let def = TableDefinition::dead_letter(&name)?;
                s.rt.block_on(catalog.create_table_if_missing(&def))?;
                Some(parse_table_ident(&name)?)
            }
            None => None,
        };
        let name = raw.to_string();
        let aggregation = Self::aggregation(section, cfg, &metadata, s)?;
        let decoding = Decoding::new(&name, metadata, cfg.mapping(), section)?;
        let aggs: Vec<TableIdent> = aggregation
            .as_ref()
            .map(|a| a.tables().iter().map(|t| t.ident.clone()).collect())
            .unwrap_or_default();
        let (to_writer, from_source) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let (outcome_tx, outcomes) = mpsc::channel();
        let writer = Writer::new(
            s.committer.clone(),
            s.marks.clone(),
            &raw,
            dlq.clone(),
            cfg,
            s.producer.cloned(),
            aggregation,
        );
        let task = s.rt.spawn(writer.run(from_source, outcome_tx));
        let pipe = Pipe {
            cfg: cfg.clone(),
            rejects: Rejects::new(&name, dlq.is_some()),
            meters: Meters::new(&name),
            name,
            raw,
            dlq,
            decoding,
            refreshing: None,
            last_refresh: Instant::now(),
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
            totals: PipelineTotals::default(),
            chunk_rows: cfg.flush.chunk_rows.max(1),
            max_message_bytes: s.max_message_bytes.max(1),
        };
        Ok((pipe, task))
    }

    /// The aggregates the pipeline configured in `section` runs, their tables created when
    /// missing.
    fn aggregation(
        section: &str,
        cfg: &PipelineConfig,
        metadata: &TableMetadata,
        s: &Setup<'_>,
    ) -> Result<Option<Aggregation>> {
        let selected =
            crate::aggregates::select(s.aggregates, &cfg.table, cfg.aggregates.as_deref())?;
        if selected.is_empty() {
            return Ok(None);
        }
        let columns = crate::aggregates::dedup_columns(
            &cfg.table,
            metadata,
            &cfg.dedup_column,
            cfg.topics.len(),
        )
        .map_err(|e| Error::Config(format!("{section}: {e}")))?;
        let tables = s.rt.block_on(crate::aggregates::ensure_tables(
            s.committer,
            &selected,
            s.table_definitions,
        ))?;
        tracing::info!(table = %cfg.table, aggregates = ?tables.iter().map(|t| t.ident.to_string()).collect::<Vec<_>>(), "aggregating");
        Ok(Some(Aggregation::new(
            &cfg.table,
            tables,
            columns,
            cfg.topics.clone(),
            s.committer.catalog().clone(),
            crate::aggregates::Tuning {
                dedup_window: cfg.dedup_window,
                dedup_max_keys: cfg.dedup_max_keys,
                rows_form_share: cfg.aggregate_rows_form_share,
            },
        )))
    }

    /// Tells the writer task about partitions assigned (dedup state to rebuild below these
    /// offsets) or revoked.
    pub fn tell_writer(&self, msg: ToWriter) {
        let _ = self.to_writer.blocking_send(msg);
    }

    /// Drops the batch not yet sent to be committed.
    pub fn discard(&mut self) {
        self.decoding.clear();
        self.rejects.pending.clear();
        let id = self.batch.id;
        if self.batch.chunks_sent || !self.aggs.is_empty() {
            self.tell_writer(ToWriter::Discard { batch: id });
        }
        self.batch = Batch::new(id + 1, self.aggs.len());
    }

    /// Sends the batch to be committed; `false` when nothing to do or a flush is in flight.
    /// `last_before_stop`: the partitions are about to be revoked or the loader to stop.
    pub fn start_flush(&mut self, last_before_stop: bool) -> bool {
        // With nothing new, a last flush still goes when a table may hold offsets it has not
        // recorded yet (the dead-letter table's, `flush.idle_offsets_interval`).
        let records_idle_offsets = last_before_stop && self.dlq.is_some();
        if self.batch.messages == 0 && !records_idle_offsets {
            return false;
        }
        self.send_flush(last_before_stop, None)
    }

    /// Sends a load's batch to be committed, recording that the load read every line before
    /// `to.next` (`to.done`: its whole input); also with nothing new, so the end of a load
    /// is recorded. `false` when a flush is in flight or the pipeline must stop.
    pub fn start_load_flush(&mut self, to: Mark) -> bool {
        self.send_flush(true, Some(to))
    }

    fn send_flush(&mut self, last_before_stop: bool, load_to: Option<Mark>) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let (last, last_routing) = if self.stop.is_some() || self.decoding.decoder.is_empty() {
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
        let job = FlushJob {
            batch: b.id,
            metadata: self.decoding.metadata().clone(),
            last,
            last_routing,
            dead: std::mem::take(&mut self.rejects.pending),
            raw_ranges: offset_ranges(&b.raw_ranges),
            dlq_ranges: offset_ranges(&b.dlq_ranges),
            agg_ranges: b.agg_ranges.iter().map(offset_ranges).collect(),
            last_before_stop,
            load_to,
        };
        self.in_flight = Some((b.id, b.positions()));
        self.tell_writer(ToWriter::Flush(Box::new(job)));
        // A new batch starts: adopt a newer schema now (the decoder is empty).
        self.decoding.next_batch();
        true
    }

    /// The decode stage for the message at `offset` of `tp` (`payload` `None`: a
    /// tombstone): skipped when every table holds it; else decoded, or only checked when just
    /// the dead-letter table needs it; a rejected one is a dead letter (or, without a
    /// dead-letter table, the error that stops loading); and recorded in the batch for the
    /// tables that still need it. `headers` gives the message's headers, asked only when
    /// they are kept.
    pub fn process(
        &mut self,
        tp: &Tp,
        offset: i64,
        payload: Option<Payload<'_>>,
        meta: &RecordMeta<'_>,
        headers: impl Fn() -> Headers,
    ) -> Result<()> {
        self.meters.pending.received += 1;
        self.totals.received += 1;
        floe_lake::fail::point("decode");
        let needs = self.needed_by(tp, offset);
        if !needs.raw && !needs.dlq && needs.aggs == 0 {
            self.totals.already_committed += 1;
            self.meters.pending.skipped += 1;
            return Ok(());
        }
        self.batch.started.get_or_insert_with(Instant::now);
        self.batch.messages += 1;
        let rejected = match payload {
            None => {
                self.totals.tombstones += 1;
                self.meters.pending.tombstones += 1;
                None
            }
            Some(p) => self.decode(tp, p, meta, &headers, needs).err(),
        };
        if let Some(err) = rejected {
            let bytes = payload.map_or(&[][..], |p| p.bytes);
            if let Err(e) = self
                .rejects
                .decode_failed(&err, meta, bytes, &headers, needs.dlq)
            {
                self.batch.messages -= 1;
                return Err(e);
            }
            self.rejected(err.kind.as_str());
        } else if payload.is_some() && !needs.raw && needs.aggs == 0 {
            self.totals.rechecked += 1;
        } else if payload.is_some() && needs.raw && self.decoding.stage.is_none() {
            // (With a transform stage, rows are counted once their chunk passed it.)
            self.meters.pending.accepted += 1;
        }
        self.batch
            .record(tp, offset, needs.raw, needs.dlq, needs.aggs);
        // Chunks of the next batch may go while a flush is in flight: the writer handles them
        // in order, and a rewind discards them by batch id.
        if self.decoding.decoder.len() >= self.chunk_rows {
            self.chunk_full();
            if let Some(e) = self.stop.take() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Which tables still need the message at `offset` of `tp`: the raw table, the
    /// dead-letter table, and the aggregates (bit k: aggregate table k).
    fn needed_by(&self, tp: &Tp, offset: i64) -> Needs {
        let raw_from = self.raw_from.get(tp).copied().unwrap_or(i64::MIN);
        let dlq_from = self.dlq_from.get(tp).copied().unwrap_or(i64::MAX);
        let mut to_aggs: u64 = 0;
        for (k, from) in self.agg_from.iter().enumerate() {
            if offset >= from.get(tp).copied().unwrap_or(i64::MIN) {
                to_aggs |= 1 << k;
            }
        }
        Needs {
            raw: offset >= raw_from,
            dlq: self.dlq.is_some() && offset >= dlq_from,
            aggs: to_aggs,
        }
    }

    /// Decodes a message into the batch (or only checks it when no table takes its row).
    fn decode(
        &mut self,
        tp: &Tp,
        payload: Payload<'_>,
        meta: &RecordMeta<'_>,
        headers: &impl Fn() -> Headers,
        needs: Needs,
    ) -> std::result::Result<(), DecodeError> {
        let bytes = payload.bytes;
        self.batch.bytes += bytes.len() as u64;
        self.meters.pending.bytes += bytes.len() as u64;
        crate::decode::check_size(payload.size, self.max_message_bytes)?;
        // With a transform stage, a message only the dead-letter table still needs is
        // decoded too: its rules decide whether it is a dead letter.
        let keep = needs.raw || needs.aggs != 0 || (needs.dlq && self.decoding.stage.is_some());
        if !keep {
            return self.decoding.decoder.check(bytes, meta);
        }
        self.decoding.decoder.decode(bytes, meta)?;
        if let Some(stage) = &mut self.decoding.stage {
            stage.push(
                meta,
                bytes,
                headers(),
                needs.raw,
                needs.dlq,
                needs.aggs != 0,
            );
        }
        if let Some(r) = &mut self.batch.routing {
            let t = self.cfg.topics.iter().position(|t| *t == tp.0).unwrap_or(0);
            r.parts.push((t as u16, tp.1));
            if let Some(raw) = &mut r.raw {
                raw.push(needs.raw);
            }
            for (k, m) in r.aggs.iter_mut().enumerate() {
                if let Some(m) = m {
                    m.push(needs.aggs & (1 << k) != 0);
                }
            }
        }
        Ok(())
    }

    /// Hands the decoded rows over as a chunk, through the transform stage when the mapping
    /// has computed columns or rules: rejected rows become dead letters, and rows decoded only
    /// to learn their dead-letter status drop out. `None` when no row is left. A rejected row
    /// with no dead-letter table discards the batch and records why the loader must stop.
    fn take_chunk(&mut self) -> Option<(RecordBatch, Option<Box<RowRouting>>)> {
        let rows = self.decoding.decoder.finish();
        telemetry::MappingApplied {
            table: &self.name,
            counts: self.decoding.decoder.take_mapping_counts(),
        }
        .emit();
        let Some(stage) = self.decoding.stage.as_mut() else {
            return Some((rows, take_routing(&mut self.batch.routing)));
        };
        let staged = stage.apply(rows, chrono::Utc::now().timestamp_micros());
        let routing = take_raw_routing(&mut self.batch.routing);
        match staged
            .map_err(Error::Transform)
            .and_then(|s| self.staged(s, routing))
        {
            Ok(chunk) => chunk,
            Err(e) => {
                self.halt(e);
                None
            }
        }
    }

    /// A full chunk goes to the writer (through the transform stage, if any: its
    /// expressions cost a few nanoseconds per row next to decoding; on a worker thread, the
    /// hand-over and its waits cost more than they saved).
    fn chunk_full(&mut self) {
        if let Some((rows, routing)) = self.take_chunk() {
            self.batch.chunks_sent = true;
            self.tell_writer(ToWriter::Chunk {
                batch: self.batch.id,
                rows,
                metadata: self.decoding.metadata().clone(),
                routing,
            });
        }
    }

    /// A transformed chunk: rejected rows become dead letters (or stop the pipeline), the
    /// rest go on with their routing.
    fn staged(
        &mut self,
        staged: Staged,
        mut routing: Option<RowRouting>,
    ) -> Result<Option<(RecordBatch, Option<Box<RowRouting>>)>> {
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
            let (kind, to_dlq) = (r.why.kind, r.source.to_dlq());
            self.rejects.transform_rejected(r, to_dlq)?;
            self.rejected(kind);
        }
        // `staged.rows` holds the passed rows; keep those that go on.
        let of_passed: Vec<bool> = (0..goes_on.len())
            .filter(|&i| kept(i))
            .map(|i| goes_on[i])
            .collect();
        let rows = if of_passed.iter().all(|g| *g) {
            staged.rows
        } else {
            arrow_select::filter::filter_record_batch(
                &staged.rows,
                &arrow_array::BooleanArray::from(of_passed),
            )
            .map_err(|e| Error::Transform(e.to_string()))?
        };
        if let Some(r) = &mut routing {
            retain_rows(&mut r.parts, &goes_on);
            for mask in r.raw.iter_mut().chain(r.aggs.iter_mut().flatten()) {
                retain_rows(mask, &goes_on);
            }
        }
        let routing = take_routing(&mut routing);
        Ok((rows.num_rows() > 0).then_some((rows, routing)))
    }

    /// Counts a rejected message of error kind `kind`.
    fn rejected(&mut self, kind: &'static str) {
        self.meters.dead_lettered(kind);
        *self.totals.rejected.entry(kind).or_default() += 1;
    }

    /// Drops the batch and records why the pipeline must stop.
    fn halt(&mut self, e: Error) {
        tracing::error!(table = %self.name, error = %e, "stopping: the batch is not committed");
        self.discard();
        self.stop.get_or_insert(e);
    }

    /// Adopts what a committed batch did: counts it, and takes the table's metadata after
    /// the commit.
    pub fn committed(&mut self, f: Flushed) {
        self.failures = 0;
        self.unknown_failures = 0;
        self.totals.accepted += f.rows;
        self.totals.dead_lettered += f.dead_letters;
        self.totals.commits += 1;
        telemetry::BatchCommitted {
            table: &self.name,
            rows: f.rows,
            dead_letters: f.dead_letters,
            files: f.files,
            bytes: f.bytes,
            newest_event_us: f.newest_event_us,
        }
        .emit();
        self.last_refresh = Instant::now();
        self.offer(f.metadata);
    }

    /// Resumes a load: lines before the tables' marks are skipped (or, for the dead-letter
    /// table only, read again just for their dead letters), and dead letters name the load.
    pub fn resume_load(&mut self, tp: &Tp, load: &LoadProgress) {
        self.raw_from.insert(tp.clone(), load.target.next);
        self.dlq_from.insert(tp.clone(), load.dead.next);
        self.rejects.set_load(Some(load.id.clone()));
    }

    /// Reloads the raw table's metadata now, between batches (a load's next batch decodes
    /// against the table as other tools left it).
    pub fn reload(&mut self, committer: &Committer, rt: &Handle) -> Result<()> {
        let (_, meta) = rt.block_on(committer.catalog().load_metadata(&self.raw))?;
        self.last_refresh = Instant::now();
        self.offer(meta);
        Ok(())
    }

    /// Unknown JSON fields skipped since the last call.
    pub fn take_unknown_fields(&mut self) -> u64 {
        self.decoding.decoder.take_unknown_fields()
    }

    /// Takes metadata newer than what the pipeline has (after a commit or a reload).
    pub fn offer(&mut self, meta: TableMetadata) {
        let empty = self.batch.messages == 0;
        self.decoding.offer(meta, empty);
    }

    /// Starts a reload of the raw table's metadata once per flush interval; takes a finished
    /// one.
    pub fn refresh(&mut self, committer: &Committer, rt: &Handle) {
        if let Some(h) = &self.refreshing {
            if !h.is_finished() {
                return;
            }
            let h = self.refreshing.take().expect("checked above");
            match rt.block_on(h) {
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
        let catalog = committer.catalog().clone();
        let ident = self.raw.clone();
        self.refreshing =
            Some(rt.spawn(async move { catalog.load_metadata(&ident).await.map(|(_, m)| m) }));
    }

    /// The batch reached its row or byte limit.
    pub fn full(&self) -> bool {
        self.batch.messages >= self.cfg.flush.max_rows
            || self.batch.bytes >= self.cfg.flush.max_bytes.as_u64()
    }

    /// The batch is to be committed now: full, old enough, or cut for a schema change.
    pub fn due(&self, now: Instant) -> bool {
        self.full()
            || (self.decoding.change_pending() && self.batch.messages > 0)
            || self
                .batch
                .started
                .is_some_and(|s| now.duration_since(s) >= self.cfg.flush.interval)
    }
}

/// Which tables still need a message.
#[derive(Clone, Copy)]
struct Needs {
    raw: bool,
    dlq: bool,
    /// Bit k: aggregate table k.
    aggs: u64,
}

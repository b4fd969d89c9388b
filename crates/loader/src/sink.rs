//! A table sink: one target table and its dead-letter table.
//!
//! Accepted rows are decoded into Arrow and handed to the Parquet writer every
//! `encode_rows` rows, so memory holds at most one chunk of decoded rows plus the open row
//! groups, whatever the flush size. [`TableSink::flush`] closes the files and commits them,
//! then commits the dead letters to the dead-letter table; each commit carries the offsets it
//! covers, so a retried flush never lands twice.

use std::time::{Duration, Instant};

use floe_lake::commit::{CommitRequest, OffsetsUpdate};
use floe_lake::loads::{LoadMark, LoadUpdate, load_mark};
use floe_lake::{Committer, DataWriter, parse_table_ident};
use floe_schema::{DecodeError, RecordMeta, TableDefinition};
use iceberg::TableIdent;
use iceberg::spec::TableMetadata;

use crate::Result;
use crate::dead_letters::Rejects;
use crate::decode::{Decoding, check_size};
use crate::telemetry::{self, Event};

/// Sink settings.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Target table (`lake.events`).
    pub table: String,
    /// Dead-letter table; `None` means a rejected message stops loading.
    pub dead_letter_table: Option<String>,
    /// Create the dead-letter table from the template if missing.
    pub create_dead_letter_table: bool,
    /// Decoded rows handed to the Parquet encoder at a time.
    pub encode_rows: usize,
    /// Re-read the table's metadata at the start of a batch when it is older than this, so
    /// schema changes made by other tools apply from the next batch on.
    pub refresh_interval: Duration,
    /// A pipeline's mapping laid over the table's own (envelope, projections, computed
    /// columns, rules).
    pub mapping: floe_schema::Mapping,
    /// Where `mapping` is configured, for error messages (`pipelines[0]`).
    pub section: String,
    /// A larger message is a dead letter `too_large` (`limits.max_message_bytes`).
    pub max_message_bytes: usize,
}

impl SinkOptions {
    /// Options for `table` with dead letters in `<table>_dead_letters`.
    pub fn new(table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            dead_letter_table: Some(crate::dead_letters::default_table(&table)),
            table,
            create_dead_letter_table: true,
            encode_rows: 65_536,
            refresh_interval: Duration::from_secs(5),
            mapping: floe_schema::Mapping::default(),
            section: "pipeline".into(),
            max_message_bytes: crate::config::LimitsConfig::default().max_message_bytes(),
        }
    }
}

/// What a flush committed.
#[derive(Debug, Clone, Default)]
pub struct FlushReport {
    /// Rows committed to the table.
    pub rows: u64,
    /// Dead letters committed to the dead-letter table.
    pub dead_letters: u64,
    /// Data files added to the table.
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// The table's new snapshot, if a commit happened.
    pub snapshot_id: Option<i64>,
    /// The dead-letter table's new snapshot, if one happened.
    pub dead_letter_snapshot_id: Option<i64>,
    /// Commit attempts beyond the first (races lost).
    pub conflicts: u32,
    /// Time spent committing.
    pub commit_time: Duration,
}

struct DeadLetterTable {
    ident: TableIdent,
    name: String,
    metadata: TableMetadata,
}

/// How far a load got in one table.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The next line to read.
    next: i64,
    /// The whole input is in the table.
    done: bool,
}

impl Progress {
    /// Where a table with `mark` stands (a table without a mark: line 1).
    fn of(mark: Option<&LoadMark>) -> Self {
        mark.map_or(
            Self {
                next: 1,
                done: false,
            },
            |m| Self {
                next: m.next,
                done: m.done,
            },
        )
    }
}

/// A load (`floe load`) in progress: its id and how far it got in each table.
#[derive(Debug, Clone)]
struct Load {
    id: String,
    source: String,
    target: Progress,
    /// Without a dead-letter table: every line, done.
    dead: Progress,
}

impl Load {
    /// What a table at `at` records when the load got to `load_to`; `None` when it has
    /// nothing new to record.
    fn update(
        &self,
        load_to: Option<(i64, bool)>,
        at: Progress,
        has_rows: bool,
    ) -> Option<LoadUpdate> {
        let (next, done) = load_to?;
        let next = next.max(at.next);
        (has_rows || next > at.next || done != at.done).then(|| LoadUpdate {
            id: self.id.clone(),
            source: self.source.clone(),
            base: at.next,
            next,
            done,
        })
    }
}

impl From<&LoadUpdate> for Progress {
    fn from(u: &LoadUpdate) -> Self {
        Self {
            next: u.next,
            done: u.done,
        }
    }
}

/// Where a load stands in the sink's tables when it starts.
#[derive(Debug, Clone)]
pub struct LoadStatus {
    /// The target table's mark of the load.
    pub target: Option<LoadMark>,
    /// The dead-letter table's mark (`None` also without a dead-letter table).
    pub dead_letters: Option<LoadMark>,
    /// Lines before this one are in both tables: reading resumes here (1 for a new load).
    pub resume_at: i64,
    /// Both tables hold the whole load: nothing to do.
    pub done: bool,
}

/// What [`TableSink::push_line`] did with a line of a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinePush {
    /// Both tables hold it already (an earlier run of the load committed it).
    Skipped,
    /// Decoded into the batch.
    Accepted,
    /// Rejected: a dead letter (or, for a line the target table holds, re-checked only to
    /// find its dead letter).
    DeadLettered(DecodeError),
    /// The target table holds it and it decodes: nothing more to do.
    AlreadyLoaded,
}

/// Decodes messages for one table and commits them with their dead letters.
pub struct TableSink {
    committer: Committer,
    ident: TableIdent,
    name: String,
    /// The decoder and transform stage, kept current with the table.
    decoding: Decoding,
    /// Kinds of the rows the transform stage rejected since the last call to
    /// [`TableSink::take_rejected`].
    rejected: Vec<&'static str>,
    writer: Option<DataWriter>,
    dead: Option<DeadLetterTable>,
    /// The batch's dead letters (the stop rule without a dead-letter table).
    rejects: Rejects,
    encode_rows: usize,
    batch_rows: u64,
    batch_bytes: u64,
    batch_started: Option<Instant>,
    refresh_interval: Duration,
    refreshed_at: Instant,
    load: Option<Load>,
    max_message_bytes: usize,
}

impl TableSink {
    /// Opens the sink: loads the table (it must exist) and the dead-letter table (created from
    /// the template when missing and allowed).
    pub async fn open(committer: Committer, opts: &SinkOptions) -> Result<Self> {
        let catalog = committer.catalog().clone();
        let ident = parse_table_ident(&opts.table)?;
        let (_, metadata) = catalog.load_metadata(&ident).await?;
        let name = ident.to_string();
        floe_lake::compat::check_metadata(&name, &metadata)?;
        let decoding = Decoding::new(&name, metadata, opts.mapping.clone(), &opts.section)?;
        let dead = match &opts.dead_letter_table {
            None => None,
            Some(name) => {
                let dl_ident = parse_table_ident(name)?;
                let metadata = if opts.create_dead_letter_table {
                    let def = TableDefinition::dead_letter(name)?;
                    catalog
                        .create_table_if_missing(&def)
                        .await?
                        .0
                        .metadata()
                        .clone()
                } else {
                    catalog.load_metadata(&dl_ident).await?.1
                };
                Some(DeadLetterTable {
                    ident: dl_ident,
                    name: name.clone(),
                    metadata,
                })
            }
        };
        Ok(Self {
            committer,
            rejects: Rejects::new(&name, dead.is_some()),
            name,
            ident,
            decoding,
            rejected: Vec::new(),
            writer: None,
            dead,
            encode_rows: opts.encode_rows.max(1),
            batch_rows: 0,
            batch_bytes: 0,
            batch_started: None,
            refresh_interval: opts.refresh_interval,
            refreshed_at: Instant::now(),
            load: None,
            max_message_bytes: opts.max_message_bytes.max(1),
        })
    }

    /// Starts load `id` (a file's fingerprint, a stream's id) reading `source`: reads how far
    /// earlier runs got in the table and the dead-letter table. From now on every flush
    /// records the load's progress with the data ([`floe_lake::loads`]), and lines must be
    /// pushed with [`TableSink::push_line`].
    pub async fn begin_load(&mut self, id: &str, source: &str) -> Result<LoadStatus> {
        self.refresh().await?;
        let target = load_mark(self.decoding.metadata(), id)?;
        let mut dead_letters = None;
        if let Some(dead) = &mut self.dead {
            dead.metadata = self.committer.catalog().load_metadata(&dead.ident).await?.1;
            if dead
                .metadata
                .current_schema()
                .field_by_name("source_load")
                .is_none()
            {
                // Dead-letter tables created before floe 0.2 tell loads apart by this column.
                let add = floe_lake::evolve::Change::parse_add("source_load:string", false)?;
                floe_lake::evolve::evolve(&self.committer, &dead.ident, &[add], false).await?;
                dead.metadata = self.committer.catalog().load_metadata(&dead.ident).await?.1;
                tracing::info!(table = %dead.name, "added column source_load to the dead-letter table");
            }
            dead_letters = load_mark(&dead.metadata, id)?;
        }
        let target_at = Progress::of(target.as_ref());
        let dead_at = match &self.dead {
            None => Progress {
                next: i64::MAX,
                done: true,
            },
            Some(_) => Progress::of(dead_letters.as_ref()),
        };
        self.rejects.set_load(Some(id.to_string()));
        self.load = Some(Load {
            id: id.to_string(),
            source: source.to_string(),
            target: target_at,
            dead: dead_at,
        });
        Ok(LoadStatus {
            target,
            dead_letters,
            resume_at: target_at.next.min(dead_at.next),
            done: target_at.done && dead_at.done,
        })
    }

    /// Pushes line `meta.offset` of the load begun with [`TableSink::begin_load`]: skipped
    /// when both tables hold it, re-checked for its dead letter when only the target table
    /// does, decoded otherwise.
    /// `truncated` is the line's whole size when the reader kept only its start, the line
    /// being over the size limit (a `too_large` dead letter).
    pub async fn push_line(
        &mut self,
        payload: &[u8],
        truncated: Option<u64>,
        meta: &RecordMeta<'_>,
    ) -> Result<LinePush> {
        let load = self.load.as_ref().expect("push_line after begin_load");
        let line = meta.offset.expect("a load's lines are numbered");
        if line < load.target.next && line < load.dead.next {
            return Ok(LinePush::Skipped);
        }
        let size = truncated.unwrap_or(payload.len() as u64);
        if check_size(size, self.max_message_bytes).is_err() {
            return Ok(match self.push_too_large(payload, size, meta).await? {
                Some(err) => LinePush::DeadLettered(err),
                None => LinePush::Accepted,
            });
        }
        if line < load.target.next {
            self.batch_bytes += payload.len() as u64;
            return Ok(match self.decoding.decoder.check(payload, meta) {
                Ok(()) => LinePush::AlreadyLoaded,
                Err(err) => LinePush::DeadLettered(self.reject(payload, meta, err)?),
            });
        }
        Ok(match self.push(payload, meta).await? {
            None => LinePush::Accepted,
            Some(err) => LinePush::DeadLettered(err),
        })
    }

    /// Re-reads the table's metadata (between batches only) and rebuilds the decoder if
    /// messages decode differently now. Returns whether they do.
    pub async fn refresh(&mut self) -> Result<bool> {
        if self.batch_started.is_some() {
            return Ok(false);
        }
        let (_, metadata) = self.committer.catalog().load_metadata(&self.ident).await?;
        let changed = self.decoding.differs_for(&metadata);
        self.refresh_from(metadata);
        Ok(changed)
    }

    /// The target table's name.
    pub fn table_name(&self) -> &str {
        &self.name
    }

    /// Rows accepted since the last flush.
    pub fn pending_rows(&self) -> u64 {
        self.batch_rows
    }

    /// Dead letters since the last flush.
    pub fn pending_dead_letters(&self) -> usize {
        self.rejects.pending.len()
    }

    /// Payload bytes (accepted and rejected) since the last flush.
    pub fn pending_bytes(&self) -> u64 {
        self.batch_bytes
    }

    /// When the first message of the current batch arrived.
    pub fn batch_started(&self) -> Option<Instant> {
        self.batch_started
    }

    /// The largest message [`Self::push`] decodes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Dead-letters a message of `size` bytes, too large to load, of which `start` is the
    /// beginning (a line read through without being held). Returns what [`Self::push`] does.
    pub async fn push_too_large(
        &mut self,
        start: &[u8],
        size: u64,
        meta: &RecordMeta<'_>,
    ) -> Result<Option<DecodeError>> {
        self.start_batch().await?;
        self.batch_bytes += start.len() as u64;
        let err = check_size(size, self.max_message_bytes).expect_err("over the limit");
        self.reject(start, meta, err).map(Some)
    }

    async fn start_batch(&mut self) -> Result<()> {
        if self.batch_started.is_none() {
            if self.refreshed_at.elapsed() >= self.refresh_interval {
                self.refresh().await?;
            }
            self.batch_started = Some(Instant::now());
        }
        Ok(())
    }

    /// Decodes one message. `Ok(None)` = accepted, `Ok(Some(err))` = dead-lettered, `Err` =
    /// rejected with no dead-letter table (stop), or a write failure.
    pub async fn push(
        &mut self,
        payload: &[u8],
        meta: &RecordMeta<'_>,
    ) -> Result<Option<DecodeError>> {
        if check_size(payload.len() as u64, self.max_message_bytes).is_err() {
            return self
                .push_too_large(payload, payload.len() as u64, meta)
                .await;
        }
        self.start_batch().await?;
        self.batch_bytes += payload.len() as u64;
        match self.decoding.decoder.decode(payload, meta) {
            Ok(()) => {
                self.batch_rows += 1;
                let to_dlq = self.dead.is_some() && !self.dead_letter_held(meta);
                if let Some(stage) = &mut self.decoding.stage {
                    stage.push(meta, payload, Vec::new(), true, to_dlq, false);
                }
                if self.decoding.decoder.len() >= self.encode_rows {
                    self.encode().await?;
                }
                Ok(None)
            }
            Err(err) => self.reject(payload, meta, err).map(Some),
        }
    }

    /// Whether the dead-letter table holds this line's dead letter from an earlier run of
    /// the load.
    fn dead_letter_held(&self, meta: &RecordMeta<'_>) -> bool {
        matches!((&self.load, meta.offset), (Some(load), Some(line)) if line < load.dead.next)
    }

    /// Keeps a dead letter for a rejected message (an error without a dead-letter table).
    fn reject(
        &mut self,
        payload: &[u8],
        meta: &RecordMeta<'_>,
        err: DecodeError,
    ) -> Result<DecodeError> {
        let keep = !self.dead_letter_held(meta);
        self.rejects
            .decode_failed(&err, meta, payload, Vec::new, keep)?;
        Ok(err)
    }

    /// Error kinds of the rows the computed columns and rules rejected since the last call
    /// (known when their chunk is encoded; each is a dead letter, counted in `pending_rows`
    /// until then).
    pub fn take_rejected(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.rejected)
    }

    /// Unknown JSON fields skipped since the last call.
    pub fn take_unknown_fields(&mut self) -> u64 {
        self.decoding.decoder.take_unknown_fields()
    }

    /// Hands decoded rows to the Parquet writer.
    async fn encode(&mut self) -> Result<()> {
        if self.decoding.decoder.is_empty() {
            return Ok(());
        }
        let mut batch = self.decoding.decoder.finish();
        telemetry::MappingApplied {
            table: &self.name,
            counts: self.decoding.decoder.take_mapping_counts(),
        }
        .emit();
        if let Some(stage) = &mut self.decoding.stage {
            let staged = stage
                .apply(batch, chrono::Utc::now().timestamp_micros())
                .map_err(crate::Error::Transform)?;
            for r in staged.rejected {
                let (kind, keep) = (r.why.kind, r.source.to_dlq());
                self.rejects.transform_rejected(r, keep)?;
                self.batch_rows -= 1;
                self.rejected.push(kind);
            }
            batch = staged.rows;
            if batch.num_rows() == 0 {
                return Ok(());
            }
        }
        if self.writer.is_none() {
            self.writer = Some(DataWriter::new(
                self.committer.catalog().file_io(),
                self.decoding.metadata(),
            )?);
        }
        let writer = self.writer.as_mut().expect("just set");
        if let Err(e) = writer.write(&batch).await {
            if let Some(w) = self.writer.take() {
                w.abort().await;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Commits what was pushed since the last flush: rows to the table, then dead letters to
    /// the dead-letter table, each with `offsets` (if any) so the commit is exactly-once.
    pub async fn flush(&mut self, offsets: Option<OffsetsUpdate>) -> Result<FlushReport> {
        self.flush_with(offsets, None).await
    }

    /// Commits what was pushed since [`TableSink::begin_load`] or the last flush, recording
    /// that the load read every line before `next` (and, when `done`, its whole input).
    pub async fn flush_load(&mut self, next: i64, done: bool) -> Result<FlushReport> {
        self.flush_with(None, Some((next, done))).await
    }

    async fn flush_with(
        &mut self,
        offsets: Option<OffsetsUpdate>,
        load_to: Option<(i64, bool)>,
    ) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        self.encode().await?;
        let (files, spec_id) = match self.writer.take() {
            Some(w) => {
                let spec_id = w.spec_id();
                (w.close().await?, Some(spec_id))
            }
            None => (Vec::new(), None),
        };
        report.rows = self.batch_rows;
        report.files = files.len();
        report.bytes = files.iter().map(|f| f.file_size_in_bytes()).sum();
        let target_load = self
            .load
            .as_ref()
            .and_then(|l| l.update(load_to, l.target, !files.is_empty()));
        if !files.is_empty() || offsets.is_some() || target_load.is_some() {
            let mut req = CommitRequest::append(files);
            req.spec_id = spec_id;
            req.offsets = offsets.clone();
            req.load = target_load.clone();
            let done = self.committer.commit(&self.ident, req).await?;
            if let (Some(load), Some(u)) = (&mut self.load, &target_load) {
                load.target = u.into();
            }
            report.snapshot_id = done.snapshot_id.or(report.snapshot_id);
            report.conflicts += done.attempts - 1;
            report.commit_time += done.elapsed;
            self.refresh_from(done.metadata);
        }
        let dead_load = self
            .load
            .as_ref()
            .and_then(|l| l.update(load_to, l.dead, !self.rejects.pending.is_empty()));
        if let Some(dead) = &mut self.dead
            && (!self.rejects.pending.is_empty() || offsets.is_some() || dead_load.is_some())
        {
            let done = crate::dead_letters::commit(
                &self.committer,
                &dead.ident,
                &dead.metadata,
                &self.rejects.pending,
                offsets,
                dead_load.clone(),
            )
            .await?;
            if let (Some(load), Some(u)) = (&mut self.load, &dead_load) {
                load.dead = u.into();
            }
            report.dead_letters = self.rejects.pending.len() as u64;
            report.dead_letter_snapshot_id = done.snapshot_id;
            report.conflicts += done.attempts - 1;
            report.commit_time += done.elapsed;
            dead.metadata = done.metadata;
            tracing::debug!(table = %dead.name, rows = report.dead_letters, "dead letters committed");
        }
        self.rejects.pending.clear();
        self.batch_rows = 0;
        self.batch_bytes = 0;
        self.batch_started = None;
        Ok(report)
    }

    /// Drops everything pushed since the last flush (files written for it are deleted).
    pub async fn discard(&mut self) {
        self.decoding.clear();
        self.rejected.clear();
        if let Some(w) = self.writer.take() {
            w.abort().await;
        }
        self.rejects.pending.clear();
        self.batch_rows = 0;
        self.batch_bytes = 0;
        self.batch_started = None;
    }

    /// Adopts newer table metadata (the sink is between batches); rebuilds the decoder when
    /// messages decode differently (schema, aliases, unknown-field policy, mapping). Metadata
    /// the decoder cannot be built for is reported and not adopted: loading goes on as
    /// before, and the commit in progress (dead letters after rows) is not cut short.
    fn refresh_from(&mut self, metadata: TableMetadata) {
        self.refreshed_at = Instant::now();
        self.decoding.offer(metadata, true);
        self.decoding.next_batch();
    }
}

//! The write stage: a pipeline's writer task, on the tokio runtime. It encodes the chunks the
//! pipeline sends into the raw table's Parquet files as they arrive (and feeds them to the
//! aggregates), and on a flush hands the batch to the commit stage, reporting the outcome
//! back. One batch at a time; a failed chunk fails its batch.

use std::sync::{Arc, mpsc};

use arrow_array::RecordBatch;
use floe_lake::{Committer, DataWriter};
use iceberg::TableIdent;
use iceberg::spec::{DataFile, TableMetadata};
use rdkafka::producer::FutureProducer;

use crate::aggregates::{Aggregation, RowRouting};
use crate::batch::{IdleOffsets, Tp};
use crate::commit::{BatchCommitter, FlushJob, Flushed, Marks};
use crate::config::PipelineConfig;
use crate::dead_letters::DeadLetterSinks;
use crate::error::FlushError;
use crate::{Error, Result};

/// What a pipeline sends its writer task, in order.
pub(crate) enum ToWriter {
    /// Decoded (and transformed) rows of batch `batch`.
    Chunk {
        batch: u64,
        rows: RecordBatch,
        metadata: Arc<TableMetadata>,
        routing: Option<Box<RowRouting>>,
    },
    /// Commit the batch.
    Flush(Box<FlushJob>),
    /// Drop the batch (its files are deleted).
    Discard { batch: u64 },
    /// Partitions assigned: rebuild their dedup state below these offsets.
    Assigned(Vec<(Tp, Option<i64>)>),
    /// Partitions revoked: forget their dedup state.
    Revoked(Vec<Tp>),
}

/// What became of a flushed batch.
pub(crate) struct Outcome {
    pub batch: u64,
    pub result: std::result::Result<Flushed, FlushError>,
}

/// The writer task of one pipeline: encodes chunks, commits on flush.
pub(crate) struct Writer {
    aggregation: Option<Aggregation>,
    /// Where the batches are committed.
    batches: BatchCommitter,
    /// Partitions whose dedup state is still to be rebuilt (with the offset below which their
    /// events are aggregated): a rebuild failed, and is tried again before the state is
    /// next used.
    rebuild: Vec<(Tp, Option<i64>)>,
    /// The open batch's files.
    current: Option<(u64, DataWriter)>,
    /// A batch whose chunk failed: its later chunks are dropped, its flush fails.
    failed: Option<(u64, Error)>,
}

impl Writer {
    /// The writer of the pipeline `cfg` into `table`, its commits recording `marks`.
    pub fn new(
        committer: Committer,
        marks: Marks,
        table: &TableIdent,
        dlq: Option<TableIdent>,
        cfg: &PipelineConfig,
        producer: Option<FutureProducer>,
        aggregation: Option<Aggregation>,
    ) -> Self {
        let dead = DeadLetterSinks {
            table: dlq,
            topic: cfg.dead_letter_topic(),
            producer,
            idle_offsets: IdleOffsets::new(cfg.flush.idle_offsets_interval),
        };
        Self {
            aggregation,
            batches: BatchCommitter::new(committer, marks, table, dead),
            rebuild: Vec::new(),
            current: None,
            failed: None,
        }
    }

    /// Handles the pipeline's messages until it closes the channel.
    pub async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<ToWriter>,
        outcomes: mpsc::Sender<Outcome>,
    ) {
        while let Some(msg) = rx.recv().await {
            match msg {
                ToWriter::Chunk {
                    batch,
                    rows,
                    metadata,
                    routing,
                } => {
                    self.on_chunk(batch, &rows, &metadata, routing.as_deref())
                        .await
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
                    self.batches.dead.idle_offsets.forget_partitions(&parts);
                }
                ToWriter::Discard { batch } => self.discard(batch).await,
                ToWriter::Flush(job) => {
                    let batch = job.batch;
                    let result = self.on_flush(*job).await;
                    let _ = outcomes.send(Outcome { batch, result });
                }
            }
        }
    }

    async fn on_chunk(
        &mut self,
        batch: u64,
        rows: &RecordBatch,
        metadata: &TableMetadata,
        routing: Option<&RowRouting>,
    ) {
        if self.failed.as_ref().is_some_and(|f| f.0 == batch) {
            return;
        }
        let done = match self.rebuilt().await {
            Ok(()) => self.chunk(batch, rows, metadata, routing).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            self.failed = Some((batch, e));
        }
    }

    async fn discard(&mut self, batch: u64) {
        if let Some(a) = self.aggregation.as_mut() {
            a.discard();
        }
        if let Some((b, w)) = self.current.take() {
            if b == batch {
                w.abort().await;
            } else {
                self.current = Some((b, w));
            }
        }
    }

    async fn on_flush(&mut self, job: FlushJob) -> std::result::Result<Flushed, FlushError> {
        let failure = match self.failed.take() {
            Some((b, e)) if b == job.batch => Some(e),
            _ => self.rebuilt().await.err(),
        };
        let result = match failure {
            Some(e) => {
                self.abort_current().await;
                Err(FlushError::Failed(e))
            }
            None => self.flush(job).await,
        };
        if result.is_err() {
            self.batches.dead.idle_offsets.forget();
            if let Some(a) = self.aggregation.as_mut() {
                a.discard();
            }
        }
        result
    }

    /// Deletes the open batch's files.
    async fn abort_current(&mut self) {
        if let Some((_, w)) = self.current.take() {
            w.abort().await;
        }
    }

    /// A chunk of decoded rows: the raw table's share to Parquet, all of it to the aggregates.
    async fn chunk(
        &mut self,
        batch: u64,
        rows: &RecordBatch,
        metadata: &TableMetadata,
        routing: Option<&RowRouting>,
    ) -> Result<()> {
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
        self.write(batch, raw.as_ref().unwrap_or(rows), metadata)
            .await?;
        if let (Some(a), Some(r)) = (self.aggregation.as_mut(), routing) {
            a.add(rows, r).await?;
        }
        Ok(())
    }

    /// Rebuilds the dedup state of the partitions still waiting for it (the aggregates would
    /// count their events again without it). A failure fails the batch at hand; the next one
    /// tries again.
    async fn rebuilt(&mut self) -> Result<()> {
        if self.rebuild.is_empty() {
            return Ok(());
        }
        let Some(a) = self.aggregation.as_mut() else {
            self.rebuild.clear();
            return Ok(());
        };
        match a
            .rebuild(&self.batches.committer, &self.batches.table, &self.rebuild)
            .await
        {
            Ok(()) => {
                self.rebuild.clear();
                Ok(())
            }
            Err(e) => {
                let f = Error::during("rebuilding the dedup state", e);
                tracing::error!(table = %self.batches.name, error = %f, class = f.retry().as_str(), "rebuilding the dedup state failed; nothing is committed until a later batch rebuilds it");
                Err(f)
            }
        }
    }

    async fn write(
        &mut self,
        batch: u64,
        rows: &RecordBatch,
        metadata: &TableMetadata,
    ) -> floe_lake::Result<()> {
        if self.current.as_ref().is_some_and(|(b, _)| *b != batch) {
            self.abort_current().await;
        }
        if self.current.is_none() {
            self.current = Some((
                batch,
                DataWriter::new(self.batches.committer.catalog().file_io(), metadata)?,
            ));
        }
        let (_, w) = self.current.as_mut().expect("just set");
        w.write(rows).await
    }

    /// Commits a batch: its last chunk written, its files closed, then committed
    /// ([`BatchCommitter::commit`]).
    async fn flush(&mut self, mut job: FlushJob) -> std::result::Result<Flushed, FlushError> {
        if let Some(last) = job.last.take() {
            let routing = job.last_routing.take();
            if let Err(e) = self
                .chunk(job.batch, &last, &job.metadata, routing.as_deref())
                .await
            {
                self.abort_current().await;
                return Err(FlushError::Failed(e));
            }
        }
        let (files, agg_files) = self.close_files(job.batch).await?;
        floe_lake::fail::point("after-data-files");
        self.batches
            .commit(&job, files, self.aggregation.as_mut(), agg_files)
            .await
    }

    /// Closes the raw table's files while the aggregates' partial files close (each on its
    /// own task).
    async fn close_files(
        &mut self,
        batch: u64,
    ) -> std::result::Result<(Vec<DataFile>, Vec<Vec<DataFile>>), FlushError> {
        let current = self.current.take();
        let raw_files = async {
            match current {
                Some((b, w)) if b == batch => w.close().await,
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
        Ok((files?, agg_files?))
    }
}

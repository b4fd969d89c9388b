//! Partials that do not fold (a high-cardinality key) stream to a Parquet file of their
//! aggregate table during the batch, on a task of their own, instead of piling up in memory.

use std::sync::Arc;

use arrow_array::RecordBatch;
use floe_aggregate::engine::conform;
use floe_lake::DataWriter;

use super::AggTable;
use crate::telemetry::CpuMeter;
use crate::{Error, Result};

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
pub(super) struct PartialStream {
    tx: tokio::sync::mpsc::Sender<ToStream>,
    done: tokio::task::JoinHandle<Result<Vec<iceberg::spec::DataFile>>>,
}

impl PartialStream {
    pub(super) fn open(catalog: floe_lake::Catalog, table: AggTable, cpu: CpuMeter) -> Self {
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
    pub(super) async fn send(&self, rows: RecordBatch) {
        let _ = self.tx.send(ToStream::Rows(rows)).await;
    }

    /// Closes the stream and returns its files.
    pub(super) async fn finish(self) -> Result<Vec<iceberg::spec::DataFile>> {
        drop(self.tx);
        self.done
            .await
            .map_err(|e| Error::Internal(format!("aggregate writer task: {e}")))?
    }

    /// Drops what was written (without waiting).
    pub(super) fn abort(self) {
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

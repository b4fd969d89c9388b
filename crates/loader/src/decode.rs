//! The decode stage of a table: its decoder and transform stage, built for the table's current
//! schema and mapping, and kept current as other tools change the table: newer metadata is
//! adopted between batches, never in the middle of one, and metadata the decoder cannot be
//! built for is reported once and not adopted (loading goes on as before).

use std::sync::Arc;

use floe_schema::{DecodeError, Decoder, DecoderOptions, Mapping};
use iceberg::spec::TableMetadata;

use crate::Result;
use crate::telemetry::{self, Event};
use crate::transform::{Stage, prepare};

/// A message of `size` bytes is a dead letter `too_large` when over `limit` (it is never
/// decoded).
pub(crate) fn check_size(size: u64, limit: usize) -> std::result::Result<(), DecodeError> {
    if size > limit as u64 {
        return Err(floe_schema::decode::too_large(size, limit as u64));
    }
    Ok(())
}

/// A table's decoder and transform stage, and the metadata they were built for.
pub(crate) struct Decoding {
    /// The table.
    name: String,
    /// The pipeline's mapping laid over the table's own.
    mapping: Mapping,
    /// Where `mapping` is configured, for error messages (`pipelines[0]`).
    section: String,
    metadata: Arc<TableMetadata>,
    /// Metadata that decodes differently, waiting for the batch to end.
    newer: Option<TableMetadata>,
    /// `newer` decodes differently (schema, aliases): the batch is cut to adopt it.
    change_pending: bool,
    /// A schema and mapping the decoder cannot be built for (reported once; a fixed mapping
    /// on the same schema is tried).
    unusable: Option<(i32, DecoderOptions)>,
    pub decoder: Decoder,
    /// Computed columns and rules, when the mapping has any.
    pub stage: Option<Stage>,
}

impl Decoding {
    /// The decode stage of table `name` at `metadata` with `mapping` (configured in `section`).
    pub fn new(
        name: &str,
        metadata: TableMetadata,
        mapping: Mapping,
        section: &str,
    ) -> Result<Self> {
        let (decoder, stage) = prepare(name, &metadata, &mapping, section)?;
        telemetry::SchemaInUse {
            table: name,
            metadata: &metadata,
        }
        .emit();
        Ok(Self {
            name: name.to_string(),
            mapping,
            section: section.to_string(),
            metadata: Arc::new(metadata),
            newer: None,
            change_pending: false,
            unusable: None,
            decoder,
            stage,
        })
    }

    /// The metadata the decoder was built for (what a batch's files are written against).
    pub fn metadata(&self) -> &Arc<TableMetadata> {
        &self.metadata
    }

    /// Whether newer metadata that decodes differently waits for the batch to end.
    pub fn change_pending(&self) -> bool {
        self.change_pending
    }

    /// Takes metadata newer than what the stage has (after a commit or a reload). A change of
    /// how messages decode is adopted at once when `batch_empty`, else it waits for
    /// [`Self::next_batch`].
    pub fn offer(&mut self, meta: TableMetadata, batch_empty: bool) {
        let have = self.newer.as_ref().unwrap_or(&self.metadata);
        if meta.last_updated_ms() < have.last_updated_ms() {
            return; // a reload that started before a commit already seen
        }
        self.change_pending = self.decoder.differs_for(&meta)
            && self.unusable.as_ref() != Some(&self.decoding(&meta));
        if self.change_pending && batch_empty && self.decoder.is_empty() {
            self.newer = None;
            self.adopt(meta);
        } else {
            self.newer = Some(meta);
        }
    }

    /// A new batch starts (the decoder is empty): adopts metadata that waited for it.
    pub fn next_batch(&mut self) {
        if let Some(meta) = self.newer.take() {
            self.adopt(meta);
        }
    }

    /// Drops the rows decoded since the last chunk (the batch is discarded).
    pub fn clear(&mut self) {
        let _ = self.decoder.finish();
        if let Some(stage) = &mut self.stage {
            stage.clear();
        }
    }

    /// What decoding `meta`'s table looks like: its schema id and decoder options.
    fn decoding(&self, meta: &TableMetadata) -> (i32, DecoderOptions) {
        (
            meta.current_schema_id(),
            DecoderOptions::for_pipeline(meta.properties(), &self.decoder.options().pipeline),
        )
    }

    fn adopt(&mut self, meta: TableMetadata) {
        self.change_pending = false;
        if self.decoder.differs_for(&meta) {
            match prepare(&self.name, &meta, &self.mapping, &self.section) {
                Ok((decoder, stage)) => {
                    telemetry::SchemaChanged {
                        table: &self.name,
                        old: &self.metadata,
                        new: &meta,
                    }
                    .emit();
                    self.decoder = decoder;
                    self.stage = stage;
                }
                Err(e) => {
                    let unusable = self.decoding(&meta);
                    if self.unusable.as_ref() != Some(&unusable) {
                        telemetry::SchemaUnusable {
                            table: &self.name,
                            schema_id: meta.current_schema_id(),
                            error: &e,
                        }
                        .emit();
                        self.unusable = Some(unusable);
                    }
                    return;
                }
            }
        }
        self.metadata = Arc::new(meta);
    }
}

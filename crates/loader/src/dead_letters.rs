//! Dead letters: one builder for every rejected message (a decode failure, a row the computed
//! columns or rules rejected), the stop rule when a pipeline has no dead-letter table, the
//! default names of the dead-letter table and topic, and the two sinks: the table (exactly
//! once, with the offsets or load progress they cover) and the topic (at least once, with why
//! and where from in headers).

use std::time::Duration;

use floe_lake::commit::{CommitRequest, OffsetsUpdate};
use floe_lake::loads::LoadUpdate;
use floe_lake::{Committed, Committer, DataWriter, OffsetRange};
use floe_schema::dead_letter::{DeadLetter, dead_letter_batch};
use floe_schema::{DecodeError, RecordMeta};
use iceberg::TableIdent;
use iceberg::spec::TableMetadata;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::batch::IdleOffsets;
use crate::error::FlushError;
use crate::transform::Rejected;
use crate::{Error, Result};

/// A message's headers, owned.
pub(crate) type Headers = Vec<(String, Option<Vec<u8>>)>;

/// The dead-letter table of `table` when none is named: `<table>_dead_letters`.
pub fn default_table(table: &str) -> String {
    format!("{table}_dead_letters")
}

/// The dead-letter topic of a pipeline reading `topic` first when none is named:
/// `<topic>.dead-letters`.
pub fn default_topic(topic: &str) -> String {
    format!("{topic}.dead-letters")
}

/// Where a message came from, for errors: `topic[partition]@offset` or `file:… line n`.
pub(crate) fn describe_source(topic: &str, partition: Option<i32>, offset: Option<i64>) -> String {
    match (partition, offset) {
        (Some(p), Some(o)) => format!("{topic}[{p}]@{o}"),
        (None, Some(line)) => format!("{topic} line {line}"),
        _ => topic.to_string(),
    }
}

/// The rejected messages of one table's batch, on their way to its dead-letter table.
pub(crate) struct Rejects {
    /// The table the messages were meant for.
    table: String,
    /// Whether the table has a dead-letter table; without one a rejection stops loading.
    enabled: bool,
    /// The load the messages come from (`floe load`), recorded with each dead letter.
    load: Option<String>,
    /// Dead letters to commit with the batch.
    pub pending: Vec<DeadLetter>,
}

impl Rejects {
    /// Rejections of `table`'s messages; `enabled` when it has a dead-letter table.
    pub fn new(table: &str, enabled: bool) -> Self {
        Self {
            table: table.to_string(),
            enabled,
            load: None,
            pending: Vec::new(),
        }
    }

    /// Records `load` as the source of the dead letters from now on.
    pub fn set_load(&mut self, load: Option<String>) {
        self.load = load;
    }

    /// A message that does not decode: its dead letter is kept when the dead-letter table
    /// still needs it (`keep`). Without a dead-letter table: the stop rule's error.
    pub fn decode_failed(
        &mut self,
        err: &DecodeError,
        meta: &RecordMeta<'_>,
        payload: &[u8],
        headers: impl FnOnce() -> Headers,
        keep: bool,
    ) -> Result<()> {
        if !self.enabled {
            return Err(stop(
                meta.topic,
                meta.partition,
                meta.offset,
                err.to_string(),
            ));
        }
        if keep {
            let mut dl = DeadLetter::from_decode_error(
                err,
                &self.table,
                meta.topic,
                payload,
                meta.ingested_at_us,
            );
            dl.source_partition = meta.partition;
            dl.source_offset = meta.offset;
            dl.source_key = meta.key.map(<[u8]>::to_vec);
            dl.source_timestamp_ms = meta.timestamp_ms;
            dl.source_load = self.load.clone();
            // Parsed only for rejected messages: header parsing allocates.
            dl.headers = headers();
            self.pending.push(dl);
        }
        Ok(())
    }

    /// A row the computed columns or rules rejected (its dead letter built by the transform
    /// stage), kept when the dead-letter table still needs it (`keep`). Without a dead-letter
    /// table: the stop rule's error.
    pub fn transform_rejected(&mut self, r: Rejected, keep: bool) -> Result<()> {
        if !self.enabled {
            let d = &r.dead_letter;
            return Err(stop(
                &d.source_topic,
                d.source_partition,
                d.source_offset,
                r.why.message,
            ));
        }
        if keep {
            let mut dl = r.dead_letter;
            dl.source_load = self.load.clone();
            self.pending.push(dl);
        }
        Ok(())
    }
}

/// The stop rule: a message rejected where no dead-letter table is configured stops loading
/// rather than drop it.
fn stop(topic: &str, partition: Option<i32>, offset: Option<i64>, reason: String) -> Error {
    Error::Rejected {
        source_name: describe_source(topic, partition, offset),
        reason,
    }
}

/// The table sink: writes `dead` letters as a data file of the dead-letter table (schema of
/// `metadata`) and commits them with `offsets` and `load` progress; the file is deleted if the
/// commit definitely fails. With no dead letters, only the state is recorded.
pub(crate) async fn commit(
    committer: &Committer,
    table: &TableIdent,
    metadata: &TableMetadata,
    dead: &[DeadLetter],
    offsets: Option<OffsetsUpdate>,
    load: Option<LoadUpdate>,
) -> Result<Committed> {
    if dead.is_empty() {
        let mut req = CommitRequest::append(Vec::new());
        req.offsets = offsets;
        req.load = load;
        return Ok(committer.commit(table, req).await?);
    }
    let schema = std::sync::Arc::new(
        iceberg::arrow::schema_to_arrow_schema(metadata.current_schema())
            .map_err(floe_lake::Error::from)?,
    );
    let batch = dead_letter_batch(&schema, dead)?;
    let mut writer = DataWriter::new(committer.catalog().file_io(), metadata)?;
    if let Err(e) = writer.write(&batch).await {
        writer.abort().await;
        return Err(e.into());
    }
    let spec_id = writer.spec_id();
    let mut req = CommitRequest::append(writer.close().await?).written_with(spec_id);
    req.offsets = offsets;
    req.load = load;
    Ok(committer.commit(table, req).await?)
}

/// Where a pipeline's dead letters go: its dead-letter table, its topic (if any), and the
/// table's offsets not yet recorded.
pub(crate) struct DeadLetterSinks {
    pub table: Option<TableIdent>,
    pub topic: Option<String>,
    pub producer: Option<FutureProducer>,
    /// The dead-letter table's offsets not yet recorded (flushes without dead letters).
    pub idle_offsets: IdleOffsets,
}

/// What the dead-letter table's commit of a batch records beside its dead letters.
pub(crate) enum Record<'a> {
    /// The offsets the batch read for the dead-letter table (`floe run`); with
    /// `last_before_stop` every pending offset is recorded.
    Offsets {
        group: &'a str,
        ranges: &'a [OffsetRange],
        last_before_stop: bool,
    },
    /// How far the load got (`floe load`); `None`: the table's mark does not move.
    Load(Option<LoadUpdate>),
}

impl DeadLetterSinks {
    /// Commits a batch's dead letters: to the topic (at least once), then to the table
    /// (exactly once, with what `record` says they cover); the number committed.
    pub async fn commit(
        &mut self,
        committer: &Committer,
        dead: &[DeadLetter],
        record: Record<'_>,
    ) -> std::result::Result<u64, FlushError> {
        let Some(dlq) = &self.table else {
            return Ok(0);
        };
        let (offsets, load) = match record {
            Record::Offsets {
                group,
                ranges,
                last_before_stop,
            } => {
                let Some(ranges) =
                    self.idle_offsets
                        .take(ranges, !dead.is_empty(), last_before_stop)
                else {
                    return Ok(0);
                };
                let group = group.to_string();
                (Some(OffsetsUpdate { group, ranges }), None)
            }
            // Dead letters always move the mark: none, and nothing to record.
            Record::Load(None) => return Ok(0),
            Record::Load(Some(update)) => (None, Some(update)),
        };
        if let (Some(topic), Some(producer)) = (&self.topic, &self.producer) {
            produce(topic, producer, dead).await?;
        }
        let (_, meta) = committer.catalog().load_metadata(dlq).await?;
        let recorded_offsets = offsets.is_some();
        commit(committer, dlq, &meta, dead, offsets, load).await?;
        if recorded_offsets {
            self.idle_offsets.recorded();
        }
        Ok(dead.len() as u64)
    }
}

/// The topic sink: sends dead letters to `topic`, with why each was rejected and where it came
/// from in headers.
pub(crate) async fn produce(
    topic: &str,
    producer: &FutureProducer,
    dead: &[DeadLetter],
) -> Result<()> {
    let sends = dead.iter().map(|d| {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(headers_of(d));
        if let Some(k) = &d.source_key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &d.payload {
            record = record.payload(p.as_slice());
        }
        producer.send(record, Duration::from_secs(30))
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(source, _)| Error::DeadLetterTopic {
            topic: topic.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// A dead letter's headers on the topic: the message's own, then why and where from.
fn headers_of(d: &DeadLetter) -> OwnedHeaders {
    let partition = d.source_partition.unwrap_or(-1).to_string();
    let offset = d.source_offset.unwrap_or(-1).to_string();
    let mut headers = OwnedHeaders::new();
    for (k, v) in &d.headers {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    [
        ("floe.error.kind", d.error_kind.as_bytes()),
        ("floe.error.message", d.error_message.as_bytes()),
        ("floe.source.topic", d.source_topic.as_bytes()),
        ("floe.source.partition", partition.as_bytes()),
        ("floe.source.offset", offset.as_bytes()),
    ]
    .into_iter()
    .fold(headers, |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(offset: i64) -> RecordMeta<'static> {
        RecordMeta {
            topic: "events",
            partition: Some(3),
            offset: Some(offset),
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k"),
            ingested_at_us: 42,
        }
    }

    #[test]
    fn a_rejection_is_a_dead_letter_or_stops_loading_without_a_dead_letter_table() {
        let err = floe_schema::decode::too_large(10, 5);
        let mut kept = Rejects::new("lake.t", true);
        kept.set_load(Some("sha256:ab".into()));
        kept.decode_failed(&err, &meta(7), b"{}", || vec![("h".into(), None)], true)
            .unwrap();
        // The dead-letter table holds it already (an earlier run): nothing kept again.
        kept.decode_failed(&err, &meta(8), b"{}", Vec::new, false)
            .unwrap();
        assert_eq!(kept.pending.len(), 1);
        let dl = &kept.pending[0];
        assert_eq!(
            (
                dl.source_topic.as_str(),
                dl.source_partition,
                dl.source_offset
            ),
            ("events", Some(3), Some(7))
        );
        assert_eq!(dl.target_table, "lake.t");
        assert_eq!(dl.error_kind, "too_large");
        assert_eq!(dl.source_key.as_deref(), Some(&b"k"[..]));
        assert_eq!(dl.source_load.as_deref(), Some("sha256:ab"));
        assert_eq!(dl.headers.len(), 1);

        let mut stops = Rejects::new("lake.t", false);
        let e = stops
            .decode_failed(&err, &meta(9), b"{}", Vec::new, true)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("events[3]@9: message rejected"),
            "{e}"
        );
        assert!(stops.pending.is_empty());
    }

    #[test]
    fn default_names_and_sources() {
        assert_eq!(default_table("lake.events"), "lake.events_dead_letters");
        assert_eq!(default_topic("events"), "events.dead-letters");
        assert_eq!(
            describe_source("file:/a.jsonl", None, Some(4)),
            "file:/a.jsonl line 4"
        );
        assert_eq!(describe_source("t", Some(1), Some(2)), "t[1]@2");
    }
}

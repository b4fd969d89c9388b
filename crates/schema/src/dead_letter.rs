//! Dead letters: rejected messages with their source coordinates, raw payload and reason, as
//! rows of a dead-letter table (`schemas/lake.events_dead_letters.json` is the template).
//!
//! Rows are built by column *name* against the dead-letter table's current schema, so columns
//! a user adds to that table read NULL and columns it drops are simply not written.

use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, SchemaRef, TimeUnit};

use crate::{DecodeError, Error, Result};

/// One rejected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Kafka topic, or `file:<path>` for file loads.
    pub source_topic: String,
    /// Kafka partition.
    pub source_partition: Option<i32>,
    /// Kafka offset, or 1-based line number for file loads.
    pub source_offset: Option<i64>,
    /// The id of the load (`floe load`) the line came from: a line number is unique only
    /// within one load. `None` for Kafka messages.
    pub source_load: Option<String>,
    /// Message key.
    pub source_key: Option<Vec<u8>>,
    /// Kafka message timestamp (epoch millis).
    pub source_timestamp_ms: Option<i64>,
    /// The message value as received (None for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// The table the message was meant for (`lake.events`).
    pub target_table: String,
    /// Error classification (`wrong_type`, `malformed_json`, `rule`, …).
    pub error_kind: String,
    /// The offending field path, if one.
    pub error_field: Option<String>,
    /// The full reason.
    pub error_message: String,
    /// When floe rejected it (epoch micros).
    pub failed_at_us: i64,
    /// The message's headers, forwarded with the dead-letter topic copy (not stored in the
    /// table).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// A dead letter for a decode failure. The payload of a message too large to load is
    /// cut to its first [`crate::decode::TOO_LARGE_KEPT_BYTES`].
    pub fn from_decode_error(
        err: &DecodeError,
        target_table: &str,
        source_topic: &str,
        payload: &[u8],
        failed_at_us: i64,
    ) -> Self {
        Self {
            source_topic: source_topic.to_string(),
            source_partition: None,
            source_offset: None,
            source_load: None,
            source_key: None,
            source_timestamp_ms: None,
            payload: Some(kept_payload(err, payload).to_vec()),
            target_table: target_table.to_string(),
            error_kind: err.kind.as_str().to_string(),
            error_field: (!err.field.is_empty()).then(|| err.field.clone()),
            error_message: err.to_string(),
            failed_at_us,
            headers: Vec::new(),
        }
    }
}

fn kept_payload<'a>(err: &DecodeError, payload: &'a [u8]) -> &'a [u8] {
    if err.kind == crate::DecodeErrorKind::TooLarge {
        &payload[..payload.len().min(crate::decode::TOO_LARGE_KEPT_BYTES)]
    } else {
        payload
    }
}

/// Builds a record batch of `rows` for a dead-letter table whose Arrow schema is `schema`.
pub fn dead_letter_batch(schema: &SchemaRef, rows: &[DeadLetter]) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let dt = field.data_type();
        let array: ArrayRef = match (field.name().as_str(), dt) {
            ("source_topic", DataType::Utf8) => strings(rows, |r| Some(&r.source_topic)),
            ("target_table", DataType::Utf8) => strings(rows, |r| Some(&r.target_table)),
            ("error_kind", DataType::Utf8) => strings(rows, |r| Some(&r.error_kind)),
            ("error_field", DataType::Utf8) => strings(rows, |r| r.error_field.as_ref()),
            ("error_message", DataType::Utf8) => strings(rows, |r| Some(&r.error_message)),
            ("source_load", DataType::Utf8) => strings(rows, |r| r.source_load.as_ref()),
            ("source_partition", DataType::Int32) => {
                let mut b = Int32Builder::with_capacity(rows.len());
                rows.iter()
                    .for_each(|r| b.append_option(r.source_partition));
                Arc::new(b.finish())
            }
            ("source_offset", DataType::Int64) => {
                let mut b = Int64Builder::with_capacity(rows.len());
                rows.iter().for_each(|r| b.append_option(r.source_offset));
                Arc::new(b.finish())
            }
            ("source_key", DataType::LargeBinary) => binaries(rows, |r| r.source_key.as_deref()),
            ("payload", DataType::LargeBinary) => binaries(rows, |r| r.payload.as_deref()),
            ("source_timestamp", DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                rows.iter()
                    .for_each(|r| b.append_option(r.source_timestamp_ms.map(|ms| ms * 1000)));
                Arc::new(b.finish().with_timezone_opt(tz.clone()))
            }
            ("failed_at", DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                rows.iter().for_each(|r| b.append_value(r.failed_at_us));
                Arc::new(b.finish().with_timezone_opt(tz.clone()))
            }
            (name, _) if field.is_nullable() || rows.is_empty() => {
                let _ = name;
                new_null_array(dt, rows.len())
            }
            (name, dt) => {
                return Err(Error::Unsupported(format!(
                    "dead-letter table column {name} ({dt}) is required but floe does not fill it"
                )));
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| {
        Error::Unsupported(format!(
            "dead-letter table schema does not fit dead letters: {e}"
        ))
    })
}

fn strings(rows: &[DeadLetter], f: impl Fn(&DeadLetter) -> Option<&String>) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 32);
    rows.iter().for_each(|r| b.append_option(f(r)));
    Arc::new(b.finish())
}

fn binaries(rows: &[DeadLetter], f: impl Fn(&DeadLetter) -> Option<&[u8]>) -> ArrayRef {
    let mut b = LargeBinaryBuilder::with_capacity(rows.len(), rows.len() * 64);
    rows.iter().for_each(|r| b.append_option(f(r)));
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TableDefinition;

    #[test]
    fn dead_letters_fill_the_template_schema() {
        let def = TableDefinition::dead_letter("lake.events_dead_letters").unwrap();
        let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&def.schema).unwrap());
        let err = DecodeError {
            kind: crate::DecodeErrorKind::WrongType,
            field: "value".into(),
            message: "expected double, found string \"abc\"".into(),
        };
        let mut dl = DeadLetter::from_decode_error(&err, "lake.events", "events", b"{}", 5);
        dl.source_partition = Some(1);
        dl.source_offset = Some(10);
        let batch = dead_letter_batch(&schema, &[dl]).unwrap();
        assert_eq!(batch.num_rows(), 1);
        let msg = batch
            .column_by_name("error_message")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .value(0)
            .to_string();
        assert_eq!(
            msg,
            "field \"value\": expected double, found string \"abc\""
        );
        let kind = batch.column_by_name("error_kind").unwrap();
        assert_eq!(
            kind.as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap()
                .value(0),
            "wrong_type"
        );
    }
}

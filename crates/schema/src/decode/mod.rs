//! JSON → Arrow decoding against an Iceberg table schema, one record at a time.
//!
//! [`Decoder::decode`] appends one message to column builders made from the table's *current*
//! schema, or returns a [`DecodeError`] for that message alone: a failed record is rolled back
//! (every column truncated to the previous row count), so a bad message never fails its batch.
//! [`Decoder::finish`] hands over the batch as an Arrow `RecordBatch` whose fields carry the
//! Iceberg field ids, ready for the Parquet writer.
//!
//! Rules (see `names` for key matching): missing optional fields are NULL; missing required
//! fields, wrong JSON types, out-of-range numbers, unparsable timestamps (epoch millis and
//! ISO-8601 with offset are accepted), non-object or empty payloads, invalid UTF-8 and
//! duplicate keys are errors naming the field, the expected type and what was found. Unknown
//! fields are skipped and counted.
//!
//! This file holds the errors, the options and the [`Decoder`]; `record` decodes one message
//! into the column builders of `column`, reading it with the scanner of `json` and the text
//! conversions of `value`.

mod column;
mod json;
mod record;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;

use crate::mapping::{Mapping, Pointer};
use crate::names::aliases_from_properties;
use crate::partition_range::PartitionRange;
use crate::{Error, Result};
use column::{Column, Kind, MetaKind, StructCols};
use json::SyntaxError;

/// Why a record was rejected; `as_str` is the `error_kind` stored with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The payload is empty or only white space.
    EmptyPayload,
    /// The payload is not valid UTF-8.
    InvalidUtf8,
    /// The payload is not JSON (syntax error).
    MalformedJson,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A required field is absent (or null).
    MissingField,
    /// A value has the wrong JSON type for its column.
    WrongType,
    /// A number does not fit its column's type.
    OutOfRange,
    /// A value has the right JSON type but is not a valid value (bad timestamp, uuid, base64).
    InvalidValue,
    /// The same column is set twice in one object.
    DuplicateKey,
    /// Nesting deeper than the decoder accepts.
    TooDeep,
    /// A key matches no column and the table rejects unknown fields
    /// (`floe.unknown-fields = reject`).
    UnknownField,
    /// The envelope (`unnest`) has no JSON object at its pointer.
    Envelope,
    /// The message is larger than the loader accepts (`limits.max_message_bytes`); its dead
    /// letter keeps only the start of the payload.
    TooLarge,
}

impl DecodeErrorKind {
    /// Stable snake_case name, stored in dead letters and used as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MalformedJson => "malformed_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::OutOfRange => "out_of_range",
            Self::InvalidValue => "invalid_value",
            Self::DuplicateKey => "duplicate_key",
            Self::TooDeep => "too_deep",
            Self::UnknownField => "unknown_field",
            Self::Envelope => "envelope",
            Self::TooLarge => "too_large",
        }
    }

    /// Every kind, for metrics and reports.
    pub const ALL: [DecodeErrorKind; 13] = [
        Self::EmptyPayload,
        Self::InvalidUtf8,
        Self::MalformedJson,
        Self::NotAnObject,
        Self::MissingField,
        Self::WrongType,
        Self::OutOfRange,
        Self::InvalidValue,
        Self::DuplicateKey,
        Self::TooDeep,
        Self::UnknownField,
        Self::Envelope,
        Self::TooLarge,
    ];
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the kind, the field path (`address.city`, `items[2]`; empty for the
/// whole payload) and a message such as `expected double, found string "abc"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The classification.
    pub kind: DecodeErrorKind,
    /// Dotted path of the offending field; empty when the payload as a whole is bad.
    pub field: String,
    /// What was expected and what was found.
    pub message: String,
}

impl DecodeError {
    fn new(kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            field: String::new(),
            message: message.into(),
        }
    }

    fn in_field(mut self, name: &str) -> Self {
        self.field = if self.field.is_empty() {
            name.to_string()
        } else if self.field.starts_with('[') {
            format!("{name}{}", self.field)
        } else {
            format!("{name}.{}", self.field)
        };
        self
    }

    fn at_index(mut self, i: usize) -> Self {
        self.field = if self.field.is_empty() || self.field.starts_with('[') {
            format!("[{i}]{}", self.field)
        } else {
            format!("[{i}].{}", self.field)
        };
        self
    }
}

/// The most payload bytes a dead letter of a message too large to load keeps.
pub const TOO_LARGE_KEPT_BYTES: usize = 64 * 1024;

/// The rejection of a message of `size` bytes, larger than `limit`
/// (`limits.max_message_bytes`); its dead letter keeps the first [`TOO_LARGE_KEPT_BYTES`].
pub fn too_large(size: u64, limit: u64) -> DecodeError {
    let kept = size.min(TOO_LARGE_KEPT_BYTES as u64);
    DecodeError::new(
        DecodeErrorKind::TooLarge,
        format!(
            "message of {size} bytes exceeds the limit of {limit} bytes \
             (limits.max_message_bytes); payload truncated to the first {kept} bytes"
        ),
    )
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field \"{}\": {}", self.field, self.message)
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<SyntaxError> for DecodeError {
    fn from(e: SyntaxError) -> Self {
        let kind = if e.what == "nesting too deep" {
            DecodeErrorKind::TooDeep
        } else {
            DecodeErrorKind::MalformedJson
        };
        DecodeError::new(kind, format!("malformed JSON at byte {}: {}", e.at, e.what))
    }
}

/// Where a message came from; fills the metadata columns (`_kafka_topic`, `_kafka_partition`,
/// `_kafka_offset`, `_kafka_timestamp`, `_kafka_key`, `_ingested_at`) when the table has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordMeta<'a> {
    /// Source topic (or `file:<path>`).
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: Option<i32>,
    /// Kafka offset (or line number for files).
    pub offset: Option<i64>,
    /// Kafka message timestamp, epoch millis.
    pub timestamp_ms: Option<i64>,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Ingestion time, epoch microseconds.
    pub ingested_at_us: i64,
}

/// Decoder settings derived from the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderOptions {
    /// JSON key → column name aliases (`floe.alias.*` table properties).
    pub aliases: HashMap<String, String>,
    /// Reject a message with a key that matches no column, instead of ignoring the key
    /// (table property `floe.unknown-fields = reject`; default `ignore`). Rejected messages
    /// can be replayed once the column is added.
    pub reject_unknown_fields: bool,
    /// The mapping in force: the table's (`floe.unnest`, `floe.column.*`, …) with the
    /// pipeline's laid over it. The decoder applies the envelope and the projections;
    /// computed columns are decoded when present and may be absent (they are filled later).
    pub mapping: Mapping,
    /// The pipeline's part of `mapping`, kept to rebuild the options when the table changes.
    pub pipeline: Mapping,
    /// The ranges of source values the table's time partitions hold; a value outside is
    /// rejected (`out_of_range`) rather than written to a wrong partition.
    pub partition_ranges: Vec<PartitionRange>,
}

/// Table property choosing what happens to JSON keys that match no column.
pub const UNKNOWN_FIELDS_PROPERTY: &str = "floe.unknown-fields";

impl DecoderOptions {
    /// Options read from table properties.
    pub fn from_table_properties(props: &HashMap<String, String>) -> Self {
        Self::for_pipeline(props, &Mapping::default())
    }

    /// Options read from table properties, with a pipeline's mapping laid over the table's.
    pub fn for_pipeline(props: &HashMap<String, String>, pipeline: &Mapping) -> Self {
        Self {
            aliases: aliases_from_properties(props),
            reject_unknown_fields: props
                .get(UNKNOWN_FIELDS_PROPERTY)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("reject")),
            mapping: Mapping::from_table_properties(props).overlay(pipeline),
            pipeline: pipeline.clone(),
            partition_ranges: Vec::new(),
        }
    }

    /// Options for loading into the table of `metadata`: its properties with `pipeline`'s
    /// mapping laid over them, and the ranges its default partition spec holds.
    pub fn for_table(metadata: &iceberg::spec::TableMetadata, pipeline: &Mapping) -> Self {
        Self {
            partition_ranges: PartitionRange::for_spec(
                metadata.default_partition_spec(),
                metadata.current_schema(),
            ),
            ..Self::for_pipeline(metadata.properties(), pipeline)
        }
    }
}

/// Decodes JSON messages into Arrow record batches for one table schema.
pub struct Decoder {
    schema_id: i32,
    options: DecoderOptions,
    arrow_schema: SchemaRef,
    root: StructCols,
    rows: usize,
    input_bytes: usize,
    ctx: Ctx,
    unnest: Option<Pointer>,
    /// Root column index and pointer of each projected column.
    projections: Vec<(usize, Pointer)>,
    /// Rows the envelope was unwrapped for, and per projection the rows its pointer had a
    /// value for (since the last [`Decoder::take_mapping_counts`]).
    unnested: u64,
    projected: Vec<u64>,
    /// The partition ranges whose source column is decoded, with the column's indices from
    /// the root (through structs).
    ranges: Vec<(Vec<usize>, PartitionRange)>,
}

struct Ctx {
    stamp: u64,
    scratch: String,
    unknown_fields: u64,
    reject_unknown: bool,
    /// Per projection of the record being decoded: whether its pointer had a value.
    found: Vec<bool>,
}

impl Decoder {
    /// A decoder for `schema` (the table's current Iceberg schema).
    pub fn new(schema: &iceberg::spec::Schema, options: &DecoderOptions) -> Result<Self> {
        let mapping = &options.mapping;
        mapping
            .check_decoding(schema)
            .map_err(|e| Error::Mapping(e.to_string()))?;
        let arrow =
            Arc::new(mapping.decoded_schema(&iceberg::arrow::schema_to_arrow_schema(schema)?));
        let mut root = StructCols::new(arrow.fields(), schema.as_struct(), true, &options.aliases)?;
        let mut projections = Vec::new();
        for (name, pointer) in &mapping.columns {
            let i = root
                .fields
                .iter()
                .position(|c| c.name == *name)
                .expect("check_decoding found the column");
            projections.push((
                i,
                Pointer::parse(pointer).expect("check_decoding parsed it"),
            ));
        }
        let unnest = mapping
            .envelope()
            .map(|p| Pointer::parse(p).expect("check_decoding parsed it"));
        if !projections.is_empty() {
            let at: Vec<usize> = projections.iter().map(|(i, _)| *i).collect();
            // Keys of the row object that projections read through, and the projected
            // columns' own names and aliases: known keys, not unknown fields.
            let depth = unnest.as_ref().map_or(0, |u| u.segments().len());
            let mut consumed: std::collections::HashSet<String> = projections
                .iter()
                .filter(|(_, p)| {
                    unnest
                        .as_ref()
                        .is_none_or(|u| p.segments().starts_with(u.segments()))
                })
                .filter_map(|(_, p)| p.segments().get(depth).cloned())
                .collect();
            for (i, _) in &projections {
                let name = &root.fields[*i].name;
                consumed.insert(name.clone());
                consumed.extend(
                    options
                        .aliases
                        .iter()
                        .filter(|(_, c)| *c == name)
                        .map(|(k, _)| k.clone()),
                );
            }
            root.project(&at, &options.aliases, consumed);
        }
        for col in &root.fields {
            if let Some(meta) = col.meta {
                let ok = match meta {
                    MetaKind::Topic => col.kind == Kind::String,
                    MetaKind::Partition => matches!(col.kind, Kind::Int | Kind::Long),
                    MetaKind::Offset => col.kind == Kind::Long,
                    MetaKind::Timestamp | MetaKind::IngestedAt => {
                        matches!(col.kind, Kind::Timestamp { .. } | Kind::Long)
                    }
                    MetaKind::Key => matches!(col.kind, Kind::String | Kind::Binary),
                };
                if !ok {
                    return Err(Error::Unsupported(format!(
                        "metadata column {} cannot be of type {}",
                        col.name,
                        col.kind.describe()
                    )));
                }
            }
        }
        let ranges = options
            .partition_ranges
            .iter()
            .filter_map(|r| Some((root.indices_of(&r.path)?, r.clone())))
            .collect();
        Ok(Self {
            ranges,
            schema_id: schema.schema_id(),
            options: options.clone(),
            arrow_schema: arrow,
            root,
            rows: 0,
            input_bytes: 0,
            ctx: Ctx {
                stamp: 0,
                scratch: String::new(),
                unknown_fields: 0,
                reject_unknown: options.reject_unknown_fields,
                found: Vec::new(),
            },
            unnest,
            projected: vec![0; projections.len()],
            projections,
            unnested: 0,
        })
    }

    /// The options this decoder was built with.
    pub fn options(&self) -> &DecoderOptions {
        &self.options
    }

    /// Per transform of the mapping the decoder applies (`unnest`, `columns.<name>`), the rows
    /// it produced a value for since the last call (resets the counts).
    pub fn take_mapping_counts(&mut self) -> Vec<(crate::mapping::Setting, u64)> {
        use crate::mapping::Setting;
        let mut out = Vec::new();
        if self.unnest.is_some() {
            out.push((Setting::Unnest, std::mem::take(&mut self.unnested)));
        }
        for ((i, _), n) in self.projections.iter().zip(&mut self.projected) {
            out.push((
                Setting::Column(self.root.fields[*i].name.clone()),
                std::mem::take(n),
            ));
        }
        out
    }

    /// The Iceberg schema id this decoder was built for.
    pub fn schema_id(&self) -> i32 {
        self.schema_id
    }

    /// Whether a decoder for `metadata`'s current schema, properties and partition spec would
    /// decode differently from this one (another schema, other aliases or unknown-field
    /// policy, other partition ranges).
    pub fn differs_for(&self, metadata: &iceberg::spec::TableMetadata) -> bool {
        metadata.current_schema_id() != self.schema_id
            || DecoderOptions::for_table(metadata, &self.options.pipeline) != self.options
    }

    /// The Arrow schema of produced batches (with Iceberg field ids in field metadata).
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow_schema
    }

    /// Rows buffered since the last [`Self::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows are buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Payload bytes of the buffered rows.
    pub fn input_bytes(&self) -> usize {
        self.input_bytes
    }

    /// Approximate memory held by the buffered columns.
    pub fn buffered_bytes(&self) -> usize {
        self.root.fields.iter().map(Column::buffered_bytes).sum()
    }

    /// Unknown JSON fields skipped since the last call (resets the counter).
    pub fn take_unknown_fields(&mut self) -> u64 {
        std::mem::take(&mut self.ctx.unknown_fields)
    }

    /// Decodes one message into the batch, or rejects it and leaves the batch unchanged.
    pub fn decode(&mut self, payload: &[u8], meta: &RecordMeta<'_>) -> Result<(), DecodeError> {
        let rows = self.rows;
        match self.record(payload, meta) {
            Ok(()) => {
                self.rows += 1;
                self.input_bytes += payload.len();
                self.unnested += u64::from(self.unnest.is_some());
                for (n, found) in self.projected.iter_mut().zip(&self.ctx.found) {
                    *n += u64::from(*found);
                }
                Ok(())
            }
            Err(e) => {
                for col in &mut self.root.fields {
                    col.truncate(rows);
                }
                Err(e)
            }
        }
    }

    /// Checks that a message would decode, without keeping it (for a message a table already
    /// holds whose dead-letter status is still needed).
    pub fn check(&mut self, payload: &[u8], meta: &RecordMeta<'_>) -> Result<(), DecodeError> {
        let rows = self.rows;
        let result = self.record(payload, meta);
        for col in &mut self.root.fields {
            col.truncate(rows);
        }
        result
    }

    fn record(&mut self, payload: &[u8], meta: &RecordMeta<'_>) -> Result<(), DecodeError> {
        record::decode_record(
            &mut self.root,
            &mut self.ctx,
            payload,
            meta,
            self.unnest.as_ref(),
            &self.projections,
        )?;
        check_ranges(&self.root, &self.ranges, self.rows)
    }

    /// Hands over the buffered rows as a record batch and starts a new one.
    pub fn finish(&mut self) -> RecordBatch {
        let columns = self.root.finish_children();
        let rows = std::mem::take(&mut self.rows);
        self.input_bytes = 0;
        RecordBatch::try_new_with_options(
            self.arrow_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .expect("decoder builds columns of its own schema")
    }
}

/// Checks the values row `row` holds for partition source columns against the partitions'
/// ranges.
fn check_ranges(
    root: &StructCols,
    ranges: &[(Vec<usize>, PartitionRange)],
    row: usize,
) -> Result<(), DecodeError> {
    for (indices, range) in ranges {
        let Some(value) = root.value_at(indices, row) else {
            continue;
        };
        if !range.holds(value) {
            let mut e = DecodeError::new(DecodeErrorKind::OutOfRange, range.beyond(value));
            for name in range.path.iter().rev() {
                e = e.in_field(name);
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

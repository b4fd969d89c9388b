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

mod column;
mod json;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;
use base64::Engine;

use crate::mapping::{Mapping, Pointer};
use crate::names::aliases_from_properties;
use crate::partition_range::PartitionRange;
use crate::{Error, Result};
use column::{Column, Kind, MetaKind, Store, StructCols};
use json::{Cursor, Peek, SyntaxError};

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
        decode_record(
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

fn decode_record(
    root: &mut StructCols,
    ctx: &mut Ctx,
    payload: &[u8],
    meta: &RecordMeta<'_>,
    unnest: Option<&Pointer>,
    projections: &[(usize, Pointer)],
) -> Result<(), DecodeError> {
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidUtf8,
                format!("payload is not valid UTF-8 (at byte {})", e.valid_up_to()),
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cur = Cursor::new(text);
    if cur.at_end() {
        return Err(DecodeError::new(
            DecodeErrorKind::EmptyPayload,
            "payload is empty",
        ));
    }
    let start = cur.pos();
    if let Some(envelope) = unnest {
        // The whole message must be JSON; its object at the pointer is the row.
        skip_whole(&mut cur)?;
        cur.set_pos(start);
        if !seek(&mut cur, ctx, envelope.segments())? {
            return Err(DecodeError::new(
                DecodeErrorKind::Envelope,
                format!(
                    "the envelope has no {} (unnest = {:?})",
                    envelope.as_str(),
                    envelope.as_str()
                ),
            ));
        }
        let at = cur.pos();
        if cur.peek()? != Peek::Object {
            return Err(DecodeError::new(
                DecodeErrorKind::Envelope,
                format!(
                    "expected a JSON object at {} (unnest), found {}",
                    envelope.as_str(),
                    describe_value(&mut cur, at)
                ),
            ));
        }
        decode_object(root, &mut cur, ctx, envelope.segments().len(), Some(meta))?;
    } else {
        match cur.peek()? {
            Peek::Object => {}
            _ => {
                // Text that is not JSON at all (`not json`) is malformed, not a non-object.
                skip_whole(&mut cur)?;
                return Err(DecodeError::new(
                    DecodeErrorKind::NotAnObject,
                    format!(
                        "expected a JSON object, found {}",
                        describe_value(&mut cur, start)
                    ),
                ));
            }
        }
        decode_object(root, &mut cur, ctx, 0, Some(meta))?;
        if !cur.at_end() {
            return Err(SyntaxError {
                at: cur.pos(),
                what: "trailing characters after the JSON object",
            }
            .into());
        }
    }
    ctx.found.clear();
    for (i, pointer) in projections {
        cur.set_pos(start);
        let found = seek(&mut cur, ctx, pointer.segments())?;
        let col = &mut root.fields[*i];
        let result = if found {
            decode_value(col, &mut cur, ctx, pointer.segments().len())
        } else if col.nullable {
            col.push_null();
            Ok(())
        } else {
            Err(DecodeError::new(
                DecodeErrorKind::MissingField,
                format!(
                    "required field is missing (expected {})",
                    col.kind.describe()
                ),
            ))
        };
        if let Err(mut e) = result {
            e.message = format!("{} (at {})", e.message, pointer.as_str());
            return Err(e.in_field(&col.name));
        }
        ctx.found.push(found);
    }
    Ok(())
}

/// Skips the one JSON value the payload must be; anything after it is malformed.
fn skip_whole(cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
    cur.skip_value(0)?;
    if !cur.at_end() {
        return Err(SyntaxError {
            at: cur.pos(),
            what: "trailing characters after the JSON value",
        }
        .into());
    }
    Ok(())
}

/// Moves `cur` from the value it is on to the value at `segments` below it (object members by
/// key, array elements by index); `false` when there is none. The value is not consumed.
fn seek(cur: &mut Cursor<'_>, ctx: &mut Ctx, segments: &[String]) -> Result<bool, DecodeError> {
    for (depth, segment) in segments.iter().enumerate() {
        match cur.peek()? {
            Peek::Object => {
                if cur.begin_object()? {
                    return Ok(false);
                }
                loop {
                    let key = cur.key(&mut ctx.scratch)?;
                    if *key == **segment {
                        break;
                    }
                    drop(key);
                    cur.skip_value(depth + 1)?;
                    if !cur.next_member(b'}')? {
                        return Ok(false);
                    }
                }
            }
            Peek::Array => {
                let Some(index) = Pointer::index(segment) else {
                    return Ok(false);
                };
                if cur.begin_array()? {
                    return Ok(false);
                }
                for _ in 0..index {
                    cur.skip_value(depth + 1)?;
                    if !cur.next_member(b']')? {
                        return Ok(false);
                    }
                }
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Describes the value starting at `start` for an error message: `string "abc"`, `number 1.5`.
fn describe_value(cur: &mut Cursor<'_>, start: usize) -> String {
    cur.set_pos(start);
    let kind = match cur.peek() {
        Ok(Peek::Object) => return "object".into(),
        Ok(Peek::Array) => return "array".into(),
        Ok(Peek::Null) => return "null".into(),
        Ok(Peek::String) => "string",
        Ok(Peek::Number) => "number",
        Ok(Peek::True | Peek::False) => "boolean",
        Err(_) => return "invalid JSON".into(),
    };
    let from = cur.pos();
    let end = match cur.skip_value(0) {
        Ok(()) => cur.pos(),
        Err(_) => cur.buf().len(),
    };
    let text = &cur.buf()[from..end];
    const MAX: usize = 64;
    let mut cut = text.len().min(MAX);
    while cut < text.len() && (text[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    let shown = String::from_utf8_lossy(&text[..cut]);
    if cut < text.len() {
        format!("{kind} {shown}…")
    } else {
        format!("{kind} {shown}")
    }
}

fn decode_object(
    cols: &mut StructCols,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    depth: usize,
    meta: Option<&RecordMeta<'_>>,
) -> Result<(), DecodeError> {
    if depth > json::MAX_DEPTH {
        return Err(DecodeError::new(
            DecodeErrorKind::TooDeep,
            "nesting too deep",
        ));
    }
    ctx.stamp += 1;
    let stamp = ctx.stamp;
    if !cur.begin_object()? {
        let mut pos = 0;
        loop {
            let key = cur.key(&mut ctx.scratch)?;
            match cols.resolver.resolve(&key, pos) {
                None if !cols.consumed.is_empty() && cols.consumed.contains(&*key) => {
                    drop(key);
                    cur.skip_value(depth + 1)?;
                }
                None => {
                    if ctx.reject_unknown {
                        return Err(DecodeError::new(
                            DecodeErrorKind::UnknownField,
                            "no column matches this key (the table rejects unknown fields)",
                        )
                        .in_field(&key));
                    }
                    drop(key);
                    ctx.unknown_fields += 1;
                    cur.skip_value(depth + 1)?;
                }
                Some(i) => {
                    let col = &mut cols.fields[i];
                    if cols.stamps[i] == stamp {
                        let msg = if *key == col.name {
                            format!("duplicate key \"{key}\"")
                        } else {
                            format!(
                                "duplicate key: \"{key}\" sets column {} a second time",
                                col.name
                            )
                        };
                        return Err(DecodeError::new(DecodeErrorKind::DuplicateKey, msg)
                            .in_field(&col.name));
                    }
                    drop(key);
                    cols.stamps[i] = stamp;
                    if let Err(e) = decode_value(col, cur, ctx, depth + 1) {
                        return Err(e.in_field(&col.name));
                    }
                }
            }
            pos += 1;
            if !cur.next_member(b'}')? {
                break;
            }
        }
    }
    for (col, &set) in cols.fields.iter_mut().zip(&cols.stamps) {
        // Projected columns are filled from their pointers once the row is decoded.
        if set == stamp || col.projected {
            continue;
        }
        if let (Some(kind), Some(meta)) = (col.meta, meta) {
            push_meta(col, kind, meta)?;
        } else if col.nullable {
            col.push_null();
        } else {
            return Err(DecodeError::new(
                DecodeErrorKind::MissingField,
                format!(
                    "required field is missing (expected {})",
                    col.kind.describe()
                ),
            )
            .in_field(&col.name));
        }
    }
    Ok(())
}

fn push_meta(col: &mut Column, kind: MetaKind, meta: &RecordMeta<'_>) -> Result<(), DecodeError> {
    let missing = || {
        DecodeError::new(
            DecodeErrorKind::MissingField,
            "required metadata column has no value for this source",
        )
    };
    match kind {
        MetaKind::Topic => push_bytes(col, meta.topic.as_bytes()),
        MetaKind::Partition => match meta.partition {
            Some(p) if col.kind == Kind::Int => push_i32(col, p),
            Some(p) => push_i64(col, p as i64),
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::Offset => match meta.offset {
            Some(o) => push_i64(col, o),
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::Timestamp => match meta.timestamp_ms {
            Some(ms) => {
                let v = match col.kind {
                    Kind::Timestamp { nanos: true, .. } => ms.saturating_mul(1_000_000),
                    Kind::Timestamp { .. } => ms.saturating_mul(1000),
                    _ => ms,
                };
                push_i64(col, v)
            }
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::Key => match meta.key {
            Some(k) if col.kind == Kind::String => match std::str::from_utf8(k) {
                Ok(_) => push_bytes(col, k),
                Err(_) => push_bytes(col, String::from_utf8_lossy(k).as_bytes()),
            },
            Some(k) => push_bytes(col, k),
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::IngestedAt => {
            let v = match col.kind {
                Kind::Timestamp { nanos: true, .. } => meta.ingested_at_us.saturating_mul(1000),
                _ => meta.ingested_at_us,
            };
            push_i64(col, v)
        }
    }
    Ok(())
}

#[inline]
fn push_i32(col: &mut Column, v: i32) {
    if let Store::I32(vals) = &mut col.store {
        vals.push(v);
        col.validity.append(true);
    }
}

#[inline]
fn push_i64(col: &mut Column, v: i64) {
    if let Store::I64(vals) = &mut col.store {
        vals.push(v);
        col.validity.append(true);
    }
}

#[inline]
fn push_bytes(col: &mut Column, v: &[u8]) {
    if let Store::Bytes { offsets, data } = &mut col.store {
        data.extend_from_slice(v);
        offsets.push(data.len() as i64);
        col.validity.append(true);
    }
}

fn wrong_type(col: &Column, cur: &mut Cursor<'_>, start: usize) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::WrongType,
        format!(
            "expected {}, found {}",
            col.kind.describe(),
            describe_value(cur, start)
        ),
    )
}

fn bad_value(
    kind: DecodeErrorKind,
    col: &Column,
    cur: &mut Cursor<'_>,
    start: usize,
    why: &str,
) -> DecodeError {
    DecodeError::new(
        kind,
        format!(
            "expected {}, found {} ({why})",
            col.kind.describe(),
            describe_value(cur, start)
        ),
    )
}

fn decode_value(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    depth: usize,
) -> Result<(), DecodeError> {
    let peek = cur.peek()?;
    let start = cur.pos();
    if peek == Peek::Null {
        cur.literal(b"null")?;
        if !col.nullable {
            return Err(DecodeError::new(
                DecodeErrorKind::MissingField,
                format!("required field is null (expected {})", col.kind.describe()),
            ));
        }
        col.push_null();
        return Ok(());
    }
    use DecodeErrorKind::{InvalidValue, OutOfRange};
    match (col.kind, peek) {
        (Kind::Bool, Peek::True | Peek::False) => {
            let v = peek == Peek::True;
            cur.literal(if v { b"true" } else { b"false" })?;
            if let Store::Bool(b) = &mut col.store {
                b.append(v);
                col.validity.append(true);
            }
        }
        (Kind::Int | Kind::Long, Peek::Number) => {
            let n = cur.number()?;
            let v = match n.int {
                Some(i) => i,
                None => {
                    let f = n.as_f64();
                    if n.is_float && f.fract() != 0.0 {
                        return Err(wrong_type(col, cur, start));
                    }
                    if !(-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f) {
                        return Err(bad_value(OutOfRange, col, cur, start, "out of range"));
                    }
                    f as i64
                }
            };
            if col.kind == Kind::Int {
                let Ok(v) = i32::try_from(v) else {
                    return Err(bad_value(OutOfRange, col, cur, start, "out of range"));
                };
                push_i32(col, v);
            } else {
                push_i64(col, v);
            }
        }
        (Kind::Float | Kind::Double, Peek::Number) => {
            let v = cur.number()?.as_f64();
            if !v.is_finite() || (col.kind == Kind::Float && v.abs() > f32::MAX as f64) {
                return Err(bad_value(OutOfRange, col, cur, start, "out of range"));
            }
            match &mut col.store {
                Store::F32(vals) => vals.push(v as f32),
                Store::F64(vals) => vals.push(v),
                _ => unreachable!("float kinds use float stores"),
            }
            col.validity.append(true);
        }
        (Kind::Decimal { precision, scale }, Peek::Number | Peek::String) => {
            let parsed = if peek == Peek::Number {
                let n = cur.number()?;
                value::parse_decimal(n.text, precision, scale)
            } else {
                let s = cur.string(&mut ctx.scratch)?;
                value::parse_decimal(&s, precision, scale)
            };
            match parsed {
                Ok(v) => {
                    if let Store::I128(vals) = &mut col.store {
                        vals.push(v);
                        col.validity.append(true);
                    }
                }
                Err(why @ "not a decimal number") => {
                    return Err(bad_value(InvalidValue, col, cur, start, why));
                }
                Err(why) => return Err(bad_value(OutOfRange, col, cur, start, why)),
            }
        }
        (Kind::Date, Peek::Number) => {
            let n = cur.number()?;
            match n.int.and_then(|d| i32::try_from(d).ok()) {
                Some(d) => push_i32(col, d),
                None => return Err(bad_value(OutOfRange, col, cur, start, "not a day number")),
            }
        }
        (Kind::Time, Peek::Number) => {
            let n = cur.number()?;
            match n.int.filter(|v| (0..86_400_000_000).contains(v)) {
                Some(us) => push_i64(col, us),
                None => {
                    return Err(bad_value(
                        OutOfRange,
                        col,
                        cur,
                        start,
                        "microseconds of day out of range",
                    ));
                }
            }
        }
        (Kind::Timestamp { nanos, .. }, Peek::Number) => {
            let n = cur.number()?;
            let v = match n.int {
                Some(ms) => ms.checked_mul(if nanos { 1_000_000 } else { 1000 }),
                None => value::millis_to_unit(n.as_f64(), nanos),
            };
            match v {
                Some(v) => push_i64(col, v),
                None => return Err(bad_value(OutOfRange, col, cur, start, "out of range")),
            }
        }
        (
            Kind::String
            | Kind::Uuid
            | Kind::Binary
            | Kind::Fixed(_)
            | Kind::Date
            | Kind::Time
            | Kind::Timestamp { .. },
            Peek::String,
        ) => {
            let s = cur.string(&mut ctx.scratch)?;
            if let Err(why) = push_from_str(col, &s, false) {
                drop(s);
                return Err(bad_value(InvalidValue, col, cur, start, why));
            }
        }
        (Kind::Struct, Peek::Object) => {
            let Store::Struct(fields) = &mut col.store else {
                unreachable!("struct kind has a struct store")
            };
            decode_object(fields, cur, ctx, depth, None)?;
            col.validity.append(true);
        }
        (Kind::List, Peek::Array) => {
            if depth > json::MAX_DEPTH {
                return Err(DecodeError::new(
                    DecodeErrorKind::TooDeep,
                    "nesting too deep",
                ));
            }
            let Store::List { offsets, child } = &mut col.store else {
                unreachable!("list kind has a list store")
            };
            if !cur.begin_array()? {
                let mut i = 0;
                loop {
                    decode_value(child, cur, ctx, depth + 1).map_err(|e| e.at_index(i))?;
                    i += 1;
                    if !cur.next_member(b']')? {
                        break;
                    }
                }
            }
            offsets.push(child.len() as i32);
            col.validity.append(true);
        }
        (Kind::Map, Peek::Object) => {
            if depth > json::MAX_DEPTH {
                return Err(DecodeError::new(
                    DecodeErrorKind::TooDeep,
                    "nesting too deep",
                ));
            }
            let Store::Map {
                offsets,
                key,
                value,
            } = &mut col.store
            else {
                unreachable!("map kind has a map store")
            };
            if !cur.begin_object()? {
                loop {
                    let k = cur.key(&mut ctx.scratch)?;
                    if let Err(why) = push_from_str(key, &k, true) {
                        let msg = format!(
                            "map key \"{k}\" is not a valid {} ({why})",
                            key.kind.describe()
                        );
                        return Err(DecodeError::new(InvalidValue, msg));
                    }
                    drop(k);
                    decode_value(value, cur, ctx, depth + 1).map_err(|e| e.in_field("value"))?;
                    if !cur.next_member(b'}')? {
                        break;
                    }
                }
            }
            offsets.push(key.len() as i32);
            col.validity.append(true);
        }
        _ => return Err(wrong_type(col, cur, start)),
    }
    Ok(())
}

/// Appends a value given as text. `lenient` (map keys) also parses numbers and booleans from
/// text; JSON string values for numeric columns are a type error instead.
fn push_from_str(col: &mut Column, s: &str, lenient: bool) -> Result<(), &'static str> {
    match col.kind {
        Kind::String => push_bytes(col, s.as_bytes()),
        Kind::Uuid => {
            let u = uuid::Uuid::try_parse(s).map_err(|_| "not a UUID")?;
            push_fixed(col, u.as_bytes());
        }
        Kind::Binary => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "not base64")?;
            push_bytes(col, &b);
        }
        Kind::Fixed(n) => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "not base64")?;
            if b.len() != n {
                return Err("wrong length after base64 decoding");
            }
            push_fixed(col, &b);
        }
        Kind::Date => push_i32(col, value::parse_date(s)?),
        Kind::Time => push_i64(col, value::parse_time(s)?),
        Kind::Timestamp { tz, nanos } => {
            let t = s.trim();
            let v = if !t.is_empty()
                && t.bytes()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-'))
            {
                let ms: i64 = t.parse().map_err(|_| "epoch millis out of range")?;
                ms.checked_mul(if nanos { 1_000_000 } else { 1000 })
                    .ok_or("epoch millis out of range")?
            } else {
                value::parse_timestamp(t, tz, nanos)?
            };
            push_i64(col, v);
        }
        Kind::Int if lenient => push_i32(col, s.parse().map_err(|_| "not an int")?),
        Kind::Long if lenient => push_i64(col, s.parse().map_err(|_| "not a long")?),
        Kind::Bool if lenient => {
            let v = match s {
                "true" => true,
                "false" => false,
                _ => return Err("not a boolean"),
            };
            if let Store::Bool(b) = &mut col.store {
                b.append(v);
                col.validity.append(true);
            }
        }
        Kind::Float | Kind::Double if lenient => {
            let v: f64 = s.parse().map_err(|_| "not a number")?;
            match &mut col.store {
                Store::F32(vals) => vals.push(v as f32),
                Store::F64(vals) => vals.push(v),
                _ => unreachable!("float kinds use float stores"),
            }
            col.validity.append(true);
        }
        Kind::Decimal { precision, scale } if lenient => {
            let v = value::parse_decimal(s, precision, scale)?;
            if let Store::I128(vals) = &mut col.store {
                vals.push(v);
                col.validity.append(true);
            }
        }
        _ => return Err("unsupported type for a text value"),
    }
    Ok(())
}

#[inline]
fn push_fixed(col: &mut Column, v: &[u8]) {
    if let Store::Fixed { data, .. } = &mut col.store {
        data.extend_from_slice(v);
        col.validity.append(true);
    }
}

#[cfg(test)]
mod tests;

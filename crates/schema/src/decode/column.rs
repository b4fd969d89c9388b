//! Column builders that can be truncated, so a record that fails halfway is rolled back and
//! its batch stays intact. Built from the table's Arrow schema (field ids carried in the
//! fields' metadata) and finished into Arrow arrays of exactly those types.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Decimal128Array, FixedSizeBinaryArray, LargeBinaryArray, ListArray,
    MapArray, PrimitiveArray, StringArray, StructArray,
    types::{
        Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, Time64MicrosecondType,
        TimestampMicrosecondType, TimestampNanosecondType,
    },
};
use arrow_buffer::{BooleanBufferBuilder, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, FieldRef, Fields};
use iceberg::spec::{NestedField, PrimitiveType, StructType, Type};

use crate::names::KeyResolver;
use crate::{Error, Result};

/// What a column holds, as the decoder interprets JSON for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Decimal { precision: u8, scale: i8 },
    Date,
    Time,
    Timestamp { tz: bool, nanos: bool },
    String,
    Uuid,
    Fixed(usize),
    Binary,
    Struct,
    List,
    Map,
}

impl Kind {
    /// The Iceberg type name used in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Int => "int".into(),
            Kind::Long => "long".into(),
            Kind::Float => "float".into(),
            Kind::Double => "double".into(),
            Kind::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            Kind::Date => "date (YYYY-MM-DD or days since epoch)".into(),
            Kind::Time => "time (HH:MM:SS[.ffffff] or microseconds of day)".into(),
            Kind::Timestamp { tz: true, nanos } => format!(
                "timestamptz{} (epoch millis or ISO-8601 with offset)",
                if *nanos { "_ns" } else { "" }
            ),
            Kind::Timestamp { tz: false, nanos } => format!(
                "timestamp{} (epoch millis or ISO-8601)",
                if *nanos { "_ns" } else { "" }
            ),
            Kind::String => "string".into(),
            Kind::Uuid => "uuid".into(),
            Kind::Fixed(n) => format!("fixed[{n}] (base64)"),
            Kind::Binary => "binary (base64)".into(),
            Kind::Struct => "object".into(),
            Kind::List => "array".into(),
            Kind::Map => "object (map)".into(),
        }
    }
}

/// Columns filled from the message's metadata rather than its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKind {
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    IngestedAt,
}

impl MetaKind {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "_kafka_topic" => MetaKind::Topic,
            "_kafka_partition" => MetaKind::Partition,
            "_kafka_offset" => MetaKind::Offset,
            "_kafka_timestamp" => MetaKind::Timestamp,
            "_kafka_key" => MetaKind::Key,
            "_ingested_at" => MetaKind::IngestedAt,
            _ => return None,
        })
    }
}

pub(crate) enum Store {
    Bool(BooleanBufferBuilder),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I128(Vec<i128>),
    /// Utf8 (i32 offsets) or LargeBinary (i64 offsets, narrowed at finish): kept as i64 here.
    Bytes {
        offsets: Vec<i64>,
        data: Vec<u8>,
    },
    Fixed {
        width: usize,
        data: Vec<u8>,
    },
    Struct(Box<StructCols>),
    List {
        offsets: Vec<i32>,
        child: Box<Column>,
    },
    Map {
        offsets: Vec<i32>,
        key: Box<Column>,
        value: Box<Column>,
    },
}

/// The fields of a struct (or of the record itself) and how JSON keys reach them.
pub(crate) struct StructCols {
    pub(crate) fields: Vec<Column>,
    /// Per field: the object stamp that last set it (duplicate and missing detection without
    /// clearing a bitmap per object).
    pub(crate) stamps: Vec<u64>,
    pub(crate) resolver: KeyResolver,
    /// Keys that match no column but are read by projections (`columns.<c>` pointers through
    /// this object, projected columns' own names and aliases): neither unknown nor rejected.
    pub(crate) consumed: std::collections::HashSet<String>,
}

pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) nullable: bool,
    pub(crate) meta: Option<MetaKind>,
    /// Filled from a JSON pointer (`columns.<name>`), not by key.
    pub(crate) projected: bool,
    pub(crate) validity: BooleanBufferBuilder,
    pub(crate) store: Store,
    field: FieldRef,
}

impl Column {
    /// Builds a column for an Iceberg field and the Arrow field iceberg-rust derives from it
    /// (which carries the field id). `top_level` enables metadata columns (`_kafka_offset`,
    /// …); `aliases` apply to the record's own fields only.
    pub(crate) fn new(
        field: &FieldRef,
        ice: &NestedField,
        top_level: bool,
        aliases: &HashMap<String, String>,
    ) -> Result<Self> {
        let unsupported = || {
            Error::Unsupported(format!(
                "column {}: type {} cannot be decoded from JSON",
                field.name(),
                ice.field_type
            ))
        };
        let meta = if top_level {
            MetaKind::from_name(field.name())
        } else {
            None
        };
        let (kind, store) = match (ice.field_type.as_ref(), field.data_type()) {
            (Type::Primitive(p), dt) => {
                let kind = primitive_kind(p).ok_or_else(unsupported)?;
                (kind, primitive_store(kind, dt).ok_or_else(unsupported)?)
            }
            (Type::Struct(st), DataType::Struct(fields)) => (
                Kind::Struct,
                Store::Struct(Box::new(StructCols::new(fields, st, false, aliases)?)),
            ),
            (Type::List(lt), DataType::List(child)) => (
                Kind::List,
                Store::List {
                    offsets: vec![0],
                    child: Box::new(Column::new(child, &lt.element_field, false, aliases)?),
                },
            ),
            (Type::Map(mt), DataType::Map(entries, _)) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    return Err(unsupported());
                };
                (
                    Kind::Map,
                    Store::Map {
                        offsets: vec![0],
                        key: Box::new(Column::new(&kv[0], &mt.key_field, false, aliases)?),
                        value: Box::new(Column::new(&kv[1], &mt.value_field, false, aliases)?),
                    },
                )
            }
            _ => return Err(unsupported()),
        };
        Ok(Self {
            name: field.name().clone(),
            kind,
            nullable: field.is_nullable(),
            projected: false,
            meta,
            validity: BooleanBufferBuilder::new(0),
            store,
            field: field.clone(),
        })
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.validity.len()
    }

    /// Appends a null; children of a null struct get a null, or a default where required.
    pub(crate) fn push_null(&mut self) {
        self.validity.append(false);
        self.push_placeholder();
    }

    /// Appends a valid default value (for required children under a null parent).
    fn push_default(&mut self) {
        self.validity.append(true);
        self.push_placeholder();
    }

    fn push_placeholder(&mut self) {
        match &mut self.store {
            Store::Bool(b) => b.append(false),
            Store::I32(v) => v.push(0),
            Store::I64(v) => v.push(0),
            Store::F32(v) => v.push(0.0),
            Store::F64(v) => v.push(0.0),
            Store::I128(v) => v.push(0),
            Store::Bytes { offsets, .. } => {
                offsets.push(*offsets.last().expect("offsets start at 0"))
            }
            Store::Fixed { width, data } => data.resize(data.len() + *width, 0),
            Store::Struct(s) => {
                for f in &mut s.fields {
                    if f.nullable {
                        f.push_null()
                    } else {
                        f.push_default()
                    }
                }
            }
            Store::List { offsets, .. } | Store::Map { offsets, .. } => {
                offsets.push(*offsets.last().expect("offsets start at 0"))
            }
        }
    }

    /// Drops every value past `len` (rollback of a failed record).
    /// Children of a list, map or struct may hold values of a record whose own entry was never
    /// pushed (it failed midway), so they are cut even when this column's length is `len`.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.validity.truncate(len);
        match &mut self.store {
            Store::Bool(b) => b.truncate(len),
            Store::I32(v) => v.truncate(len),
            Store::I64(v) => v.truncate(len),
            Store::F32(v) => v.truncate(len),
            Store::F64(v) => v.truncate(len),
            Store::I128(v) => v.truncate(len),
            Store::Bytes { offsets, data } => {
                offsets.truncate(len + 1);
                data.truncate(offsets[len] as usize);
            }
            Store::Fixed { width, data } => data.truncate(len * *width),
            Store::Struct(s) => s.fields.iter_mut().for_each(|f| f.truncate(len)),
            Store::List { offsets, child } => {
                offsets.truncate(len + 1);
                child.truncate(offsets[len] as usize);
            }
            Store::Map {
                offsets,
                key,
                value,
            } => {
                offsets.truncate(len + 1);
                key.truncate(offsets[len] as usize);
                value.truncate(offsets[len] as usize);
            }
        }
    }

    /// Bytes held by this column's buffers (approximate, for flush decisions).
    pub(crate) fn buffered_bytes(&self) -> usize {
        let values = match &self.store {
            Store::Bool(b) => b.len() / 8,
            Store::I32(v) => v.len() * 4,
            Store::I64(v) => v.len() * 8,
            Store::F32(v) => v.len() * 4,
            Store::F64(v) => v.len() * 8,
            Store::I128(v) => v.len() * 16,
            Store::Bytes { offsets, data } => offsets.len() * 8 + data.len(),
            Store::Fixed { data, .. } => data.len(),
            Store::Struct(s) => s.fields.iter().map(Column::buffered_bytes).sum(),
            Store::List { offsets, child } => offsets.len() * 4 + child.buffered_bytes(),
            Store::Map {
                offsets,
                key,
                value,
            } => offsets.len() * 4 + key.buffered_bytes() + value.buffered_bytes(),
        };
        values + self.len() / 8
    }

    /// Finishes the buffered values into an Arrow array of this column's field type, leaving
    /// the column empty for the next batch.
    pub(crate) fn finish(&mut self) -> ArrayRef {
        let len = self.len();
        let nulls = take_nulls(&mut self.validity);
        let field = self.field.clone();
        match &mut self.store {
            Store::Bool(b) => {
                let values = std::mem::replace(b, BooleanBufferBuilder::new(0)).finish();
                Arc::new(BooleanArray::new(values, nulls))
            }
            Store::I32(v) => {
                let values = ScalarBuffer::from(std::mem::take(v));
                match self.kind {
                    Kind::Date => Arc::new(PrimitiveArray::<Date32Type>::new(values, nulls)),
                    _ => Arc::new(PrimitiveArray::<Int32Type>::new(values, nulls)),
                }
            }
            Store::I64(v) => finish_i64(
                ScalarBuffer::from(std::mem::take(v)),
                self.kind,
                &field,
                nulls,
            ),
            Store::F32(v) => Arc::new(PrimitiveArray::<Float32Type>::new(
                ScalarBuffer::from(std::mem::take(v)),
                nulls,
            )),
            Store::F64(v) => Arc::new(PrimitiveArray::<Float64Type>::new(
                ScalarBuffer::from(std::mem::take(v)),
                nulls,
            )),
            Store::I128(v) => {
                let Kind::Decimal { precision, scale } = self.kind else {
                    unreachable!("i128 store is decimal")
                };
                Arc::new(
                    Decimal128Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)
                        .with_precision_and_scale(precision, scale)
                        .expect("precision validated at decoder set-up"),
                )
            }
            Store::Bytes { offsets, data } => finish_bytes(self.kind, offsets, data, nulls),
            Store::Fixed { width, data } => Arc::new(FixedSizeBinaryArray::new(
                *width as i32,
                Buffer::from(std::mem::take(data)),
                nulls,
            )),
            Store::Struct(s) => {
                let DataType::Struct(fields) = field.data_type() else {
                    unreachable!("struct store has a struct field")
                };
                let children = s.finish_children();
                if fields.is_empty() {
                    Arc::new(StructArray::new_empty_fields(len, nulls))
                } else {
                    Arc::new(StructArray::new(fields.clone(), children, nulls))
                }
            }
            Store::List { offsets, child } => finish_list(&field, offsets, child, nulls),
            Store::Map {
                offsets,
                key,
                value,
            } => finish_map(&field, offsets, key, value, nulls),
        }
    }
}

/// The Iceberg primitive type's [`Kind`]; `None` for a decimal whose precision or scale the
/// decoder cannot hold.
fn primitive_kind(p: &PrimitiveType) -> Option<Kind> {
    Some(match p {
        PrimitiveType::Boolean => Kind::Bool,
        PrimitiveType::Int => Kind::Int,
        PrimitiveType::Long => Kind::Long,
        PrimitiveType::Float => Kind::Float,
        PrimitiveType::Double => Kind::Double,
        PrimitiveType::Decimal { precision, scale } => Kind::Decimal {
            precision: u8::try_from(*precision).ok()?,
            scale: i8::try_from(*scale).ok()?,
        },
        PrimitiveType::Date => Kind::Date,
        PrimitiveType::Time => Kind::Time,
        PrimitiveType::Timestamp => Kind::Timestamp {
            tz: false,
            nanos: false,
        },
        PrimitiveType::Timestamptz => Kind::Timestamp {
            tz: true,
            nanos: false,
        },
        PrimitiveType::TimestampNs => Kind::Timestamp {
            tz: false,
            nanos: true,
        },
        PrimitiveType::TimestamptzNs => Kind::Timestamp {
            tz: true,
            nanos: true,
        },
        PrimitiveType::String => Kind::String,
        PrimitiveType::Uuid => Kind::Uuid,
        PrimitiveType::Fixed(n) => Kind::Fixed(*n as usize),
        PrimitiveType::Binary => Kind::Binary,
    })
}

/// An empty store for a primitive `kind` held in Arrow type `dt`; `None` when the Arrow type is
/// not the one the decoder builds for that kind.
fn primitive_store(kind: Kind, dt: &DataType) -> Option<Store> {
    Some(match (kind, dt) {
        (Kind::Bool, DataType::Boolean) => Store::Bool(BooleanBufferBuilder::new(0)),
        (Kind::Int | Kind::Date, DataType::Int32 | DataType::Date32) => Store::I32(Vec::new()),
        (
            Kind::Long | Kind::Time | Kind::Timestamp { .. },
            DataType::Int64 | DataType::Time64(_) | DataType::Timestamp(..),
        ) => Store::I64(Vec::new()),
        (Kind::Float, DataType::Float32) => Store::F32(Vec::new()),
        (Kind::Double, DataType::Float64) => Store::F64(Vec::new()),
        (Kind::Decimal { .. }, DataType::Decimal128(..)) => Store::I128(Vec::new()),
        (Kind::String, DataType::Utf8) | (Kind::Binary, DataType::LargeBinary) => Store::Bytes {
            offsets: vec![0],
            data: Vec::new(),
        },
        (Kind::Uuid | Kind::Fixed(_), DataType::FixedSizeBinary(w)) => Store::Fixed {
            width: *w as usize,
            data: Vec::new(),
        },
        _ => return None,
    })
}

/// The array of a 64-bit store: times, timestamps (in the field's zone) or longs.
fn finish_i64(
    values: ScalarBuffer<i64>,
    kind: Kind,
    field: &FieldRef,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    match (kind, field.data_type()) {
        (Kind::Time, _) => Arc::new(PrimitiveArray::<Time64MicrosecondType>::new(values, nulls)),
        (Kind::Timestamp { nanos: false, .. }, DataType::Timestamp(_, tz)) => Arc::new(
            PrimitiveArray::<TimestampMicrosecondType>::new(values, nulls)
                .with_timezone_opt(tz.clone()),
        ),
        (Kind::Timestamp { nanos: true, .. }, DataType::Timestamp(_, tz)) => Arc::new(
            PrimitiveArray::<TimestampNanosecondType>::new(values, nulls)
                .with_timezone_opt(tz.clone()),
        ),
        _ => Arc::new(PrimitiveArray::<Int64Type>::new(values, nulls)),
    }
}

/// The array of a bytes store, emptied: strings (offsets narrowed to i32) or large binary.
fn finish_bytes(
    kind: Kind,
    offsets: &mut Vec<i64>,
    data: &mut Vec<u8>,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    let offsets = std::mem::replace(offsets, vec![0]);
    let data = Buffer::from(std::mem::take(data));
    if kind == Kind::String {
        let offsets: Vec<i32> = offsets.into_iter().map(|o| o as i32).collect();
        // SAFETY-equivalent check is skipped: every value appended was a `&str`.
        Arc::new(unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new_unchecked(ScalarBuffer::from(offsets)),
                data,
                nulls,
            )
        })
    } else {
        Arc::new(LargeBinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            data,
            nulls,
        ))
    }
}

/// The array of a list store (of list `field`), emptied with its child.
fn finish_list(
    field: &FieldRef,
    offsets: &mut Vec<i32>,
    child: &mut Column,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    let DataType::List(child_field) = field.data_type() else {
        unreachable!("list store has a list field")
    };
    let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
    Arc::new(ListArray::new(
        child_field.clone(),
        offsets,
        child.finish(),
        nulls,
    ))
}

/// The array of a map store (of map `field`), emptied with its keys and values.
fn finish_map(
    field: &FieldRef,
    offsets: &mut Vec<i32>,
    key: &mut Column,
    value: &mut Column,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    let DataType::Map(entries_field, ordered) = field.data_type() else {
        unreachable!("map store has a map field")
    };
    let DataType::Struct(kv_fields) = entries_field.data_type() else {
        unreachable!("map entries are a struct")
    };
    let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
    let entries = StructArray::new(kv_fields.clone(), vec![key.finish(), value.finish()], None);
    Arc::new(MapArray::new(
        entries_field.clone(),
        offsets,
        entries,
        nulls,
        *ordered,
    ))
}

fn take_nulls(validity: &mut BooleanBufferBuilder) -> Option<NullBuffer> {
    let bits = std::mem::replace(validity, BooleanBufferBuilder::new(0)).finish();
    let nulls = NullBuffer::new(bits);
    (nulls.null_count() > 0).then_some(nulls)
}

impl StructCols {
    pub(crate) fn new(
        fields: &Fields,
        ice: &StructType,
        top_level: bool,
        aliases: &HashMap<String, String>,
    ) -> Result<Self> {
        let cols = fields
            .iter()
            .zip(ice.fields())
            .map(|(f, i)| Column::new(f, i, top_level, aliases))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<Option<&str>> = cols
            .iter()
            .map(|c| c.meta.is_none().then_some(c.name.as_str()))
            .collect();
        let no_aliases = HashMap::new();
        let resolver = KeyResolver::new(&names, if top_level { aliases } else { &no_aliases });
        Ok(Self {
            stamps: vec![0; cols.len()],
            fields: cols,
            resolver,
            consumed: Default::default(),
        })
    }

    /// Takes the record's columns `projected` out of key matching (and metadata filling):
    /// they are filled from JSON pointers.
    pub(crate) fn project(
        &mut self,
        projected: &[usize],
        aliases: &HashMap<String, String>,
        consumed: std::collections::HashSet<String>,
    ) {
        for &i in projected {
            self.fields[i].projected = true;
            self.fields[i].meta = None;
        }
        self.consumed = consumed;
        let names: Vec<Option<&str>> = self
            .fields
            .iter()
            .map(|c| (c.meta.is_none() && !c.projected).then_some(c.name.as_str()))
            .collect();
        // (Aliases of a projected column no longer resolve: it is not among the names.)
        self.resolver = KeyResolver::new(&names, aliases);
    }

    /// The indices of the column at `path` (member names, through structs).
    pub(crate) fn indices_of(&self, path: &[String]) -> Option<Vec<usize>> {
        let (first, rest) = path.split_first()?;
        let i = self.fields.iter().position(|c| c.name == *first)?;
        let mut out = vec![i];
        if !rest.is_empty() {
            let Store::Struct(inner) = &self.fields[i].store else {
                return None;
            };
            out.extend(inner.indices_of(rest)?);
        }
        Some(out)
    }

    /// The integer value (date, time, timestamp, int, long) row `row` of the column at
    /// `indices` holds; `None` when it is NULL or not an integer column.
    pub(crate) fn value_at(&self, indices: &[usize], row: usize) -> Option<i64> {
        let (first, rest) = indices.split_first()?;
        let col = self.fields.get(*first)?;
        if !rest.is_empty() {
            let Store::Struct(inner) = &col.store else {
                return None;
            };
            return inner.value_at(rest, row);
        }
        if row >= col.len() || !col.validity.get_bit(row) {
            return None;
        }
        match &col.store {
            Store::I32(v) => v.get(row).map(|v| i64::from(*v)),
            Store::I64(v) => v.get(row).copied(),
            _ => None,
        }
    }

    pub(crate) fn finish_children(&mut self) -> Vec<ArrayRef> {
        self.fields.iter_mut().map(Column::finish).collect()
    }
}

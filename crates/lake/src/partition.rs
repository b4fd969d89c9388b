//! Splitting a record batch by the table's partition spec.
//!
//! iceberg-rust's `RecordBatchPartitionSplitter` turns every row's partition value into an
//! Iceberg `Literal` struct and groups rows in a map keyed by it: an allocation and a hash of a
//! boxed value per row, which cost a tenth of the loader's CPU. Here the partition values are
//! computed column-wise with iceberg-rust's transforms (`PartitionValueCalculator`), encoded
//! into comparable byte rows (arrow-row), and rows are grouped by those bytes — with a fast
//! path for runs of equal values, since streams arrive roughly in time order. A spec of one
//! time transform (the usual case) is grouped on its int values directly, and a batch of one
//! partition is not copied. Only one value per group is converted to a `Literal`.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StructArray, UInt32Array};
use arrow_row::{RowConverter, SortField};
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal};
use iceberg::spec::{Literal, PartitionKey, PartitionSpecRef, SchemaRef, StructType};

use crate::{Error, Result};

/// Splits batches of one schema by one partition spec.
pub struct PartitionSplitter {
    calculator: PartitionValueCalculator,
    partition_type: StructType,
    converter: RowConverter,
    spec: PartitionSpecRef,
    schema: SchemaRef,
}

impl PartitionSplitter {
    /// A splitter for `spec` bound to `schema` (the spec must not be unpartitioned).
    pub fn new(schema: SchemaRef, spec: PartitionSpecRef) -> Result<Self> {
        let calculator = PartitionValueCalculator::try_new(&spec, &schema)?;
        let partition_type = calculator.partition_type().clone();
        let arrow_schema::DataType::Struct(fields) = calculator.partition_arrow_type() else {
            return Err(Error::Config("partition type is not a struct".into()));
        };
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(arrow_error)?;
        Ok(Self {
            calculator,
            partition_type,
            converter,
            spec,
            schema,
        })
    }

    /// The batch's rows grouped by partition, each group with its partition key (groups in
    /// order of first appearance, rows in their original order).
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(PartitionKey, RecordBatch)>> {
        let values = self.calculator.calculate(batch)?;
        let structs = values
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| Error::Config("partition values are not a struct array".into()))?;
        let groups = match structs.columns() {
            // One time transform (hour, day, month, year) or an int identity: grouped on the
            // values themselves, without encoding rows.
            [one] if one.as_primitive_opt::<Int32Type>().is_some() => {
                group_ints(one.as_primitive::<Int32Type>())
            }
            columns => self.group_rows(columns)?,
        };
        let mut out = Vec::with_capacity(groups.len());
        let single = groups.len() == 1;
        for (first, indices) in groups {
            let one: ArrayRef = std::sync::Arc::new(structs.slice(first, 1));
            let data = match arrow_struct_to_literal(&one, &self.partition_type)?
                .into_iter()
                .next()
                .flatten()
            {
                Some(Literal::Struct(s)) => s,
                _ => return Err(Error::Config("partition value is not a struct".into())),
            };
            let key = PartitionKey::new(self.spec.as_ref().clone(), self.schema.clone(), data);
            let part = if single {
                batch.clone()
            } else {
                arrow_select::take::take_record_batch(batch, &UInt32Array::from(indices))
                    .map_err(arrow_error)?
            };
            out.push((key, part));
        }
        Ok(out)
    }

    /// (first row, rows) per distinct partition value, by their encoded rows; runs of equal
    /// values (streams arrive roughly in time order) cost one comparison a row.
    fn group_rows(&self, columns: &[ArrayRef]) -> Result<Vec<(usize, Vec<u32>)>> {
        let rows = self
            .converter
            .convert_columns(columns)
            .map_err(arrow_error)?;
        let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut index: HashMap<arrow_row::Row<'_>, usize> = HashMap::new();
        let mut current: Option<(usize, usize)> = None; // (a row of the group, group)
        for i in 0..rows.num_rows() {
            let row = rows.row(i);
            let g = match current {
                Some((r, g)) if rows.row(r) == row => g,
                _ => *index.entry(row).or_insert_with(|| {
                    groups.push((i, Vec::new()));
                    groups.len() - 1
                }),
            };
            groups[g].1.push(i as u32);
            current = Some((i, g));
        }
        Ok(groups)
    }
}

/// (first row, rows) per distinct value (NULL being one); a single value yields no row list
/// (the batch is taken whole).
fn group_ints(values: &Int32Array) -> Vec<(usize, Vec<u32>)> {
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let raw = values.values();
    let nulls = values.null_count();
    if nulls == n || (nulls == 0 && raw.iter().all(|v| *v == raw[0])) {
        return vec![(0, Vec::new())];
    }
    // Few distinct values per batch: a linear search beats a map.
    let mut keys: Vec<Option<i32>> = Vec::new();
    let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut current: Option<(Option<i32>, usize)> = None;
    for i in 0..n {
        let v = values.is_valid(i).then(|| raw[i]);
        let g = match current {
            Some((c, g)) if c == v => g,
            _ => match keys.iter().position(|k| *k == v) {
                Some(g) => g,
                None => {
                    keys.push(v);
                    groups.push((i, Vec::new()));
                    groups.len() - 1
                }
            },
        };
        groups[g].1.push(i as u32);
        current = Some((v, g));
    }
    groups
}

/// The column a table's time partition derives from (the first hour/day/month/year field of
/// its default spec): (field id, name). For floe's tables this is the event time.
pub fn event_time_column(metadata: &iceberg::spec::TableMetadata) -> Option<(i32, String)> {
    use iceberg::spec::Transform;
    let field = metadata
        .default_partition_spec()
        .fields()
        .iter()
        .find(|f| {
            matches!(
                f.transform,
                Transform::Hour | Transform::Day | Transform::Month | Transform::Year
            )
        })?;
    let column = metadata.current_schema().field_by_id(field.source_id)?;
    Some((column.id, column.name.clone()))
}

fn arrow_error(e: arrow_schema::ArrowError) -> Error {
    Error::Config(format!("partitioning a batch: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use iceberg::arrow::{RecordBatchPartitionSplitter, schema_to_arrow_schema};
    use iceberg::spec::{
        NestedField, PartitionSpec, PrimitiveType, Schema, Struct, Transform, Type,
    };
    use proptest::prelude::*;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(
            Schema::builder()
                .with_fields(vec![
                    Arc::new(NestedField::required(
                        1,
                        "id",
                        Type::Primitive(PrimitiveType::Long),
                    )),
                    Arc::new(NestedField::optional(
                        2,
                        "ts",
                        Type::Primitive(PrimitiveType::Timestamptz),
                    )),
                    Arc::new(NestedField::optional(
                        3,
                        "country",
                        Type::Primitive(PrimitiveType::String),
                    )),
                ])
                .build()
                .unwrap(),
        )
    }

    fn spec(schema: &SchemaRef, with_country: bool) -> PartitionSpecRef {
        let mut b = PartitionSpec::builder(schema.clone())
            .add_partition_field("ts", "ts_hour", Transform::Hour)
            .unwrap();
        if with_country {
            b = b
                .add_partition_field("country", "country", Transform::Identity)
                .unwrap();
        }
        Arc::new(b.build().unwrap())
    }

    /// partition value → ids, for comparing splitters.
    fn grouped(parts: Vec<(PartitionKey, RecordBatch)>) -> Vec<(Struct, Vec<i64>)> {
        let mut out: Vec<(Struct, Vec<i64>)> = parts
            .into_iter()
            .map(|(k, b)| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (k.data().clone(), ids.values().to_vec())
            })
            .collect();
        out.sort_by_key(|(_, ids)| ids[0]);
        out
    }

    proptest! {
        #[test]
        fn agrees_with_iceberg_rust(
            rows in proptest::collection::vec((proptest::option::weighted(0.95, 0i64..20_000_000_000), proptest::option::of(0u8..4)), 1..400),
            with_country in any::<bool>(),
            // Within one hour: one partition (unless a NULL time makes a second).
            one_hour in any::<bool>(),
        ) {
            let ts = |t: Option<i64>| t.map(|t| if one_hour { t % 3_600_000_000 } else { t });
            let schema = schema();
            let spec = spec(&schema, with_country);
            let arrow = Arc::new(schema_to_arrow_schema(&schema).unwrap());
            let batch = RecordBatch::try_new(arrow, vec![
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
                Arc::new(TimestampMicrosecondArray::from_iter(rows.iter().map(|r| ts(r.0))).with_timezone("+00:00")),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.map(|c| format!("c{c}"))))),
            ]).unwrap();
            let ours = PartitionSplitter::new(schema.clone(), spec.clone()).unwrap().split(&batch).unwrap();
            for (key, part) in &ours {
                prop_assert_eq!(part.num_rows() > 0, true);
                prop_assert_eq!(key.spec().spec_id(), spec.spec_id());
                prop_assert!(part.column(2).null_count() <= part.num_rows());
            }
            let theirs = RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec)
                .unwrap()
                .split(&batch)
                .unwrap();
            prop_assert_eq!(grouped(ours), grouped(theirs));
        }
    }
}

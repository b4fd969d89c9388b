//! Splitting a record batch by the table's partition spec.
//!
//! iceberg-rust's `RecordBatchPartitionSplitter` turns every row's partition value into an
//! Iceberg `Literal` struct and groups rows in a map keyed by it: an allocation and a hash of a
//! boxed value per row, which cost a tenth of the loader's CPU. Here the partition values are
//! computed column-wise with iceberg-rust's transforms (`PartitionValueCalculator`), encoded
//! into comparable byte rows (arrow-row), and rows are grouped by those bytes — with a fast
//! path for runs of equal values, since streams arrive roughly in time order. A spec of one
//! time transform (the usual case) is grouped on its int values directly, and a batch of one
//! partition is not copied; nor is a batch whose values come in long runs (a stream's rows in
//! event-time order, a day partition of hourly partials): it is cut into zero-copy slices, one
//! per run, instead of gathered per partition. Only one value per partition is converted to a
//! `Literal`.
//!
//! A batch holding a time its partition cannot hold ([`PartitionRange`]; the decoder rejects
//! those) is refused rather than split: iceberg-rust would wrap its hour or make its year NULL.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int32Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, StructArray, UInt32Array};
use arrow_row::{RowConverter, SortField};
use floe_schema::PartitionRange;
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
    ranges: Vec<PartitionRange>,
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
            ranges: PartitionRange::for_spec(&spec, &schema),
            spec,
            schema,
        })
    }

    /// The batch's rows by partition, each part with its partition key, rows in their
    /// original order. Parts are whole partitions in order of first appearance, or, when the
    /// partition values come in long runs, consecutive slices of the batch (then a partition
    /// may have several parts).
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(PartitionKey, RecordBatch)>> {
        self.check_ranges(batch)?;
        let values = self.calculator.calculate(batch)?;
        let structs = values
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| Error::Config("partition values are not a struct array".into()))?;
        let groups = match structs.columns() {
            // One time transform (hour, day, month, year) or an int identity: grouped on the
            // values themselves, without encoding rows.
            [one] if one.as_primitive_opt::<Int32Type>().is_some() => {
                let ints = one.as_primitive::<Int32Type>();
                if let Some(runs) = long_runs(ints) {
                    return self.slices(batch, structs, ints, &runs);
                }
                group_ints(ints)
            }
            columns => self.group_rows(columns)?,
        };
        let mut out = Vec::with_capacity(groups.len());
        let single = groups.len() == 1;
        for (first, indices) in groups {
            let key = self.key(structs, first)?;
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

    /// Refuses a batch with a time its partition cannot hold.
    fn check_ranges(&self, batch: &RecordBatch) -> Result<()> {
        for range in &self.ranges {
            let Some(column) = column_at(batch, &range.path) else {
                continue;
            };
            let beyond = |(i, v): (usize, i64)| {
                (column.is_valid(i) && !range.holds(v)).then(|| {
                    Error::Unsupported(format!(
                        "column {}, row {i}: {}; such rows are dead letters, not data",
                        range.path.join("."),
                        range.beyond(v)
                    ))
                })
            };
            let found = if let Some(a) = column.as_primitive_opt::<TimestampMicrosecondType>() {
                a.values().iter().copied().enumerate().find_map(beyond)
            } else if let Some(a) = column.as_primitive_opt::<Date32Type>() {
                a.values()
                    .iter()
                    .map(|v| i64::from(*v))
                    .enumerate()
                    .find_map(beyond)
            } else {
                None
            };
            if let Some(e) = found {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The partition key of row `row`.
    fn key(&self, structs: &StructArray, row: usize) -> Result<PartitionKey> {
        let one: ArrayRef = std::sync::Arc::new(structs.slice(row, 1));
        let data = match arrow_struct_to_literal(&one, &self.partition_type)?
            .into_iter()
            .next()
            .flatten()
        {
            Some(Literal::Struct(s)) => s,
            _ => return Err(Error::Config("partition value is not a struct".into())),
        };
        Ok(PartitionKey::new(
            self.spec.as_ref().clone(),
            self.schema.clone(),
            data,
        ))
    }

    /// One zero-copy slice of `batch` per run of `runs` (start row, rows), with its key
    /// (made once per distinct value).
    fn slices(
        &self,
        batch: &RecordBatch,
        structs: &StructArray,
        values: &Int32Array,
        runs: &[(usize, usize)],
    ) -> Result<Vec<(PartitionKey, RecordBatch)>> {
        let mut keys: Vec<(Option<i32>, PartitionKey)> = Vec::new();
        let mut out = Vec::with_capacity(runs.len());
        for &(start, len) in runs {
            let v = values.is_valid(start).then(|| values.value(start));
            let key = match keys.iter().find(|(k, _)| *k == v) {
                Some((_, key)) => key.clone(),
                None => {
                    let key = self.key(structs, start)?;
                    keys.push((v, key.clone()));
                    key
                }
            };
            out.push((key, batch.slice(start, len)));
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

/// The column at `path` (member names, through structs).
fn column_at<'a>(batch: &'a RecordBatch, path: &[String]) -> Option<&'a ArrayRef> {
    let (first, rest) = path.split_first()?;
    let mut column = batch.column_by_name(first)?;
    for name in rest {
        column = column.as_struct_opt()?.column_by_name(name)?;
    }
    Some(column)
}

/// Runs of equal values (NULL being one) shorter than this on average are gathered per
/// partition (`take`); longer ones are sliced. A slice costs the Parquet writer a call per
/// column (about a microsecond) where a gather copies every value of the run, so slicing pays
/// long before this; below it, the writer's per-call work and small pages would dominate.
const SLICE_MIN_ROWS: usize = 1024;

/// (start row, rows) of each run of equal values, when the runs are at least
/// [`SLICE_MIN_ROWS`] long on average and there are several; `None` otherwise.
fn long_runs(values: &Int32Array) -> Option<Vec<(usize, usize)>> {
    let n = values.len();
    let most = n / SLICE_MIN_ROWS;
    if most < 2 {
        return None;
    }
    let raw = values.values();
    let same = |a: usize, b: usize| {
        values.is_valid(a) == values.is_valid(b) && (values.is_null(a) || raw[a] == raw[b])
    };
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..n {
        if !same(i, start) {
            if runs.len() + 1 >= most {
                return None;
            }
            runs.push((start, i - start));
            start = i;
        }
    }
    runs.push((start, n - start));
    (runs.len() > 1).then_some(runs)
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

    /// partition value → ids (the parts of a partition joined in order), for comparing
    /// splitters.
    fn grouped(parts: Vec<(PartitionKey, RecordBatch)>) -> Vec<(Struct, Vec<i64>)> {
        let mut out: Vec<(Struct, Vec<i64>)> = Vec::new();
        for (k, b) in parts {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            match out.iter_mut().find(|(s, _)| s == k.data()) {
                Some((_, v)) => v.extend(ids.values()),
                None => out.push((k.data().clone(), ids.values().to_vec())),
            }
        }
        out.sort_by_key(|(_, ids)| ids[0]);
        out
    }

    /// A batch of `schema()` with the given times (ids 0..).
    fn batch_of(times: &[Option<i64>], country: impl Fn(usize) -> Option<String>) -> RecordBatch {
        let arrow = Arc::new(schema_to_arrow_schema(&schema()).unwrap());
        RecordBatch::try_new(
            arrow,
            vec![
                Arc::new(Int64Array::from_iter_values(0..times.len() as i64)),
                Arc::new(
                    TimestampMicrosecondArray::from_iter(times.iter().copied())
                        .with_timezone("+00:00"),
                ),
                Arc::new(StringArray::from_iter((0..times.len()).map(country))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn long_runs_are_sliced_without_copying() {
        const HOUR: i64 = 3_600_000_000;
        // Hours 0, 1, 0 (again), NULL, 2 in runs of 1500 rows: five parts, in order.
        let times: Vec<Option<i64>> = [Some(0), Some(HOUR), Some(10), None, Some(2 * HOUR + 5)]
            .iter()
            .flat_map(|t| std::iter::repeat_n(*t, 1500))
            .collect();
        let batch = batch_of(&times, |i| Some(format!("c{}", i % 7)));
        let schema = schema();
        let parts = PartitionSplitter::new(schema.clone(), spec(&schema, false))
            .unwrap()
            .split(&batch)
            .unwrap();
        assert_eq!(parts.len(), 5);
        let country = batch.column(2).as_string::<i32>();
        for (i, (_, part)) in parts.iter().enumerate() {
            assert_eq!(part.num_rows(), 1500);
            let ids = part
                .column(0)
                .as_primitive::<arrow_array::types::Int64Type>();
            assert_eq!(ids.value(0), i as i64 * 1500);
            // A slice shares the batch's buffers.
            let sliced = part.column(2).as_string::<i32>();
            assert_eq!(sliced.values().as_ptr(), country.values().as_ptr());
        }
        assert_eq!(
            parts[0].0.data(),
            parts[2].0.data(),
            "the same hour has the same key"
        );
        assert_ne!(parts[0].0.data(), parts[1].0.data());
        assert_eq!(parts[3].0.data().fields(), &[None]);
        // Runs shorter than the threshold on average are gathered per partition instead.
        let short: Vec<Option<i64>> = (0..6000).map(|i| Some((i % 3) * HOUR)).collect();
        let parts = PartitionSplitter::new(schema.clone(), spec(&schema, false))
            .unwrap()
            .split(&batch_of(&short, |_| None))
            .unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|(_, p)| p.num_rows() == 2000));
    }

    #[test]
    fn times_beyond_the_hour_partition_are_refused_not_wrapped() {
        let schema = schema();
        let splitter = PartitionSplitter::new(schema.clone(), spec(&schema, false)).unwrap();
        // The first hour past i32::MAX hours wraps to i32::MIN in iceberg-rust.
        let beyond = (i64::from(i32::MAX) + 1) * 3_600_000_000;
        let err = splitter
            .split(&batch_of(&[Some(0), Some(beyond)], |_| None))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("column ts, row 1: +246953-10-09T08:00:00Z is beyond the range of the hour partition \"ts_hour\""),
            "{err}"
        );
        // The last hour that fits is split as itself.
        let parts = splitter
            .split(&batch_of(&[Some(beyond - 1), None], |_| None))
            .unwrap();
        assert_eq!(parts[0].0.data().fields(), &[Some(Literal::int(i32::MAX))]);
    }

    proptest! {
        #[test]
        fn agrees_with_iceberg_rust(
            rows in proptest::collection::vec((proptest::option::weighted(0.95, 0i64..20_000_000_000), proptest::option::of(0u8..4)), 1..400),
            with_country in any::<bool>(),
            // Within one hour: one partition (unless a NULL time makes a second).
            one_hour in any::<bool>(),
            // Each row repeated `run` times: long runs take the slicing path.
            run in prop_oneof![Just(1usize), 1usize..20, 900usize..3000],
        ) {
            let ts = |t: Option<i64>| t.map(|t| if one_hour { t % 3_600_000_000 } else { t });
            let schema = schema();
            let spec = spec(&schema, with_country);
            let rows: Vec<_> = rows.iter().flat_map(|r| std::iter::repeat_n(*r, run)).take(20_000).collect();
            let times: Vec<Option<i64>> = rows.iter().map(|r| ts(r.0)).collect();
            let batch = batch_of(&times, |i| rows[i].1.map(|c| format!("c{c}")));
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

//! What a time partition can hold: the source values whose `year`, `month`, `day` or `hour`
//! partition value exists.
//!
//! Iceberg stores those partition values as `int`. iceberg-rust computes an hour as
//! `micros / 3_600_000_000` cast to `i32`, which wraps for times beyond about 245,000 years
//! from 1970; years and months go through chrono, which knows no date past ±262,143 and yields
//! NULL. Either way a row would land in the wrong partition: a `WHERE event_ts > …` pruned on
//! partitions misses it and retention by partition deletes it. The decoder therefore rejects
//! such values (`out_of_range`, naming the transform and the range) before they reach a
//! writer, and the partition splitter refuses any that got past it.
//!
//! Transforms whose every source value fits have no range here: `day` of a timestamp (at most
//! ±107 million days), any transform of a nanosecond timestamp (±292 years), `day` of a date
//! (the date itself), and `identity`, `bucket` and `truncate`, which do not compute dates.

use chrono::{DateTime, Datelike, NaiveDate};
use iceberg::spec::{PartitionSpec, PrimitiveType, Schema, StructType, Transform, Type};

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The unit of a source column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Days since 1970-01-01 (`date`).
    Days,
    /// Microseconds since 1970-01-01T00:00:00 (`timestamp`, `timestamptz`).
    Micros,
}

/// The range of source values one time partition field holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    /// The source column's field id.
    pub source_id: i32,
    /// The source column's path from the schema's root (struct member names).
    pub path: Vec<String>,
    /// The partition field's name (`event_ts_hour`).
    pub partition: String,
    /// The transform.
    pub transform: Transform,
    /// The unit of `min` and `max`.
    pub unit: Unit,
    /// The smallest value the partition holds.
    pub min: i64,
    /// The largest value the partition holds.
    pub max: i64,
}

impl PartitionRange {
    /// The ranges of `spec`'s time partition fields (bound to `schema`) that do not hold every
    /// value of their source column's type.
    pub fn for_spec(spec: &PartitionSpec, schema: &Schema) -> Vec<Self> {
        let mut out = Vec::new();
        for field in spec.fields() {
            let Some(column) = schema.field_by_id(field.source_id) else {
                continue;
            };
            let Type::Primitive(p) = column.field_type.as_ref() else {
                continue;
            };
            let Some((unit, min, max)) = bounds(field.transform, p) else {
                continue;
            };
            let Some(path) = path_of(schema.as_struct(), field.source_id) else {
                continue;
            };
            out.push(Self {
                source_id: field.source_id,
                path,
                partition: field.name.clone(),
                transform: field.transform,
                unit,
                min,
                max,
            });
        }
        out
    }

    /// Whether the partition holds `value` (in [`Self::unit`]).
    pub fn holds(&self, value: i64) -> bool {
        (self.min..=self.max).contains(&value)
    }

    /// Why the partition does not hold `value`: `+250000-01-01T00:00:00Z is beyond the range
    /// of the hour partition "ts_hour" (-243014-… .. +246953-…)`.
    pub fn beyond(&self, value: i64) -> String {
        format!(
            "{} is beyond the range of the {} partition \"{}\" ({} .. {})",
            self.show(value),
            self.transform,
            self.partition,
            self.show(self.min),
            self.show(self.max)
        )
    }

    fn show(&self, v: i64) -> String {
        let shown = match self.unit {
            Unit::Micros => DateTime::from_timestamp_micros(v)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string()),
            Unit::Days => i32::try_from(v)
                .ok()
                .and_then(|d| d.checked_add(UNIX_EPOCH_DAY_CE))
                .and_then(NaiveDate::from_num_days_from_ce_opt)
                .map(|d| d.format("%Y-%m-%d").to_string()),
        };
        shown.unwrap_or_else(|| match self.unit {
            Unit::Micros => format!("{v} microseconds from 1970"),
            Unit::Days => format!("{v} days from 1970"),
        })
    }
}

/// Days from 0001-01-01 (day 1 of the common era) to 1970-01-01, plus one.
const UNIX_EPOCH_DAY_CE: i32 = 719_163;

/// (unit, min, max) of the source values `transform` of a `p` column maps to an `int`, when
/// that is not every value of the type.
fn bounds(transform: Transform, p: &PrimitiveType) -> Option<(Unit, i64, i64)> {
    let micros = matches!(p, PrimitiveType::Timestamp | PrimitiveType::Timestamptz);
    let date = matches!(p, PrimitiveType::Date);
    // chrono's calendar: what `year` and `month` are computed with.
    let first_micros = DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros();
    let last_micros = DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros();
    let days = |d: NaiveDate| i64::from(d.num_days_from_ce() - UNIX_EPOCH_DAY_CE);
    match transform {
        Transform::Year | Transform::Month if micros => {
            Some((Unit::Micros, first_micros, last_micros))
        }
        Transform::Year | Transform::Month if date => {
            Some((Unit::Days, days(NaiveDate::MIN), days(NaiveDate::MAX)))
        }
        Transform::Hour if micros => Some((
            Unit::Micros,
            i64::from(i32::MIN) * MICROS_PER_HOUR,
            (i64::from(i32::MAX) + 1) * MICROS_PER_HOUR - 1,
        )),
        _ => None,
    }
}

/// Member names from `st` down to field `id`, through structs only (partition sources cannot
/// be in lists or maps).
fn path_of(st: &StructType, id: i32) -> Option<Vec<String>> {
    for f in st.fields() {
        if f.id == id {
            return Some(vec![f.name.clone()]);
        }
        if let Type::Struct(inner) = f.field_type.as_ref()
            && let Some(mut rest) = path_of(inner, id)
        {
            rest.insert(0, f.name.clone());
            return Some(rest);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        Array, ArrayRef, Date32Array, Int32Array, TimestampMicrosecondArray,
        TimestampNanosecondArray,
    };
    use iceberg::spec::{NestedField, PartitionSpec, Schema};
    use iceberg::transform::create_transform_function;

    use super::*;

    fn micros_at(d: NaiveDate) -> i64 {
        d.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_micros()
    }

    fn schema() -> Schema {
        let p = |id, name: &str, t| Arc::new(NestedField::optional(id, name, Type::Primitive(t)));
        Schema::builder()
            .with_fields(vec![
                p(1, "ts", PrimitiveType::Timestamptz),
                p(2, "local", PrimitiveType::Timestamp),
                p(3, "ns", PrimitiveType::TimestampNs),
                p(4, "day", PrimitiveType::Date),
                Arc::new(NestedField::optional(
                    5,
                    "inner",
                    Type::Struct(StructType::new(vec![p(
                        6,
                        "at",
                        PrimitiveType::Timestamptz,
                    )])),
                )),
            ])
            .build()
            .unwrap()
    }

    fn spec_of(schema: &Schema, fields: &[(&str, Transform)]) -> PartitionSpec {
        let mut b = PartitionSpec::builder(Arc::new(schema.clone()));
        for (i, (source, t)) in fields.iter().enumerate() {
            b = b
                .add_partition_field(*source, format!("p{i}_{t}"), *t)
                .unwrap();
        }
        b.build().unwrap()
    }

    /// iceberg-rust's partition value for one source value, as the writer computes it.
    fn partition_value(t: Transform, unit: Unit, v: i64) -> Option<i32> {
        let input: ArrayRef = match unit {
            Unit::Micros => Arc::new(TimestampMicrosecondArray::from(vec![v])),
            Unit::Days => Arc::new(Date32Array::from(vec![i32::try_from(v).ok()?])),
        };
        let out = create_transform_function(&t)
            .unwrap()
            .transform(input)
            .ok()?;
        let ints = out.as_any().downcast_ref::<Int32Array>();
        match ints {
            Some(a) => a.is_valid(0).then(|| a.value(0)),
            None => {
                let d = out.as_any().downcast_ref::<Date32Array>()?;
                d.is_valid(0).then(|| d.value(0))
            }
        }
    }

    #[test]
    fn ranges_are_where_the_partition_value_stops_being_right() {
        let schema = schema();
        for t in [
            Transform::Year,
            Transform::Month,
            Transform::Day,
            Transform::Hour,
        ] {
            let sources: &[&str] = if t == Transform::Hour {
                &["ts", "local", "ns", "inner.at"]
            } else {
                &["ts", "local", "ns", "day", "inner.at"]
            };
            for source in sources {
                let spec = spec_of(&schema, &[(source, t)]);
                let ranges = PartitionRange::for_spec(&spec, &schema);
                let unbounded = *source == "ns" || (t == Transform::Day);
                assert_eq!(ranges.len(), usize::from(!unbounded), "{t} of {source}");
                let Some(r) = ranges.first() else { continue };
                assert_eq!(r.path.join("."), *source);
                // Inside: the value iceberg-rust computes is the true one (it grows with the
                // source value and is not NULL); one step outside it is wrong or missing.
                let at_min = partition_value(t, r.unit, r.min);
                let at_max = partition_value(t, r.unit, r.max);
                assert!(at_min.is_some() && at_max.is_some(), "{t} of {source}");
                assert!(at_min < at_max, "{t} of {source}: {at_min:?} {at_max:?}");
                assert!(
                    partition_value(t, r.unit, r.max + 1).is_none_or(|v| v < at_max.unwrap()),
                    "{t} of {source} past the max"
                );
                assert!(
                    partition_value(t, r.unit, r.min - 1).is_none_or(|v| v > at_min.unwrap()),
                    "{t} of {source} below the min"
                );
                assert!(r.holds(r.min) && r.holds(r.max) && !r.holds(r.max + 1));
            }
        }
    }

    #[test]
    fn unbounded_transforms_hold_every_value() {
        // Nanosecond timestamps: every i64 has its day, month and year (iceberg-rust 0.10
        // computes no hours of them at all).
        for t in [Transform::Year, Transform::Month, Transform::Day] {
            let f = create_transform_function(&t).unwrap();
            let input: ArrayRef =
                Arc::new(TimestampNanosecondArray::from(vec![i64::MIN, i64::MAX]));
            let out = f.transform(input).unwrap();
            assert_eq!(out.null_count(), 0, "{t}");
        }
        // Day of a microsecond timestamp: the extremes land on their true days.
        let f = create_transform_function(&Transform::Day).unwrap();
        let input: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![i64::MIN, i64::MAX]));
        let out = f.transform(input).unwrap();
        let days = out.as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(
            i64::from(days.value(0)),
            i64::MIN.div_euclid(86_400_000_000)
        );
        assert_eq!(
            i64::from(days.value(1)),
            i64::MAX.div_euclid(86_400_000_000)
        );
    }

    #[test]
    fn messages_name_the_value_the_transform_and_the_range() {
        let schema = schema();
        let spec = spec_of(&schema, &[("ts", Transform::Hour)]);
        let r = &PartitionRange::for_spec(&spec, &schema)[0];
        let far = micros_at(NaiveDate::from_ymd_opt(250_000, 1, 1).unwrap());
        let msg = r.beyond(far);
        assert!(
            msg.starts_with(
                "+250000-01-01T00:00:00Z is beyond the range of the hour partition \"p0_hour\" ("
            ),
            "{msg}"
        );
        // The bounds are about 245,000 years either side of 1970.
        let years = |v: i64| v as f64 / (365.2425 * 86_400e6);
        assert!((244_000.0..246_000.0).contains(&years(r.max)), "{msg}");
        assert!((-246_000.0..-244_000.0).contains(&years(r.min)), "{msg}");
        assert!(
            r.beyond(i64::MAX)
                .starts_with("9223372036854775807 microseconds from 1970")
        );
    }
}

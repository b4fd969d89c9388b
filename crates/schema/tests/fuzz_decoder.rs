//! Fuzzing the decoder with proptest: whatever the bytes, a message is a row or a dead letter
//! with a kind — never a panic — and valid records come back as they were sent.
//!
//! `FLOE_FUZZ_CASES` sets the cases per property (256 by default, for CI); a longer run:
//! `FLOE_FUZZ_CASES=200000 cargo nextest run --workspace -E 'test(fuzz)'` (docs/testing.md).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use floe_schema::{DecodeErrorKind, Decoder, DecoderOptions, PartitionRange, RecordMeta};
use iceberg::spec::{PartitionSpec, Schema, Transform};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

fn cases() -> u32 {
    floe_testkit::fuzz_cases()
}

/// A table with every kind of column the decoder fills: nested struct, list, map, timestamp
/// (hour-partitioned), decimal, date, uuid, binary.
fn schema() -> Arc<Schema> {
    Arc::new(
        serde_json::from_value(json!({
        "type": "struct", "schema-id": 0, "fields": [
            {"id": 1, "name": "id", "required": true, "type": "long"},
            {"id": 2, "name": "name", "required": false, "type": "string"},
            {"id": 3, "name": "amount", "required": false, "type": "decimal(10, 2)"},
            {"id": 4, "name": "ts", "required": false, "type": "timestamptz"},
            {"id": 5, "name": "tags", "required": false, "type":
                {"type": "list", "element-id": 6, "element-required": false, "element": "string"}},
            {"id": 7, "name": "attrs", "required": false, "type":
                {"type": "map", "key-id": 8, "key": "string", "value-id": 9,
                 "value-required": false, "value": "long"}},
            {"id": 10, "name": "inner", "required": false, "type": {"type": "struct", "fields": [
                {"id": 11, "name": "a", "required": true, "type": "int"},
                {"id": 12, "name": "b", "required": false, "type": "double"},
                {"id": 13, "name": "deep", "required": false, "type":
                    {"type": "list", "element-id": 14, "element-required": true, "element":
                        {"type": "struct", "fields": [
                            {"id": 15, "name": "x", "required": false, "type": "long"}]}}}]}},
            {"id": 16, "name": "day", "required": false, "type": "date"},
            {"id": 17, "name": "u", "required": false, "type": "uuid"},
            {"id": 18, "name": "bin", "required": false, "type": "binary"},
            {"id": 19, "name": "flag", "required": false, "type": "boolean"}
        ]}))
        .unwrap(),
    )
}

fn decoder() -> Decoder {
    let schema = schema();
    let spec = PartitionSpec::builder(schema.clone())
        .add_partition_field("ts", "ts_hour", Transform::Hour)
        .unwrap()
        .build()
        .unwrap();
    let opts = DecoderOptions {
        partition_ranges: PartitionRange::for_spec(&spec, &schema),
        ..Default::default()
    };
    Decoder::new(&schema, &opts).unwrap()
}

const META: RecordMeta<'static> = RecordMeta {
    topic: "fuzz",
    partition: Some(0),
    offset: Some(1),
    timestamp_ms: Some(0),
    key: None,
    ingested_at_us: 0,
};

/// Decodes every payload, checking each outcome is a row or a classified error, and that the
/// batch holds exactly the accepted rows and is valid Arrow.
fn decode_all(payloads: &[Vec<u8>]) -> Result<RecordBatch, TestCaseError> {
    let mut d = decoder();
    let mut accepted = 0;
    for p in payloads {
        match d.decode(p, &META) {
            Ok(()) => accepted += 1,
            Err(e) => {
                prop_assert!(DecodeErrorKind::ALL.contains(&e.kind));
                prop_assert!(!e.message.is_empty());
            }
        }
        prop_assert_eq!(d.len(), accepted);
    }
    let batch = d.finish();
    prop_assert_eq!(batch.num_rows(), accepted);
    for c in batch.columns() {
        c.to_data()
            .validate_full()
            .map_err(|e| TestCaseError::fail(format!("invalid column: {e}")))?;
    }
    Ok(batch)
}

/// JSON-ish values: real JSON trees whose keys are often column names.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("id".to_string()),
        Just("name".to_string()),
        Just("amount".to_string()),
        Just("ts".to_string()),
        Just("tags".to_string()),
        Just("attrs".to_string()),
        Just("inner".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("deep".to_string()),
        Just("x".to_string()),
        Just("day".to_string()),
        Just("u".to_string()),
        Just("bin".to_string()),
        Just("flag".to_string()),
        "[a-zA-Z_]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-10_000_000_000_000i64..10_000_000_000_000_000).prop_map(|n| json!(n)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("2024-02-29T12:00:00Z")),
        Just(json!("2024-02-30")),
        Just(json!("12345678.901")),
        Just(json!("6ba7b810-9dad-11d1-80b4-00c04fd430c8")),
        Just(json!("aGVsbG8=")),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A text mangled by one of: cutting it, inserting a byte, or flipping a bit.
fn mangled(text: String, at: usize, byte: u8, how: u8) -> Vec<u8> {
    let mut b = text.into_bytes();
    let at = if b.is_empty() { 0 } else { at % b.len() };
    match how % 4 {
        0 => b.truncate(at),
        1 => b.insert(at, byte),
        2 if !b.is_empty() => b[at] ^= 1 << (byte % 8),
        _ => {}
    }
    b
}

/// A valid record and the values it must decode to.
#[derive(Debug, Clone)]
struct Record {
    id: i64,
    name: Option<String>,
    amount_cents: Option<i64>,
    ts_ms: Option<i64>,
    tags: Option<Vec<Option<String>>>,
    attrs: Option<Vec<(String, Option<i64>)>>,
    inner: Option<(i32, Option<f64>)>,
    day: Option<i32>,
    flag: Option<bool>,
}

impl Record {
    fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        o.insert("id".into(), json!(self.id));
        let mut opt = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        opt("name", self.name.clone().map(Value::String));
        opt(
            "amount",
            self.amount_cents.map(|c| {
                let sign = if c < 0 { "-" } else { "" };
                json!(format!(
                    "{sign}{}.{:02}",
                    c.unsigned_abs() / 100,
                    c.unsigned_abs() % 100
                ))
            }),
        );
        opt("ts", self.ts_ms.map(|t| json!(t)));
        opt("tags", self.tags.clone().map(|t| json!(t)));
        opt(
            "attrs",
            self.attrs
                .clone()
                .map(|a| Value::Object(a.into_iter().map(|(k, v)| (k, json!(v))).collect())),
        );
        opt("inner", self.inner.map(|(a, b)| json!({"a": a, "b": b})));
        opt("day", self.day.map(|d| json!(d)));
        opt("flag", self.flag.map(Value::Bool));
        Value::Object(o).to_string()
    }
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<i64>(),
        proptest::option::of("\\PC{0,16}"),
        proptest::option::of(-99_999_999i64..=99_999_999),
        // Epoch millis the hour partition holds.
        proptest::option::of(-7_730_941_132_800_000i64..7_730_941_132_800_000),
        proptest::option::of(proptest::collection::vec(
            proptest::option::of("[a-z]{0,5}"),
            0..4,
        )),
        proptest::option::of(
            proptest::collection::btree_map("[a-z]{1,4}", proptest::option::of(any::<i64>()), 0..4)
                .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
        ),
        proptest::option::of((any::<i32>(), proptest::option::of(-1e300f64..1e300))),
        proptest::option::of(-1_000_000i32..1_000_000),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(id, name, amount_cents, ts_ms, tags, attrs, inner, day, flag)| Record {
                id,
                name,
                amount_cents,
                ts_ms,
                tags,
                attrs,
                inner,
                day,
                flag,
            },
        )
}

fn opt<T>(a: &dyn Array, i: usize, get: impl Fn(usize) -> T) -> Option<T> {
    a.is_valid(i).then(|| get(i))
}

/// The records the batch holds, read back column by column.
fn read_back(b: &RecordBatch) -> Vec<Record> {
    let col = |n: &str| b.column_by_name(n).unwrap().clone();
    let (id, name, amount, ts, tags, attrs, inner, day, flag) = (
        col("id"),
        col("name"),
        col("amount"),
        col("ts"),
        col("tags"),
        col("attrs"),
        col("inner"),
        col("day"),
        col("flag"),
    );
    let amount_v = amount.as_primitive::<Decimal128Type>();
    let ts_v = ts.as_primitive::<TimestampMicrosecondType>();
    let tags_v = tags.as_list::<i32>();
    let attrs_v = attrs.as_map();
    let inner_v = inner.as_struct();
    (0..b.num_rows())
        .map(|i| Record {
            id: id.as_primitive::<Int64Type>().value(i),
            name: opt(&name, i, |i| name.as_string::<i32>().value(i).to_string()),
            amount_cents: opt(&amount, i, |i| amount_v.value(i) as i64),
            ts_ms: opt(&ts, i, |i| ts_v.value(i) / 1000),
            tags: opt(&tags, i, |i| {
                let l = tags_v.value(i);
                let s = l.as_string::<i32>();
                (0..s.len())
                    .map(|j| opt(s, j, |j| s.value(j).to_string()))
                    .collect()
            }),
            attrs: opt(&attrs, i, |i| {
                let e = attrs_v.value(i);
                let k = e.column(0).as_string::<i32>();
                let v = e.column(1).as_primitive::<Int64Type>();
                (0..k.len())
                    .map(|j| (k.value(j).to_string(), opt(v, j, |j| v.value(j))))
                    .collect()
            }),
            inner: opt(&inner, i, |i| {
                let a = inner_v.column(0).as_primitive::<Int32Type>();
                let bb = inner_v.column(1).as_primitive::<Float64Type>();
                (a.value(i), opt(bb, i, |i| bb.value(i)))
            }),
            day: opt(&day, i, |i| {
                day.as_primitive::<arrow_array::types::Date32Type>()
                    .value(i)
            }),
            flag: opt(&flag, i, |i| flag.as_boolean().value(i)),
        })
        .collect()
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    /// Any bytes at all.
    #[test]
    fn fuzz_arbitrary_bytes_are_rows_or_classified_dead_letters(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..8),
    ) {
        decode_all(&payloads)?;
    }

    /// JSON trees shaped like the table (and not), whole and mangled.
    #[test]
    fn fuzz_json_shaped_messages_are_rows_or_classified_dead_letters(
        values in proptest::collection::vec((json_value(), any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let mut payloads = Vec::new();
        for (v, at, byte, how) in values {
            // Mostly objects with an id, so that deeper paths are reached.
            let v = match v {
                Value::Object(mut o) => {
                    if how % 3 != 0 {
                        o.insert("id".into(), json!(at as i64));
                    }
                    Value::Object(o)
                }
                other => other,
            };
            let text = v.to_string();
            payloads.push(text.clone().into_bytes());
            payloads.push(mangled(text, at, byte, how));
        }
        decode_all(&payloads)?;
    }

    /// Valid records decode to exactly their values.
    #[test]
    fn fuzz_valid_records_round_trip(records in proptest::collection::vec(record(), 1..16)) {
        let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.to_json().into_bytes()).collect();
        let mut d = decoder();
        for (p, r) in payloads.iter().zip(&records) {
            if let Err(e) = d.decode(p, &META) {
                return Err(TestCaseError::fail(format!("{r:?} rejected: {e}")));
            }
        }
        let batch = d.finish();
        let back = read_back(&batch);
        prop_assert_eq!(back.len(), records.len());
        for (got, want) in back.iter().zip(&records) {
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }
}

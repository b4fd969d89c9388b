use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use floe_schema::{Decoder, DecoderOptions};

use super::*;

/// A table with a computed required column (`event_hour`) and an optional one.
fn schema() -> iceberg::spec::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "struct", "schema-id": 0,
        "fields": [
            {"id": 1, "name": "event_guid", "required": true, "type": "string"},
            {"id": 2, "name": "event_ts", "required": true, "type": "timestamptz"},
            {"id": 3, "name": "country", "required": false, "type": "string"},
            {"id": 4, "name": "value", "required": false, "type": "double"},
            {"id": 5, "name": "event_hour", "required": true, "type": "timestamptz"},
            {"id": 6, "name": "value_cents", "required": false, "type": "long"},
            {"id": 7, "name": "source", "required": false, "type": "string"}
        ]
    }))
    .unwrap()
}

fn mapping(computed: &[(&str, &str)], rules: &[(&str, &str)]) -> Mapping {
    Mapping {
        computed: computed
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        rules: rules
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Decodes `events` (with partition 3, offsets 100.., header `src: web`) and applies `m`.
fn run(m: &Mapping, events: &[serde_json::Value]) -> Result<Applied, String> {
    let schema = schema();
    let t = Transform::new(&schema, m)
        .map_err(|e| e.to_string())?
        .expect("something to do");
    let mut d = Decoder::new(
        &schema,
        &DecoderOptions {
            mapping: m.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut meta = t.meta_rows();
    for (i, e) in events.iter().enumerate() {
        let rm = RecordMeta {
            topic: "events",
            partition: Some(3),
            offset: Some(100 + i as i64),
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k"),
            ingested_at_us: 0,
        };
        d.decode(e.to_string().as_bytes(), &rm).unwrap();
        meta.push(&rm, [("src", Some(&b"web"[..]))]);
    }
    t.apply(d.finish(), &mut meta)
}

fn strings(b: &RecordBatch, c: &str) -> Vec<Option<String>> {
    b.column_by_name(c)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

const HOUR_US: i64 = 3_600_000_000;

#[test]
fn computed_columns_replace_values_and_rules_reject_exactly_the_failing_rows() {
    let m = mapping(
        &[
            ("country", "lower(country)"),
            ("event_hour", "date_trunc('hour', event_ts)"),
            ("value_cents", "value * 100"),
        ],
        &[
            ("known_country", "country IS NOT NULL"),
            ("non_negative", "value >= 0"),
        ],
    );
    let ts = 1_700_000_123_456i64; // epoch millis
    let events = [
        serde_json::json!({"event_guid": "a", "event_ts": ts, "country": "DE", "value": 1.5}),
        serde_json::json!({"event_guid": "b", "event_ts": ts, "country": "Fr", "value": -1.0}),
        serde_json::json!({"event_guid": "c", "event_ts": ts, "value": 2.0}),
        serde_json::json!({"event_guid": "d", "event_ts": ts, "country": "IT"}),
        serde_json::json!({"event_guid": "e", "event_ts": ts, "value": -3.0}),
    ];
    let a = run(&m, &events).unwrap();
    assert_eq!(strings(&a.rows, "event_guid"), [Some("a".to_string())]);
    assert_eq!(strings(&a.rows, "country"), [Some("de".to_string())]);
    let hour = a
        .rows
        .column_by_name("event_hour")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .value(0);
    assert_eq!(hour, ts * 1000 / HOUR_US * HOUR_US);
    let cents = a
        .rows
        .column_by_name("value_cents")
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(0);
    assert_eq!(cents, 150);
    let hour_field = a
        .rows
        .schema()
        .field_with_name("event_hour")
        .unwrap()
        .clone();
    assert!(
        !hour_field.is_nullable(),
        "the table's nullability is restored"
    );
    let kept: Vec<bool> = a.kept.unwrap().iter().map(Option::unwrap).collect();
    assert_eq!(kept, [true, false, false, false, false]);
    let why: Vec<(usize, &str, &str, &str)> = a
        .rejected
        .iter()
        .map(|r| (r.row, r.kind, r.field.as_str(), r.message.as_str()))
        .collect();
    assert_eq!(
        why,
        [
            (
                1,
                "rule",
                "non_negative",
                "rule non_negative (value >= 0) is false"
            ),
            (
                2,
                "rule",
                "known_country",
                "rule known_country (country IS NOT NULL) is false"
            ),
            (
                3,
                "rule",
                "non_negative",
                "rule non_negative (value >= 0) is NULL"
            ),
            (
                4,
                "rule",
                "known_country",
                "rule known_country (country IS NOT NULL) is false; rule non_negative (value >= 0) is false"
            ),
        ]
    );
    let counts: Vec<(String, u64, u64)> = a
        .counts
        .iter()
        .map(|(s, ok, bad)| (s.to_string(), *ok, *bad))
        .collect();
    assert_eq!(
        counts,
        [
            ("computed.country".to_string(), 5, 0),
            ("computed.event_hour".to_string(), 5, 0),
            ("computed.value_cents".to_string(), 5, 0),
            ("rules.known_country".to_string(), 3, 2),
            ("rules.non_negative".to_string(), 2, 3),
        ]
    );
}

#[test]
fn a_computed_value_that_fails_rejects_its_row_only() {
    let m = mapping(
        &[
            ("event_hour", "event_ts"),
            ("value_cents", "CAST(country AS BIGINT)"),
        ],
        &[],
    );
    let events = [
        serde_json::json!({"event_guid": "a", "event_ts": 0, "country": "12"}),
        serde_json::json!({"event_guid": "b", "event_ts": 0, "country": "twelve"}),
        serde_json::json!({"event_guid": "c", "event_ts": 0}),
    ];
    let a = run(&m, &events).unwrap();
    assert_eq!(
        strings(&a.rows, "event_guid"),
        [Some("a".to_string()), Some("c".to_string())]
    );
    assert_eq!(a.rejected.len(), 1);
    let r = &a.rejected[0];
    assert_eq!(
        (r.row, r.kind, r.field.as_str()),
        (1, "computed", "value_cents")
    );
    assert!(
        r.message.contains("computed.value_cents failed"),
        "{}",
        r.message
    );
    assert!(r.message.contains("twelve"), "{}", r.message);

    // NULL in a required computed column.
    let m = mapping(&[("event_hour", "CAST(country AS TIMESTAMP)")], &[]);
    let a = run(&m, &[serde_json::json!({"event_guid": "a", "event_ts": 0})]).unwrap();
    assert_eq!(a.rows.num_rows(), 0);
    assert_eq!(
        a.rejected[0].message,
        "computed.event_hour yields NULL for the required column event_hour"
    );
}

#[test]
fn kafka_metadata_and_the_clock_are_available_to_expressions() {
    let m = mapping(
        &[
            ("event_hour", "_kafka_timestamp"),
            ("value_cents", "_kafka_offset * 10 + _kafka_partition"),
            (
                "source",
                "concat(_kafka_topic, '/', _kafka_key, '/', _kafka_headers['src'])",
            ),
        ],
        &[("recent", "event_ts > now() - INTERVAL '7 days'")],
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let events = [
        serde_json::json!({"event_guid": "new", "event_ts": now_ms}),
        serde_json::json!({"event_guid": "old", "event_ts": now_ms - 8 * 86_400_000}),
    ];
    let a = run(&m, &events).unwrap();
    assert_eq!(strings(&a.rows, "event_guid"), [Some("new".to_string())]);
    assert_eq!(
        strings(&a.rows, "source"),
        [Some("events/k/web".to_string())]
    );
    let v = a.rows.column_by_name("value_cents").unwrap();
    assert_eq!(v.as_primitive::<Int64Type>().value(0), 1003);
    let hour = a.rows.column_by_name("event_hour").unwrap();
    assert_eq!(
        hour.as_primitive::<TimestampMicrosecondType>().value(0),
        1_700_000_000_000_000
    );
    assert_eq!(a.rejected[0].field, "recent");
}

#[rstest::rstest]
#[case::unknown_column(&[("event_hour", "date_trunc('hour', event_time)")], &[], "computed.event_hour", "event_time")]
#[case::no_such_target(&[("hour", "event_ts")], &[], "computed.hour", "no column hour")]
#[case::wrong_type(&[("event_hour", "value > 1")], &[], "computed.event_hour", "does not convert")]
#[case::not_boolean(&[], &[("positive", "value + 1")], "rules.positive", "boolean")]
#[case::aggregate(&[], &[("big", "value > avg(value)")], "rules.big", "aggregate")]
#[case::syntax(&[], &[("broken", "value >>> 1")], "rules.broken", "value >>> 1")]
#[case::unknown_function(&[("country", "lowercase(country)")], &[], "computed.country", "lowercase")]
fn misconfiguration_is_refused_naming_the_setting(
    #[case] computed: &[(&str, &str)],
    #[case] rules: &[(&str, &str)],
    #[case] setting: &str,
    #[case] says: &str,
) {
    let err = Transform::new(&schema(), &mapping(computed, rules)).unwrap_err();
    assert_eq!(err.setting.to_string(), setting, "{err}");
    assert!(err.to_string().contains(says), "{err}");
}

#[test]
fn nothing_to_do_is_none() {
    assert!(
        Transform::new(&schema(), &Mapping::default())
            .unwrap()
            .is_none()
    );
}

//! Fuzzing computed columns and rules (SQL expressions from config, `computed.<c>` and
//! `rules.<r>`) with proptest: any text either plans or is refused naming its entry, and a
//! planned transform applied to rows either computes them or rejects rows — never a panic.
//!
//! `FLOE_FUZZ_CASES` sets the cases (256 by default); see docs/testing.md.

use std::collections::BTreeMap;

use floe_schema::{Decoder, DecoderOptions, Mapping, RecordMeta};
use floe_transform::Transform;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases() -> u32 {
    floe_testkit::fuzz_cases()
}

fn schema() -> iceberg::spec::Schema {
    serde_json::from_value(serde_json::json!({
        "type": "struct", "schema-id": 0,
        "fields": [
            {"id": 1, "name": "event_guid", "required": true, "type": "string"},
            {"id": 2, "name": "event_ts", "required": true, "type": "timestamptz"},
            {"id": 3, "name": "country", "required": false, "type": "string"},
            {"id": 4, "name": "value", "required": false, "type": "double"},
            {"id": 5, "name": "n", "required": false, "type": "long"},
            {"id": 6, "name": "amount", "required": false, "type": "decimal(9, 2)"}
        ]
    }))
    .unwrap()
}

/// SQL-ish expressions: columns, literals, operators, functions, casts, CASE, and nesting
/// (deep parentheses included), sometimes broken.
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("event_guid".to_string()),
        Just("event_ts".to_string()),
        Just("country".to_string()),
        Just("value".to_string()),
        Just("n".to_string()),
        Just("amount".to_string()),
        Just("_kafka_offset".to_string()),
        Just("_kafka_key".to_string()),
        Just("_kafka_headers['h']".to_string()),
        Just("NULL".to_string()),
        Just("now()".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "'[^']{0,8}'",
        "[a-z_]{1,6}",
        (1usize..3000).prop_map(|d| format!("{}1{}", "(".repeat(d), ")".repeat(d))),
        (1usize..3000).prop_map(|d| format!("{}1", "-".repeat(d))),
        (1usize..3000).prop_map(|d| format!("{}TRUE", "NOT ".repeat(d))),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        let op = prop_oneof![
            Just("+"),
            Just("-"),
            Just("*"),
            Just("/"),
            Just("%"),
            Just("="),
            Just("<"),
            Just(">="),
            Just("AND"),
            Just("OR"),
            Just("||"),
            Just("LIKE"),
            Just("IS DISTINCT FROM"),
        ];
        let func = prop_oneof![
            Just("lower"),
            Just("upper"),
            Just("abs"),
            Just("date_trunc('hour', "),
            Just("coalesce"),
            Just("length"),
            Just("round"),
            Just("to_timestamp"),
            Just("substr"),
            Just("nullif"),
            Just("power"),
        ];
        let ty = prop_oneof![
            Just("BIGINT"),
            Just("INT"),
            Just("DOUBLE"),
            Just("VARCHAR"),
            Just("TIMESTAMP"),
            Just("DECIMAL(9,2)"),
            Just("BOOLEAN"),
            Just("DATE"),
        ];
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
            (func, proptest::collection::vec(inner.clone(), 0..3)).prop_map(|(f, args)| {
                if f.ends_with(", ") {
                    format!("{f}{})", args.join(", "))
                } else {
                    format!("{f}({})", args.join(", "))
                }
            }),
            (inner.clone(), ty.clone()).prop_map(|(a, t)| format!("CAST({a} AS {t})")),
            (inner.clone(), ty).prop_map(|(a, t)| format!("TRY_CAST({a} AS {t})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("CASE WHEN {a} THEN {b} ELSE {c} END")),
            inner.clone().prop_map(|a| format!("({a})")),
            (inner, any::<usize>()).prop_map(|(a, cut)| {
                // Broken: cut anywhere (on a character boundary).
                let cut = cut % (a.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|i| a.is_char_boundary(*i))
                    .unwrap_or(0);
                a[..cut].to_string()
            }),
        ]
    })
}

fn rows() -> Vec<serde_json::Value> {
    let ts = 1_700_000_123_456i64;
    vec![
        serde_json::json!({"event_guid": "a", "event_ts": ts, "country": "DE", "value": 1.5, "n": 3, "amount": "1.25"}),
        serde_json::json!({"event_guid": "b", "event_ts": ts, "value": -1e300, "n": i64::MAX}),
        serde_json::json!({"event_guid": "c", "event_ts": 0, "country": "", "n": i64::MIN, "amount": "-9999999.99"}),
        serde_json::json!({"event_guid": "d", "event_ts": -1}),
    ]
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn fuzz_expressions_plan_or_fail_and_apply_or_reject_rows(
        computed in proptest::option::of((prop_oneof![Just("country"), Just("value"), Just("n"), Just("amount"), Just("event_ts")], expression())),
        rule in proptest::option::of(expression()),
    ) {
        let mapping = Mapping {
            computed: computed.iter().map(|(c, e)| (c.to_string(), e.clone())).collect(),
            rules: rule.iter().map(|r| ("r".to_string(), r.clone())).collect::<BTreeMap<_, _>>(),
            ..Default::default()
        };
        let schema = schema();
        let Ok(Some(t)) = Transform::new(&schema, &mapping) else {
            return Ok(());
        };
        let mut d = Decoder::new(&schema, &DecoderOptions { mapping: mapping.clone(), ..Default::default() }).unwrap();
        let mut meta = t.meta_rows();
        for (i, r) in rows().iter().enumerate() {
            let rm = RecordMeta { topic: "t", partition: Some(0), offset: Some(i as i64), timestamp_ms: Some(0), key: Some(b"k"), ingested_at_us: 0 };
            d.decode(r.to_string().as_bytes(), &rm).unwrap();
            meta.push(&rm, [("h", Some(&b"v"[..]))]);
        }
        if let Ok(applied) = t.apply(d.finish(), &mut meta) {
            prop_assert_eq!(applied.rows.num_rows() + applied.rejected.len(), 4);
        }
    }
}

//! Values the table's partitions cannot hold, and nesting too deep.

use super::*;

#[test]
fn times_their_partition_cannot_hold_are_out_of_range() {
    use iceberg::spec::{PartitionSpec, Transform};
    let schema = Arc::new(schema());
    let spec = PartitionSpec::builder(schema.clone())
        .add_partition_field("tstz", "tstz_hour", Transform::Hour)
        .unwrap()
        .add_partition_field("dt", "dt_month", Transform::Month)
        .unwrap()
        .add_partition_field("ts", "ts_year", Transform::Year)
        .unwrap()
        .build()
        .unwrap();
    let ranges = PartitionRange::for_spec(&spec, &schema);
    assert_eq!(ranges.len(), 3);
    let opts = DecoderOptions {
        partition_ranges: ranges.clone(),
        ..Default::default()
    };
    let mut d = Decoder::new(&schema, &opts).unwrap();
    let hour = &ranges[0];
    // The last millisecond the hour partition holds, as epoch millis, and one past it.
    let last_ms = hour.max.div_euclid(1000);
    let first_ms = hour.min.div_euclid(1000) + 1;
    for ok in [
        format!(r#"{{"id":1,"tstz":{last_ms}}}"#),
        format!(r#"{{"id":2,"tstz":{first_ms}}}"#),
        r#"{"id":3,"tstz":null,"dt":"2024-02-29","ts":"2024-01-01T00:00:00"}"#.to_string(),
    ] {
        d.decode(ok.as_bytes(), &META).unwrap();
    }
    let rejected = [
        (
            format!(r#"{{"id":4,"tstz":{}}}"#, last_ms + 1),
            "tstz",
            "hour",
        ),
        (
            format!(r#"{{"id":5,"tstz":{}}}"#, first_ms - 2),
            "tstz",
            "hour",
        ),
        (
            r#"{"id":6,"tstz":"2024-01-01T00:00:00Z","dt":2000000000}"#.into(),
            "dt",
            "month",
        ),
        // Beyond chrono's calendar (±262,143 years) but a valid microsecond timestamp.
        (r#"{"id":7,"ts":9000000000000000}"#.into(), "ts", "year"),
    ];
    for (json, field, transform) in &rejected {
        let e = d.decode(json.as_bytes(), &META).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::OutOfRange, "{json}: {e}");
        assert_eq!(e.field, *field, "{json}: {e}");
        assert!(
            e.message
                .contains(&format!("is beyond the range of the {transform} partition")),
            "{json}: {e}"
        );
    }
    let e = d.decode(rejected[0].0.as_bytes(), &META).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "field \"tstz\": +246953-10-09T08:00:00Z is beyond the range of the hour \
             partition \"tstz_hour\" (-243014-"
        ),
        "{e}"
    );
    // Rejected records left nothing behind.
    let batch = d.finish();
    assert_eq!(batch.num_rows(), 3);
    assert_eq!(cell(&batch, "id", 2), "3");
    // Without a partition the same values are rows.
    let mut plain = Decoder::new(&schema, &DecoderOptions::default()).unwrap();
    for (json, ..) in &rejected {
        plain.decode(json.as_bytes(), &META).unwrap();
    }
}

#[test]
fn deep_nesting_is_a_dead_letter_not_a_stack_overflow() {
    let mut d = decoder();
    let n = 100_000;
    let deep = |open: &str, close: &str| format!("{}{}", open.repeat(n), close.repeat(n));
    let payloads = [
        deep("[", "]"),
        format!(r#"{{"id":1,"lst":{}}}"#, deep("[", "]")),
        format!(r#"{{"id":1,"unknown":{}}}"#, deep(r#"{"a":"#, "}")),
        format!(r#"{{"id":1,"m":{{"k":{}}}}}"#, deep("[", "]")),
        format!(r#"{{"id":1,"st":{}}}"#, deep(r#"{"a":"#, "}")),
        // Unterminated: the same nesting, cut short.
        "[".repeat(n),
        format!(r#"{{"id":1,"unknown":{}"#, r#"{"a":"#.repeat(n)),
    ];
    for p in &payloads {
        let e = d.decode(p.as_bytes(), &META).unwrap_err();
        assert!(
            matches!(
                e.kind,
                DecodeErrorKind::TooDeep | DecodeErrorKind::WrongType
            ),
            "{}: {e}",
            &p[..40]
        );
    }
    // Nesting within the limit decodes.
    let ok = format!(
        r#"{{"id":1,"unknown":{}1{}}}"#,
        r#"{"a":"#.repeat(100),
        "}".repeat(100)
    );
    d.decode(ok.as_bytes(), &META).unwrap();
}

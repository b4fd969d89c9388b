//! The mapping the decoder applies: the envelope (`unnest`) and projections
//! (`columns.<name>`).

use super::*;
use crate::mapping::Setting;

fn mapped(unnest: Option<&str>, columns: &[(&str, &str)]) -> Decoder {
    let opts = DecoderOptions {
        mapping: Mapping {
            unnest: unnest.map(str::to_string),
            columns: columns
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    Decoder::new(&schema(), &opts).unwrap()
}

#[test]
fn an_envelope_is_unwrapped_and_its_absence_is_a_dead_letter() {
    let mut d = mapped(Some("/data"), &[]);
    let wrapped =
        r#"{"specversion":"1.0","type":"x","data":{"id":7,"s":"a","st":{"a":"q"}},"id":"ce-1"}"#;
    d.decode(wrapped.as_bytes(), &META).unwrap();
    // Key order does not matter; envelope keys are not columns (`id` at the top is ignored).
    d.decode(br#"{"data":{"s":"b","id":8},"id":"zzz"}"#, &META)
        .unwrap();
    for (bad, kind, says) in [
        (
            r#"{"specversion":"1.0","id":9}"#,
            DecodeErrorKind::Envelope,
            "no /data",
        ),
        (r#"{"data":null}"#, DecodeErrorKind::Envelope, "found null"),
        (r#"{"data":[1]}"#, DecodeErrorKind::Envelope, "found array"),
        (
            r#"{"data":{"id":1}"#,
            DecodeErrorKind::MalformedJson,
            "malformed",
        ),
        (
            r#"{"data":{"id":1}} x"#,
            DecodeErrorKind::MalformedJson,
            "trailing",
        ),
        (
            r#"{"data":{"s":"no id"}}"#,
            DecodeErrorKind::MissingField,
            "required",
        ),
        (
            r#"[{"data":{"id":1}}]"#,
            DecodeErrorKind::Envelope,
            "no /data",
        ),
    ] {
        let e = d.decode(bad.as_bytes(), &META).unwrap_err();
        assert_eq!(e.kind, kind, "{bad}: {e}");
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    let b = d.finish();
    assert_eq!(b.num_rows(), 2);
    assert_eq!(cell(&b, "id", 0), "7");
    assert_eq!(cell(&b, "st", 0), "{a: q, n: }");
    assert_eq!(cell(&b, "s", 1), "b");
    assert_eq!(
        cell(&b, "_kafka_offset", 1),
        "42",
        "metadata columns still fill"
    );
    assert_eq!(d.take_mapping_counts(), [(Setting::Unnest, 2)]);

    // Array elements and escaped keys in the pointer.
    let mut d = mapped(Some("/batch/1/a~1b"), &[]);
    d.decode(br#"{"batch":[{},{"a/b":{"id":5}}]}"#, &META)
        .unwrap();
    assert_eq!(cell(&d.finish(), "id", 0), "5");
}

#[test]
fn projections_fill_columns_from_pointers_over_name_matching() {
    let mut d = mapped(
        Some("/data"),
        &[
            ("s", "/data/user/name"),
            ("l", "/data/items/1/qty"),
            ("user_name", "/source"),
            ("id", "/data/ids/0"),
        ],
    );
    let msg = r#"{"source":"shop","data":{"s":"by name","user":{"name":"ann"},"items":[{"qty":1},{"qty":2}],"ids":[11,12]}}"#;
    d.decode(msg.as_bytes(), &META).unwrap();
    // Absent optional pointers read NULL; a required one is a dead letter naming the pointer.
    d.decode(br#"{"data":{"ids":[13],"items":[]}}"#, &META)
        .unwrap();
    let e = d.decode(br#"{"data":{"id":14}}"#, &META).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::MissingField);
    assert_eq!(e.field, "id");
    assert!(e.message.contains("/data/ids/0"), "{e}");
    let e = d
        .decode(br#"{"data":{"ids":[1],"user":{"name":5}}}"#, &META)
        .unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        (DecodeErrorKind::WrongType, "s")
    );
    assert!(e.message.contains("/data/user/name"), "{e}");
    let b = d.finish();
    assert_eq!(b.num_rows(), 2);
    assert_eq!(
        [
            cell(&b, "s", 0),
            cell(&b, "l", 0),
            cell(&b, "user_name", 0),
            cell(&b, "id", 0)
        ],
        ["ann", "2", "shop", "11"]
    );
    assert_eq!(
        [
            cell(&b, "s", 1),
            cell(&b, "l", 1),
            cell(&b, "user_name", 1),
            cell(&b, "id", 1)
        ],
        ["NULL", "NULL", "NULL", "13"]
    );
    let counts: Vec<(String, u64)> = d
        .take_mapping_counts()
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    assert_eq!(
        counts,
        [
            ("unnest".to_string(), 2),
            ("columns.id".to_string(), 2),
            ("columns.l".to_string(), 1),
            ("columns.s".to_string(), 1),
            ("columns.user_name".to_string(), 1),
        ]
    );
}

#[test]
fn a_mapping_that_cannot_work_is_refused_naming_the_setting() {
    let opts = |m: Mapping| DecoderOptions {
        mapping: m,
        ..Default::default()
    };
    let cases = [
        (
            Mapping {
                unnest: Some("data".into()),
                ..Default::default()
            },
            "unnest",
        ),
        (
            Mapping {
                columns: [("nope".to_string(), "/x".to_string())].into(),
                ..Default::default()
            },
            "columns.nope",
        ),
        (
            Mapping {
                columns: [("s".to_string(), "/x~9".to_string())].into(),
                ..Default::default()
            },
            "columns.s",
        ),
        (
            Mapping {
                computed: [("nope".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            "computed.nope",
        ),
    ];
    for (m, setting) in cases {
        let err = Decoder::new(&schema(), &opts(m)).err().expect("refused");
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[test]
fn keys_read_by_projections_are_not_unknown_fields() {
    let opts = DecoderOptions {
        reject_unknown_fields: true,
        mapping: Mapping {
            unnest: Some("/data".into()),
            columns: [
                ("s".to_string(), "/data/user/name".to_string()),
                ("l".to_string(), "/data/l2".to_string()),
                ("user_name".to_string(), "/source".to_string()),
            ]
            .into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut d = Decoder::new(&schema(), &opts).unwrap();
    // `user` and `l2` are read by projections; `s` is a projected column's own name.
    d.decode(
        br#"{"source":"x","data":{"id":1,"user":{"name":"a"},"s":"not this","l2":3}}"#,
        &META,
    )
    .unwrap();
    let e = d
        .decode(br#"{"data":{"id":2,"other":1}}"#, &META)
        .unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        (DecodeErrorKind::UnknownField, "other")
    );
    assert_eq!(d.take_unknown_fields(), 0);
    let b = d.finish();
    assert_eq!(
        [cell(&b, "s", 0), cell(&b, "l", 0), cell(&b, "user_name", 0)],
        ["a", "3", "x"]
    );
}

use super::*;
use crate::mapping::Setting;
use arrow_array::Array;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use iceberg::spec::Schema;
use rstest::rstest;

const ALL_TYPES: &str = r#"{
  "type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"},
    {"id": 2, "name": "b", "required": false, "type": "boolean"},
    {"id": 3, "name": "i", "required": false, "type": "int"},
    {"id": 4, "name": "l", "required": false, "type": "long"},
    {"id": 5, "name": "f", "required": false, "type": "float"},
    {"id": 6, "name": "d", "required": false, "type": "double"},
    {"id": 7, "name": "dec", "required": false, "type": "decimal(10, 2)"},
    {"id": 8, "name": "dt", "required": false, "type": "date"},
    {"id": 9, "name": "t", "required": false, "type": "time"},
    {"id": 10, "name": "ts", "required": false, "type": "timestamp"},
    {"id": 11, "name": "tstz", "required": false, "type": "timestamptz"},
    {"id": 12, "name": "s", "required": false, "type": "string"},
    {"id": 13, "name": "u", "required": false, "type": "uuid"},
    {"id": 14, "name": "bin", "required": false, "type": "binary"},
    {"id": 15, "name": "fx", "required": false, "type": "fixed[4]"},
    {"id": 16, "name": "st", "required": false, "type": {"type": "struct", "fields": [
        {"id": 17, "name": "a", "required": true, "type": "string"},
        {"id": 18, "name": "n", "required": false, "type": "int"}]}},
    {"id": 19, "name": "lst", "required": false, "type": {"type": "list", "element-id": 20, "element-required": false, "element": "long"}},
    {"id": 21, "name": "m", "required": false, "type": {"type": "map", "key-id": 22, "key": "string", "value-id": 23, "value-required": false, "value": "double"}},
    {"id": 24, "name": "user_name", "required": false, "type": "string"},
    {"id": 25, "name": "_kafka_offset", "required": false, "type": "long"},
    {"id": 26, "name": "_ingested_at", "required": false, "type": "timestamptz"},
    {"id": 27, "name": "rlst", "required": false, "type": {"type": "list", "element-id": 28, "element-required": true, "element": {"type": "struct", "fields": [
        {"id": 29, "name": "x", "required": true, "type": "int"}]}}}
  ]}"#;

fn schema() -> Schema {
    serde_json::from_str(ALL_TYPES).unwrap()
}

fn decoder() -> Decoder {
    let opts = DecoderOptions {
        aliases: HashMap::from([("when".to_string(), "tstz".to_string())]),
        ..Default::default()
    };
    Decoder::new(&schema(), &opts).unwrap()
}

const META: RecordMeta<'static> = RecordMeta {
    topic: "t",
    partition: Some(3),
    offset: Some(42),
    timestamp_ms: Some(1_700_000_000_000),
    key: None,
    ingested_at_us: 1_700_000_000_000_000,
};

fn cell(batch: &RecordBatch, col: &str, row: usize) -> String {
    let array = batch.column_by_name(col).unwrap();
    if array.is_null(row) {
        return "NULL".into();
    }
    let opts = FormatOptions::default();
    ArrayFormatter::try_new(array.as_ref(), &opts)
        .unwrap()
        .value(row)
        .to_string()
}

fn accept(json: &str, col: &str) -> String {
    let mut d = decoder();
    d.decode(json.as_bytes(), &META)
        .unwrap_or_else(|e| panic!("{json} rejected: {e}"));
    let batch = d.finish();
    assert_eq!(batch.num_rows(), 1);
    cell(&batch, col, 0)
}

#[rstest]
#[case(r#"{"id":1,"b":true}"#, "b", "true")]
#[case(r#"{"id":1,"b":false}"#, "b", "false")]
#[case(r#"{"id":1,"i":-2147483648}"#, "i", "-2147483648")]
#[case(r#"{"id":1,"i":7.0}"#, "i", "7")]
#[case(r#"{"id":1,"l":9223372036854775807}"#, "l", "9223372036854775807")]
#[case(r#"{"id":1,"l":1e3}"#, "l", "1000")]
#[case(r#"{"id":1,"f":1.5}"#, "f", "1.5")]
#[case(r#"{"id":1,"d":39.259011259415466}"#, "d", "39.259011259415466")]
#[case(r#"{"id":1,"d":-1}"#, "d", "-1.0")]
#[case(r#"{"id":1,"dec":12.34}"#, "dec", "12.34")]
#[case(r#"{"id":1,"dec":"-0.5"}"#, "dec", "-0.50")]
#[case(r#"{"id":1,"dt":"2024-02-29"}"#, "dt", "2024-02-29")]
#[case(r#"{"id":1,"dt":19782}"#, "dt", "2024-02-29")]
#[case(r#"{"id":1,"t":"12:34:56.789"}"#, "t", "12:34:56.789")]
#[case(
    r#"{"id":1,"ts":"2025-03-17T08:20:57.865"}"#,
    "ts",
    "2025-03-17T08:20:57.865"
)]
#[case(r#"{"id":1,"tstz":1742199657865}"#, "tstz", "2025-03-17T08:20:57.865Z")]
#[case(
    r#"{"id":1,"tstz":"2025-03-17T10:20:57.865+02:00"}"#,
    "tstz",
    "2025-03-17T08:20:57.865Z"
)]
#[case(
    r#"{"id":1,"tstz":"1742199657865"}"#,
    "tstz",
    "2025-03-17T08:20:57.865Z"
)]
#[case(r#"{"id":1,"s":"héllo \"q\" \u00e9"}"#, "s", "héllo \"q\" é")]
#[case(
    r#"{"id":1,"u":"67f4dfdd-c4db-4f8d-aa90-24da30f760ac"}"#,
    "u",
    "67f4dfddc4db4f8daa9024da30f760ac"
)]
#[case(r#"{"id":1,"bin":"AAEC"}"#, "bin", "000102")]
#[case(r#"{"id":1,"fx":"AAECAw=="}"#, "fx", "00010203")]
#[case(r#"{"id":1,"st":{"a":"x","n":2}}"#, "st", "{a: x, n: 2}")]
#[case(r#"{"id":1,"st":{"a":"x"}}"#, "st", "{a: x, n: }")]
#[case(r#"{"id":1,"st":null}"#, "st", "NULL")]
#[case(r#"{"id":1,"lst":[1,null,3]}"#, "lst", "[1, , 3]")]
#[case(r#"{"id":1,"lst":[]}"#, "lst", "[]")]
#[case(r#"{"id":1,"m":{"a":1.5,"b":null}}"#, "m", "{a: 1.5, b: }")]
#[case(r#"{"id":1,"rlst":[{"x":1},{"x":2}]}"#, "rlst", "[{x: 1}, {x: 2}]")]
#[case(r#"{"id":1}"#, "s", "NULL")]
#[case(r#"{"id":1,"s":null}"#, "s", "NULL")]
#[case(r#"{"id":1,"userName":"ann"}"#, "user_name", "ann")]
#[case(r#"{"id":1,"USER_NAME":"ann"}"#, "user_name", "ann")]
#[case(r#"{"id":1,"when":0}"#, "tstz", "1970-01-01T00:00:00Z")]
#[case(
    r#"{"id":1,"extra":{"deep":[1,2,{"x":null}]},"s":"after"}"#,
    "s",
    "after"
)]
#[case(r#"{"id":1,"_kafka_offset":999}"#, "_kafka_offset", "42")]
#[case(r#"{"id":1}"#, "_ingested_at", "2023-11-14T22:13:20Z")]
#[case("\u{feff} {\"id\":1} \n", "id", "1")]
fn accepted_values(#[case] json: &str, #[case] col: &str, #[case] expected: &str) {
    assert_eq!(accept(json, col), expected, "{json}");
}

#[rstest]
#[case(b"" as &[u8], DecodeErrorKind::EmptyPayload, "", "empty")]
#[case(b"  \n", DecodeErrorKind::EmptyPayload, "", "empty")]
#[case(
    b"{\"id\":1,\"s\":\"\xff\"}",
    DecodeErrorKind::InvalidUtf8,
    "",
    "UTF-8"
)]
#[case(b"[1,2]", DecodeErrorKind::NotAnObject, "", "found array")]
#[case(b"\"just a string\"", DecodeErrorKind::NotAnObject, "", "found string")]
#[case(b"42", DecodeErrorKind::NotAnObject, "", "found number 42")]
#[case(b"null", DecodeErrorKind::NotAnObject, "", "found null")]
#[case(
    b"not json",
    DecodeErrorKind::MalformedJson,
    "",
    "malformed JSON at byte 0"
)]
#[case(b"[1,2] x", DecodeErrorKind::MalformedJson, "", "trailing")]
#[case(b"{\"id\":1,", DecodeErrorKind::MalformedJson, "", "malformed JSON")]
#[case(
    b"{\"id\":1} {\"id\":2}",
    DecodeErrorKind::MalformedJson,
    "",
    "trailing"
)]
#[case(b"{\"id\":01}", DecodeErrorKind::MalformedJson, "", "malformed JSON")]
#[case(b"{id:1}", DecodeErrorKind::MalformedJson, "", "expected a string key")]
#[case(
    b"{\"s\":\"x\"}",
    DecodeErrorKind::MissingField,
    "id",
    "required field is missing (expected long)"
)]
#[case(
    b"{\"id\":null}",
    DecodeErrorKind::MissingField,
    "id",
    "required field is null"
)]
#[case(
    b"{\"id\":\"7\"}",
    DecodeErrorKind::WrongType,
    "id",
    "expected long, found string \"7\""
)]
#[case(
    b"{\"id\":1,\"d\":\"abc\"}",
    DecodeErrorKind::WrongType,
    "d",
    "expected double, found string \"abc\""
)]
#[case(
    b"{\"id\":1,\"b\":1}",
    DecodeErrorKind::WrongType,
    "b",
    "expected boolean, found number 1"
)]
#[case(
    b"{\"id\":1,\"s\":5}",
    DecodeErrorKind::WrongType,
    "s",
    "expected string, found number 5"
)]
#[case(
    b"{\"id\":1,\"s\":{\"a\":1}}",
    DecodeErrorKind::WrongType,
    "s",
    "found object"
)]
#[case(
    b"{\"id\":1,\"i\":1.5}",
    DecodeErrorKind::WrongType,
    "i",
    "expected int, found number 1.5"
)]
#[case(
    b"{\"id\":1,\"i\":3000000000}",
    DecodeErrorKind::OutOfRange,
    "i",
    "out of range"
)]
#[case(
    b"{\"id\":99999999999999999999}",
    DecodeErrorKind::OutOfRange,
    "id",
    "out of range"
)]
#[case(
    b"{\"id\":1,\"f\":1e39}",
    DecodeErrorKind::OutOfRange,
    "f",
    "out of range"
)]
#[case(
    b"{\"id\":1,\"d\":1e400}",
    DecodeErrorKind::OutOfRange,
    "d",
    "out of range"
)]
#[case(
    b"{\"id\":1,\"dec\":1.234}",
    DecodeErrorKind::OutOfRange,
    "dec",
    "fractional digits"
)]
#[case(
    b"{\"id\":1,\"dec\":123456789}",
    DecodeErrorKind::OutOfRange,
    "dec",
    "precision"
)]
#[case(
    b"{\"id\":1,\"tstz\":\"yesterday\"}",
    DecodeErrorKind::InvalidValue,
    "tstz",
    "found string \"yesterday\""
)]
#[case(
    b"{\"id\":1,\"tstz\":\"2025-03-17T08:20:57\"}",
    DecodeErrorKind::InvalidValue,
    "tstz",
    "missing UTC offset"
)]
#[case(
    b"{\"id\":1,\"tstz\":true}",
    DecodeErrorKind::WrongType,
    "tstz",
    "expected timestamptz"
)]
#[case(
    b"{\"id\":1,\"tstz\":1e300}",
    DecodeErrorKind::OutOfRange,
    "tstz",
    "out of range"
)]
#[case(
    b"{\"id\":1,\"dt\":\"2023-02-29\"}",
    DecodeErrorKind::InvalidValue,
    "dt",
    "no such date"
)]
#[case(
    b"{\"id\":1,\"u\":\"not-a-uuid\"}",
    DecodeErrorKind::InvalidValue,
    "u",
    "not a UUID"
)]
#[case(
    b"{\"id\":1,\"bin\":\"***\"}",
    DecodeErrorKind::InvalidValue,
    "bin",
    "not base64"
)]
#[case(
    b"{\"id\":1,\"fx\":\"AAE=\"}",
    DecodeErrorKind::InvalidValue,
    "fx",
    "wrong length"
)]
#[case(
    b"{\"id\":1,\"st\":{\"n\":1}}",
    DecodeErrorKind::MissingField,
    "st.a",
    "required field is missing"
)]
#[case(
    b"{\"id\":1,\"st\":{\"a\":\"x\",\"n\":\"y\"}}",
    DecodeErrorKind::WrongType,
    "st.n",
    "expected int"
)]
#[case(
    b"{\"id\":1,\"lst\":[1,\"two\"]}",
    DecodeErrorKind::WrongType,
    "lst[1]",
    "expected long, found string \"two\""
)]
#[case(
    b"{\"id\":1,\"rlst\":[{\"x\":1},{}]}",
    DecodeErrorKind::MissingField,
    "rlst[1].x",
    "required field is missing"
)]
#[case(
    b"{\"id\":1,\"rlst\":[null]}",
    DecodeErrorKind::MissingField,
    "rlst[0]",
    "required field is null"
)]
#[case(
    b"{\"id\":1,\"m\":{\"a\":\"x\"}}",
    DecodeErrorKind::WrongType,
    "m.value",
    "expected double"
)]
#[case(
    b"{\"id\":1,\"m\":[1]}",
    DecodeErrorKind::WrongType,
    "m",
    "found array"
)]
#[case(
    b"{\"id\":1,\"id\":2}",
    DecodeErrorKind::DuplicateKey,
    "id",
    "duplicate key \"id\""
)]
#[case(
    b"{\"id\":1,\"user_name\":\"a\",\"userName\":\"b\"}",
    DecodeErrorKind::DuplicateKey,
    "user_name",
    "\"userName\" sets column user_name a second time"
)]
fn rejected_records(
    #[case] payload: &[u8],
    #[case] kind: DecodeErrorKind,
    #[case] field: &str,
    #[case] message_part: &str,
) {
    let mut d = decoder();
    d.decode(
        br#"{"id":0,"s":"kept","lst":[1],"st":{"a":"k"},"m":{"k":1}}"#,
        &META,
    )
    .unwrap();
    let err = d.decode(payload, &META).unwrap_err();
    assert_eq!(err.kind, kind, "{err}");
    assert_eq!(err.field, field, "{err}");
    assert!(
        err.to_string().contains(message_part),
        "{err:?} should mention {message_part:?}"
    );
    // The failed record left nothing behind: one more good row lines up with the first.
    d.decode(
        br#"{"id":2,"s":"next","lst":[7,8],"st":{"a":"z"},"m":{"q":2}}"#,
        &META,
    )
    .unwrap();
    let batch = d.finish();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(cell(&batch, "id", 1), "2");
    assert_eq!(cell(&batch, "s", 1), "next");
    assert_eq!(cell(&batch, "lst", 1), "[7, 8]");
    assert_eq!(cell(&batch, "st", 1), "{a: z, n: }");
    assert_eq!(cell(&batch, "m", 1), "{q: 2.0}");
}

#[test]
fn error_message_names_field_expected_type_and_found_value() {
    let mut d = decoder();
    let err = d.decode(br#"{"id":1,"d":"abc"}"#, &META).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"field "d": expected double, found string "abc""#
    );
}

#[test]
fn long_found_values_are_truncated() {
    let mut d = decoder();
    let long = "x".repeat(500);
    let err = d
        .decode(format!(r#"{{"id":1,"i":"{long}"}}"#).as_bytes(), &META)
        .unwrap_err();
    assert!(err.message.len() < 200, "{}", err.message);
    assert!(err.message.ends_with('…'));
}

#[test]
fn unknown_fields_are_counted() {
    let mut d = decoder();
    d.decode(br#"{"id":1,"x":1,"y":[{"z":2}]}"#, &META).unwrap();
    d.decode(br#"{"id":2,"x":1}"#, &META).unwrap();
    assert_eq!(d.take_unknown_fields(), 3);
    assert_eq!(d.take_unknown_fields(), 0);
}

#[test]
fn unknown_fields_are_rejected_when_the_table_says_so() {
    let props = HashMap::from([("floe.unknown-fields".to_string(), "Reject".to_string())]);
    let opts = DecoderOptions::from_table_properties(&props);
    assert!(opts.reject_unknown_fields);
    let mut d = Decoder::new(&schema(), &opts).unwrap();
    d.decode(br#"{"id":1}"#, &META).unwrap();
    let err = d.decode(br#"{"id":2,"x":1}"#, &META).unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::UnknownField);
    assert_eq!(err.field, "x");
    assert_eq!(d.len(), 1, "the rejected row left nothing behind");
    assert!(!DecoderOptions::from_table_properties(&HashMap::new()).reject_unknown_fields);
}

#[test]
fn batches_carry_field_ids_and_utc_micros() {
    let mut d = decoder();
    d.decode(br#"{"id":1,"tstz":1}"#, &META).unwrap();
    let batch = d.finish();
    let schema = batch.schema();
    let f = schema.field_with_name("tstz").unwrap();
    assert_eq!(
        f.metadata().get("PARQUET:field_id").map(String::as_str),
        Some("11")
    );
    assert_eq!(
        f.data_type(),
        &arrow_schema::DataType::Timestamp(
            arrow_schema::TimeUnit::Microsecond,
            Some("+00:00".into())
        )
    );
    let ts = batch
        .column_by_name("tstz")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(ts.value(0), 1000);
}

#[test]
fn a_column_added_to_the_table_is_decoded_by_a_decoder_for_the_new_schema() {
    // The schema change happens in the catalog (another tool adds a column); the loader builds
    // a decoder for the table's current schema at its next batch.
    let v1 = schema();
    let mut old = Decoder::new(&v1, &DecoderOptions::default()).unwrap();
    old.decode(br#"{"id":1,"discount":0.5}"#, &META).unwrap();
    assert_eq!(old.take_unknown_fields(), 1);

    let table = iceberg::spec::TableMetadataBuilder::new(
        v1.clone(),
        iceberg::spec::UnboundPartitionSpec::default(),
        iceberg::spec::SortOrder::unsorted_order(),
        "memory://t".to_string(),
        iceberg::spec::FormatVersion::V2,
        HashMap::new(),
    )
    .unwrap()
    .build()
    .unwrap()
    .metadata;
    let mut fields: Vec<_> = table.current_schema().as_struct().fields().to_vec();
    let next_id = table.last_column_id() + 1;
    fields.push(std::sync::Arc::new(iceberg::spec::NestedField::optional(
        next_id,
        "discount",
        iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Double),
    )));
    let v2 = Schema::builder()
        .with_schema_id(1)
        .with_fields(fields)
        .build()
        .unwrap();
    let table = table
        .into_builder(None)
        .add_current_schema(v2)
        .unwrap()
        .build()
        .unwrap()
        .metadata;

    let mut new = Decoder::new(table.current_schema(), &DecoderOptions::default()).unwrap();
    assert_eq!(new.schema_id(), 1);
    new.decode(br#"{"id":1,"discount":0.5}"#, &META).unwrap();
    new.decode(br#"{"id":2}"#, &META).unwrap();
    assert_eq!(new.take_unknown_fields(), 0);
    let batch = new.finish();
    assert_eq!(cell(&batch, "discount", 0), "0.5");
    assert_eq!(cell(&batch, "discount", 1), "NULL");
    let id = batch
        .schema()
        .field_with_name("discount")
        .unwrap()
        .metadata()["PARQUET:field_id"]
        .clone();
    assert_eq!(id, next_id.to_string());
}

#[test]
fn seed_event_decodes_with_alias_and_snake_case() {
    let def = crate::TableDefinition::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/lake.events.json"),
    )
    .unwrap();
    let mut d = Decoder::new(
        &def.schema,
        &DecoderOptions::from_table_properties(&def.properties),
    )
    .unwrap();
    let event = br#"{
        "eventGuid": "67f4dfdd-c4db-4f8d-aa90-24da30f760ac",
        "timestamp": 1742199657865,
        "country": "country_20",
        "is_returning": true,
        "user_id": "user_id_694",
        "action": "action_3",
        "device_type": "device_type_1",
        "page": "page_9",
        "category": "category_13",
        "value": 39.259011259415466,
        "session_duration": 243
    }"#;
    d.decode(event, &META).unwrap();
    assert_eq!(d.take_unknown_fields(), 0);
    let batch = d.finish();
    assert_eq!(
        cell(&batch, "event_guid", 0),
        "67f4dfdd-c4db-4f8d-aa90-24da30f760ac"
    );
    assert_eq!(cell(&batch, "event_ts", 0), "2025-03-17T08:20:57.865Z");
    assert_eq!(cell(&batch, "session_duration", 0), "243");
    assert_eq!(cell(&batch, "_kafka_partition", 0), "3");
    assert_eq!(cell(&batch, "_kafka_offset", 0), "42");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            "[a-zA-Z0-9 é\\\\\"]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z_A-Z]{1,8}", inner), 0..5).prop_map(|kv| {
                    let members: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("id".to_string()),
            Just("b".to_string()),
            Just("i".to_string()),
            Just("d".to_string()),
            Just("dec".to_string()),
            Just("tstz".to_string()),
            Just("s".to_string()),
            Just("u".to_string()),
            Just("st".to_string()),
            Just("lst".to_string()),
            Just("m".to_string()),
            Just("rlst".to_string()),
            Just("dt".to_string()),
            Just("fx".to_string()),
            "[a-z]{1,4}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut d = decoder();
            let before = d.len();
            match d.decode(&bytes, &META) {
                Ok(()) => prop_assert_eq!(d.len(), before + 1),
                Err(e) => { prop_assert_eq!(d.len(), before); prop_assert!(!e.message.is_empty()); }
            }
            let batch = d.finish();
            batch.columns().iter().for_each(|c| c.to_data().validate_full().unwrap());
        }

        #[test]
        fn arbitrary_objects_give_a_row_or_an_error_and_valid_batches(
            members in prop::collection::vec((field_name(), json_value()), 0..8),
            good_first in any::<bool>(),
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                .collect();
            let payload = format!("{{{}}}", body.join(","));
            let mut d = decoder();
            if good_first {
                d.decode(br#"{"id":0,"lst":[1],"st":{"a":"x"},"m":{"k":1},"rlst":[{"x":1}]}"#, &META).unwrap();
            }
            let before = d.len();
            let ok = d.decode(payload.as_bytes(), &META).is_ok();
            prop_assert_eq!(d.len(), before + ok as usize);
            d.decode(br#"{"id":9,"lst":[2],"st":{"a":"y"},"m":{"j":2},"rlst":[]}"#, &META).unwrap();
            let batch = d.finish();
            prop_assert_eq!(batch.num_rows(), before + ok as usize + 1);
            for c in batch.columns() {
                c.to_data().validate_full().unwrap();
            }
            let last = batch.num_rows() - 1;
            prop_assert_eq!(cell(&batch, "id", last), "9");
            prop_assert_eq!(cell(&batch, "lst", last), "[2]");
        }
    }
}

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

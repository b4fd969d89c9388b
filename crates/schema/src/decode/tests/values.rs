//! What each JSON value decodes to in each column type, and why a record is rejected.

use super::*;
use rstest::rstest;

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

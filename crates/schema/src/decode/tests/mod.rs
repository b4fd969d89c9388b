//! Unit tests of the decoder, by topic; the shared fixtures are here: a table of every
//! column type ([`ALL_TYPES`]), its decoder, the metadata of a message and cell rendering.

use super::*;
use arrow_array::Array;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use iceberg::spec::Schema;

mod batches;
mod limits;
mod mapping;
mod properties;
mod values;

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

//! Decoder behaviour across records and batches: unknown fields, field ids, a schema
//! change, the seed events.

use super::*;

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

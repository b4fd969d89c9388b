//! A column added to the table by another tool is decoded from the next batch on, without
//! restarting the sink.

mod common;

use common::{add_column, catalog_with_table};
use floe_lake::Committer;
use floe_loader::{SinkOptions, TableSink};
use floe_schema::RecordMeta;

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"}]}
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_in_the_catalog_is_filled_from_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_with_table(dir.path(), DEF).await;
    let mut opts = SinkOptions::new("lake.t");
    opts.refresh_interval = std::time::Duration::ZERO;
    let mut sink = TableSink::open(Committer::new(catalog.clone()), &opts)
        .await
        .unwrap();
    let meta = RecordMeta::default();

    assert!(
        sink.push(br#"{"id":1,"discount":0.5}"#, &meta)
            .await
            .unwrap()
            .is_none()
    );
    sink.flush(None).await.unwrap();
    assert_eq!(
        sink.take_unknown_fields(),
        1,
        "discount is not a column yet"
    );

    add_column(&catalog, "lake.t", "discount").await;

    assert!(
        sink.push(br#"{"id":2,"discount":0.25}"#, &meta)
            .await
            .unwrap()
            .is_none()
    );
    assert!(sink.push(br#"{"id":3}"#, &meta).await.unwrap().is_none());
    sink.flush(None).await.unwrap();
    assert_eq!(sink.take_unknown_fields(), 0);

    let batches = common::scan(&catalog, "lake.t").await;
    let mut rows: Vec<(i64, Option<f64>)> = Vec::new();
    for b in batches {
        let ids = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .clone();
        let d = b
            .column_by_name("discount")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            use arrow_array::Array;
            rows.push((ids.value(i), (!d.is_null(i)).then(|| d.value(i))));
        }
    }
    rows.sort_by_key(|r| r.0);
    assert_eq!(rows, vec![(1, None), (2, Some(0.25)), (3, None)]);
}

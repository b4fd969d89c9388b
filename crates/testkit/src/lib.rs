//! Helpers shared by floe's integration tests: a throwaway SQLite lake, a whole-table scan and
//! row-level delete files as other engines write them.
#![deny(missing_docs)]

use std::path::Path;

use arrow_array::RecordBatch;
use floe_lake::{Catalog, CatalogConfig, parse_table_ident};
use futures::TryStreamExt;

/// A SQLite catalog (`<dir>/c.db`) with its warehouse in `<dir>/wh`.
pub async fn catalog(dir: &Path) -> Catalog {
    Catalog::connect(&CatalogConfig {
        uri: format!("sqlite://{}/c.db", dir.display()),
        warehouse: format!("{}/wh", dir.display()),
        name: "floe".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Every row of `table`'s current snapshot (none for a table without one).
pub async fn scan(catalog: &Catalog, table: &str) -> Vec<RecordBatch> {
    let table = catalog
        .load_table(&parse_table_ident(table).unwrap())
        .await
        .unwrap();
    if table.metadata().current_snapshot().is_none() {
        return Vec::new();
    }
    table
        .scan()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A position delete file (as Trino and Spark write for a merge-on-read `DELETE`) removing
/// rows `positions` of the data file `data`, in `data`'s partition of spec `spec_id`, with the
/// `file_path` bounds Iceberg Java records. Written next to the table's data; not committed.
pub async fn position_delete_file(
    catalog: &Catalog,
    table: &str,
    data: &iceberg::spec::DataFile,
    spec_id: i32,
    positions: &[i64],
) -> iceberg::spec::DataFile {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Datum};

    const FILE_PATH_ID: i32 = 2_147_483_546;
    const POS_ID: i32 = 2_147_483_545;
    let (_, meta) = catalog
        .load_metadata(&parse_table_ident(table).unwrap())
        .await
        .unwrap();
    let field = |name: &str, t: DataType, id: i32| {
        Field::new(name, t, false).with_metadata(HashMap::from([(
            "PARQUET:field_id".to_string(),
            id.to_string(),
        )]))
    };
    let schema = Arc::new(Schema::new(vec![
        field("file_path", DataType::Utf8, FILE_PATH_ID),
        field("pos", DataType::Int64, POS_ID),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![data.file_path(); positions.len()])),
            Arc::new(Int64Array::from(positions.to_vec())),
        ],
    )
    .unwrap();
    let (path, size) = write_parquet(catalog, &meta, &batch, "delete").await;
    let bound = HashMap::from([(FILE_PATH_ID, Datum::string(data.file_path()))]);
    DataFileBuilder::default()
        .content(DataContentType::PositionDeletes)
        .file_path(path)
        .file_format(DataFileFormat::Parquet)
        .partition(data.partition().clone())
        .partition_spec_id(spec_id)
        .record_count(positions.len() as u64)
        .file_size_in_bytes(size)
        .lower_bounds(bound.clone())
        .upper_bounds(bound)
        .build()
        .unwrap()
}

/// An equality delete file (as Flink writes for an upsert or delete) removing the rows whose
/// `long` column `column` (field id `field_id`) equals one of `values`, in partition
/// `partition` of spec `spec_id` (an unpartitioned spec makes it apply to every partition).
/// Written next to the table's data; not committed.
pub async fn equality_delete_file(
    catalog: &Catalog,
    table: &str,
    column: &str,
    field_id: i32,
    values: &[i64],
    partition: iceberg::spec::Struct,
    spec_id: i32,
) -> iceberg::spec::DataFile {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat};

    let (_, meta) = catalog
        .load_metadata(&parse_table_ident(table).unwrap())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new(column, DataType::Int64, false).with_metadata(HashMap::from([(
            "PARQUET:field_id".to_string(),
            field_id.to_string(),
        )])),
    ]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap();
    let (path, size) = write_parquet(catalog, &meta, &batch, "eq-delete").await;
    DataFileBuilder::default()
        .content(DataContentType::EqualityDeletes)
        .file_path(path)
        .file_format(DataFileFormat::Parquet)
        .partition(partition)
        .partition_spec_id(spec_id)
        .record_count(values.len() as u64)
        .file_size_in_bytes(size)
        .equality_ids(Some(vec![field_id]))
        .build()
        .unwrap()
}

/// Writes `batch` as a Parquet file `<prefix>-<uuid>.parquet` in the table's data folder;
/// returns its path and size.
async fn write_parquet(
    catalog: &Catalog,
    meta: &iceberg::spec::TableMetadata,
    batch: &RecordBatch,
    prefix: &str,
) -> (String, u64) {
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    let path = format!(
        "{}/data/{prefix}-{}.parquet",
        meta.location(),
        uuid::Uuid::new_v4()
    );
    let size = buf.len() as u64;
    catalog
        .file_io()
        .new_output(&path)
        .unwrap()
        .write(buf.into())
        .await
        .unwrap();
    (path, size)
}

/// Cases per fuzz target: `FLOE_FUZZ_CASES`, or 256 (a longer run:
/// `FLOE_FUZZ_CASES=200000 cargo nextest run --workspace -E 'test(fuzz)'`, docs/testing.md).
pub fn fuzz_cases() -> u32 {
    std::env::var("FLOE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

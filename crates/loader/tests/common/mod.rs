//! Helpers shared by the loader's integration tests.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;

use arrow_array::RecordBatch;
use floe_lake::{Catalog, CatalogConfig, parse_table_ident};
use futures::TryStreamExt;
use iceberg::MetadataLocation;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

/// A SQLite catalog with its warehouse in `dir`.
pub async fn catalog(dir: &std::path::Path) -> Catalog {
    Catalog::connect(&CatalogConfig {
        uri: format!("sqlite://{}/c.db", dir.display()),
        warehouse: format!("{}/wh", dir.display()),
        name: "floe".into(),
    })
    .await
    .unwrap()
}

/// Adds an optional double column the way any Iceberg tool would: new metadata with a new
/// current schema, swapped in the catalog.
pub async fn add_column(catalog: &Catalog, table: &str, name: &str) {
    let ident = parse_table_ident(table).unwrap();
    let (location, meta) = catalog.load_metadata(&ident).await.unwrap();
    let mut fields: Vec<_> = meta.current_schema().as_struct().fields().to_vec();
    fields.push(Arc::new(NestedField::optional(
        meta.last_column_id() + 1,
        name,
        Type::Primitive(PrimitiveType::Double),
    )));
    let schema = Schema::builder()
        .with_schema_id(meta.current_schema_id() + 1)
        .with_fields(fields)
        .build()
        .unwrap();
    let new = meta
        .into_builder(Some(location.clone()))
        .add_current_schema(schema)
        .unwrap()
        .build()
        .unwrap()
        .metadata;
    let new_location = MetadataLocation::from_str(&location)
        .unwrap()
        .with_next_version();
    new.write_to(catalog.file_io(), &new_location)
        .await
        .unwrap();
    assert!(
        catalog
            .swap_metadata_location(&ident, &location, &new_location.to_string())
            .await
            .unwrap()
    );
}

/// Every row of `table`'s current snapshot.
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

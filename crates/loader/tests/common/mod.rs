//! Helpers shared by the loader's integration tests (the general ones come from floe-testkit).
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;

use floe_lake::{Catalog, parse_table_ident};
use iceberg::MetadataLocation;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

pub use floe_testkit::{catalog, scan};

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

/// A catalog in `dir` holding table `lake.t` of definition `def` (JSON).
pub async fn catalog_with_table(dir: &std::path::Path, def: &str) -> Catalog {
    let catalog = catalog(dir).await;
    catalog
        .create_table(
            &floe_schema::TableDefinition::from_json(def, Some("lake.t"), "test").unwrap(),
        )
        .await
        .unwrap();
    catalog
}

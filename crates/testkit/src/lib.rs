//! Helpers shared by floe's integration tests: a throwaway SQLite lake and a whole-table scan.
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

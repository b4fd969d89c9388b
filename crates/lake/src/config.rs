//! Catalog and storage settings (the `[catalog]` section of `floe.toml`).

use serde::{Deserialize, Serialize};

/// Where tables are registered and where their files live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Catalog database: `sqlite://path/catalog.db` (embedded) or `postgres://user:pw@host/db`
    /// (shared with Trino's `iceberg.catalog.type=jdbc`).
    pub uri: String,
    /// Warehouse root: a local folder or `s3://bucket/prefix`.
    pub warehouse: String,
    /// Catalog name (`catalog_name` column of the JDBC catalog tables).
    pub name: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            uri: "sqlite://floe-data/catalog.db".into(),
            warehouse: "floe-data/warehouse".into(),
            name: "floe".into(),
        }
    }
}

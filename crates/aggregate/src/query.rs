//! SQL over the lake (`floe query`, the quickstart's report): a DataFusion session with every
//! table of the catalog registered as `<namespace>.<table>` in a catalog named after floe's
//! catalog; the first namespace holding tables (normally `lake`) is the default schema, so
//! `FROM events` works too.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use floe_lake::Catalog;
use iceberg_datafusion::IcebergStaticTableProvider;

/// Errors of a query over the lake.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The catalog or a table could not be read.
    #[error(transparent)]
    Lake(#[from] floe_lake::Error),
    /// A table could not be opened for queries.
    #[error("opening {table} for queries: {source}")]
    Open {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: iceberg::Error,
    },
    /// The statement failed to plan or run.
    #[error("{doing} the query: {source}")]
    Query {
        /// `planning` or `running`.
        doing: &'static str,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
}

fn registering(source: DataFusionError) -> QueryError {
    QueryError::Query {
        doing: "setting up",
        source,
    }
}

/// A DataFusion session with every catalog table registered.
pub async fn session(catalog: &Catalog) -> Result<SessionContext, QueryError> {
    let tables = catalog.list_tables().await?;
    let mut by_ns: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for t in tables {
        by_ns.entry(t.namespace().join(".")).or_default().push(t);
    }
    let default_schema = if by_ns.contains_key("lake") {
        "lake".to_string()
    } else {
        by_ns
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| "public".into())
    };
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(catalog.name(), &default_schema)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let df_catalog = Arc::new(MemoryCatalogProvider::new());
    for (ns, tables) in by_ns {
        let schema = Arc::new(MemorySchemaProvider::new());
        for ident in tables {
            let table = catalog.load_table(&ident).await?;
            let provider = IcebergStaticTableProvider::try_new_from_table(table)
                .await
                .map_err(|source| QueryError::Open {
                    table: ident.to_string(),
                    source,
                })?;
            schema
                .register_table(ident.name().to_string(), Arc::new(provider))
                .map_err(registering)?;
        }
        df_catalog
            .register_schema(&ns, schema)
            .map_err(registering)?;
    }
    if df_catalog.schema(&default_schema).is_none() {
        df_catalog
            .register_schema(&default_schema, Arc::new(MemorySchemaProvider::new()))
            .map_err(registering)?;
    }
    ctx.register_catalog(catalog.name(), df_catalog);
    Ok(ctx)
}

/// Runs `sql` over the lake and collects the result.
pub async fn query(catalog: &Catalog, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = session(catalog).await?;
    let df = ctx.sql(sql).await.map_err(|source| QueryError::Query {
        doing: "planning",
        source,
    })?;
    df.collect().await.map_err(|source| QueryError::Query {
        doing: "running",
        source,
    })
}

//! `floe query`: DataFusion SQL over every table of the catalog. Tables are registered as
//! `<namespace>.<table>` in a catalog named after floe's catalog; the first namespace holding
//! tables (normally `lake`) is the default schema, so `FROM events` works too.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use floe_lake::Catalog;
use iceberg_datafusion::IcebergStaticTableProvider;

use crate::config::FloeConfig;

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args)]
pub struct QueryArgs {
    /// The SQL statement.
    sql: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
}

/// A DataFusion session with every catalog table registered.
pub async fn session(catalog: &Catalog) -> Result<SessionContext> {
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
                .with_context(|| format!("opening {ident} for queries"))?;
            schema.register_table(ident.name().to_string(), Arc::new(provider))?;
        }
        df_catalog.register_schema(&ns, schema)?;
    }
    if df_catalog.schema(&default_schema).is_none() {
        df_catalog.register_schema(&default_schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    ctx.register_catalog(catalog.name(), df_catalog);
    Ok(ctx)
}

/// Runs `sql` and collects the result.
pub async fn query(catalog: &Catalog, sql: &str) -> Result<Vec<RecordBatch>> {
    let ctx = session(catalog).await?;
    let df = ctx.sql(sql).await.context("planning the query")?;
    df.collect().await.context("running the query")
}

pub async fn run(cfg: &FloeConfig, args: QueryArgs) -> Result<()> {
    let catalog = super::connect(cfg).await?;
    let batches = query(&catalog, &args.sql).await?;
    let mut out = std::io::stdout().lock();
    print_batches(&mut out, &batches, args.format)
}

pub fn print_batches(
    out: &mut impl std::io::Write,
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<()> {
    match format {
        OutputFormat::Table => {
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for b in batches {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

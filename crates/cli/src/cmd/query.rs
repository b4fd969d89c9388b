//! `floe query`: DataFusion SQL over every table of the catalog
//! ([`floe_aggregate::query`]), printed as a table, CSV or JSON lines.

use anyhow::Result;
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};

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

/// Runs `sql` over the lake and collects the result.
pub async fn query(catalog: &floe_lake::Catalog, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(floe_aggregate::query::query(catalog, sql).await?)
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

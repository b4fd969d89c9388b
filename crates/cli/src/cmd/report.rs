//! The short report `quickstart` ends with: what is in the tables now.

use anyhow::Result;
use floe_lake::Catalog;

use super::query::{OutputFormat, print_batches, query};

pub async fn print_report(catalog: &Catalog) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for ident in catalog.list_tables().await? {
        let (_, meta) = catalog.load_metadata(&ident).await?;
        let p = meta
            .current_snapshot()
            .map(|s| s.summary().additional_properties.clone())
            .unwrap_or_default();
        let get = |k: &str| p.get(k).cloned().unwrap_or_else(|| "0".into());
        println!(
            "{ident}: {} rows, {} data files, {} bytes, {} snapshots",
            get("total-records"),
            get("total-data-files"),
            get("total-files-size"),
            meta.snapshots().len()
        );
    }
    println!("\ndead letters by reason:");
    let b = query(catalog, "SELECT error_kind, count(*) AS messages FROM lake.events_dead_letters GROUP BY 1 ORDER BY 2 DESC").await?;
    print_batches(&mut out, &b, OutputFormat::Table)?;
    println!("\nevents per hour and country (busiest 10):");
    let b = query(
        catalog,
        "SELECT date_trunc('hour', event_ts) AS hour, country, count(*) AS events \
         FROM lake.events GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 10",
    )
    .await?;
    print_batches(&mut out, &b, OutputFormat::Table)?;
    Ok(())
}

//! One module per subcommand.

pub mod bench;
pub mod dev_broker;
pub mod dlq;
pub mod generate;
pub mod load;
pub mod maintain;
pub mod query;
pub mod quickstart;
pub mod report;
pub mod run;
pub mod soak;
pub mod table;

use anyhow::{Context, Result};
use floe_lake::{Catalog, Committer};

use crate::config::FloeConfig;

/// Connects to the configured catalog.
pub async fn connect(cfg: &FloeConfig) -> Result<Catalog> {
    Catalog::connect_with(&cfg.catalog, &cfg.s3)
        .await
        .with_context(|| {
            format!(
                "opening catalog {}",
                floe_lake::catalog::redact_uri(&cfg.catalog.uri)
            )
        })
}

/// A committer on the configured catalog.
pub async fn committer(cfg: &FloeConfig) -> Result<Committer> {
    Ok(Committer::new(connect(cfg).await?))
}

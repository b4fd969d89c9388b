//! `floe maintain`: the scheduled maintenance job (compaction, retention, snapshot expiry,
//! orphan removal), safe while loaders commit. Exit status is non-zero only on a real failure:
//! a compaction bin skipped because another writer got there first is not one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use floe_lake::{Committer, parse_table_ident};
use floe_maintenance::compact::Compact;
use floe_maintenance::expire::ExpireSnapshots;
use floe_maintenance::manifests::RewriteManifests;
use floe_maintenance::orphans::RemoveOrphans;
use floe_maintenance::retention::Retention;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::config::FloeConfig;

/// Table property giving a table's retention when `--retention` is not set (e.g. `30d`).
pub const RETENTION_PROPERTY: &str = "floe.retention";

#[derive(Args)]
pub struct MaintainArgs {
    /// Table to maintain (namespace.table; repeatable).
    #[arg(long, value_name = "NAME", required_unless_present = "all")]
    table: Vec<String>,
    /// Every table of the catalog.
    #[arg(long, conflicts_with = "table")]
    all: bool,
    /// Compact small files.
    #[arg(long)]
    compact: bool,
    /// Expire old snapshots and delete the files only they referenced.
    #[arg(long)]
    expire_snapshots: bool,
    /// Remove rows older than this (e.g. 30d); without it, a table's `floe.retention` property.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// Remove files no metadata references.
    #[arg(long)]
    remove_orphans: bool,
    /// Rewrite the manifests, clustered by partition (few manifests, no removed entries).
    #[arg(long)]
    rewrite_manifests: bool,
    /// Expiry: snapshots younger than this are kept [default: the table's
    /// history.expire.max-snapshot-age-ms, else 7d].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Expiry: the newest N snapshots of each branch are kept whatever their age [default:
    /// the table's history.expire.min-snapshots-to-keep, else 10].
    #[arg(long, value_name = "N")]
    retain_last: Option<usize>,
    /// Orphans: only files older than this are removed (guards files being written; at
    /// least 1h unless --force).
    #[arg(long, value_name = "DURATION", default_value = "3d", value_parser = humantime::parse_duration)]
    orphan_age: Duration,
    /// Orphans: allow an --orphan-age below 1h (only when nothing writes to the tables).
    #[arg(long)]
    force: bool,
    /// Compaction: target file size (default: the table's write.target-file-size-bytes).
    #[arg(long, value_name = "SIZE")]
    target_file_size: Option<bytesize::ByteSize>,
    /// Report what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus /metrics while running (commit latency and conflicts, as the loader's).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

pub async fn run(cfg: &FloeConfig, args: MaintainArgs) -> Result<()> {
    if let Some(listen) = &args.metrics_listen {
        let handle = crate::telemetry::install()?;
        let health = Arc::new(floe_loader::metrics::Health::new(Duration::from_secs(3600)));
        let endpoint = floe_loader::config::MetricsConfig {
            listen: listen.clone(),
            ..cfg.metrics.clone()
        };
        crate::telemetry::serve(&endpoint, handle, health).await?;
    }
    let committer = super::committer(cfg).await?;
    let tables: Vec<String> = if args.all {
        committer
            .catalog()
            .list_tables()
            .await?
            .iter()
            .map(|t| t.to_string())
            .collect()
    } else {
        args.table.clone()
    };
    let aggregates = cfg.aggregate_definitions()?;
    let all_steps = !(args.compact
        || args.expire_snapshots
        || args.retention.is_some()
        || args.remove_orphans
        || args.rewrite_manifests);
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for table in &tables {
        match maintain_table(&committer, table, &args, all_steps, &aggregates).await {
            Ok((report, errors)) => {
                failures.extend(errors.into_iter().map(|e| format!("{table}: {e}")));
                reports.push(report);
            }
            Err(e) => {
                eprintln!("{table}: {e:#}");
                failures.push(format!("{table}: {e:#}"));
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if !failures.is_empty() {
        bail!("maintenance failed: {}", failures.join("; "));
    }
    Ok(())
}

/// Runs the steps on one table in the safe order: compact → retention → rewrite manifests →
/// expire → orphans.
async fn maintain_table(
    committer: &Committer,
    table: &str,
    args: &MaintainArgs,
    all_steps: bool,
    aggregates: &[floe_aggregate::AggregateDef],
) -> Result<(serde_json::Value, Vec<String>)> {
    let mut out = serde_json::Map::new();
    let mut errors = Vec::new();
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let dry = if args.dry_run { " (dry run)" } else { "" };

    if all_steps || args.compact {
        let bar = progress_bar(args.json);
        let b = bar.clone();
        let mut op =
            Compact::new(table)
                .dry_run(args.dry_run)
                .progress(Arc::new(move |done, total| {
                    b.set_length(total);
                    b.set_position(done);
                }));
        if let Some(size) = args.target_file_size {
            op = op.target_file_size(size.as_u64());
        }
        if let Some(def) = aggregates.iter().find(|d| d.target == table) {
            op = op.fold(def.clone());
        }
        let r = op.execute(committer).await?;
        bar.finish_and_clear();
        say(format!(
            "{table}: compact{dry}: {} → {} files, {} → {} in {} partitions ({} bins committed, {} skipped)",
            r.files_before,
            r.files_after,
            bytesize::ByteSize(r.bytes_before),
            bytesize::ByteSize(r.bytes_after),
            r.partitions,
            r.bins_committed,
            r.bins_skipped
        ));
        if r.files_with_deletes > 0 {
            say(format!(
                "{table}: compact: {} files rewritten with other engines' row-level deletes applied; {} delete files removed",
                r.files_with_deletes, r.delete_files_removed
            ));
        }
        errors.extend(r.errors.iter().cloned());
        out.insert("compact".into(), serde_json::to_value(&r)?);
    }

    let retention = match args.retention {
        Some(d) => Some(d),
        None if all_steps => table_retention(committer, table).await?,
        None => None,
    };
    if let Some(keep) = retention {
        let r = Retention::keep(table, keep)
            .dry_run(args.dry_run)
            .execute(committer)
            .await?;
        say(format!(
            "{table}: retention{dry}: rows of {} before {} removed: {} rows, {} files whole, {} rewritten, {} → {}",
            r.column,
            r.cutoff,
            r.rows_deleted,
            r.files_deleted,
            r.files_rewritten,
            bytesize::ByteSize(r.bytes_before),
            bytesize::ByteSize(r.bytes_after)
        ));
        out.insert("retention".into(), serde_json::to_value(&r)?);
    }

    if all_steps || args.rewrite_manifests {
        let r = RewriteManifests::new(table)
            .dry_run(args.dry_run)
            .execute(committer)
            .await?;
        say(format!(
            "{table}: rewrite-manifests{dry}: {} → {} manifests{}",
            r.manifests_before,
            r.manifests_after,
            if r.rewritten {
                ""
            } else {
                " (already clustered)"
            }
        ));
        out.insert("rewrite_manifests".into(), serde_json::to_value(&r)?);
    }

    if all_steps || args.expire_snapshots {
        let mut op = ExpireSnapshots::new(table).dry_run(args.dry_run);
        if let Some(d) = args.older_than {
            op = op.older_than(d);
        }
        if let Some(n) = args.retain_last {
            op = op.retain_last(n);
        }
        let r = op.execute(committer).await?;
        say(format!(
            "{table}: expire-snapshots{dry}: {} → {} snapshots; deleted {} data files ({}), {} manifests, {} manifest lists",
            r.snapshots_before,
            r.snapshots_after,
            r.data_files_deleted,
            bytesize::ByteSize(r.data_bytes_deleted),
            r.manifests_deleted,
            r.manifest_lists_deleted
        ));
        out.insert("expire_snapshots".into(), serde_json::to_value(&r)?);
    }

    if all_steps || args.remove_orphans {
        let r = RemoveOrphans::new(table)
            .older_than(args.orphan_age)
            .force(args.force)
            .dry_run(args.dry_run)
            .execute(committer)
            .await?;
        say(format!(
            "{table}: remove-orphans{dry}: {} files listed, {} referenced, {} orphans removed ({}), {} unreferenced but younger than {}",
            r.files_listed,
            r.files_referenced,
            r.removed.len(),
            bytesize::ByteSize(r.bytes_removed),
            r.too_young,
            humantime::format_duration(args.orphan_age)
        ));
        out.insert("remove_orphans".into(), serde_json::to_value(&r)?);
    }
    Ok((json!({ "table": table, "steps": out }), errors))
}

/// The table's `floe.retention` property, parsed.
async fn table_retention(committer: &Committer, table: &str) -> Result<Option<Duration>> {
    let (_, meta) = committer
        .catalog()
        .load_metadata(&parse_table_ident(table)?)
        .await?;
    match meta.properties().get(RETENTION_PROPERTY) {
        None => Ok(None),
        Some(v) => humantime::parse_duration(v.trim()).map(Some).map_err(|e| {
            anyhow::anyhow!("{table}: table property {RETENTION_PROPERTY} = {v:?}: {e}")
        }),
    }
}

fn progress_bar(quiet: bool) -> ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "compacting {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        .expect("valid template"),
    )
}

//! `floe maintain`: the scheduled maintenance job (compaction, retention, snapshot expiry,
//! orphan removal), safe while loaders commit. Exit status is non-zero only on a real failure:
//! a compaction bin skipped because another writer got there first is not one. The steps
//! themselves are [`floe_maintenance::maintain`]; this parses and prints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use floe_maintenance::maintain::{Step, Steps};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::FloeConfig;

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

impl MaintainArgs {
    fn steps(&self) -> Steps {
        Steps {
            compact: self.compact,
            retention: self.retention,
            rewrite_manifests: self.rewrite_manifests,
            expire_snapshots: self.expire_snapshots,
            remove_orphans: self.remove_orphans,
            dry_run: self.dry_run,
            target_file_size: self.target_file_size.map(|s| s.as_u64()),
            older_than: self.older_than,
            retain_last: self.retain_last,
            orphan_age: self.orphan_age,
            force: self.force,
        }
    }
}

pub async fn run(cfg: &FloeConfig, args: MaintainArgs) -> Result<()> {
    if let Some(listen) = &args.metrics_listen {
        let handle = crate::telemetry::install()?;
        let health = Arc::new(floe_loader::telemetry::Health::new(Duration::from_secs(
            3600,
        )));
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
    let steps = args.steps();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for table in &tables {
        let bar = progress_bar(args.json);
        let b = bar.clone();
        let progress = Arc::new(move |done, total| {
            b.set_length(total);
            b.set_position(done);
        });
        let print = |step: Step<'_>| {
            bar.finish_and_clear();
            if !args.json {
                println!("{}", describe(table, step, &args));
            }
        };
        let done = floe_maintenance::maintain(
            &committer,
            table,
            &steps,
            &aggregates,
            Some(progress),
            print,
        )
        .await;
        bar.finish_and_clear();
        match done {
            Ok(report) => {
                let errors = report.steps.compact.iter().flat_map(|c| &c.errors);
                failures.extend(errors.map(|e| format!("{table}: {e}")));
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

/// The line a finished step prints.
fn describe(table: &str, step: Step<'_>, args: &MaintainArgs) -> String {
    let dry = if args.dry_run { " (dry run)" } else { "" };
    let size = bytesize::ByteSize;
    match step {
        Step::Compact(r) => {
            let mut line = format!(
                "{table}: compact{dry}: {} → {} files, {} → {} in {} partitions ({} bins committed, {} skipped)",
                r.files_before,
                r.files_after,
                size(r.bytes_before),
                size(r.bytes_after),
                r.partitions,
                r.bins_committed,
                r.bins_skipped
            );
            if r.files_with_deletes > 0 {
                line.push_str(&format!(
                    "\n{table}: compact: {} files rewritten with other engines' row-level deletes applied; {} delete files removed",
                    r.files_with_deletes, r.delete_files_removed
                ));
            }
            line
        }
        Step::Retention(r) => format!(
            "{table}: retention{dry}: rows of {} before {} removed: {} rows, {} files whole, {} rewritten, {} → {}",
            r.column,
            r.cutoff,
            r.rows_deleted,
            r.files_deleted,
            r.files_rewritten,
            size(r.bytes_before),
            size(r.bytes_after)
        ),
        Step::RewriteManifests(r) => format!(
            "{table}: rewrite-manifests{dry}: {} → {} manifests{}",
            r.manifests_before,
            r.manifests_after,
            if r.rewritten {
                ""
            } else {
                " (already clustered)"
            }
        ),
        Step::ExpireSnapshots(r) => format!(
            "{table}: expire-snapshots{dry}: {} → {} snapshots; deleted {} data files ({}), {} manifests, {} manifest lists",
            r.snapshots_before,
            r.snapshots_after,
            r.data_files_deleted,
            size(r.data_bytes_deleted),
            r.manifests_deleted,
            r.manifest_lists_deleted
        ),
        Step::RemoveOrphans(r) => format!(
            "{table}: remove-orphans{dry}: {} files listed, {} referenced, {} orphans removed ({}), {} unreferenced but younger than {}",
            r.files_listed,
            r.files_referenced,
            r.removed.len(),
            size(r.bytes_removed),
            r.too_young,
            humantime::format_duration(args.orphan_age)
        ),
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

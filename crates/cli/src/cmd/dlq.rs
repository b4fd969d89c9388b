//! `floe dlq`: work with dead letters.

use anyhow::Result;
use clap::{Args, Subcommand};
use floe_loader::replay::{ReplayOptions, replay};

use crate::config::FloeConfig;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Re-feed dead letters to their table after a fix (a column added, an alias set), exactly
    /// once: rows that now decode are loaded and removed from the dead-letter table; the rest
    /// stay.
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The table the dead letters were meant for (namespace.table).
    #[arg(long)]
    table: String,
    /// Dead-letter table (default: the configured pipeline's, else <table>_dead_letters).
    #[arg(long, value_name = "NAME")]
    dead_letter_table: Option<String>,
    /// Only dead letters matching this SQL condition over the dead-letter table's columns,
    /// e.g. "error_kind = 'unknown_field' AND failed_at > TIMESTAMP '2026-11-01 00:00:00Z'".
    #[arg(long = "where", value_name = "SQL")]
    filter: Option<String>,
    /// Decode and count only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: &FloeConfig, cmd: DlqCommand) -> Result<()> {
    match cmd {
        DlqCommand::Replay(args) => run_replay(cfg, args).await,
    }
}

async fn run_replay(cfg: &FloeConfig, args: ReplayArgs) -> Result<()> {
    let committer = super::committer(cfg).await?;
    let mut opts = ReplayOptions::new(&args.table);
    let configured = cfg
        .pipelines
        .iter()
        .filter(|p| p.table == args.table)
        .find_map(|p| p.dead_letter_table());
    if let Some(dl) = args.dead_letter_table.or(configured) {
        opts.dead_letter_table = dl;
    }
    (opts.mapping, opts.section) = cfg.mapping_for(&args.table);
    opts.filter = args.filter;
    opts.dry_run = args.dry_run;
    let report = replay(&committer, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let failing: u64 = report.still_failing.values().sum();
    println!(
        "{}{} dead letters of {} selected from {}: {} {}loaded, {} still failing, {} already replayed earlier{}",
        if report.dry_run { "dry run: " } else { "" },
        report.selected,
        opts.table,
        opts.dead_letter_table,
        report.replayed,
        if report.dry_run { "would be " } else { "" },
        failing,
        report.already_replayed,
        if report.untracked > 0 {
            format!(", {} without a source offset (left)", report.untracked)
        } else {
            String::new()
        }
    );
    for (kind, n) in &report.still_failing {
        println!("  still failing {kind}: {n}");
    }
    if !report.dry_run {
        println!(
            "{} rows removed from {}; snapshots: table {}, dead letters {}",
            report.removed_dead_letters,
            opts.dead_letter_table,
            report
                .snapshot_id
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            report
                .dead_letter_snapshot_id
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
        );
    }
    Ok(())
}

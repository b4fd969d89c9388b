//! `floe run`: the loader service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use floe_loader::config::PipelineConfig;
use floe_loader::source::kafka::{RunOptions, run};
use floe_loader::telemetry::Health;

use crate::config::FloeConfig;

#[derive(Args)]
pub struct RunArgs {
    /// Kafka bootstrap servers (kafka.brokers).
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// Consumer group (kafka.group_id).
    #[arg(long)]
    pub group: Option<String>,
    /// Topic to load (with --table: one pipeline instead of the configured ones).
    #[arg(long, requires = "table")]
    pub topic: Vec<String>,
    /// Target table for --topic.
    #[arg(long, requires = "topic")]
    pub table: Option<String>,
    /// Commit at least this often (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub flush_interval: Option<Duration>,
    /// Commit after this many messages.
    #[arg(long, value_name = "N")]
    pub max_rows: Option<u64>,
    /// Commit after this many payload bytes (e.g. 256MiB).
    #[arg(long, value_name = "SIZE")]
    pub max_bytes: Option<bytesize::ByteSize>,
    /// Decoded rows handed to the Parquet writer at a time (flush.chunk_rows).
    #[arg(long, value_name = "N")]
    pub chunk_rows: Option<usize>,
    /// Dead-letter table for --topic (default <table>_dead_letters).
    #[arg(long)]
    pub dead_letter_table: Option<String>,
    /// Dead-letter topic for --topic (default <topic>.dead-letters; "" for none).
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Stop at the first rejected message instead of dead-lettering it.
    #[arg(long)]
    pub no_dead_letters: bool,
    /// After SIGTERM or ctrl-c, how long the final commits may take before the loader exits
    /// without them (status 1; what they held is read again on restart, exactly once as
    /// after a crash). A second signal exits at once.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", default_value = "30s")]
    pub shutdown_timeout: Duration,
    /// Exit (after committing) once every assigned partition is read to its end.
    #[arg(long)]
    pub until_drained: bool,
    /// Aggregates to run (comma-separated names from sql/aggregates), or `none`; default: every
    /// aggregate whose `-- source:` is the table.
    #[arg(long, value_name = "NAMES|none", value_delimiter = ',')]
    pub aggregates: Option<Vec<String>>,
}

pub fn pipelines(cfg: &FloeConfig, args: &RunArgs) -> Vec<PipelineConfig> {
    let mut pipelines = if let Some(table) = &args.table {
        // The configured pipeline of that table (if any) lends its other settings (mapping,
        // dedup, flush policy), as it does to `floe load` and `floe dlq replay`.
        let base = cfg
            .pipeline_for(table)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        vec![PipelineConfig {
            topics: args.topic.clone(),
            table: table.clone(),
            dead_letter_table: args
                .dead_letter_table
                .clone()
                .or(base.dead_letter_table.clone()),
            dead_letter_topic: args
                .dead_letter_topic
                .clone()
                .or(base.dead_letter_topic.clone()),
            ..base
        }]
    } else {
        cfg.pipelines.clone()
    };
    for p in &mut pipelines {
        if let Some(d) = args.flush_interval {
            p.flush.interval = d;
        }
        if let Some(n) = args.max_rows {
            p.flush.max_rows = n;
        }
        if let Some(b) = args.max_bytes {
            p.flush.max_bytes = b;
        }
        if let Some(n) = args.chunk_rows {
            p.flush.chunk_rows = n;
        }
        if args.no_dead_letters {
            p.dead_letters = false;
        }
        if let Some(names) = &args.aggregates {
            p.aggregates = Some(
                names
                    .iter()
                    .filter(|n| !n.is_empty() && n.as_str() != "none")
                    .cloned()
                    .collect(),
            );
        }
    }
    pipelines
}

/// Sets the flag on SIGTERM or ctrl-c. From then on, the process exits with status 1 after
/// `grace` or at a second signal, whatever it is doing: a final commit that hangs (a broker
/// or object store down) must not keep a stopping loader alive, and leaving mid-commit is a
/// crash the exactly-once protocol recovers from.
pub fn shutdown_flag(grace: Duration) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        next_signal(&mut term).await;
        tracing::info!("shutdown requested");
        f.store(true, Ordering::Relaxed);
        // A thread of its own: the runtime's workers may be the ones stuck.
        let _ = std::thread::Builder::new()
            .name("shutdown-timeout".into())
            .spawn(move || {
                std::thread::sleep(grace);
                tracing::error!(
                    waited = %humantime::format_duration(grace),
                    "the final commits did not finish in the shutdown timeout; exiting \
                     without them: their messages are read again on restart"
                );
                std::process::exit(1);
            });
        next_signal(&mut term).await;
        tracing::error!(
            "second shutdown signal: exiting without the final commits; their messages are \
             read again on restart"
        );
        std::process::exit(1);
    });
    flag
}

/// The next SIGTERM or ctrl-c.
async fn next_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn execute(cfg: &FloeConfig, args: RunArgs) -> Result<()> {
    let mut kafka = cfg.kafka.clone();
    if let Some(b) = &args.brokers {
        kafka.brokers = b.clone();
    }
    if let Some(g) = &args.group {
        kafka.group_id = g.clone();
    }
    let pipelines = pipelines(cfg, &args);
    anyhow::ensure!(
        !pipelines.is_empty(),
        "nothing to load: give --topic and --table, or [[pipelines]] in floe.toml"
    );
    let interval = pipelines
        .iter()
        .map(|p| p.flush.interval)
        .max()
        .unwrap_or_default();
    let health = Arc::new(Health::new(
        interval * cfg.metrics.stale_after_intervals.max(1),
    ));
    if !cfg.metrics.listen.is_empty() {
        let handle = crate::telemetry::install()?;
        crate::telemetry::serve(&cfg.metrics, handle, health.clone()).await?;
    }
    let committer = super::committer(cfg).await?;
    let shutdown = shutdown_flag(args.shutdown_timeout);
    let rt = tokio::runtime::Handle::current();
    let opts = RunOptions {
        kafka,
        pipelines,
        until_drained: args.until_drained,
        static_assignment: false,
        aggregates: cfg.aggregate_definitions()?,
        table_definitions: super::table::known_definitions(cfg)?,
        limits: cfg.limits,
    };
    let totals = tokio::task::spawn_blocking(move || run(committer, rt, opts, shutdown, health))
        .await
        .context("loader thread")??;
    for (table, t) in totals {
        println!(
            "{table}: {} messages, {} rows, {} dead letters, {} tombstones, {} already committed, {} commits, {} rewinds",
            t.received,
            t.accepted,
            t.dead_lettered,
            t.tombstones,
            t.already_committed,
            t.commits,
            t.rewinds
        );
    }
    Ok(())
}

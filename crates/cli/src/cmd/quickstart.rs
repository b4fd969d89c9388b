//! `floe quickstart`: the whole pipeline on the embedded default in one command — an
//! in-process Kafka-compatible broker, the tables, seed events with malformed ones mixed in,
//! the loader until the topic is drained, and a report.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use floe_devtools::broker::DevBroker;
use floe_loader::config::{FlushConfig, KafkaConfig, PipelineConfig};
use floe_loader::source::kafka::{RunOptions, run_to_end};

use super::generate::{GenArgs, print_counts, produce_to_kafka};
use crate::config::FloeConfig;

#[derive(Args)]
pub struct QuickstartArgs {
    #[command(flatten)]
    gen_args: GenArgs,
    /// Partitions of the quickstart topic (the in-process broker keeps ~5 MB per partition).
    #[arg(long, default_value_t = 16)]
    partitions: i32,
}

pub async fn run_quickstart(cfg: &FloeConfig, mut args: QuickstartArgs) -> Result<()> {
    if args.gen_args.malformed == 0.0 {
        args.gen_args.malformed = 0.01;
    }
    let started = std::time::Instant::now();
    let catalog = super::connect(cfg).await?;
    super::table::create_definitions(cfg, &catalog).await?;

    let topic = "events";
    let broker = DevBroker::start(args.partitions).map_err(anyhow::Error::msg)?;
    broker.create_topic(topic).map_err(anyhow::Error::msg)?;
    let kafka = KafkaConfig {
        brokers: broker.bootstrap_servers(),
        group_id: "floe-quickstart".into(),
        ..Default::default()
    };
    println!(
        "in-process broker at {} (topic {topic}, {} partitions)",
        kafka.brokers, args.partitions
    );
    let produced =
        produce_to_kafka(kafka.clone(), topic.into(), args.gen_args.clone(), None).await?;
    print_counts(&produced.by_kind);
    println!(
        "produced {} messages in {:.1}s; loading…",
        produced.delivered,
        produced.elapsed.as_secs_f64()
    );

    let opts = RunOptions {
        kafka,
        pipelines: vec![PipelineConfig {
            topics: vec![topic.into()],
            table: "lake.events".into(),
            flush: FlushConfig {
                interval: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        }],
        until_drained: true,
        static_assignment: true,
        aggregates: floe_aggregate::AggregateDef::builtin()?,
        table_definitions: floe_schema::TableDefinition::builtin()?,
        limits: cfg.limits,
    };
    let load_started = std::time::Instant::now();
    let totals = run_to_end(floe_lake::Committer::new(catalog.clone()), opts).await?;
    for (table, t) in &totals {
        println!(
            "loaded {} messages into {table} in {:.1}s: {} rows, {} dead letters ({} commits)",
            t.received,
            load_started.elapsed().as_secs_f64(),
            t.accepted,
            t.dead_lettered,
            t.commits
        );
    }
    super::report::print_report(&catalog).await?;
    drop(broker);
    let kept = if catalog.is_rest() {
        format!("catalog {}", catalog.warehouse())
    } else {
        std::path::Path::new(&cfg.catalog.warehouse)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    println!(
        "\nDone in {:.1}s. The data stays in {kept}: try `floe query \"SELECT country, count(*) FROM events GROUP BY 1\"`,\nor read it with PyIceberg / DuckDB (see README).",
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

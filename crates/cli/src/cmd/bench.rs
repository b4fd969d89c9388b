//! `floe bench`: in one run on one broker, consume-only throughput versus the full loader
//! (decode, Parquet, commits) on the same topic, the loader with the aggregates, and the
//! loader with two computed columns and two rules, with peak memory of each phase.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use floe_lake::{Catalog, CatalogConfig};
use floe_loader::config::{FlushConfig, KafkaConfig, PipelineConfig};
use floe_loader::kafka::DevBroker;
use floe_loader::run::{RunOptions, run_to_end};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::generate::{GenArgs, produce_to_kafka};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    gen_args: GenArgs,
    /// Partitions (default: enough to keep each under the mock broker's ~5 MB per partition).
    #[arg(long)]
    partitions: Option<i32>,
    /// Messages per commit in the loader phase.
    #[arg(long, default_value_t = 1_000_000)]
    max_rows: u64,
    /// Runs of each loader phase; the fastest counts (less noise on a busy machine).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

/// Peak resident memory since the last reset (VmHWM), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub async fn run_bench(args: BenchArgs) -> Result<()> {
    let events = args.gen_args.events;
    let partitions = args
        .partitions
        .unwrap_or_else(|| ((events / 12_000) as i32 + 1).max(4));
    let broker = DevBroker::start(partitions).map_err(anyhow::Error::msg)?;
    broker.create_topic("bench").map_err(anyhow::Error::msg)?;
    let kafka = KafkaConfig {
        brokers: broker.bootstrap_servers(),
        group_id: "floe-bench".into(),
        ..Default::default()
    };
    println!("producing {events} seed events into {partitions} partitions…");
    let produced =
        produce_to_kafka(kafka.clone(), "bench".into(), args.gen_args.clone(), None).await?;
    let mb = produced.bytes as f64 / 1e6;
    println!(
        "produced {} messages ({mb:.0} MB) in {:.1}s",
        produced.delivered,
        produced.elapsed.as_secs_f64()
    );

    // Phase 1: consume only, same client settings as the loader.
    reset_peak_rss();
    let k = kafka.clone();
    let (consumed, secs) = tokio::task::spawn_blocking(move || -> Result<(u64, f64)> {
        let consumer: BaseConsumer = floe_loader::kafka::consumer_config(&k)
            .set("enable.partition.eof", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset("bench", p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let started = Instant::now();
        let mut n = 0u64;
        let mut bytes = 0u64;
        while n < events {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
            }
        }
        std::hint::black_box(bytes);
        Ok((n, started.elapsed().as_secs_f64()))
    })
    .await??;
    let consume_rss = peak_rss();
    let consume_rate = consumed as f64 / secs;

    // Phase 2: the full loader into a fresh lake; phase 3: the same with the aggregates.
    let (loaded, load_secs, load_rss) = load_phase(
        &kafka,
        events,
        (args.max_rows, args.repeat),
        Vec::new(),
        floe_schema::Mapping::default(),
    )
    .await?;
    let load_rate = loaded as f64 / load_secs;
    let (agg_loaded, agg_secs, agg_rss) = load_phase(
        &kafka,
        events,
        (args.max_rows, args.repeat),
        floe_aggregate::AggregateDef::builtin()?,
        floe_schema::Mapping::default(),
    )
    .await?;
    let agg_rate = agg_loaded as f64 / agg_secs;
    // Phase 4: the loader with two computed columns and two rules, the examples of the
    // mapping's documentation (normalizing, scaling; the rules hold for seed events, so the
    // cost measured is evaluating them, not writing dead letters).
    let mapping = floe_schema::Mapping {
        computed: [
            ("country".to_string(), "lower(country)".to_string()),
            ("value".to_string(), "value * 100".to_string()),
        ]
        .into(),
        rules: [
            ("non_negative_value".to_string(), "value >= 0".to_string()),
            (
                "known_country".to_string(),
                "country IS NOT NULL".to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let (map_loaded, map_secs, map_rss) = load_phase(
        &kafka,
        events,
        (args.max_rows, args.repeat),
        Vec::new(),
        mapping,
    )
    .await?;
    let map_rate = map_loaded as f64 / map_secs;

    println!("\n| phase | events | seconds | events/s | MB/s | peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| consume only | {consumed} | {secs:.2} | {consume_rate:.0} | {:.0} | {} |",
        mb / secs,
        bytesize::ByteSize(consume_rss)
    );
    println!(
        "| floe run (decode + Parquet + commit) | {loaded} | {load_secs:.2} | {load_rate:.0} | {:.0} | {} |",
        mb / load_secs,
        bytesize::ByteSize(load_rss)
    );
    println!(
        "| floe run + aggregates (dedup + DataFusion) | {agg_loaded} | {agg_secs:.2} | {agg_rate:.0} | {:.0} | {} |",
        mb / agg_secs,
        bytesize::ByteSize(agg_rss)
    );
    println!(
        "| floe run + 2 computed columns + 2 rules (DataFusion expressions) | {map_loaded} | {map_secs:.2} | {map_rate:.0} | {:.0} | {} |",
        mb / map_secs,
        bytesize::ByteSize(map_rss)
    );
    println!(
        "\nloader / consume-only = {:.2}; aggregates cost {:.0} % and computed columns + rules {:.0} % of loader throughput  (peak RSS includes the in-process broker's copy of the topic)",
        load_rate / consume_rate,
        (1.0 - agg_rate / load_rate) * 100.0,
        (1.0 - map_rate / load_rate) * 100.0
    );
    Ok(())
}

/// The fastest of `repeat` runs of [`load_once`] (and the highest peak RSS).
async fn load_phase(
    kafka: &KafkaConfig,
    events: u64,
    (max_rows, repeat): (u64, u32),
    aggregates: Vec<floe_aggregate::AggregateDef>,
    mapping: floe_schema::Mapping,
) -> Result<(u64, f64, u64)> {
    let mut best: Option<(u64, f64, u64)> = None;
    for _ in 0..repeat.max(1) {
        let (n, secs, rss) =
            load_once(kafka, events, max_rows, aggregates.clone(), mapping.clone()).await?;
        best = Some(match best {
            Some((_, s, r)) if s <= secs => (n, s, r.max(rss)),
            Some((_, _, r)) => (n, secs, r.max(rss)),
            None => (n, secs, rss),
        });
    }
    Ok(best.expect("at least one run"))
}

/// Loads the whole topic into a fresh lake; returns (messages, seconds, peak RSS).
async fn load_once(
    kafka: &KafkaConfig,
    events: u64,
    max_rows: u64,
    aggregates: Vec<floe_aggregate::AggregateDef>,
    mapping: floe_schema::Mapping,
) -> Result<(u64, f64, u64)> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::connect(&CatalogConfig {
        uri: format!("sqlite://{}/catalog.db", dir.path().display()),
        warehouse: format!("{}/warehouse", dir.path().display()),
        name: "floe".into(),
    })
    .await?;
    let definitions = floe_schema::TableDefinition::builtin()?;
    for def in &definitions {
        catalog.create_table(def).await?;
    }
    let opts = RunOptions {
        kafka: kafka.clone(),
        pipelines: vec![PipelineConfig {
            topics: vec!["bench".into()],
            table: "lake.events".into(),
            dead_letter_topic: Some(String::new()),
            flush: FlushConfig {
                max_rows,
                interval: Duration::from_secs(30),
                ..Default::default()
            },
            computed: mapping.computed,
            rules: mapping.rules,
            ..Default::default()
        }],
        until_drained: true,
        static_assignment: true,
        aggregates,
        table_definitions: definitions,
    };
    reset_peak_rss();
    let started = Instant::now();
    let totals = run_to_end(floe_lake::Committer::new(catalog.clone()), opts).await?;
    let secs = started.elapsed().as_secs_f64();
    let rss = peak_rss();
    let loaded: u64 = totals
        .iter()
        .map(|(_, t)| t.accepted + t.dead_lettered)
        .sum();
    anyhow::ensure!(loaded == events, "loaded {loaded} of {events} messages");
    Ok((loaded, secs, rss))
}

//! `floe bench`: in one run on one broker, consume-only throughput versus the full loader
//! (decode, Parquet, commits) on the same topic, the loader with the aggregates, and the
//! loader with two computed columns and two rules, with the CPU time and peak memory of each
//! phase. `--phases` picks phases; `--repeat` runs rounds of them, interleaved: the table
//! shows each phase's fastest round, and a cost is the median over rounds of the phase against
//! the loader in the same round. The aggregates phase also reports the aggregate path's own CPU
//! time per event and stage, counted where that work runs
//! ([`floe_loader::telemetry::aggregate_cpu`]).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use floe_devtools::broker::DevBroker;
use floe_lake::{Catalog, CatalogConfig};
use floe_loader::config::{FlushConfig, KafkaConfig, PipelineConfig};
use floe_loader::source::kafka::{RunOptions, run_to_end};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use floe_devtools::meters::{cpu_seconds, peak_rss, reset_peak_rss};

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
    /// Rounds of the phases, interleaved; costs are the median round's (less noise on a busy
    /// machine).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Phases to run, in order (default: all but soak).
    #[arg(long, value_enum, value_delimiter = ',')]
    phases: Vec<Phase>,
    /// Soak: commits to make.
    #[arg(long, default_value_t = 10_000)]
    soak_commits: u64,
    /// Soak: rows per commit.
    #[arg(long, default_value_t = 10)]
    soak_rows: u64,
    /// Soak: commits between two snapshot expiries.
    #[arg(long, default_value_t = 100)]
    soak_expire_every: u64,
    /// Soak: commits between two compactions (0: none; without compaction the live data
    /// files, and with them the merged manifest and scan planning, grow with every commit).
    #[arg(long, default_value_t = 1000)]
    soak_compact_every: u64,
    /// Soak: keep the lake afterwards (to time other readers' scan planning on it).
    #[arg(long)]
    soak_keep: bool,
}

/// A phase of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Consume only, with the loader's client settings.
    Consume,
    /// `floe run`: decode, Parquet, commits.
    Load,
    /// `floe run` with the aggregates.
    Aggregates,
    /// `floe run` with two computed columns and two rules.
    Mapping,
    /// Many small commits with periodic snapshot expiry: commit latency and scan planning
    /// at the start and at the end (no broker).
    Soak,
}

/// One measured phase.
struct Measured {
    events: u64,
    secs: f64,
    cpu: f64,
    rss: u64,
    /// CPU seconds of the aggregate path, per stage (dedup, query, write).
    aggregate_cpu: [f64; 3],
}

/// [`floe_loader::telemetry::aggregate_cpu`] in seconds.
fn aggregate_cpu() -> [f64; 3] {
    floe_loader::telemetry::aggregate_cpu().map(|d| d.as_secs_f64())
}

pub async fn run_bench(args: BenchArgs) -> Result<()> {
    if args.phases.contains(&Phase::Soak) {
        super::soak::run(super::soak::Soak {
            commits: args.soak_commits.max(2),
            rows: args.soak_rows.max(1),
            expire_every: args.soak_expire_every,
            keep: args.soak_keep,
            compact_every: args.soak_compact_every,
        })
        .await?;
        if args.phases.iter().all(|p| *p == Phase::Soak) {
            return Ok(());
        }
    }
    let events = args.gen_args.events;
    let phases = if args.phases.is_empty() {
        vec![
            Phase::Consume,
            Phase::Load,
            Phase::Aggregates,
            Phase::Mapping,
        ]
    } else {
        args.phases.clone()
    };
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
    // Each round runs every phase once; interleaving the phases spreads a busy spell of the
    // machine over all of them. The table shows each phase's fastest round; the costs compare
    // phases within each round (pairs run back to back) and take the median round.
    let mut rounds = Rounds::default();
    for _ in 0..args.repeat.max(1) {
        rounds.run(&phases, &kafka, &args, partitions).await?;
    }
    rounds.print_table(mb);
    rounds.print_costs();
    rounds.print_aggregate_cpu();
    println!(
        "(CPU s: the whole process, the in-process broker included; peak RSS includes the broker's copy of the topic)"
    );
    Ok(())
}

/// What the rounds measured.
#[derive(Default)]
struct Rounds {
    /// Per phase, its fastest round (with the highest peak memory of all its rounds).
    results: Vec<(Phase, Measured)>,
    /// Per round: events/s of each phase.
    rounds: Vec<Vec<(Phase, f64)>>,
    /// Per round: CPU seconds per event of each phase.
    cpu_rounds: Vec<Vec<(Phase, f64)>>,
    /// Per round of the aggregates phase: the aggregate path's CPU seconds per event, by stage.
    aggregate_rounds: Vec<[f64; 3]>,
}

impl Rounds {
    /// Runs one round: every phase once.
    async fn run(
        &mut self,
        phases: &[Phase],
        kafka: &KafkaConfig,
        args: &BenchArgs,
        partitions: i32,
    ) -> Result<()> {
        let events = args.gen_args.events;
        let mut round = Vec::new();
        let mut cpu_round = Vec::new();
        for &phase in phases {
            let m = match phase {
                Phase::Soak => continue,
                Phase::Consume => consume_phase(kafka, partitions, events).await?,
                Phase::Load => {
                    load_once(kafka, args, Vec::new(), floe_schema::Mapping::default()).await?
                }
                Phase::Aggregates => {
                    let defs = floe_aggregate::AggregateDef::builtin()?;
                    load_once(kafka, args, defs, floe_schema::Mapping::default()).await?
                }
                Phase::Mapping => {
                    let mapping = floe_devtools::mappings::benchmark_mapping();
                    load_once(kafka, args, Vec::new(), mapping).await?
                }
            };
            round.push((phase, m.events as f64 / m.secs));
            cpu_round.push((phase, m.cpu / m.events as f64));
            if phase == Phase::Aggregates {
                self.aggregate_rounds
                    .push(m.aggregate_cpu.map(|s| s / m.events as f64));
            }
            self.keep_best(phase, m);
        }
        self.rounds.push(round);
        self.cpu_rounds.push(cpu_round);
        Ok(())
    }

    /// Keeps `m` as `phase`'s result when it is its fastest round.
    fn keep_best(&mut self, phase: Phase, m: Measured) {
        match self.results.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, best)) => {
                let rss = best.rss.max(m.rss);
                if m.secs < best.secs {
                    *best = m;
                }
                best.rss = rss;
            }
            None => self.results.push((phase, m)),
        }
    }

    /// Each phase's fastest round.
    fn print_table(&self, mb: f64) {
        println!("\n| phase | events | seconds | events/s | MB/s | CPU s | peak RSS |");
        println!("|---|---|---|---|---|---|---|");
        for (phase, m) in &self.results {
            let name = match phase {
                Phase::Consume => "consume only",
                Phase::Load => "floe run (decode + Parquet + commit)",
                Phase::Aggregates => "floe run + aggregates (dedup + DataFusion)",
                Phase::Mapping => {
                    "floe run + 2 computed columns + 2 rules (DataFusion expressions)"
                }
                Phase::Soak => continue,
            };
            println!(
                "| {name} | {} | {:.2} | {:.0} | {:.0} | {:.1} | {} |",
                m.events,
                m.secs,
                m.events as f64 / m.secs,
                mb / m.secs,
                m.cpu,
                bytesize::ByteSize(m.rss)
            );
        }
        println!();
    }

    /// What the aggregates and the mapping cost, against the loader in the same round.
    fn print_costs(&self) {
        if let Some(r) = median_ratio(&self.rounds, Phase::Load, Phase::Consume) {
            println!("loader / consume-only = {r:.2}");
        }
        for (phase, what) in [
            (Phase::Aggregates, "aggregates"),
            (Phase::Mapping, "computed columns + rules"),
        ] {
            let Some(r) = median_ratio(&self.rounds, phase, Phase::Load) else {
                continue;
            };
            let costs: Vec<String> = self
                .rounds
                .iter()
                .filter_map(|round| ratio(round, phase, Phase::Load))
                .map(|r| format!("{:.0}", (1.0 - r) * 100.0))
                .collect();
            println!(
                "{what} cost {:.0} % of loader throughput (median round; rounds: {} %)",
                (1.0 - r) * 100.0,
                costs.join(", ")
            );
            // The same in CPU time per event, which a busy spell of the machine disturbs less.
            if let Some(c) = median_ratio(&self.cpu_rounds, phase, Phase::Load) {
                let costs: Vec<String> = self
                    .cpu_rounds
                    .iter()
                    .filter_map(|round| ratio(round, phase, Phase::Load))
                    .map(|r| format!("{:.0}", (r - 1.0) * 100.0))
                    .collect();
                println!(
                    "{what} add {:.0} % to the loader's CPU time per event (median round; rounds: {} %)",
                    (c - 1.0) * 100.0,
                    costs.join(", ")
                );
            }
        }
    }

    /// The aggregate path's own CPU time (thread CPU of its work, counted where it runs),
    /// which the broker's share and the machine's other load do not blur as much.
    fn print_aggregate_cpu(&self) {
        let sum = |s: &[f64; 3]| s.iter().sum::<f64>();
        let Some(stages) = median_by(self.aggregate_rounds.clone(), sum) else {
            return;
        };
        let total = sum(&stages);
        let ns = |s: f64| s * 1e9;
        let all: Vec<String> = self
            .aggregate_rounds
            .iter()
            .map(|s| format!("{:.0}", ns(sum(s))))
            .collect();
        print!(
            "aggregate path CPU: {:.0} ns per event (dedup {:.0}, queries {:.0}, partial files {:.0}; median round; rounds: {} ns)",
            ns(total),
            ns(stages[0]),
            ns(stages[1]),
            ns(stages[2]),
            all.join(", ")
        );
        let load: Vec<f64> = self
            .cpu_rounds
            .iter()
            .filter_map(|r| r.iter().find(|(p, _)| *p == Phase::Load).map(|(_, c)| *c))
            .collect();
        match median_by(load, |c| *c) {
            Some(l) => println!(
                ", {:.0} % of the loader-only phase's {:.0} ns of process CPU per event",
                total / l * 100.0,
                ns(l)
            ),
            None => println!(),
        }
    }
}

/// Events/s of phase `a` over phase `b` in one round.
fn ratio(round: &[(Phase, f64)], a: Phase, b: Phase) -> Option<f64> {
    let rate = |p: Phase| round.iter().find(|(q, _)| *q == p).map(|(_, r)| *r);
    Some(rate(a)? / rate(b)?)
}

/// The median over rounds of [`ratio`] (the lower middle for an even count).
fn median_ratio(rounds: &[Vec<(Phase, f64)>], a: Phase, b: Phase) -> Option<f64> {
    median_by(
        rounds.iter().filter_map(|r| ratio(r, a, b)).collect(),
        |r| *r,
    )
}

/// The median of `items` by `key` (the lower middle for an even count: for a throughput
/// ratio, the higher cost).
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len().checked_sub(1)? / 2;
    items.into_iter().nth(middle)
}

/// Consumes the whole topic with the loader's client settings.
async fn consume_phase(kafka: &KafkaConfig, partitions: i32, events: u64) -> Result<Measured> {
    reset_peak_rss();
    let cpu = cpu_seconds();
    let aggregate = aggregate_cpu();
    let k = kafka.clone();
    let (consumed, secs) = tokio::task::spawn_blocking(move || -> Result<(u64, f64)> {
        let consumer: BaseConsumer =
            floe_loader::source::kafka::consumer_config(&k, &Default::default())
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
    Ok(Measured {
        events: consumed,
        secs,
        cpu: cpu_seconds() - cpu,
        rss: peak_rss(),
        aggregate_cpu: since(aggregate),
    })
}

/// Loads the whole topic into a fresh lake.
async fn load_once(
    kafka: &KafkaConfig,
    args: &BenchArgs,
    aggregates: Vec<floe_aggregate::AggregateDef>,
    mapping: floe_schema::Mapping,
) -> Result<Measured> {
    let (_dir, catalog) = scratch_lake().await?;
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
                max_rows: args.max_rows,
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
        limits: Default::default(),
    };
    reset_peak_rss();
    let cpu = cpu_seconds();
    let aggregate = aggregate_cpu();
    let started = Instant::now();
    let totals = run_to_end(floe_lake::Committer::new(catalog.clone()), opts).await?;
    let secs = started.elapsed().as_secs_f64();
    let rss = peak_rss();
    let loaded: u64 = totals
        .iter()
        .map(|(_, t)| t.accepted + t.dead_lettered)
        .sum();
    let events = args.gen_args.events;
    anyhow::ensure!(loaded == events, "loaded {loaded} of {events} messages");
    Ok(Measured {
        events: loaded,
        secs,
        cpu: cpu_seconds() - cpu,
        rss,
        aggregate_cpu: since(aggregate),
    })
}

/// The aggregate path's CPU seconds per stage since `before`.
fn since(before: [f64; 3]) -> [f64; 3] {
    let now = aggregate_cpu();
    std::array::from_fn(|i| now[i] - before[i])
}

/// A throwaway SQLite lake (dropped with the directory).
pub async fn scratch_lake() -> Result<(tempfile::TempDir, Catalog)> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::connect(&CatalogConfig {
        uri: format!("sqlite://{}/catalog.db", dir.path().display()),
        warehouse: format!("{}/warehouse", dir.path().display()),
        name: "floe".into(),
        ..Default::default()
    })
    .await?;
    Ok((dir, catalog))
}

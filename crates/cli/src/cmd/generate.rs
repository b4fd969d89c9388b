//! `floe generate`: seed e-commerce events as JSON lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use floe_devtools::generate::{Generator, GeneratorOptions, MessageKind};

/// Generator flags shared by `generate` and `quickstart`.
#[derive(Args, Clone)]
pub struct GenArgs {
    /// Messages to produce.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Fraction of malformed messages (several kinds of bad JSON and types).
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    pub malformed: f64,
    /// Fraction of duplicates (an earlier event sent again).
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    pub duplicates: f64,
    /// Random seed (with --start-ms, the same seed produces the same messages).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event time of the first event, epoch millis (default: six hours ago).
    #[arg(long, value_name = "EPOCH_MS")]
    pub start_ms: Option<i64>,
}

impl GenArgs {
    pub fn generator(&self) -> Result<Generator> {
        for (name, v) in [
            ("--malformed", self.malformed),
            ("--duplicates", self.duplicates),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{name} {v}: expected a ratio between 0 and 1"
            );
        }
        anyhow::ensure!(
            self.malformed + self.duplicates <= 1.0,
            "--malformed + --duplicates exceed 1"
        );
        let defaults = GeneratorOptions::default();
        Ok(Generator::new(GeneratorOptions {
            malformed: self.malformed,
            duplicates: self.duplicates,
            seed: self.seed,
            start_ms: self.start_ms.unwrap_or(defaults.start_ms),
            ..defaults
        }))
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    gen_args: GenArgs,
    /// Write JSON lines to this file (- for stdout) instead of producing to Kafka.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["topic", "brokers"])]
    output: Option<PathBuf>,
    /// Topic to produce to.
    #[arg(long, required_unless_present = "output")]
    topic: Option<String>,
    /// Kafka bootstrap servers (kafka.brokers).
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
}

/// Writes `args.events` messages as JSON lines; returns counts per kind.
pub fn write_lines(
    args: &GenArgs,
    out: &mut impl Write,
) -> Result<std::collections::BTreeMap<MessageKind, u64>> {
    let mut generator = args.generator()?;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..args.events {
        let m = generator.next_message();
        out.write_all(&m.payload)?;
        out.write_all(b"\n")?;
        *counts.entry(m.kind).or_insert(0) += 1;
    }
    out.flush()?;
    Ok(counts)
}

pub fn print_counts(counts: &std::collections::BTreeMap<MessageKind, u64>) {
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{} {n}", k.label()))
        .collect();
    eprintln!("generated: {}", parts.join(", "));
}

pub async fn run(cfg: &crate::config::FloeConfig, args: GenerateArgs) -> Result<()> {
    let Some(output) = &args.output else {
        let mut kafka = cfg.kafka.clone();
        if let Some(b) = &args.brokers {
            kafka.brokers = b.clone();
        }
        let topic = args
            .topic
            .clone()
            .expect("clap requires --topic without --output");
        let report =
            produce_to_kafka(kafka, topic.clone(), args.gen_args.clone(), args.rate).await?;
        print_counts(&report.by_kind);
        println!(
            "produced {} messages ({}) to {topic} in {:.1}s ({:.0} msg/s)",
            report.delivered,
            bytesize::ByteSize(report.bytes),
            report.elapsed.as_secs_f64(),
            report.delivered as f64 / report.elapsed.as_secs_f64().max(1e-9)
        );
        return Ok(());
    };
    let counts = if output.as_os_str() == "-" {
        write_lines(
            &args.gen_args,
            &mut std::io::BufWriter::new(std::io::stdout().lock()),
        )?
    } else {
        let f = std::fs::File::create(output)
            .with_context(|| format!("creating {}", output.display()))?;
        write_lines(
            &args.gen_args,
            &mut std::io::BufWriter::with_capacity(1 << 20, f),
        )?
    };
    print_counts(&counts);
    Ok(())
}

/// Produces generated events to Kafka with a progress bar (on a terminal).
pub async fn produce_to_kafka(
    kafka: floe_loader::config::KafkaConfig,
    topic: String,
    gen_args: GenArgs,
    rate: Option<f64>,
) -> Result<floe_devtools::produce::ProduceReport> {
    let mut generator = gen_args.generator()?;
    let events = gen_args.events;
    tokio::task::spawn_blocking(move || {
        use std::io::IsTerminal;
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(events).with_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} produced")
                    .expect("valid template"),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        let r =
            floe_devtools::produce::produce(&kafka, &topic, &mut generator, events, rate, |n| {
                bar.set_position(n)
            });
        bar.finish_and_clear();
        r
    })
    .await?
    .map_err(anyhow::Error::from)
}

//! `floe generate`: seed e-commerce events as JSON lines.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use floe_loader::generate::{Generator, GeneratorOptions, MessageKind};

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
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
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
        Ok(Generator::new(GeneratorOptions {
            malformed: self.malformed,
            duplicates: self.duplicates,
            seed: self.seed,
            ..Default::default()
        }))
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    gen_args: GenArgs,
    /// Write JSON lines to this file (- for stdout).
    #[arg(long, value_name = "FILE|-")]
    output: PathBuf,
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

pub async fn run(args: GenerateArgs) -> Result<()> {
    let counts = if args.output.as_os_str() == "-" {
        write_lines(
            &args.gen_args,
            &mut std::io::BufWriter::new(std::io::stdout().lock()),
        )?
    } else {
        let f = std::fs::File::create(&args.output)
            .with_context(|| format!("creating {}", args.output.display()))?;
        write_lines(
            &args.gen_args,
            &mut std::io::BufWriter::with_capacity(1 << 20, f),
        )?
    };
    print_counts(&counts);
    Ok(())
}

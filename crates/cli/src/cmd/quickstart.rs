//! `floe quickstart`: the whole pipeline on the embedded default in one command — tables,
//! seed events with malformed ones mixed in, loading, and a report.

use anyhow::Result;
use clap::Args;
use floe_loader::file::{FlushPolicy, load_lines};
use floe_loader::{SinkOptions, TableSink};

use super::generate::{GenArgs, print_counts, write_lines};
use crate::config::FloeConfig;

#[derive(Args)]
pub struct QuickstartArgs {
    #[command(flatten)]
    gen_args: GenArgs,
}

pub async fn run(cfg: &FloeConfig, mut args: QuickstartArgs) -> Result<()> {
    if args.gen_args.malformed == 0.0 {
        args.gen_args.malformed = 0.01;
    }
    let started = std::time::Instant::now();
    let catalog = super::connect(cfg).await?;
    super::table::create_definitions(cfg, &catalog).await?;

    let data_dir = std::path::Path::new(&cfg.catalog.warehouse)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&data_dir)?;
    let input = data_dir.join("quickstart-events.jsonl");
    let counts = write_lines(
        &args.gen_args,
        &mut std::io::BufWriter::new(std::fs::File::create(&input)?),
    )?;
    print_counts(&counts);

    let mut sink = TableSink::open(
        floe_lake::Committer::new(catalog.clone()),
        &SinkOptions::new("lake.events"),
    )
    .await?;
    let policy = FlushPolicy {
        max_rows: 50_000,
        ..Default::default()
    };
    let report = load_lines(
        &mut sink,
        std::io::BufReader::new(std::fs::File::open(&input)?),
        &input.display().to_string(),
        policy,
        |_| {},
    )
    .await?;
    println!(
        "loaded {} messages: {} rows into lake.events, {} dead letters into lake.events_dead_letters ({} commits, {:.1}s)",
        report.lines,
        report.accepted,
        report.dead_lettered,
        report.commits,
        started.elapsed().as_secs_f64()
    );
    super::report::print_report(&catalog).await?;
    println!(
        "\nThe data stays in {}: try `floe query \"SELECT country, count(*) FROM events GROUP BY 1\"`.",
        data_dir.display()
    );
    Ok(())
}

//! `floe load`: JSON lines into a table, exactly once: a file already loaded is skipped, a
//! killed load resumes after its last commit (see `floe_loader::source::lines`).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use floe_loader::source::lines::{
    LoadOptions, LoadReport, LoadSource, file_load_id, load_lines, stream_load_id,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::FloeConfig;

#[derive(Args)]
pub struct LoadArgs {
    /// Target table (namespace.table).
    #[arg(long)]
    table: String,
    /// JSON-lines file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    input: PathBuf,
    /// Commit after this many lines.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_rows: u64,
    /// Commit after this many input bytes (e.g. 256MiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    max_bytes: bytesize::ByteSize,
    /// Dead-letter table (default: <table>_dead_letters, created if missing).
    #[arg(long, value_name = "NAME")]
    dead_letter_table: Option<String>,
    /// Stop at the first rejected line instead of dead-lettering it.
    #[arg(long, conflicts_with = "dead_letter_table")]
    no_dead_letters: bool,
    /// Load the input again even if the table already holds it (a new load).
    #[arg(long)]
    force: bool,
    /// The load's id, instead of the file's content fingerprint (or, for stdin, an id of its
    /// own each run): a load run again with the same id resumes or is skipped.
    #[arg(long, value_name = "ID")]
    load_id: Option<String>,
    /// Longer lines are dead letters `too_large`, never held in memory (e.g. 4MiB; default
    /// limits.max_message_bytes).
    #[arg(long, value_name = "SIZE")]
    max_message_size: Option<bytesize::ByteSize>,
}

pub async fn run(cfg: &FloeConfig, args: LoadArgs) -> Result<()> {
    let committer = super::committer(cfg).await?;
    let opts = load_options(cfg, &args);
    let (reader, name, total) = open_input(&args.input)?;
    let source = LoadSource {
        id: load_id(&args, total)?,
        name,
    };
    let bar = progress_bar(total);
    let started = Instant::now();
    let mut last = Instant::now();
    let shown = bar.clone();
    let show = move |r: &LoadReport| {
        let bar = &shown;
        if last.elapsed() >= Duration::from_millis(100) {
            last = Instant::now();
            bar.set_position(r.input_bytes);
            bar.set_message(format!(
                "{} accepted, {} dead-lettered",
                r.lines - r.dead_letters_by_kind.values().sum::<u64>(),
                r.dead_letters_by_kind.values().sum::<u64>()
            ));
        }
    };
    let report = load_lines(committer, opts.clone(), reader, source.clone(), show).await?;
    bar.finish_and_clear();
    print_report(&opts, &source, &report, started.elapsed());
    Ok(())
}

/// The load's settings: the table's configured pipeline (its mapping, chunk size) under the
/// command's flags; dead letters and flush limits are the command's own.
fn load_options(cfg: &FloeConfig, args: &LoadArgs) -> LoadOptions {
    let mut opts = LoadOptions::new(&args.table);
    if let Some((i, configured)) = cfg.pipeline_for(&args.table) {
        opts.section = format!("pipelines[{i}]");
        opts.pipeline = configured.clone();
    }
    let p = &mut opts.pipeline;
    p.dead_letter_table.clone_from(&args.dead_letter_table);
    p.dead_letters = !args.no_dead_letters;
    p.flush.max_rows = args.max_rows.max(1);
    p.flush.max_bytes = bytesize::ByteSize(args.max_bytes.as_u64().max(1));
    let mut limits = cfg.limits;
    if let Some(size) = args.max_message_size {
        limits.max_message_bytes = size;
    }
    opts.max_message_bytes = limits.max_message_bytes();
    opts
}

/// The input (`-`: stdin), its name for dead letters and messages, and its size if known.
fn open_input(input: &std::path::Path) -> Result<(Box<dyn BufRead + Send>, String, Option<u64>)> {
    if input.as_os_str() == "-" {
        let stdin = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
        return Ok((Box::new(stdin), "stdin".into(), None));
    }
    let f = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let len = f.metadata().ok().map(|m| m.len());
    let abs = std::path::absolute(input).unwrap_or(input.to_path_buf());
    Ok((
        Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
        abs.display().to_string(),
        len,
    ))
}

/// The load's id: `--load-id`, else the file's fingerprint (stdin: an id of its own); with
/// `--force`, a new load of the same input.
fn load_id(args: &LoadArgs, total: Option<u64>) -> Result<String> {
    let stdin = args.input.as_os_str() == "-";
    let id = match &args.load_id {
        Some(id) if id.trim().is_empty() => anyhow::bail!("--load-id must not be empty"),
        Some(id) => id.clone(),
        None if stdin => stream_load_id(),
        None => {
            let bar = progress_bar(total);
            bar.set_message("fingerprinting");
            let id = file_load_id(&args.input, |n| bar.set_position(n))?;
            bar.finish_and_clear();
            id
        }
    };
    Ok(if args.force {
        format!("{id}+{}", stream_load_id())
    } else {
        id
    })
}

/// What the load did: skipped, resumed, loaded (with dead letters by kind), and its commits.
fn print_report(opts: &LoadOptions, source: &LoadSource, report: &LoadReport, took: Duration) {
    let name = &source.name;
    if let Some(status) = report.status.as_ref().filter(|s| s.done) {
        let at = status
            .target
            .as_ref()
            .and_then(|m| chrono::DateTime::from_timestamp_millis(m.at))
            .map(|t| format!(" on {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default();
        println!(
            "skipped {name}: {} already holds it (load {}, finished{at}); --force loads it again",
            opts.pipeline.table, source.id,
        );
        return;
    }
    if let Some(status) = report.status.as_ref().filter(|s| s.resume_at > 1) {
        println!(
            "resumed load {} of {name} at line {}: {} lines before it were committed by an earlier run",
            source.id, status.resume_at, report.skipped,
        );
    }
    let secs = took.as_secs_f64();
    println!(
        "loaded {} into {}: {} lines, {} accepted, {} dead-lettered{}",
        name,
        opts.pipeline.table,
        report.lines,
        report.accepted,
        report.dead_lettered,
        match &opts.pipeline.dead_letter_table() {
            Some(t) if report.dead_lettered > 0 => format!(" (into {t})"),
            _ => String::new(),
        }
    );
    for (kind, n) in &report.dead_letters_by_kind {
        println!("  dead letters {kind}: {n}");
    }
    println!(
        "{} data files ({}), {} commit(s), snapshot {}, {:.1}s ({:.0} lines/s){}",
        report.files,
        bytesize::ByteSize(report.bytes),
        report.commits,
        report
            .snapshot_id
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into()),
        secs,
        report.lines as f64 / secs.max(1e-9),
        if report.unknown_fields > 0 {
            format!(", {} unknown fields ignored", report.unknown_fields)
        } else {
            String::new()
        }
    );
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec} {msg}")
                .expect("valid template"),
        ),
    }
}

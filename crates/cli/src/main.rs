//! The `floe` binary: parses flags, loads config, sets up logging, calls library code.

mod cmd;
mod config;
mod errors;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;

use config::FloeConfig;

/// jemalloc for Rust and (unprefixed) for librdkafka's C allocations: with glibc malloc the
/// broker thread allocating fetched messages and the consumer thread freeing them contended
/// on the arena lock (a sixth of the loader's CPU in futex wake-ups).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// floe: stream JSON events from Kafka into Apache Iceberg tables, exactly once.
#[derive(Parser)]
#[command(name = "floe", version, about, long_about = None)]
struct Cli {
    /// Config file (default: ./floe.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Catalog (catalog.uri): sqlite://floe-data/catalog.db, postgres://…, or https://… an
    /// Iceberg REST catalog.
    #[arg(long, global = true, value_name = "URI")]
    catalog_uri: Option<String>,
    /// Warehouse (catalog.warehouse): a folder or s3://bucket/prefix; on REST the catalog's
    /// warehouse name.
    #[arg(long, global = true, value_name = "PATH")]
    warehouse: Option<String>,
    /// Log format: plain or json (log.format).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Print the effective configuration (file, environment and flags applied; secrets
    /// hidden) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on the embedded default: tables, seed events, loading, a report.
    Quickstart(cmd::quickstart::QuickstartArgs),
    /// Load Kafka topics into tables continuously, exactly once.
    Run(cmd::run::RunArgs),
    /// Produce seed e-commerce events to a topic (or write them as JSON lines).
    Generate(cmd::generate::GenerateArgs),
    /// Measure consume-only versus full loader throughput on an in-process broker.
    Bench(cmd::bench::BenchArgs),
    /// A Kafka-protocol broker for local use (librdkafka's mock cluster).
    DevBroker(cmd::dev_broker::DevBrokerArgs),
    /// Create, list and inspect tables.
    #[command(subcommand)]
    Table(cmd::table::TableCommand),
    /// Load JSON lines from a file or stdin into a table.
    Load(cmd::load::LoadArgs),
    /// Run SQL (DataFusion) over every table of the catalog.
    Query(cmd::query::QueryArgs),
    /// Maintenance: compaction, retention, snapshot expiry, orphan removal (cron-friendly).
    Maintain(cmd::maintain::MaintainArgs),
    /// Dead letters: replay them after a fix.
    #[command(subcommand)]
    Dlq(cmd::dlq::DlqCommand),
}

fn overrides(cli: &Cli) -> Figment {
    let mut f = Figment::new();
    if let Some(v) = &cli.catalog_uri {
        f = f.merge(Serialized::default("catalog.uri", v));
    }
    if let Some(v) = &cli.warehouse {
        f = f.merge(Serialized::default("catalog.warehouse", v));
    }
    if let Some(v) = &cli.log_format {
        f = f.merge(Serialized::default("log.format", v));
    }
    f
}

fn init_logging(cfg: &config::LogConfig) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", cfg.level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(errors::Redacting(std::io::stderr));
    match cfg.format.as_str() {
        "json" => builder.json().init(),
        "plain" => builder.init(),
        other => anyhow::bail!("log.format {other:?}: expected plain or json"),
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    if cli.print_default_config {
        print!("{}", FloeConfig::default_toml());
        return Ok(());
    }
    let cfg = FloeConfig::load(cli.config.as_deref(), overrides(&cli))?;
    errors::set_storage(&cfg.catalog);
    if cli.print_config {
        print!("{}", cfg.redacted_toml());
        return Ok(());
    }
    init_logging(&cfg.log)?;
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(())
        }
        Some(Command::Quickstart(a)) => cmd::quickstart::run_quickstart(&cfg, a).await,
        Some(Command::Run(a)) => cmd::run::execute(&cfg, a).await,
        Some(Command::Generate(a)) => cmd::generate::run(&cfg, a).await,
        Some(Command::Bench(a)) => cmd::bench::run_bench(a).await,
        Some(Command::DevBroker(a)) => cmd::dev_broker::run(a).await,
        Some(Command::Table(c)) => cmd::table::run(&cfg, c).await,
        Some(Command::Load(a)) => cmd::load::run(&cfg, a).await,
        Some(Command::Query(a)) => cmd::query::run(&cfg, a).await,
        Some(Command::Dlq(c)) => cmd::dlq::run(&cfg, c).await,
        Some(Command::Maintain(a)) => cmd::maintain::run(&cfg, a).await,
    }
}

fn main() -> ExitCode {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Errors from the storage layer (opendal) capture a backtrace whenever RUST_BACKTRACE
        // is set and print it with their message: 50 lines in every warning of an S3 outage.
        // Panics keep theirs (RUST_BACKTRACE); errors do not.
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // Crash, race and retry tests arm floe's failpoints through the environment.
    if let Ok(spec) = std::env::var("FLOE_FAILPOINTS") {
        floe_lake::fail::arm(&spec);
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Secrets a message may quote (a catalog URI, a setting) are masked.
            eprintln!("error: {}", errors::report(&e));
            ExitCode::FAILURE
        }
    }
}

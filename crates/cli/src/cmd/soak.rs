//! `floe bench --phases soak`: months of small commits in minutes. Appends `--soak-commits`
//! batches of `--soak-rows` events to `lake.events` (built-in definition) in a throwaway
//! SQLite lake, each with Kafka offsets as the loader commits them, and compacts every
//! `--soak-compact-every` and expires snapshots every `--soak-expire-every` commits as a
//! maintenance cron would (newest 10 kept). Reports
//! the commit latency (p50, p99) and the table's scan planning time at the start and at the
//! end, with the metadata the table then has: if any of it grows with the number of commits,
//! it shows here.

use std::time::{Duration, Instant};

use anyhow::Result;
use floe_lake::commit::CommitRequest;
use floe_lake::{Catalog, Committer, DataWriter, OffsetRange};
use floe_maintenance::compact::Compact;
use floe_maintenance::expire::ExpireSnapshots;
use futures::TryStreamExt;

/// Soak settings.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    /// Commits.
    pub commits: u64,
    /// Rows per commit.
    pub rows: u64,
    /// Commits between two snapshot expiries.
    pub expire_every: u64,
    /// Commits between two compactions (0: none).
    pub compact_every: u64,
    /// Keep the lake (for other readers' planning times).
    pub keep: bool,
}

/// Commits measured at each end.
const WINDOW: usize = 1000;

/// Runs the soak and prints its report.
pub async fn run(s: Soak) -> Result<()> {
    let keep = s.keep;
    let (dir, catalog) = super::bench::scratch_lake().await?;
    let def = floe_schema::TableDefinition::builtin()?
        .into_iter()
        .find(|d| d.full_name() == "lake.events")
        .expect("built-in lake.events");
    catalog.create_table(&def).await?;
    let ident = floe_lake::parse_table_ident("lake.events")?;
    let committer = Committer::new(catalog.clone());
    let window = WINDOW.min((s.commits / 2).max(1) as usize);
    println!(
        "soak: {} commits of {} rows, snapshot expiry every {} commits (newest 10 kept), compaction every {}…",
        s.commits, s.rows, s.expire_every, s.compact_every
    );
    let mut latencies: Vec<Duration> = Vec::with_capacity(s.commits as usize);
    let mut planning_start = None;
    let started = Instant::now();
    for c in 0..s.commits {
        latencies.push(append(&s, c, &committer, &ident).await?);
        maintain(&s, c, &committer).await?;
        if c + 1 == window as u64 {
            planning_start = Some(plan_time(&catalog, &ident).await?);
        }
        if (c + 1) % 1000 == 0 {
            println!(
                "  {} commits, {:.0} s",
                c + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let planning = (
        planning_start.unwrap_or_default(),
        plan_time(&catalog, &ident).await?,
    );
    print_results(&latencies, window, planning);
    print_table(&catalog, &ident).await?;
    if keep {
        println!(
            "lake kept: catalog sqlite://{0}/catalog.db, warehouse {0}/warehouse",
            dir.keep().display()
        );
    }
    Ok(())
}

/// Commit `c`: `s.rows` events appended with their offsets; how long the commit took.
async fn append(
    s: &Soak,
    c: u64,
    committer: &Committer,
    ident: &iceberg::TableIdent,
) -> Result<Duration> {
    let catalog = committer.catalog();
    let base_us = 1_767_225_600_000_000i64; // 2026-01-01
    let (_, meta) = catalog.load_metadata(ident).await?;
    let mut decoder = floe_schema::Decoder::new(
        meta.current_schema(),
        &floe_schema::DecoderOptions::default(),
    )?;
    for r in 0..s.rows {
        let n = c * s.rows + r;
        // One hour of events per 1,000 commits: partitions fill as a day's would.
        let us = base_us + (n as i64) * 3_600_000_000 / s.rows as i64 / 1000;
        let ts = chrono::DateTime::from_timestamp_micros(us)
            .expect("in range")
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let line = format!(
            r#"{{"event_guid":"{n:016x}","event_ts":"{ts}","user_id":"u{}","action":"view","country":"NL","device_type":"mobile","page":"/p","category":"c","value":1.5}}"#,
            n % 997
        );
        decoder
            .decode(line.as_bytes(), &floe_schema::RecordMeta::default())
            .map_err(|e| anyhow::anyhow!("soak event: {e}"))?;
    }
    let mut writer = DataWriter::new(catalog.file_io(), &meta)?;
    writer.write(&decoder.finish()).await?;
    let files = writer.close().await?;
    let req = CommitRequest::append(files).with_offsets(
        "soak",
        vec![OffsetRange {
            topic: "events".into(),
            partition: 0,
            first: (c * s.rows) as i64,
            next: ((c + 1) * s.rows) as i64,
        }],
    );
    let t = Instant::now();
    committer.commit(ident, req).await?;
    Ok(t.elapsed())
}

/// The maintenance a cron would run after commit `c`: compaction and snapshot expiry.
async fn maintain(s: &Soak, c: u64, committer: &Committer) -> Result<()> {
    if s.compact_every > 0 && (c + 1).is_multiple_of(s.compact_every) {
        Compact::new("lake.events").execute(committer).await?;
    }
    if (c + 1).is_multiple_of(s.expire_every.max(1)) {
        ExpireSnapshots::new("lake.events")
            .older_than(Duration::ZERO)
            .retain_last(10)
            .execute(committer)
            .await?;
    }
    Ok(())
}

/// Commit latency and scan planning over the first and the last `window` commits.
fn print_results(latencies: &[Duration], window: usize, planning: (Duration, Duration)) {
    let first = &latencies[..window];
    let last = &latencies[latencies.len() - window..];
    println!("\n| | first {window} commits | last {window} commits |");
    println!("|---|---|---|");
    println!(
        "| commit p50 | {:.1} ms | {:.1} ms |",
        ms(pct(first, 50)),
        ms(pct(last, 50))
    );
    println!(
        "| commit p99 | {:.1} ms | {:.1} ms |",
        ms(pct(first, 99)),
        ms(pct(last, 99))
    );
    let w200 = 200.min(latencies.len() / 2).max(1);
    println!(
        "| commit mean, first / last {w200} | {:.1} ms | {:.1} ms |",
        ms(mean(&latencies[..w200])),
        ms(mean(&latencies[latencies.len() - w200..]))
    );
    println!(
        "| scan planning (iceberg-rust, floe query) | {:.1} ms | {:.1} ms |",
        ms(planning.0),
        ms(planning.1)
    );
}

/// The metadata the table ends with.
async fn print_table(catalog: &Catalog, ident: &iceberg::TableIdent) -> Result<()> {
    let (location, meta) = catalog.load_metadata(ident).await?;
    let manifests = manifest_count(catalog, &meta).await?;
    let metadata_bytes = std::fs::metadata(location.trim_start_matches("file://"))?.len();
    let metadata_files = std::fs::read_dir(format!(
        "{}/metadata",
        meta.location().trim_start_matches("file://")
    ))?
    .count();
    println!(
        "\nat the end: {manifests} manifests in the current snapshot, {} snapshots, metadata.json {} bytes, {metadata_files} files in metadata/, {} rows",
        meta.snapshots().count(),
        metadata_bytes,
        meta.current_snapshot()
            .and_then(|s| s
                .summary()
                .additional_properties
                .get("total-records")
                .cloned())
            .unwrap_or_default()
    );
    println!("table metadata: {location}");
    Ok(())
}

/// Time to plan a full scan of the table (every data file task).
async fn plan_time(catalog: &Catalog, ident: &iceberg::TableIdent) -> Result<Duration> {
    let table = catalog.load_table(ident).await?;
    let t = Instant::now();
    let tasks: Vec<_> = table
        .scan()
        .select_all()
        .build()?
        .plan_files()
        .await?
        .try_collect()
        .await?;
    let d = t.elapsed();
    anyhow::ensure!(!tasks.is_empty(), "the soak table planned no file");
    Ok(d)
}

async fn manifest_count(catalog: &Catalog, meta: &iceberg::spec::TableMetadata) -> Result<usize> {
    Ok(floe_lake::scan::current_manifests(catalog.file_io(), meta)
        .await?
        .len())
}

fn pct(v: &[Duration], p: usize) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) * p / 100).min(s.len() - 1)]
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len().max(1) as u32
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

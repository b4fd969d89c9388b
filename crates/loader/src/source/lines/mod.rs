//! `floe load`: JSON lines from a file or stdin into a table, one commit per flush.
//!
//! Blank lines are skipped. Each line is one message; its 1-based line number stands in for
//! the Kafka offset in dead letters (`source_offset`), the source is `file:<path>` and the
//! load's id is kept with it (`source_load`).
//!
//! The lines go through the same pipeline as `floe run`'s messages (decode, transform,
//! write, commit, dead letters): only the source differs.
//!
//! A load is exactly once ([`floe_lake::loads`]): every commit records how far the load got,
//! with its data, in the table and the dead-letter table. Run again, a load skips the lines
//! both tables hold (a finished one reads nothing), and a load killed mid-way resumes after
//! its last commit.

mod reader;

use std::io::BufRead;
use std::time::Duration;

use floe_lake::loads::{LoadMark, load_mark};
use floe_lake::{Committer, parse_table_ident};
use floe_schema::{RecordMeta, TableDefinition};
use iceberg::spec::TableMetadata;
use tokio::runtime::Handle;

use crate::batch::Tp;
use crate::commit::{Flushed, LoadProgress, Mark, Marks};
use crate::config::{LimitsConfig, PipelineConfig};
use crate::error::FlushError;
use crate::pipeline::{Payload, Pipe, PipelineTotals, Setup};
use crate::{Error, Result};

pub use reader::{Line, LineReader};

/// How a load runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The target table and how it is loaded: `table`, the dead letters (`dead_letters`,
    /// `dead_letter_table`), the mapping, and `flush.max_rows`, `flush.max_bytes` (a batch
    /// is committed once it holds this many lines or payload bytes) and `flush.chunk_rows`.
    /// Topics, aggregates and the dead-letter topic do not apply to a load.
    pub pipeline: PipelineConfig,
    /// Where `pipeline` is configured, for error messages (`pipelines[0]`).
    pub section: String,
    /// A longer line is a dead letter `too_large` (`limits.max_message_bytes`).
    pub max_message_bytes: usize,
    /// Re-read the table's metadata at the start of a batch when it is older than this, so
    /// schema changes made by other tools apply from the next batch on.
    pub refresh_interval: Duration,
}

impl LoadOptions {
    /// Options for `table`, with dead letters in `<table>_dead_letters`.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            pipeline: PipelineConfig {
                table: table.into(),
                ..PipelineConfig::default()
            },
            section: "pipeline".into(),
            max_message_bytes: LimitsConfig::default().max_message_bytes(),
            refresh_interval: Duration::from_secs(5),
        }
    }
}

/// Where a load stands in its tables when it starts.
#[derive(Debug, Clone)]
pub struct LoadStatus {
    /// The target table's mark of the load.
    pub target: Option<LoadMark>,
    /// The dead-letter table's mark (`None` also without a dead-letter table).
    pub dead_letters: Option<LoadMark>,
    /// Lines before this one are in both tables: reading resumes here (1 for a new load).
    pub resume_at: i64,
    /// Both tables hold the whole load: nothing to do.
    pub done: bool,
}

/// Totals of a load.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Non-blank lines read.
    pub lines: u64,
    /// Rows committed.
    pub accepted: u64,
    /// Lines dead-lettered.
    pub dead_lettered: u64,
    /// Data files committed.
    pub files: usize,
    /// Bytes of data files committed.
    pub bytes: u64,
    /// Input bytes read.
    pub input_bytes: u64,
    /// Commits made to the target table.
    pub commits: u32,
    /// The last snapshot committed to the target table.
    pub snapshot_id: Option<i64>,
    /// Unknown JSON fields skipped.
    pub unknown_fields: u64,
    /// Rejected lines by error kind.
    pub dead_letters_by_kind: std::collections::BTreeMap<String, u64>,
    /// Where the load stood in the tables when this run began.
    pub status: Option<LoadStatus>,
    /// Lines skipped because the tables hold them from an earlier run of the load.
    pub skipped: u64,
}

impl LoadReport {
    fn add_flush(&mut self, f: &Flushed) {
        self.accepted += f.rows;
        self.dead_lettered += f.dead_letters;
        self.files += f.files;
        self.bytes += f.bytes;
        if f.snapshot_id.is_some() {
            self.commits += 1;
            self.snapshot_id = f.snapshot_id;
        }
    }

    /// Takes the pipeline's running counts: lines skipped, and rejected by kind.
    fn count(&mut self, totals: &PipelineTotals) {
        self.skipped = totals.already_committed + totals.rechecked;
        let rejected: u64 = totals.rejected.values().sum();
        if rejected != self.dead_letters_by_kind.values().sum::<u64>() {
            self.dead_letters_by_kind = totals
                .rejected
                .iter()
                .map(|(kind, n)| ((*kind).to_string(), *n))
                .collect();
        }
    }
}

/// One load: what is read, and the id its progress is recorded under.
#[derive(Debug, Clone)]
pub struct LoadSource {
    /// The load's id: a file's content fingerprint, a stream's own id
    /// ([`floe_lake::loads`]).
    pub id: String,
    /// Where the lines come from (an absolute path, `stdin`), for dead letters and messages.
    pub name: String,
}

/// Loads JSON lines from `input` into the table of `opts` as load `source`, resuming after
/// what earlier runs of the load committed. The lines go through the same pipeline as
/// `floe run`'s messages (decode, transform, write, commit), on a blocking thread;
/// `progress` is called after every line with the running report (cheap; throttle display
/// in the caller). The first failure stops the load: what it committed stays, and a run
/// again resumes after it.
pub async fn load_lines(
    committer: Committer,
    opts: LoadOptions,
    input: impl BufRead + Send + 'static,
    source: LoadSource,
    progress: impl FnMut(&LoadReport) + Send + 'static,
) -> Result<LoadReport> {
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || load(&committer, &rt, &opts, input, &source, progress))
        .await
        .map_err(|e| Error::Internal(format!("load thread: {e}")))?
}

/// [`load_lines`], on the blocking thread.
fn load(
    committer: &Committer,
    rt: &Handle,
    opts: &LoadOptions,
    input: impl BufRead,
    source: &LoadSource,
    progress: impl FnMut(&LoadReport),
) -> Result<LoadReport> {
    let (status, load) = rt.block_on(begin(committer, &opts.pipeline, source))?;
    let mut report = LoadReport {
        status: Some(status.clone()),
        ..LoadReport::default()
    };
    if status.done {
        return Ok(report);
    }
    let marks = Marks::Load(load.clone());
    let setup = Setup {
        committer,
        rt,
        marks: &marks,
        max_message_bytes: opts.max_message_bytes,
        aggregates: &[],
        table_definitions: &[],
        producer: None,
    };
    let (mut pipe, writer) = Pipe::start(&opts.pipeline, &opts.section, &setup)?;
    let tp: Tp = (format!("file:{}", source.name), 0);
    pipe.resume_load(&tp, &load);
    let mut lines = Lines {
        pipe: &mut pipe,
        committer,
        rt,
        tp,
        opts,
        report: &mut report,
    };
    let read = lines.read(input, &source.name, progress);
    if read.is_err() {
        pipe.discard();
    }
    drop(pipe); // closes the writer task's channel
    let _ = rt.block_on(writer);
    read.map(|()| report)
}

/// The lines source: reads lines into a pipeline, committing batches as they fill.
struct Lines<'a> {
    pipe: &'a mut Pipe,
    committer: &'a Committer,
    rt: &'a Handle,
    /// The load's source and "partition": line numbers stand in for offsets.
    tp: Tp,
    opts: &'a LoadOptions,
    report: &'a mut LoadReport,
}

impl Lines<'_> {
    /// Reads every line of `input` (named `name`) into the pipeline; the last commit records
    /// the load as done (also when it adds no rows).
    fn read(
        &mut self,
        input: impl BufRead,
        name: &str,
        mut progress: impl FnMut(&LoadReport),
    ) -> Result<()> {
        let mut lines = LineReader::new(input, self.opts.max_message_bytes);
        let mut line_no: i64 = 0;
        loop {
            let line = lines.next_line().map_err(|source| Error::Io {
                context: format!("reading {name}"),
                source,
            })?;
            let Some(line) = line else {
                break;
            };
            // A full batch is committed once another line follows, so the last one commits
            // together with the load's end instead of leaving that to a commit of its own.
            if self.pipe.full() {
                self.flush(Mark {
                    next: line_no + 1,
                    done: false,
                })?;
            }
            line_no += 1;
            self.report.input_bytes += line.read;
            let mut bytes = line.bytes;
            while let [rest @ .., b'\r' | b'\n'] = bytes {
                bytes = rest;
            }
            if !line.is_truncated() && bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.report.lines += 1;
            let payload = Payload {
                bytes,
                size: if line.is_truncated() {
                    line.size
                } else {
                    bytes.len() as u64
                },
            };
            self.process(line_no, payload)?;
            self.report.count(&self.pipe.totals);
            progress(self.report);
        }
        self.flush(Mark {
            next: line_no + 1,
            done: true,
        })?;
        self.report.count(&self.pipe.totals);
        progress(self.report);
        Ok(())
    }

    /// Line `line_no` into the pipeline, the table's metadata re-read first when a batch
    /// starts and it is older than `refresh_interval`.
    fn process(&mut self, line_no: i64, payload: Payload<'_>) -> Result<()> {
        if self.pipe.batch.messages == 0
            && self.pipe.last_refresh.elapsed() >= self.opts.refresh_interval
        {
            self.pipe.reload(self.committer, self.rt)?;
        }
        let meta = RecordMeta {
            topic: &self.tp.0,
            partition: None,
            offset: Some(line_no),
            timestamp_ms: None,
            key: None,
            ingested_at_us: chrono::Utc::now().timestamp_micros(),
        };
        self.pipe
            .process(&self.tp, line_no, Some(payload), &meta, Vec::new)
    }

    /// Commits the batch, recording that the load got to `to`, and waits for the commit.
    fn flush(&mut self, to: Mark) -> Result<()> {
        if !self.pipe.start_load_flush(to) {
            return Err(self
                .pipe
                .stop
                .take()
                .unwrap_or_else(|| Error::Internal("a load's flush is in flight".into())));
        }
        let outcome = self.pipe.outcomes.recv();
        self.pipe.in_flight = None;
        let outcome = outcome.map_err(|_| Error::Internal("the writer task stopped".into()))?;
        match outcome.result {
            Ok(f) => {
                self.report.add_flush(&f);
                // Before the decoder is rebuilt for the table after the commit.
                self.report.unknown_fields += self.pipe.take_unknown_fields();
                self.pipe.committed(f);
                Ok(())
            }
            Err(FlushError::Fenced(e)) => Err(e.into()),
            Err(FlushError::Failed(e)) => Err(e),
        }
    }
}

/// Reads where load `source` stands in the table of `cfg` and its dead-letter table (created
/// when missing).
async fn begin(
    committer: &Committer,
    cfg: &PipelineConfig,
    source: &LoadSource,
) -> Result<(LoadStatus, LoadProgress)> {
    let ident = parse_table_ident(&cfg.table)?;
    let (_, metadata) = committer.catalog().load_metadata(&ident).await?;
    floe_lake::compat::check_metadata(&ident.to_string(), &metadata)?;
    let target = load_mark(&metadata, &source.id)?;
    let (dead_letters, dead) = match cfg.dead_letter_table() {
        None => (None, Mark::ALL),
        Some(name) => {
            let mark = load_mark(&dead_letter_table(committer, &name).await?, &source.id)?;
            let at = Mark::of(mark.as_ref());
            (mark, at)
        }
    };
    let load = LoadProgress {
        id: source.id.clone(),
        source: source.name.clone(),
        target: Mark::of(target.as_ref()),
        dead,
    };
    let status = LoadStatus {
        target,
        dead_letters,
        resume_at: load.target.next.min(load.dead.next),
        done: load.target.done && load.dead.done,
    };
    Ok((status, load))
}

/// The metadata of a load's dead-letter table `name`, created when missing. One created before
/// floe 0.2 gets the column loads are told apart by, `source_load`.
async fn dead_letter_table(committer: &Committer, name: &str) -> Result<TableMetadata> {
    let def = TableDefinition::dead_letter(name)?;
    let catalog = committer.catalog();
    let (table, _) = catalog.create_table_if_missing(&def).await?;
    let metadata = table.metadata().clone();
    if metadata
        .current_schema()
        .field_by_name("source_load")
        .is_some()
    {
        return Ok(metadata);
    }
    let ident = parse_table_ident(name)?;
    let add = floe_lake::evolve::Change::parse_add("source_load:string", false)?;
    floe_lake::evolve::evolve(committer, &ident, &[add], false).await?;
    tracing::info!(table = %name, "added column source_load to the dead-letter table");
    Ok(catalog.load_metadata(&ident).await?.1)
}

/// The id of a file's load: `sha256:<hex>` of its content, so the same content is the same
/// load under any path, and a changed file at the same path is a new load. Reads the file
/// once; `progress` gets the bytes hashed so far.
pub fn file_load_id(path: &std::path::Path, mut progress: impl FnMut(u64)) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let io = |source| Error::Io {
        context: format!("reading {} to fingerprint it", path.display()),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        progress(total);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// The id of a load that cannot be fingerprinted (stdin): unique to this run.
pub fn stream_load_id() -> String {
    format!("stream:{}", uuid::Uuid::now_v7())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_id_follows_the_content_not_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(&a, "{\"id\":1}\n").unwrap();
        std::fs::write(&b, "{\"id\":1}\n").unwrap();
        let id = file_load_id(&a, |_| {}).unwrap();
        assert_eq!(id, file_load_id(&b, |_| {}).unwrap());
        assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
        std::fs::write(&a, "{\"id\":2}\n").unwrap();
        assert_ne!(id, file_load_id(&a, |_| {}).unwrap());
        assert_ne!(stream_load_id(), stream_load_id());
    }
}

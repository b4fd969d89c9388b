//! `floe load`: JSON lines from a file or stdin into a table, one commit per flush.
//!
//! Blank lines are skipped. Each line is one message; its 1-based line number stands in for
//! the Kafka offset in dead letters (`source_offset`), the source is `file:<path>` and the
//! load's id is kept with it (`source_load`).
//!
//! A load is exactly once ([`floe_lake::loads`]): every commit records how far the load got,
//! with its data, in the table and the dead-letter table. Run again, a load skips the lines
//! both tables hold (a finished one reads nothing), and a load killed mid-way resumes after
//! its last commit.

mod reader;

use std::io::BufRead;

use floe_schema::RecordMeta;

use crate::sink::{FlushReport, LinePush, LoadStatus, TableSink};
use crate::{Error, Result};

pub use reader::{Line, LineReader};

/// When to flush.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Flush after this many messages (accepted + rejected).
    pub max_rows: u64,
    /// Flush after this many payload bytes.
    pub max_bytes: u64,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
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
    /// Dead letters by error kind.
    pub dead_letters_by_kind: std::collections::BTreeMap<String, u64>,
    /// Where the load stood in the tables when this run began.
    pub status: Option<LoadStatus>,
    /// Lines skipped because the tables hold them from an earlier run of the load.
    pub skipped: u64,
}

impl LoadReport {
    /// Counts the rows the sink's computed columns and rules rejected since the last call.
    fn count_rejected(&mut self, sink: &mut TableSink) {
        for kind in sink.take_rejected() {
            *self
                .dead_letters_by_kind
                .entry(kind.to_string())
                .or_default() += 1;
        }
    }

    fn add_flush(&mut self, f: &FlushReport) {
        self.accepted += f.rows;
        self.dead_lettered += f.dead_letters;
        self.files += f.files;
        self.bytes += f.bytes;
        if f.snapshot_id.is_some() {
            self.commits += 1;
            self.snapshot_id = f.snapshot_id;
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

/// Loads JSON lines from `input` into the sink's table as load `source`, resuming after what
/// earlier runs of the load committed. `progress` is called after every line with the
/// running report (cheap; throttle display in the caller).
pub async fn load_lines(
    sink: &mut TableSink,
    input: impl BufRead,
    source: &LoadSource,
    policy: FlushPolicy,
    mut progress: impl FnMut(&LoadReport),
) -> Result<LoadReport> {
    let topic = format!("file:{}", source.name);
    let mut report = LoadReport::default();
    let status = sink.begin_load(&source.id, &source.name).await?;
    let done = status.done;
    report.status = Some(status);
    if done {
        return Ok(report);
    }
    let mut lines = LineReader::new(input, sink.max_message_bytes());
    let mut line_no: i64 = 0;
    let mut in_batch: u64 = 0;
    loop {
        let line = lines.next_line().map_err(|source_err| Error::Io {
            context: format!("reading {}", source.name),
            source: source_err,
        })?;
        let Some(line) = line else {
            break;
        };
        // A full batch is committed once another line follows, so the last one commits
        // together with the load's end instead of leaving that to a commit of its own.
        if in_batch >= policy.max_rows || sink.pending_bytes() >= policy.max_bytes {
            let f = sink.flush_load(line_no + 1, false).await?;
            report.add_flush(&f);
            in_batch = 0;
        }
        line_no += 1;
        report.input_bytes += line.read;
        let mut payload = line.bytes;
        while let Some((&last, rest)) = payload.split_last() {
            if last == b'\n' || last == b'\r' {
                payload = rest;
            } else {
                break;
            }
        }
        if !line.is_truncated() && payload.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.lines += 1;
        let meta = RecordMeta {
            topic: &topic,
            partition: None,
            offset: Some(line_no),
            timestamp_ms: None,
            key: None,
            ingested_at_us: chrono::Utc::now().timestamp_micros(),
        };
        match sink
            .push_line(payload, line.is_truncated().then_some(line.size), &meta)
            .await?
        {
            LinePush::Skipped | LinePush::AlreadyLoaded => {
                report.skipped += 1;
                continue;
            }
            LinePush::Accepted => {}
            LinePush::DeadLettered(err) => {
                *report
                    .dead_letters_by_kind
                    .entry(err.kind.as_str().to_string())
                    .or_default() += 1;
            }
        }
        in_batch += 1;
        report.count_rejected(sink);
        progress(&report);
    }
    // The last commit records the load as done (also when it adds no rows).
    let f = sink.flush_load(line_no + 1, true).await?;
    report.add_flush(&f);
    report.count_rejected(sink);
    report.unknown_fields = sink.take_unknown_fields();
    progress(&report);
    Ok(report)
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

//! `floe load`: JSON lines from a file or stdin into a table, one commit per flush.
//!
//! Blank lines are skipped. Each line is one message; its 1-based line number stands in for
//! the Kafka offset in dead letters (`source_offset`) and the source is `file:<path>`.

use std::io::BufRead;

use floe_schema::RecordMeta;

use crate::lines::LineReader;

use crate::sink::{FlushReport, TableSink};
use crate::{Error, Result};

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

/// Loads JSON lines from `input` into the sink's table. `progress` is called after every
/// line with the running report (cheap; throttle display in the caller).
pub async fn load_lines(
    sink: &mut TableSink,
    input: impl BufRead,
    source_name: &str,
    policy: FlushPolicy,
    mut progress: impl FnMut(&LoadReport),
) -> Result<LoadReport> {
    let topic = format!("file:{source_name}");
    let mut report = LoadReport::default();
    let mut lines = LineReader::new(input, sink.max_message_bytes());
    let mut line_no: i64 = 0;
    let mut in_batch: u64 = 0;
    loop {
        let line = lines.next_line().map_err(|source| Error::Io {
            context: format!("reading {source_name}"),
            source,
        })?;
        let Some(line) = line else {
            break;
        };
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
        let pushed = if line.is_truncated() {
            sink.push_too_large(payload, line.size, &meta).await?
        } else {
            sink.push(payload, &meta).await?
        };
        if let Some(err) = pushed {
            *report
                .dead_letters_by_kind
                .entry(err.kind.as_str().to_string())
                .or_default() += 1;
        }
        in_batch += 1;
        if in_batch >= policy.max_rows || sink.pending_bytes() >= policy.max_bytes {
            let f = sink.flush(None).await?;
            report.add_flush(&f);
            in_batch = 0;
        }
        report.count_rejected(sink);
        progress(&report);
    }
    if in_batch > 0 {
        let f = sink.flush(None).await?;
        report.add_flush(&f);
    }
    report.count_rejected(sink);
    report.unknown_fields = sink.take_unknown_fields();
    progress(&report);
    Ok(report)
}

//! `floe load` is exactly once: a load that failed mid-way and is run again commits each line
//! once, rows and dead letters alike, and a finished load run again reads nothing.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use common::{catalog_with_table, scan};
use floe_lake::loads::load_mark;
use floe_lake::{Catalog, Committer, parse_table_ident};
use floe_loader::source::lines::{LoadOptions, LoadReport, LoadSource, load_lines};

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"}]},
  "properties": {"floe.unknown-fields": "reject"}
}"#;

/// Line `i` (1-based): a row with id `i`, every 7th a dead letter, every 11th blank.
fn input(lines: i64) -> String {
    (1..=lines)
        .map(|i| match i {
            i if i % 11 == 0 => String::new(),
            i if i % 7 == 0 => format!(r#"{{"id":{i},"bad":true}}"#),
            i => format!(r#"{{"id":{i}}}"#),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads `data`, failing (like a disk error or a kill) once `fail_at` bytes were read.
struct FailingReader {
    data: std::io::Cursor<Vec<u8>>,
    fail_at: u64,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.data.position() >= self.fail_at {
            return Err(std::io::Error::other("injected read failure"));
        }
        let room = (self.fail_at - self.data.position()) as usize;
        let n = buf.len().min(room);
        self.data.read(&mut buf[..n])
    }
}

fn source() -> LoadSource {
    LoadSource {
        id: "sha256:test".into(),
        name: "/data/in.jsonl".into(),
    }
}

async fn run_load(
    committer: &Committer,
    input: impl BufRead + Send + 'static,
    max_rows: u64,
) -> floe_loader::Result<LoadReport> {
    let mut opts = LoadOptions::new("lake.t");
    opts.pipeline.flush.max_rows = max_rows;
    opts.pipeline.flush.max_bytes = bytesize::ByteSize(u64::MAX);
    load_lines(committer.clone(), opts, input, source(), |_| {}).await
}

/// id → times loaded, and line → times dead-lettered.
async fn contents(catalog: &Catalog) -> (BTreeMap<i64, u32>, BTreeMap<i64, u32>) {
    let mut rows = BTreeMap::new();
    for b in scan(catalog, "lake.t").await {
        let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            *rows.entry(ids.value(i)).or_default() += 1;
        }
    }
    let mut dead = BTreeMap::new();
    for b in scan(catalog, "lake.t_dead_letters").await {
        let lines = b
            .column_by_name("source_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        let loads = b.column_by_name("source_load").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            assert_eq!(loads.value(i), "sha256:test");
            *dead.entry(lines.value(i)).or_default() += 1;
        }
    }
    (rows, dead)
}

fn expected(lines: i64) -> (BTreeMap<i64, u32>, BTreeMap<i64, u32>) {
    let rows = (1..=lines)
        .filter(|i| i % 11 != 0 && i % 7 != 0)
        .map(|i| (i, 1))
        .collect();
    let dead = (1..=lines)
        .filter(|i| i % 11 != 0 && i % 7 == 0)
        .map(|i| (i, 1))
        .collect();
    (rows, dead)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_that_failed_mid_way_resumes_and_commits_each_line_once() {
    const LINES: i64 = 400;
    let data = input(LINES).into_bytes();
    // Fail at several points: inside the first batch, mid-way, inside the last batch.
    for fail_at in [100u64, data.len() as u64 / 2, data.len() as u64 - 5] {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_table(dir.path(), DEF).await;
        let committer = Committer::new(catalog.clone());
        let failing = std::io::BufReader::with_capacity(
            64,
            FailingReader {
                data: std::io::Cursor::new(data.clone()),
                fail_at,
            },
        );
        let err = run_load(&committer, failing, 30).await.unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");

        let report = run_load(&committer, std::io::Cursor::new(data.clone()), 30)
            .await
            .unwrap();
        let status = report.status.as_ref().unwrap();
        assert!(!status.done);
        assert_eq!(
            contents(&catalog).await,
            expected(LINES),
            "failed at byte {fail_at}, resumed at line {}",
            status.resume_at
        );
        let meta = catalog
            .load_metadata(&parse_table_ident("lake.t").unwrap())
            .await
            .unwrap()
            .1;
        let mark = load_mark(&meta, "sha256:test").unwrap().unwrap();
        assert!(mark.done && mark.next == LINES + 1, "{mark:?}");

        // Run a third time: skipped without reading, nothing new committed.
        let snapshots = meta.snapshots().count();
        let report = run_load(&committer, &b"{\"id\":100000}\n"[..], 30)
            .await
            .unwrap();
        assert!(report.status.unwrap().done);
        assert_eq!(report.lines, 0);
        assert_eq!(contents(&catalog).await, expected(LINES));
        let meta = catalog
            .load_metadata(&parse_table_ident("lake.t").unwrap())
            .await
            .unwrap()
            .1;
        assert_eq!(meta.snapshots().count(), snapshots);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_commit_lost_after_its_rows_is_made_up_on_the_next_run() {
    // The rows of a flush committed, its dead letters did not (a crash between the two
    // commits): the next run loads no row twice and commits the missing dead letters.
    const LINES: i64 = 60;
    let data = input(LINES).into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_with_table(dir.path(), DEF).await;
    let committer = Committer::new(catalog.clone());
    {
        // Only the target table's mark and rows of lines 1..=30: those lines loaded without
        // a dead-letter table, the dead letters among them left out.
        let first: Vec<&str> = std::str::from_utf8(&data)
            .unwrap()
            .lines()
            .take(30)
            .map(|line| if line.contains("bad") { "" } else { line })
            .collect();
        let mut opts = LoadOptions::new("lake.t");
        opts.pipeline.dead_letters = false;
        let input = std::io::Cursor::new(first.join("\n").into_bytes());
        let f = load_lines(committer.clone(), opts, input, source(), |_| {})
            .await
            .unwrap();
        assert!(f.accepted > 0);
    }
    let report = run_load(&committer, std::io::Cursor::new(data.clone()), 1000)
        .await
        .unwrap();
    assert_eq!(report.status.as_ref().unwrap().resume_at, 1);
    assert_eq!(contents(&catalog).await, expected(LINES));
}

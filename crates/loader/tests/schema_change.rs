//! A column added to the table by another tool is decoded from the next batch on, without
//! restarting the load.

mod common;

use std::io::{BufRead, Read};

use common::{add_column, catalog_with_table};
use floe_lake::Committer;
use floe_loader::source::lines::{LoadOptions, LoadSource, load_lines};

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"}]}
}"#;

/// An input serving one line per read, that runs `before_second` when the second line is
/// first asked for (the load has read the first one, and not yet committed it).
struct Input {
    lines: Vec<Vec<u8>>,
    at: usize,
    pos: usize,
    before_second: Option<Box<dyn FnOnce() + Send>>,
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Input {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == 1
            && let Some(hook) = self.before_second.take()
        {
            hook();
        }
        Ok(self.lines.get(self.at).map_or(&[][..], |l| &l[self.pos..]))
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.lines.get(self.at).is_some_and(|l| self.pos >= l.len()) {
            self.at += 1;
            self.pos = 0;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_in_the_catalog_is_filled_from_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_with_table(dir.path(), DEF).await;
    let mut opts = LoadOptions::new("lake.t");
    opts.refresh_interval = std::time::Duration::ZERO;
    opts.pipeline.flush.max_rows = 1;
    let rt = tokio::runtime::Handle::current();
    let cat = catalog.clone();
    let input = Input {
        lines: [
            r#"{"id":1,"discount":0.5}"#,
            r#"{"id":2,"discount":0.25}"#,
            r#"{"id":3}"#,
        ]
        .iter()
        .map(|l| format!("{l}\n").into_bytes())
        .collect(),
        at: 0,
        pos: 0,
        before_second: Some(Box::new(move || {
            rt.block_on(add_column(&cat, "lake.t", "discount"));
        })),
    };
    let source = LoadSource {
        id: "schema-change".into(),
        name: "input.jsonl".into(),
    };
    let report = load_lines(Committer::new(catalog.clone()), opts, input, source, |_| {})
        .await
        .unwrap();
    assert_eq!(report.lines, 3);
    assert_eq!(
        report.unknown_fields, 1,
        "discount is not a column for the first line only"
    );

    let batches = common::scan(&catalog, "lake.t").await;
    let mut rows: Vec<(i64, Option<f64>)> = Vec::new();
    for b in batches {
        let ids = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .clone();
        let d = b
            .column_by_name("discount")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            use arrow_array::Array;
            rows.push((ids.value(i), (!d.is_null(i)).then(|| d.value(i))));
        }
    }
    rows.sort_by_key(|r| r.0);
    assert_eq!(rows, vec![(1, None), (2, Some(0.25)), (3, None)]);
}

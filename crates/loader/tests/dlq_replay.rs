//! `floe dlq replay`: dead letters rejected for a column the table lacked load once the column
//! is added — once, even when replays race or one died between its two commits.

mod common;

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use common::{add_column, catalog_with_table, scan};
use floe_lake::commit::CommitRequest;
use floe_lake::{Catalog, Committer, DataWriter, PositionSet, parse_table_ident};
use floe_loader::replay::{ReplayOptions, replay};
use floe_loader::source::lines::{LoadOptions, LoadSource, load_lines};
use floe_schema::{Decoder, DecoderOptions, RecordMeta};

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"}]},
  "properties": {"floe.unknown-fields": "reject"}
}"#;

const SOURCE: &str = "file:input.jsonl";
/// The load id `setup` loads under.
const LOAD: &str = "load-1";

/// Loads `lines` from "input.jsonl" as load `id`; (accepted, dead-lettered).
async fn load(committer: &Committer, id: &str, lines: &[&str]) -> (u64, u64) {
    let report = load_lines(
        committer.clone(),
        LoadOptions::new("lake.t"),
        std::io::Cursor::new(lines.join("\n").into_bytes()),
        LoadSource {
            id: id.into(),
            name: "input.jsonl".into(),
        },
        |_| {},
    )
    .await
    .unwrap();
    (report.accepted, report.dead_lettered)
}

/// id → discount, of every row of the table.
async fn rows(catalog: &Catalog) -> BTreeMap<i64, Option<f64>> {
    let mut out = BTreeMap::new();
    for b in scan(catalog, "lake.t").await {
        let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let discount = b
            .column_by_name("discount")
            .map(|c| c.as_primitive::<Float64Type>().clone());
        for i in 0..b.num_rows() {
            let d = discount
                .as_ref()
                .and_then(|d| d.is_valid(i).then(|| d.value(i)));
            assert!(
                out.insert(ids.value(i), d).is_none(),
                "id {} loaded twice",
                ids.value(i)
            );
        }
    }
    out
}

/// (line, error kind) of every dead letter.
async fn dead_letters(catalog: &Catalog) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let batches: Vec<RecordBatch> = scan(catalog, "lake.t_dead_letters").await;
    for b in batches {
        let offsets = b
            .column_by_name("source_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        let kinds = b.column_by_name("error_kind").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push((offsets.value(i), kinds.value(i).to_string()));
        }
    }
    out.sort();
    out
}

async fn setup(dir: &std::path::Path) -> (Catalog, Committer) {
    let catalog = catalog_with_table(dir, DEF).await;
    let committer = Committer::new(catalog.clone());
    let input = [
        r#"{"id":1}"#,
        r#"{"id":2}"#,
        r#"{"id":3,"discount":0.5}"#,
        r#"{"id":4}"#,
        r#"{"id":5}"#,
        r#"{"id":6,"discount":0.25}"#,
        r#"{"id":7}"#,
        r#"{"id":8"#,
        r#"{"id":9,"tag":1.5}"#,
        r#"{"id":10}"#,
    ];
    assert_eq!(load(&committer, LOAD, &input).await, (6, 4));
    (catalog, committer)
}

fn unknown_fields() -> ReplayOptions {
    let mut opts = ReplayOptions::new("lake.t");
    opts.filter = Some("error_kind = 'unknown_field'".into());
    opts
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_load_once_after_the_column_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committer) = setup(dir.path()).await;
    let before = dead_letters(&catalog).await;
    assert_eq!(
        before,
        vec![
            (3, "unknown_field".into()),
            (6, "unknown_field".into()),
            (8, "malformed_json".into()),
            (9, "unknown_field".into()),
        ]
    );

    // Before the fix nothing decodes; a dry run says so and changes nothing.
    let mut dry = ReplayOptions::new("lake.t");
    dry.dry_run = true;
    let r = replay(&committer, &dry).await.unwrap();
    assert_eq!((r.selected, r.replayed), (4, 0));
    assert_eq!(r.still_failing["unknown_field"], 3);
    assert_eq!(r.still_failing["malformed_json"], 1);

    add_column(&catalog, "lake.t", "discount").await;
    let r = replay(&committer, &dry).await.unwrap();
    assert_eq!(r.replayed, 2);
    assert_eq!(rows(&catalog).await.len(), 6, "a dry run loads nothing");
    assert_eq!(dead_letters(&catalog).await, before);

    // The filter selects the unknown-field letters; two now load, the third stays.
    let r = replay(&committer, &unknown_fields()).await.unwrap();
    assert_eq!((r.selected, r.replayed, r.removed_dead_letters), (3, 2, 2));
    assert_eq!(r.still_failing.get("unknown_field"), Some(&1));
    let table = rows(&catalog).await;
    assert_eq!(table.len(), 8);
    assert_eq!(table[&3], Some(0.5));
    assert_eq!(table[&6], Some(0.25));
    assert_eq!(table[&1], None);
    assert_eq!(
        dead_letters(&catalog).await,
        vec![(8, "malformed_json".into()), (9, "unknown_field".into())]
    );

    // Again: nothing left to do, no new snapshot.
    let snapshots = |c: &Catalog| {
        let c = c.clone();
        async move {
            c.load_metadata(&parse_table_ident("lake.t").unwrap())
                .await
                .unwrap()
                .1
                .snapshots()
                .count()
        }
    };
    let n = snapshots(&catalog).await;
    let r = replay(&committer, &unknown_fields()).await.unwrap();
    assert_eq!((r.selected, r.replayed, r.removed_dead_letters), (1, 0, 0));
    assert_eq!(snapshots(&catalog).await, n);

    // A bad filter names itself.
    let mut bad = ReplayOptions::new("lake.t");
    bad.filter = Some("no_such_column = 1".into());
    let err = replay(&committer, &bad).await.unwrap_err().to_string();
    assert!(
        err.contains("--where") && err.contains("no_such_column"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_that_died_before_its_clean_up_is_finished_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committer) = setup(dir.path()).await;
    add_column(&catalog, "lake.t", "tag").await;

    // What a replay that died after its table commit left: line 9 loaded and marked applied,
    // still in the dead letters.
    let ident = parse_table_ident("lake.t").unwrap();
    let (_, meta) = catalog.load_metadata(&ident).await.unwrap();
    let mut decoder = Decoder::new(
        meta.current_schema(),
        &DecoderOptions::from_table_properties(meta.properties()),
    )
    .unwrap();
    let source = RecordMeta {
        topic: SOURCE,
        offset: Some(9),
        ..Default::default()
    };
    decoder.decode(br#"{"id":9,"tag":1.5}"#, &source).unwrap();
    let mut writer = DataWriter::new(catalog.file_io(), &meta).unwrap();
    writer.write(&decoder.finish()).await.unwrap();
    let mut applied = PositionSet::new();
    applied.insert(&format!("{SOURCE}@{LOAD}"), -1, 9);
    committer
        .commit(
            &ident,
            CommitRequest::append(writer.close().await.unwrap())
                .with_applied("lake.t_dead_letters", applied),
        )
        .await
        .unwrap();

    let r = replay(&committer, &unknown_fields()).await.unwrap();
    assert_eq!((r.selected, r.already_replayed, r.replayed), (3, 1, 0));
    assert_eq!(r.removed_dead_letters, 1);
    assert_eq!(rows(&catalog).await.len(), 7, "line 9 is in the table once");
    assert_eq!(dead_letters(&catalog).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_replays_load_each_dead_letter_once() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committer) = setup(dir.path()).await;
    add_column(&catalog, "lake.t", "discount").await;
    add_column(&catalog, "lake.t", "tag").await;
    let opts = unknown_fields();
    let (a, b, c) = tokio::join!(
        replay(&committer, &opts),
        replay(&committer, &opts),
        replay(&committer, &opts)
    );
    let loaded: u64 = [&a, &b, &c]
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.replayed)
        .sum();
    for r in [&a, &b, &c] {
        if let Err(e) = r {
            assert!(e.to_string().contains("run the replay again"), "{e}");
        }
    }
    assert_eq!(loaded, 3, "one replay loaded the three letters");
    // Whatever the interleaving, the table holds each row once (rows() asserts it) and a
    // final replay leaves only the malformed line.
    replay(&committer, &opts).await.unwrap();
    assert_eq!(rows(&catalog).await.len(), 9);
    assert_eq!(
        dead_letters(&catalog).await,
        vec![(8, "malformed_json".into())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_of_two_loads_from_one_path_are_replayed_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committer) = setup(dir.path()).await;
    // A second, different file at the same path, rejected at the same line numbers (3, 6) as
    // the first load's dead letters; the first load is skipped when run again.
    assert_eq!(load(&committer, LOAD, &[r#"{"id":99}"#]).await, (0, 0));
    let second = [
        r#"{"id":11}"#,
        r#"{"id":12}"#,
        r#"{"id":13,"discount":0.75}"#,
        r#"{"id":14}"#,
        r#"{"id":15}"#,
        r#"{"id":16,"discount":0.125}"#,
    ];
    assert_eq!(load(&committer, "load-2", &second).await, (4, 2));
    add_column(&catalog, "lake.t", "discount").await;

    let r = replay(&committer, &ReplayOptions::new("lake.t"))
        .await
        .unwrap();
    assert_eq!((r.selected, r.replayed), (6, 4), "{r:?}");
    let rows = rows(&catalog).await;
    let discounts: Vec<(i64, f64)> = rows
        .iter()
        .filter_map(|(id, d)| d.map(|d| (*id, d)))
        .collect();
    assert_eq!(
        discounts,
        vec![(3, 0.5), (6, 0.25), (13, 0.75), (16, 0.125)],
        "every dead letter of both loads is loaded"
    );
    assert_eq!(
        dead_letters(&catalog).await,
        vec![(8, "malformed_json".into()), (9, "unknown_field".into())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn where_is_one_boolean_expression_over_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, committer) = setup(dir.path()).await;
    add_column(&catalog, "lake.t", "discount").await;
    for (text, why) in [
        ("1=1) OR (1=1", "unbalanced"),
        (
            "error_kind = 'x'; DROP TABLE dead_letters",
            "two statements",
        ),
        ("error_kind = 'x' UNION SELECT 1", "a union"),
        ("(SELECT count(*) FROM dead_letters) > 0", "a subquery"),
        ("count(*) > 0", "an aggregate"),
        ("row_number() OVER () > 1", "a window"),
        ("error_kind", "not boolean"),
        ("source_offset + 1", "not boolean"),
        ("no_such_column = 1", "unknown column"),
        ("", "empty"),
    ] {
        let mut opts = ReplayOptions::new("lake.t");
        opts.filter = Some(text.into());
        let err = replay(&committer, &opts)
            .await
            .expect_err(&format!("{text:?} ({why}) must be refused"))
            .to_string();
        assert!(err.contains("--where"), "{text:?}: {err}");
    }
    assert_eq!(rows(&catalog).await.len(), 6, "nothing was replayed");

    // A real filter still selects.
    let mut opts = ReplayOptions::new("lake.t");
    opts.filter = Some("error_kind = 'unknown_field' AND source_offset < 4".into());
    let r = replay(&committer, &opts).await.unwrap();
    assert_eq!((r.selected, r.replayed), (1, 1), "{r:?}");
}

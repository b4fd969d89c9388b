//! The commit protocol against a real SQLite catalog and local warehouse.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow_array::{Array, Int64Array};
use floe_lake::commit::{Change, CommitRequest};
use floe_lake::{
    Catalog, CatalogConfig, Committer, DataWriter, Error, OffsetRange, committed_offsets,
};
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};
use iceberg::TableIdent;
use iceberg::spec::DataFile;

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"},
    {"id": 2, "name": "p", "required": true, "type": "int"},
    {"id": 3, "name": "ts", "required": true, "type": "timestamptz"}]},
  "partition-spec": {"fields": [{"source-id": 2, "field-id": 1000, "name": "p", "transform": "identity"}]},
  "properties": {"write.parquet.compression-codec": "zstd"}
}"#;

struct Lake {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    committer: Committer,
    ident: TableIdent,
}

async fn lake() -> Lake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let cfg = CatalogConfig {
        uri: format!("sqlite://{}/catalog.db", root.display()),
        warehouse: format!("{}/warehouse", root.display()),
        name: "floe".into(),
    };
    let catalog = Catalog::connect(&cfg).await.unwrap();
    let def = TableDefinition::from_json(DEF, Some("lake.t"), "test").unwrap();
    catalog.create_table(&def).await.unwrap();
    Lake {
        _dir: dir,
        root,
        committer: Committer::new(catalog),
        ident: floe_lake::parse_table_ident("lake.t").unwrap(),
    }
}

/// Writes rows `ids` (partition `p`) as data files of the table's current schema.
async fn files(lake: &Lake, p: i32, ids: impl Iterator<Item = i64>) -> Vec<DataFile> {
    let catalog = lake.committer.catalog();
    let (_, meta) = catalog.load_metadata(&lake.ident).await.unwrap();
    let mut dec = Decoder::new(meta.current_schema(), &DecoderOptions::default()).unwrap();
    for id in ids {
        let json = format!(
            r#"{{"id":{id},"p":{p},"ts":{}}}"#,
            1_700_000_000_000i64 + id
        );
        dec.decode(json.as_bytes(), &RecordMeta::default()).unwrap();
    }
    let mut w = DataWriter::new(catalog.file_io(), &meta).unwrap();
    w.write(&dec.finish()).await.unwrap();
    w.close().await.unwrap()
}

async fn ids(lake: &Lake) -> Vec<i64> {
    let mut out = Vec::new();
    for b in floe_testkit::scan(lake.committer.catalog(), "lake.t").await {
        let a = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        out.extend((0..a.len()).map(|i| a.value(i)));
    }
    out.sort();
    out
}

/// Commits `files` as an append covering `range(p, first, next)` for group `g`.
async fn append_with_offsets(lake: &Lake, files: Vec<DataFile>, range: OffsetRange) {
    lake.committer
        .commit(
            &lake.ident,
            CommitRequest::append(files).with_offsets("g", vec![range]),
        )
        .await
        .unwrap();
}

fn request(change: Change) -> CommitRequest {
    CommitRequest {
        applied: None,
        change,
        offsets: None,
        properties: Default::default(),
    }
}

fn range(p: i32, first: i64, next: i64) -> OffsetRange {
    OffsetRange {
        topic: "events".into(),
        partition: p,
        first,
        next,
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(format!("file://{}", p.display()));
        }
    }
}

/// Every file under the table folder must be referenced by the metadata: data files by live
/// manifest entries, manifests and manifest lists by snapshots, metadata.json by the log.
async fn assert_no_orphans(lake: &Lake) {
    let catalog = lake.committer.catalog();
    let (location, meta) = catalog.load_metadata(&lake.ident).await.unwrap();
    let mut referenced: HashSet<String> = HashSet::new();
    referenced.insert(location.clone());
    for m in meta.metadata_log() {
        referenced.insert(m.metadata_file.clone());
    }
    let table = catalog.load_table(&lake.ident).await.unwrap();
    for snap in meta.snapshots() {
        referenced.insert(snap.manifest_list().to_string());
        let list = table.manifest_list_reader(snap).load().await.unwrap();
        for mf in list.entries() {
            referenced.insert(mf.manifest_path.clone());
            let manifest = mf.load_manifest(catalog.file_io()).await.unwrap();
            for e in manifest.entries() {
                referenced.insert(e.file_path().to_string());
            }
        }
    }
    let mut on_disk = Vec::new();
    walk(&lake.root.join("warehouse/lake/t"), &mut on_disk);
    let orphans: Vec<_> = on_disk
        .iter()
        .filter(|p| !referenced.contains(*p))
        .collect();
    assert!(orphans.is_empty(), "unreferenced files: {orphans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_land_exactly_once_with_merged_offsets() {
    let lake = Arc::new(lake().await);
    let writers = 4;
    let commits = 12;
    let rows = 10i64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let lake = lake.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for c in 0..commits {
                let first = (w as i64 * 1_000_000) + c as i64 * rows;
                let files = files(&lake, w, first..first + rows).await;
                let req = CommitRequest::append(files)
                    .with_offsets("g", vec![range(w, c as i64 * rows, (c as i64 + 1) * rows)]);
                let done = lake.committer.commit(&lake.ident, req).await.unwrap();
                retries += done.attempts - 1;
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    let got = ids(&lake).await;
    let expected: Vec<i64> = (0..writers)
        .flat_map(|w| (0..commits as i64 * rows).map(move |i| w as i64 * 1_000_000 + i))
        .collect();
    assert_eq!(got, expected, "every row exactly once");
    let (_, meta) = lake
        .committer
        .catalog()
        .load_metadata(&lake.ident)
        .await
        .unwrap();
    let offsets = committed_offsets(&meta, "g").unwrap();
    for w in 0..writers {
        assert_eq!(offsets["events"][&w], commits as i64 * rows);
    }
    // Offsets are monotone along the snapshot chain.
    let mut snap = meta.current_snapshot().cloned();
    let mut last: Option<std::collections::BTreeMap<i32, i64>> = None;
    while let Some(s) = snap {
        let o: floe_lake::Offsets =
            serde_json::from_str(&s.summary().additional_properties["floe.offsets.g"]).unwrap();
        let cur = o.get("events").cloned().unwrap_or_default();
        if let Some(newer) = &last {
            for (p, v) in &cur {
                assert!(newer[p] >= *v, "offsets went backwards");
            }
        }
        last = Some(cur);
        snap = s
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id).cloned());
    }
    assert_eq!(meta.snapshots().len(), writers as usize * commits);
    eprintln!("lost races retried: {retries}");
    assert_no_orphans(&lake).await;
}

#[tokio::test]
async fn overlapping_offsets_are_refused_and_their_files_deleted() {
    let lake = lake().await;
    let f = files(&lake, 0, 0..5).await;
    append_with_offsets(&lake, f, range(0, 0, 5)).await;
    // A writer that lost the partition replays offsets 3..8: refused, files gone.
    let stale = files(&lake, 0, 3..8).await;
    let paths: Vec<String> = stale.iter().map(|f| f.file_path().to_string()).collect();
    let err = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::append(stale).with_offsets("g", vec![range(0, 3, 8)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::OffsetsAlreadyCommitted {
                committed: 5,
                batch_first: 3,
                ..
            }
        ),
        "{err}"
    );
    for p in paths {
        assert!(
            !std::path::Path::new(p.trim_start_matches("file://")).exists(),
            "{p} left behind"
        );
    }
    // Another group's offsets are independent; a gap after the committed offset is allowed.
    let f = files(&lake, 0, 100..101).await;
    lake.committer
        .commit(
            &lake.ident,
            CommitRequest::append(f).with_offsets("other", vec![range(0, 0, 1)]),
        )
        .await
        .unwrap();
    let f = files(&lake, 0, 200..201).await;
    append_with_offsets(&lake, f, range(0, 9, 10)).await;
    assert_eq!(ids(&lake).await, vec![0, 1, 2, 3, 4, 100, 200]);
    assert_no_orphans(&lake).await;
}

#[tokio::test]
async fn offsets_are_found_past_snapshots_that_carry_none() {
    let lake = lake().await;
    let f = files(&lake, 1, 0..3).await;
    append_with_offsets(&lake, f, range(1, 0, 3)).await;
    for i in 0..3 {
        let f = files(&lake, 2, 10 + i..11 + i).await;
        lake.committer
            .commit(&lake.ident, CommitRequest::append(f))
            .await
            .unwrap();
    }
    let (_, meta) = lake
        .committer
        .catalog()
        .load_metadata(&lake.ident)
        .await
        .unwrap();
    assert_eq!(committed_offsets(&meta, "g").unwrap()["events"][&1], 3);
    assert!(committed_offsets(&meta, "nobody").unwrap().is_empty());
}

#[tokio::test]
async fn replace_swaps_files_and_refuses_sources_that_vanished() {
    let lake = lake().await;
    let mut old = Vec::new();
    for i in 0..3 {
        let f = files(&lake, 0, i * 10..i * 10 + 10).await;
        old.extend(f.clone());
        append_with_offsets(&lake, f, range(0, i * 10, i * 10 + 10)).await;
    }
    let before = ids(&lake).await;
    let compacted = files(&lake, 0, 0..30).await;
    let done = lake
        .committer
        .commit(
            &lake.ident,
            request(Change::Replace {
                removed: old.clone(),
                added: compacted,
            }),
        )
        .await
        .unwrap();
    assert_eq!(ids(&lake).await, before);
    let summary = &done.metadata.current_snapshot().unwrap().summary();
    assert_eq!(summary.operation.as_str(), "replace");
    assert_eq!(summary.additional_properties["total-data-files"], "1");
    assert_eq!(summary.additional_properties["total-records"], "30");
    // Offsets are still found through the replace snapshot.
    assert_eq!(
        committed_offsets(&done.metadata, "g").unwrap()["events"][&0],
        30
    );

    // A second compaction of the same (now removed) files fails and cleans up after itself.
    let again = files(&lake, 0, 0..30).await;
    let again_paths: Vec<String> = again.iter().map(|f| f.file_path().to_string()).collect();
    let err = lake
        .committer
        .commit(
            &lake.ident,
            request(Change::Replace {
                removed: old[..1].to_vec(),
                added: again,
            }),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FilesGone { count: 1, .. }), "{err}");
    for p in again_paths {
        assert!(!std::path::Path::new(p.trim_start_matches("file://")).exists());
    }
    assert_eq!(ids(&lake).await, before);
}

#[tokio::test]
async fn delete_removes_whole_files_and_keeps_the_rest() {
    let lake = lake().await;
    let a = files(&lake, 0, 0..5).await;
    let b = files(&lake, 1, 5..10).await;
    lake.committer
        .commit(&lake.ident, CommitRequest::append([a.clone(), b].concat()))
        .await
        .unwrap();
    let done = lake
        .committer
        .commit(&lake.ident, request(Change::Delete(a)))
        .await
        .unwrap();
    assert_eq!(ids(&lake).await, (5..10).collect::<Vec<_>>());
    let props = &done
        .metadata
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(props["total-records"], "5");
    assert_eq!(props["deleted-records"], "5");
    let remaining: BTreeSet<_> = ids(&lake).await.into_iter().collect();
    assert_eq!(remaining.len(), 5);
}

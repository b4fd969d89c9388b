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
        ..Default::default()
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
    CommitRequest::new(change)
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
    // Each snapshot's summary names the offsets it committed: together they tile every
    // partition exactly, with no overlap and no gap.
    let mut covered: std::collections::BTreeMap<i32, Vec<(i64, i64)>> = Default::default();
    for s in meta.snapshots() {
        let ranges: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<i32, (i64, i64)>,
        > = serde_json::from_str(&s.summary().additional_properties["floe.committed.g"]).unwrap();
        for (p, r) in &ranges["events"] {
            covered.entry(*p).or_default().push(*r);
        }
    }
    for (p, mut rs) in covered {
        rs.sort();
        let mut next = 0;
        for (first, end) in rs {
            assert_eq!(first, next, "partition {p}: gap or overlap at {first}");
            next = end;
        }
        assert_eq!(next, commits as i64 * rows);
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

/// The manifests of the current snapshot.
async fn current_manifests(lake: &Lake) -> Vec<iceberg::spec::ManifestFile> {
    let catalog = lake.committer.catalog();
    let (_, meta) = catalog.load_metadata(&lake.ident).await.unwrap();
    let bytes = catalog
        .file_io()
        .new_input(meta.current_snapshot().unwrap().manifest_list())
        .unwrap()
        .read()
        .await
        .unwrap();
    iceberg::spec::ManifestList::parse_with_version(&bytes, meta.format_version())
        .unwrap()
        .consume_entries()
        .into_iter()
        .collect()
}

async fn set_properties(lake: &Lake, props: &[(&str, &str)]) {
    let props: std::collections::HashMap<String, String> = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    lake.committer
        .update_metadata(&lake.ident, |loc, m| {
            Ok(Some(
                m.clone()
                    .into_builder(Some(loc.to_string()))
                    .set_properties(props.clone())?
                    .build()?,
            ))
        })
        .await
        .unwrap();
}

async fn metadata(lake: &Lake) -> iceberg::spec::TableMetadata {
    lake.committer
        .catalog()
        .load_metadata(&lake.ident)
        .await
        .unwrap()
        .1
}

#[tokio::test]
async fn offsets_are_a_table_property_and_an_offsets_only_commit_adds_no_snapshot() {
    let lake = lake().await;
    let f = files(&lake, 0, 0..3).await;
    append_with_offsets(&lake, f, range(0, 0, 3)).await;
    let meta = metadata(&lake).await;
    assert_eq!(meta.properties()["floe.offsets.g"], r#"{"events":{"0":3}}"#);
    let snapshots = meta.snapshots().len();
    let done = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::append(Vec::new()).with_offsets("g", vec![range(0, 3, 9)]),
        )
        .await
        .unwrap();
    assert_eq!(done.snapshot_id, None);
    let meta = metadata(&lake).await;
    assert_eq!(
        meta.snapshots().len(),
        snapshots,
        "no snapshot for offsets only"
    );
    assert_eq!(committed_offsets(&meta, "g").unwrap()["events"][&0], 9);
    // Nothing new: nothing written at all.
    let same = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::append(Vec::new()).with_offsets("g", vec![]),
        )
        .await
        .unwrap();
    assert_eq!(same.metadata_location, done.metadata_location);
}

#[tokio::test]
async fn offsets_survive_expiry_of_every_floe_snapshot_and_a_rollback() {
    let lake = lake().await;
    let f = files(&lake, 0, 0..5).await;
    append_with_offsets(&lake, f, range(0, 0, 5)).await;
    let floe_snapshot = metadata(&lake).await.current_snapshot_id().unwrap();
    let f = files(&lake, 0, 5..10).await;
    append_with_offsets(&lake, f, range(0, 5, 10)).await;
    // Another engine appends twice (no floe state in its summaries), then expires every
    // snapshot but its own newest, as `expire_snapshots(retain_last => 1)` does.
    for i in 0..2 {
        let f = files(&lake, 1, 100 + i..101 + i).await;
        lake.committer
            .commit(&lake.ident, CommitRequest::append(f))
            .await
            .unwrap();
    }
    lake.committer
        .update_metadata(&lake.ident, |loc, m| {
            let old: Vec<i64> = m
                .snapshots()
                .map(|s| s.snapshot_id())
                .filter(|id| Some(*id) != m.current_snapshot_id())
                .collect();
            Ok(Some(
                m.clone()
                    .into_builder(Some(loc.to_string()))
                    .remove_snapshots(&old)
                    .build()?,
            ))
        })
        .await
        .unwrap();
    let meta = metadata(&lake).await;
    assert_eq!(meta.snapshots().len(), 1);
    assert_eq!(committed_offsets(&meta, "g").unwrap()["events"][&0], 10);
    // A batch overlapping what is committed is still refused.
    let f = files(&lake, 0, 7..12).await;
    let err = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::append(f).with_offsets("g", vec![range(0, 7, 12)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::OffsetsAlreadyCommitted { committed: 10, .. }),
        "{err}"
    );

    // A rollback does not take the offsets back (another lake, same story up to a rollback).
    let lake = self::lake().await;
    let f = files(&lake, 0, 0..5).await;
    append_with_offsets(&lake, f, range(0, 0, 5)).await;
    let first = metadata(&lake).await.current_snapshot_id().unwrap();
    let f = files(&lake, 0, 5..10).await;
    append_with_offsets(&lake, f, range(0, 5, 10)).await;
    lake.committer
        .update_metadata(&lake.ident, |loc, m| {
            Ok(Some(
                m.clone()
                    .into_builder(Some(loc.to_string()))
                    .set_ref(
                        iceberg::spec::MAIN_BRANCH,
                        iceberg::spec::SnapshotReference::new(
                            first,
                            iceberg::spec::SnapshotRetention::branch(None, None, None),
                        ),
                    )?
                    .build()?,
            ))
        })
        .await
        .unwrap();
    let meta = metadata(&lake).await;
    assert_eq!(meta.current_snapshot_id(), Some(first));
    assert_eq!(committed_offsets(&meta, "g").unwrap()["events"][&0], 10);
    let _ = floe_snapshot;
}

#[tokio::test]
async fn offsets_of_earlier_versions_are_read_from_summaries_then_moved_to_properties() {
    let lake = lake().await;
    // As floe 0.1 committed: the merged offsets in the snapshot summary only.
    let f = files(&lake, 0, 0..4).await;
    let mut old = CommitRequest::append(f);
    old.properties
        .insert("floe.offsets.g".into(), r#"{"events":{"0":4}}"#.into());
    lake.committer.commit(&lake.ident, old).await.unwrap();
    let meta = metadata(&lake).await;
    assert!(!meta.properties().contains_key("floe.offsets.g"));
    assert_eq!(committed_offsets(&meta, "g").unwrap()["events"][&0], 4);
    // The next floe commit (any group) writes every state key into the properties.
    let f = files(&lake, 0, 4..6).await;
    lake.committer
        .commit(
            &lake.ident,
            CommitRequest::append(f).with_offsets("h", vec![range(3, 0, 2)]),
        )
        .await
        .unwrap();
    let meta = metadata(&lake).await;
    assert_eq!(meta.properties()["floe.offsets.g"], r#"{"events":{"0":4}}"#);
    assert_eq!(meta.properties()["floe.offsets.h"], r#"{"events":{"3":2}}"#);
}

#[tokio::test]
async fn appends_merge_manifests_at_the_minimum_count() {
    let lake = lake().await;
    set_properties(&lake, &[("commit.manifest.min-count-to-merge", "4")]).await;
    for i in 0..15 {
        let f = files(&lake, (i % 3) as i32, i * 10..i * 10 + 10).await;
        append_with_offsets(&lake, f, range(0, i * 10, i * 10 + 10)).await;
        let n = current_manifests(&lake).await.len();
        assert!(n <= 4, "{n} manifests after {} appends", i + 1);
    }
    assert_eq!(ids(&lake).await, (0..150).collect::<Vec<_>>());
    // With merging off, every append keeps its manifest.
    set_properties(&lake, &[("commit.manifest-merge.enabled", "false")]).await;
    let before = current_manifests(&lake).await.len();
    for i in 15..20 {
        let f = files(&lake, 0, i * 10..i * 10 + 10).await;
        append_with_offsets(&lake, f, range(0, i * 10, i * 10 + 10)).await;
    }
    assert_eq!(current_manifests(&lake).await.len(), before + 5);
    assert_eq!(ids(&lake).await, (0..200).collect::<Vec<_>>());
    assert_no_orphans(&lake).await;
}

#[tokio::test]
async fn removed_entries_live_only_in_the_snapshot_that_removes_them() {
    let lake = lake().await;
    let mut old = Vec::new();
    for i in 0..3 {
        let f = files(&lake, 0, i * 10..i * 10 + 10).await;
        old.extend(f.clone());
        append_with_offsets(&lake, f, range(0, i * 10, i * 10 + 10)).await;
    }
    let compacted = files(&lake, 0, 0..30).await;
    lake.committer
        .commit(
            &lake.ident,
            request(Change::Replace {
                removed: old,
                added: compacted,
            }),
        )
        .await
        .unwrap();
    let deleted = |ms: &[iceberg::spec::ManifestFile]| {
        ms.iter()
            .map(|m| m.deleted_files_count.unwrap_or(0))
            .sum::<u32>()
    };
    assert_eq!(deleted(&current_manifests(&lake).await), 3);
    let f = files(&lake, 1, 100..101).await;
    append_with_offsets(&lake, f, range(0, 30, 31)).await;
    let ms = current_manifests(&lake).await;
    assert_eq!(
        deleted(&ms),
        0,
        "removals are not carried into later snapshots"
    );
    assert!(
        ms.iter()
            .all(|m| m.added_files_count.unwrap_or(0) + m.existing_files_count.unwrap_or(0) > 0),
        "no manifest without a live file"
    );
    let mut want: Vec<i64> = (0..30).collect();
    want.push(100);
    assert_eq!(ids(&lake).await, want);
}

/// Ids 0..5 and 5..10 in two files of partition 0, appended in one commit.
async fn two_files(lake: &Lake) -> (Vec<DataFile>, Vec<DataFile>) {
    let a = files(lake, 0, 0..5).await;
    let b = files(lake, 0, 5..10).await;
    lake.committer
        .commit(
            &lake.ident,
            CommitRequest::append([a.clone(), b.clone()].concat()),
        )
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn a_rewrite_applies_deletes_and_refuses_deletes_committed_after_it_read() {
    let lake = lake().await;
    let (a, b) = two_files(&lake).await;
    let read_at = metadata(&lake)
        .await
        .current_snapshot()
        .unwrap()
        .sequence_number();
    // Another engine deletes rows 0 and 1 of `a` (merge-on-read) after the rewrite read.
    let del =
        floe_testkit::position_delete_file(lake.committer.catalog(), "lake.t", &a[0], 0, &[0, 1])
            .await;
    lake.committer
        .commit(&lake.ident, CommitRequest::append(vec![del.clone()]))
        .await
        .unwrap();
    assert_eq!(ids(&lake).await, (2..10).collect::<Vec<_>>());
    // The rewrite read ids 0..10: committing it would bring 0 and 1 back.
    let stale = files(&lake, 0, 0..10).await;
    let err = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::new(Change::Replace {
                removed: [a.clone(), b.clone()].concat(),
                added: stale,
            })
            .validate_from(read_at),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConcurrentDelete { .. }), "{err}");
    assert_eq!(ids(&lake).await, (2..10).collect::<Vec<_>>());
    // Planned again with the delete applied: the delete file leaves with the data file.
    let read_at = metadata(&lake)
        .await
        .current_snapshot()
        .unwrap()
        .sequence_number();
    let rewritten = files(&lake, 0, 2..10).await;
    let done = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::new(Change::Replace {
                removed: [a, b, vec![del]].concat(),
                added: rewritten,
            })
            .validate_from(read_at),
        )
        .await
        .unwrap();
    assert_eq!(ids(&lake).await, (2..10).collect::<Vec<_>>());
    let summary = &done
        .metadata
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary["total-delete-files"], "0");
    assert_eq!(summary["removed-delete-files"], "1");
}

#[tokio::test]
async fn a_delete_file_still_needed_by_a_remaining_file_stays() {
    let lake = lake().await;
    let (a, b) = two_files(&lake).await;
    let del_a =
        floe_testkit::position_delete_file(lake.committer.catalog(), "lake.t", &a[0], 0, &[0])
            .await;
    let del_b =
        floe_testkit::position_delete_file(lake.committer.catalog(), "lake.t", &b[0], 0, &[0])
            .await;
    lake.committer
        .commit(
            &lake.ident,
            CommitRequest::append(vec![del_a.clone(), del_b.clone()]),
        )
        .await
        .unwrap();
    // Only `a` is rewritten; both delete files are offered for removal, `b`'s still applies.
    let done = lake
        .committer
        .commit(
            &lake.ident,
            CommitRequest::new(Change::Replace {
                removed: vec![a[0].clone(), del_a, del_b],
                added: files(&lake, 0, 1..5).await,
            }),
        )
        .await
        .unwrap();
    let summary = &done
        .metadata
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary["total-delete-files"], "1");
    assert_eq!(ids(&lake).await, [1, 2, 3, 4, 6, 7, 8, 9]);
}

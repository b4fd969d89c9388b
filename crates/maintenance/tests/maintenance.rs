//! Maintenance on an hour-partitioned table: compaction keeps every row once (also while
//! appends race it), expiry deletes exactly the unreferenced files, retention removes exactly
//! the old rows, orphan removal honours its age guard, and dry runs change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use floe_lake::commit::CommitRequest;
use floe_lake::{Catalog, Committer, DataWriter, OffsetRange, parse_table_ident};
use floe_maintenance::compact::Compact;
use floe_maintenance::expire::ExpireSnapshots;
use floe_maintenance::files::{ManifestCache, canonical, referenced_files};
use floe_maintenance::orphans::RemoveOrphans;
use floe_maintenance::retention::Retention;
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"},
    {"id": 2, "name": "ts", "required": true, "type": "timestamptz"},
    {"id": 3, "name": "v", "required": false, "type": "string"}]},
  "partition-spec": {"fields": [{"source-id": 2, "field-id": 1000, "name": "ts_hour", "transform": "hour"}]}
}"#;

const HOUR_US: i64 = 3_600_000_000;
/// 2026-11-24T00:00:00Z in micros: rows are at BASE + hour h + a few seconds.
const BASE: i64 = 1_795_478_400_000_000;

struct Lake {
    _dir: tempfile::TempDir,
    root: PathBuf,
    catalog: Catalog,
    committer: Committer,
}

async fn lake() -> Lake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let catalog = floe_testkit::catalog(&root).await;
    catalog
        .create_table(&TableDefinition::from_json(DEF, Some("lake.e"), "test").unwrap())
        .await
        .unwrap();
    let committer = Committer::new(catalog.clone());
    Lake {
        _dir: dir,
        root,
        catalog,
        committer,
    }
}

/// The time of row `id`: spread over `hours` hours and over each hour.
fn ts_of(id: i64, hours: i64) -> i64 {
    BASE + (id % hours) * HOUR_US + (id * 7_919_000_000) % HOUR_US
}

/// Appends rows `ids` (one commit), optionally with offsets for group `g`.
async fn append(lake: &Lake, ids: std::ops::Range<i64>, hours: i64, offsets: bool) {
    let ident = parse_table_ident("lake.e").unwrap();
    let (_, meta) = lake.catalog.load_metadata(&ident).await.unwrap();
    let mut dec = Decoder::new(meta.current_schema(), &DecoderOptions::default()).unwrap();
    for id in ids.clone() {
        let json = format!(
            r#"{{"id":{id},"ts":{},"v":"row {id}"}}"#,
            ts_of(id, hours) / 1000
        );
        dec.decode(json.as_bytes(), &RecordMeta::default()).unwrap();
    }
    let mut w = DataWriter::new(lake.catalog.file_io(), &meta).unwrap();
    w.write(&dec.finish()).await.unwrap();
    let mut req = CommitRequest::append(w.close().await.unwrap());
    if offsets {
        req = req.with_offsets(
            "g",
            vec![OffsetRange {
                topic: "t".into(),
                partition: 0,
                first: ids.start,
                next: ids.end,
            }],
        );
    }
    lake.committer.commit(&ident, req).await.unwrap();
}

/// id → (ts, v) of every row; panics on a duplicate id.
async fn rows(lake: &Lake) -> BTreeMap<i64, (i64, String)> {
    let mut out = BTreeMap::new();
    let batches = floe_testkit::scan(&lake.catalog, "lake.e").await;
    for b in batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let v = b.column(2).as_string::<i32>();
        for i in 0..b.num_rows() {
            let prev = out.insert(ids.value(i), (ts.value(i), v.value(i).to_string()));
            assert!(prev.is_none(), "row {} twice", ids.value(i));
        }
    }
    out
}

fn expected(ids: impl Iterator<Item = i64>, hours: i64) -> BTreeMap<i64, (i64, String)> {
    ids.map(|id| (id, (ts_of(id, hours), format!("row {id}"))))
        .collect()
}

/// Every file under the warehouse, canonical form.
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.insert(canonical(&p.display().to_string()));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root.join("wh"), &mut out);
    out
}

async fn data_files_per_partition(lake: &Lake) -> BTreeMap<String, usize> {
    let (_, meta) = lake
        .catalog
        .load_metadata(&parse_table_ident("lake.e").unwrap())
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for f in floe_lake::scan::live_data_files(lake.catalog.file_io(), &meta)
        .await
        .unwrap()
    {
        *out.entry(format!("{:?}", f.data_file.partition()))
            .or_default() += 1;
    }
    out
}

async fn metadata_location(lake: &Lake) -> String {
    lake.catalog
        .load_metadata(&parse_table_ident("lake.e").unwrap())
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_leaves_one_file_per_partition_and_the_same_rows() {
    let lake = lake().await;
    for i in 0..30 {
        append(&lake, i * 20..(i + 1) * 20, 3, false).await;
    }
    let before = rows(&lake).await;
    assert_eq!(before, expected(0..600, 3));
    assert!(
        data_files_per_partition(&lake)
            .await
            .values()
            .all(|n| *n == 30)
    );

    // A dry run plans but changes nothing.
    let files = listing(&lake.root);
    let location = metadata_location(&lake).await;
    let dry = Compact::new("lake.e")
        .dry_run(true)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!((dry.files_before, dry.files_after, dry.bins), (90, 3, 3));
    assert_eq!(listing(&lake.root), files);
    assert_eq!(metadata_location(&lake).await, location);

    let r = Compact::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(
        (r.files_before, r.files_after, r.bins_committed),
        (90, 3, 3)
    );
    assert_eq!(r.rows_rewritten, 600);
    assert!(r.errors.is_empty());
    assert!(
        data_files_per_partition(&lake)
            .await
            .values()
            .all(|n| *n == 1)
    );
    assert_eq!(rows(&lake).await, before);

    // Nothing left to do.
    let again = Compact::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(again.bins, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_racing_compactions_lose_nothing() {
    let lake = lake().await;
    for i in 0..20 {
        append(&lake, i * 10..(i + 1) * 10, 2, true).await;
    }
    let appends = async {
        for i in 20..40 {
            append(&lake, i * 10..(i + 1) * 10, 2, true).await;
        }
    };
    let compactions = async {
        let mut skipped = 0;
        for _ in 0..4 {
            let (one, two) = (Compact::new("lake.e"), Compact::new("lake.e"));
            let (a, b) = tokio::join!(one.execute(&lake.committer), two.execute(&lake.committer));
            for r in [a.unwrap(), b.unwrap()] {
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                skipped += r.bins_skipped;
            }
        }
        skipped
    };
    let ((), skipped) = tokio::join!(appends, compactions);
    // Two compactions at once: bins they both planned commit once, the other is skipped.
    eprintln!("bins skipped: {skipped}");
    assert_eq!(rows(&lake).await, expected(0..400, 2));
    let (_, meta) = lake
        .catalog
        .load_metadata(&parse_table_ident("lake.e").unwrap())
        .await
        .unwrap();
    let offsets = floe_lake::committed_offsets(&meta, "g").unwrap();
    assert_eq!(offsets["t"][&0], 400, "offsets survive replace snapshots");
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_deletes_exactly_the_unreferenced_files() {
    let lake = lake().await;
    for i in 0..12 {
        append(&lake, i * 10..(i + 1) * 10, 2, i < 6).await;
    }
    Compact::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    append(&lake, 120..130, 2, false).await;
    let ident = parse_table_ident("lake.e").unwrap();
    let (_, before_meta) = lake.catalog.load_metadata(&ident).await.unwrap();
    let snapshots_before = before_meta.snapshots().len();
    let files_before = listing(&lake.root);

    // Dry run: nothing changes.
    let dry = ExpireSnapshots::new("lake.e")
        .older_than(Duration::ZERO)
        .retain_last(2)
        .dry_run(true)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert!(dry.data_files_deleted > 0);
    assert_eq!(listing(&lake.root), files_before);

    let r = ExpireSnapshots::new("lake.e")
        .older_than(Duration::ZERO)
        .retain_last(2)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(r.snapshots_before, snapshots_before);
    assert_eq!(
        (r.data_files_deleted, r.manifest_lists_deleted),
        (dry.data_files_deleted, dry.manifest_lists_deleted)
    );
    let (location, meta) = lake.catalog.load_metadata(&ident).await.unwrap();
    // The 2 newest, plus the holder of the offsets (carried forward, so the head holds them).
    assert_eq!(meta.snapshots().len(), r.snapshots_after);
    assert!(
        r.snapshots_after <= 3,
        "{} snapshots kept",
        r.snapshots_after
    );

    // What the kept snapshots read (manifest entries recording a removal name files that
    // are rightly gone) must all be on disk; every deleted file must be outside it.
    let reachable = ManifestCache::default()
        .reachable(lake.catalog.file_io(), &meta, meta.snapshots())
        .await
        .unwrap();
    let mut needed: BTreeSet<String> = reachable
        .manifest_lists
        .iter()
        .chain(&reachable.manifests)
        .chain(reachable.live_files.keys())
        .map(|p| canonical(p))
        .collect();
    needed.insert(canonical(&location));
    let files_after = listing(&lake.root);
    for f in &needed {
        assert!(files_after.contains(f), "needed file {f} is gone");
    }
    let referenced = referenced_files(lake.catalog.file_io(), &location, &meta)
        .await
        .unwrap();
    let deleted: Vec<&String> = files_before.difference(&files_after).collect();
    assert!(!deleted.is_empty());
    for f in &deleted {
        assert!(!needed.contains(*f), "deleted {f} is still needed");
        assert!(
            !referenced.contains(*f) || f.ends_with(".parquet"),
            "deleted metadata file {f} is still referenced"
        );
    }
    let data_deleted = deleted.iter().filter(|f| f.ends_with(".parquet")).count();
    assert_eq!(data_deleted, r.data_files_deleted);
    // Each of the 12 first appends wrote one file per hour; compaction replaced all 24.
    assert_eq!(data_deleted, 24);
    assert_eq!(rows(&lake).await, expected(0..130, 2));
    let offsets = floe_lake::committed_offsets(&meta, "g").unwrap();
    assert_eq!(offsets["t"][&0], 60, "offsets survive expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_exactly_the_rows_before_the_cutoff() {
    let lake = lake().await;
    for i in 0..6 {
        append(&lake, i * 60..(i + 1) * 60, 6, false).await;
    }
    let all = expected(0..360, 6);
    // Mid-hour 3: hours 0-2 go whole, hour 3 straddles, hours 4-5 stay.
    let cutoff_us = BASE + 3 * HOUR_US + HOUR_US / 2;
    let cutoff = chrono::DateTime::from_timestamp_micros(cutoff_us).unwrap();

    let files = listing(&lake.root);
    let dry = Retention::before("lake.e", cutoff)
        .dry_run(true)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(listing(&lake.root), files);

    let r = Retention::before("lake.e", cutoff)
        .execute(&lake.committer)
        .await
        .unwrap();
    let want: BTreeMap<_, _> = all
        .iter()
        .filter(|(_, (ts, _))| *ts >= cutoff_us)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert!(want.len() < all.len() && want.len() > 120);
    assert_eq!(rows(&lake).await, want);
    assert_eq!(r.rows_deleted as usize, all.len() - want.len());
    assert_eq!(dry.rows_deleted, r.rows_deleted);
    assert_eq!(r.files_deleted, 18, "hours 0-2 of six appends go whole");
    assert_eq!(r.files_rewritten, 6, "hour 3 of each append straddles");
    assert_eq!(r.column, "ts");

    // Idempotent.
    let again = Retention::before("lake.e", cutoff)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(again.rows_deleted, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_go_only_once_older_than_the_guard() {
    let lake = lake().await;
    for i in 0..3 {
        append(&lake, i * 10..(i + 1) * 10, 2, false).await;
    }
    let (_, meta) = lake
        .catalog
        .load_metadata(&parse_table_ident("lake.e").unwrap())
        .await
        .unwrap();
    let table_dir = meta.location().trim_start_matches("file://").to_string();
    let stray = PathBuf::from(&table_dir).join("data/stray.parquet");
    std::fs::write(&stray, b"not referenced").unwrap();
    let live = listing(&lake.root);

    let r = RemoveOrphans::new("lake.e")
        .older_than(Duration::from_secs(3600))
        .execute(&lake.committer)
        .await
        .unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(r.too_young, 1);
    assert!(stray.exists());

    // Age every file by two hours: only the stray one goes, and not in a dry run.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for f in &live {
        let path = f.trim_start_matches("file://");
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let dry = RemoveOrphans::new("lake.e")
        .older_than(Duration::from_secs(3600))
        .dry_run(true)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(dry.removed.len(), 1);
    assert!(stray.exists());
    let r = RemoveOrphans::new("lake.e")
        .older_than(Duration::from_secs(3600))
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(r.removed, vec![canonical(&stray.display().to_string())]);
    assert!(!stray.exists());
    let mut remaining = live.clone();
    remaining.remove(&canonical(&stray.display().to_string()));
    assert_eq!(
        listing(&lake.root),
        remaining,
        "live files are never orphans"
    );
    assert_eq!(rows(&lake).await, expected(0..30, 2));
}

/// The live data files of `lake.e`, and its live delete files.
async fn live(lake: &Lake) -> (Vec<iceberg::spec::DataFile>, usize) {
    let (_, meta) = lake
        .catalog
        .load_metadata(&parse_table_ident("lake.e").unwrap())
        .await
        .unwrap();
    let data = floe_lake::scan::live_data_files(lake.catalog.file_io(), &meta)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.data_file)
        .collect();
    let deletes = floe_lake::scan::live_delete_files(lake.catalog.file_io(), &meta)
        .await
        .unwrap()
        .len();
    (data, deletes)
}

#[tokio::test]
async fn compaction_applies_row_level_deletes_and_drops_the_delete_files() {
    let lake = lake().await;
    append(&lake, 0..40, 2, false).await;
    append(&lake, 40..80, 2, false).await;
    // Another engine's merge-on-read DELETE: the first two rows of every data file.
    let (files, _) = live(&lake).await;
    let mut deleted_ids = BTreeSet::new();
    let mut deletes = Vec::new();
    for f in &files {
        deletes
            .push(floe_testkit::position_delete_file(&lake.catalog, "lake.e", f, 0, &[0, 1]).await);
    }
    lake.committer
        .commit(
            &parse_table_ident("lake.e").unwrap(),
            CommitRequest::append(deletes),
        )
        .await
        .unwrap();
    let before = rows(&lake).await;
    for id in 0..80 {
        if !before.contains_key(&id) {
            deleted_ids.insert(id);
        }
    }
    assert_eq!(deleted_ids.len(), 2 * files.len());
    let r = Compact::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(r.bins_committed, r.bins, "{r:?}");
    assert_eq!(r.files_with_deletes, files.len());
    let (after, live_deletes) = live(&lake).await;
    assert_eq!(live_deletes, 0, "no delete file left live");
    assert_eq!(after.len(), 2, "one file per hour");
    assert_eq!(rows(&lake).await, before);
    let total: u64 = after.iter().map(|f| f.record_count()).sum();
    assert_eq!(
        total,
        80 - deleted_ids.len() as u64,
        "record counts are the rows left"
    );
}

#[tokio::test]
async fn a_table_nested_in_another_keeps_every_file_through_its_orphan_removal() {
    let lake = lake().await;
    // `lake.e.dlq` lives in `<wh>/lake/e/dlq`, inside `lake.e`'s folder.
    lake.catalog
        .create_table(&TableDefinition::from_json(DEF, Some("lake.e.dlq"), "test").unwrap())
        .await
        .unwrap();
    append(&lake, 0..20, 2, false).await;
    let nested = parse_table_ident("lake.e.dlq").unwrap();
    let (_, meta) = lake.catalog.load_metadata(&nested).await.unwrap();
    assert!(
        meta.location().contains("/lake/e/dlq"),
        "{}",
        meta.location()
    );
    let mut dec = Decoder::new(meta.current_schema(), &DecoderOptions::default()).unwrap();
    for id in 0..5 {
        dec.decode(
            format!(r#"{{"id":{id},"ts":{},"v":"x"}}"#, BASE / 1000).as_bytes(),
            &RecordMeta::default(),
        )
        .unwrap();
    }
    let mut w = DataWriter::new(lake.catalog.file_io(), &meta).unwrap();
    w.write(&dec.finish()).await.unwrap();
    lake.committer
        .commit(&nested, CommitRequest::append(w.close().await.unwrap()))
        .await
        .unwrap();
    // A stray file of lake.e's own is still found.
    let stray = lake.root.join("wh/lake/e/data/stray.parquet");
    std::fs::write(&stray, b"x").unwrap();
    // One in the nested table's folder is for that table's own orphan removal to judge.
    let theirs = lake.root.join("wh/lake/e/dlq/data/stray.parquet");
    std::fs::write(&theirs, b"x").unwrap();
    let r = RemoveOrphans::new("lake.e")
        .older_than(Duration::ZERO)
        .force(true)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(
        r.removed,
        vec![canonical(&stray.display().to_string())],
        "{r:?}"
    );
    assert_eq!(r.other_tables_files, 1);
    assert!(theirs.exists());
    assert_eq!(
        floe_testkit::scan(&lake.catalog, "lake.e.dlq").await[0].num_rows(),
        5
    );
    assert_eq!(rows(&lake).await.len(), 20);
    // Below the floor without force: refused, naming the floor.
    let e = RemoveOrphans::new("lake.e")
        .older_than(Duration::from_secs(60))
        .execute(&lake.committer)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1h") && e.contains("--force"), "{e}");
}

#[tokio::test]
async fn expiry_follows_the_tables_history_properties() {
    let lake = lake().await;
    for i in 0..6 {
        append(&lake, i * 10..i * 10 + 10, 2, true).await;
    }
    let ident = parse_table_ident("lake.e").unwrap();
    lake.committer
        .update_metadata(&ident, |loc, m| {
            Ok(Some(
                m.clone()
                    .into_builder(Some(loc.to_string()))
                    .set_properties(
                        [
                            ("history.expire.max-snapshot-age-ms", "0"),
                            ("history.expire.min-snapshots-to-keep", "2"),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    )?
                    .build()?,
            ))
        })
        .await
        .unwrap();
    let r = ExpireSnapshots::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!((r.snapshots_before, r.snapshots_after), (6, 2));
    // The caller's limit wins over the table's.
    let r = ExpireSnapshots::new("lake.e")
        .retain_last(1)
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(r.snapshots_after, 1);
    let (_, meta) = lake.catalog.load_metadata(&ident).await.unwrap();
    assert_eq!(
        floe_lake::committed_offsets(&meta, "g").unwrap()["t"][&0],
        60
    );
    assert_eq!(rows(&lake).await, expected(0..60, 2));
}

#[tokio::test]
async fn rewrite_manifests_clusters_by_partition_and_drops_removed_entries() {
    let lake = lake().await;
    for i in 0..12 {
        append(&lake, i * 10..i * 10 + 10, 4, false).await;
    }
    Compact::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    let r = floe_maintenance::manifests::RewriteManifests::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert!(r.rewritten, "{r:?}");
    assert!(r.manifests_before > 1, "{r:?}");
    assert_eq!(r.manifests_after, 1, "{r:?}");
    assert_eq!(rows(&lake).await, expected(0..120, 4));
    // Nothing left to do: no second snapshot.
    let again = floe_maintenance::manifests::RewriteManifests::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert!(!again.rewritten, "{again:?}");
}

#[tokio::test]
async fn compaction_applies_equality_deletes_and_drops_the_delete_file() {
    let lake = lake().await;
    append(&lake, 0..30, 1, false).await;
    append(&lake, 30..60, 1, false).await;
    // Flink-style equality deletes on `id` in the one hour partition.
    let (files, _) = live(&lake).await;
    let gone = [3, 17, 31, 59];
    let del = floe_testkit::equality_delete_file(
        &lake.catalog,
        "lake.e",
        "id",
        1,
        &gone,
        files[0].partition().clone(),
        0,
    )
    .await;
    lake.committer
        .commit(
            &parse_table_ident("lake.e").unwrap(),
            CommitRequest::append(vec![del]),
        )
        .await
        .unwrap();
    let want: BTreeMap<i64, (i64, String)> = expected(0..60, 1)
        .into_iter()
        .filter(|(id, _)| !gone.contains(id))
        .collect();
    assert_eq!(
        rows(&lake).await,
        want,
        "the deletes apply before compaction"
    );
    // Rows appended after the delete are not affected by it.
    append(&lake, 100..103, 1, false).await;
    let r = Compact::new("lake.e")
        .execute(&lake.committer)
        .await
        .unwrap();
    assert_eq!(r.bins_committed, 1, "{r:?}");
    let (after, live_deletes) = live(&lake).await;
    assert_eq!(
        live_deletes, 0,
        "the equality delete file left with the files it applied to"
    );
    assert_eq!(after.len(), 1);
    let mut want = want;
    want.extend(expected(100..103, 1));
    assert_eq!(rows(&lake).await, want);
}

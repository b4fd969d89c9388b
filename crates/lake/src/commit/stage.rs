//! One attempt's new table metadata, built on the table's current metadata: floe's state
//! (offsets, marks) merged and checked, and — unless the commit only records state — a new
//! snapshot with its manifests and manifest list.

use std::collections::{BTreeMap, HashMap, HashSet};

use iceberg::TableIdent;
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile,
    ManifestListWriter, Snapshot, SnapshotRef, SnapshotSummaryCollector, Summary, TableMetadata,
    TableMetadataBuildResult, UNASSIGNED_SEQUENCE_NUMBER,
};
use rand::Rng;

use super::manifests::{
    FileRef, ManifestOut, ManifestProps, Manifests, MergeCounts, file_ref, has_live_entries,
};
use super::request::{Change, CommitRequest};
use crate::marks::{applied_key, applied_positions};
use crate::offsets::{committed_offsets, merge_offsets, offsets_key};
use crate::{Error, Result};

/// What an attempt will publish.
pub(crate) enum Staged {
    /// New metadata with a new snapshot.
    Snapshot {
        snapshot_id: i64,
        built: TableMetadataBuildResult,
    },
    /// New metadata with new state properties only.
    State(TableMetadataBuildResult),
    /// Nothing to change.
    Unchanged,
}

/// The state properties the commit sets: the merged offsets and marks, and any state found
/// only in legacy snapshot summaries (moved into the properties).
fn new_state(
    table: &str,
    base: &TableMetadata,
    req: &CommitRequest,
) -> Result<HashMap<String, String>> {
    let mut props: HashMap<String, String> = crate::state::legacy_state(base).into_iter().collect();
    if let Some(update) = &req.offsets {
        let committed = committed_offsets(base, &update.group)?;
        let merged = merge_offsets(table, &committed, &update.ranges)?;
        if merged != committed || !base.properties().contains_key(&offsets_key(&update.group)) {
            props.insert(
                offsets_key(&update.group),
                serde_json::to_string(&merged).expect("offsets serialize"),
            );
        }
    }
    if let Some(update) = &req.applied {
        let mut applied = applied_positions(base, &update.name)?;
        if let Some((source, partition, offset)) = applied.first_overlap(&update.positions) {
            return Err(Error::AlreadyApplied {
                table: table.to_string(),
                name: update.name.clone(),
                example: format!("{source}[{partition}]@{offset}"),
            });
        }
        let horizon_key = crate::marks::horizon_key(&update.name);
        let horizon = base
            .properties()
            .get(&horizon_key)
            .and_then(|v| v.parse::<i64>().ok());
        if let (Some(h), Some(read_at)) = (horizon, update.read_at)
            && read_at < h
            && !update.positions.is_empty()
        {
            return Err(Error::AlreadyApplied {
                table: table.to_string(),
                name: update.name.clone(),
                example: format!(
                    "a position read at sequence number {read_at}, before marks up to {h} were cleared"
                ),
            });
        }
        if let Some(at) = update.forget_at {
            props.insert(horizon_key, horizon.unwrap_or(at).max(at).to_string());
        }
        applied.subtract(&update.forget);
        applied.extend(&update.positions);
        props.insert(
            applied_key(&update.name),
            serde_json::to_string(&applied).expect("positions serialize"),
        );
    }
    if let Some(update) = &req.load {
        let marks =
            crate::loads::merge_load(table, base, update, chrono::Utc::now().timestamp_millis())?;
        props.insert(
            crate::loads::LOADS_KEY.to_string(),
            serde_json::to_string(&marks).expect("load marks serialize"),
        );
    }
    props.retain(|k, v| base.properties().get(k) != Some(v));
    Ok(props)
}

/// A short summary entry of the offsets this commit covered (`floe.committed.<group>`:
/// `{"topic": {"0": [first, next]}}`), for audits; the state itself is in the properties.
fn committed_ranges(req: &CommitRequest) -> Option<(String, String)> {
    let update = req.offsets.as_ref()?;
    if update.ranges.is_empty() {
        return None;
    }
    let mut m: BTreeMap<&str, BTreeMap<i32, (i64, i64)>> = BTreeMap::new();
    for r in &update.ranges {
        m.entry(&r.topic)
            .or_default()
            .insert(r.partition, (r.first, r.next));
    }
    Some((
        format!("floe.committed.{}", update.group),
        serde_json::to_string(&m).expect("ranges serialize"),
    ))
}

/// Builds the attempt's new metadata on top of `base`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stage(
    file_io: &iceberg::io::FileIO,
    table: &TableIdent,
    base: &TableMetadata,
    base_location: &str,
    req: &CommitRequest,
    state_needs_snapshot: bool,
    attempt: u32,
    commit_id: uuid::Uuid,
    written: &mut Vec<String>,
) -> Result<Staged> {
    let table_name = table.to_string();
    let state = new_state(&table_name, base, req)?;
    if req.change.is_state_only() && state.is_empty() {
        return Ok(Staged::Unchanged);
    }
    if req.change.is_state_only() && !state_needs_snapshot {
        let built = base
            .clone()
            .into_builder(Some(base_location.to_string()))
            .set_properties(state)?
            .build()?;
        return Ok(Staged::State(built));
    }
    check_format_version(&table_name, base)?;

    let parent = base.current_snapshot();
    let snapshot_id = new_snapshot_id(base);
    let sequence_number = base.next_sequence_number();
    let props = ManifestProps::of(base.properties());
    let parent_manifests = crate::scan::current_manifests(file_io, base).await?;
    let mut reader = Manifests::new(file_io, base);
    let mut out = ManifestOut::new(
        file_io,
        base,
        snapshot_id,
        format!("{commit_id}-m{attempt}"),
        written,
    );
    let mut collector = SnapshotSummaryCollector::default();
    let mut extra: HashMap<String, String> = HashMap::new();

    let manifests = if matches!(req.change, Change::RewriteManifests) {
        rewrite_manifests(&parent_manifests, props, &mut reader, &mut out, &mut extra).await?
    } else {
        let mut manifests = carry_checked(
            &table_name,
            req,
            &parent_manifests,
            &mut reader,
            &mut out,
            &mut collector,
        )
        .await?;
        add_new_manifests(
            &table_name,
            base,
            req,
            &mut manifests,
            &mut out,
            &mut collector,
        )
        .await?;
        if props.merge_enabled {
            manifests =
                merge_manifests(manifests, props, &mut reader, &mut out, &mut extra).await?;
        }
        manifests
    };
    drop(out);

    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-{attempt}-{commit_id}.avro",
        base.location()
    );
    written.push(list_path.clone());
    write_manifest_list(
        file_io,
        &list_path,
        snapshot_id,
        parent.map(|p| p.snapshot_id()),
        sequence_number,
        manifests,
    )
    .await?;

    let summary = snapshot_summary(req, collector, parent, extra);
    let now_ms = chrono::Utc::now()
        .timestamp_millis()
        .max(base.last_updated_ms());
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(now_ms)
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: req.change.operation(),
            additional_properties: summary,
        })
        .with_schema_id(base.current_schema().schema_id())
        .build();
    let built = base
        .clone()
        .into_builder(Some(base_location.to_string()))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)?
        .set_properties(state)?
        .build()?;
    Ok(Staged::Snapshot { snapshot_id, built })
}

/// Refuses a table floe cannot write: only format v2 is written (v1 is refused with how to
/// upgrade, v3 and later as unsupported).
fn check_format_version(table: &str, base: &TableMetadata) -> Result<()> {
    match base.format_version() {
        FormatVersion::V2 => {}
        FormatVersion::V1 => {
            return Err(Error::Config(format!(
                "{table} is an Iceberg v1 table; floe writes v2 tables (upgrade it: ALTER TABLE … SET TBLPROPERTIES ('format-version' = '2'))"
            )));
        }
        v => {
            return Err(Error::Unsupported(format!(
                "{table} is an Iceberg v{} table; floe reads and writes format v2 only (v3 row lineage and deletion vectors would be corrupted or ignored): load into a v2 table",
                v as u8
            )));
        }
    }
    Ok(())
}

/// [`Change::RewriteManifests`]: every live entry of the parent's manifests rewritten into
/// new ones, counted in `extra` for the summary.
async fn rewrite_manifests(
    parent_manifests: &[ManifestFile],
    props: ManifestProps,
    reader: &mut Manifests<'_>,
    out: &mut ManifestOut<'_>,
    extra: &mut HashMap<String, String>,
) -> Result<Vec<ManifestFile>> {
    let (m, entries) = super::manifests::rewrite_all(parent_manifests, props, reader, out).await?;
    extra.insert("manifests-created".into(), m.len().to_string());
    extra.insert(
        "manifests-replaced".into(),
        parent_manifests.len().to_string(),
    );
    extra.insert("manifests-kept".into(), "0".into());
    extra.insert("entries-processed".into(), entries.to_string());
    Ok(m)
}

/// The parent's manifests carried into the new snapshot with the change's removals
/// ([`carry`]), after checking (given the sequence number the change read) that no delete
/// file committed since applies to a removed data file ([`Error::ConcurrentDelete`]).
async fn carry_checked(
    table: &str,
    req: &CommitRequest,
    parent_manifests: &[ManifestFile],
    reader: &mut Manifests<'_>,
    out: &mut ManifestOut<'_>,
    collector: &mut SnapshotSummaryCollector,
) -> Result<Vec<ManifestFile>> {
    let removed_data: HashSet<&str> = req.change.removed_data().map(|f| f.file_path()).collect();
    let removed_deletes = dangling_deletes(req, parent_manifests, &removed_data, reader).await?;
    let (manifests, removed_refs) = carry(
        table,
        parent_manifests,
        &removed_data,
        &removed_deletes,
        reader,
        out,
        collector,
    )
    .await?;
    if let Some(from) = req.validate_from_sequence
        && !removed_refs.is_empty()
    {
        for d in reader.live_deletes(parent_manifests, Some(from)).await? {
            if let Some(hit) = removed_refs.iter().find(|r| d.may_apply(r)) {
                return Err(Error::ConcurrentDelete {
                    table: table.to_string(),
                    data_file: hit.path.clone(),
                    delete_file: d.file.file_path().to_string(),
                });
            }
        }
    }
    Ok(manifests)
}

/// Writes the change's added files into new manifests put first in `manifests`: the data
/// files' (in the spec they were written with), then the delete files' (in the current spec).
async fn add_new_manifests(
    table: &str,
    base: &TableMetadata,
    req: &CommitRequest,
    manifests: &mut Vec<ManifestFile>,
    out: &mut ManifestOut<'_>,
    collector: &mut SnapshotSummaryCollector,
) -> Result<()> {
    // New manifests first: readers see the newest data early. Delete files (a row
    // delta, as other engines commit them) go to a delete manifest (in the current spec).
    let added = req.change.added();
    let spec_id = base.default_partition_spec_id();
    let (deletes, data): (Vec<&DataFile>, Vec<&DataFile>) = added
        .iter()
        .partition(|f| f.content_type() != DataContentType::Data);
    let spec = base.default_partition_spec().clone();
    if !deletes.is_empty() {
        let mut w = out.writer(ManifestContentType::Deletes, spec_id)?;
        for f in deletes {
            collector.add_file(f, base.current_schema().clone(), spec.clone());
            w.add_file(f.clone(), UNASSIGNED_SEQUENCE_NUMBER)?;
        }
        manifests.insert(0, w.write_manifest_file().await?);
    }
    if !data.is_empty() {
        let data_spec_id = req.spec_id.unwrap_or(spec_id);
        let data_spec = base
            .partition_spec_by_id(data_spec_id)
            .cloned()
            .ok_or_else(|| {
                Error::Config(format!(
                    "{table}: the files were written with partition spec {data_spec_id}, which the table does not have"
                ))
            })?;
        let mut w = out.writer(ManifestContentType::Data, data_spec_id)?;
        for f in data {
            collector.add_file(f, base.current_schema().clone(), data_spec.clone());
            w.add_file(f.clone(), UNASSIGNED_SEQUENCE_NUMBER)?;
        }
        manifests.insert(0, w.write_manifest_file().await?);
    }
    Ok(())
}

/// Merges `manifests` ([`super::manifests::merge`]), with what it did counted in `extra` for
/// the summary.
async fn merge_manifests(
    manifests: Vec<ManifestFile>,
    props: ManifestProps,
    reader: &mut Manifests<'_>,
    out: &mut ManifestOut<'_>,
    extra: &mut HashMap<String, String>,
) -> Result<Vec<ManifestFile>> {
    let mut counts = MergeCounts::default();
    let manifests = super::manifests::merge(manifests, props, reader, out, &mut counts).await?;
    extra.insert("manifests-created".into(), counts.created.to_string());
    extra.insert("manifests-replaced".into(), counts.replaced.to_string());
    extra.insert("manifests-kept".into(), counts.kept.to_string());
    Ok(manifests)
}

/// Writes the new snapshot's manifest list to `list_path`.
async fn write_manifest_list(
    file_io: &iceberg::io::FileIO,
    list_path: &str,
    snapshot_id: i64,
    parent_id: Option<i64>,
    sequence_number: i64,
    manifests: Vec<ManifestFile>,
) -> Result<()> {
    let mut list_writer = ManifestListWriter::v2(
        file_io.new_output(list_path)?.writer().await?,
        snapshot_id,
        parent_id,
        sequence_number,
    );
    list_writer.add_manifests(manifests.into_iter())?;
    list_writer.close().await?;
    Ok(())
}

/// The new snapshot's summary: the collected file counts with the parent's totals carried
/// forward, `extra` (manifest counts), the request's properties, the offsets covered and
/// floe's own entries.
fn snapshot_summary(
    req: &CommitRequest,
    collector: SnapshotSummaryCollector,
    parent: Option<&SnapshotRef>,
    extra: HashMap<String, String>,
) -> HashMap<String, String> {
    let mut summary = collector.build();
    add_totals(
        &mut summary,
        parent.map(|p| &p.summary().additional_properties),
    );
    summary.extend(extra);
    summary.extend(req.properties.clone());
    if let Some((k, v)) = committed_ranges(req) {
        summary.insert(k, v);
    }
    summary.insert("floe.version".into(), env!("CARGO_PKG_VERSION").to_string());
    summary.insert("floe.writer".into(), super::writer_id().to_string());
    if req.change.is_state_only() {
        // REST: a snapshot that adds nothing, so that the commit of floe's state moves
        // `main`, which the catalog checks (see `Catalog::state_needs_snapshot`).
        summary.insert("floe.state-only".into(), "true".into());
    }
    summary
}

/// Of the delete files the change asks to remove, those still live that no data file left
/// after the change may need (a delete file another data file still needs stays).
async fn dangling_deletes(
    req: &CommitRequest,
    parent: &[ManifestFile],
    removed_data: &HashSet<&str>,
    reader: &mut Manifests<'_>,
) -> Result<HashSet<String>> {
    let wanted: HashSet<&str> = req
        .change
        .removed_deletes()
        .map(|f| f.file_path())
        .collect();
    if wanted.is_empty() {
        return Ok(HashSet::new());
    }
    let remaining = reader.live_data(parent, removed_data).await?;
    Ok(reader
        .live_deletes(parent, None)
        .await?
        .into_iter()
        .filter(|d| wanted.contains(d.file.file_path()))
        .filter(|d| !remaining.iter().any(|r| d.may_apply(r)))
        .map(|d| d.file.file_path().to_string())
        .collect())
}

/// Carries the parent's manifests into the new snapshot: manifests without a live entry are
/// dropped; those holding removed files are rewritten with them marked deleted. Returns the
/// manifests and the removed data files as they were in the table.
async fn carry(
    table: &str,
    parent: &[ManifestFile],
    removed_data: &HashSet<&str>,
    removed_deletes: &HashSet<String>,
    reader: &mut Manifests<'_>,
    out: &mut ManifestOut<'_>,
    collector: &mut SnapshotSummaryCollector,
) -> Result<(Vec<ManifestFile>, Vec<FileRef>)> {
    let mut manifests = Vec::with_capacity(parent.len() + 1);
    let mut found: Vec<FileRef> = Vec::new();
    let schema = out.base.current_schema().clone();
    for mf in parent {
        if !has_live_entries(mf) {
            continue;
        }
        let hits = |path: &str| match mf.content {
            ManifestContentType::Data => removed_data.contains(path),
            ManifestContentType::Deletes => removed_deletes.contains(path),
        };
        let nothing_to_remove = match mf.content {
            ManifestContentType::Data => removed_data.is_empty(),
            ManifestContentType::Deletes => removed_deletes.is_empty(),
        };
        if nothing_to_remove {
            manifests.push(mf.clone());
            continue;
        }
        let m = reader.load(mf).await?;
        if !m
            .entries()
            .iter()
            .any(|e| e.is_alive() && hits(e.file_path()))
        {
            manifests.push(mf.clone());
            continue;
        }
        let spec = out
            .base
            .partition_spec_by_id(mf.partition_spec_id)
            .cloned()
            .ok_or_else(|| {
                Error::Config(format!(
                    "{table}: manifest uses unknown partition spec {}",
                    mf.partition_spec_id
                ))
            })?;
        let mut w = out.writer(mf.content, mf.partition_spec_id)?;
        for e in m.entries().iter().filter(|e| e.is_alive()) {
            let seq = e.sequence_number().unwrap_or(0);
            if hits(e.file_path()) {
                if mf.content == ManifestContentType::Data {
                    found.push(file_ref(e, mf.partition_spec_id));
                }
                collector.remove_file(e.data_file(), schema.clone(), spec.clone());
                w.add_delete_file(
                    e.data_file().clone(),
                    seq,
                    e.file_sequence_number.or(Some(seq)),
                )?;
            } else {
                w.add_existing_file(
                    e.data_file().clone(),
                    e.snapshot_id().unwrap_or(mf.added_snapshot_id),
                    seq,
                    e.file_sequence_number.or(Some(seq)),
                )?;
            }
        }
        manifests.push(w.write_manifest_file().await?);
    }
    if found.len() != removed_data.len() {
        let found_paths: HashSet<&str> = found.iter().map(|f| f.path.as_str()).collect();
        let missing: Vec<&&str> = removed_data
            .iter()
            .filter(|p| !found_paths.contains(**p))
            .collect();
        return Err(Error::FilesGone {
            table: table.to_string(),
            count: missing.len(),
            example: missing.first().map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    Ok((manifests, found))
}

fn new_snapshot_id(base: &TableMetadata) -> i64 {
    let mut rng = rand::rng();
    loop {
        let id = rng.random_range(1..i64::MAX);
        if base.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Sets the `total-*` summary properties from the parent's totals plus this snapshot's
/// added/removed counts (left out when the parent has no totals, as Iceberg Java does).
fn add_totals(summary: &mut HashMap<String, String>, parent: Option<&HashMap<String, String>>) {
    const TOTALS: [(&str, &str, &str); 6] = [
        ("total-records", "added-records", "deleted-records"),
        ("total-data-files", "added-data-files", "deleted-data-files"),
        ("total-files-size", "added-files-size", "removed-files-size"),
        (
            "total-delete-files",
            "added-delete-files",
            "removed-delete-files",
        ),
        (
            "total-position-deletes",
            "added-position-deletes",
            "removed-position-deletes",
        ),
        (
            "total-equality-deletes",
            "added-equality-deletes",
            "removed-equality-deletes",
        ),
    ];
    let get = |m: &HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok());
    for (total, added, removed) in TOTALS {
        let base = match parent {
            None => Some(0),
            Some(p) => get(p, total),
        };
        if let Some(base) = base {
            let v = base + get(summary, added).unwrap_or(0) - get(summary, removed).unwrap_or(0);
            summary.insert(total.to_string(), v.max(0).to_string());
        }
    }
}

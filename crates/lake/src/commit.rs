//! floe's Iceberg commit: every writer (loader, aggregates, maintenance) commits through here.
//!
//! iceberg-rust 0.10.1 has no public replace/delete commits and its `Transaction::commit`
//! silently rebases on conflict, so floe builds the snapshot itself with iceberg-rust's public
//! writers (manifest, manifest list, metadata file) and publishes it with a compare-and-swap of
//! the table's metadata location in the catalog.
//!
//! Invariants:
//! - Each attempt starts from the table's *current* metadata. Kafka offsets are re-read and a
//!   batch overlapping what is committed is refused ([`Error::OffsetsAlreadyCommitted`]), so a
//!   message is never committed twice and offsets never go backwards.
//! - A replace/delete re-checks that every file it removes is still live; if not it fails with
//!   [`Error::FilesGone`] (another compaction or retention got there first).
//! - A lost race deletes the attempt's manifests, manifest list and metadata file, waits
//!   (exponential backoff with jitter) and retries.
//! - When the commit definitely failed, the data files it was to add are deleted. When the
//!   outcome is unknown (the catalog connection broke during the swap) the table is re-read:
//!   if the new snapshot is there the commit succeeded, otherwise its files stay for
//!   `floe maintain` to collect as orphans.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestList,
    ManifestListWriter, ManifestStatus, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotSummaryCollector, Summary, TableMetadata, UNASSIGNED_SEQUENCE_NUMBER,
};
use iceberg::{MetadataLocation, TableIdent};
use rand::Rng;

use crate::catalog::Catalog;
use crate::marks::{PositionSet, applied_key, applied_positions};
use crate::offsets::{OffsetRange, committed_offsets, merge_offsets, offsets_key};
use crate::writer::delete_files;
use crate::{Error, Result};

/// What a commit does to the table.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add data files (may be empty: an offsets-only commit).
    Append(Vec<DataFile>),
    /// Swap files for files with the same rows (compaction).
    Replace {
        /// Files that leave the table.
        removed: Vec<DataFile>,
        /// Files that take their place.
        added: Vec<DataFile>,
    },
    /// Remove whole files (metadata-only delete, e.g. retention).
    Delete(Vec<DataFile>),
    /// Remove files and add rewritten ones with fewer rows (retention of straddling files).
    Overwrite {
        /// Files that leave the table.
        removed: Vec<DataFile>,
        /// Rewritten files.
        added: Vec<DataFile>,
    },
}

impl Change {
    fn operation(&self) -> Operation {
        match self {
            Change::Append(_) => Operation::Append,
            Change::Replace { .. } => Operation::Replace,
            Change::Delete(_) => Operation::Delete,
            Change::Overwrite { .. } => Operation::Overwrite,
        }
    }

    fn added(&self) -> &[DataFile] {
        match self {
            Change::Append(a)
            | Change::Replace { added: a, .. }
            | Change::Overwrite { added: a, .. } => a,
            Change::Delete(_) => &[],
        }
    }

    fn removed(&self) -> &[DataFile] {
        match self {
            Change::Append(_) => &[],
            Change::Replace { removed, .. }
            | Change::Delete(removed)
            | Change::Overwrite { removed, .. } => removed,
        }
    }
}

/// Kafka offsets covered by a commit, for one consumer group.
#[derive(Debug, Clone)]
pub struct OffsetsUpdate {
    /// Consumer group (names the summary key).
    pub group: String,
    /// Per partition, the offsets this commit's rows came from.
    pub ranges: Vec<OffsetRange>,
}

/// One commit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The change.
    pub change: Change,
    /// Offsets to record (and to check against what is committed).
    pub offsets: Option<OffsetsUpdate>,
    /// Source positions to record as applied (and to check against what is applied).
    pub applied: Option<AppliedUpdate>,
    /// Extra snapshot summary properties.
    pub properties: HashMap<String, String>,
}

/// Positions a commit applies (see [`crate::marks`]).
#[derive(Debug, Clone)]
pub struct AppliedUpdate {
    /// Names the summary key (`floe.applied.<name>`).
    pub name: String,
    /// The positions.
    pub positions: PositionSet,
}

impl CommitRequest {
    /// An append of `files`.
    pub fn append(files: Vec<DataFile>) -> Self {
        Self {
            change: Change::Append(files),
            offsets: None,
            applied: None,
            properties: HashMap::new(),
        }
    }

    /// Adds offsets to record.
    pub fn with_offsets(mut self, group: impl Into<String>, ranges: Vec<OffsetRange>) -> Self {
        self.offsets = Some(OffsetsUpdate {
            group: group.into(),
            ranges,
        });
        self
    }
}

impl CommitRequest {
    /// Records `positions` as applied under `name`.
    pub fn with_applied(mut self, name: impl Into<String>, positions: PositionSet) -> Self {
        self.applied = Some(AppliedUpdate {
            name: name.into(),
            positions,
        });
        self
    }
}

/// How long to keep trying after losing races.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before giving up with [`Error::CommitConflict`].
    pub max_attempts: u32,
    /// First backoff.
    pub min_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 50,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The result of a successful commit.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The new snapshot.
    pub snapshot_id: i64,
    /// Its sequence number.
    pub sequence_number: i64,
    /// The new metadata file.
    pub metadata_location: String,
    /// The table metadata after the commit.
    pub metadata: TableMetadata,
    /// Attempts made (1 = no conflict).
    pub attempts: u32,
    /// Time from the first attempt to success.
    pub elapsed: Duration,
}

/// Commits to tables of one catalog.
#[derive(Debug, Clone)]
pub struct Committer {
    catalog: Catalog,
    retry: RetryPolicy,
}

/// Files written by one attempt (deleted if the attempt loses).
#[derive(Default)]
struct AttemptFiles(Vec<String>);

impl Committer {
    /// A committer with the default retry policy.
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog,
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Commits `req` to `table`, retrying lost races. On definite failure the request's added
    /// data files are deleted.
    pub async fn commit(&self, table: &TableIdent, req: CommitRequest) -> Result<Committed> {
        let result = self.commit_inner(table, &req).await;
        if let Err(e) = &result
            && !matches!(e, Error::Catalog { .. })
        {
            let file_io = self.catalog.file_io();
            let added = req
                .change
                .added()
                .iter()
                .map(|f| f.file_path().to_string())
                .collect();
            delete_files(file_io, added).await;
        }
        result
    }

    async fn commit_inner(&self, table: &TableIdent, req: &CommitRequest) -> Result<Committed> {
        let started = Instant::now();
        let commit_id = uuid::Uuid::new_v4();
        let file_io = self.catalog.file_io().clone();
        let mut backoff = self.retry.min_backoff;
        for attempt in 1..=self.retry.max_attempts {
            let (base_location, base) = self.catalog.load_metadata(table).await?;
            let mut files = AttemptFiles::default();
            let staged = stage(
                &file_io,
                table,
                &base,
                &base_location,
                req,
                attempt,
                commit_id,
                &mut files,
            )
            .await;
            let (snapshot_id, metadata, expired_logs) = match staged {
                Ok(s) => s,
                Err(e) => {
                    delete_files(&file_io, std::mem::take(&mut files.0)).await;
                    return Err(e);
                }
            };
            match self
                .publish(table, &base_location, &metadata, &mut files)
                .await?
            {
                Published::Swapped(new_location) => {
                    if delete_old_metadata(&metadata) {
                        delete_files(&file_io, expired_logs).await;
                    }
                    let snapshot = metadata
                        .snapshot_by_id(snapshot_id)
                        .expect("committed snapshot is in its metadata");
                    return Ok(Committed {
                        snapshot_id,
                        sequence_number: snapshot.sequence_number(),
                        metadata_location: new_location,
                        metadata,
                        attempts: attempt,
                        elapsed: started.elapsed(),
                    });
                }
                Published::Lost => {}
            }
            tracing::debug!(%table, attempt, "commit lost the race; retrying");
            delete_files(&file_io, std::mem::take(&mut files.0)).await;
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
        Err(Error::CommitConflict {
            table: table.to_string(),
            attempts: self.retry.max_attempts,
        })
    }
}

/// The outcome of one compare-and-swap.
enum Published {
    /// The table now points at the new metadata file.
    Swapped(String),
    /// Another writer got there first; the attempt's files are deleted.
    Lost,
}

impl Committer {
    /// Writes `metadata` next to `base_location` and swaps it in. On a lost race, or a catalog
    /// error after which the swap is known not to have happened, the attempt's files are
    /// deleted and `Lost` is returned.
    async fn publish(
        &self,
        table: &TableIdent,
        base_location: &str,
        metadata: &TableMetadata,
        files: &mut AttemptFiles,
    ) -> Result<Published> {
        let file_io = self.catalog.file_io();
        let new_location = MetadataLocation::from_str(base_location)?
            .with_next_version()
            .with_new_metadata(metadata)
            .to_string();
        files.0.push(new_location.clone());
        if let Err(e) = metadata
            .write_to(file_io, &MetadataLocation::from_str(&new_location)?)
            .await
        {
            delete_files(file_io, std::mem::take(&mut files.0)).await;
            return Err(e.into());
        }
        let swapped = match self
            .catalog
            .swap_metadata_location(table, base_location, &new_location)
            .await
        {
            Ok(s) => s,
            // Unknown outcome: the update may have been applied before the error.
            Err(e) => match self.catalog.find_metadata_location(table).await {
                Ok(Some(loc)) if loc == new_location => true,
                Ok(_) => {
                    tracing::warn!(%table, error = %e, "catalog error during commit; the commit did not land, retrying");
                    false
                }
                Err(_) => return Err(e),
            },
        };
        if swapped {
            Ok(Published::Swapped(new_location))
        } else {
            delete_files(file_io, std::mem::take(&mut files.0)).await;
            Ok(Published::Lost)
        }
    }

    /// Commits a change that adds no snapshot (expiring snapshots, a schema or property
    /// update): `change` derives the new metadata from the current metadata and its location,
    /// or returns `None` when there is nothing to do. Published with the same compare-and-swap
    /// and retries as [`Self::commit`]; `change` runs again on fresh metadata after a lost race.
    pub async fn update_metadata<F>(
        &self,
        table: &TableIdent,
        mut change: F,
    ) -> Result<Option<(String, TableMetadata)>>
    where
        F: FnMut(&str, &TableMetadata) -> Result<Option<iceberg::spec::TableMetadataBuildResult>>,
    {
        let file_io = self.catalog.file_io().clone();
        let mut backoff = self.retry.min_backoff;
        for attempt in 1..=self.retry.max_attempts {
            let (base_location, base) = self.catalog.load_metadata(table).await?;
            let Some(built) = change(&base_location, &base)? else {
                return Ok(None);
            };
            let mut files = AttemptFiles::default();
            match self
                .publish(table, &base_location, &built.metadata, &mut files)
                .await?
            {
                Published::Swapped(location) => {
                    if delete_old_metadata(&built.metadata) {
                        let expired = built
                            .expired_metadata_logs
                            .into_iter()
                            .map(|l| l.metadata_file)
                            .collect();
                        delete_files(&file_io, expired).await;
                    }
                    return Ok(Some((location, built.metadata)));
                }
                Published::Lost => {
                    tracing::debug!(%table, attempt, "metadata update lost the race; retrying");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
        Err(Error::CommitConflict {
            table: table.to_string(),
            attempts: self.retry.max_attempts,
        })
    }
}

/// Identifies this process in snapshot summaries (`floe.writer`): host and pid.
pub fn writer_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    })
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + rand::rng().random_range(0..=ms.max(1)))
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

/// `write.metadata.delete-after-commit.enabled`: delete metadata files that fall out of the
/// metadata log (`write.metadata.previous-versions-max`, default 100).
fn delete_old_metadata(metadata: &TableMetadata) -> bool {
    metadata
        .properties()
        .get("write.metadata.delete-after-commit.enabled")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Builds the new snapshot on top of `base` and returns it in new metadata (not yet written),
/// with the metadata files that fell out of the metadata log.
#[allow(clippy::too_many_arguments)]
async fn stage(
    file_io: &FileIO,
    table: &TableIdent,
    base: &TableMetadata,
    base_location: &str,
    req: &CommitRequest,
    attempt: u32,
    commit_id: uuid::Uuid,
    files: &mut AttemptFiles,
) -> Result<(i64, TableMetadata, Vec<String>)> {
    if base.format_version() == FormatVersion::V1 {
        return Err(Error::Config(format!(
            "{table} is an Iceberg v1 table; floe writes v2 tables (upgrade it with ALTER TABLE … SET PROPERTIES format_version = 2)"
        )));
    }
    let table_name = table.to_string();
    let mut summary_props: HashMap<String, String> = req.properties.clone();
    if let Some(update) = &req.offsets {
        let committed = committed_offsets(base, &update.group)?;
        let merged = merge_offsets(&table_name, &committed, &update.ranges)?;
        summary_props.insert(
            offsets_key(&update.group),
            serde_json::to_string(&merged).expect("offsets serialize"),
        );
    }
    if let Some(update) = &req.applied {
        let mut applied = applied_positions(base, &update.name)?;
        if let Some((source, partition, offset)) = applied.first_overlap(&update.positions) {
            return Err(Error::AlreadyApplied {
                table: table_name,
                name: update.name.clone(),
                example: format!("{source}[{partition}]@{offset}"),
            });
        }
        applied.extend(&update.positions);
        summary_props.insert(
            applied_key(&update.name),
            serde_json::to_string(&applied).expect("positions serialize"),
        );
    }

    // Carry floe's state (offsets of every group, applied positions) forward, so the newest
    // snapshot always holds all of it and snapshot expiry never strands it in an old one.
    for (k, v) in floe_state(base) {
        summary_props.entry(k).or_insert(v);
    }

    let parent = base.current_snapshot();
    let snapshot_id = new_snapshot_id(base);
    let sequence_number = base.next_sequence_number();
    let schema = base.current_schema().clone();
    let spec = base.default_partition_spec().clone();
    let metadata_dir = format!("{}/metadata", base.location());

    // Carry the parent's manifests, rewriting those that hold removed files.
    let mut manifests: Vec<ManifestFile> = Vec::new();
    let removed: HashSet<&str> = req.change.removed().iter().map(|f| f.file_path()).collect();
    let mut found: HashSet<String> = HashSet::new();
    let mut collector = SnapshotSummaryCollector::default();
    if let Some(parent) = parent {
        let list_bytes = file_io.new_input(parent.manifest_list())?.read().await?;
        let list = ManifestList::parse_with_version(&list_bytes, base.format_version())?;
        let entries: Vec<ManifestFile> = list.consume_entries().into_iter().collect();
        for (n, manifest_file) in entries.into_iter().enumerate() {
            if removed.is_empty() || manifest_file.content != ManifestContentType::Data {
                manifests.push(manifest_file);
                continue;
            }
            let manifest = manifest_file.load_manifest(file_io).await?;
            let hits = manifest
                .entries()
                .iter()
                .any(|e| e.is_alive() && removed.contains(e.file_path()));
            if !hits {
                manifests.push(manifest_file);
                continue;
            }
            let spec_id = manifest_file.partition_spec_id;
            let manifest_spec = base.partition_spec_by_id(spec_id).cloned().ok_or_else(|| {
                Error::Config(format!(
                    "{table}: manifest uses unknown partition spec {spec_id}"
                ))
            })?;
            let path = format!("{metadata_dir}/{commit_id}-r{attempt}-{n}.avro");
            files.0.push(path.clone());
            let mut writer = ManifestWriterBuilder::new(
                file_io.new_output(&path)?,
                Some(snapshot_id),
                schema.clone(),
                manifest_spec.as_ref().clone(),
            )
            .build_v2_data();
            for entry in manifest.entries() {
                if !entry.is_alive() {
                    continue;
                }
                let seq = entry.sequence_number().unwrap_or(0);
                let file_seq = entry.file_sequence_number;
                if removed.contains(entry.file_path()) {
                    found.insert(entry.file_path().to_string());
                    collector.remove_file(entry.data_file(), schema.clone(), manifest_spec.clone());
                    writer.add_delete_file(
                        entry.data_file().clone(),
                        seq,
                        file_seq.or(Some(seq)),
                    )?;
                } else {
                    let added_by = entry
                        .snapshot_id()
                        .unwrap_or(manifest_file.added_snapshot_id);
                    debug_assert!(entry.status() != ManifestStatus::Deleted);
                    writer.add_existing_file(
                        entry.data_file().clone(),
                        added_by,
                        seq,
                        file_seq.or(Some(seq)),
                    )?;
                }
            }
            manifests.push(writer.write_manifest_file().await?);
        }
    }
    if found.len() != removed.len() {
        let missing: Vec<&&str> = removed.iter().filter(|p| !found.contains(**p)).collect();
        return Err(Error::FilesGone {
            table: table_name,
            count: missing.len(),
            example: missing.first().map(|s| s.to_string()).unwrap_or_default(),
        });
    }

    let added = req.change.added();
    if !added.is_empty() {
        let path = format!("{metadata_dir}/{commit_id}-m{attempt}.avro");
        files.0.push(path.clone());
        let mut writer = ManifestWriterBuilder::new(
            file_io.new_output(&path)?,
            Some(snapshot_id),
            schema.clone(),
            spec.as_ref().clone(),
        )
        .build_v2_data();
        for f in added {
            collector.add_file(f, schema.clone(), spec.clone());
            writer.add_file(f.clone(), UNASSIGNED_SEQUENCE_NUMBER)?;
        }
        // New manifests first: readers see the newest data early.
        manifests.insert(0, writer.write_manifest_file().await?);
    }

    let list_path = format!("{metadata_dir}/snap-{snapshot_id}-{attempt}-{commit_id}.avro");
    files.0.push(list_path.clone());
    let mut list_writer = ManifestListWriter::v2(
        file_io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        parent.map(|p| p.snapshot_id()),
        sequence_number,
    );
    list_writer.add_manifests(manifests.into_iter())?;
    list_writer.close().await?;

    let mut summary = collector.build();
    add_totals(
        &mut summary,
        parent.map(|p| &p.summary().additional_properties),
    );
    summary.extend(summary_props);
    summary.insert("floe.version".into(), env!("CARGO_PKG_VERSION").to_string());
    summary.insert("floe.writer".into(), writer_id().to_string());
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
        .with_schema_id(schema.schema_id())
        .build();
    let built = base
        .clone()
        .into_builder(Some(base_location.to_string()))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)?
        .build()?;
    let expired = built
        .expired_metadata_logs
        .into_iter()
        .map(|l| l.metadata_file)
        .collect();
    Ok((snapshot_id, built.metadata, expired))
}

/// floe's state keys (`floe.offsets.*`, `floe.applied.*`) with their newest values along the
/// current snapshot's ancestry.
pub fn floe_state(metadata: &TableMetadata) -> HashMap<String, String> {
    let mut state = HashMap::new();
    for (_, key, value) in floe_state_holders(metadata) {
        state.insert(key, value);
    }
    state
}

/// For each floe state key, the snapshot holding its newest value (walking the current
/// snapshot's ancestry): (snapshot id, key, value).
pub fn floe_state_holders(metadata: &TableMetadata) -> Vec<(i64, String, String)> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for s in crate::offsets::ancestry(metadata) {
        for (k, v) in &s.summary().additional_properties {
            if (k.starts_with(crate::offsets::OFFSETS_KEY_PREFIX)
                || k.starts_with(crate::marks::APPLIED_KEY_PREFIX))
                && seen.insert(k.as_str())
            {
                out.push((s.snapshot_id(), k.clone(), v.clone()));
            }
        }
    }
    out
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

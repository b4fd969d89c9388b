//! Snapshot expiry: drop old snapshots from the metadata, then delete the manifest lists,
//! manifests and data files that only they referenced.
//!
//! Which snapshots are kept, as Iceberg Java's `expire_snapshots` decides:
//! - of each branch (main included), the newest `min-snapshots-to-keep` of its ancestry and
//!   those younger than its `max-snapshot-age-ms`; the head of every branch and tag;
//! - anything else younger than the age limit.
//!
//! The limits come from, first to last: the branch's own retention (`refs` in the metadata),
//! `--older-than` / `--retain-last`, the table's `history.expire.max-snapshot-age-ms` /
//! `history.expire.min-snapshots-to-keep`, floe's defaults (7 days, 10). Tags and branches
//! other than main older than their `max-ref-age-ms` (or `history.expire.max-ref-age-ms`) are
//! removed first. floe's own state (offsets, replay marks) is in the table's properties and
//! needs no snapshot; a table last written by an earlier floe version, whose state is in
//! snapshot summaries, gets it moved into its properties by the same metadata update.
//!
//! Safety rules:
//! - A file is deleted only if an expired snapshot referenced it and no kept snapshot does,
//!   computed from the exact metadata the expiry replaced (compare-and-swap), and only after the
//!   new metadata is in place. Files being written by a loader belong to no snapshot yet and are
//!   never considered; a replace racing the expiry builds on the head, which is always kept.

use std::collections::HashSet;
use std::time::Duration;

use floe_lake::{Committer, parse_table_ident};
use iceberg::spec::{SnapshotRef, SnapshotReference, SnapshotRetention, TableMetadata};

use crate::Result;
use crate::files::ManifestCache;

/// Expires snapshots of one table.
#[derive(Debug, Clone)]
pub struct ExpireSnapshots {
    table: String,
    older_than: Option<Duration>,
    retain_last: Option<usize>,
    dry_run: bool,
}

/// floe's default age limit when neither the caller nor the table sets one.
pub const DEFAULT_OLDER_THAN: Duration = Duration::from_secs(7 * 24 * 3600);
/// floe's default number of snapshots kept when neither the caller nor the table sets one.
pub const DEFAULT_RETAIN_LAST: usize = 10;

/// What an expiry did (or would do, in a dry run).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExpireReport {
    /// The table.
    pub table: String,
    /// Snapshots before.
    pub snapshots_before: usize,
    /// Tags and branches removed for being older than their `max-ref-age-ms`.
    pub refs_removed: Vec<String>,
    /// Snapshots after.
    pub snapshots_after: usize,
    /// Manifest lists deleted.
    pub manifest_lists_deleted: usize,
    /// Manifests deleted.
    pub manifests_deleted: usize,
    /// Data files deleted.
    pub data_files_deleted: usize,
    /// Bytes of those data files.
    pub data_bytes_deleted: u64,
    /// Nothing was changed.
    pub dry_run: bool,
}

impl ExpireSnapshots {
    /// Limits from the table's `history.expire.*` properties, else 7 days and 10 snapshots.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            older_than: None,
            retain_last: None,
            dry_run: false,
        }
    }

    /// Snapshots younger than this are kept (overrides `history.expire.max-snapshot-age-ms`).
    pub fn older_than(mut self, d: Duration) -> Self {
        self.older_than = Some(d);
        self
    }

    /// The newest `n` snapshots of each branch are kept whatever their age, at least 1
    /// (overrides `history.expire.min-snapshots-to-keep`).
    pub fn retain_last(mut self, n: usize) -> Self {
        self.retain_last = Some(n.max(1));
        self
    }

    /// Report only.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Runs the expiry.
    pub async fn execute(&self, committer: &Committer) -> Result<ExpireReport> {
        let catalog = committer.catalog();
        let ident = parse_table_ident(&self.table)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut report = ExpireReport {
            table: self.table.clone(),
            dry_run: self.dry_run,
            ..Default::default()
        };

        // The metadata the expiry was computed from (and, when committed, replaced).
        let base: TableMetadata;
        let expired: Vec<i64>;
        if self.dry_run {
            base = catalog.load_metadata(&ident).await?.1;
            let plan = self.plan(&base, now_ms);
            report.refs_removed = plan.refs;
            expired = plan.snapshots;
        } else {
            let mut seen: Option<(TableMetadata, Plan)> = None;
            let updated = committer
                .update_metadata(&ident, |location, current| {
                    let plan = self.plan(current, now_ms);
                    let legacy = floe_lake::state::legacy_state(current);
                    seen = Some((current.clone(), plan.clone()));
                    if plan.snapshots.is_empty() && plan.refs.is_empty() {
                        return Ok(None);
                    }
                    let mut builder = current.clone().into_builder(Some(location.to_string()));
                    for r in &plan.refs {
                        builder = builder.remove_ref(r);
                    }
                    Ok(Some(
                        builder
                            .remove_snapshots(&plan.snapshots)
                            .set_properties(legacy.into_iter().collect())?
                            .build()?,
                    ))
                })
                .await?;
            let (b, plan) = seen.expect("update_metadata runs the change at least once");
            base = b;
            if updated.is_some() {
                report.refs_removed = plan.refs;
                expired = plan.snapshots;
            } else {
                expired = Vec::new();
            }
        }
        report.snapshots_before = base.snapshots().len();
        report.snapshots_after = report.snapshots_before - expired.len();
        if expired.is_empty() {
            return Ok(report);
        }

        let file_io = catalog.file_io();
        let gone: HashSet<i64> = expired.iter().copied().collect();
        let (old, kept): (Vec<&SnapshotRef>, Vec<&SnapshotRef>) = base
            .snapshots()
            .partition(|s| gone.contains(&s.snapshot_id()));
        let mut cache = ManifestCache::default();
        let keep = cache.reachable(file_io, &base, kept).await?;
        let drop = cache.reachable(file_io, &base, old).await?;
        let lists: Vec<String> = drop
            .manifest_lists
            .difference(&keep.manifest_lists)
            .cloned()
            .collect();
        let manifests: Vec<String> = drop
            .manifests
            .difference(&keep.manifests)
            .cloned()
            .collect();
        let data: Vec<(String, u64)> = drop
            .live_files
            .iter()
            .filter(|(p, _)| !keep.live_files.contains_key(*p))
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        report.manifest_lists_deleted = lists.len();
        report.manifests_deleted = manifests.len();
        report.data_files_deleted = data.len();
        report.data_bytes_deleted = data.iter().map(|(_, s)| s).sum();
        if !self.dry_run {
            // Data first, then manifests, then lists: an interrupted run leaves only files
            // that are unreferenced either way (orphans for the next run).
            let data_paths = data.into_iter().map(|(p, _)| p).collect();
            floe_lake::writer::delete_files(file_io, data_paths).await;
            floe_lake::writer::delete_files(file_io, manifests).await;
            floe_lake::writer::delete_files(file_io, lists).await;
            tracing::info!(
                table = %self.table,
                snapshots_expired = expired.len(),
                data_files_deleted = report.data_files_deleted,
                bytes = report.data_bytes_deleted,
                "snapshots expired"
            );
        }
        Ok(report)
    }

    /// The refs and snapshots to remove from `metadata`.
    fn plan(&self, metadata: &TableMetadata, now_ms: i64) -> Plan {
        let props = metadata.properties();
        let prop = |k: &str| props.get(k).and_then(|v| v.trim().parse::<i64>().ok());
        let max_age_ms = self
            .older_than
            .map(|d| d.as_millis() as i64)
            .or_else(|| prop("history.expire.max-snapshot-age-ms"))
            .unwrap_or(DEFAULT_OLDER_THAN.as_millis() as i64);
        let min_keep = self
            .retain_last
            .or_else(|| prop("history.expire.min-snapshots-to-keep").map(|n| n.max(1) as usize))
            .unwrap_or(DEFAULT_RETAIN_LAST);
        let max_ref_age_ms = prop("history.expire.max-ref-age-ms");

        let mut plan = Plan::default();
        let mut keep: HashSet<i64> = metadata.current_snapshot_id().into_iter().collect();
        for (name, r) in refs(metadata) {
            let Some(head) = metadata.snapshot_by_id(r.snapshot_id) else {
                continue;
            };
            let (own_min, own_age, own_ref_age) = match r.retention {
                SnapshotRetention::Branch {
                    min_snapshots_to_keep,
                    max_snapshot_age_ms,
                    max_ref_age_ms,
                } => (min_snapshots_to_keep, max_snapshot_age_ms, max_ref_age_ms),
                SnapshotRetention::Tag { max_ref_age_ms } => (None, None, max_ref_age_ms),
            };
            if name != iceberg::spec::MAIN_BRANCH
                && let Some(age) = own_ref_age.or(max_ref_age_ms)
                && now_ms - head.timestamp_ms() > age
            {
                plan.refs.push(name);
                continue;
            }
            keep.insert(r.snapshot_id);
            if !r.is_branch() {
                continue;
            }
            let min = own_min.map(|n| n.max(1) as usize).unwrap_or(min_keep);
            let cutoff = now_ms - own_age.unwrap_or(max_age_ms);
            let chain = std::iter::successors(Some(head), |s| {
                s.parent_snapshot_id()
                    .and_then(|id| metadata.snapshot_by_id(id))
            })
            .take(metadata.snapshots().len());
            for (n, s) in chain.enumerate() {
                if n < min || s.timestamp_ms() >= cutoff {
                    keep.insert(s.snapshot_id());
                } else if n >= min {
                    break;
                }
            }
        }
        // A current snapshot no ref names (metadata written without refs): its ancestry.
        if !refs(metadata)
            .iter()
            .any(|(n, _)| n == iceberg::spec::MAIN_BRANCH)
        {
            for (n, s) in floe_lake::state::ancestry(metadata).enumerate() {
                if n < min_keep || s.timestamp_ms() >= now_ms - max_age_ms {
                    keep.insert(s.snapshot_id());
                }
            }
        }
        // Snapshots no kept ref reaches: kept while young.
        plan.snapshots = metadata
            .snapshots()
            .filter(|s| !keep.contains(&s.snapshot_id()) && s.timestamp_ms() < now_ms - max_age_ms)
            .map(|s| s.snapshot_id())
            .collect();
        plan.snapshots.sort_unstable();
        plan.refs.sort();
        plan
    }
}

/// What an expiry removes.
#[derive(Debug, Clone, Default)]
struct Plan {
    refs: Vec<String>,
    snapshots: Vec<i64>,
}

/// The table's branches and tags (`refs` is not public in iceberg-rust 0.10.1; it is read
/// from the metadata's JSON form).
fn refs(metadata: &TableMetadata) -> Vec<(String, SnapshotReference)> {
    let Ok(json) = serde_json::to_value(metadata) else {
        return Vec::new();
    };
    let Some(refs) = json.get("refs").and_then(|r| r.as_object()) else {
        return Vec::new();
    };
    refs.iter()
        .filter_map(|(name, r)| {
            serde_json::from_value::<SnapshotReference>(r.clone())
                .ok()
                .map(|r| (name.clone(), r))
        })
        .collect()
}

//! Snapshot expiry: drop old snapshots from the metadata, then delete the manifest lists,
//! manifests and data files that only they referenced.
//!
//! Safety rules:
//! - Kept: every snapshot of the current branch's ancestry that is among the newest
//!   `retain_last` or younger than `older_than`; the head of every branch and tag; snapshots off
//!   the main line younger than `older_than`; and the snapshot holding the newest value of each
//!   floe state key (`floe.offsets.*`, `floe.applied.*`) — so loaders always find their offsets.
//! - A file is deleted only if an expired snapshot referenced it and no kept snapshot does,
//!   computed from the exact metadata the expiry replaced (compare-and-swap), and only after the
//!   new metadata is in place. Files being written by a loader belong to no snapshot yet and are
//!   never considered; a replace racing the expiry builds on the head, which is always kept.

use std::collections::HashSet;
use std::time::Duration;

use floe_lake::commit::floe_state_holders;
use floe_lake::{Committer, parse_table_ident};
use iceberg::spec::{SnapshotRef, TableMetadata};

use crate::Result;
use crate::files::ManifestCache;

/// Expires snapshots of one table.
#[derive(Debug, Clone)]
pub struct ExpireSnapshots {
    table: String,
    older_than: Duration,
    retain_last: usize,
    dry_run: bool,
}

/// What an expiry did (or would do, in a dry run).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExpireReport {
    /// The table.
    pub table: String,
    /// Snapshots before.
    pub snapshots_before: usize,
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
    /// Defaults: expire snapshots older than 7 days, keep at least the last 10.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            older_than: Duration::from_secs(7 * 24 * 3600),
            retain_last: 10,
            dry_run: false,
        }
    }

    /// Snapshots younger than this are kept.
    pub fn older_than(mut self, d: Duration) -> Self {
        self.older_than = d;
        self
    }

    /// The newest `n` snapshots of the current branch are kept whatever their age (at least 1).
    pub fn retain_last(mut self, n: usize) -> Self {
        self.retain_last = n.max(1);
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
        let cutoff_ms = now_ms - self.older_than.as_millis() as i64;
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
            expired = self.to_expire(&base, cutoff_ms);
        } else {
            let mut seen: Option<(TableMetadata, Vec<i64>)> = None;
            let updated = committer
                .update_metadata(&ident, |location, current| {
                    let ids = self.to_expire(current, cutoff_ms);
                    seen = Some((current.clone(), ids.clone()));
                    if ids.is_empty() {
                        return Ok(None);
                    }
                    Ok(Some(
                        current
                            .clone()
                            .into_builder(Some(location.to_string()))
                            .remove_snapshots(&ids)
                            .build()?,
                    ))
                })
                .await?;
            let (b, ids) = seen.expect("update_metadata runs the change at least once");
            base = b;
            expired = if updated.is_some() { ids } else { Vec::new() };
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

    /// The snapshot ids to expire from `metadata`.
    fn to_expire(&self, metadata: &TableMetadata, cutoff_ms: i64) -> Vec<i64> {
        let mut keep: HashSet<i64> = HashSet::new();
        // The current branch: the newest `retain_last`, and all younger than the cutoff.
        for (n, s) in floe_lake::offsets::ancestry(metadata).enumerate() {
            if n < self.retain_last || s.timestamp_ms() >= cutoff_ms {
                keep.insert(s.snapshot_id());
            }
        }
        // Heads of all branches and tags.
        keep.extend(ref_heads(metadata));
        // floe's state lives on in the snapshot holding each key's newest value.
        keep.extend(
            floe_state_holders(metadata)
                .into_iter()
                .map(|(id, _, _)| id),
        );
        // Anything else young enough.
        let mut out: Vec<i64> = metadata
            .snapshots()
            .filter(|s| !keep.contains(&s.snapshot_id()) && s.timestamp_ms() < cutoff_ms)
            .map(|s| s.snapshot_id())
            .collect();
        out.sort_unstable();
        out
    }
}

/// The snapshot ids that branches and tags point at (`refs` is not public in iceberg-rust
/// 0.10.1; it is read from the metadata's JSON form).
fn ref_heads(metadata: &TableMetadata) -> Vec<i64> {
    let mut heads: Vec<i64> = metadata.current_snapshot_id().into_iter().collect();
    if let Ok(json) = serde_json::to_value(metadata)
        && let Some(refs) = json.get("refs").and_then(|r| r.as_object())
    {
        heads.extend(
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(|v| v.as_i64())),
        );
    }
    heads
}

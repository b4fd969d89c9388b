//! Manifest rewrite: the current snapshot's manifests, rewritten clustered by partition into
//! as few as `commit.manifest.target-size-bytes` allows (Iceberg's `rewrite_manifests`).
//!
//! Appends merge small manifests as they go ([`floe_lake::commit::manifests`]); this step
//! finishes the job after compaction and retention: their rewritten manifests hold entries of
//! many partitions and entries marking removals, and a scan that filters on the partition
//! reads every one of them. After the rewrite, each manifest covers a narrow run of
//! partitions, holds only live files, and scan planning prunes the others by their partition
//! bounds. Data files are not touched; the commit is an Iceberg `replace` snapshot.
//!
//! Skipped when it would change nothing worth a snapshot: every content type and partition
//! spec already fits in the fewest manifests its size allows, and none holds a removed entry.

use std::collections::HashMap;

use floe_lake::commit::{Change, CommitRequest, ManifestProps};
use floe_lake::scan::current_manifests;
use floe_lake::{Committer, parse_table_ident};
use iceberg::spec::{ManifestContentType, ManifestFile};

use crate::Result;

/// Rewrites the manifests of one table.
#[derive(Debug, Clone)]
pub struct RewriteManifests {
    table: String,
    dry_run: bool,
}

/// What a manifest rewrite did (or would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewriteManifestsReport {
    /// The table.
    pub table: String,
    /// Manifests in the current snapshot before.
    pub manifests_before: usize,
    /// Manifests after.
    pub manifests_after: usize,
    /// Of those before, how many held entries of removed files.
    pub with_removed_entries: usize,
    /// Whether a rewrite was committed (or, in a dry run, would be).
    pub rewritten: bool,
    /// Nothing was changed.
    pub dry_run: bool,
}

impl RewriteManifests {
    /// A rewrite of `table`'s manifests.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            dry_run: false,
        }
    }

    /// Report only.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Runs the rewrite.
    pub async fn execute(&self, committer: &Committer) -> Result<RewriteManifestsReport> {
        let ident = parse_table_ident(&self.table)?;
        let (_, metadata) = committer.catalog().load_metadata(&ident).await?;
        floe_lake::compat::check_format(&self.table, &metadata)?;
        let manifests = current_manifests(committer.catalog().file_io(), &metadata).await?;
        let mut report = RewriteManifestsReport {
            table: self.table.clone(),
            manifests_before: manifests.len(),
            manifests_after: manifests.len(),
            with_removed_entries: manifests
                .iter()
                .filter(|m| m.deleted_files_count.unwrap_or(0) > 0)
                .count(),
            dry_run: self.dry_run,
            ..Default::default()
        };
        let props = ManifestProps::of(metadata.properties());
        if !worth_rewriting(&manifests, props) {
            return Ok(report);
        }
        report.rewritten = true;
        if self.dry_run {
            return Ok(report);
        }
        let mut req = CommitRequest::new(Change::RewriteManifests);
        req.properties
            .insert("floe.operation".into(), "rewrite-manifests".into());
        let committed = committer.commit(&ident, req).await?;
        floe_lake::metrics::record_commit(&self.table, &committed);
        report.manifests_after =
            current_manifests(committer.catalog().file_io(), &committed.metadata)
                .await?
                .len();
        tracing::info!(
            table = %self.table,
            before = report.manifests_before,
            after = report.manifests_after,
            "manifests rewritten"
        );
        Ok(report)
    }
}

/// Whether some content type and spec has more manifests than its bytes need, or a manifest
/// holds removed entries.
fn worth_rewriting(manifests: &[ManifestFile], props: ManifestProps) -> bool {
    if manifests
        .iter()
        .any(|m| m.deleted_files_count.unwrap_or(0) > 0)
    {
        return true;
    }
    let mut groups: HashMap<(bool, i32), (usize, u64)> = HashMap::new();
    for m in manifests {
        let g = groups
            .entry((m.content == ManifestContentType::Data, m.partition_spec_id))
            .or_default();
        g.0 += 1;
        g.1 += m.manifest_length.max(0) as u64;
    }
    groups
        .values()
        .any(|(n, bytes)| *n as u64 > bytes.div_ceil(props.target_size_bytes).max(1))
}

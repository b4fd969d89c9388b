//! Orphan-file removal: files under the table's location that no metadata references.
//!
//! Safety rule: a file is removed only if it is older than `older_than` (default 3 days). A
//! loader or a compaction writes its data files and manifests *before* committing them, so a
//! file that is unreferenced now may be referenced a moment later; the age guard must exceed the
//! longest write-to-commit time. References are read from the current metadata file, every
//! metadata file in its log, every snapshot's manifest list and manifests (including entries
//! that record removals) and statistics files — the same set Iceberg's `remove_orphan_files`
//! keeps.

use std::time::Duration;

use floe_lake::{Committer, parse_table_ident};

use crate::Result;
use crate::files::{canonical, list_files, referenced_files};

/// Removes orphan files of one table.
#[derive(Debug, Clone)]
pub struct RemoveOrphans {
    table: String,
    older_than: Duration,
    dry_run: bool,
}

/// What orphan removal did (or would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OrphansReport {
    /// The table.
    pub table: String,
    /// Files under the table location.
    pub files_listed: usize,
    /// Files the metadata references.
    pub files_referenced: usize,
    /// Unreferenced files younger than the age guard (left alone).
    pub too_young: usize,
    /// Orphans removed.
    pub removed: Vec<String>,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Nothing was changed.
    pub dry_run: bool,
}

impl RemoveOrphans {
    /// Default age guard: 3 days.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            older_than: Duration::from_secs(3 * 24 * 3600),
            dry_run: false,
        }
    }

    /// Only files older than this are removed.
    pub fn older_than(mut self, d: Duration) -> Self {
        self.older_than = d;
        self
    }

    /// Report only.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Runs the removal.
    pub async fn execute(&self, committer: &Committer) -> Result<OrphansReport> {
        let catalog = committer.catalog();
        let ident = parse_table_ident(&self.table)?;
        // List first, then read the references: a file committed between the two steps is
        // then seen as referenced (it was listed before and is referenced after).
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.older_than).unwrap_or(chrono::Duration::MAX);
        let (location, metadata) = catalog.load_metadata(&ident).await?;
        let listed = list_files(metadata.location(), catalog.s3()).await?;
        let (location, metadata) = match catalog.load_metadata(&ident).await {
            Ok(m) => m,
            Err(_) => (location, metadata),
        };
        let referenced = referenced_files(catalog.file_io(), &location, &metadata).await?;
        let mut report = OrphansReport {
            table: self.table.clone(),
            files_listed: listed.len(),
            files_referenced: referenced.len(),
            dry_run: self.dry_run,
            ..Default::default()
        };
        let mut doomed = Vec::new();
        for f in listed {
            if referenced.contains(&canonical(&f.location)) {
                continue;
            }
            if f.modified > cutoff {
                report.too_young += 1;
                continue;
            }
            report.bytes_removed += f.size;
            doomed.push(f.location);
        }
        doomed.sort();
        if !self.dry_run && !doomed.is_empty() {
            floe_lake::writer::delete_files(catalog.file_io(), doomed.clone()).await;
            tracing::info!(table = %self.table, files = doomed.len(), bytes = report.bytes_removed, "orphan files removed");
        }
        report.removed = doomed;
        Ok(report)
    }
}

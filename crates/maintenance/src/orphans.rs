//! Orphan-file removal: files under the table's location that no metadata references.
//!
//! Safety rule: a file is removed only if it is older than `older_than` (default 3 days). A
//! loader or a compaction writes its data files and manifests *before* committing them, so a
//! file that is unreferenced now may be referenced a moment later; the age guard must exceed the
//! longest write-to-commit time. References are read from the current metadata file, every
//! metadata file in its log, every snapshot's manifest list and manifests (including entries
//! that record removals) and statistics files — the same set Iceberg's `remove_orphan_files`
//! keeps.
//!
//! Other tables are never touched. A table may sit inside another's location (a dead-letter
//! table `lake.events.dlq` lives in `…/lake/events/dlq`, inside `lake.events`' folder): every
//! file under another table's location is left alone, and the files referenced by any table
//! of the catalog whose locations overlap this one (nested either way) count as referenced.
//! Locations are compared on whole path segments, so `…/events_v2` is not inside `…/events`.
//!
//! The age guard has a floor of [`MIN_AGE`]: below it a file still being written by a loader
//! or a compaction (or by another engine) could be taken for an orphan; going lower takes
//! [`RemoveOrphans::force`].

use std::time::Duration;

use floe_lake::{Committer, parse_table_ident};

use crate::files::{canonical, list_files, referenced_files};
use crate::{Error, Result};

/// The smallest age guard allowed without [`RemoveOrphans::force`].
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// Removes orphan files of one table.
#[derive(Debug, Clone)]
pub struct RemoveOrphans {
    table: String,
    older_than: Duration,
    dry_run: bool,
    force: bool,
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
    /// Files left alone because they lie in another table's location.
    pub other_tables_files: usize,
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
            force: false,
        }
    }

    /// Allows an age guard below [`MIN_AGE`].
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
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
        if self.older_than < MIN_AGE && !self.force && !self.dry_run {
            return Err(Error::Config(format!(
                "orphan age {} is below the {} floor: files being written and not yet committed \
                 (by floe or another engine) would be deleted; use an age of at least 1h, or \
                 --force if nothing writes to {} now",
                humantime_secs(self.older_than),
                humantime_secs(MIN_AGE),
                self.table
            )));
        }
        // List first, then read the references: a file committed between the two steps is
        // then seen as referenced (it was listed before and is referenced after).
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.older_than).unwrap_or(chrono::Duration::MAX);
        let (location, metadata) = catalog.load_metadata(&ident).await?;
        let (s3, token) = catalog.s3_for(metadata.location());
        let listed = list_files(metadata.location(), &s3, token.as_deref()).await?;
        let (location, metadata) = match catalog.load_metadata(&ident).await {
            Ok(m) => m,
            Err(_) => (location, metadata),
        };
        let mut referenced = referenced_files(catalog.file_io(), &location, &metadata).await?;
        let own = canonical(metadata.location());
        let mut nested: Vec<String> = Vec::new();
        for other in catalog.list_tables().await? {
            if other == ident {
                continue;
            }
            let (other_location, other_meta) = match catalog.load_metadata(&other).await {
                Ok(m) => m,
                // A table whose metadata cannot be read: everything under the folder holding
                // its metadata folder is left alone; with no location at all, nothing is
                // removed.
                Err(e) => match catalog.find_metadata_location(&other).await {
                    Ok(Some(m)) if m.contains("/metadata/") => {
                        let root = canonical(&m[..m.rfind("/metadata/").unwrap_or(m.len())]);
                        tracing::warn!(table = %self.table, other = %other, error = %e, "another table's metadata is unreadable; its folder is left alone");
                        if is_within(&root, &own) {
                            nested.push(root);
                        }
                        continue;
                    }
                    _ => {
                        return Err(Error::Config(format!(
                            "{}: table {other} cannot be read ({e}), so its files cannot be told apart; orphans not removed",
                            self.table
                        )));
                    }
                },
            };
            let roots = table_roots(&other_meta);
            if roots.iter().any(|r| is_within(r, &own)) {
                nested.extend(roots.iter().filter(|r| is_within(r, &own)).cloned());
            }
            if roots
                .iter()
                .any(|r| is_within(r, &own) || is_within(&own, r))
            {
                referenced.extend(
                    referenced_files(catalog.file_io(), &other_location, &other_meta).await?,
                );
            }
        }
        let mut report = OrphansReport {
            table: self.table.clone(),
            files_listed: listed.len(),
            files_referenced: referenced.len(),
            dry_run: self.dry_run,
            ..Default::default()
        };
        let mut doomed = Vec::new();
        for f in listed {
            let c = canonical(&f.location);
            if referenced.contains(&c) {
                continue;
            }
            if nested.iter().any(|n| is_within(&c, n)) {
                report.other_tables_files += 1;
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

/// Where a table keeps files: its location, and its data and metadata paths when set apart.
fn table_roots(metadata: &iceberg::spec::TableMetadata) -> Vec<String> {
    let mut roots = vec![canonical(metadata.location())];
    for key in [
        "write.data.path",
        "write.metadata.path",
        "write.object-storage.path",
    ] {
        if let Some(p) = metadata.properties().get(key) {
            roots.push(canonical(p));
        }
    }
    roots
}

/// Whether `path` is `dir` or lies under it, on whole path segments.
fn is_within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn humantime_secs(d: Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_nest_on_whole_segments() {
        assert!(is_within(
            "file:///w/lake/events/dlq/data/a.parquet",
            "file:///w/lake/events"
        ));
        assert!(is_within("file:///w/lake/events", "file:///w/lake/events/"));
        assert!(!is_within(
            "file:///w/lake/events_v2/a.parquet",
            "file:///w/lake/events"
        ));
        assert!(!is_within("s3://b/lake/eventsx", "s3://b/lake/events"));
    }
}

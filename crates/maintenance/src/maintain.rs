//! `floe maintain` on one table: the steps chosen, in the one safe order — compact → retention
//! → rewrite manifests → expire snapshots → remove orphans. Compaction and retention leave
//! files only older snapshots reference; expiry then drops those snapshots, and orphan
//! removal runs last so it never races a file a step before it just wrote.

use std::time::Duration;

use floe_lake::{Committer, parse_table_ident};

use crate::compact::{Compact, CompactReport, Progress};
use crate::expire::{ExpireReport, ExpireSnapshots};
use crate::manifests::{RewriteManifests, RewriteManifestsReport};
use crate::orphans::{OrphansReport, RemoveOrphans};
use crate::retention::{Retention, RetentionReport};
use crate::{Error, Result};

/// The table property holding a table's retention (`30d`), used when every step runs.
pub const RETENTION_PROPERTY: &str = "floe.retention";

/// Which steps run, and how. With no step chosen, every step runs (retention when the table
/// property [`RETENTION_PROPERTY`] sets it).
#[derive(Debug, Clone, Default)]
pub struct Steps {
    /// Compact small files.
    pub compact: bool,
    /// Remove rows older than this (and, with every step, the table's own retention).
    pub retention: Option<Duration>,
    /// Rewrite the manifests, clustered by partition.
    pub rewrite_manifests: bool,
    /// Expire snapshots.
    pub expire_snapshots: bool,
    /// Remove files no snapshot references.
    pub remove_orphans: bool,
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Compaction's target file size (default: the table's `write.target-file-size-bytes`).
    pub target_file_size: Option<u64>,
    /// Expire snapshots older than this.
    pub older_than: Option<Duration>,
    /// Keep at least this many snapshots.
    pub retain_last: Option<usize>,
    /// Orphans younger than this are kept (a writer may be about to commit them).
    pub orphan_age: Duration,
    /// Remove orphans even where the listing looks unsafe (see [`RemoveOrphans::force`]).
    pub force: bool,
}

impl Steps {
    /// No step chosen: every step runs.
    pub fn all(&self) -> bool {
        !(self.compact
            || self.expire_snapshots
            || self.retention.is_some()
            || self.remove_orphans
            || self.rewrite_manifests)
    }
}

/// What each step that ran did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepReports {
    /// Compaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compact: Option<CompactReport>,
    /// Retention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionReport>,
    /// Manifest rewrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_manifests: Option<RewriteManifestsReport>,
    /// Snapshot expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_snapshots: Option<ExpireReport>,
    /// Orphan removal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_orphans: Option<OrphansReport>,
}

/// What maintaining one table did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Each step's report.
    pub steps: StepReports,
}

/// A step that just finished, for progress output.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Compaction.
    Compact(&'a CompactReport),
    /// Retention.
    Retention(&'a RetentionReport),
    /// Manifest rewrite.
    RewriteManifests(&'a RewriteManifestsReport),
    /// Snapshot expiry.
    ExpireSnapshots(&'a ExpireReport),
    /// Orphan removal.
    RemoveOrphans(&'a OrphansReport),
}

/// Runs `steps` on `table` in the safe order. `aggregates` tells which tables hold partials
/// to fold when compacted; `progress` follows compaction's rewriting; `done` sees each step's
/// report as it finishes. Failures of single compaction groups are in the compact report's
/// `errors` (the other groups commit); any other failure stops the table's maintenance.
pub async fn maintain(
    committer: &Committer,
    table: &str,
    steps: &Steps,
    aggregates: &[floe_aggregate::AggregateDef],
    progress: Option<Progress>,
    mut done: impl FnMut(Step<'_>),
) -> Result<TableReport> {
    let all = steps.all();
    let mut out = StepReports::default();
    if all || steps.compact {
        let mut op = Compact::new(table).dry_run(steps.dry_run);
        if let Some(p) = progress {
            op = op.progress(p);
        }
        if let Some(size) = steps.target_file_size {
            op = op.target_file_size(size);
        }
        if let Some(def) = aggregates.iter().find(|d| d.target == table) {
            op = op.fold(def.clone());
        }
        done(Step::Compact(
            out.compact.insert(op.execute(committer).await?),
        ));
    }
    let retention = match steps.retention {
        Some(d) => Some(d),
        None if all => table_retention(committer, table).await?,
        None => None,
    };
    if let Some(keep) = retention {
        let op = Retention::keep(table, keep).dry_run(steps.dry_run);
        done(Step::Retention(
            out.retention.insert(op.execute(committer).await?),
        ));
    }
    if all || steps.rewrite_manifests {
        let op = RewriteManifests::new(table).dry_run(steps.dry_run);
        let r = op.execute(committer).await?;
        done(Step::RewriteManifests(out.rewrite_manifests.insert(r)));
    }
    if all || steps.expire_snapshots {
        let mut op = ExpireSnapshots::new(table).dry_run(steps.dry_run);
        if let Some(d) = steps.older_than {
            op = op.older_than(d);
        }
        if let Some(n) = steps.retain_last {
            op = op.retain_last(n);
        }
        let r = op.execute(committer).await?;
        done(Step::ExpireSnapshots(out.expire_snapshots.insert(r)));
    }
    if all || steps.remove_orphans {
        let op = RemoveOrphans::new(table)
            .older_than(steps.orphan_age)
            .force(steps.force)
            .dry_run(steps.dry_run);
        let r = op.execute(committer).await?;
        done(Step::RemoveOrphans(out.remove_orphans.insert(r)));
    }
    Ok(TableReport {
        table: table.to_string(),
        steps: out,
    })
}

/// The table's own retention: its [`RETENTION_PROPERTY`], parsed.
pub async fn table_retention(committer: &Committer, table: &str) -> Result<Option<Duration>> {
    let (_, meta) = committer
        .catalog()
        .load_metadata(&parse_table_ident(table)?)
        .await?;
    match meta.properties().get(RETENTION_PROPERTY) {
        None => Ok(None),
        Some(v) => humantime::parse_duration(v.trim()).map(Some).map_err(|e| {
            Error::Config(format!(
                "{table}: table property {RETENTION_PROPERTY} = {v:?}: {e}"
            ))
        }),
    }
}

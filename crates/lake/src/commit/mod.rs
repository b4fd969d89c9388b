//! floe's Iceberg commit: every writer (loader, aggregates, maintenance) commits through here.
//!
//! iceberg-rust 0.10.1 has no public replace/delete commits and its `Transaction::commit`
//! silently rebases on conflict, so floe builds the snapshot itself with iceberg-rust's public
//! writers (manifest, manifest list, metadata file) and publishes it with a compare-and-swap of
//! the table's metadata location in the catalog.
//!
//! **Where floe's state lives.** Kafka offsets and applied marks are table properties set in
//! the same metadata file as the snapshot they describe ([`crate::state`]): one
//! compare-and-swap publishes data and state together, and no other engine's commit, expiry,
//! rollback or branch can separate them or take them away. A commit that adds no file records
//! its state without adding a snapshot.
//!
//! Invariants:
//! - Each attempt starts from the table's *current* metadata. Kafka offsets are re-read and a
//!   batch overlapping what is committed is refused ([`Error::OffsetsAlreadyCommitted`]), so a
//!   message is never committed twice and offsets never go backwards; replay marks likewise
//!   ([`Error::AlreadyApplied`]).
//! - A replace/delete re-checks that every data file it removes is still live
//!   ([`Error::FilesGone`] if not) and, given the sequence number it read, that no delete file
//!   committed since applies to them ([`Error::ConcurrentDelete`]). Delete files it removes
//!   are removed only if no remaining data file may need them.
//! - Manifests stay bounded: merged on every commit and cleaned of old removals
//!   ([`manifests`]); old metadata files are deleted per
//!   `write.metadata.delete-after-commit.enabled` / `write.metadata.previous-versions-max`.
//! - A lost race deletes the attempt's manifests, manifest list and metadata file, waits
//!   (exponential backoff with jitter) and retries.
//! - When the commit definitely failed, the data files it was to add are deleted. When the
//!   catalog update's outcome is unknown (the connection broke during the swap), nothing is
//!   deleted before the table's history says what happened: the new metadata file is the
//!   table's or its successor's history names it → committed; the history shows another
//!   file replaced the base → lost, retried. If it cannot tell, the commit fails with
//!   [`Error::CommitStateUnknown`] and leaves every file for orphan removal; callers re-read
//!   their offsets from the table.

use std::str::FromStr;
use std::time::{Duration, Instant};

use iceberg::spec::TableMetadata;
use iceberg::{MetadataLocation, TableIdent};
use rand::Rng;

use crate::catalog::{Catalog, Outcome};
use crate::writer::delete_files;
use crate::{Error, Result};

pub mod manifests;
mod request;
mod stage;

pub use crate::state::floe_state;
pub use manifests::ManifestProps;
pub use request::{AppliedUpdate, Change, CommitRequest, OffsetsUpdate};

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
    /// The new snapshot (`None`: the commit only recorded state, or changed nothing).
    pub snapshot_id: Option<i64>,
    /// Its sequence number.
    pub sequence_number: Option<i64>,
    /// The table's metadata file after the commit.
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

/// The outcome of one compare-and-swap.
enum Published {
    /// The table now points at the new metadata file, holding this metadata.
    Swapped(String, Box<TableMetadata>),
    /// Another writer got there first; the attempt's files are deleted.
    Lost,
    /// REST: the commit's outcome is unknown and the table has not moved since its base, so
    /// it may still land (a request in flight). Its files are kept; a later attempt on the
    /// same base can land only if this one never does.
    Pending,
}

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
    /// data files are deleted; when the outcome is unknown they are left in place.
    pub async fn commit(&self, table: &TableIdent, req: CommitRequest) -> Result<Committed> {
        let result = self.commit_inner(table, &req).await;
        if let Err(e) = &result
            && !matches!(e, Error::Catalog { .. } | Error::CommitStateUnknown { .. })
        {
            let added = req
                .change
                .added()
                .iter()
                .map(|f| f.file_path().to_string())
                .collect();
            delete_files(self.catalog.file_io(), added).await;
        }
        result
    }

    async fn commit_inner(&self, table: &TableIdent, req: &CommitRequest) -> Result<Committed> {
        let started = Instant::now();
        let commit_id = uuid::Uuid::new_v4();
        let file_io = self.catalog.file_io().clone();
        let mut backoff = self.retry.min_backoff;
        // REST attempts whose outcome is unknown: (snapshot id, manifests and list written).
        let mut pending: Vec<(i64, Vec<String>)> = Vec::new();
        for attempt in 1..=self.retry.max_attempts {
            let (base_location, base) = self.catalog.load_metadata(table).await?;
            if let Some(i) = pending
                .iter()
                .position(|(id, _)| base.snapshot_by_id(*id).is_some())
            {
                // An earlier attempt landed after all; the others never will.
                let (snapshot_id, _) = pending.swap_remove(i);
                for (_, files) in pending {
                    delete_files(&file_io, files).await;
                }
                tracing::info!(%table, snapshot_id, "a commit whose outcome was unknown landed");
                return Ok(Committed {
                    snapshot_id: Some(snapshot_id),
                    sequence_number: base
                        .snapshot_by_id(snapshot_id)
                        .map(|s| s.sequence_number()),
                    metadata_location: base_location,
                    metadata: base,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                });
            }
            let mut written = Vec::new();
            let staged = stage::stage(
                &file_io,
                table,
                &base,
                &base_location,
                req,
                self.catalog.state_needs_snapshot(),
                attempt,
                commit_id,
                &mut written,
            )
            .await;
            let (snapshot_id, built) = match staged {
                Ok(stage::Staged::Snapshot { snapshot_id, built }) => (Some(snapshot_id), built),
                Ok(stage::Staged::State(built)) => (None, built),
                Ok(stage::Staged::Unchanged) => {
                    return Ok(Committed {
                        snapshot_id: None,
                        sequence_number: None,
                        metadata_location: base_location,
                        metadata: base,
                        attempts: attempt,
                        elapsed: started.elapsed(),
                    });
                }
                Err(e) => {
                    delete_files(&file_io, written).await;
                    if !pending.is_empty() {
                        // The table refused this attempt, but an earlier one may still land.
                        return Err(Error::CommitStateUnknown {
                            table: table.to_string(),
                            reason: format!(
                                "an earlier attempt's outcome is unknown, and the next one failed: {e}"
                            ),
                        });
                    }
                    return Err(e);
                }
            };
            // Manifests written but left out of the snapshot (the new one, when merged).
            let unused: Vec<String> = match snapshot_id {
                Some(_) => unreferenced(&file_io, &built.metadata, &written).await,
                None => Vec::new(),
            };
            let published = self
                .publish(
                    table,
                    &base_location,
                    &base,
                    &built,
                    snapshot_id,
                    &mut written,
                )
                .await;
            let published = match published {
                Ok(p) => p,
                Err(e) if !pending.is_empty() => {
                    return Err(Error::CommitStateUnknown {
                        table: table.to_string(),
                        reason: format!(
                            "an earlier attempt's outcome is unknown, and the next one failed: {e}"
                        ),
                    });
                }
                Err(e) => return Err(e),
            };
            match published {
                Published::Swapped(new_location, metadata) => {
                    if self.catalog.writes_metadata_files() {
                        delete_expired_metadata(&file_io, &built).await;
                    }
                    delete_files(&file_io, unused).await;
                    // Earlier attempts on this base can no longer land.
                    for (_, files) in pending {
                        delete_files(&file_io, files).await;
                    }
                    let sequence_number = snapshot_id
                        .and_then(|id| metadata.snapshot_by_id(id))
                        .map(|s| s.sequence_number());
                    return Ok(Committed {
                        snapshot_id,
                        sequence_number,
                        metadata_location: new_location,
                        metadata: *metadata,
                        attempts: attempt,
                        elapsed: started.elapsed(),
                    });
                }
                Published::Lost => {}
                Published::Pending => {
                    if let Some(id) = snapshot_id {
                        pending.push((id, std::mem::take(&mut written)));
                    }
                }
            }
            tracing::debug!(%table, attempt, "commit lost the race; retrying");
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
        if !pending.is_empty() {
            return Err(Error::CommitStateUnknown {
                table: table.to_string(),
                reason: format!(
                    "{} attempt(s) got no clear answer from the catalog and later ones lost races",
                    pending.len()
                ),
            });
        }
        Err(Error::CommitConflict {
            table: table.to_string(),
            attempts: self.retry.max_attempts,
        })
    }

    /// Publishes `built` (derived from `base`): on a SQL catalog by writing its metadata file
    /// and swapping it in ([`Self::swap`]), on REST by sending its changes with their
    /// requirements ([`Self::post`]).
    async fn publish(
        &self,
        table: &TableIdent,
        base_location: &str,
        base: &TableMetadata,
        built: &iceberg::spec::TableMetadataBuildResult,
        snapshot_id: Option<i64>,
        files: &mut Vec<String>,
    ) -> Result<Published> {
        if self.catalog.writes_metadata_files() {
            self.swap(
                table,
                base_location,
                base,
                &built.metadata,
                snapshot_id,
                files,
            )
            .await
        } else {
            self.post(table, base, built, snapshot_id, files).await
        }
    }

    /// REST: sends the commit. A 409 (or a request the server never took) is a lost race; when
    /// the outcome is unknown, the table decides ([`Self::resolve_rest`]).
    async fn post(
        &self,
        table: &TableIdent,
        base: &TableMetadata,
        built: &iceberg::spec::TableMetadataBuildResult,
        snapshot_id: Option<i64>,
        files: &mut Vec<String>,
    ) -> Result<Published> {
        let file_io = self.catalog.file_io();
        let outcome = match self.catalog.post_commit(table, base, built).await {
            Ok(o) => o,
            Err(e) => {
                delete_files(file_io, std::mem::take(files)).await;
                return Err(e);
            }
        };
        match outcome {
            Outcome::Landed { location, metadata } => Ok(Published::Swapped(location, metadata)),
            Outcome::Lost => {
                delete_files(file_io, std::mem::take(files)).await;
                Ok(Published::Lost)
            }
            Outcome::Unknown(e) => {
                let published = self
                    .resolve_rest(table, base, built, snapshot_id, &e)
                    .await?;
                match &published {
                    Published::Swapped(..) => {
                        tracing::info!(%table, error = %e, "no clear answer from the catalog; the table shows the commit landed")
                    }
                    Published::Lost => {
                        tracing::warn!(%table, error = %e, "no clear answer from the catalog; the table moved on without the commit, retrying");
                        delete_files(file_io, std::mem::take(files)).await;
                    }
                    Published::Pending => {
                        tracing::warn!(%table, error = %e, "no clear answer from the catalog and the table has not moved; trying again on the same base (at most one attempt can land)")
                    }
                }
                Ok(published)
            }
        }
    }

    /// Learns what became of a REST commit whose reply was lost or failed, from the table:
    /// its snapshot is there → landed; `main` moved on without it → it never will (every
    /// floe commit asserts `main`); otherwise it may still be in flight (`Pending`). A commit
    /// without a snapshot (a metadata update) landed if the table shows every one of its
    /// changes; else it is run again on fresh metadata (its requirements keep a late copy
    /// from applying twice).
    async fn resolve_rest(
        &self,
        table: &TableIdent,
        base: &TableMetadata,
        built: &iceberg::spec::TableMetadataBuildResult,
        snapshot_id: Option<i64>,
        error: &Error,
    ) -> Result<Published> {
        let (location, current) = self.reload_patiently(table, error).await?;
        let Some(id) = snapshot_id else {
            return Ok(if shows_changes(&current, built) {
                Published::Swapped(location, Box::new(current))
            } else {
                Published::Lost
            });
        };
        if current.snapshot_by_id(id).is_some() {
            return Ok(Published::Swapped(location, Box::new(current)));
        }
        let main = |m: &TableMetadata| m.current_snapshot_id();
        Ok(if main(&current) != main(base) {
            Published::Lost
        } else {
            Published::Pending
        })
    }

    /// SQL: writes `metadata` next to `base_location` and swaps it in. On a lost race the attempt's
    /// files are deleted and `Lost` is returned. When the swap's outcome is unknown, the
    /// table's history decides ([`Self::resolve`]); nothing is deleted before it has.
    async fn swap(
        &self,
        table: &TableIdent,
        base_location: &str,
        base: &TableMetadata,
        metadata: &TableMetadata,
        snapshot_id: Option<i64>,
        files: &mut Vec<String>,
    ) -> Result<Published> {
        let file_io = self.catalog.file_io();
        let new_location = MetadataLocation::from_str(base_location)?
            .with_next_version()
            .with_new_metadata(metadata)
            .to_string();
        files.push(new_location.clone());
        if let Err(e) = metadata
            .write_to(file_io, &MetadataLocation::from_str(&new_location)?)
            .await
        {
            delete_files(file_io, std::mem::take(files)).await;
            return Err(e.into());
        }
        crate::fail::point("before-catalog-swap");
        let swapped = match self
            .catalog
            .swap_metadata_location(table, base_location, &new_location)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let landed = self
                    .resolve(table, base_location, base, &new_location, snapshot_id, &e)
                    .await?;
                if landed {
                    tracing::info!(%table, error = %e, "catalog error during commit; the table's history shows the commit landed");
                } else {
                    tracing::warn!(%table, error = %e, "catalog error during commit; the table's history shows it did not land, retrying");
                }
                landed
            }
        };
        crate::fail::point("after-catalog-swap");
        if swapped {
            Ok(Published::Swapped(new_location, Box::new(metadata.clone())))
        } else {
            delete_files(file_io, std::mem::take(files)).await;
            Ok(Published::Lost)
        }
    }

    /// Learns whether a swap whose reply was lost landed, from the table's current metadata:
    /// it is the new file, or its metadata log names the new file as the successor of the
    /// base (or the new snapshot is in the table) → landed; another file succeeded the base →
    /// not. Anything else is [`Error::CommitStateUnknown`].
    async fn resolve(
        &self,
        table: &TableIdent,
        base_location: &str,
        base: &TableMetadata,
        new_location: &str,
        snapshot_id: Option<i64>,
        error: &Error,
    ) -> Result<bool> {
        let (location, current) = self.reload_patiently(table, error).await?;
        match swap_outcome(
            base_location,
            base,
            new_location,
            snapshot_id,
            &location,
            &current,
        ) {
            Some(landed) => Ok(landed),
            None => Err(Error::CommitStateUnknown {
                table: table.to_string(),
                reason: format!(
                    "{error}; the table's metadata log no longer shows what followed {base_location}"
                ),
            }),
        }
    }

    /// The table's metadata after a commit whose outcome is unknown, read back with a few
    /// tries (the catalog may be what failed); [`Error::CommitStateUnknown`] if it cannot be.
    async fn reload_patiently(
        &self,
        table: &TableIdent,
        error: &Error,
    ) -> Result<(String, TableMetadata)> {
        let mut pause = Duration::from_millis(200);
        let mut last_error = error.to_string();
        for _ in 0..6 {
            match self.catalog.load_metadata(table).await {
                Ok(loaded) => return Ok(loaded),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        Err(Error::CommitStateUnknown {
            table: table.to_string(),
            reason: format!("the catalog could not be read back: {last_error}"),
        })
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
            let mut files = Vec::new();
            match self
                .publish(table, &base_location, &base, &built, None, &mut files)
                .await?
            {
                Published::Swapped(location, metadata) => {
                    if self.catalog.writes_metadata_files() {
                        delete_expired_metadata(&file_io, &built).await;
                    }
                    return Ok(Some((location, *metadata)));
                }
                Published::Lost | Published::Pending => {
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

/// Whether a swap from `base_location` to `new_location` landed, judged from the table's
/// current metadata: `Some(true)` / `Some(false)` when its history tells, `None` when not.
fn swap_outcome(
    base_location: &str,
    base: &TableMetadata,
    new_location: &str,
    snapshot_id: Option<i64>,
    location: &str,
    current: &TableMetadata,
) -> Option<bool> {
    if location == new_location {
        return Some(true);
    }
    if location == base_location {
        return Some(false);
    }
    let log: Vec<&str> = current
        .metadata_log()
        .iter()
        .map(|l| l.metadata_file.as_str())
        .chain(std::iter::once(location))
        .collect();
    if let Some(i) = log.iter().position(|l| *l == base_location) {
        // The one file that replaced the base (a compare-and-swap succeeds once per base).
        return Some(log[i + 1] == new_location);
    }
    if log.contains(&new_location) {
        return Some(true);
    }
    if let Some(id) = snapshot_id
        && base.snapshot_by_id(id).is_none()
        && current.snapshot_by_id(id).is_some()
    {
        return Some(true);
    }
    None
}

/// Whether `current` shows every change of `built` (a metadata update whose answer was lost):
/// its schema added and current, its snapshots and refs removed, its properties set and
/// removed. A change it cannot tell about counts as not shown.
fn shows_changes(current: &TableMetadata, built: &iceberg::spec::TableMetadataBuildResult) -> bool {
    use iceberg::TableUpdate as U;
    !built.changes.is_empty()
        && built.changes.iter().all(|c| match c {
            U::AddSchema { schema } => current
                .schemas_iter()
                .any(|s| s.as_struct() == schema.as_struct()),
            U::SetCurrentSchema { .. } => {
                current.current_schema().as_struct() == built.metadata.current_schema().as_struct()
            }
            U::RemoveSnapshots { snapshot_ids } => snapshot_ids
                .iter()
                .all(|id| current.snapshot_by_id(*id).is_none()),
            U::RemoveSnapshotRef { ref_name } => current.snapshot_for_ref(ref_name).is_none(),
            U::SetProperties { updates } => updates
                .iter()
                .all(|(k, v)| current.properties().get(k) == Some(v)),
            U::RemoveProperties { removals } => removals
                .iter()
                .all(|k| !current.properties().contains_key(k)),
            _ => false,
        })
}

/// The files of `written` that `metadata`'s new snapshot does not reference (the new-files
/// manifest when it was merged into another): deleted once the commit landed.
async fn unreferenced(
    file_io: &iceberg::io::FileIO,
    metadata: &TableMetadata,
    written: &[String],
) -> Vec<String> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return Vec::new();
    };
    let Ok(bytes) = async { file_io.new_input(snapshot.manifest_list())?.read().await }.await
    else {
        return Vec::new();
    };
    let Ok(list) =
        iceberg::spec::ManifestList::parse_with_version(&bytes, metadata.format_version())
    else {
        return Vec::new();
    };
    let used: std::collections::HashSet<&str> = list
        .entries()
        .iter()
        .map(|m| m.manifest_path.as_str())
        .chain(std::iter::once(snapshot.manifest_list()))
        .collect();
    written
        .iter()
        .filter(|p| p.ends_with(".avro") && !used.contains(p.as_str()))
        .cloned()
        .collect()
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

/// `write.metadata.delete-after-commit.enabled`: once `built` is the table's, deletes the
/// metadata files that fell out of its metadata log (`write.metadata.previous-versions-max`,
/// default 100).
async fn delete_expired_metadata(
    file_io: &iceberg::io::FileIO,
    built: &iceberg::spec::TableMetadataBuildResult,
) {
    let enabled = built
        .metadata
        .properties()
        .get("write.metadata.delete-after-commit.enabled")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if enabled {
        let expired = built
            .expired_metadata_logs
            .iter()
            .map(|l| l.metadata_file.clone())
            .collect();
        delete_files(file_io, expired).await;
    }
}

/// Table properties `floe table create` sets unless the definition says otherwise: old
/// metadata files are deleted, the newest 100 kept (Iceberg's own defaults keep every one).
pub const CREATE_DEFAULTS: [(&str, &str); 2] = [
    ("write.metadata.delete-after-commit.enabled", "true"),
    ("write.metadata.previous-versions-max", "100"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CatalogConfig, parse_table_ident};

    const DEF: &str = r#"{
      "schema": {"type": "struct", "schema-id": 0, "fields": [
        {"id": 1, "name": "id", "required": true, "type": "long"}]},
      "properties": {"write.metadata.previous-versions-max": "2"}
    }"#;

    /// A table with three commits; returns the committer, the metadata locations in order
    /// and the snapshot ids.
    async fn history(dir: &std::path::Path) -> (Committer, Vec<String>, Vec<i64>) {
        let catalog = Catalog::connect(&CatalogConfig {
            uri: format!("sqlite://{}/c.db", dir.display()),
            warehouse: format!("{}/wh", dir.display()),
            name: "floe".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let def = floe_schema::TableDefinition::from_json(DEF, Some("lake.t"), "test").unwrap();
        catalog.create_table(&def).await.unwrap();
        let committer = Committer::new(catalog);
        let ident = parse_table_ident("lake.t").unwrap();
        let mut locations = vec![committer.catalog().load_metadata(&ident).await.unwrap().0];
        let mut ids = Vec::new();
        for i in 0..3 {
            let done = committer
                .commit(
                    &ident,
                    CommitRequest::append(Vec::new()).with_offsets(
                        "g",
                        vec![crate::OffsetRange {
                            topic: "t".into(),
                            partition: 0,
                            first: i,
                            next: i + 1,
                        }],
                    ),
                )
                .await
                .unwrap();
            locations.push(done.metadata_location);
            ids.extend(done.snapshot_id);
        }
        (committer, locations, ids)
    }

    #[tokio::test]
    async fn an_unknown_swap_outcome_is_read_from_the_tables_history() {
        let dir = tempfile::tempdir().unwrap();
        let (committer, l, _) = history(dir.path()).await;
        let ident = parse_table_ident("lake.t").unwrap();
        let (current_location, current) = committer.catalog().load_metadata(&ident).await.unwrap();
        assert_eq!(current_location, l[3]);
        let base = current.clone();
        let other = format!("{}/metadata/99999-other.metadata.json", current.location());
        let outcome = |b: &str, new: &str, id: Option<i64>| {
            swap_outcome(b, &base, new, id, &current_location, &current)
        };
        // The table is at the new file, or still at the base.
        assert_eq!(outcome(&l[2], &l[3], None), Some(true));
        assert_eq!(outcome(&l[3], &other, None), Some(false));
        // Others committed on top: the log says which file followed the base.
        assert_eq!(outcome(&l[1], &l[2], None), Some(true));
        assert_eq!(outcome(&l[1], &other, None), Some(false));
        // The base fell out of the log (previous-versions-max 2): unknown.
        assert_eq!(outcome(&l[0], &other, None), None);
    }

    #[tokio::test]
    async fn a_snapshot_in_the_table_tells_a_swap_landed() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(&CatalogConfig {
            uri: format!("sqlite://{}/c.db", dir.path().display()),
            warehouse: format!("{}/wh", dir.path().display()),
            name: "floe".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let def = floe_schema::TableDefinition::from_json(DEF, Some("lake.t"), "test").unwrap();
        catalog.create_table(&def).await.unwrap();
        let ident = parse_table_ident("lake.t").unwrap();
        let committer = Committer::new(catalog.clone());
        let (l0, base) = catalog.load_metadata(&ident).await.unwrap();
        let mut w = crate::DataWriter::new(catalog.file_io(), &base).unwrap();
        let mut dec = floe_schema::Decoder::new(
            base.current_schema(),
            &floe_schema::DecoderOptions::default(),
        )
        .unwrap();
        dec.decode(br#"{"id": 1}"#, &floe_schema::RecordMeta::default())
            .unwrap();
        w.write(&dec.finish()).await.unwrap();
        let files = w.close().await.unwrap();
        let done = committer
            .commit(&ident, CommitRequest::append(files))
            .await
            .unwrap();
        for _ in 0..3 {
            committer
                .update_metadata(&ident, |loc, m| {
                    let mut p = std::collections::HashMap::new();
                    p.insert("x".to_string(), uuid::Uuid::new_v4().to_string());
                    Ok(Some(
                        m.clone()
                            .into_builder(Some(loc.to_string()))
                            .set_properties(p)?
                            .build()?,
                    ))
                })
                .await
                .unwrap();
        }
        let (loc, current) = catalog.load_metadata(&ident).await.unwrap();
        assert_eq!(
            swap_outcome(
                &l0,
                &base,
                &done.metadata_location,
                done.snapshot_id,
                &loc,
                &current
            ),
            Some(true)
        );
        assert_eq!(
            swap_outcome(
                &l0,
                &base,
                &done.metadata_location,
                Some(42),
                &loc,
                &current
            ),
            None
        );
    }
}

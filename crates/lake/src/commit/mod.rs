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

use std::time::{Duration, Instant};

use iceberg::TableIdent;
use iceberg::spec::TableMetadata;
use rand::Rng;

use crate::catalog::Catalog;
use crate::writer::delete_files;
use crate::{Error, Result};
use publish::Published;

pub mod manifests;
mod publish;
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

    /// [`Self::commit`]'s attempts: each on the table's current metadata, with backoff after
    /// a lost race, until one lands or the policy's attempts are spent.
    async fn commit_inner(&self, table: &TableIdent, req: &CommitRequest) -> Result<Committed> {
        let started = Instant::now();
        let commit_id = uuid::Uuid::new_v4();
        let mut backoff = self.retry.min_backoff;
        // REST attempts whose outcome is unknown: (snapshot id, manifests and list written).
        let mut pending: Vec<(i64, Vec<String>)> = Vec::new();
        for number in 1..=self.retry.max_attempts {
            let attempt = Attempt {
                number,
                commit_id,
                started,
            };
            if let Some(done) = self.attempt(table, req, attempt, &mut pending).await? {
                return Ok(done);
            }
            tracing::debug!(%table, attempt = number, "commit lost the race; retrying");
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

    /// One attempt: staged on the table's current metadata and published. `Some` when the
    /// commit is done (also when an earlier attempt of `pending` turns out to have landed, or
    /// there is nothing to commit), `None` when the attempt lost the race.
    async fn attempt(
        &self,
        table: &TableIdent,
        req: &CommitRequest,
        attempt: Attempt,
        pending: &mut Vec<(i64, Vec<String>)>,
    ) -> Result<Option<Committed>> {
        let file_io = self.catalog.file_io();
        let (base_location, base) = self.catalog.load_metadata(table).await?;
        if let Some(snapshot_id) = self.landed_earlier(table, &base, pending).await {
            let sequence_number = base
                .snapshot_by_id(snapshot_id)
                .map(|s| s.sequence_number());
            let done = attempt.committed(Some(snapshot_id), sequence_number, base_location, base);
            return Ok(Some(done));
        }
        let mut written = Vec::new();
        let staged = stage::stage(
            file_io,
            table,
            &base,
            &base_location,
            req,
            self.catalog.state_needs_snapshot(),
            attempt.number,
            attempt.commit_id,
            &mut written,
        )
        .await;
        let (snapshot_id, built) = match staged {
            Ok(stage::Staged::Snapshot { snapshot_id, built }) => (Some(snapshot_id), built),
            Ok(stage::Staged::State(built)) => (None, built),
            Ok(stage::Staged::Unchanged) => {
                return Ok(Some(attempt.committed(None, None, base_location, base)));
            }
            Err(e) => {
                delete_files(file_io, written).await;
                // The table refused this attempt, but an earlier one may still land.
                return Err(unknown_if_pending(table, pending, e));
            }
        };
        // Manifests written but left out of the snapshot (the new one, when merged).
        let unused: Vec<String> = match snapshot_id {
            Some(_) => unreferenced(file_io, &built.metadata, &written).await,
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
            .await
            .map_err(|e| unknown_if_pending(table, pending, e))?;
        match published {
            Published::Swapped(new_location, metadata) => {
                self.clean_up_landed(&built, unused, pending).await;
                let sequence_number = snapshot_id
                    .and_then(|id| metadata.snapshot_by_id(id))
                    .map(|s| s.sequence_number());
                let done = attempt.committed(snapshot_id, sequence_number, new_location, *metadata);
                Ok(Some(done))
            }
            Published::Lost => Ok(None),
            Published::Pending => {
                if let Some(id) = snapshot_id {
                    pending.push((id, std::mem::take(&mut written)));
                }
                Ok(None)
            }
        }
    }

    /// The snapshot of an earlier attempt of `pending` that `base` holds, if any: that attempt
    /// landed after all, and the other ones never will (their files are deleted).
    async fn landed_earlier(
        &self,
        table: &TableIdent,
        base: &TableMetadata,
        pending: &mut Vec<(i64, Vec<String>)>,
    ) -> Option<i64> {
        let i = pending
            .iter()
            .position(|(id, _)| base.snapshot_by_id(*id).is_some())?;
        // An earlier attempt landed after all; the others never will.
        let (snapshot_id, _) = pending.swap_remove(i);
        for (_, files) in pending.drain(..) {
            delete_files(self.catalog.file_io(), files).await;
        }
        tracing::info!(%table, snapshot_id, "a commit whose outcome was unknown landed");
        Some(snapshot_id)
    }

    /// Once an attempt's `built` metadata is the table's: deletes the metadata files it let
    /// expire (when floe writes them), the `unused` manifests and the files of the earlier
    /// attempts of `pending`.
    async fn clean_up_landed(
        &self,
        built: &iceberg::spec::TableMetadataBuildResult,
        unused: Vec<String>,
        pending: &mut Vec<(i64, Vec<String>)>,
    ) {
        let file_io = self.catalog.file_io();
        if self.catalog.writes_metadata_files() {
            delete_expired_metadata(file_io, built).await;
        }
        delete_files(file_io, unused).await;
        // Earlier attempts on this base can no longer land.
        for (_, files) in pending.drain(..) {
            delete_files(file_io, files).await;
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

/// One attempt of a commit: its number and what it shares with the commit's other attempts.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// 1 for the first.
    number: u32,
    /// The commit's id (in the names of the files its attempts write).
    commit_id: uuid::Uuid,
    /// When the first attempt started.
    started: Instant,
}

impl Attempt {
    /// The result of a commit done at this attempt.
    fn committed(
        self,
        snapshot_id: Option<i64>,
        sequence_number: Option<i64>,
        metadata_location: String,
        metadata: TableMetadata,
    ) -> Committed {
        Committed {
            snapshot_id,
            sequence_number,
            metadata_location,
            metadata,
            attempts: self.number,
            elapsed: self.started.elapsed(),
        }
    }
}

/// `e`, unless an earlier attempt's outcome is unknown (`pending` is not empty): then the
/// commit's state is unknown, as that attempt may still land.
fn unknown_if_pending(table: &TableIdent, pending: &[(i64, Vec<String>)], e: Error) -> Error {
    if pending.is_empty() {
        return e;
    }
    Error::CommitStateUnknown {
        table: table.to_string(),
        reason: format!("an earlier attempt's outcome is unknown, and the next one failed: {e}"),
    }
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
    let Ok(manifests) = crate::scan::current_manifests(file_io, metadata).await else {
        return Vec::new();
    };
    let used: std::collections::HashSet<&str> = manifests
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

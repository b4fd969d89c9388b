//! Publishing one commit attempt and learning its outcome when the catalog's answer is lost.
//!
//! On a SQL catalog an attempt writes its metadata file and swaps the table's metadata
//! location to it; on REST it sends its changes with their requirements. Either is a
//! compare-and-swap on the attempt's base.
//!
//! Invariants:
//! - A definite loss deletes the attempt's files (manifests, manifest list, metadata file).
//! - When the outcome is unknown, nothing is deleted before the table says what happened:
//!   SQL reads the table's metadata log (the file that followed the base), REST looks for the
//!   attempt's snapshot and whether `main` moved. What cannot be told is
//!   [`Error::CommitStateUnknown`], every file left for orphan removal.

use std::str::FromStr;
use std::time::Duration;

use iceberg::spec::TableMetadata;
use iceberg::{MetadataLocation, TableIdent};

use super::Committer;
use crate::catalog::Outcome;
use crate::writer::delete_files;
use crate::{Error, Result};

/// The outcome of one compare-and-swap.
pub(super) enum Published {
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
    /// Publishes `built` (derived from `base`): on a SQL catalog by writing its metadata file
    /// and swapping it in ([`Self::swap`]), on REST by sending its changes with their
    /// requirements ([`Self::post`]).
    pub(super) async fn publish(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::commit::CommitRequest;
    use crate::{CatalogConfig, parse_table_ident};

    const DEF: &str = r#"{
      "schema": {"type": "struct", "schema-id": 0, "fields": [
        {"id": 1, "name": "id", "required": true, "type": "long"}]},
      "properties": {"write.metadata.previous-versions-max": "2"}
    }"#;

    /// A SQLite lake in `dir` with table `lake.t` (schema `DEF`).
    async fn lake(dir: &std::path::Path) -> (Catalog, iceberg::TableIdent) {
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
        (catalog, parse_table_ident("lake.t").unwrap())
    }

    /// A table with three commits; returns the committer, the metadata locations in order
    /// and the snapshot ids.
    async fn history(dir: &std::path::Path) -> (Committer, Vec<String>, Vec<i64>) {
        let (catalog, ident) = lake(dir).await;
        let committer = Committer::new(catalog);
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
        let (catalog, ident) = lake(dir.path()).await;
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

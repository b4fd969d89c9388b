//! The files a table's metadata references, and the files its storage holds.

use std::collections::{HashMap, HashSet};

use floe_lake::S3Config;
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::spec::{ManifestList, SnapshotRef, TableMetadata};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::{Error, Result};

/// A data file entry of a manifest.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    size: u64,
    alive: bool,
}

/// Files reachable from some snapshots: their manifest lists, manifests and data files.
#[derive(Debug, Default)]
pub struct Reachable {
    /// Manifest lists.
    pub manifest_lists: HashSet<String>,
    /// Manifests.
    pub manifests: HashSet<String>,
    /// Data (and delete) files the snapshots read, with their sizes.
    pub live_files: HashMap<String, u64>,
    /// Every data file a reachable manifest names, including entries marking a removal.
    pub named_files: HashSet<String>,
}

/// Reads manifests once, however many snapshots share them.
#[derive(Default)]
pub struct ManifestCache {
    manifests: HashMap<String, Vec<Entry>>,
}

impl ManifestCache {
    /// The files reachable from `snapshots` of `metadata`.
    pub async fn reachable<'a>(
        &mut self,
        file_io: &FileIO,
        metadata: &TableMetadata,
        snapshots: impl IntoIterator<Item = &'a SnapshotRef>,
    ) -> Result<Reachable> {
        let mut out = Reachable::default();
        for snapshot in snapshots {
            let list_path = snapshot.manifest_list().to_string();
            if !out.manifest_lists.insert(list_path.clone()) {
                continue;
            }
            let bytes = file_io.new_input(&list_path)?.read().await?;
            let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
            for manifest_file in list.entries() {
                let path = manifest_file.manifest_path.clone();
                out.manifests.insert(path.clone());
                if !self.manifests.contains_key(&path) {
                    let manifest = manifest_file.load_manifest(file_io).await?;
                    let entries = manifest
                        .entries()
                        .iter()
                        .map(|e| Entry {
                            path: e.file_path().to_string(),
                            size: e.data_file().file_size_in_bytes(),
                            alive: e.is_alive(),
                        })
                        .collect();
                    self.manifests.insert(path.clone(), entries);
                }
                for e in &self.manifests[&path] {
                    out.named_files.insert(e.path.clone());
                    if e.alive {
                        out.live_files.insert(e.path.clone(), e.size);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A file found in storage.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Its location, in the form table metadata uses (`file:///…`, `s3://…`).
    pub location: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// Every file under `location` (a table's location), listed through object_store (iceberg-rust's
/// storage cannot list): a local folder, or an `s3://` prefix with the catalog's S3 settings.
pub async fn list_files(
    location: &str,
    s3: &S3Config,
    session_token: Option<&str>,
) -> Result<Vec<StoredFile>> {
    if floe_lake::config::is_s3(location) {
        return list_s3(location, s3, session_token).await;
    }
    let dir = local_path(location).ok_or_else(|| {
        Error::Config(format!(
            "listing {location}: only local folders and s3:// locations can be listed"
        ))
    })?;
    if !std::path::Path::new(&dir).exists() {
        return Ok(Vec::new());
    }
    let prefix = object_store::path::Path::from_absolute_path(&dir)
        .map_err(|e| Error::Storage(format!("{dir}: {e}")))?;
    list_store(&LocalFileSystem::new(), &prefix, "file:///", &dir).await
}

/// Every object under `prefix` in `store`, located as `root` + its path.
async fn list_store(
    store: &dyn ObjectStore,
    prefix: &object_store::path::Path,
    root: &str,
    what: &str,
) -> Result<Vec<StoredFile>> {
    let listed: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| Error::Storage(format!("listing {what}: {e}")))?;
    Ok(listed
        .into_iter()
        .map(|m| StoredFile {
            location: format!("{root}{}", m.location),
            size: m.size,
            modified: m.last_modified,
        })
        .collect())
}

async fn list_s3(
    location: &str,
    s3: &S3Config,
    session_token: Option<&str>,
) -> Result<Vec<StoredFile>> {
    use object_store::aws::AmazonS3Builder;
    let rest = location.split_once("://").map(|(_, r)| r).unwrap_or("");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!s3.path_style);
    if let Some(e) = &s3.endpoint {
        builder = builder
            .with_endpoint(e)
            .with_allow_http(e.starts_with("http://"));
    }
    if let Some(r) = s3.effective_region() {
        builder = builder.with_region(r);
    }
    if let Some(k) = &s3.access_key_id {
        builder = builder.with_access_key_id(k);
    }
    if let Some(secret) = s3.secret()? {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = session_token {
        builder = builder.with_token(token);
    }
    let store = builder
        .build()
        .map_err(|e| Error::Storage(format!("listing {location}: {e}")))?;
    let prefix = object_store::path::Path::from(format!("{}/", prefix.trim_end_matches('/')));
    list_store(&store, &prefix, &format!("s3://{bucket}/"), location).await
}

/// The local path of a `file://` URL or plain path; `None` for other schemes.
fn local_path(location: &str) -> Option<String> {
    if let Some(rest) = location.strip_prefix("file://") {
        Some(rest.to_string())
    } else if location.contains("://") {
        None
    } else {
        Some(location.to_string())
    }
}

/// A location in one canonical form for comparisons: `file:///abs/path` for local files
/// (metadata may hold `/abs/path` or `file:/abs/path`), `s3://bucket/key` for S3 (other
/// writers may say `s3a://` or `s3n://`), unchanged otherwise.
pub fn canonical(location: &str) -> String {
    if floe_lake::config::is_s3(location) {
        let rest = location.split_once("://").map(|(_, r)| r).unwrap_or("");
        format!("s3://{rest}")
    } else if let Some(rest) = location.strip_prefix("file://") {
        format!("file://{}", collapse(rest))
    } else if let Some(rest) = location.strip_prefix("file:") {
        format!("file://{}", collapse(rest))
    } else if location.starts_with('/') {
        format!("file://{}", collapse(location))
    } else {
        location.to_string()
    }
}

fn collapse(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' {
            if !last_slash {
                out.push(c);
            }
            last_slash = true;
        } else {
            out.push(c);
            last_slash = false;
        }
    }
    out
}

/// Every file the metadata references, in canonical form: metadata files (current and logged),
/// statistics files, and all files reachable from every snapshot (including manifest entries
/// that record a removal).
pub async fn referenced_files(
    file_io: &FileIO,
    metadata_location: &str,
    metadata: &TableMetadata,
) -> Result<HashSet<String>> {
    let mut refs: HashSet<String> = HashSet::new();
    refs.insert(canonical(metadata_location));
    for log in metadata.metadata_log() {
        refs.insert(canonical(&log.metadata_file));
    }
    for s in metadata.statistics_iter() {
        refs.insert(canonical(&s.statistics_path));
    }
    for s in metadata.partition_statistics_iter() {
        refs.insert(canonical(&s.statistics_path));
    }
    let reachable = ManifestCache::default()
        .reachable(file_io, metadata, metadata.snapshots())
        .await?;
    refs.extend(reachable.manifest_lists.iter().map(|p| canonical(p)));
    refs.extend(reachable.manifests.iter().map(|p| canonical(p)));
    refs.extend(reachable.named_files.iter().map(|p| canonical(p)));
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_compare_in_one_form() {
        assert_eq!(canonical("/a//b/c.parquet"), "file:///a/b/c.parquet");
        assert_eq!(canonical("file:///a/b"), "file:///a/b");
        assert_eq!(canonical("file:/a/b"), "file:///a/b");
        assert_eq!(canonical("s3://bucket/a/b"), "s3://bucket/a/b");
        assert_eq!(local_path("file:///x/y").as_deref(), Some("/x/y"));
        assert_eq!(local_path("s3://b/x"), None);
    }
}

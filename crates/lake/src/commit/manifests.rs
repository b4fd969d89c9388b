//! The manifests of a new snapshot, kept bounded as Iceberg Java keeps them.
//!
//! - **Carried** from the parent: a manifest with no live entry (only entries recording
//!   removals by an earlier snapshot) is dropped; one holding a file the change removes is
//!   rewritten, the file marked deleted *in this snapshot only* and older deleted entries
//!   dropped.
//! - **Merged** (`commit.manifest-merge.enabled`, default true): per content and partition
//!   spec, manifests are bin-packed from the oldest end to `commit.manifest.target-size-bytes`
//!   (8 MiB); each bin of several manifests becomes one, except the bin holding the newest
//!   manifest, which waits until it has `commit.manifest.min-count-to-merge` (100) — Java's
//!   `ManifestMergeManager`. A merged manifest keeps only live entries (and this snapshot's
//!   removals), so an append-only table holds at most ~100 manifests however many commits it
//!   has seen.
//! - **Rewritten** on request ([`super::Change::RewriteManifests`], `floe maintain`): every
//!   live entry, clustered by partition, into manifests of the target size.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, Datum, Manifest, ManifestContentType, ManifestEntry, ManifestFile,
    ManifestStatus, ManifestWriter, ManifestWriterBuilder, PrimitiveLiteral, Struct, TableMetadata,
    UNASSIGNED_SEQUENCE_NUMBER,
};

use crate::{Error, Result};

/// The table properties that shape manifests.
#[derive(Debug, Clone, Copy)]
pub struct ManifestProps {
    /// `commit.manifest-merge.enabled` (default true).
    pub merge_enabled: bool,
    /// `commit.manifest.min-count-to-merge` (default 100).
    pub min_count_to_merge: usize,
    /// `commit.manifest.target-size-bytes` (default 8 MiB).
    pub target_size_bytes: u64,
}

impl ManifestProps {
    /// The properties of a table (defaults where unset or unreadable).
    pub fn of(props: &HashMap<String, String>) -> Self {
        let get = |k: &str| props.get(k).map(|v| v.trim());
        Self {
            merge_enabled: get("commit.manifest-merge.enabled")
                .and_then(|v| v.parse::<bool>().ok())
                .unwrap_or(true),
            min_count_to_merge: get("commit.manifest.min-count-to-merge")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(100),
            target_size_bytes: get("commit.manifest.target-size-bytes")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(8 << 20),
        }
    }
}

/// A data file's place in the table, as delete files are matched against it.
#[derive(Debug, Clone)]
pub(crate) struct FileRef {
    pub path: String,
    pub spec_id: i32,
    pub partition: Struct,
    /// Data sequence number.
    pub seq: i64,
}

/// A live delete file and where it applies.
#[derive(Debug, Clone)]
pub(crate) struct DeleteRef {
    pub file: DataFile,
    pub spec_id: i32,
    pub unpartitioned_spec: bool,
    pub seq: i64,
}

/// The field id of `file_path` in position delete files (reserved by the spec).
const POS_DELETE_FILE_PATH_ID: i32 = 2_147_483_546;

impl DeleteRef {
    /// Whether this delete file may delete rows of `data` (Iceberg's scan-planning rules; for
    /// position deletes the `file_path` bounds narrow it down when present).
    pub fn may_apply(&self, data: &FileRef) -> bool {
        match self.file.content_type() {
            DataContentType::PositionDeletes => {
                if data.seq > self.seq {
                    return false;
                }
                if let Some(r) = self.file.referenced_data_file() {
                    return r == data.path;
                }
                if self.spec_id != data.spec_id || self.file.partition() != &data.partition {
                    return false;
                }
                let lo = string_bound(self.file.lower_bounds().get(&POS_DELETE_FILE_PATH_ID));
                let hi = string_bound(self.file.upper_bounds().get(&POS_DELETE_FILE_PATH_ID));
                lo.is_none_or(|lo| lo <= data.path.as_str())
                    && hi.is_none_or(|hi| data.path.as_str() <= hi)
            }
            DataContentType::EqualityDeletes => {
                data.seq < self.seq
                    && (self.unpartitioned_spec
                        || (self.spec_id == data.spec_id
                            && self.file.partition() == &data.partition))
            }
            DataContentType::Data => false,
        }
    }
}

fn string_bound(d: Option<&Datum>) -> Option<&str> {
    match d?.literal() {
        PrimitiveLiteral::String(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads manifests for one attempt, each at most once.
pub(crate) struct Manifests<'a> {
    pub file_io: &'a FileIO,
    pub base: &'a TableMetadata,
    loaded: HashMap<String, Arc<Manifest>>,
}

impl<'a> Manifests<'a> {
    pub fn new(file_io: &'a FileIO, base: &'a TableMetadata) -> Self {
        Self {
            file_io,
            base,
            loaded: HashMap::new(),
        }
    }

    pub async fn load(&mut self, mf: &ManifestFile) -> Result<Arc<Manifest>> {
        if let Some(m) = self.loaded.get(&mf.manifest_path) {
            return Ok(m.clone());
        }
        let m = Arc::new(mf.load_manifest(self.file_io).await?);
        self.loaded.insert(mf.manifest_path.clone(), m.clone());
        Ok(m)
    }

    /// Live data files of `manifests`, except those in `except`.
    pub async fn live_data(
        &mut self,
        manifests: &[ManifestFile],
        except: &std::collections::HashSet<&str>,
    ) -> Result<Vec<FileRef>> {
        let mut out = Vec::new();
        for mf in manifests {
            if mf.content != ManifestContentType::Data {
                continue;
            }
            let m = self.load(mf).await?;
            for e in m.entries().iter().filter(|e| e.is_alive()) {
                if !except.contains(e.file_path()) {
                    out.push(file_ref(e, mf.partition_spec_id));
                }
            }
        }
        Ok(out)
    }

    /// Live delete files of `manifests` whose manifest and entry sequence numbers pass
    /// `newer_than` (all with `None`).
    pub async fn live_deletes(
        &mut self,
        manifests: &[ManifestFile],
        newer_than: Option<i64>,
    ) -> Result<Vec<DeleteRef>> {
        let mut out = Vec::new();
        for mf in manifests {
            if mf.content != ManifestContentType::Deletes
                || newer_than.is_some_and(|s| mf.sequence_number <= s)
            {
                continue;
            }
            let unpartitioned = self
                .base
                .partition_spec_by_id(mf.partition_spec_id)
                .is_none_or(|s| s.fields().is_empty());
            let m = self.load(mf).await?;
            for e in m.entries().iter().filter(|e| e.is_alive()) {
                let seq = e.sequence_number().unwrap_or(mf.sequence_number);
                if newer_than.is_some_and(|s| seq <= s) {
                    continue;
                }
                out.push(DeleteRef {
                    file: e.data_file().clone(),
                    spec_id: mf.partition_spec_id,
                    unpartitioned_spec: unpartitioned,
                    seq,
                });
            }
        }
        Ok(out)
    }
}

pub(crate) fn file_ref(e: &ManifestEntry, spec_id: i32) -> FileRef {
    FileRef {
        path: e.file_path().to_string(),
        spec_id,
        partition: e.data_file().partition().clone(),
        seq: e.sequence_number().unwrap_or(0),
    }
}

/// Whether a manifest still holds a live file (counts unknown: assumed so).
pub(crate) fn has_live_entries(mf: &ManifestFile) -> bool {
    match (mf.added_files_count, mf.existing_files_count) {
        (Some(a), Some(e)) => a + e > 0,
        _ => true,
    }
}

/// Writes the manifests of one attempt (paths recorded for clean-up on a lost race).
pub(crate) struct ManifestOut<'a> {
    pub file_io: &'a FileIO,
    pub base: &'a TableMetadata,
    pub snapshot_id: i64,
    pub prefix: String,
    pub written: &'a mut Vec<String>,
    counter: usize,
}

impl<'a> ManifestOut<'a> {
    pub fn new(
        file_io: &'a FileIO,
        base: &'a TableMetadata,
        snapshot_id: i64,
        prefix: String,
        written: &'a mut Vec<String>,
    ) -> Self {
        Self {
            file_io,
            base,
            snapshot_id,
            prefix,
            written,
            counter: 0,
        }
    }

    /// A writer for a new manifest of `content` in partition spec `spec_id`.
    pub fn writer(&mut self, content: ManifestContentType, spec_id: i32) -> Result<ManifestWriter> {
        let spec = self.base.partition_spec_by_id(spec_id).ok_or_else(|| {
            Error::Config(format!(
                "a manifest of the table uses partition spec {spec_id}, which its metadata does not define"
            ))
        })?;
        self.counter += 1;
        let path = format!(
            "{}/metadata/{}-{}.avro",
            self.base.location(),
            self.prefix,
            self.counter
        );
        self.written.push(path.clone());
        let builder = ManifestWriterBuilder::new(
            self.file_io.new_output(&path)?,
            Some(self.snapshot_id),
            self.base.current_schema().clone(),
            spec.as_ref().clone(),
        );
        Ok(match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        })
    }

    /// Copies one entry into `w`: this snapshot's additions stay added (their sequence number
    /// is assigned with the manifest list), this snapshot's removals stay deleted, older
    /// removals are dropped and everything else is existing.
    pub fn copy_entry(
        &self,
        w: &mut ManifestWriter,
        e: &ManifestEntry,
        added_by: i64,
    ) -> Result<()> {
        let df = e.data_file().clone();
        let ours = e.snapshot_id() == Some(self.snapshot_id);
        match e.status() {
            ManifestStatus::Deleted if ours => {
                let seq = e.sequence_number().unwrap_or(0);
                w.add_delete_file(df, seq, e.file_sequence_number.or(Some(seq)))?;
            }
            ManifestStatus::Deleted => {}
            ManifestStatus::Added if ours => w.add_file(df, UNASSIGNED_SEQUENCE_NUMBER)?,
            _ => {
                let seq = e.sequence_number().unwrap_or(0);
                w.add_existing_file(
                    df,
                    e.snapshot_id().unwrap_or(added_by),
                    seq,
                    e.file_sequence_number.or(Some(seq)),
                )?;
            }
        }
        Ok(())
    }
}

/// What merging did, for the snapshot summary (Java's keys).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MergeCounts {
    pub created: usize,
    pub replaced: usize,
    pub kept: usize,
}

/// Merges `manifests` (newest first) as described in the module docs.
pub(crate) async fn merge(
    manifests: Vec<ManifestFile>,
    props: ManifestProps,
    reader: &mut Manifests<'_>,
    out: &mut ManifestOut<'_>,
    counts: &mut MergeCounts,
) -> Result<Vec<ManifestFile>> {
    // Groups by content (data first) and spec (newest spec first), in list order within.
    let mut groups: BTreeMap<(u8, std::cmp::Reverse<i32>), Vec<ManifestFile>> = BTreeMap::new();
    for mf in manifests {
        let content = match mf.content {
            ManifestContentType::Data => 0,
            ManifestContentType::Deletes => 1,
        };
        groups
            .entry((content, std::cmp::Reverse(mf.partition_spec_id)))
            .or_default()
            .push(mf);
    }
    let mut result = Vec::new();
    for ((_, std::cmp::Reverse(spec_id)), group) in groups {
        let first = group[0].manifest_path.clone();
        let content = group[0].content;
        for bin in pack_end(group, props.target_size_bytes) {
            let holds_first = bin.iter().any(|m| m.manifest_path == first);
            if bin.len() == 1 || (holds_first && bin.len() < props.min_count_to_merge) {
                counts.kept += bin.len();
                result.extend(bin);
                continue;
            }
            let mut w = out.writer(content, spec_id)?;
            for mf in &bin {
                let m = reader.load(mf).await?;
                for e in m.entries() {
                    out.copy_entry(&mut w, e, mf.added_snapshot_id)?;
                }
            }
            counts.replaced += bin.len();
            counts.created += 1;
            result.push(w.write_manifest_file().await?);
        }
    }
    Ok(result)
}

/// Bins of consecutive manifests up to `target` bytes, filled from the end (the oldest), so
/// the bin left under-filled is the newest one, merged again next time (Java's
/// `ListPacker.packEnd` with a lookback of 1).
fn pack_end(items: Vec<ManifestFile>, target: u64) -> Vec<Vec<ManifestFile>> {
    let mut bins: Vec<Vec<ManifestFile>> = Vec::new();
    let mut current: Vec<ManifestFile> = Vec::new();
    let mut size = 0u64;
    for m in items.into_iter().rev() {
        let len = m.manifest_length.max(0) as u64;
        if !current.is_empty() && size + len > target {
            current.reverse();
            bins.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(m);
    }
    if !current.is_empty() {
        current.reverse();
        bins.push(current);
    }
    bins.reverse();
    bins
}

/// Rewrites every live entry of `manifests`, clustered by partition, into manifests of about
/// the target size per content and spec. Returns the new manifests and the entries written.
pub(crate) async fn rewrite_all(
    manifests: &[ManifestFile],
    props: ManifestProps,
    reader: &mut Manifests<'_>,
    out: &mut ManifestOut<'_>,
) -> Result<(Vec<ManifestFile>, usize)> {
    struct Group {
        content: ManifestContentType,
        /// Live entries, with the snapshot that added their manifest.
        entries: Vec<(ManifestEntry, i64)>,
        bytes: u64,
        count: usize,
    }
    let mut groups: BTreeMap<(u8, std::cmp::Reverse<i32>), Group> = BTreeMap::new();
    for mf in manifests {
        let content = match mf.content {
            ManifestContentType::Data => 0,
            ManifestContentType::Deletes => 1,
        };
        let m = reader.load(mf).await?;
        let g = groups
            .entry((content, std::cmp::Reverse(mf.partition_spec_id)))
            .or_insert_with(|| Group {
                content: mf.content,
                entries: Vec::new(),
                bytes: 0,
                count: 0,
            });
        g.bytes += mf.manifest_length.max(0) as u64;
        g.count += m.entries().len();
        for e in m.entries().iter().filter(|e| e.is_alive()) {
            g.entries.push((e.as_ref().clone(), mf.added_snapshot_id));
        }
    }
    let mut result = Vec::new();
    let mut entries_written = 0;
    for ((_, std::cmp::Reverse(spec_id)), g) in groups {
        let Group {
            content,
            mut entries,
            bytes,
            count,
        } = g;
        // Entries per manifest from the average entry size of the manifests read.
        let per_entry = (bytes / count.max(1) as u64).max(1);
        let per_manifest = (props.target_size_bytes / per_entry).max(1) as usize;
        entries.sort_by(|a, b| {
            cmp_partition(a.0.data_file().partition(), b.0.data_file().partition())
                .then_with(|| a.0.file_path().cmp(b.0.file_path()))
        });
        for chunk in entries.chunks(per_manifest) {
            let mut w = out.writer(content, spec_id)?;
            for (e, added_by) in chunk {
                let seq = e.sequence_number().unwrap_or(0);
                w.add_existing_file(
                    e.data_file().clone(),
                    e.snapshot_id().unwrap_or(*added_by),
                    seq,
                    e.file_sequence_number.or(Some(seq)),
                )?;
                entries_written += 1;
            }
            result.push(w.write_manifest_file().await?);
        }
    }
    Ok((result, entries_written))
}

/// Orders partition tuples field by field (nulls first).
fn cmp_partition(a: &Struct, b: &Struct) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => match (x.as_primitive_literal(), y.as_primitive_literal()) {
                (Some(px), Some(py)) => px.partial_cmp(&py).unwrap_or(Ordering::Equal),
                _ => format!("{x:?}").cmp(&format!("{y:?}")),
            },
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mf(len: i64, n: usize) -> ManifestFile {
        ManifestFile {
            manifest_path: format!("m{n}"),
            manifest_length: len,
            partition_spec_id: 0,
            content: ManifestContentType::Data,
            sequence_number: 1,
            min_sequence_number: 1,
            added_snapshot_id: 1,
            added_files_count: Some(1),
            existing_files_count: Some(0),
            deleted_files_count: Some(0),
            added_rows_count: Some(1),
            existing_rows_count: Some(0),
            deleted_rows_count: Some(0),
            partitions: None,
            key_metadata: None,
            first_row_id: None,
        }
    }

    #[test]
    fn bins_fill_from_the_oldest_end() {
        let items: Vec<ManifestFile> = (0..7).map(|n| mf(10, n)).collect();
        let bins = pack_end(items, 30);
        let names: Vec<Vec<String>> = bins
            .iter()
            .map(|b| b.iter().map(|m| m.manifest_path.clone()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["m0".to_string()],
                vec!["m1".into(), "m2".into(), "m3".into()],
                vec!["m4".into(), "m5".into(), "m6".into()]
            ]
        );
        // A manifest over the target gets a bin of its own.
        let bins = pack_end(vec![mf(5, 0), mf(100, 1), mf(5, 2)], 30);
        assert_eq!(bins.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
    }

    #[test]
    fn properties_have_javas_defaults() {
        let p = ManifestProps::of(&HashMap::new());
        assert!(p.merge_enabled);
        assert_eq!((p.min_count_to_merge, p.target_size_bytes), (100, 8 << 20));
        let p = ManifestProps::of(&HashMap::from([
            (
                "commit.manifest-merge.enabled".to_string(),
                "false".to_string(),
            ),
            (
                "commit.manifest.min-count-to-merge".to_string(),
                "5".to_string(),
            ),
        ]));
        assert!(!p.merge_enabled);
        assert_eq!(p.min_count_to_merge, 5);
    }
}

//! What a commit asks for: the change to the table's files, and floe's state to record with
//! it.

use std::collections::HashMap;

use iceberg::spec::{DataContentType, DataFile, Operation};

use crate::loads::LoadUpdate;
use crate::marks::PositionSet;
use crate::offsets::OffsetRange;

/// What a commit does to the table.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add data files (and delete files: a row delta, as other engines commit deletes). With
    /// no file, no snapshot is added: only floe's state (offsets, marks) is recorded, in the
    /// table's properties.
    Append(Vec<DataFile>),
    /// Swap files for files with the same rows (compaction). `removed` may name delete files
    /// whose rows the rewrite applied; see [`CommitRequest::validate_from_sequence`].
    Replace {
        /// Files that leave the table.
        removed: Vec<DataFile>,
        /// Files that take their place.
        added: Vec<DataFile>,
    },
    /// Remove whole files (metadata-only delete, e.g. retention).
    Delete(Vec<DataFile>),
    /// Remove files and add rewritten ones with fewer rows (retention of straddling files).
    Overwrite {
        /// Files that leave the table.
        removed: Vec<DataFile>,
        /// Rewritten files.
        added: Vec<DataFile>,
    },
    /// Rewrite the manifests of the current snapshot, clustered by partition, into as few as
    /// `commit.manifest.target-size-bytes` allows; no data file changes.
    RewriteManifests,
}

impl Change {
    pub(crate) fn operation(&self) -> Operation {
        match self {
            Change::Append(files)
                if files
                    .iter()
                    .any(|f| f.content_type() != DataContentType::Data) =>
            {
                Operation::Overwrite
            }
            Change::Append(_) => Operation::Append,
            Change::Replace { .. } | Change::RewriteManifests => Operation::Replace,
            Change::Delete(_) => Operation::Delete,
            Change::Overwrite { .. } => Operation::Overwrite,
        }
    }

    /// The data files the change adds.
    pub fn added(&self) -> &[DataFile] {
        match self {
            Change::Append(a)
            | Change::Replace { added: a, .. }
            | Change::Overwrite { added: a, .. } => a,
            Change::Delete(_) | Change::RewriteManifests => &[],
        }
    }

    /// The files the change removes (data files, and delete files that no longer apply).
    pub fn removed(&self) -> &[DataFile] {
        match self {
            Change::Append(_) | Change::RewriteManifests => &[],
            Change::Replace { removed, .. }
            | Change::Delete(removed)
            | Change::Overwrite { removed, .. } => removed,
        }
    }

    /// Whether the change only records state: no snapshot is needed.
    pub(crate) fn is_state_only(&self) -> bool {
        matches!(self, Change::Append(files) if files.is_empty())
    }

    /// The removed data files (not delete files).
    pub(crate) fn removed_data(&self) -> impl Iterator<Item = &DataFile> {
        self.removed()
            .iter()
            .filter(|f| f.content_type() == DataContentType::Data)
    }

    /// The removed delete files.
    pub(crate) fn removed_deletes(&self) -> impl Iterator<Item = &DataFile> {
        self.removed()
            .iter()
            .filter(|f| f.content_type() != DataContentType::Data)
    }
}

/// Kafka offsets covered by a commit, for one consumer group.
#[derive(Debug, Clone)]
pub struct OffsetsUpdate {
    /// Consumer group (names the property key).
    pub group: String,
    /// Per partition, the offsets this commit's rows came from.
    pub ranges: Vec<OffsetRange>,
}

/// Positions a commit applies (see [`crate::marks`]).
#[derive(Debug, Clone)]
pub struct AppliedUpdate {
    /// Names the property key (`floe.applied.<name>`).
    pub name: String,
    /// The positions.
    pub positions: PositionSet,
    /// Recorded marks to drop: their sources can no longer be applied (the dead letters were
    /// removed), so the marks stay as small as what is pending. The overlap check runs
    /// before they are dropped.
    pub forget: PositionSet,
    /// With `forget`: the source table's sequence number once the forgotten positions had
    /// left it. It becomes the marks' horizon (`floe.applied-horizon.<name>`).
    pub forget_at: Option<i64>,
    /// The source table's sequence number the positions were read at. A commit whose
    /// positions were read below the horizon is refused ([`crate::Error::AlreadyApplied`]):
    /// the source may have held positions applied and forgotten since.
    pub read_at: Option<i64>,
}

/// One commit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The change.
    pub change: Change,
    /// Offsets to record (and to check against what is committed).
    pub offsets: Option<OffsetsUpdate>,
    /// Source positions to record as applied (and to check against what is applied).
    pub applied: Option<AppliedUpdate>,
    /// How far a load (`floe load`) got, to record (and to check against what is recorded).
    pub load: Option<LoadUpdate>,
    /// Extra snapshot summary properties.
    pub properties: HashMap<String, String>,
    /// For rewrites (replace, overwrite): the sequence number of the snapshot the rewrite
    /// read. A delete file committed after it that may apply to a removed data file fails the
    /// commit with [`crate::Error::ConcurrentDelete`], so the rewrite cannot bring back rows
    /// another engine deleted meanwhile (Iceberg Java's `validateNoNewDeletesForDataFiles`).
    pub validate_from_sequence: Option<i64>,
    /// The partition spec the added data files were written with (default: the table's
    /// current one). Another engine may evolve the spec while a batch is being written; its
    /// files then go into a manifest of the spec they were partitioned by.
    pub spec_id: Option<i32>,
}

impl CommitRequest {
    /// An append of `files`.
    pub fn append(files: Vec<DataFile>) -> Self {
        Self::new(Change::Append(files))
    }

    /// A commit of `change`.
    pub fn new(change: Change) -> Self {
        Self {
            change,
            offsets: None,
            applied: None,
            load: None,
            properties: HashMap::new(),
            validate_from_sequence: None,
            spec_id: None,
        }
    }

    /// The added data files were partitioned by spec `spec_id`.
    pub fn written_with(mut self, spec_id: i32) -> Self {
        self.spec_id = Some(spec_id);
        self
    }

    /// Adds offsets to record.
    pub fn with_offsets(mut self, group: impl Into<String>, ranges: Vec<OffsetRange>) -> Self {
        self.offsets = Some(OffsetsUpdate {
            group: group.into(),
            ranges,
        });
        self
    }

    /// Records `positions` as applied under `name`.
    pub fn with_applied(mut self, name: impl Into<String>, positions: PositionSet) -> Self {
        self.applied = Some(AppliedUpdate {
            name: name.into(),
            positions,
            forget: PositionSet::new(),
            forget_at: None,
            read_at: None,
        });
        self
    }

    /// Records how far load `update` got.
    pub fn with_load(mut self, update: LoadUpdate) -> Self {
        self.load = Some(update);
        self
    }

    /// Validates the rewrite against deletes committed after sequence number `seq`.
    pub fn validate_from(mut self, seq: i64) -> Self {
        self.validate_from_sequence = Some(seq);
        self
    }
}

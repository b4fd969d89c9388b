//! Kafka offsets stored in Iceberg snapshot summaries.
//!
//! A commit writes, in the same snapshot, the next offset to read for every topic-partition
//! the table holds data of: summary key `floe.offsets.<consumer group>`, value JSON
//! `{"topic": {"0": 1234, "1": 987}}`. Each commit writes the merged map, so the newest
//! snapshot carrying the key has the whole state; readers walk snapshot ancestry past
//! snapshots that carry none (commits by other tools, e.g. Trino's `optimize`).

use std::collections::BTreeMap;

use iceberg::spec::{SnapshotRef, TableMetadata};

use crate::{Error, Result};

/// topic → partition → next offset to read.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Summary key prefix.
pub const OFFSETS_KEY_PREFIX: &str = "floe.offsets.";

/// The summary key for a consumer group.
pub fn offsets_key(group: &str) -> String {
    format!("{OFFSETS_KEY_PREFIX}{group}")
}

/// A contiguous run of one partition's messages covered by a commit: `[first, next)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset in the batch.
    pub first: i64,
    /// Offset after the last message of the batch.
    pub next: i64,
}

/// The offsets committed to the table for `group`, from the newest snapshot in the current
/// snapshot's ancestry that carries them (empty if none does).
pub fn committed_offsets(metadata: &TableMetadata, group: &str) -> Result<Offsets> {
    let key = offsets_key(group);
    match newest_summary_value(metadata, &key) {
        None => Ok(Offsets::new()),
        Some((snapshot_id, json)) => serde_json::from_str(json).map_err(|e| {
            Error::Config(format!(
                "snapshot {snapshot_id} of the table has an unreadable {key}: {e}"
            ))
        }),
    }
}

/// The value of summary property `key` in the newest snapshot of the current snapshot's
/// ancestry that carries it, with that snapshot's id.
pub fn newest_summary_value<'a>(metadata: &'a TableMetadata, key: &str) -> Option<(i64, &'a str)> {
    ancestry(metadata).find_map(|s| {
        s.summary()
            .additional_properties
            .get(key)
            .map(|v| (s.snapshot_id(), v.as_str()))
    })
}

/// The current snapshot and its ancestors, newest first. Stops after as many steps as the
/// table has snapshots, so a cycle in corrupt metadata cannot loop forever.
pub fn ancestry(metadata: &TableMetadata) -> impl Iterator<Item = &SnapshotRef> {
    std::iter::successors(metadata.current_snapshot(), |s| {
        s.parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id))
    })
    .take(metadata.snapshots().len())
}

/// Merges `ranges` into `committed`, refusing a range that overlaps what is committed (a
/// message committed twice) — the fence against writers that lost a partition.
pub fn merge_offsets(table: &str, committed: &Offsets, ranges: &[OffsetRange]) -> Result<Offsets> {
    let mut merged = committed.clone();
    for r in ranges {
        let next = merged
            .entry(r.topic.clone())
            .or_default()
            .entry(r.partition)
            .or_insert(r.next);
        if let Some(c) = committed.get(&r.topic).and_then(|p| p.get(&r.partition))
            && r.first < *c
        {
            return Err(Error::OffsetsAlreadyCommitted {
                table: table.to_string(),
                topic: r.topic.clone(),
                partition: r.partition,
                committed: *c,
                batch_first: r.first,
            });
        }
        *next = (*next).max(r.next);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(p: i32, first: i64, next: i64) -> OffsetRange {
        OffsetRange {
            topic: "t".into(),
            partition: p,
            first,
            next,
        }
    }

    #[test]
    fn merging_is_per_partition_and_monotone() {
        let committed: Offsets =
            serde_json::from_str(r#"{"t":{"0":10,"1":5},"u":{"0":3}}"#).unwrap();
        let merged = merge_offsets("x", &committed, &[range(0, 10, 20), range(2, 0, 7)]).unwrap();
        assert_eq!(
            serde_json::to_string(&merged).unwrap(),
            r#"{"t":{"0":20,"1":5,"2":7},"u":{"0":3}}"#
        );
        // Gaps (compacted topics, retention) are allowed; overlaps are not.
        assert!(merge_offsets("x", &committed, &[range(1, 4, 12)]).is_err());
        assert!(merge_offsets("x", &committed, &[range(1, 5, 12)]).is_ok());
        assert!(merge_offsets("x", &committed, &[range(1, 50, 60)]).is_ok());
    }
}

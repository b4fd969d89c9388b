//! Kafka offsets committed to a table, per consumer group.
//!
//! A commit records, in the metadata file that adds its snapshot, the next offset to read for
//! every topic-partition the table holds data of: table property `floe.offsets.<consumer
//! group>`, value JSON `{"topic": {"0": 1234, "1": 987}}`, the whole merged map (see
//! [`crate::state`] for why a property, and how tables of earlier versions are read).

use std::collections::BTreeMap;

use iceberg::spec::TableMetadata;

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

/// The offsets committed to the table for `group` (empty if none are).
pub fn committed_offsets(metadata: &TableMetadata, group: &str) -> Result<Offsets> {
    let key = offsets_key(group);
    match crate::state::state_value(metadata, &key) {
        None => Ok(Offsets::new()),
        Some((origin, json)) => serde_json::from_str(json)
            .map_err(|e| Error::Config(format!("the table's {key} ({origin}) is unreadable: {e}"))),
    }
}

/// Every consumer group with offsets in the table, with its offsets.
pub fn all_committed_offsets(metadata: &TableMetadata) -> Result<BTreeMap<String, Offsets>> {
    crate::state::floe_state(metadata)
        .keys()
        .filter_map(|k| k.strip_prefix(OFFSETS_KEY_PREFIX))
        .map(|g| Ok((g.to_string(), committed_offsets(metadata, g)?)))
        .collect()
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

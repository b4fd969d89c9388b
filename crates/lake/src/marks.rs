//! Sets of source positions applied to a table, stored in snapshot summaries.
//!
//! Kafka offsets ([`crate::offsets`]) describe a contiguous prefix per partition. Some writes
//! are not prefixes: `floe dlq replay` re-feeds an arbitrary subset of dead letters. For those a
//! commit records the exact positions it applied, as sorted, merged ranges per source and
//! partition, under summary key `floe.applied.<name>` (JSON `{"topic": {"0": [[10, 12], [40,
//! 41]]}}`, end exclusive). Like offsets, each commit writes the merged set, readers take the
//! newest snapshot in the current ancestry that carries the key, and a commit whose positions
//! overlap the set is refused — so a position is applied at most once even when two replays
//! race.

use std::collections::BTreeMap;

use iceberg::spec::TableMetadata;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Summary key prefix.
pub const APPLIED_KEY_PREFIX: &str = "floe.applied.";

/// The summary key for marks named `name`.
pub fn applied_key(name: &str) -> String {
    format!("{APPLIED_KEY_PREFIX}{name}")
}

/// Source positions: source (topic, `file:<path>`) → partition → sorted disjoint
/// `[start, end)` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PositionSet(BTreeMap<String, BTreeMap<i32, Vec<(i64, i64)>>>);

impl PositionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the set holds no position.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|p| p.values().all(Vec::is_empty))
    }

    /// Number of positions held.
    pub fn len(&self) -> u64 {
        self.0
            .values()
            .flat_map(|p| p.values())
            .flatten()
            .map(|(s, e)| (e - s) as u64)
            .sum()
    }

    /// Whether `offset` of `source[partition]` is in the set.
    pub fn contains(&self, source: &str, partition: i32, offset: i64) -> bool {
        let Some(ranges) = self.0.get(source).and_then(|p| p.get(&partition)) else {
            return false;
        };
        let i = ranges.partition_point(|(s, _)| *s <= offset);
        i > 0 && offset < ranges[i - 1].1
    }

    /// Adds one position (no-op if present).
    pub fn insert(&mut self, source: &str, partition: i32, offset: i64) {
        let ranges = self
            .0
            .entry(source.to_string())
            .or_default()
            .entry(partition)
            .or_default();
        insert_range(ranges, offset, offset + 1);
    }

    /// The first position of `other` that is also in `self`, if any.
    pub fn first_overlap(&self, other: &PositionSet) -> Option<(String, i32, i64)> {
        for (source, parts) in &other.0 {
            for (partition, ranges) in parts {
                let Some(mine) = self.0.get(source).and_then(|p| p.get(partition)) else {
                    continue;
                };
                for &(s, e) in ranges {
                    for &(ms, me) in mine {
                        let lo = s.max(ms);
                        if lo < e.min(me) {
                            return Some((source.clone(), *partition, lo));
                        }
                    }
                }
            }
        }
        None
    }

    /// Adds every position of `other`.
    pub fn extend(&mut self, other: &PositionSet) {
        for (source, parts) in &other.0 {
            for (partition, ranges) in parts {
                let mine = self
                    .0
                    .entry(source.clone())
                    .or_default()
                    .entry(*partition)
                    .or_default();
                for &(s, e) in ranges {
                    insert_range(mine, s, e);
                }
            }
        }
    }
}

/// Inserts `[start, end)` into sorted disjoint ranges, merging neighbours.
fn insert_range(ranges: &mut Vec<(i64, i64)>, start: i64, end: i64) {
    let i = ranges.partition_point(|(_, e)| *e < start);
    let mut j = i;
    let (mut s, mut e) = (start, end);
    while j < ranges.len() && ranges[j].0 <= e {
        s = s.min(ranges[j].0);
        e = e.max(ranges[j].1);
        j += 1;
    }
    ranges.splice(i..j, [(s, e)]);
}

/// The positions applied under `name`, from the newest snapshot in the current ancestry that
/// carries them (empty if none does).
pub fn applied_positions(metadata: &TableMetadata, name: &str) -> Result<PositionSet> {
    let key = applied_key(name);
    match crate::offsets::newest_summary_value(metadata, &key) {
        None => Ok(PositionSet::new()),
        Some((snapshot_id, json)) => serde_json::from_str(json).map_err(|e| {
            Error::Config(format!(
                "snapshot {snapshot_id} of the table has an unreadable {key}: {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_merge_and_serialize_compactly() {
        let mut s = PositionSet::new();
        for o in [5, 3, 4, 10, 7, 6] {
            s.insert("t", 0, o);
        }
        s.insert("file:a.jsonl", -1, 1);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"file:a.jsonl":{"-1":[[1,2]]},"t":{"0":[[3,8],[10,11]]}}"#
        );
        assert_eq!(s.len(), 7);
        assert!(s.contains("t", 0, 7) && !s.contains("t", 0, 8) && !s.contains("t", 1, 3));
        let mut other = PositionSet::new();
        other.insert("t", 0, 9);
        assert_eq!(s.first_overlap(&other), None);
        other.insert("t", 0, 10);
        assert_eq!(s.first_overlap(&other), Some(("t".into(), 0, 10)));
    }

    proptest! {
        #[test]
        fn set_agrees_with_a_plain_set(offsets in proptest::collection::vec((0i32..3, 0i64..200), 0..300)) {
            let mut s = PositionSet::new();
            let mut plain = std::collections::BTreeSet::new();
            for (p, o) in &offsets {
                s.insert("t", *p, *o);
                plain.insert((*p, *o));
            }
            prop_assert_eq!(s.len(), plain.len() as u64);
            for p in 0..3 {
                for o in 0..200 {
                    prop_assert_eq!(s.contains("t", p, o), plain.contains(&(p, o)));
                }
            }
            let back: PositionSet = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}

//! Sets of source positions applied to a table, stored in snapshot summaries.
//!
//! Kafka offsets ([`crate::offsets`]) describe a contiguous prefix per partition. Some writes
//! are not prefixes: `floe dlq replay` re-feeds an arbitrary subset of dead letters. For those a
//! commit records the exact positions it applied, as sorted, merged ranges per source and
//! partition, under summary key `floe.applied.<name>` (JSON `{"topic": {"0": [[10, 12], [40,
//! 41]]}}`, end exclusive), a table property like the offsets ([`crate::state`]). Each commit
//! writes the merged set, and a commit whose positions overlap the set is refused — so a
//! position is applied at most once even when two replays race. Marks are only needed while
//! their source (a dead letter) may still be applied: a commit can drop them
//! ([`crate::commit::AppliedUpdate::forget`]), so the set stays as small as what is pending.

use std::collections::BTreeMap;

use iceberg::spec::TableMetadata;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Summary key prefix.
pub const APPLIED_KEY_PREFIX: &str = "floe.applied.";

/// Table property: the source table's sequence number up to which marks of `name` were
/// cleared once their sources were gone; positions read before it are refused.
pub fn horizon_key(name: &str) -> String {
    format!("floe.applied-horizon.{name}")
}

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

impl PositionSet {
    /// Removes every position of `other` from `self`.
    pub fn subtract(&mut self, other: &PositionSet) {
        for (source, parts) in &mut self.0 {
            for (partition, mine) in parts.iter_mut() {
                let Some(theirs) = other.0.get(source).and_then(|p| p.get(partition)) else {
                    continue;
                };
                let mut left = Vec::with_capacity(mine.len());
                for &(s, e) in mine.iter() {
                    let mut start = s;
                    for &(ts, te) in theirs {
                        if te <= start || ts >= e {
                            continue;
                        }
                        if ts > start {
                            left.push((start, ts));
                        }
                        start = start.max(te);
                        if start >= e {
                            break;
                        }
                    }
                    if start < e {
                        left.push((start, e));
                    }
                }
                *mine = left;
            }
            parts.retain(|_, r| !r.is_empty());
        }
        self.0.retain(|_, p| !p.is_empty());
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

/// The positions applied under `name` (empty if none are).
pub fn applied_positions(metadata: &TableMetadata, name: &str) -> Result<PositionSet> {
    let key = applied_key(name);
    match crate::state::state_value(metadata, &key) {
        None => Ok(PositionSet::new()),
        Some((origin, json)) => serde_json::from_str(json)
            .map_err(|e| Error::Config(format!("the table's {key} ({origin}) is unreadable: {e}"))),
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

        #[test]
        fn difference_agrees_with_plain_sets(
            a in proptest::collection::vec((0i32..2, 0i64..120), 0..150),
            b in proptest::collection::vec((0i32..3, 0i64..120), 0..150),
        ) {
            let (mut sa, mut sb) = (PositionSet::new(), PositionSet::new());
            for (p, o) in &a { sa.insert("t", *p, *o); }
            for (p, o) in &b { sb.insert("t", *p, *o); }
            let mut minus = sa.clone();
            minus.subtract(&sb);
            for p in 0..3 {
                for o in 0..120 {
                    prop_assert_eq!(minus.contains("t", p, o), sa.contains("t", p, o) && !sb.contains("t", p, o));
                }
            }
            prop_assert_eq!(minus.is_empty(), minus == PositionSet::new());
        }
    }
}

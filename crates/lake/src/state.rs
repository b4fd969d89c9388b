//! Where floe keeps its state in a table: **table properties**.
//!
//! floe's state is what makes its writes exactly once: the Kafka offsets each consumer group
//! has committed (`floe.offsets.<group>`, see [`crate::offsets`]) and the source positions
//! applied by replays (`floe.applied.<name>`, see [`crate::marks`]). Each is one table
//! property whose value is the whole merged state (JSON), set in the very metadata file that
//! adds the commit's snapshot, so the data and the state move together in one
//! compare-and-swap of the catalog's metadata pointer.
//!
//! Why properties and not snapshot summaries (floe ≤ 0.1 walked the current snapshot's
//! ancestry for the newest summary carrying the key):
//! - every engine carries a table's properties into each metadata file it writes (Iceberg
//!   Java, Trino, Spark, PyIceberg, iceberg-rust), while a summary lives only as long as its
//!   snapshot: Trino's or Spark's `expire_snapshots` keeping only the newest (foreign)
//!   snapshot, or any expiry that cuts the parent chain, dropped floe's offsets and made it
//!   load a topic again;
//! - no expiry, rollback, `set_current_snapshot`, branch or tag touches properties, so the
//!   offsets never go backwards: rows that a rollback took out of the table are treated like
//!   rows another engine deleted (not loaded again), as Kafka Connect, Flink and Delta's
//!   `txn` actions behave;
//! - the state is one value per group, rewritten in place: it stays as small as the number of
//!   partitions (replay marks are pruned once their dead letters are gone), instead of a
//!   copy in every snapshot summary of the metadata file.
//!
//! Tables written by earlier floe versions hold their state only in snapshot summaries; a
//! key missing from the properties is read from there (newest in the current ancestry), and
//! the next floe commit or snapshot expiry writes it into the properties.

use std::collections::{BTreeMap, HashSet};

use iceberg::spec::{SnapshotRef, TableMetadata};

/// Whether `key` names a piece of floe's state.
pub fn is_state_key(key: &str) -> bool {
    key.starts_with(crate::offsets::OFFSETS_KEY_PREFIX)
        || key.starts_with(crate::marks::APPLIED_KEY_PREFIX)
        || key.starts_with("floe.applied-horizon.")
        || key == crate::loads::LOADS_KEY
}

/// Where a state value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The table's properties.
    Property,
    /// The summary of this snapshot (a table last written by an earlier floe version).
    LegacySummary(i64),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Property => f.write_str("table property"),
            Origin::LegacySummary(id) => write!(f, "summary of snapshot {id}"),
        }
    }
}

/// The value of state key `key`: the table property, else (tables written by earlier
/// versions) the newest summary in the current snapshot's ancestry carrying it.
pub fn state_value<'a>(metadata: &'a TableMetadata, key: &str) -> Option<(Origin, &'a str)> {
    if let Some(v) = metadata.properties().get(key) {
        return Some((Origin::Property, v.as_str()));
    }
    ancestry(metadata).find_map(|s| {
        s.summary()
            .additional_properties
            .get(key)
            .map(|v| (Origin::LegacySummary(s.snapshot_id()), v.as_str()))
    })
}

/// Every state key with its value ([`state_value`] for each key found).
pub fn floe_state(metadata: &TableMetadata) -> BTreeMap<String, String> {
    let mut state: BTreeMap<String, String> = metadata
        .properties()
        .iter()
        .filter(|(k, _)| is_state_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut seen: HashSet<String> = state.keys().cloned().collect();
    for s in ancestry(metadata) {
        for (k, v) in &s.summary().additional_properties {
            if is_state_key(k) && seen.insert(k.clone()) {
                state.insert(k.clone(), v.clone());
            }
        }
    }
    state
}

/// The state keys found only in snapshot summaries (tables last written by an earlier floe
/// version), with their values: what a commit moves into the properties.
pub fn legacy_state(metadata: &TableMetadata) -> BTreeMap<String, String> {
    let mut state = floe_state(metadata);
    state.retain(|k, _| !metadata.properties().contains_key(k));
    state
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

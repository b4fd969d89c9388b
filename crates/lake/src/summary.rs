//! A table at a glance (`floe table show`): its schema, partitioning, properties (floe's own
//! state aside), snapshots, totals and the offsets each consumer group committed.

use std::collections::BTreeMap;

use iceberg::spec::TableMetadata;
use serde::Serialize;

use crate::Result;
use crate::offsets::{Offsets, all_committed_offsets};

/// What `floe table show` reports of a table.
#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    /// `namespace.table`.
    pub table: String,
    /// The table's location.
    pub location: String,
    /// Its current metadata file.
    pub metadata_location: String,
    /// Iceberg format version.
    pub format_version: u8,
    /// The current schema's id.
    pub schema_id: i32,
    /// The current schema's top-level columns.
    pub columns: Vec<Column>,
    /// The default partition spec's fields.
    pub partitioning: Vec<PartitionField>,
    /// Table properties, floe's state (offsets, load and replay marks) aside.
    pub properties: BTreeMap<String, String>,
    /// The current snapshot.
    pub current_snapshot_id: Option<i64>,
    /// Every snapshot, oldest first.
    pub snapshots: Vec<SnapshotSummary>,
    /// Live data files, per the current snapshot's summary.
    pub data_files: u64,
    /// Rows, per the current snapshot's summary.
    pub rows: u64,
    /// Bytes of live data files, per the current snapshot's summary.
    pub bytes: u64,
    /// Offsets committed, per consumer group.
    pub committed_offsets: BTreeMap<String, Offsets>,
}

/// A column of the current schema.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// Field id.
    pub id: i32,
    /// Name.
    pub name: String,
    /// Iceberg type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Required (not null).
    pub required: bool,
    /// Its doc string.
    pub doc: Option<String>,
}

/// A field of the default partition spec.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionField {
    /// The partition field's name.
    pub name: String,
    /// Its transform (`day`, `bucket[16]`).
    pub transform: String,
    /// The column it derives from.
    pub source: String,
}

/// A snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// Its id.
    pub snapshot_id: i64,
    /// Its sequence number.
    pub sequence_number: i64,
    /// When it was committed (RFC 3339).
    pub timestamp: String,
    /// `append`, `overwrite`, `delete`, `replace`.
    pub operation: String,
    /// Rows it added.
    pub added_records: Option<u64>,
    /// Rows of the table after it.
    pub total_records: Option<u64>,
}

/// Summarises table `name`, whose current metadata file is `metadata_location`.
pub fn summarize(
    meta: &TableMetadata,
    name: &str,
    metadata_location: &str,
) -> Result<TableSummary> {
    let schema = meta.current_schema();
    let columns = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| Column {
            id: f.id,
            name: f.name.clone(),
            ty: f.field_type.to_string(),
            required: f.required,
            doc: f.doc.clone(),
        })
        .collect();
    let partitioning = meta
        .default_partition_spec()
        .fields()
        .iter()
        .map(|p| PartitionField {
            name: p.name.clone(),
            transform: p.transform.to_string(),
            source: schema
                .field_by_id(p.source_id)
                .map(|f| f.name.clone())
                .unwrap_or_default(),
        })
        .collect();
    let mut snapshots: Vec<&_> = meta.snapshots().collect();
    snapshots.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
    let number = |p: &std::collections::HashMap<String, String>, k: &str| {
        p.get(k).and_then(|v| v.parse::<u64>().ok())
    };
    let snapshots = snapshots
        .iter()
        .map(|s| {
            let p = &s.summary().additional_properties;
            SnapshotSummary {
                snapshot_id: s.snapshot_id(),
                sequence_number: s.sequence_number(),
                timestamp: s.timestamp().map(|t| t.to_rfc3339()).unwrap_or_default(),
                operation: s.summary().operation.as_str().to_string(),
                added_records: number(p, "added-records"),
                total_records: number(p, "total-records"),
            }
        })
        .collect();
    let current = meta
        .current_snapshot()
        .map(|s| &s.summary().additional_properties);
    let total = |k: &str| current.and_then(|p| number(p, k)).unwrap_or(0);
    Ok(TableSummary {
        table: name.to_string(),
        location: meta.location().to_string(),
        metadata_location: metadata_location.to_string(),
        format_version: meta.format_version() as u8,
        schema_id: schema.schema_id(),
        columns,
        partitioning,
        properties: meta
            .properties()
            .iter()
            .filter(|(k, _)| !crate::state::is_state_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        current_snapshot_id: meta.current_snapshot_id(),
        snapshots,
        data_files: total("total-data-files"),
        rows: total("total-records"),
        bytes: total("total-files-size"),
        committed_offsets: all_committed_offsets(meta)?,
    })
}

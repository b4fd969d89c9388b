//! The aggregate tables of a pipeline: which definitions it runs, the columns dedup reads,
//! creating missing tables, and the event ids the raw table holds (to rebuild dedup state).

use std::collections::HashMap;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use floe_aggregate::AggregateDef;
use floe_aggregate::dedup::{Part, key_hash};
use floe_lake::{Committer, parse_table_ident};
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::expr::Reference;
use iceberg::spec::{Datum, TableMetadata};

use super::{AggTable, DedupColumns};
use crate::{Error, Result};

/// The aggregate tables a pipeline feeds: the named definitions, or every definition whose
/// source is the pipeline's table.
pub fn select<'a>(
    defs: &'a [AggregateDef],
    table: &str,
    names: Option<&[String]>,
) -> Result<Vec<&'a AggregateDef>> {
    match names {
        None => Ok(defs
            .iter()
            .filter(|d| d.source.as_deref() == Some(table))
            .collect()),
        Some(names) => names
            .iter()
            .map(|n| {
                defs.iter().find(|d| d.name == *n).ok_or_else(|| {
                    Error::Config(format!(
                        "aggregates: no definition named {n} (known: {})",
                        defs.iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect(),
    }
}

/// The dedup columns of a raw table, checked: the id column, the event time (source of the
/// time partition), and the Kafka metadata columns the state is rebuilt from.
pub fn dedup_columns(
    table: &str,
    metadata: &TableMetadata,
    key: &str,
    topics: usize,
) -> Result<DedupColumns> {
    let schema = metadata.current_schema();
    if schema.field_by_name(key).is_none() {
        return Err(Error::Config(format!(
            "dedup_column {key}: {table} has no such column"
        )));
    }
    let mut needed = vec!["_kafka_partition", "_kafka_offset"];
    if topics > 1 {
        needed.push("_kafka_topic");
    }
    for c in needed {
        if schema.field_by_name(c).is_none() {
            return Err(Error::Config(format!(
                "aggregates need column {c} in {table} to rebuild their dedup state after a restart; add it (floe fills it)"
            )));
        }
    }
    let time = floe_lake::partition::event_time_column(metadata)
        .map(|(_, name)| name)
        .ok_or_else(|| {
            Error::Config(format!(
                "aggregates need {table} partitioned by the event time (hour/day/month/year of a timestamp)"
            ))
        })?;
    Ok(DedupColumns {
        key: key.to_string(),
        time,
    })
}

/// Ids (with event time) of the raw table's recent rows, per partition, below each partition's
/// offset.
pub(super) async fn load_recent_keys(
    committer: &Committer,
    raw: &TableIdent,
    columns: &DedupColumns,
    topics: &[String],
    window_us: i64,
    parts: &[(Part, Option<i64>)],
) -> floe_lake::Result<HashMap<Part, Vec<(u128, i64)>>> {
    let mut out: HashMap<Part, Vec<(u128, i64)>> = HashMap::new();
    let below: HashMap<&Part, i64> = parts
        .iter()
        .filter_map(|(p, o)| o.map(|o| (p, o)))
        .collect();
    if below.is_empty() {
        return Ok(out);
    }
    let catalog = committer.catalog();
    let table = catalog.load_table(raw).await?;
    let metadata = table.metadata();
    if metadata.current_snapshot().is_none() {
        return Ok(out);
    }
    let time_id = metadata
        .current_schema()
        .field_by_name(&columns.time)
        .map(|f| f.id)
        .unwrap_or(-1);
    let watermark = floe_lake::scan::live_data_files(catalog.file_io(), metadata)
        .await?
        .iter()
        .filter_map(|f| f.data_file.upper_bounds().get(&time_id))
        .filter_map(|d| match d.literal() {
            iceberg::spec::PrimitiveLiteral::Long(v) => Some(*v),
            _ => None,
        })
        .max();
    let Some(watermark) = watermark else {
        return Ok(out);
    };
    // Twice the window: partitions lag the newest one; each partition trims to its own.
    let horizon = watermark.saturating_sub(window_us.saturating_mul(2));
    let mut select = vec![
        columns.key.as_str(),
        columns.time.as_str(),
        "_kafka_partition",
        "_kafka_offset",
    ];
    let multi = topics.len() > 1;
    if multi {
        select.push("_kafka_topic");
    }
    let scan = table
        .scan()
        .select(select)
        .with_filter(
            Reference::new(columns.time.clone())
                .greater_than_or_equal_to(Datum::timestamptz_micros(horizon)),
        )
        .build()?;
    let mut stream = scan.to_arrow().await?;
    while let Some(b) = stream.try_next().await? {
        let keys = b.column(0).as_string::<i32>();
        let times = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let partitions = b.column(2).as_primitive::<Int32Type>();
        let offsets = b.column(3).as_primitive::<Int64Type>();
        let topic_col = multi.then(|| b.column(4).as_string::<i32>());
        for i in 0..b.num_rows() {
            if keys.is_null(i) || partitions.is_null(i) || offsets.is_null(i) {
                continue;
            }
            let topic = match &topic_col {
                Some(t) if t.is_valid(i) => t.value(i).to_string(),
                Some(_) => continue,
                None => topics[0].clone(),
            };
            let part: Part = (topic, partitions.value(i));
            if below.get(&part).is_some_and(|b| offsets.value(i) < *b) {
                let t = if times.is_null(i) { 0 } else { times.value(i) };
                out.entry(part)
                    .or_default()
                    .push((key_hash(keys.value(i).as_bytes()), t));
            }
        }
    }
    Ok(out)
}

/// Creates the aggregate tables from their definitions in `schemas` if missing; returns their
/// identifiers.
pub async fn ensure_tables(
    committer: &Committer,
    defs: &[&AggregateDef],
    definitions: &[floe_schema::TableDefinition],
) -> Result<Vec<AggTable>> {
    let mut out = Vec::new();
    for def in defs {
        let ident = parse_table_ident(&def.target)?;
        if committer
            .catalog()
            .find_metadata_location(&ident)
            .await?
            .is_none()
        {
            let table_def = definitions
                .iter()
                .find(|d| d.full_name() == def.target)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "aggregate {}: table {} does not exist and schemas/ has no definition of it",
                        def.name, def.target
                    ))
                })?;
            committer
                .catalog()
                .create_table_if_missing(table_def)
                .await?;
        }
        out.push(AggTable {
            def: (*def).clone(),
            ident,
        });
    }
    Ok(out)
}

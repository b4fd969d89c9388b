//! Aggregate definitions: `sql/aggregates/*.sql`, a DataFusion query over the virtual table
//! `batch` with a header naming the target table, its key columns and how each other column
//! merges:
//!
//! ```sql
//! -- source: lake.events
//! -- target: lake.events_hourly_multi
//! -- key: window_start, country
//! -- merge: event_count=sum, value_min=min, value_max=max
//! SELECT date_trunc('hour', event_ts) AS window_start, country, count(*) AS event_count, …
//! FROM batch GROUP BY 1, 2
//! ```
//!
//! Every non-key column is a partial that merges with `sum` (the default), `min` or `max`:
//! partials of the same key combine into exact totals, which is what makes incremental,
//! exactly-once aggregation and compaction of aggregate tables possible.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Error, Result};

/// How partial values of a column combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Totals add up (counts, sums).
    Sum,
    /// The smallest partial.
    Min,
    /// The largest partial.
    Max,
}

impl Merge {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sum" => Some(Self::Sum),
            "min" => Some(Self::Min),
            "max" => Some(Self::Max),
            _ => None,
        }
    }

    /// The SQL aggregate function that merges partials.
    pub fn sql(&self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

/// One aggregate: its query, target table, key and merge functions.
#[derive(Debug, Clone)]
pub struct AggregateDef {
    /// The file stem (`hourly_by_dimension`).
    pub name: String,
    /// The table whose flushed batches feed it (`lake.events`); pipelines loading that table
    /// run it unless their `aggregates` setting says otherwise.
    pub source: Option<String>,
    /// Target table (`lake.events_hourly_by_dimension`).
    pub target: String,
    /// Key columns, in order.
    pub keys: Vec<String>,
    /// Merge function of non-key columns named in the header (others merge with `sum`).
    pub merge: BTreeMap<String, Merge>,
    /// The query.
    pub sql: String,
}

/// The shipped definitions, built into the binary: (file stem, SQL).
pub const BUILTIN: [(&str, &str); 2] = [
    (
        "hourly_by_dimension",
        include_str!("../../../sql/aggregates/hourly_by_dimension.sql"),
    ),
    (
        "hourly_multi",
        include_str!("../../../sql/aggregates/hourly_multi.sql"),
    ),
];

impl AggregateDef {
    /// Parses a definition; `name` is used in error messages.
    pub fn parse(name: &str, sql: &str) -> Result<Self> {
        let mut target = None;
        let mut source = None;
        let mut keys = None;
        let mut merge = BTreeMap::new();
        for line in sql.lines() {
            let Some(comment) = line.trim().strip_prefix("--") else {
                continue;
            };
            let Some((k, v)) = comment.split_once(':') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "target" => target = Some(v.trim().to_string()),
                "source" => source = Some(v.trim().to_string()),
                "key" => {
                    keys = Some(
                        v.split(',')
                            .map(|c| c.trim().to_string())
                            .filter(|c| !c.is_empty())
                            .collect::<Vec<_>>(),
                    )
                }
                "merge" => {
                    for item in v.split(',').filter(|i| !i.trim().is_empty()) {
                        let (col, f) = item.split_once('=').ok_or_else(|| {
                            Error::Definition(format!(
                                "{name}: merge entry {:?} is not column=sum|min|max",
                                item.trim()
                            ))
                        })?;
                        let f = Merge::parse(f).ok_or_else(|| {
                            Error::Definition(format!(
                                "{name}: merge function {:?} of {} is not sum, min or max",
                                f.trim(),
                                col.trim()
                            ))
                        })?;
                        merge.insert(col.trim().to_string(), f);
                    }
                }
                _ => {}
            }
        }
        let target = target.ok_or_else(|| {
            Error::Definition(format!(
                "{name}: no `-- target: namespace.table` header line"
            ))
        })?;
        if target.split('.').count() < 2 {
            return Err(Error::Definition(format!(
                "{name}: target {target:?} must be namespace.table"
            )));
        }
        let keys = keys.filter(|k| !k.is_empty()).ok_or_else(|| {
            Error::Definition(format!("{name}: no `-- key: col, col` header line"))
        })?;
        for k in &keys {
            if merge.contains_key(k) {
                return Err(Error::Definition(format!(
                    "{name}: {k} is a key column and cannot have a merge function"
                )));
            }
        }
        Ok(Self {
            name: name.to_string(),
            source,
            target,
            keys,
            merge,
            sql: sql.to_string(),
        })
    }

    /// How `column` merges (`None` for key columns).
    pub fn merge_of(&self, column: &str) -> Option<Merge> {
        if self.keys.iter().any(|k| k == column) {
            None
        } else {
            Some(self.merge.get(column).copied().unwrap_or(Merge::Sum))
        }
    }

    /// Every `*.sql` file of `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::Definition(format!("reading {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let sql = std::fs::read_to_string(p)
                    .map_err(|e| Error::Definition(format!("reading {}: {e}", p.display())))?;
                let stem = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("aggregate");
                Self::parse(stem, &sql)
            })
            .collect()
    }

    /// The built-in definitions.
    pub fn builtin() -> Result<Vec<Self>> {
        BUILTIN.iter().map(|(n, sql)| Self::parse(n, sql)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_errors_name_the_file() {
        let d = AggregateDef::parse(
            "x",
            "-- target: lake.t\n-- key: a, b\n-- merge: c=min, d = max\nSELECT 1",
        )
        .unwrap();
        assert_eq!(d.target, "lake.t");
        assert_eq!(d.keys, vec!["a", "b"]);
        assert_eq!(d.merge_of("c"), Some(Merge::Min));
        assert_eq!(d.merge_of("d"), Some(Merge::Max));
        assert_eq!(d.merge_of("e"), Some(Merge::Sum));
        assert_eq!(d.merge_of("a"), None);
        for (sql, msg) in [
            ("-- key: a\nSELECT 1", "no `-- target"),
            ("-- target: lake.t\nSELECT 1", "no `-- key"),
            ("-- target: t\n-- key: a\nSELECT 1", "namespace.table"),
            (
                "-- target: lake.t\n-- key: a\n-- merge: b=avg\nSELECT 1",
                "not sum, min or max",
            ),
            (
                "-- target: lake.t\n-- key: a\n-- merge: a=sum\nSELECT 1",
                "is a key column",
            ),
        ] {
            let err = AggregateDef::parse("bad.sql", sql).unwrap_err().to_string();
            assert!(err.contains("bad.sql") && err.contains(msg), "{err}");
        }
    }

    #[test]
    fn shipped_definitions_parse() {
        let defs = AggregateDef::builtin().unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].target, "lake.events_hourly_by_dimension");
        assert_eq!(defs[0].source.as_deref(), Some("lake.events"));
        assert_eq!(defs[1].keys.len(), 6);
    }
}

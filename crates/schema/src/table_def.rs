//! Table definitions: `schemas/<namespace>.<table>.json` files holding an Iceberg schema (spec
//! JSON with field ids), a partition spec, an optional sort order and table properties.
//!
//! A definition is used only to *create* a table. Once a table exists, the schema stored in the
//! catalog is the only schema floe decodes against.

use std::collections::HashMap;
use std::path::Path;

use iceberg::spec::{FormatVersion, Schema, SortOrder, UnboundPartitionSpec};
use serde::Deserialize;

use crate::{Error, Result};

/// The JSON layout of a definition file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct DefinitionFile {
    /// `namespace.table`; defaults to the file name without `.json`.
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "default_format_version")]
    format_version: u8,
    schema: Schema,
    #[serde(default)]
    partition_spec: Option<UnboundPartitionSpec>,
    #[serde(default)]
    sort_order: Option<SortOrder>,
    #[serde(default)]
    properties: HashMap<String, String>,
}

fn default_format_version() -> u8 {
    2
}

/// A table to create: identifier, schema, partitioning, sort order and properties.
#[derive(Debug, Clone)]
pub struct TableDefinition {
    /// Namespace levels (`lake`).
    pub namespace: Vec<String>,
    /// Table name (`events`).
    pub name: String,
    /// Iceberg format version (floe writes v2).
    pub format_version: FormatVersion,
    /// The Iceberg schema, with field ids.
    pub schema: Schema,
    /// Partition spec (unpartitioned when empty).
    pub partition_spec: UnboundPartitionSpec,
    /// Sort order, if any.
    pub sort_order: Option<SortOrder>,
    /// Table properties.
    pub properties: HashMap<String, String>,
}

/// The table definitions shipped in `schemas/`, built into the binary: (file stem, JSON).
/// Used when no schemas directory is at hand (e.g. `floe quickstart` run from anywhere).
pub const BUILTIN: [(&str, &str); 4] = [
    (
        "lake.events",
        include_str!("../../../schemas/lake.events.json"),
    ),
    (
        "lake.events_dead_letters",
        include_str!("../../../schemas/lake.events_dead_letters.json"),
    ),
    (
        "lake.events_hourly_by_dimension",
        include_str!("../../../schemas/lake.events_hourly_by_dimension.json"),
    ),
    (
        "lake.events_hourly_multi",
        include_str!("../../../schemas/lake.events_hourly_multi.json"),
    ),
];

/// The definition every dead-letter table is created from (`schemas/lake.events_dead_letters.json`).
pub const DEAD_LETTER_TEMPLATE: &str =
    include_str!("../../../schemas/lake.events_dead_letters.json");

impl TableDefinition {
    /// Reads a definition file; the table name defaults to the file stem (`lake.events`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidDefinition {
            source_name: path.display().to_string(),
            message: e.to_string(),
        })?;
        let stem = path
            .file_name()
            .and_then(|s| s.to_str())
            .map(|s| s.trim_end_matches(".json").to_string());
        Self::from_json(&text, stem.as_deref(), &path.display().to_string())
    }

    /// Parses a definition from JSON text. `default_name` (`namespace.table`) is used when the
    /// JSON has no `name`; `source_name` only labels error messages.
    pub fn from_json(text: &str, default_name: Option<&str>, source_name: &str) -> Result<Self> {
        let invalid = |message: String| Error::InvalidDefinition {
            source_name: source_name.to_string(),
            message,
        };
        let file: DefinitionFile =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let full_name =
            file.name.as_deref().or(default_name).ok_or_else(|| {
                invalid("no table name (add \"name\": \"namespace.table\")".into())
            })?;
        let (namespace, name) = split_table_name(full_name).map_err(invalid)?;
        let format_version = match file.format_version {
            1 => FormatVersion::V1,
            2 => FormatVersion::V2,
            3 => FormatVersion::V3,
            v => {
                return Err(invalid(format!(
                    "format-version {v} is not an Iceberg version"
                )));
            }
        };
        Ok(Self {
            namespace,
            name,
            format_version,
            schema: file.schema,
            partition_spec: file.partition_spec.unwrap_or_default(),
            sort_order: file.sort_order,
            properties: file.properties,
        })
    }

    /// The standard dead-letter table definition, named `full_name`.
    pub fn dead_letter(full_name: &str) -> Result<Self> {
        Self::from_json(
            DEAD_LETTER_TEMPLATE,
            Some(full_name),
            "dead-letter template",
        )
        .map(|mut d| {
            let (namespace, name) = split_table_name(full_name).expect("validated above");
            d.namespace = namespace;
            d.name = name;
            d
        })
    }

    /// The built-in definitions (see [`BUILTIN`]).
    pub fn builtin() -> Result<Vec<Self>> {
        BUILTIN
            .iter()
            .map(|(name, json)| Self::from_json(json, Some(name), &format!("built-in {name}")))
            .collect()
    }

    /// The definitions (`*.json`) of folder `dir`, sorted by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::InvalidDefinition {
                source_name: dir.display().to_string(),
                message: format!("reading the schemas directory: {e}"),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files.iter().map(|f| Self::from_file(f)).collect()
    }

    /// The definitions of folder `dir`, or the built-in ones when there is no such folder.
    pub fn known(dir: &Path) -> Result<Vec<Self>> {
        if dir.is_dir() {
            Self::load_dir(dir)
        } else {
            Self::builtin()
        }
    }

    /// `namespace.table`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.namespace.join("."), self.name)
    }
}

/// Splits `a.b.table` into (`[a, b]`, `table`). Identifiers must be non-empty.
pub fn split_table_name(full: &str) -> std::result::Result<(Vec<String>, String), String> {
    let parts: Vec<&str> = full.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!(
            "table name {full:?} must be namespace.table (e.g. lake.events)"
        ));
    }
    let (name, ns) = parts.split_last().expect("len >= 2");
    Ok((ns.iter().map(|s| s.to_string()).collect(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    #[test]
    fn every_shipped_definition_parses() {
        let mut n = 0;
        for entry in std::fs::read_dir(schemas_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                let def = TableDefinition::from_file(&path).unwrap();
                assert_eq!(def.full_name(), path.file_stem().unwrap().to_str().unwrap());
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn events_definition_has_the_seed_columns() {
        let def = TableDefinition::from_file(&schemas_dir().join("lake.events.json")).unwrap();
        let names: Vec<_> = def
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        for col in [
            "event_guid",
            "event_ts",
            "country",
            "is_returning",
            "user_id",
            "action",
            "device_type",
            "page",
            "category",
            "value",
            "session_duration",
            "_kafka_partition",
            "_kafka_offset",
            "_ingested_at",
        ] {
            assert!(names.iter().any(|n| n == col), "missing {col}");
        }
        assert!(def.schema.field_by_name("event_guid").unwrap().required);
        assert!(def.schema.field_by_name("event_ts").unwrap().required);
        assert!(!def.schema.field_by_name("country").unwrap().required);
        assert_eq!(def.properties["floe.alias.timestamp"], "event_ts");
    }

    #[test]
    fn dead_letter_template_takes_the_given_name() {
        let def = TableDefinition::dead_letter("raw.orders_dead_letters").unwrap();
        assert_eq!(def.full_name(), "raw.orders_dead_letters");
    }

    #[test]
    fn bad_names_and_json_are_refused_with_the_source() {
        let err = TableDefinition::from_json("{}", Some("x.y"), "f.json").unwrap_err();
        assert!(err.to_string().contains("f.json"), "{err}");
        assert!(split_table_name("events").is_err());
        assert!(split_table_name("lake.").is_err());
    }
}

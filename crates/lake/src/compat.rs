//! Trino compatibility guard: before a table is created or first written, floe refuses what
//! Trino's Iceberg connector (through Iceberg Java) cannot read, with a message that names
//! the table, the column or setting, and what to use instead. PyIceberg and DuckDB read a
//! superset of what passes.
//!
//! Refused: format version 3 (floe writes v2; Trino's v3 support is partial), nanosecond
//! timestamps (`timestamp_ns`, `timestamptz_ns`: v3 only), column default values (v3 only),
//! names that differ only by case (Trino folds identifiers to lower case, so one of the
//! columns would be unreachable), and `write.format.default` other than Parquet (floe writes
//! Parquet; readers would expect the other format).

use std::collections::HashMap;

use iceberg::spec::{FormatVersion, NestedFieldRef, PrimitiveType, Schema, TableMetadata, Type};

use crate::{Error, Result};

/// Checks a table about to be created.
pub fn check_definition(
    table: &str,
    format_version: FormatVersion,
    schema: &Schema,
    properties: &HashMap<String, String>,
) -> Result<()> {
    let mut problems = Vec::new();
    if format_version > FormatVersion::V2 {
        problems.push(format!(
            "format version {} (use \"format-version\": 2; floe writes v2 and Trino reads v1/v2)",
            format_version as u8
        ));
    }
    if let Some(f) = properties.get("write.format.default")
        && !f.eq_ignore_ascii_case("parquet")
    {
        problems.push(format!(
            "write.format.default = {f} (floe writes Parquet; drop the property or set parquet)"
        ));
    }
    check_fields(schema.as_struct().fields(), "", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "table {table} would not be readable by Trino: {}",
            problems.join("; ")
        )))
    }
}

/// Refuses a table whose format floe cannot rewrite correctly (v3: row lineage, deletion
/// vectors), naming it.
pub fn check_format(table: &str, metadata: &TableMetadata) -> Result<()> {
    if metadata.format_version() > FormatVersion::V2 {
        return Err(Error::Unsupported(format!(
            "table {table} is Iceberg format v{} (upgraded by another engine?): floe reads and \
             writes format v2 only, and would ignore v3's row lineage and deletion vectors; \
             load into a v2 table, and maintain this one with the engine that upgraded it",
            metadata.format_version() as u8
        )));
    }
    Ok(())
}

/// Checks an existing table before floe writes to it.
pub fn check_metadata(table: &str, metadata: &TableMetadata) -> Result<()> {
    check_format(table, metadata)?;
    check_definition(
        table,
        metadata.format_version(),
        metadata.current_schema(),
        metadata.properties(),
    )
}

fn check_fields(fields: &[NestedFieldRef], prefix: &str, problems: &mut Vec<String>) {
    let mut lower: HashMap<String, &str> = HashMap::new();
    for f in fields {
        let path = format!("{prefix}{}", f.name);
        if let Some(other) = lower.insert(f.name.to_lowercase(), &f.name) {
            problems.push(format!(
                "columns {prefix}{other} and {path} differ only by case (Trino folds names to lower case)"
            ));
        }
        if f.initial_default.is_some() || f.write_default.is_some() {
            problems.push(format!(
                "column {path} has a default value (a format v3 feature)"
            ));
        }
        check_type(&f.field_type, &path, problems);
    }
}

fn check_type(t: &Type, path: &str, problems: &mut Vec<String>) {
    match t {
        Type::Primitive(PrimitiveType::TimestampNs) => problems.push(format!(
            "column {path} is timestamp_ns (nanoseconds are format v3; use timestamp, microseconds)"
        )),
        Type::Primitive(PrimitiveType::TimestamptzNs) => problems.push(format!(
            "column {path} is timestamptz_ns (nanoseconds are format v3; use timestamptz, microseconds)"
        )),
        Type::Primitive(_) => {}
        Type::Struct(s) => check_fields(s.fields(), &format!("{path}."), problems),
        Type::List(l) => check_type(&l.element_field.field_type, &format!("{path}.element"), problems),
        Type::Map(m) => {
            check_type(&m.key_field.field_type, &format!("{path}.key"), problems);
            check_type(&m.value_field.field_type, &format!("{path}.value"), problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::NestedField;

    fn schema(fields: Vec<NestedField>) -> Schema {
        Schema::builder()
            .with_fields(fields.into_iter().map(std::sync::Arc::new))
            .build()
            .unwrap()
    }

    #[test]
    fn what_trino_reads_passes() {
        let s = schema(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::String)),
            NestedField::optional(2, "ts", Type::Primitive(PrimitiveType::Timestamptz)),
        ]);
        check_definition("lake.t", FormatVersion::V2, &s, &HashMap::new()).unwrap();
    }

    #[test]
    fn nanosecond_timestamps_v3_case_clashes_and_other_formats_are_refused_by_name() {
        let s = schema(vec![
            NestedField::required(1, "id", Type::Primitive(PrimitiveType::String)),
            NestedField::optional(2, "ts", Type::Primitive(PrimitiveType::TimestamptzNs)),
            NestedField::optional(3, "ID", Type::Primitive(PrimitiveType::String)),
        ]);
        let props = HashMap::from([("write.format.default".to_string(), "orc".to_string())]);
        let e = check_definition("lake.t", FormatVersion::V3, &s, &props)
            .unwrap_err()
            .to_string();
        for want in [
            "lake.t",
            "ts is timestamptz_ns",
            "id and ID",
            "format version 3",
            "orc",
        ] {
            assert!(e.contains(want), "{want:?} missing from: {e}");
        }
    }
}

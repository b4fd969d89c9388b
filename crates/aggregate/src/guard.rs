//! The schema-change guard: a change to a table that an aggregate reads (a dropped or renamed
//! column its SQL uses, a type it cannot sum) would fail every loader flush until the SQL is
//! fixed, so `floe table evolve` refuses it unless forced.

use std::sync::Arc;

use crate::{AggregateDef, Aggregator, Error, Result};

/// The aggregates of `defs` that read `table`.
pub fn readers<'a>(defs: &'a [AggregateDef], table: &str) -> Vec<&'a AggregateDef> {
    defs.iter()
        .filter(|d| d.source.as_deref() == Some(table))
        .collect()
}

/// Checks that every aggregate of `defs` reading `table` still plans against `new_schema`,
/// the table's schema after a change. The error names the aggregate and what to do.
pub async fn check_schema_change(
    defs: &[AggregateDef],
    table: &str,
    new_schema: &iceberg::spec::Schema,
) -> Result<()> {
    let readers = readers(defs, table);
    if readers.is_empty() {
        return Ok(());
    }
    let arrow = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(new_schema)
            .map_err(|e| Error::Definition(format!("{table}: the new schema: {e}")))?,
    );
    for def in readers {
        if let Err(e) = Aggregator::new(vec![def.clone()])
            .columns_read(&arrow)
            .await
        {
            return Err(Error::Breaks {
                table: table.to_string(),
                name: def.name.clone(),
                source: Box::new(e),
            });
        }
    }
    Ok(())
}

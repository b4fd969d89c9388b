//! Running aggregate definitions on a batch with DataFusion, merging partials, and shaping the
//! output to the target table's Arrow schema.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

/// One partition, large batches: the inputs are one flush's chunk, already in memory;
/// repartitioning them across threads only adds copies (the loader's other threads keep the
/// cores busy).
fn context() -> SessionContext {
    SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(65_536),
    )
}

use crate::{AggregateDef, Error, Result};

/// Runs a set of aggregate definitions.
#[derive(Debug, Clone)]
pub struct Aggregator {
    defs: Vec<AggregateDef>,
}

impl Aggregator {
    /// An aggregator for `defs`.
    pub fn new(defs: Vec<AggregateDef>) -> Self {
        Self { defs }
    }

    /// The definitions.
    pub fn defs(&self) -> &[AggregateDef] {
        &self.defs
    }

    /// Runs every definition on `batch` (registered as table `batch`); one partial result per
    /// definition, in order.
    pub async fn partials(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let ctx = context();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]])
            .map_err(|e| Error::Definition(format!("registering the batch: {e}")))?;
        ctx.register_table("batch", Arc::new(table))
            .map_err(|e| Error::Definition(format!("registering the batch: {e}")))?;
        let mut out = Vec::with_capacity(self.defs.len());
        for def in &self.defs {
            out.push(collect(&ctx, &def.name, &def.sql).await?);
        }
        Ok(out)
    }

    /// Merges partial rows of definition `index` into one row per key.
    pub async fn merge(&self, index: usize, partials: &[RecordBatch]) -> Result<RecordBatch> {
        let def = &self.defs[index];
        let Some(first) = partials.first() else {
            return Err(Error::Definition(format!("{}: nothing to merge", def.name)));
        };
        let schema = first.schema();
        let ctx = context();
        let table = MemTable::try_new(schema.clone(), vec![partials.to_vec()])
            .map_err(|e| Error::Definition(format!("{}: registering partials: {e}", def.name)))?;
        ctx.register_table("partials", Arc::new(table))
            .map_err(|e| Error::Definition(format!("{}: registering partials: {e}", def.name)))?;
        collect(&ctx, &def.name, &merge_sql(def, &schema)).await
    }
}

/// `SELECT keys…, merge(col) AS col … FROM partials GROUP BY keys…`, columns in the partials'
/// order.
pub fn merge_sql(def: &AggregateDef, schema: &Schema) -> String {
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| match def.merge_of(f.name()) {
            None => quote(f.name()),
            Some(m) => format!("{}({}) AS {}", m.sql(), quote(f.name()), quote(f.name())),
        })
        .collect();
    let keys: Vec<String> = def.keys.iter().map(|k| quote(k)).collect();
    format!(
        "SELECT {} FROM partials GROUP BY {}",
        columns.join(", "),
        keys.join(", ")
    )
}

async fn collect(ctx: &SessionContext, name: &str, sql: &str) -> Result<RecordBatch> {
    let err = |source| Error::Query {
        name: name.to_string(),
        source,
    };
    let df = ctx.sql(sql).await.map_err(err)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(err)?;
    datafusion::arrow::compute::concat_batches(&schema, &batches).map_err(|e| {
        err(datafusion::error::DataFusionError::ArrowError(
            Box::new(e),
            None,
        ))
    })
}

/// Shapes `batch` to `target` (the table's Arrow schema): columns by name, cast to the
/// table's types; a missing column, an extra one or a failed cast is an error naming it.
pub fn conform(def: &AggregateDef, batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let fail = |message: String| Error::Output {
        name: def.name.clone(),
        target: def.target.clone(),
        message,
    };
    for f in batch.schema().fields() {
        if target.field_with_name(f.name()).is_err() {
            return Err(fail(format!(
                "the query yields column {} the table lacks",
                f.name()
            )));
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let col = batch
            .column_by_name(field.name())
            .ok_or_else(|| fail(format!("the query yields no column {}", field.name())))?;
        let col = if col.data_type() == field.data_type() {
            col.clone()
        } else {
            datafusion::arrow::compute::cast(col, field.data_type()).map_err(|e| {
                fail(format!(
                    "column {}: {} does not cast to {}: {e}",
                    field.name(),
                    col.data_type(),
                    field.data_type()
                ))
            })?
        };
        if !field.is_nullable() && col.null_count() > 0 {
            return Err(fail(format!(
                "column {} is required but the query yields NULLs",
                field.name()
            )));
        }
        columns.push(col);
    }
    RecordBatch::try_new(target.clone(), columns).map_err(|e| fail(e.to_string()))
}

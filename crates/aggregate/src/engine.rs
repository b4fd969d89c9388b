//! Running aggregate definitions on a batch with DataFusion, merging partials, and shaping the
//! output to the target table's Arrow schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

/// One partition, large batches: the inputs are one flush's chunk, already in memory;
/// repartitioning them across threads only adds copies (the loader's other threads keep the
/// cores busy).
///
/// `date_bin` is floe's ([`crate::date_bin::DateBin`]): DataFusion's results for less CPU.
pub(crate) fn context() -> SessionContext {
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(65_536),
    );
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        crate::date_bin::DateBin::default(),
    ));
    ctx
}

use crate::input::{Input, InputTable, Shared};
use crate::{AggregateDef, Error, Result};

/// Which query of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stage {
    /// The definition's SQL over `batch`.
    Partial,
    /// Its rows form over `batch` (see [`Form::Rows`]).
    Rows,
    /// The merge of its partials (`partials`).
    Merge,
}

/// How a definition's partials of a batch are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// The query as written: one partial row per key of the batch.
    Grouped,
    /// One partial row per input row: each aggregation replaced by its value over that row
    /// alone (`count(*)` → 1, `sum(x)`/`min(x)`/`max(x)` → `x`, `count(x)` → 0 or 1), the
    /// keys computed as written. Exactly what grouping would give for keys that occur once,
    /// and still partials for keys that repeat (their merge functions combine them): the
    /// cheaper form when keys rarely repeat within a batch, as adaptive partial aggregation
    /// in Trino and DataFusion does. Exists for queries whose every aggregation is a
    /// `count`, `sum`, `min` or `max` (no DISTINCT, FILTER or ORDER BY) of the input rows (not
    /// of another aggregation) with nothing but projections, unions and aliases above it
    /// ([`Aggregator::has_rows_form`]).
    Rows,
}

/// A physical plan made for an input schema.
struct Prepared {
    input: SchemaRef,
    plan: Arc<dyn ExecutionPlan>,
    /// The plans of its shared subqueries (see [`share`]), run first, in order.
    shared: Vec<Arc<dyn ExecutionPlan>>,
}

type Plans = HashMap<(usize, Stage), Prepared>;

/// Runs a set of aggregate definitions. Clones share the plans made so far.
#[derive(Clone)]
pub struct Aggregator {
    defs: Arc<Vec<AggregateDef>>,
    state: SessionState,
    plans: Arc<Mutex<Plans>>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("defs", &self.defs)
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// An aggregator for `defs`.
    pub fn new(defs: Vec<AggregateDef>) -> Self {
        Self {
            defs: Arc::new(defs),
            state: context().state(),
            plans: Arc::default(),
        }
    }

    /// The definitions.
    pub fn defs(&self) -> &[AggregateDef] {
        &self.defs
    }

    /// Runs every definition on `batch` (registered as table `batch`); one partial result per
    /// definition, in order.
    pub async fn partials(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(self.defs.len());
        for i in 0..self.defs.len() {
            out.push(self.partial(i, Form::Grouped, batch).await?);
        }
        Ok(out)
    }

    /// The partials of definition `index` on `batch`, in `form` (which must exist for it:
    /// [`Self::has_rows_form`]).
    pub async fn partial(
        &self,
        index: usize,
        form: Form,
        batch: &RecordBatch,
    ) -> Result<RecordBatch> {
        let stage = match form {
            Form::Grouped => Stage::Partial,
            Form::Rows => Stage::Rows,
        };
        self.run(index, stage, vec![batch.clone()]).await
    }

    /// Whether definition `index` has a [`Form::Rows`] for a `batch` of `schema`.
    pub async fn has_rows_form(&self, index: usize, schema: &SchemaRef) -> Result<bool> {
        Ok(self.rows_plan(index, &loose(schema)).await?.is_some())
    }

    /// The logical plan of definition `index`'s [`Form::Rows`] over a `batch` of `schema`
    /// (loose), with the context it was planned in; `None` if it has none.
    async fn rows_plan(
        &self,
        index: usize,
        schema: &SchemaRef,
    ) -> Result<Option<(SessionContext, LogicalPlan)>> {
        let def = &self.defs[index];
        let ctx = context();
        register(&ctx, "batch", schema, &def.name)?;
        // The query as written (the optimizer may turn a DISTINCT into a grouping).
        let grouped = ctx
            .sql(&def.sql)
            .await
            .map_err(|source| Error::Query {
                name: def.name.clone(),
                source,
            })?
            .into_unoptimized_plan();
        Ok(rows_form(&grouped).map(|rows| (ctx, rows)))
    }

    /// Merges partial rows of definition `index` into one row per key.
    pub async fn merge(&self, index: usize, partials: &[RecordBatch]) -> Result<RecordBatch> {
        if partials.is_empty() {
            return Err(Error::Definition(format!(
                "{}: nothing to merge",
                self.defs[index].name
            )));
        }
        self.run(index, Stage::Merge, partials.to_vec()).await
    }

    /// The columns of `schema` (the `batch` table's) that the definitions read, as indices in
    /// order: the rest need not be copied when a batch is filtered for them.
    pub async fn columns_read(&self, schema: &SchemaRef) -> Result<Vec<usize>> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        if self.defs.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = context();
        register(&ctx, "batch", schema, &self.defs[0].name)?;
        let mut read = std::collections::BTreeSet::new();
        for def in self.defs.iter() {
            let err = |source| Error::Query {
                name: def.name.clone(),
                source,
            };
            let plan = ctx
                .sql(&def.sql)
                .await
                .map_err(err)?
                .into_optimized_plan()
                .map_err(err)?;
            plan.apply(|node| {
                if let LogicalPlan::TableScan(scan) = node
                    && scan.table_name.table() == "batch"
                {
                    match &scan.projection {
                        Some(p) => read.extend(p.iter().copied()),
                        None => read.extend(0..schema.fields().len()),
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .map_err(err)?;
        }
        Ok(read.into_iter().collect())
    }

    /// Runs query `stage` of definition `index` on `input`, planning it first if its input
    /// schema is new.
    async fn run(
        &self,
        index: usize,
        stage: Stage,
        input: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let def = &self.defs[index];
        let err = |source| Error::Query {
            name: def.name.clone(),
            source,
        };
        // Plans are made for a schema; batches that differ only in field metadata or
        // nullability (a merge's output next to fresh partials) share one.
        let schema = loose(&input[0].schema());
        let input = Arc::new(Input(relabel(&schema, input).map_err(err)?));
        let (plan, shared) = self.plan(index, stage, &schema).await?;
        // Shared subqueries first, each once, then the query reading their results.
        let mut results = Vec::with_capacity(shared.len());
        if !shared.is_empty() {
            let config = self.state.config().clone().with_extension(input.clone());
            let task = Arc::new(TaskContext::from(&self.state).with_session_config(config));
            for plan in shared {
                let schema = shared_schema(&plan.schema());
                let rows = execute(plan, task.clone()).await.map_err(err)?;
                results.push(relabel(&schema, rows).map_err(err)?);
            }
        }
        let config = self
            .state
            .config()
            .clone()
            .with_extension(input)
            .with_extension(Arc::new(Shared(results)));
        let task = Arc::new(TaskContext::from(&self.state).with_session_config(config));
        let out_schema = plan.schema();
        let batches = execute(plan, task).await.map_err(err)?;
        datafusion::arrow::compute::concat_batches(&out_schema, &batches).map_err(|e| {
            err(datafusion::error::DataFusionError::ArrowError(
                Box::new(e),
                None,
            ))
        })
    }

    /// The physical plan of `stage` of definition `index` for an input of `schema`, and the
    /// plans of its shared subqueries (fresh copies of the cached trees).
    async fn plan(
        &self,
        index: usize,
        stage: Stage,
        schema: &SchemaRef,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<Arc<dyn ExecutionPlan>>)> {
        let def = &self.defs[index];
        let err = |source| Error::Query {
            name: def.name.clone(),
            source,
        };
        // Plans keep per-run state in places (dynamic filters): each run gets a fresh copy.
        let fresh = |p: &Prepared| -> Result<_> {
            let reset = datafusion::physical_plan::execution_plan::reset_plan_states;
            let shared = p
                .shared
                .iter()
                .map(|s| reset(s.clone()).map_err(err))
                .collect::<Result<Vec<_>>>()?;
            Ok((reset(p.plan.clone()).map_err(err)?, shared))
        };
        if let Some(p) = self.plans.lock().expect("plans lock").get(&(index, stage))
            && p.input == *schema
        {
            return fresh(p);
        }
        let (ctx, logical) = match stage {
            Stage::Rows => self.rows_plan(index, schema).await?.ok_or_else(|| {
                Error::Definition(format!(
                    "{}: the query has no rows form (an aggregation other than count, sum, min or max, or an operator above one)",
                    def.name
                ))
            })?,
            Stage::Partial | Stage::Merge => {
                let ctx = context();
                let (table, sql) = match stage {
                    Stage::Merge => ("partials", merge_sql(def, schema)),
                    _ => ("batch", def.sql.clone()),
                };
                register(&ctx, table, schema, &def.name)?;
                let plan = ctx
                    .sql(&sql)
                    .await
                    .map_err(err)?
                    .into_optimized_plan()
                    .map_err(err)?;
                (ctx, plan)
            }
        };
        let (logical, subqueries) = share(&ctx, logical, &def.name)?;
        let state = ctx.state();
        let mut shared = Vec::with_capacity(subqueries.len());
        for q in &subqueries {
            shared.push(state.create_physical_plan(q).await.map_err(err)?);
        }
        let plan = state.create_physical_plan(&logical).await.map_err(err)?;
        let prepared = Prepared {
            input: schema.clone(),
            plan,
            shared,
        };
        let out = fresh(&prepared)?;
        self.plans
            .lock()
            .expect("plans lock")
            .insert((index, stage), prepared);
        Ok(out)
    }
}

/// Runs `plan` partition by partition on this task (a UNION's branches are partitions): the
/// caller runs chunks concurrently already, and the work stays on the future it polls (where
/// its CPU time is counted), without a task and a channel per branch.
async fn execute(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for partition in 0..plan.properties().output_partitioning().partition_count() {
        let mut stream = plan.execute(partition, task.clone())?;
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
    }
    Ok(batches)
}

/// `batches` under `schema` (the same columns; other names, nullability or metadata).
fn relabel(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|b| {
            RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                .map_err(|e| datafusion::error::DataFusionError::ArrowError(Box::new(e), None))
        })
        .collect()
}

/// The schema of a shared result's table: `schema`'s types, columns named c0, c1, … (an
/// aggregation's output names may repeat under different qualifiers), all nullable.
fn shared_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| arrow_schema::Field::new(format!("c{i}"), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Name of shared result `n`'s table.
fn shared_table(n: usize) -> String {
    format!("__floe_shared_{n}")
}

/// Computes a repeated aggregation once: every aggregation that occurs more than once in
/// `plan` (a common table expression read by several branches of a UNION, say) becomes a
/// scan of a table registered in `ctx` whose rows are its result, computed once per run
/// ([`Shared`]). DataFusion inlines a CTE at each reference and would aggregate the input
/// once per reference. Returns the rewritten plan and the shared aggregations, in the order
/// of their tables' numbers.
fn share(
    ctx: &SessionContext,
    plan: LogicalPlan,
    def: &str,
) -> Result<(LogicalPlan, Vec<LogicalPlan>)> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::prelude::col;
    let fail = |e: datafusion::error::DataFusionError| Error::Query {
        name: def.to_string(),
        source: e,
    };
    let mut seen: HashMap<&LogicalPlan, usize> = HashMap::new();
    plan.apply(|node| {
        if matches!(node, LogicalPlan::Aggregate(_)) {
            *seen.entry(node).or_default() += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(fail)?;
    if seen.values().all(|&n| n < 2) {
        return Ok((plan, Vec::new()));
    }
    let repeated: std::collections::HashSet<LogicalPlan> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(p, _)| p.clone())
        .collect();
    let mut shared: Vec<LogicalPlan> = Vec::new();
    let rewritten = plan
        .transform_down(|node| {
            if !repeated.contains(&node) {
                return Ok(Transformed::no(node));
            }
            let n = match shared.iter().position(|s| *s == node) {
                Some(n) => n,
                None => {
                    shared.push(node.clone());
                    shared.len() - 1
                }
            };
            // The table's columns (c0, c1, …) are aliased back to the node's own names.
            let out = node.schema();
            let table = shared_table(n);
            let provider = Arc::new(crate::input::InputTable::shared(
                shared_schema(out.as_arrow()),
                n,
            ));
            if !ctx.table_exist(table.as_str())? {
                ctx.register_table(table.as_str(), provider.clone())?;
            }
            let exprs: Vec<Expr> = out
                .iter()
                .enumerate()
                .map(|(i, (qualifier, f))| {
                    col(format!("{table}.c{i}")).alias_qualified(qualifier.cloned(), f.name())
                })
                .collect();
            let scan =
                LogicalPlanBuilder::scan(table.as_str(), provider_as_source(provider), None)?
                    .project(exprs)?
                    .build()?;
            Ok(Transformed::new(scan, true, TreeNodeRecursion::Jump))
        })
        .map_err(fail)?
        .data;
    Ok((rewritten, shared))
}

/// The plan with every aggregation replaced by its value over one row ([`Form::Rows`]), or
/// `None` if that would not give partials of the same totals.
fn rows_form(plan: &LogicalPlan) -> Option<LogicalPlan> {
    match plan {
        LogicalPlan::Aggregate(agg) => rows_of(agg),
        // Above an aggregation, only operators that treat rows one by one: a filter (HAVING),
        // a sort with a limit, a window or a join would see other rows than the query's.
        LogicalPlan::Projection(_) | LogicalPlan::Union(_) | LogicalPlan::SubqueryAlias(_) => {
            let children = plan
                .inputs()
                .into_iter()
                .map(rows_form)
                .collect::<Option<Vec<_>>>()?;
            plan.with_new_exprs(plan.expressions(), children).ok()
        }
        _ => None,
    }
}

/// An aggregation as a projection of its input with the same output schema.
fn rows_of(agg: &Aggregate) -> Option<LogicalPlan> {
    use datafusion::logical_expr::expr::AggregateFunction;
    use datafusion::prelude::{cast, lit, when};
    if matches!(agg.group_expr.as_slice(), [Expr::GroupingSet(_)]) {
        return None;
    }
    // A roll-up of an aggregation: its rows are groups, not events.
    use datafusion::common::tree_node::TreeNode;
    let nested = agg
        .input
        .exists(|p| Ok(matches!(p, LogicalPlan::Aggregate(_))))
        .unwrap_or(true);
    if nested {
        return None;
    }
    let n_group = agg.group_expr.len();
    let mut exprs = Vec::with_capacity(agg.schema.fields().len());
    for (i, e) in agg.group_expr.iter().chain(&agg.aggr_expr).enumerate() {
        let (qualifier, field) = agg.schema.qualified_field(i);
        let value = if i < n_group {
            e.clone()
        } else {
            let mut e = e;
            while let Expr::Alias(a) = e {
                e = &a.expr;
            }
            let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
                return None;
            };
            if params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
                return None;
            }
            match (func.name(), params.args.as_slice()) {
                ("count", [x]) => when(x.clone().is_null(), lit(0i64))
                    .otherwise(lit(1i64))
                    .ok()?,
                ("sum" | "min" | "max", [x]) => cast(x.clone(), field.data_type().clone()),
                _ => return None,
            }
        };
        exprs.push(value.alias_qualified(qualifier.cloned(), field.name()));
    }
    let projection = Projection::try_new(exprs, agg.input.clone()).ok()?;
    // The rows form must yield what the aggregation did, column for column.
    let same = projection.schema.fields().len() == agg.schema.fields().len()
        && projection
            .schema
            .iter()
            .zip(agg.schema.iter())
            .all(|((q1, f1), (q2, f2))| {
                q1 == q2 && f1.name() == f2.name() && f1.data_type() == f2.data_type()
            });
    same.then_some(LogicalPlan::Projection(projection))
}

/// `schema` with every field nullable and no metadata.
fn loose(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| arrow_schema::Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

fn register(ctx: &SessionContext, name: &str, schema: &SchemaRef, def: &str) -> Result<()> {
    ctx.register_table(name, Arc::new(InputTable::new(schema.clone())))
        .map(|_| ())
        .map_err(|e| Error::Definition(format!("{def}: registering {name}: {e}")))
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
        // Checked: a value the column's type cannot hold (a total that overflows an `int`)
        // is an error naming it, never a NULL in its place.
        let checked = datafusion::arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        let col = if col.data_type() == field.data_type() {
            col.clone()
        } else {
            datafusion::arrow::compute::cast_with_options(col, field.data_type(), &checked)
                .map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, StringArray};
    use datafusion::physical_plan::aggregates::AggregateExec;

    /// Aggregation nodes in a physical plan.
    fn aggregations(plan: &Arc<dyn ExecutionPlan>) -> usize {
        usize::from(plan.as_any().is::<AggregateExec>())
            + plan.children().into_iter().map(aggregations).sum::<usize>()
    }

    #[tokio::test]
    async fn a_cte_read_twice_is_aggregated_once_with_the_same_result() {
        let sql = "-- target: lake.t\n-- key: k\n\
            WITH c AS (SELECT a, b, sum(v) AS s, count(*) AS n FROM batch GROUP BY a, b) \
            SELECT a AS k, sum(s) AS s, sum(n) AS n FROM c GROUP BY a \
            UNION ALL SELECT b AS k, sum(s) AS s, sum(n) AS n FROM c GROUP BY b";
        let def = AggregateDef::parse("twice", sql).unwrap();
        let agg = Aggregator::new(vec![def]);
        let batch = RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(StringArray::from(vec!["x", "x", "y", "x"])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(StringArray::from(vec!["p", "q", "p", "p"])) as ArrayRef,
            ),
            (
                "v",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 4.0, 8.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let schema = loose(&batch.schema());
        let (plan, shared) = agg.plan(0, Stage::Partial, &schema).await.unwrap();
        // The CTE's aggregation once (shared), the two roll-ups in the query.
        assert_eq!(shared.len(), 1);
        assert_eq!(shared.iter().map(aggregations).sum::<usize>(), 1);
        assert_eq!(aggregations(&plan), 2);
        let out = agg.partial(0, Form::Grouped, &batch).await.unwrap();
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float64Type, Int64Type};
        let rows: std::collections::BTreeMap<String, (f64, i64)> = (0..out.num_rows())
            .map(|i| {
                (
                    out.column(0).as_string::<i32>().value(i).to_string(),
                    (
                        out.column(1).as_primitive::<Float64Type>().value(i),
                        out.column(2).as_primitive::<Int64Type>().value(i),
                    ),
                )
            })
            .collect();
        let want: std::collections::BTreeMap<String, (f64, i64)> =
            [("p", 13.0, 3), ("q", 2.0, 1), ("x", 11.0, 3), ("y", 4.0, 1)]
                .iter()
                .map(|(k, s, n)| (k.to_string(), (*s, *n)))
                .collect();
        assert_eq!(rows, want);
        // A second run (fresh copies of the plans) gives the same.
        let again = agg.partial(0, Form::Grouped, &batch).await.unwrap();
        assert_eq!(again.num_rows(), out.num_rows());
    }

    #[test]
    fn a_total_that_overflows_its_column_is_an_error_not_a_null() {
        use arrow_array::{Int32Array, Int64Array};
        use arrow_schema::{DataType, Field};
        let def = AggregateDef::parse(
            "total",
            "-- target: lake.t\n-- key: k\nSELECT k, sum(v) AS total FROM batch GROUP BY k",
        )
        .unwrap();
        let partial = RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            (
                "total",
                Arc::new(Int64Array::from(vec![7, 10_000_000_000])) as ArrayRef,
            ),
        ])
        .unwrap();
        // A nullable `int` column: a NULL would fit, and lose the total.
        let target: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("total", DataType::Int32, true),
        ]));
        let err = conform(&def, &partial, &target).unwrap_err();
        assert!(!err.retryable());
        let message = err.to_string();
        assert!(
            message.contains("total") && message.contains("10000000000"),
            "{message}"
        );
        let fits = partial.slice(0, 1);
        let out = conform(&def, &fits, &target).unwrap();
        assert_eq!(
            out.column(1).as_any().downcast_ref::<Int32Array>().unwrap(),
            &Int32Array::from(vec![7])
        );
    }
}

//! Computed columns and rules: SQL expressions (DataFusion dialect) evaluated over each
//! decoded batch, vectorised, between the decoder and the writers.
//!
//! - `computed.<column> = "<expression>"` replaces the column's decoded value with the
//!   expression's, cast to the column's type. Every computed expression sees the decoded
//!   row (computed columns do not see each other's results).
//! - `rules.<name> = "<boolean expression>"` runs after the computed columns; a row for which
//!   a rule is not true (false or NULL, as a `WHERE` clause would drop it) is rejected with
//!   the rule's name. Write `x IS NULL OR x >= 0` to let NULLs pass.
//! - Expressions may read the Kafka metadata of each message as columns (when the table has
//!   no column of that name): `_kafka_topic`, `_kafka_partition`, `_kafka_offset`,
//!   `_kafka_timestamp`, `_kafka_key` (text) and `_kafka_headers` (a map: header values by
//!   name, `_kafka_headers['trace-id']`).
//! - Nothing is checked row by row unless an expression fails on the batch (a cast that does
//!   not fit, a division by zero): then that expression alone is evaluated per row, and the
//!   rows it fails on are rejected with its error, so one bad row never fails a batch.
//! - `now()` and other time functions read the time of each batch.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, MapBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::execution::context::ExecutionProps;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use floe_schema::{Mapping, MappingError, RecordMeta, Setting};

/// Kafka metadata an expression can read as a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Meta {
    /// `_kafka_topic` (string).
    Topic,
    /// `_kafka_partition` (int).
    Partition,
    /// `_kafka_offset` (long).
    Offset,
    /// `_kafka_timestamp` (timestamptz).
    Timestamp,
    /// `_kafka_key` (string; invalid UTF-8 replaced).
    Key,
    /// `_kafka_headers` (map of header name → value as text).
    Headers,
}

impl Meta {
    /// Every metadata column.
    pub const ALL: [Meta; 6] = [
        Meta::Topic,
        Meta::Partition,
        Meta::Offset,
        Meta::Timestamp,
        Meta::Key,
        Meta::Headers,
    ];

    /// The column name expressions use.
    pub fn name(self) -> &'static str {
        match self {
            Meta::Topic => "_kafka_topic",
            Meta::Partition => "_kafka_partition",
            Meta::Offset => "_kafka_offset",
            Meta::Timestamp => "_kafka_timestamp",
            Meta::Key => "_kafka_key",
            Meta::Headers => "_kafka_headers",
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Meta::Topic | Meta::Key => DataType::Utf8,
            Meta::Partition => DataType::Int32,
            Meta::Offset => DataType::Int64,
            Meta::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            Meta::Headers => MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
                .finish()
                .data_type()
                .clone(),
        }
    }
}

/// Per decoded row of a batch, the Kafka metadata the expressions read; the loader pushes one
/// entry for every row the decoder keeps, in order.
pub struct MetaRows {
    needs: Vec<Meta>,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    key: StringBuilder,
    headers: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
}

impl MetaRows {
    fn new(needs: Vec<Meta>) -> Self {
        Self {
            needs,
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMicrosecondBuilder::new(),
            key: StringBuilder::new(),
            headers: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            rows: 0,
        }
    }

    /// Whether the expressions read `_kafka_headers` (else `headers` may be empty).
    pub fn needs_headers(&self) -> bool {
        self.needs.contains(&Meta::Headers)
    }

    /// Whether the expressions read any metadata (else pushing may be skipped).
    pub fn is_needed(&self) -> bool {
        !self.needs.is_empty()
    }

    /// Rows pushed since the last batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was pushed since the last batch.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds the metadata of one decoded row.
    pub fn push<'h>(
        &mut self,
        meta: &RecordMeta<'_>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        self.rows += 1;
        for m in &self.needs {
            match m {
                Meta::Topic => self.topic.append_value(meta.topic),
                Meta::Partition => self.partition.append_option(meta.partition),
                Meta::Offset => self.offset.append_option(meta.offset),
                Meta::Timestamp => self
                    .timestamp
                    .append_option(meta.timestamp_ms.map(|ms| ms.saturating_mul(1000))),
                Meta::Key => self
                    .key
                    .append_option(meta.key.map(|k| String::from_utf8_lossy(k))),
                Meta::Headers => {}
            }
        }
        if self.needs_headers() {
            for (name, value) in headers {
                self.headers.keys().append_value(name);
                self.headers
                    .values()
                    .append_option(value.map(String::from_utf8_lossy));
            }
            self.headers
                .append(true)
                .expect("keys and values are appended in pairs");
        }
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.needs
            .iter()
            .map(|m| -> ArrayRef {
                match m {
                    Meta::Topic => Arc::new(self.topic.finish()),
                    Meta::Partition => Arc::new(self.partition.finish()),
                    Meta::Offset => Arc::new(self.offset.finish()),
                    Meta::Timestamp => Arc::new(self.timestamp.finish().with_timezone("+00:00")),
                    Meta::Key => Arc::new(self.key.finish()),
                    Meta::Headers => Arc::new(self.headers.finish()),
                }
            })
            .collect()
    }

    /// Forgets rows pushed since the last batch (the batch was dropped).
    pub fn clear(&mut self) {
        let _ = self.finish();
    }
}

/// Why a row was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The row in the batch given to [`Transform::apply`].
    pub row: usize,
    /// `rule` or `computed` (the dead letter's error kind).
    pub kind: &'static str,
    /// The (first) rule or computed column that rejected it.
    pub field: String,
    /// What failed, naming every failing rule or column.
    pub message: String,
}

/// What [`Transform::apply`] made of a batch.
#[derive(Debug)]
pub struct Applied {
    /// The rows that passed, in the table's Arrow schema.
    pub rows: RecordBatch,
    /// Which input rows are in `rows`; `None` when all are.
    pub kept: Option<BooleanArray>,
    /// The rejected rows, in row order.
    pub rejected: Vec<Rejection>,
    /// Per computed column and rule: rows it applied to (computed) or passed (rule), and rows
    /// it rejected.
    pub counts: Vec<(Setting, u64, u64)>,
}

struct Computed {
    setting: Setting,
    column: usize,
    required: bool,
    expr: Expr,
}

struct Rule {
    setting: Setting,
    name: String,
    sql: String,
    expr: Expr,
}

/// A table's computed columns and rules, planned against its schema.
pub struct Transform {
    output: SchemaRef,
    input: DFSchemaRef,
    metas: Vec<Meta>,
    computed: Vec<Computed>,
    rules: Vec<Rule>,
    /// Expressions that read the clock are planned again for every batch.
    time_dependent: bool,
    planned: Vec<Arc<dyn PhysicalExpr>>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("computed", &self.computed.len())
            .field("rules", &self.rules.len())
            .field("metas", &self.metas)
            .finish_non_exhaustive()
    }
}

/// Functions whose value depends on when they run.
const CLOCK_FUNCTIONS: [&str; 6] = [
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "today",
    "localtimestamp",
];

impl Transform {
    /// Plans `mapping`'s computed columns and rules against `schema` (the table's current
    /// schema); `None` when it has neither. An expression that does not parse, names an
    /// unknown column, does not yield the column's type (computed) or a boolean (rule) is an
    /// error naming the entry.
    pub fn new(
        schema: &iceberg::spec::Schema,
        mapping: &Mapping,
    ) -> Result<Option<Self>, MappingError> {
        if mapping.computed.is_empty() && mapping.rules.is_empty() {
            return Ok(None);
        }
        mapping.check_decoding(schema)?;
        let output = Arc::new(arrow_output(schema, mapping)?);
        // The decoder's schema: computed columns may be NULL until computed.
        let decoded: Vec<Field> = mapping
            .decoded_schema(&output)
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let state = SessionContext::new().state();
        let (metas, time_dependent) = metas_read(&state, mapping, &output, &decoded)?;
        let input = input_schema(&decoded, &metas);
        let simplifier = simplifier(&input);
        let computed = plan_computed(&state, &simplifier, mapping, &output, &input)?;
        let rules = plan_rules(&state, &simplifier, mapping, &input)?;
        let mut t = Self {
            output,
            input,
            metas,
            computed,
            rules,
            time_dependent,
            planned: Vec::new(),
        };
        // Planned once now: what does not plan is refused at start, not at the first batch.
        t.planned = t.plan()?;
        Ok(Some(t))
    }

    /// An empty buffer for the metadata of the rows of one batch.
    pub fn meta_rows(&self) -> MetaRows {
        MetaRows::new(self.metas.clone())
    }

    /// The settings this transform applies, in order (computed columns, then rules).
    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.computed
            .iter()
            .map(|c| &c.setting)
            .chain(self.rules.iter().map(|r| &r.setting))
    }

    fn plan(&self) -> Result<Vec<Arc<dyn PhysicalExpr>>, MappingError> {
        let mut props = ExecutionProps::new();
        props.mark_start_execution(Arc::new(ConfigOptions::default()));
        let simplifier = simplifier(&self.input);
        let entries = self
            .computed
            .iter()
            .map(|c| (&c.setting, &c.expr))
            .chain(self.rules.iter().map(|r| (&r.setting, &r.expr)));
        entries
            .map(|(setting, expr)| {
                let fail = |e: datafusion::error::DataFusionError| MappingError {
                    setting: setting.clone(),
                    message: e.to_string(),
                };
                let expr = simplifier.simplify(expr.clone()).map_err(fail)?;
                datafusion::physical_expr::create_physical_expr(&expr, &self.input, &props)
                    .map_err(fail)
            })
            .collect()
    }

    /// Computes the columns and checks the rules on `batch` (the decoder's output) with the
    /// metadata pushed to `meta` for its rows (which is emptied).
    pub fn apply(&self, batch: RecordBatch, meta: &mut MetaRows) -> Result<Applied, String> {
        let input = self.input_batch(batch, meta)?;
        let planned = if self.time_dependent {
            self.plan().map_err(|e| e.to_string())?
        } else {
            self.planned.clone()
        };
        let mut failures = Failures::new();
        let mut counts = Vec::new();
        let input = self.compute(&planned, input, &mut failures, &mut counts)?;
        self.check_rules(&planned, &input, &mut failures, &mut counts)?;
        let rejected = rejections(failures);
        let (rows, kept) = self.stored_rows(&input, &rejected)?;
        Ok(Applied {
            rows,
            kept,
            rejected,
            counts,
        })
    }

    /// The expressions' input: `batch`'s columns, then the metadata columns from `meta`
    /// (which must hold a row per decoded row).
    fn input_batch(&self, batch: RecordBatch, meta: &mut MetaRows) -> Result<RecordBatch, String> {
        let n = batch.num_rows();
        let mut columns = batch.columns().to_vec();
        let metas = meta.finish();
        if !self.metas.is_empty() && metas.first().is_some_and(|m| m.len() != n) {
            return Err(format!(
                "transform: {} metadata rows for {n} decoded rows",
                metas[0].len()
            ));
        }
        columns.extend(metas);
        let input_schema = self.input.inner().clone();
        RecordBatch::try_new(input_schema, columns).map_err(|e| format!("transform input: {e}"))
    }

    /// `input` with the computed columns replaced by their values; the rows an expression
    /// failed on (or left NULL in a required column) go to `failures`, and each computed
    /// column's counts to `counts`.
    fn compute(
        &self,
        planned: &[Arc<dyn PhysicalExpr>],
        input: RecordBatch,
        failures: &mut Failures,
        counts: &mut Vec<(Setting, u64, u64)>,
    ) -> Result<RecordBatch, String> {
        let n = input.num_rows();
        // Computed columns: every expression over the decoded row.
        let mut replaced: Vec<(usize, ArrayRef)> = Vec::new();
        for (c, phys) in self.computed.iter().zip(planned) {
            let (values, errors) = evaluate(phys, &input)?;
            let mut failed = 0u64;
            for (row, e) in errors {
                failed += 1;
                failures.entry(row).or_default().push((
                    "computed",
                    column_name(&c.setting),
                    format!("{} failed: {e}", c.setting),
                ));
            }
            if c.required && values.null_count() > 0 {
                for row in 0..n {
                    if values.is_null(row) && !failures.contains_key(&row) {
                        failed += 1;
                        failures.entry(row).or_default().push((
                            "computed",
                            column_name(&c.setting),
                            format!(
                                "{} yields NULL for the required column {}",
                                c.setting,
                                column_name(&c.setting)
                            ),
                        ));
                    }
                }
            }
            counts.push((c.setting.clone(), n as u64 - failed, failed));
            replaced.push((c.column, values));
        }
        if replaced.is_empty() {
            return Ok(input);
        }
        let mut columns = input.columns().to_vec();
        for (i, values) in replaced {
            columns[i] = values;
        }
        RecordBatch::try_new(self.input.inner().clone(), columns)
            .map_err(|e| format!("transform: computed columns: {e}"))
    }

    /// Checks every rule on `input`: the rows a rule is not true for go to `failures`, and each
    /// rule's counts to `counts`.
    fn check_rules(
        &self,
        planned: &[Arc<dyn PhysicalExpr>],
        input: &RecordBatch,
        failures: &mut Failures,
        counts: &mut Vec<(Setting, u64, u64)>,
    ) -> Result<(), String> {
        let n = input.num_rows();
        // Rules: over the row as it will be stored.
        for (r, phys) in self.rules.iter().zip(&planned[self.computed.len()..]) {
            let (values, errors) = evaluate(phys, input)?;
            let errors: BTreeMap<usize, String> = errors.into_iter().collect();
            let mut failed = 0u64;
            let verdicts = values.as_boolean_opt();
            for row in 0..n {
                let why = if let Some(e) = errors.get(&row) {
                    format!("could not be evaluated: {e}")
                } else {
                    match verdicts {
                        Some(v) if v.is_valid(row) && v.value(row) => continue,
                        Some(v) if v.is_valid(row) => "is false".to_string(),
                        _ => "is NULL".to_string(),
                    }
                };
                failed += 1;
                failures.entry(row).or_default().push((
                    "rule",
                    r.name.clone(),
                    format!("rule {} ({}) {why}", r.name, r.sql),
                ));
            }
            counts.push((r.setting.clone(), n as u64 - failed, failed));
        }
        Ok(())
    }

    /// The rows to store, in the table's Arrow schema, without the `rejected` ones; with which
    /// input rows they are (`None` when all).
    fn stored_rows(
        &self,
        input: &RecordBatch,
        rejected: &[Rejection],
    ) -> Result<(RecordBatch, Option<BooleanArray>), String> {
        let n = input.num_rows();
        let stored = input
            .project(&(0..self.output.fields().len()).collect::<Vec<_>>())
            .map_err(|e| format!("transform: {e}"))?;
        let (stored, kept) = if rejected.is_empty() {
            (stored, None)
        } else {
            let mut keep = vec![true; n];
            for r in rejected {
                keep[r.row] = false;
            }
            let keep = BooleanArray::from(keep);
            let stored = arrow_select::filter::filter_record_batch(&stored, &keep)
                .map_err(|e| format!("transform: {e}"))?;
            (stored, Some(keep))
        };
        let rows = RecordBatch::try_new(self.output.clone(), stored.columns().to_vec())
            .map_err(|e| format!("transform output: {e}"))?;
        Ok((rows, kept))
    }
}

/// Per failing row, what failed on it: (kind, rule or column, message), in evaluation order.
type Failures = BTreeMap<usize, Vec<(&'static str, String, String)>>;

/// One rejection per failing row, in row order, naming its first failure and listing all.
fn rejections(failures: Failures) -> Vec<Rejection> {
    failures
        .into_iter()
        .map(|(row, f)| Rejection {
            row,
            kind: f[0].0,
            field: f[0].1.clone(),
            message: f
                .iter()
                .map(|(_, _, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        })
        .collect()
}

/// The table schema's Arrow form; an error names the mapping's first setting.
fn arrow_output(schema: &iceberg::spec::Schema, mapping: &Mapping) -> Result<Schema, MappingError> {
    iceberg::arrow::schema_to_arrow_schema(schema).map_err(|e| MappingError {
        setting: mapping
            .entries()
            .into_iter()
            .map(|(s, _)| s)
            .next()
            .unwrap_or(Setting::Unnest),
        message: format!("the table schema has no Arrow form: {e}"),
    })
}

/// Parses every computed and rule expression against all metadata columns the table does
/// not shadow: the metadata columns they read, and whether any reads the clock.
fn metas_read(
    state: &SessionState,
    mapping: &Mapping,
    output: &Schema,
    decoded: &[Field],
) -> Result<(Vec<Meta>, bool), MappingError> {
    let exprs: Vec<(Setting, &str)> = mapping
        .computed
        .iter()
        .map(|(c, e)| (Setting::Computed(c.clone()), e.as_str()))
        .chain(
            mapping
                .rules
                .iter()
                .map(|(r, e)| (Setting::Rule(r.clone()), e.as_str())),
        )
        .collect();
    // First pass against every metadata column: which ones do the expressions read?
    let available: Vec<Meta> = Meta::ALL
        .into_iter()
        .filter(|m| output.field_with_name(m.name()).is_err())
        .collect();
    let all = input_schema(decoded, &available);
    let mut read = BTreeSet::new();
    let mut time_dependent = false;
    for (setting, sql) in &exprs {
        let expr = parse(state, sql, &all, setting)?;
        read.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
        time_dependent |= expr
            .exists(|e| {
                Ok(matches!(e, Expr::ScalarFunction(f)
                    if CLOCK_FUNCTIONS.contains(&f.name())))
            })
            .unwrap_or(true);
    }
    let metas: Vec<Meta> = available
        .into_iter()
        .filter(|m| read.contains(m.name()))
        .collect();
    Ok((metas, time_dependent))
}

/// The computed columns, each typed against `input` and cast to its column's type (an error
/// when its type does not convert).
fn plan_computed(
    state: &SessionState,
    simplifier: &ExprSimplifier,
    mapping: &Mapping,
    output: &Schema,
    input: &DFSchemaRef,
) -> Result<Vec<Computed>, MappingError> {
    let mut computed = Vec::new();
    for (c, sql) in &mapping.computed {
        let setting = Setting::Computed(c.clone());
        let (column, field) = output.column_with_name(c).expect("check_decoding found it");
        let (expr, found) = typed(state, simplifier, sql, input, &setting)?;
        let target = field.data_type();
        if found != *target && !datafusion::arrow::compute::can_cast_types(&found, target) {
            return Err(MappingError {
                setting,
                message: format!(
                    "{sql} yields {found}, which does not convert to column {c}'s type {target}"
                ),
            });
        }
        let expr = if found == *target {
            expr
        } else {
            expr.cast_to(target, input.as_ref())
                .map_err(|e| MappingError {
                    setting: setting.clone(),
                    message: format!("{sql}: {e}"),
                })?
        };
        computed.push(Computed {
            setting,
            column,
            required: !field.is_nullable(),
            expr,
        });
    }
    Ok(computed)
}

/// The rules, each typed against `input` (an error unless it yields a boolean).
fn plan_rules(
    state: &SessionState,
    simplifier: &ExprSimplifier,
    mapping: &Mapping,
    input: &DFSchemaRef,
) -> Result<Vec<Rule>, MappingError> {
    let mut rules = Vec::new();
    for (name, sql) in &mapping.rules {
        let setting = Setting::Rule(name.clone());
        let (expr, found) = typed(state, simplifier, sql, input, &setting)?;
        if !matches!(found, DataType::Boolean | DataType::Null) {
            return Err(MappingError {
                setting,
                message: format!(
                    "{sql} yields {found}; a rule must be a boolean expression (e.g. value >= 0)"
                ),
            });
        }
        rules.push(Rule {
            setting,
            name: name.clone(),
            sql: sql.to_string(),
            expr,
        });
    }
    Ok(rules)
}

fn column_name(setting: &Setting) -> String {
    match setting {
        Setting::Column(c) | Setting::Computed(c) | Setting::Rule(c) => c.clone(),
        Setting::Unnest => String::new(),
    }
}

/// The expressions' input: the decoded columns, then the metadata columns they read.
fn input_schema(decoded: &[Field], metas: &[Meta]) -> DFSchemaRef {
    let mut fields = decoded.to_vec();
    fields.extend(
        metas
            .iter()
            .map(|m| Field::new(m.name(), m.data_type(), true)),
    );
    Arc::new(DFSchema::try_from(Schema::new(fields)).expect("distinct column names"))
}

fn simplifier(input: &DFSchemaRef) -> ExprSimplifier {
    ExprSimplifier::new(
        SimplifyContext::default()
            .with_schema(input.clone())
            .with_current_time(),
    )
}

fn parse(
    state: &SessionState,
    sql: &str,
    input: &DFSchemaRef,
    setting: &Setting,
) -> Result<Expr, MappingError> {
    let expr = state
        .create_logical_expr(sql, input)
        .map_err(|e| MappingError {
            setting: setting.clone(),
            message: format!("{sql}: {}", e.strip_backtrace()),
        })?;
    let per_row = !expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::InSubquery(_)
                    | Expr::Exists(_)
            ))
        })
        .unwrap_or(true);
    if !per_row {
        return Err(MappingError {
            setting: setting.clone(),
            message: format!(
                "{sql}: aggregate, window and subquery expressions are not allowed (each row is computed on its own)"
            ),
        });
    }
    Ok(expr)
}

/// `sql` parsed, type-coerced against `input`, with the type it yields.
fn typed(
    state: &SessionState,
    simplifier: &ExprSimplifier,
    sql: &str,
    input: &DFSchemaRef,
    setting: &Setting,
) -> Result<(Expr, DataType), MappingError> {
    let fail = |message: String| MappingError {
        setting: setting.clone(),
        message,
    };
    let expr = simplifier
        .coerce(parse(state, sql, input, setting)?, input)
        .map_err(|e| fail(e.strip_backtrace().to_string()))?;
    let found = expr
        .get_type(input.as_ref())
        .map_err(|e| fail(format!("{sql}: {e}")))?;
    Ok((expr, found))
}

/// Evaluates `expr` on `batch`; when it fails on the batch, row by row, returning the failing
/// rows (with NULL values) and their errors.
fn evaluate(
    expr: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<(ArrayRef, Vec<(usize, String)>), String> {
    let n = batch.num_rows();
    let whole = expr.evaluate(batch).and_then(|v| v.into_array(n));
    if let Ok(values) = whole {
        return Ok((values, Vec::new()));
    }
    let data_type = expr
        .data_type(&batch.schema())
        .map_err(|e| format!("transform: {e}"))?;
    let mut parts: Vec<ArrayRef> = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for row in 0..n {
        match expr
            .evaluate(&batch.slice(row, 1))
            .and_then(|v| v.into_array(1))
        {
            Ok(v) => parts.push(v),
            Err(e) => {
                errors.push((row, e.strip_backtrace().to_string()));
                parts.push(new_null_array(&data_type, 1));
            }
        }
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    let values = if refs.is_empty() {
        new_null_array(&data_type, 0)
    } else {
        arrow_select::concat::concat(&refs).map_err(|e| format!("transform: {e}"))?
    };
    Ok((values, errors))
}

#[cfg(test)]
mod tests;

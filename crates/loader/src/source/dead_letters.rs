//! The dead-letter source of `floe dlq replay`: a table's dead letters read back from its
//! dead-letter table, optionally filtered by a SQL `WHERE` over the dead-letter table's
//! columns, with typed access to each one's source (position, key, timestamp, payload).

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{Expr, SessionContext, col, lit};
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;

use crate::{Error, Result};

/// Streams the dead letters of `table` from `dead_letters` (the table `dead_letter_table`),
/// those matching `filter` when given: their source columns and error kind.
pub(crate) async fn read(
    dead_letters: &Table,
    dead_letter_table: &str,
    table: &str,
    filter: Option<&str>,
) -> Result<SendableRecordBatchStream> {
    let ctx = SessionContext::new();
    let provider = IcebergStaticTableProvider::try_new_from_table(dead_letters.clone())
        .await
        .map_err(|e| Error::Config(format!("opening {dead_letter_table}: {e}")))?;
    ctx.register_table("dead_letters", Arc::new(provider))
        .map_err(|e| Error::Config(e.to_string()))?;
    let reading = |e: datafusion::error::DataFusionError| {
        Error::Config(format!("reading {dead_letter_table}: {e}"))
    };
    let df = ctx.table("dead_letters").await.map_err(reading)?;
    let mut predicate = col("target_table").eq(lit(table));
    if let Some(f) = filter {
        predicate = predicate.and(parse_where(&ctx, f, df.schema(), dead_letter_table)?);
    }
    let mut columns = vec![
        "source_topic",
        "source_partition",
        "source_offset",
        "source_key",
        "source_timestamp",
        "payload",
        "error_kind",
    ];
    if df.schema().has_column_with_unqualified_name("source_load") {
        columns.push("source_load");
    }
    df.filter(predicate)
        .and_then(|df| df.select_columns(&columns))
        .map_err(reading)?
        .execute_stream()
        .await
        .map_err(reading)
}

/// Parses `--where` text as one boolean expression over the dead-letter table's columns
/// (DataFusion's SQL expression parser; never pasted into a statement). Subqueries, aggregates
/// and window functions are refused.
fn parse_where(
    ctx: &SessionContext,
    text: &str,
    schema: &datafusion::common::DFSchema,
    dead_letter_table: &str,
) -> Result<Expr> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::logical_expr::ExprSchemable;
    let columns = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let bad = |why: String| {
        Error::Config(format!(
            "--where {text:?} is not one boolean expression over {dead_letter_table}'s columns \
             ({columns}): {why}"
        ))
    };
    let expr = ctx
        .parse_sql_expr(text, schema)
        .map_err(|e| bad(e.to_string()))?;
    let mut refused = None;
    expr.apply(|e| {
        let what = match e {
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => Some("a subquery"),
            Expr::AggregateFunction(_) => Some("an aggregate function"),
            Expr::WindowFunction(_) => Some("a window function"),
            Expr::Placeholder(_) => Some("a placeholder"),
            _ => None,
        };
        if let Some(what) = what {
            refused = Some(what);
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .map_err(|e| bad(e.to_string()))?;
    if let Some(what) = refused {
        return Err(bad(format!("{what} is not allowed")));
    }
    let ty = expr.get_type(schema).map_err(|e| bad(e.to_string()))?;
    if ty != arrow_schema::DataType::Boolean && ty != arrow_schema::DataType::Null {
        return Err(bad(format!("it is of type {ty}, not boolean")));
    }
    Ok(expr)
}

/// Typed access to a dead-letter batch's source columns.
pub(crate) struct DeadLetterRows<'a> {
    topic: &'a arrow_array::StringArray,
    /// `source_load` (dead-letter tables created before floe 0.2 may lack it).
    load: Option<&'a arrow_array::StringArray>,
    partition: &'a arrow_array::PrimitiveArray<Int32Type>,
    offset: &'a arrow_array::PrimitiveArray<Int64Type>,
    key: &'a arrow_array::BinaryArray,
    timestamp: &'a arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    payload: &'a arrow_array::BinaryArray,
}

impl<'a> DeadLetterRows<'a> {
    pub fn new(batch: &'a RecordBatch) -> Result<Self> {
        let typed = |name: &str| -> Result<&'a dyn Array> { column(batch, name) };
        let wrong = |name: &str| {
            Error::Config(format!(
                "dead-letter column {name} has an unexpected type (is this a floe dead-letter table?)"
            ))
        };
        Ok(Self {
            topic: typed("source_topic")?
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong("source_topic"))?,
            load: match batch.column_by_name("source_load") {
                None => None,
                Some(c) => Some(
                    c.as_string_opt::<i32>()
                        .ok_or_else(|| wrong("source_load"))?,
                ),
            },
            partition: typed("source_partition")?
                .as_primitive_opt()
                .ok_or_else(|| wrong("source_partition"))?,
            offset: typed("source_offset")?
                .as_primitive_opt()
                .ok_or_else(|| wrong("source_offset"))?,
            key: typed("source_key")?
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("source_key"))?,
            timestamp: typed("source_timestamp")?
                .as_primitive_opt()
                .ok_or_else(|| wrong("source_timestamp"))?,
            payload: typed("payload")?
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("payload"))?,
        })
    }

    /// The row's position: its source (the topic; for a line of a load, `file:<path>@<load
    /// id>`, as line numbers are unique only within a load), partition and offset.
    pub fn position(&self, i: usize) -> (Cow<'a, str>, Option<i32>, Option<i64>) {
        let topic = self.topic.value(i);
        let source = match self.load.filter(|l| l.is_valid(i)) {
            Some(load) => Cow::Owned(format!("{topic}@{}", load.value(i))),
            None => Cow::Borrowed(topic),
        };
        (
            source,
            self.partition.is_valid(i).then(|| self.partition.value(i)),
            self.offset.is_valid(i).then(|| self.offset.value(i)),
        )
    }

    pub fn topic(&self, i: usize) -> &'a str {
        self.topic.value(i)
    }

    pub fn payload(&self, i: usize) -> Option<&'a [u8]> {
        self.payload.is_valid(i).then(|| self.payload.value(i))
    }

    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.key.is_valid(i).then(|| self.key.value(i))
    }

    pub fn timestamp_ms(&self, i: usize) -> Option<i64> {
        self.timestamp
            .is_valid(i)
            .then(|| self.timestamp.value(i).div_euclid(1000))
    }
}

/// Casts view-typed string/binary columns (DataFusion may produce them) to the plain types.
pub(crate) fn normalize(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow_schema::{DataType, Field, Schema};
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = match field.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Utf8),
            DataType::BinaryView | DataType::LargeBinary => Some(DataType::Binary),
            _ => None,
        };
        match target {
            Some(t) => {
                let cast = datafusion::arrow::compute::cast(col, &t)
                    .map_err(|e| Error::Config(format!("reading {}: {e}", field.name())))?;
                fields.push(Field::new(field.name(), t, field.is_nullable()));
                columns.push(cast);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(col.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::Config(format!("reading dead letters: {e}")))
}

pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| {
            Error::Config(format!(
                "the dead-letter table has no column {name} (is this a floe dead-letter table?)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> u32 {
        floe_testkit::fuzz_cases()
    }

    fn dead_letter_schema() -> datafusion::common::DFSchema {
        let def = floe_schema::TableDefinition::dead_letter("lake.t_dead_letters").unwrap();
        let arrow = iceberg::arrow::schema_to_arrow_schema(&def.schema).unwrap();
        datafusion::common::DFSchema::try_from(arrow).unwrap()
    }

    /// Text built from what SQL injections and honest filters are made of.
    fn where_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("error_kind"),
            Just("source_offset"),
            Just("source_topic"),
            Just("payload"),
            Just("failed_at"),
            Just("no_such"),
            Just("'unknown_field'"),
            Just("'it''s'"),
            Just("'"),
            Just("\""),
            Just("42"),
            Just("-1e400"),
            Just("NULL"),
            Just("TRUE"),
            Just("="),
            Just("<>"),
            Just("<"),
            Just("+"),
            Just("||"),
            Just("AND"),
            Just("OR"),
            Just("NOT"),
            Just("LIKE"),
            Just("IN"),
            Just("IS"),
            Just("BETWEEN"),
            Just("("),
            Just(")"),
            Just(","),
            Just(";"),
            Just("--"),
            Just("/*"),
            Just("*/"),
            Just("SELECT"),
            Just("FROM dead_letters"),
            Just("UNION"),
            Just("DROP TABLE x"),
            Just("count(*)"),
            Just("row_number() OVER ()"),
            Just("lower("),
            Just("CAST("),
            Just("AS INT"),
            Just("CASE WHEN"),
            Just("THEN"),
            Just("ELSE"),
            Just("END"),
            Just("$1"),
            Just("*"),
        ];
        prop_oneof![
            4 => prop::collection::vec(token, 1..24).prop_map(|t| t.join(" ")),
            1 => "\\PC{0,64}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        /// Any `--where` text is one boolean expression over the columns, or refused naming
        /// `--where`; never a panic, never a statement, subquery or aggregate.
        #[test]
        fn fuzz_where_is_one_boolean_expression_or_refused(text in where_text()) {
            let ctx = SessionContext::new();
            let schema = dead_letter_schema();
            match parse_where(&ctx, &text, &schema, "lake.t_dead_letters") {
                Ok(expr) => {
                    use datafusion::logical_expr::ExprSchemable;
                    let ty = expr.get_type(&schema).unwrap();
                    prop_assert!(
                        matches!(ty, arrow_schema::DataType::Boolean | arrow_schema::DataType::Null),
                        "{text:?} gave {ty}"
                    );
                    use datafusion::common::tree_node::TreeNode;
                    let forbidden = expr
                        .exists(|e| {
                            Ok(matches!(
                                e,
                                Expr::ScalarSubquery(_)
                                    | Expr::Exists(_)
                                    | Expr::InSubquery(_)
                                    | Expr::AggregateFunction(_)
                                    | Expr::WindowFunction(_)
                                    | Expr::Placeholder(_)
                            ))
                        })
                        .unwrap();
                    prop_assert!(!forbidden, "{text:?}: {expr}");
                }
                Err(e) => prop_assert!(e.to_string().contains("--where"), "{e}"),
            }
        }
    }
}

//! One golden file per `sql/aggregates/*.sql` on a fixed input batch, plus the property the
//! whole design rests on: merging the partials of two halves gives the partials of the whole,
//! and merging a batch's partials in rows form gives its grouped partials.
//!
//! To accept a changed output: `FLOE_BLESS=1 cargo test -p floe-aggregate --test golden`, then
//! review the diff of `crates/aggregate/tests/golden/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::RecordBatch;
use floe_aggregate::engine::conform;
use floe_aggregate::{AggregateDef, Aggregator, Form};
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 90 seed-like events over three hours; values are quarters so float sums are exact in any
/// order.
fn input() -> RecordBatch {
    events(|_, _| true)
}

/// [`input`] with optional fields left out here and there (`keep(event, field)`).
fn events(keep: impl Fn(u64, &str) -> bool) -> RecordBatch {
    let def = TableDefinition::from_file(&root().join("schemas/lake.events.json")).unwrap();
    let mut dec = Decoder::new(
        &def.schema,
        &DecoderOptions::from_table_properties(&def.properties),
    )
    .unwrap();
    let mut x: u64 = 42;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for i in 0..90u64 {
        let ts = 1_763_000_000_000u64 + i * 120_000 + next(60_000);
        let fields = [
            ("country", format!(r#""country_{}""#, next(3))),
            ("is_returning", (next(2) == 1).to_string()),
            ("user_id", format!(r#""user_id_{}""#, next(10))),
            ("action", format!(r#""action_{}""#, next(2))),
            ("device_type", format!(r#""device_type_{}""#, next(2))),
            ("page", format!(r#""page_{}""#, next(3))),
            ("category", format!(r#""category_{}""#, next(2))),
            ("value", (next(400) as f64 / 4.0).to_string()),
            ("session_duration", next(600).to_string()),
        ];
        let mut json = format!(r#"{{"eventGuid":"g{i}","timestamp":{ts}"#);
        for (name, value) in fields {
            if keep(i, name) {
                json.push_str(&format!(r#","{name}":{value}"#));
            }
        }
        json.push('}');
        dec.decode(json.as_bytes(), &RecordMeta::default()).unwrap();
    }
    dec.finish()
}

/// Rows as sorted text lines under a header.
fn render(batch: &RecordBatch) -> String {
    let opts = FormatOptions::default().with_null("NULL");
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
        .collect();
    let mut lines: Vec<String> = (0..batch.num_rows())
        .map(|i| {
            formatters
                .iter()
                .map(|f| f.value(i).to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    lines.sort();
    let header: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    format!("{}\n{}\n", header.join(" | "), lines.join("\n"))
}

fn target_schema(def: &AggregateDef) -> arrow_schema::SchemaRef {
    let path = root().join(format!("schemas/{}.json", def.target));
    let table = TableDefinition::from_file(&path)
        .unwrap_or_else(|e| panic!("{}: target definition {}: {e}", def.name, path.display()));
    Arc::new(iceberg::arrow::schema_to_arrow_schema(&table.schema).unwrap())
}

#[tokio::test]
async fn every_aggregate_matches_its_golden_output() {
    let defs = AggregateDef::load_dir(&root().join("sql/aggregates")).unwrap();
    assert!(defs.len() >= 2);
    let agg = Aggregator::new(defs.clone());
    let batch = input();
    let partials = agg.partials(&batch).await.unwrap();
    let bless = std::env::var_os("FLOE_BLESS").is_some();
    for (def, out) in defs.iter().zip(&partials) {
        let shaped = conform(def, out, &target_schema(def)).unwrap();
        let text = render(&shaped);
        let golden = root().join(format!("crates/aggregate/tests/golden/{}.txt", def.name));
        if bless {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!(
                "no golden output {} for {}: run with FLOE_BLESS=1 and review it",
                golden.display(),
                def.name
            )
        });
        assert_eq!(text, want, "{} differs from {}", def.name, golden.display());
    }
}

#[tokio::test]
async fn merged_partials_of_two_halves_equal_the_partials_of_the_whole() {
    let defs = AggregateDef::load_dir(&root().join("sql/aggregates")).unwrap();
    let agg = Aggregator::new(defs.clone());
    let batch = input();
    let whole = agg.partials(&batch).await.unwrap();
    let first = agg.partials(&batch.slice(0, 37)).await.unwrap();
    let second = agg.partials(&batch.slice(37, 20)).await.unwrap();
    let third = agg
        .partials(&batch.slice(57, batch.num_rows() - 57))
        .await
        .unwrap();
    for (i, def) in defs.iter().enumerate() {
        let merged = agg
            .merge(i, &[first[i].clone(), second[i].clone()])
            .await
            .unwrap();
        // A merge's output is merged again with fresh partials, as the loader does.
        let merged = agg.merge(i, &[merged, third[i].clone()]).await.unwrap();
        let target = target_schema(def);
        assert_eq!(
            render(&conform(def, &merged, &target).unwrap()),
            render(&conform(def, &whole[i], &target).unwrap()),
            "{}",
            def.name
        );
    }
}

/// The rows form of each shipped definition, and of one that counts a column, on events with
/// NULLs: one partial row per event, merging to the grouped partials.
#[tokio::test]
async fn rows_form_partials_merge_to_the_grouped_partials() {
    let mut defs = AggregateDef::load_dir(&root().join("sql/aggregates")).unwrap();
    defs.push(
        AggregateDef::parse(
            "counts",
            "-- target: lake.events_counts\n-- key: window_start, country\n\
             -- merge: low=min, high=max\n\
             SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start, country, \
             count(value) AS valued, count(*) + 0 AS n, sum(session_duration) AS sd, \
             min(page) AS low, max(is_returning) AS high \
             FROM batch GROUP BY 1, country",
        )
        .unwrap(),
    );
    let agg = Aggregator::new(defs.clone());
    let holes = |i: u64, field: &str| match field {
        "value" => !i.is_multiple_of(7),
        "country" => !i.is_multiple_of(5),
        "is_returning" => !i.is_multiple_of(11),
        "session_duration" => !i.is_multiple_of(13),
        "page" => !i.is_multiple_of(4),
        _ => true,
    };
    // Every definition whose aggregations read `batch` itself has a rows form (a roll-up of
    // an aggregation, as hourly_by_dimension is, has none).
    let mut checked = Vec::new();
    for batch in [input(), events(holes)] {
        for (i, def) in defs.iter().enumerate() {
            if !agg.has_rows_form(i, &batch.schema()).await.unwrap() {
                assert_eq!(def.name, "hourly_by_dimension");
                continue;
            }
            checked.push(def.name.clone());
            let grouped = agg.partial(i, Form::Grouped, &batch).await.unwrap();
            let rows = agg.partial(i, Form::Rows, &batch).await.unwrap();
            // One partial per event (and per dimension for a union of them).
            assert_eq!(rows.num_rows() % batch.num_rows(), 0, "{}", def.name);
            assert!(rows.num_rows() >= grouped.num_rows(), "{}", def.name);
            let schema = |b: &RecordBatch| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(schema(&rows), schema(&grouped), "{}", def.name);
            let merged = agg.merge(i, &[rows]).await.unwrap();
            assert_eq!(render(&merged), render(&grouped), "{}", def.name);
        }
    }
    assert!(checked.iter().any(|n| n == "hourly_multi"), "{checked:?}");
}

/// Queries whose partials are not the per-row values merged have no rows form.
#[tokio::test]
async fn only_count_sum_min_max_under_projections_have_a_rows_form() {
    let head = "-- target: lake.t\n-- key: country\n";
    let cases = [
        (
            "SELECT country, count(*) AS n FROM batch GROUP BY country",
            true,
        ),
        (
            "SELECT country, sum(value) AS v FROM batch GROUP BY country UNION ALL SELECT page, sum(value) FROM batch GROUP BY page",
            true,
        ),
        (
            "SELECT country, avg(value) AS v FROM batch GROUP BY country",
            false,
        ),
        (
            "SELECT country, count(DISTINCT page) AS n FROM batch GROUP BY country",
            false,
        ),
        (
            "SELECT country, count(*) FILTER (WHERE value > 1) AS n FROM batch GROUP BY country",
            false,
        ),
        (
            "SELECT country, count(*) AS n FROM batch GROUP BY country HAVING count(*) > 1",
            false,
        ),
        (
            "SELECT country, count(*) AS n FROM batch GROUP BY country ORDER BY n DESC LIMIT 3",
            false,
        ),
        (
            "SELECT country, count(*) AS n FROM batch GROUP BY GROUPING SETS ((country), (page))",
            false,
        ),
        ("SELECT country, value AS n FROM batch", false),
        (
            "WITH c AS (SELECT country, page, count(*) AS n FROM batch GROUP BY country, page) \
             SELECT country, sum(n) AS n FROM c GROUP BY country",
            false,
        ),
    ];
    let defs: Vec<AggregateDef> = cases
        .iter()
        .enumerate()
        .map(|(i, (sql, _))| {
            AggregateDef::parse(&format!("q{i}"), &format!("{head}{sql}")).unwrap()
        })
        .collect();
    let agg = Aggregator::new(defs);
    let schema = input().schema();
    for (i, (sql, want)) in cases.iter().enumerate() {
        assert_eq!(agg.has_rows_form(i, &schema).await.unwrap(), *want, "{sql}");
    }
    let err = agg
        .partial(2, Form::Rows, &input())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("q2") && err.contains("no rows form"), "{err}");
}

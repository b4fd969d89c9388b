//! One golden file per `sql/aggregates/*.sql` on a fixed input batch, plus the property the
//! whole design rests on: merging the partials of two halves gives the partials of the whole.
//!
//! To accept a changed output: `FLOE_BLESS=1 cargo test -p floe-aggregate --test golden`, then
//! review the diff of `crates/aggregate/tests/golden/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::RecordBatch;
use floe_aggregate::engine::conform;
use floe_aggregate::{AggregateDef, Aggregator};
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 90 seed-like events over three hours; values are quarters so float sums are exact in any
/// order.
fn input() -> RecordBatch {
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
        let json = format!(
            r#"{{"eventGuid":"g{i}","timestamp":{ts},"country":"country_{}","is_returning":{},"user_id":"user_id_{}","action":"action_{}","device_type":"device_type_{}","page":"page_{}","category":"category_{}","value":{},"session_duration":{}}}"#,
            next(3),
            next(2) == 1,
            next(10),
            next(2),
            next(2),
            next(3),
            next(2),
            next(400) as f64 / 4.0,
            next(600)
        );
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

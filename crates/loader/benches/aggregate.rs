//! The aggregate path's cost per event, by stage, on `floe generate`'s default stream decoded
//! into 64k-row chunks (as the loader's writer task gets them): dedup, the DataFusion partials
//! of each built-in aggregate, the encoding of those partials to Parquet, and the merge of a
//! flush's partials.
//!
//! `cargo bench -p floe-loader --bench aggregate`; the loader's own cost per event is in
//! `floe bench` (the aggregate path should stay within 15 % of it).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use arrow_array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floe_aggregate::dedup::Deduper;
use floe_aggregate::{AggregateDef, Aggregator};
use floe_devtools::generate::{Generator, GeneratorOptions};
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};

/// Rows per chunk: the loader's, or `FLOE_BENCH_CHUNK` to compare sizes.
fn chunk_rows() -> usize {
    std::env::var("FLOE_BENCH_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(65_536)
}

fn chunks(n: usize) -> Vec<RecordBatch> {
    let def = TableDefinition::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/lake.events.json"),
    )
    .unwrap();
    let opts = DecoderOptions::from_table_properties(&def.properties);
    let mut d = Decoder::new(&def.schema, &opts).unwrap();
    let mut g = Generator::new(GeneratorOptions {
        duplicates: 0.05,
        start_ms: 1_742_199_657_865,
        ..Default::default()
    });
    let mut out = Vec::new();
    for i in 0..n {
        let m = g.next_message();
        let meta = RecordMeta {
            topic: "events",
            partition: Some(0),
            offset: Some(i as i64),
            ingested_at_us: 1,
            ..Default::default()
        };
        d.decode(&m.payload, &meta).unwrap();
        if d.len() == chunk_rows() {
            out.push(d.finish());
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let input = chunks(4 * 65_536);
    let rows: usize = input.iter().map(RecordBatch::num_rows).sum();
    // `FLOE_BENCH_SQL=<dir>`: the definitions of a folder instead of the built-in ones (to
    // compare variants of a query without rebuilding).
    let defs = match std::env::var_os("FLOE_BENCH_SQL") {
        Some(dir) => AggregateDef::load_dir(Path::new(&dir)).unwrap(),
        None => AggregateDef::builtin().unwrap(),
    };
    let mut group = c.benchmark_group("aggregate_path");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    bench_dedup(&mut group, &input);
    for i in 0..defs.len() {
        bench_definition(&mut group, &rt, &defs, i, &input);
    }
    group.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Judging each row's event id.
fn bench_dedup(group: &mut Group<'_>, input: &[RecordBatch]) {
    group.bench_function("dedup", |b| {
        b.iter(|| {
            let mut d = Deduper::new(Duration::from_secs(3600));
            let part = ("events".to_string(), 0);
            let mut kept = 0usize;
            for batch in input {
                let keys = arrow_array::cast::AsArray::as_string::<i32>(
                    batch.column_by_name("event_guid").unwrap(),
                );
                let state = d.part(&part);
                for i in 0..batch.num_rows() {
                    kept += state.first(keys.value(i).as_bytes(), i as i64) as usize;
                }
            }
            d.commit();
            black_box(kept)
        })
    });
}

/// Definition `i`'s partials (grouped, rows form, per-run overhead), encoding them, from
/// string views, and merging them.
fn bench_definition(
    group: &mut Group<'_>,
    rt: &tokio::runtime::Runtime,
    defs: &[AggregateDef],
    i: usize,
    input: &[RecordBatch],
) {
    let def = &defs[i];
    let agg = Aggregator::new(vec![def.clone()]);
    // As the loader does: only the columns the definition reads.
    let read = rt.block_on(agg.columns_read(&input[0].schema())).unwrap();
    let input: Vec<RecordBatch> = input.iter().map(|b| b.project(&read).unwrap()).collect();
    group.bench_function(format!("partials/{}", def.name), |b| {
        b.iter(|| {
            rt.block_on(async {
                for batch in &input {
                    black_box(agg.partials(batch).await.unwrap());
                }
            })
        })
    });
    // The rows form (one partial per event, no grouping), where the definition has one.
    if rt
        .block_on(agg.has_rows_form(0, &input[0].schema()))
        .unwrap()
    {
        group.bench_function(format!("partials_rows/{}", def.name), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for batch in &input {
                        black_box(
                            agg.partial(0, floe_aggregate::Form::Rows, batch)
                                .await
                                .unwrap(),
                        );
                    }
                })
            })
        });
    }
    // Planning and set-up per run, the same for any batch size.
    let tiny = input[0].slice(0, 64);
    group.bench_function(format!("overhead_x4/{}", def.name), |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..4 {
                    black_box(agg.partials(&tiny).await.unwrap());
                }
            })
        })
    });
    let partials: Vec<RecordBatch> = rt.block_on(async {
        let mut v = Vec::new();
        for batch in &input {
            v.extend(agg.partials(batch).await.unwrap());
        }
        v
    });
    bench_write(group, def, &partials);
    bench_views(group, rt, &agg, def, &input);
    let all = Aggregator::new(defs.to_vec());
    group.bench_function(format!("merge/{}", def.name), |b| {
        b.iter(|| rt.block_on(async { black_box(all.merge(i, &partials).await.unwrap()) }))
    });
}

/// Encoding the partials as the loader's partial files are encoded (conformed to the
/// table's types, Parquet with the partials' writer settings, in memory).
fn bench_write(group: &mut Group<'_>, def: &AggregateDef, partials: &[RecordBatch]) {
    // Encoding the partials as the loader's partial files are encoded (conformed to the
    // table's types, Parquet with the partials' writer settings, in memory).
    let table = TableDefinition::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../schemas/{}.json", def.target)),
    )
    .unwrap();
    let target =
        std::sync::Arc::new(iceberg::arrow::schema_to_arrow_schema(&table.schema).unwrap());
    let props = floe_lake::writer::writer_properties(
        &[(
            "write.parquet.compression-codec".to_string(),
            "uncompressed".to_string(),
        )]
        .into(),
    )
    .unwrap();
    use parquet::file::properties::EnabledStatistics;
    let strings: Vec<parquet::schema::types::ColumnPath> = target
        .fields()
        .iter()
        .filter(|f| f.data_type() == &arrow_schema::DataType::Utf8)
        .map(|f| parquet::schema::types::ColumnPath::from(f.name().as_str()))
        .collect();
    let variant = |dict: bool, stats: bool| {
        let mut b = props.clone().into_builder();
        for c in &strings {
            b = b.set_column_dictionary_enabled(c.clone(), dict);
            if !stats {
                b = b.set_column_statistics_enabled(c.clone(), EnabledStatistics::None);
            }
        }
        b.build()
    };
    for (label, props) in [
        ("", props.clone()),
        ("_nostats", variant(true, false)),
        ("_nodict", variant(false, true)),
        ("_plain", variant(false, false)),
    ] {
        let size = std::cell::Cell::new(0);
        group.bench_function(format!("write{label}/{}", def.name), |b| {
            b.iter(|| {
                let mut w = parquet::arrow::ArrowWriter::try_new(
                    Vec::new(),
                    target.clone(),
                    Some(props.clone()),
                )
                .unwrap();
                for p in partials {
                    let shaped = floe_aggregate::engine::conform(def, p, &target).unwrap();
                    w.write(&shaped).unwrap();
                }
                size.set(w.into_inner().unwrap().len());
                black_box(size.get())
            })
        });
        println!("write{label}/{}: {} bytes", def.name, size.get());
    }
}

/// The same partials from string columns as views.
fn bench_views(
    group: &mut Group<'_>,
    rt: &tokio::runtime::Runtime,
    agg: &Aggregator,
    def: &AggregateDef,
    input: &[RecordBatch],
) {
    // The same partials from string columns as views.
    let views: Vec<RecordBatch> = input
        .iter()
        .map(|b| {
            let fields: Vec<arrow_schema::Field> = b
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let t = if f.data_type() == &arrow_schema::DataType::Utf8 {
                        arrow_schema::DataType::Utf8View
                    } else {
                        f.data_type().clone()
                    };
                    arrow_schema::Field::new(f.name(), t, true)
                })
                .collect();
            let cols = b
                .columns()
                .iter()
                .zip(&fields)
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
                .collect();
            RecordBatch::try_new(std::sync::Arc::new(arrow_schema::Schema::new(fields)), cols)
                .unwrap()
        })
        .collect();
    group.bench_function(format!("partials_views/{}", def.name), |b| {
        b.iter(|| {
            rt.block_on(async {
                for batch in &views {
                    black_box(agg.partials(batch).await.unwrap());
                }
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The transform stage's cost per event on `floe generate`'s default stream, in 64k-row chunks
//! as the loader hands them over: keeping each row's source (what a rejected row's dead letter
//! needs) and applying `floe bench`'s mapping (two computed columns, two rules), next to
//! decoding the same messages for scale.
//!
//! `cargo bench -p floe-loader --bench transform`; `floe bench` measures the stage's cost on
//! loader throughput (goal: within 10 %).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use arrow_array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floe_devtools::generate::{Generator, GeneratorOptions};
use floe_loader::transform::Stage;
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};

const CHUNK: usize = 65_536;
const CHUNKS: usize = 4;

fn meta(i: usize) -> RecordMeta<'static> {
    RecordMeta {
        topic: "events",
        partition: Some(0),
        offset: Some(i as i64),
        timestamp_ms: Some(1_742_199_657_865),
        ingested_at_us: 1,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let def = TableDefinition::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/lake.events.json"),
    )
    .unwrap();
    let mapping = floe_devtools::mappings::benchmark_mapping();
    let opts = DecoderOptions::for_pipeline(&def.properties, &mapping);
    let mut g = Generator::new(GeneratorOptions {
        start_ms: 1_742_199_657_865,
        ..Default::default()
    });
    let messages: Vec<Vec<u8>> = (0..CHUNK * CHUNKS)
        .map(|_| g.next_message().payload)
        .collect();
    let mut decoder = Decoder::new(&def.schema, &opts).unwrap();
    let mut chunks: Vec<RecordBatch> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        decoder.decode(m, &meta(i)).unwrap();
        if decoder.len() == CHUNK {
            chunks.push(decoder.finish());
        }
    }
    let mut stage = Stage::new("lake.events", &def.schema, &opts.mapping)
        .unwrap()
        .expect("the mapping has computed columns and rules");

    let mut group = c.benchmark_group("transform_stage");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for (i, m) in messages.iter().enumerate() {
                decoder.decode(m, &meta(i)).unwrap();
                if decoder.len() == CHUNK {
                    black_box(decoder.finish());
                }
            }
        })
    });
    group.bench_function("push", |b| {
        b.iter(|| {
            for (i, m) in messages.iter().enumerate() {
                stage.push(&meta(i), m, Vec::new(), true, false, false);
                if (i + 1) % CHUNK == 0 {
                    stage.clear();
                }
            }
        })
    });
    group.bench_function("push_and_apply", |b| {
        b.iter(|| {
            for (c, chunk) in chunks.iter().enumerate() {
                let rows = c * CHUNK..(c + 1) * CHUNK;
                for (i, m) in messages[rows.clone()].iter().enumerate() {
                    stage.push(&meta(rows.start + i), m, Vec::new(), true, false, false);
                }
                let staged = stage.apply(chunk.clone(), 0).unwrap();
                assert!(staged.rejected.is_empty());
                black_box(staged);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

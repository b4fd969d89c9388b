//! Decoder throughput on seed e-commerce events (events/s and bytes/s on one core).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floe_schema::{Decoder, DecoderOptions, RecordMeta, TableDefinition};

/// Seed-shaped events (as `floe generate` makes them), built outside the measured loop.
fn seed_events(n: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let r = next();
            format!(
                concat!(
                    r#"{{"eventGuid":"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}","timestamp":{},"#,
                    r#""country":"country_{}","is_returning":{},"user_id":"user_id_{}","#,
                    r#""action":"action_{}","device_type":"device_type_{}","page":"page_{}","#,
                    r#""category":"category_{}","value":{},"session_duration":{}}}"#
                ),
                r as u32,
                (r >> 32) as u16,
                (r >> 48) & 0xfff,
                i & 0xfff,
                r & 0xffff_ffff_ffff,
                1_742_199_657_865u64 + (r % 3_600_000),
                r % 50,
                r & 1 == 0,
                r % 1000,
                r % 10,
                r % 3,
                r % 20,
                r % 30,
                (r % 100_000) as f64 / 997.0,
                r % 600,
            )
            .into_bytes()
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let def = TableDefinition::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/lake.events.json"),
    )
    .unwrap();
    let opts = DecoderOptions::from_table_properties(&def.properties);
    let events = seed_events(100_000);
    let bytes: usize = events.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("decode_seed_events");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("events", |b| {
        let mut d = Decoder::new(&def.schema, &opts).unwrap();
        b.iter(|| {
            for (i, e) in events.iter().enumerate() {
                let meta = RecordMeta {
                    topic: "events",
                    partition: Some(0),
                    offset: Some(i as i64),
                    ingested_at_us: 1,
                    ..Default::default()
                };
                d.decode(e, &meta).unwrap();
            }
            black_box(d.finish())
        })
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| {
        let mut d = Decoder::new(&def.schema, &opts).unwrap();
        b.iter(|| {
            for e in &events {
                d.decode(e, &RecordMeta::default()).unwrap();
            }
            black_box(d.finish())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);

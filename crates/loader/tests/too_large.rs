//! A Kafka message larger than `limits.max_message_bytes` is a dead letter `too_large` keeping
//! the start of its payload; the messages around it load.

mod common;

use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use common::{catalog, scan};
use floe_devtools::broker::DevBroker;
use floe_lake::{Catalog, Committer};
use floe_loader::config::{KafkaConfig, LimitsConfig, PipelineConfig};
use floe_loader::source::kafka::{RunOptions, run_to_end};
use floe_schema::TableDefinition;
use rdkafka::producer::{FutureProducer, FutureRecord};

const DEF: &str = r#"{
  "schema": {"type": "struct", "schema-id": 0, "fields": [
    {"id": 1, "name": "id", "required": true, "type": "long"},
    {"id": 2, "name": "text", "required": false, "type": "string"}]}
}"#;

const MIB: usize = 1 << 20;
const KEPT: usize = 64 * 1024;

fn message(id: i64, text_bytes: usize) -> Vec<u8> {
    format!(r#"{{"id":{id},"text":"{}"}}"#, "a".repeat(text_bytes)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_messages_over_the_limit_are_too_large_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    catalog
        .create_table(&TableDefinition::from_json(DEF, Some("lake.t"), "test").unwrap())
        .await
        .unwrap();
    let broker = DevBroker::start(1).unwrap();
    broker.create_topic("big").unwrap();
    let kafka = KafkaConfig {
        brokers: broker.bootstrap_servers(),
        ..Default::default()
    };
    let messages = [
        message(1, 10),
        message(2, 2 * MIB), // over the limit
        message(3, MIB - 20),
        message(4, 10),
    ];
    produce(&kafka, &messages).await;
    let limits = LimitsConfig {
        max_message_bytes: bytesize::ByteSize::mib(1),
    };
    let opts = RunOptions {
        kafka,
        pipelines: vec![PipelineConfig {
            topics: vec!["big".into()],
            table: "lake.t".into(),
            dead_letter_topic: Some(String::new()),
            aggregates: Some(Vec::new()),
            ..Default::default()
        }],
        until_drained: true,
        static_assignment: true,
        aggregates: Vec::new(),
        table_definitions: Vec::new(),
        limits,
    };
    run_to_end(Committer::new(catalog.clone()), opts)
        .await
        .unwrap();

    let mut ids = Vec::new();
    for b in scan(&catalog, "lake.t").await {
        let col = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        ids.extend(col.values().iter().copied());
    }
    ids.sort();
    assert_eq!(ids, [1, 3, 4]);
    let dead = dead_letters(&catalog).await;
    let big = &messages[1];
    assert_eq!(
        dead,
        [(
            "too_large".to_string(),
            format!(
                "message of {} bytes exceeds the limit of {MIB} bytes \
                 (limits.max_message_bytes); payload truncated to the first {KEPT} bytes",
                big.len()
            ),
            big[..KEPT].to_vec()
        )]
    );

    // A replay never loads the kept start of a message as if it were the message.
    let report = floe_loader::replay::replay(
        &floe_lake::Committer::new(catalog.clone()),
        &floe_loader::replay::ReplayOptions::new("lake.t"),
    )
    .await
    .unwrap();
    assert_eq!((report.selected, report.replayed), (1, 0), "{report:?}");
    assert_eq!(report.still_failing.get("too_large"), Some(&1));
    assert_eq!(
        scan(&catalog, "lake.t_dead_letters")
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        1
    );
}

/// Sends `messages` to topic `big`, uncompressed, whatever their size.
async fn produce(kafka: &KafkaConfig, messages: &[Vec<u8>]) {
    let producer: FutureProducer = floe_loader::source::kafka::producer_config(kafka)
        .set("message.max.bytes", "10000000")
        .set("compression.type", "none")
        .create()
        .unwrap();
    for m in messages {
        producer
            .send(
                FutureRecord::<(), _>::to("big").payload(m),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// The dead letters of `lake.t`: (kind, message, payload).
async fn dead_letters(catalog: &Catalog) -> Vec<(String, String, Vec<u8>)> {
    let mut dead = Vec::new();
    for b in scan(catalog, "lake.t_dead_letters").await {
        for i in 0..b.num_rows() {
            let s = |c: &str| b.column_by_name(c).unwrap().as_string::<i32>().value(i);
            let payload = b
                .column_by_name("payload")
                .unwrap()
                .as_binary::<i64>()
                .value(i);
            dead.push((
                s("error_kind").to_string(),
                s("error_message").to_string(),
                payload.to_vec(),
            ));
        }
    }
    dead
}

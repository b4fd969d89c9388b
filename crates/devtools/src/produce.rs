//! Producing generated events to a topic (`floe generate --brokers … --topic …`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use floe_loader::config::KafkaConfig;
use floe_loader::{Error, Result};

use crate::generate::{Generator, MessageKind};

#[derive(Default)]
struct Delivery {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Delivery>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What was produced.
#[derive(Debug, Clone, Default)]
pub struct ProduceReport {
    /// Messages acknowledged by the broker, per kind.
    pub by_kind: BTreeMap<MessageKind, u64>,
    /// Acknowledged.
    pub delivered: u64,
    /// Failed deliveries.
    pub failed: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Produces `events` generated messages to `topic` (key = eventGuid), at most `rate` per
/// second if given; waits for every delivery report. `progress(sent)` is called now and then.
pub fn produce(
    kafka: &KafkaConfig,
    topic: &str,
    generator: &mut Generator,
    events: u64,
    rate: Option<f64>,
    mut progress: impl FnMut(u64),
) -> Result<ProduceReport> {
    let delivery = Arc::new(Delivery::default());
    let producer: BaseProducer<Ctx> = floe_loader::source::kafka::producer_config(kafka)
        .create_with_context(Ctx(delivery.clone()))
        .map_err(|e| Error::kafka("creating the producer", e))?;
    let started = Instant::now();
    let mut report = ProduceReport::default();
    for i in 0..events {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let m = generator.next_message();
        report.bytes += m.payload.len() as u64;
        *report.by_kind.entry(m.kind).or_insert(0) += 1;
        let mut record = BaseRecord::to(topic)
            .key(m.key.as_bytes())
            .payload(&m.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(Error::kafka(format!("producing to {topic}"), e)),
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
            progress(i);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| Error::kafka("flushing the producer", e))?;
    progress(events);
    report.delivered = delivery.ok.load(Ordering::Relaxed);
    report.failed = delivery.failed.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    if report.failed > 0 {
        return Err(Error::Internal(format!(
            "{} of {events} messages were not delivered to {topic}",
            report.failed
        )));
    }
    Ok(report)
}

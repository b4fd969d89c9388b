//! Connecting to Kafka: clients with floe's defaults, the consumer's context (errors,
//! statistics), subscribing or assigning every partition, and closing within a deadline.
//!
//! Defaults favour throughput and exactly-once: no auto-commit (offsets live in Iceberg; the
//! group's offsets are committed afterwards for lag monitoring only), a low
//! `fetch.queue.backoff.ms` (librdkafka's 1 s default stalls consumers) and deep fetch queues.
//! Fetches are sized from `limits.max_message_bytes` so that a message of that size is always
//! fetched. Every librdkafka property can be overridden from `kafka.properties`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};

use super::{Env, RunOptions, State};
use crate::batch::Tp;
use crate::config::{KafkaConfig, LimitsConfig};
use crate::telemetry as m;
use crate::{Error, Result};

/// Property keys whose values are secrets (never logged or printed).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.ends_with(".key")
        || k.contains("token")
        || k.starts_with("ssl.key.")
        || k == "sasl.jaas.config"
        || k == "sasl.oauthbearer.config"
}

/// `properties` with secret values replaced by `***`.
pub fn redacted(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) {
                "***".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn base(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c
}

fn apply_user(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
}

/// Room for what a fetch response holds besides one message's value: its key, headers and
/// the record batch and response framing.
const FETCH_FRAMING_BYTES: u64 = 1 << 20;

/// Fetch sizes that always fetch a message of `max_message_bytes`: (`fetch.max.bytes`,
/// `max.partition.fetch.bytes`, `queued.max.messages.kbytes`). librdkafka raises
/// `receive.message.max.bytes` to `fetch.max.bytes` + 512 itself unless it is set. Each is
/// capped at what librdkafka accepts (messages up to about 1 GB can be fetched).
fn fetch_sizes(limits: &LimitsConfig) -> (u64, u64, u64) {
    let message = limits
        .max_message_bytes
        .as_u64()
        .saturating_add(FETCH_FRAMING_BYTES);
    let partition = message.clamp(10 << 20, 1_000_000_000);
    let fetch = message.clamp(100 << 20, i32::MAX as u64 - 512);
    let queued_kib = (2 * fetch)
        .div_ceil(1024)
        .clamp(256 << 10, i32::MAX as u64 / 1024);
    (fetch, partition, queued_kib)
}

/// Consumer settings.
pub fn consumer_config(cfg: &KafkaConfig, limits: &LimitsConfig) -> ClientConfig {
    let mut c = base(cfg);
    let (fetch, partition, queued_kib) = fetch_sizes(limits);
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.min.messages", "500000")
        .set("queued.max.messages.kbytes", queued_kib.to_string())
        .set("fetch.max.bytes", fetch.to_string())
        .set("max.partition.fetch.bytes", partition.to_string())
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "5000");
    apply_user(&mut c, cfg);
    c
}

/// Producer settings (dead-letter topic, `floe generate`).
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg);
    c.set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4");
    for (k, v) in &cfg.properties {
        // Consumer-only keys would make the producer refuse to start.
        if !matches!(
            k.as_str(),
            "group.id" | "auto.offset.reset" | "enable.auto.commit" | "session.timeout.ms"
        ) {
            c.set(k, v);
        }
    }
    c
}

/// The consumer context: rebalances start partitions at the offsets committed in Iceberg
/// ([`super::rebalance`]); errors and statistics are reported here.
pub(super) struct Ctx {
    pub state: Arc<Mutex<State>>,
    pub env: Arc<Env>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            // Wrong credentials do not heal by retrying: stop with the broker's reason
            // instead of a loader that waits forever for its first message.
            KafkaError::Global(
                RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed,
            ) => {
                tracing::error!(error = %error, reason, "kafka authentication failed");
                let mut st = self.state.lock().expect("state lock");
                st.fatal.get_or_insert(Error::kafka(
                    format!(
                        "authentication failed: {reason} (check kafka.properties \
                         security.protocol / sasl.* and kafka.property_files)"
                    ),
                    error,
                ));
            }
            e => tracing::warn!(error = %e, reason, "kafka client error"),
        }
    }

    fn stats(&self, stats: Statistics) {
        let mut total = 0i64;
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    total += part.consumer_lag;
                    metrics::gauge!(m::CONSUMER_LAG, "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
        self.env.health.set_lag(total);
    }
}

/// Creates the consumer and subscribes it to the pipelines' topics (or, with
/// `static_assignment`, assigns it every partition of them).
pub(super) fn connect(
    opts: &RunOptions,
    state: &Arc<Mutex<State>>,
    env: &Arc<Env>,
) -> Result<BaseConsumer<Ctx>> {
    let ctx = Ctx {
        state: state.clone(),
        env: env.clone(),
    };
    let consumer: BaseConsumer<Ctx> = consumer_config(&opts.kafka, &opts.limits)
        .create_with_context(ctx)
        .map_err(|e| Error::kafka("creating the consumer", e))?;
    let topics: Vec<&str> = opts
        .pipelines
        .iter()
        .flat_map(|p| p.topics.iter().map(String::as_str))
        .collect();
    if opts.static_assignment {
        assign_all(&consumer, state, env, &topics)?;
    } else {
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::kafka(format!("subscribing to {topics:?}"), e))?;
    }
    tracing::info!(topics = ?topics, group = %opts.kafka.group_id, brokers = %opts.kafka.brokers, "consuming");
    Ok(consumer)
}

/// Assigns every partition of `topics` to this consumer, starting at the committed offsets.
fn assign_all(
    consumer: &BaseConsumer<Ctx>,
    state: &Arc<Mutex<State>>,
    env: &Env,
    topics: &[&str],
) -> Result<()> {
    let mut tps: Vec<Tp> = Vec::new();
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(30))
            .map_err(|e| Error::kafka(format!("reading metadata of {t}"), e))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                tps.push((topic.name().to_string(), p.id()));
            }
        }
    }
    let mut st = state.lock().expect("state lock");
    let starts = st.start_offsets_retrying(env, &tps)?;
    let mut tpl = TopicPartitionList::new();
    for (tp, start) in starts {
        tpl.add_partition_offset(
            &tp.0,
            tp.1,
            start.map(Offset::Offset).unwrap_or(Offset::Beginning),
        )
        .map_err(|e| Error::kafka(format!("assigning {}[{}]", tp.0, tp.1), e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assigning partitions", e))?;
    st.assigned = tps;
    Ok(())
}

/// A list of the partitions `tps`.
pub(super) fn tp_list(tps: &[Tp]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    tpl
}

/// How long a stopping loader waits for the consumer to leave its group.
const CONSUMER_CLOSE: Duration = Duration::from_secs(5);

/// Closes `consumer` (leaving the group), waiting at most [`CONSUMER_CLOSE`]: librdkafka's
/// close waits for the broker without a deadline, and a loader stopped during a broker
/// outage would never exit. Everything consumed is committed by then; the group's coordinator
/// drops the member at its session timeout instead.
pub(super) fn close_consumer(consumer: BaseConsumer<Ctx>) {
    let within = CONSUMER_CLOSE;
    let (done_tx, done) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done_tx.send(());
        });
    // (A thread that cannot start dropped the consumer here, waiting.)
    if closing.is_ok() && done.recv_timeout(within).is_err() {
        tracing::warn!(
            waited_s = within.as_secs(),
            "the Kafka consumer did not close (broker unreachable?); stopping without it: \
             everything consumed is committed"
        );
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    #[test]
    fn fetches_always_hold_a_message_of_the_limit() {
        for mib in [1, 4, 99, 150, 900] {
            let limits = LimitsConfig {
                max_message_bytes: bytesize::ByteSize::mib(mib),
            };
            let c = consumer_config(&KafkaConfig::default(), &limits);
            let get = |k: &str| c.get(k).unwrap().parse::<u64>().unwrap();
            let message = mib << 20;
            assert!(get("max.partition.fetch.bytes") > message, "{mib} MiB");
            assert!(get("fetch.max.bytes") > message, "{mib} MiB");
            assert!(get("queued.max.messages.kbytes") * 1024 >= 2 * get("fetch.max.bytes"));
            // librdkafka takes the settings (it checks them against each other, and raises
            // receive.message.max.bytes above fetch.max.bytes).
            let consumer: BaseConsumer = c.create().unwrap_or_else(|e| panic!("{mib} MiB: {e}"));
            drop(consumer);
        }
        // The defaults stay what they were for small limits.
        let c = consumer_config(&KafkaConfig::default(), &LimitsConfig::default());
        assert_eq!(c.get("fetch.max.bytes"), Some("104857600"));
        assert_eq!(c.get("max.partition.fetch.bytes"), Some("10485760"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("262144"));
    }
}

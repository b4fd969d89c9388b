//! Kafka clients with floe's defaults, and the development broker.
//!
//! Defaults favour throughput and exactly-once: no auto-commit (offsets live in Iceberg; the
//! group's offsets are committed afterwards for lag monitoring only), a low
//! `fetch.queue.backoff.ms` (librdkafka's 1 s default stalls consumers) and deep fetch queues.
//! Fetches are sized from `limits.max_message_bytes` so that a message of that size is always
//! fetched. Every librdkafka property can be overridden from `kafka.properties`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::{KafkaConfig, LimitsConfig};

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

/// An in-process Kafka-protocol broker (librdkafka's mock cluster) for local use and tests.
///
/// The mock cluster binds random loopback ports; [`DevBroker::serve_bootstrap`] forwards a
/// fixed port to it so clients can be pointed at a known address (they then talk to the
/// broker address it advertises). It keeps about 5 MB per partition (librdkafka's limit):
/// spread large topics over enough partitions.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    partitions: i32,
}

impl DevBroker {
    /// Starts a one-broker mock cluster; `partitions` is used by [`Self::create_topic`].
    pub fn start(partitions: i32) -> Result<Self, String> {
        let cluster = MockCluster::new(1).map_err(|e| format!("starting the mock cluster: {e}"))?;
        Ok(Self {
            cluster,
            partitions,
        })
    }

    /// The broker's own bootstrap address.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic with the broker's partition count (no-op if it exists).
    pub fn create_topic(&self, topic: &str) -> Result<(), String> {
        self.cluster
            .create_topic(topic, self.partitions, 1)
            .map_err(|e| format!("creating topic {topic}: {e}"))
    }

    /// Forwards connections on `listen` to the mock broker, until the process exits.
    pub async fn serve_bootstrap(&self, listen: SocketAddr) -> std::io::Result<()> {
        let target = self.bootstrap_servers();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (mut inbound, _) = listener.accept().await?;
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
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

//! The loader's part of floe's config model: `[kafka]`, `[[pipelines]]`, `[metrics]`,
//! `[limits]`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Kafka connection; any librdkafka property passes through `properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; also names the offsets key in snapshot summaries.
    pub group_id: String,
    /// librdkafka properties (SASL, SSL, tuning); they override floe's defaults. Dotted keys
    /// may be quoted (`"sasl.mechanism" = "PLAIN"`) or nested (TOML dotted keys, or
    /// `FLOE__KAFKA__PROPERTIES__SASL__MECHANISM`); values may be strings, numbers or booleans.
    #[serde(deserialize_with = "flat_properties")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties read from files, property → path: secrets such as
    /// `sasl.password` kept out of config and environment (Docker/Kubernetes secrets).
    #[serde(
        deserialize_with = "flat_properties",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub property_files: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "floe".into(),
            properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Reads `property_files` into `properties` (file content, trailing newline trimmed); an
    /// unreadable file is an error naming the property and the file.
    pub fn resolve_property_files(&mut self) -> Result<(), String> {
        for (key, path) in std::mem::take(&mut self.property_files) {
            let value = std::fs::read_to_string(&path)
                .map_err(|e| format!("kafka.property_files.{key}: reading {path}: {e}"))?;
            self.properties
                .insert(key, value.trim_end_matches(['\r', '\n']).to_string());
        }
        Ok(())
    }
}

/// A config value under `kafka.properties`: scalars become strings, tables are flattened with
/// dots (`sasl = { mechanism = "PLAIN" }` → `sasl.mechanism`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Property {
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f64),
    Table(BTreeMap<String, Property>),
}

fn flatten(prefix: &str, p: Property, out: &mut BTreeMap<String, String>) {
    match p {
        Property::Str(s) => {
            out.insert(prefix.to_string(), s);
        }
        Property::Bool(b) => {
            out.insert(prefix.to_string(), b.to_string());
        }
        Property::Int(i) => {
            out.insert(prefix.to_string(), i.to_string());
        }
        Property::Float(f) => {
            out.insert(prefix.to_string(), f.to_string());
        }
        Property::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
    }
}

fn flat_properties<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let table = BTreeMap::<String, Property>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten("", Property::Table(table), &mut out);
    Ok(out)
}

/// When a batch is committed: the first limit reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// Messages per batch.
    pub max_rows: u64,
    /// Payload bytes per batch.
    pub max_bytes: bytesize::ByteSize,
    /// Longest time a message waits before its batch is committed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A table that flushes bring nothing for (the dead-letter table, most of the time)
    /// records its offsets at most this often instead of every flush; a restart re-reads at
    /// most this much of the topic for it.
    #[serde(with = "humantime_serde")]
    pub idle_offsets_interval: Duration,
    /// Decoded rows handed to the Parquet writer (and the transform stage and aggregates) at
    /// a time: memory holds a few such chunks per pipeline whatever the batch size.
    pub chunk_rows: usize,
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: bytesize::ByteSize::mib(256),
            interval: Duration::from_secs(60),
            idle_offsets_interval: Duration::from_secs(600),
            chunk_rows: 65_536,
        }
    }
}

/// One topic (or several) → one table, with its dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Source topic(s).
    pub topics: Vec<String>,
    /// Target table (`lake.events`).
    pub table: String,
    /// Send rejected messages to a dead-letter table and topic; when false the loader stops
    /// at the first rejected message.
    pub dead_letters: bool,
    /// Dead-letter table (default `<table>_dead_letters`).
    pub dead_letter_table: Option<String>,
    /// Dead-letter topic (default `<first topic>.dead-letters`); empty string: table only.
    pub dead_letter_topic: Option<String>,
    /// Flush policy.
    pub flush: FlushConfig,
    /// Aggregates to run on each flushed batch, by name (`hourly_multi`); unset: every
    /// definition whose `-- source:` is this table; empty: none.
    pub aggregates: Option<Vec<String>>,
    /// Aggregates count each event once: the column holding its id.
    pub dedup_column: String,
    /// How far back in event time duplicates are recognised.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Event ids the dedup state holds at most (about 50 bytes each), checked after each
    /// chunk of rows. Past it the oldest are forgotten before `dedup_window` ends: a later
    /// duplicate of one of them is counted again (`floe_dedup_evictions_total`, a warning).
    pub dedup_max_keys: usize,
    /// The aggregates skip grouping a chunk (each event is its own partial row) when at least
    /// this share of its rows have distinct keys; above 1, they always group.
    pub aggregate_rows_form_share: f64,
    /// JSON pointer of the object decoded as the row (`/data` for CloudEvents, `/payload`
    /// for Debezium); overrides the table's `floe.unnest`; `""` turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unnest: Option<String>,
    /// Column → JSON pointer into the message (`"/data/user/id"`, `"/items/0/sku"`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Column → SQL expression computing it (`"lower(country)"`); may read `_kafka_*`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub computed: BTreeMap<String, String>,
    /// Rule name → SQL boolean expression every row must satisfy (`"value >= 0"`); failing
    /// rows are dead letters of kind `rule`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            table: String::new(),
            dead_letters: true,
            dead_letter_table: None,
            dead_letter_topic: None,
            flush: FlushConfig::default(),
            aggregates: None,
            dedup_column: "event_guid".into(),
            dedup_window: Duration::from_secs(3600),
            dedup_max_keys: 10_000_000,
            aggregate_rows_form_share: crate::aggregates::ROWS_FORM_SHARE,
            unnest: None,
            columns: BTreeMap::new(),
            computed: BTreeMap::new(),
            rules: BTreeMap::new(),
        }
    }
}

impl PipelineConfig {
    /// The dead-letter table, if dead letters are on.
    pub fn dead_letter_table(&self) -> Option<String> {
        self.dead_letters.then(|| {
            self.dead_letter_table
                .clone()
                .unwrap_or_else(|| crate::dead_letters::default_table(&self.table))
        })
    }

    /// The dead-letter topic, if any.
    pub fn dead_letter_topic(&self) -> Option<String> {
        if !self.dead_letters {
            return None;
        }
        match &self.dead_letter_topic {
            Some(t) if t.is_empty() => None,
            Some(t) => Some(t.clone()),
            None => self
                .topics
                .first()
                .map(|t| crate::dead_letters::default_topic(t)),
        }
    }

    /// The pipeline's mapping (laid over the table's `floe.*` mapping properties).
    pub fn mapping(&self) -> floe_schema::Mapping {
        floe_schema::Mapping {
            unnest: self.unnest.clone(),
            columns: self.columns.clone(),
            computed: self.computed.clone(),
            rules: self.rules.clone(),
        }
    }

    /// Checks the pipeline makes sense; the message names the setting.
    pub fn validate(&self, index: usize) -> Result<(), String> {
        if self.topics.is_empty() {
            return Err(format!(
                "pipelines[{index}].topics: name at least one topic"
            ));
        }
        if self.table.is_empty() {
            return Err(format!("pipelines[{index}].table: name the target table"));
        }
        if self.flush.max_rows == 0 || self.flush.max_bytes.as_u64() == 0 {
            return Err(format!(
                "pipelines[{index}].flush: max_rows and max_bytes must be > 0"
            ));
        }
        if self.flush.interval.is_zero() {
            return Err(format!("pipelines[{index}].flush.interval must be > 0"));
        }
        if self.dedup_max_keys == 0 {
            return Err(format!("pipelines[{index}].dedup_max_keys must be > 0"));
        }
        Ok(())
    }
}

/// Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address serving `/metrics` and `/health`; empty to disable.
    pub listen: String,
    /// `/health` turns unhealthy when no commit happened for this many flush intervals while
    /// messages are waiting.
    pub stale_after_intervals: u32,
    /// Connections served at once; more are closed as soon as they are accepted, so clients
    /// of the endpoint can never take the file descriptors the loader needs.
    pub max_connections: usize,
    /// A client must send its request's headers within this time of connecting.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// A connection (one request: it closes after the response) is dropped after this long,
    /// whatever it is doing (a client reading its response slowly).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            stale_after_intervals: 3,
            max_connections: 64,
            read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl MetricsConfig {
    /// Checks the settings make sense; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("metrics.max_connections must be > 0".into());
        }
        if self.read_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("metrics.read_timeout and metrics.request_timeout must be > 0".into());
        }
        Ok(())
    }
}

/// Limits on what one message may cost (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest message (Kafka message value, or line of a `floe load` input, its newline
    /// aside) loaded; a larger one is a dead letter `too_large` keeping its first 64 KiB.
    /// Reading a line never holds more than this. Kafka fetches are sized so that a message
    /// this large is always fetched.
    pub max_message_bytes: bytesize::ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            // Kafka's own default cap on a message is about 1 MB; a few times that.
            max_message_bytes: bytesize::ByteSize::mib(4),
        }
    }
}

impl LimitsConfig {
    /// `max_message_bytes` in bytes (at least 1).
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_message_bytes.as_u64())
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

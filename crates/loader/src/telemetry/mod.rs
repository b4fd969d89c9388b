//! Telemetry: what the loader reports, as typed events that log and count in one place (the
//! way Vector's internal events do), so a stage says *what happened* and this module decides
//! how it is logged and which metrics move. Metric names are in [`metrics`].

pub mod cpu;
pub mod health;
pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use floe_lake::Retry;
use iceberg::spec::{Schema, TableMetadata};

pub use self::metrics::*;
pub use cpu::{AggregateStage, CpuMeter, aggregate_cpu, thread_cpu};
pub use health::Health;

/// Something that happened in the loader: [`Event::emit`] logs it and moves its metrics.
pub(crate) trait Event {
    /// Logs the event and counts it.
    fn emit(self);
}

/// A loader starts decoding `table` against `metadata`'s schema.
pub(crate) struct SchemaInUse<'a> {
    pub table: &'a str,
    pub metadata: &'a TableMetadata,
}

impl Event for SchemaInUse<'_> {
    fn emit(self) {
        ::metrics::gauge!(SCHEMA_ID, "table" => self.table.to_string())
            .set(self.metadata.current_schema_id() as f64);
    }
}

/// A loader of `table` adopts `new` metadata in place of `old` because messages decode
/// differently now: a log line with the schema ids and the columns added, dropped, renamed or
/// promoted, the change counter and the schema-id gauge.
pub(crate) struct SchemaChanged<'a> {
    pub table: &'a str,
    pub old: &'a TableMetadata,
    pub new: &'a TableMetadata,
}

impl Event for SchemaChanged<'_> {
    fn emit(self) {
        let change = describe_schema_change(self.old.current_schema(), self.new.current_schema());
        tracing::info!(
            table = %self.table,
            old = self.old.current_schema_id(),
            new = self.new.current_schema_id(),
            change = %change,
            "table schema changed; decoding against the new schema"
        );
        let labels = [("table", self.table.to_string())];
        ::metrics::counter!(SCHEMA_CHANGES, &labels).increment(1);
        ::metrics::gauge!(SCHEMA_ID, &labels).set(self.new.current_schema_id() as f64);
    }
}

/// The decoder cannot be built for a table's new schema or mapping: the old one is kept.
pub(crate) struct SchemaUnusable<'a> {
    pub table: &'a str,
    pub schema_id: i32,
    pub error: &'a crate::Error,
}

impl Event for SchemaUnusable<'_> {
    fn emit(self) {
        tracing::error!(table = %self.table, schema = self.schema_id, error = %self.error, "cannot decode against the new schema or mapping; keeping the old one");
    }
}

/// The decoder's counts of rows it unwrapped (`unnest`) or projected (`columns.<column>`),
/// added to [`TRANSFORM_ROWS`].
pub(crate) struct MappingApplied<'a> {
    pub table: &'a str,
    pub counts: Vec<(floe_schema::Setting, u64)>,
}

impl Event for MappingApplied<'_> {
    fn emit(self) {
        for (setting, n) in self.counts {
            if n > 0 {
                ::metrics::counter!(TRANSFORM_ROWS, "table" => self.table.to_string(), "transform" => setting.label(), "outcome" => "applied")
                    .increment(n);
            }
        }
    }
}

/// A table commit of a batch landed after `attempts` (races lost: `attempts - 1`).
pub(crate) struct TableCommitted<'a> {
    pub table: &'a str,
    pub took: Duration,
    pub attempts: u32,
}

impl Event for TableCommitted<'_> {
    fn emit(self) {
        ::metrics::histogram!(COMMIT_SECONDS, "table" => self.table.to_string())
            .record(self.took.as_secs_f64());
        ::metrics::counter!(COMMIT_CONFLICTS, "table" => self.table.to_string())
            .increment(u64::from(self.attempts.saturating_sub(1)));
    }
}

/// A pipeline's batch is committed: its rows, dead letters and files.
pub(crate) struct BatchCommitted<'a> {
    pub table: &'a str,
    pub rows: u64,
    pub dead_letters: u64,
    pub files: usize,
    pub bytes: u64,
    /// The newest event time among the rows (epoch micros), when the table is partitioned
    /// by time.
    pub newest_event_us: Option<i64>,
}

impl Event for BatchCommitted<'_> {
    fn emit(self) {
        let labels = [("table", self.table.to_string())];
        ::metrics::counter!(ROWS_COMMITTED, &labels).increment(self.rows);
        ::metrics::counter!(DEAD_LETTERS_COMMITTED, &labels).increment(self.dead_letters);
        ::metrics::counter!(FILES_WRITTEN, &labels).increment(self.files as u64);
        ::metrics::counter!(BYTES_WRITTEN, &labels).increment(self.bytes);
        ::metrics::counter!(BATCHES, &labels).increment(1);
        let now = chrono::Utc::now();
        ::metrics::gauge!(LAST_COMMIT, &labels).set(now.timestamp() as f64);
        if let Some(newest) = self.newest_event_us {
            let lag = now.timestamp_micros() - newest;
            ::metrics::gauge!(FRESHNESS, &labels).set(lag as f64 / 1e6);
        }
    }
}

/// Another writer committed a batch's offsets first: the pipeline rewinds at once.
pub(crate) struct BatchFenced<'a> {
    pub table: &'a str,
    pub error: &'a floe_lake::Error,
}

impl Event for BatchFenced<'_> {
    fn emit(self) {
        tracing::warn!(table = %self.table, reason = %self.error, "batch already committed by another writer; rewinding");
        ::metrics::counter!(REWINDS, "table" => self.table.to_string()).increment(1);
    }
}

/// A batch's flush failed: the pipeline rewinds and retries after a pause, or stops the
/// loader, as `next` says.
pub(crate) struct FlushFailed<'a> {
    pub table: &'a str,
    pub error: &'a crate::Error,
    pub class: Retry,
    pub next: &'a crate::retry::Next,
}

impl Event for FlushFailed<'_> {
    fn emit(self) {
        let (table, class) = (self.table, self.class.as_str());
        ::metrics::counter!(FLUSH_FAILURES, "table" => table.to_string(), "class" => class)
            .increment(1);
        ::metrics::counter!(REWINDS, "table" => table.to_string()).increment(1);
        match self.next {
            crate::retry::Next::RetryIn(pause) => {
                tracing::error!(table = %table, error = %self.error, class, retry_in = ?pause, "commit failed; rewinding to the committed offsets and retrying");
            }
            crate::retry::Next::Stop(verdict) => {
                tracing::error!(table = %table, error = %self.error, class, "commit failed; stopping the loader: {verdict}");
            }
        }
    }
}

/// Offsets of a partition are gone from Kafka (retention, compaction, transactions).
pub(crate) struct OffsetsSkipped<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub expected: i64,
    pub got: i64,
}

impl Event for OffsetsSkipped<'_> {
    fn emit(self) {
        let (topic, got) = (self.topic, self.got);
        // Fine for compacted or transactional topics; data loss otherwise.
        tracing::warn!(topic = %topic, partition = self.partition, expected = self.expected, got, "offsets skipped: messages before {got} are gone from Kafka (retention or compaction)");
        ::metrics::counter!(OFFSETS_SKIPPED, "topic" => topic.to_string())
            .increment((got - self.expected) as u64);
    }
}

/// The consumer reported an error (it goes on).
pub(crate) struct ConsumerFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl Event for ConsumerFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "consumer error");
        ::metrics::counter!(CONSUMER_ERRORS).increment(1);
    }
}

/// Metric handles registered once per pipeline. The hot path counts in plain integers;
/// [`Meters::publish`] adds them to the shared counters every few dozen messages.
pub(crate) struct Meters {
    pub pending: Pending,
    received: ::metrics::Counter,
    accepted: ::metrics::Counter,
    skipped: ::metrics::Counter,
    tombstones: ::metrics::Counter,
    bytes: ::metrics::Counter,
    dead: HashMap<&'static str, ::metrics::Counter>,
    table: String,
}

/// Counts not yet added to the shared counters.
#[derive(Default)]
pub(crate) struct Pending {
    pub received: u64,
    pub accepted: u64,
    pub skipped: u64,
    pub tombstones: u64,
    pub bytes: u64,
}

impl Meters {
    pub fn new(table: &str) -> Self {
        let t = table.to_string();
        Self {
            received: ::metrics::counter!(MESSAGES_RECEIVED, "table" => t.clone()),
            accepted: ::metrics::counter!(MESSAGES_ACCEPTED, "table" => t.clone()),
            skipped: ::metrics::counter!(MESSAGES_SKIPPED, "table" => t.clone()),
            tombstones: ::metrics::counter!(TOMBSTONES, "table" => t.clone()),
            bytes: ::metrics::counter!(MESSAGE_BYTES, "table" => t.clone()),
            dead: HashMap::new(),
            table: t,
            pending: Pending::default(),
        }
    }

    /// Adds the counts kept since the last call to the shared counters.
    pub fn publish(&mut self) {
        let p = std::mem::take(&mut self.pending);
        for (counter, n) in [
            (&self.received, p.received),
            (&self.accepted, p.accepted),
            (&self.skipped, p.skipped),
            (&self.tombstones, p.tombstones),
            (&self.bytes, p.bytes),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// A message rejected as `kind`.
    pub fn dead_lettered(&mut self, kind: &'static str) {
        let table = &self.table;
        self.dead
            .entry(kind)
            .or_insert_with(|| ::metrics::counter!(MESSAGES_DEAD_LETTERED, "table" => table.clone(), "kind" => kind))
            .increment(1);
    }
}

/// Reports a table's layout (live data files, partitions, files in the fullest partition)
/// from its current snapshot's manifests. Failures are logged, not raised: it is a metric.
pub(crate) async fn report_layout(
    file_io: &iceberg::io::FileIO,
    metadata: &iceberg::spec::TableMetadata,
    table: &str,
) {
    let files = match floe_lake::scan::live_data_files(file_io, metadata).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(table, error = %e, "reading the table layout for metrics failed");
            return;
        }
    };
    let mut per_partition: std::collections::HashMap<String, u64> = Default::default();
    for f in &files {
        let key = format!("{}:{:?}", f.partition_spec_id, f.data_file.partition());
        *per_partition.entry(key).or_default() += 1;
    }
    let labels = [("table", table.to_string())];
    ::metrics::gauge!(TABLE_DATA_FILES, &labels).set(files.len() as f64);
    ::metrics::gauge!(TABLE_PARTITIONS, &labels).set(per_partition.len() as f64);
    ::metrics::gauge!(TABLE_MAX_FILES_PER_PARTITION, &labels)
        .set(per_partition.values().copied().max().unwrap_or(0) as f64);
}

/// Columns added, dropped, renamed or retyped between two schemas (by field id), for logs.
fn describe_schema_change(old: &Schema, new: &Schema) -> String {
    let names = |s: &Schema| -> BTreeMap<i32, (String, String)> {
        s.field_id_to_name_map()
            .iter()
            .filter_map(|(id, name)| {
                s.field_by_id(*id)
                    .map(|f| (*id, (name.clone(), f.field_type.to_string())))
            })
            .collect()
    };
    let (a, b) = (names(old), names(new));
    let mut parts = Vec::new();
    for (id, (name, ty)) in &b {
        match a.get(id) {
            None => parts.push(format!("+{name} {ty}")),
            Some((old_name, old_ty)) => {
                if old_name != name {
                    parts.push(format!("{old_name}→{name}"));
                }
                if old_ty != ty && !ty.starts_with("struct") {
                    parts.push(format!("{name}: {old_ty}→{ty}"));
                }
            }
        }
    }
    for (id, (name, _)) in &a {
        if !b.contains_key(id) {
            parts.push(format!("-{name}"));
        }
    }
    if parts.is_empty() {
        "decoding settings (aliases / unknown fields)".into()
    } else {
        parts.join(", ")
    }
}

//! Metric names (Prometheus), one place for all of them. Names follow kafka-delta-ingest's
//! where they mean the same thing.

/// Messages received from Kafka (label `table`).
pub const MESSAGES_RECEIVED: &str = "floe_messages_received_total";
/// Messages decoded into rows (label `table`).
pub const MESSAGES_ACCEPTED: &str = "floe_messages_accepted_total";
/// Messages rejected (labels `table`, `kind`).
pub const MESSAGES_DEAD_LETTERED: &str = "floe_messages_dead_lettered_total";
/// Messages skipped because the tables already hold them (label `table`).
pub const MESSAGES_SKIPPED: &str = "floe_messages_skipped_total";
/// Tombstones (null values) skipped (label `table`).
pub const TOMBSTONES: &str = "floe_tombstones_total";
/// Payload bytes received (label `table`).
pub const MESSAGE_BYTES: &str = "floe_message_bytes_total";
/// Rows committed (label `table`).
pub const ROWS_COMMITTED: &str = "floe_rows_committed_total";
/// Dead letters committed (label `table`).
pub const DEAD_LETTERS_COMMITTED: &str = "floe_dead_letters_committed_total";
/// Batches committed (label `table`).
pub const BATCHES: &str = "floe_batches_total";
/// Data files written (label `table`).
pub const FILES_WRITTEN: &str = "floe_data_files_written_total";
/// Data bytes written (label `table`).
pub const BYTES_WRITTEN: &str = "floe_data_bytes_written_total";
pub use floe_lake::metrics::{COMMIT_CONFLICTS, COMMIT_SECONDS};
/// Failed or fenced flushes rewound to the committed offsets (label `table`).
pub const REWINDS: &str = "floe_rewinds_total";
/// Unix time of the last commit (label `table`).
pub const LAST_COMMIT: &str = "floe_last_commit_timestamp_seconds";
/// Consumer lag per partition (labels `topic`, `partition`).
pub const CONSUMER_LAG: &str = "floe_consumer_lag_messages";
/// Offsets found missing from Kafka (retention or compaction) (label `topic`).
pub const OFFSETS_SKIPPED: &str = "floe_kafka_offsets_skipped_total";
/// Consumer errors reported by librdkafka.
pub const CONSUMER_ERRORS: &str = "floe_consumer_errors_total";
/// Gauge: live data files per table (label `table`).
pub const TABLE_DATA_FILES: &str = "floe_table_data_files";
/// Gauge: partitions holding live data files, per table.
pub const TABLE_PARTITIONS: &str = "floe_table_partitions";
/// Gauge: live data files of the table's fullest partition (what compaction brings down).
pub const TABLE_MAX_FILES_PER_PARTITION: &str = "floe_table_max_files_per_partition";
/// Schema changes a running loader picked up (label `table`).
pub const SCHEMA_CHANGES: &str = "floe_schema_changes_total";
/// Gauge: the schema id the loader decodes against (label `table`).
pub const SCHEMA_ID: &str = "floe_table_schema_id";
/// Rows per mapping transform (labels `table`; `transform`: `unnest`, `columns.<column>`,
/// `computed.<column>`, `rules.<name>`; `outcome`: `applied` (a rule: passed) or `rejected`).
pub const TRANSFORM_ROWS: &str = "floe_transform_rows_total";
/// Event-time freshness: seconds between now and the newest event committed (label `table`).
pub const FRESHNESS: &str = "floe_event_time_freshness_seconds";
/// CPU time the aggregate path used, in microseconds (labels `table`: the raw table; `stage`:
/// see [`AggregateStage`]). Beside `process_cpu_seconds_total`, what aggregating costs.
pub const AGGREGATE_CPU: &str = "floe_aggregate_cpu_microseconds_total";
/// Event ids the aggregates' dedup state forgot before their window ended because it held
/// `dedup_max_keys` (label `table`): a later duplicate of one of them is counted again.
pub const DEDUP_EVICTIONS: &str = "floe_dedup_evictions_total";
/// Gauge: event ids the aggregates' dedup state holds (label `table`).
pub const DEDUP_KEYS: &str = "floe_dedup_keys";
/// Failed flushes by what retrying can do (labels `table`; `class`: `transient`, `unknown`,
/// `permanent`).
pub const FLUSH_FAILURES: &str = "floe_flush_failures_total";
/// Connections to the metrics endpoint closed unserved: `metrics.max_connections` were open.
pub const METRICS_CONNECTIONS_REFUSED: &str = "floe_metrics_connections_refused_total";

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use iceberg::spec::{Schema, TableMetadata};

/// Records that a loader of `table` adopts `new` metadata in place of `old` because messages
/// decode differently now: a log line with the schema ids and the columns added, dropped,
/// renamed or promoted, the change counter and the schema-id gauge.
pub fn schema_changed(table: &str, old: &TableMetadata, new: &TableMetadata) {
    let change = describe_schema_change(old.current_schema(), new.current_schema());
    tracing::info!(
        table = %table,
        old = old.current_schema_id(),
        new = new.current_schema_id(),
        change = %change,
        "table schema changed; decoding against the new schema"
    );
    let labels = [("table", table.to_string())];
    metrics::counter!(SCHEMA_CHANGES, &labels).increment(1);
    metrics::gauge!(SCHEMA_ID, &labels).set(new.current_schema_id() as f64);
}

/// Adds the decoder's counts of rows it unwrapped (`unnest`) or projected (`columns.<column>`)
/// to [`TRANSFORM_ROWS`].
pub fn mapping_applied(table: &str, counts: Vec<(floe_schema::Setting, u64)>) {
    for (setting, n) in counts {
        if n > 0 {
            metrics::counter!(TRANSFORM_ROWS, "table" => table.to_string(), "transform" => setting.label(), "outcome" => "applied")
                .increment(n);
        }
    }
}

/// What `/health` looks at: the last commit and whether messages are waiting.
#[derive(Debug)]
pub struct Health {
    last_commit_ms: AtomicI64,
    lag: AtomicI64,
    stale_after: Duration,
}

impl Health {
    /// Unhealthy when no commit happened for `stale_after` while messages wait.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            last_commit_ms: AtomicI64::new(chrono::Utc::now().timestamp_millis()),
            lag: AtomicI64::new(0),
            stale_after,
        }
    }

    /// Records a commit.
    pub fn committed(&self) {
        self.last_commit_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Records the total consumer lag.
    pub fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// `Ok(text)` when healthy, `Err(reason)` otherwise.
    pub fn check(&self) -> Result<String, String> {
        let age_ms =
            chrono::Utc::now().timestamp_millis() - self.last_commit_ms.load(Ordering::Relaxed);
        let lag = self.lag.load(Ordering::Relaxed);
        let age = Duration::from_millis(age_ms.max(0) as u64);
        if lag > 0 && age > self.stale_after {
            Err(format!(
                "unhealthy: no commit for {}s while {lag} messages wait",
                age.as_secs()
            ))
        } else {
            Ok(format!("ok: last commit {}s ago, lag {lag}", age.as_secs()))
        }
    }
}

/// Reports a table's layout (live data files, partitions, files in the fullest partition)
/// from its current snapshot's manifests. Failures are logged, not raised: it is a metric.
pub async fn report_layout(
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
    metrics::gauge!(TABLE_DATA_FILES, &labels).set(files.len() as f64);
    metrics::gauge!(TABLE_PARTITIONS, &labels).set(per_partition.len() as f64);
    metrics::gauge!(TABLE_MAX_FILES_PER_PARTITION, &labels)
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

/// Where the aggregate path spends CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateStage {
    /// Judging each row's event id and copying the rows the aggregates read, without the
    /// duplicates (on the writer task).
    Dedup,
    /// The aggregate queries (DataFusion) on each chunk, and merges of their partials.
    Query,
    /// Encoding the partials to Parquet and committing them.
    Write,
}

impl AggregateStage {
    /// Every stage, in the order of [`aggregate_cpu`].
    pub const ALL: [AggregateStage; 3] = [Self::Dedup, Self::Query, Self::Write];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dedup => "dedup",
            Self::Query => "query",
            Self::Write => "write",
        }
    }
}

/// CPU time of the aggregate path in this process, per stage (nanoseconds).
static AGGREGATE_CPU_NS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// CPU time the aggregate path used in this process so far, per stage (in the order of
/// [`AggregateStage::ALL`]): `floe bench` reports it per event.
pub fn aggregate_cpu() -> [Duration; 3] {
    AGGREGATE_CPU_NS
        .each_ref()
        .map(|n| Duration::from_nanos(n.load(Ordering::Relaxed)))
}

/// The calling thread's CPU time so far (zero where the platform has no thread clock).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Counts CPU time against one stage of a pipeline's aggregate path: the
/// [`AGGREGATE_CPU`] counter and the process total of [`aggregate_cpu`].
#[derive(Clone)]
pub struct CpuMeter {
    stage: AggregateStage,
    counter: metrics::Counter,
    /// Nanoseconds counted by this meter (the counter gets whole microseconds of it).
    ns: Arc<AtomicU64>,
}

impl CpuMeter {
    /// A meter of `stage` for the pipeline loading `table`.
    pub fn new(table: &str, stage: AggregateStage) -> Self {
        Self {
            stage,
            counter: metrics::counter!(AGGREGATE_CPU, "table" => table.to_string(), "stage" => stage.label()),
            ns: Arc::default(),
        }
    }

    /// Adds `cpu`.
    pub fn add(&self, cpu: Duration) {
        let ns = cpu.as_nanos().min(u64::MAX as u128) as u64;
        if ns == 0 {
            return;
        }
        AGGREGATE_CPU_NS[self.stage as usize].fetch_add(ns, Ordering::Relaxed);
        let before = self.ns.fetch_add(ns, Ordering::Relaxed);
        let micros = (before + ns) / 1000 - before / 1000;
        if micros > 0 {
            self.counter.increment(micros);
        }
    }

    /// Adds the calling thread's CPU time since `start` (a [`thread_cpu`] reading).
    pub fn since(&self, start: Duration) {
        self.add(thread_cpu().saturating_sub(start));
    }

    /// Runs `f`, adding the thread CPU time of each of its polls (a poll runs on one thread;
    /// the time between polls, spent on other tasks, is not counted).
    pub async fn time<F: std::future::Future>(&self, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            let start = thread_cpu();
            let out = f.as_mut().poll(cx);
            self.since(start);
            out
        })
        .await
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    /// Busy work the optimizer cannot drop.
    fn spin(until: Duration) -> u64 {
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < until {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        x
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_meter_counts_the_cpu_of_polls_not_the_waits_between_them() {
        let meter = CpuMeter::new("t", AggregateStage::Write);
        let before = aggregate_cpu()[AggregateStage::Write as usize];
        meter
            .time(async {
                spin(Duration::from_millis(30));
                // Waiting (no CPU) between two polls is not counted.
                tokio::time::sleep(Duration::from_millis(200)).await;
                spin(Duration::from_millis(30));
            })
            .await;
        let counted = meter.ns.load(Ordering::Relaxed);
        assert!(
            (60_000_000..150_000_000).contains(&counted),
            "counted {counted} ns for 60 ms of work and 200 ms of sleep"
        );
        let process = aggregate_cpu()[AggregateStage::Write as usize] - before;
        assert!(process >= Duration::from_nanos(counted));
    }
}

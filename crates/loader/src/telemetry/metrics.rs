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

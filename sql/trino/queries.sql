-- Example queries for Trino on floe's lake: catalog `lake` (trino/etc/catalog/lake.properties),
-- schema `lake`. Run one with `scripts/stack trino "<SQL>"` or in the Trino CLI.

-- Events per hour and country over the last day (raw table; partition pruning on event_ts).
SELECT date_trunc('hour', event_ts) AS hour, country, count(*) AS events, round(sum(value), 2) AS value
FROM lake.lake.events
WHERE event_ts >= current_timestamp - INTERVAL '1' DAY
GROUP BY 1, 2
ORDER BY 1 DESC, 3 DESC;

-- Distinct events per hour (duplicates sent by retrying producers counted once).
SELECT date_trunc('hour', event_ts) AS hour, count(*) AS rows, count(DISTINCT event_guid) AS events
FROM lake.lake.events
WHERE event_ts >= current_timestamp - INTERVAL '1' DAY
GROUP BY 1
ORDER BY 1 DESC;

-- Dead letters by reason over the last day, with an example of each.
SELECT error_kind, count(*) AS messages, min(error_message) AS example, max(failed_at) AS last_seen
FROM lake.lake.events_dead_letters
WHERE failed_at >= current_timestamp - INTERVAL '1' DAY
GROUP BY error_kind
ORDER BY messages DESC;

-- The raw message of a dead letter, to see what to fix.
SELECT source_topic, source_partition, source_offset, error_kind, error_field, error_message,
       from_utf8(payload) AS payload
FROM lake.lake.events_dead_letters
ORDER BY failed_at DESC
LIMIT 20;

-- Hourly aggregates per dimension (exact totals through the view of sql/trino/aggregates.sql).
SELECT window_start, dimension_value AS country, event_count, value_avg
FROM lake.lake.events_hourly_by_dimension_totals
WHERE dimension = 'country' AND window_start >= current_timestamp - INTERVAL '1' DAY
ORDER BY window_start DESC, event_count DESC;

-- What floe committed: snapshots with their Kafka offsets and operation.
SELECT committed_at, snapshot_id, operation,
       summary['floe.operation'] AS floe_operation,
       summary['added-records'] AS added_records
FROM lake.lake."events$snapshots"
ORDER BY committed_at DESC
LIMIT 20;

-- Files per partition (what compaction, `floe maintain --compact`, brings down).
SELECT partition, file_count, record_count, total_size
FROM lake.lake."events$partitions"
ORDER BY file_count DESC
LIMIT 20;

-- Exact totals over floe's aggregate tables. Each flush commits additive partial rows, so a
-- key may have several rows (one per flush that saw it, fewer after compaction); these views
-- fold them. Catalog `lake` (trino/etc/catalog/lake.properties), schema `lake`.
-- The same SELECTs run in DataFusion with `floe query` (drop the `lake.lake.` prefix).

CREATE OR REPLACE VIEW lake.lake.events_hourly_by_dimension_totals AS
SELECT window_start,
       dimension,
       dimension_value,
       sum(event_count)          AS event_count,
       sum(returning_count)      AS returning_count,
       sum(value_sum)            AS value_sum,
       sum(value_sum) / sum(event_count) AS value_avg,
       min(value_min)            AS value_min,
       max(value_max)            AS value_max,
       sum(session_duration_sum) AS session_duration_sum,
       min(first_event_ts)       AS first_event_ts,
       max(last_event_ts)        AS last_event_ts
FROM lake.lake.events_hourly_by_dimension
GROUP BY window_start, dimension, dimension_value;

CREATE OR REPLACE VIEW lake.lake.events_hourly_multi_totals AS
SELECT window_start, country, device_type, action, page, category,
       sum(event_count) AS event_count,
       sum(value_sum)   AS value_sum
FROM lake.lake.events_hourly_multi
GROUP BY window_start, country, device_type, action, page, category;

-- Dashboards: events per hour and country over the last day.
SELECT window_start, dimension_value AS country, event_count, value_avg
FROM lake.lake.events_hourly_by_dimension_totals
WHERE dimension = 'country' AND window_start >= current_timestamp - INTERVAL '1' DAY
ORDER BY window_start DESC, event_count DESC;

-- Dead letters by reason (the loader's dead-letter table).
SELECT error_kind, count(*) AS messages, max(failed_at) AS last_seen
FROM lake.lake.events_dead_letters
GROUP BY error_kind
ORDER BY messages DESC;

-- Hourly totals per dimension value: one row per hour × dimension × value.
-- source: lake.events
-- target: lake.events_hourly_by_dimension
-- key: window_start, dimension, dimension_value
-- merge: event_count=sum, returning_count=sum, value_sum=sum, value_min=min, value_max=max, session_duration_sum=sum, first_event_ts=min, last_event_ts=max
--
-- Runs on `batch`: the events of one flush, decoded and deduplicated by event_guid. Each run
-- yields partial rows; every column is additive under its merge function, so readers (and
-- compaction) get exact totals with SUM/MIN/MAX … GROUP BY the key.
--
-- One aggregation per dimension, grouped by (hour, value) only: the dimension's name is a
-- constant added to the few output rows, not a key hashed for every event.
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       'country' AS dimension,
       country AS dimension_value,
       count(*) AS event_count,
       sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_count,
       sum(value) AS value_sum,
       min(value) AS value_min,
       max(value) AS value_max,
       sum(session_duration) AS session_duration_sum,
       min(event_ts) AS first_event_ts,
       max(event_ts) AS last_event_ts
FROM batch
GROUP BY 1, country
UNION ALL
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       'device_type' AS dimension,
       device_type AS dimension_value,
       count(*) AS event_count,
       sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_count,
       sum(value) AS value_sum,
       min(value) AS value_min,
       max(value) AS value_max,
       sum(session_duration) AS session_duration_sum,
       min(event_ts) AS first_event_ts,
       max(event_ts) AS last_event_ts
FROM batch
GROUP BY 1, device_type
UNION ALL
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       'action' AS dimension,
       action AS dimension_value,
       count(*) AS event_count,
       sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_count,
       sum(value) AS value_sum,
       min(value) AS value_min,
       max(value) AS value_max,
       sum(session_duration) AS session_duration_sum,
       min(event_ts) AS first_event_ts,
       max(event_ts) AS last_event_ts
FROM batch
GROUP BY 1, action
UNION ALL
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       'page' AS dimension,
       page AS dimension_value,
       count(*) AS event_count,
       sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_count,
       sum(value) AS value_sum,
       min(value) AS value_min,
       max(value) AS value_max,
       sum(session_duration) AS session_duration_sum,
       min(event_ts) AS first_event_ts,
       max(event_ts) AS last_event_ts
FROM batch
GROUP BY 1, page
UNION ALL
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       'category' AS dimension,
       category AS dimension_value,
       count(*) AS event_count,
       sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_count,
       sum(value) AS value_sum,
       min(value) AS value_min,
       max(value) AS value_max,
       sum(session_duration) AS session_duration_sum,
       min(event_ts) AS first_event_ts,
       max(event_ts) AS last_event_ts
FROM batch
GROUP BY 1, category

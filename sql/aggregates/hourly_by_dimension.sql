-- Hourly totals per dimension value: one row per hour × dimension × value.
-- source: lake.events
-- target: lake.events_hourly_by_dimension
-- key: window_start, dimension, dimension_value
-- merge: event_count=sum, returning_count=sum, value_sum=sum, value_min=min, value_max=max, session_duration_sum=sum, first_event_ts=min, last_event_ts=max
--
-- Runs on `batch`: the events of one flush, decoded and deduplicated by event_guid. Each run
-- yields partial rows; every column is additive under its merge function, so readers (and
-- compaction) get exact totals with SUM/MIN/MAX … GROUP BY the key.
WITH dims AS (
    SELECT event_ts, is_returning, value, session_duration,
           'country' AS dimension, country AS dimension_value FROM batch
    UNION ALL
    SELECT event_ts, is_returning, value, session_duration,
           'device_type', device_type FROM batch
    UNION ALL
    SELECT event_ts, is_returning, value, session_duration,
           'action', action FROM batch
    UNION ALL
    SELECT event_ts, is_returning, value, session_duration,
           'page', page FROM batch
    UNION ALL
    SELECT event_ts, is_returning, value, session_duration,
           'category', category FROM batch
)
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       dimension,
       dimension_value,
       count(*) AS event_count,
       sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_count,
       sum(value) AS value_sum,
       min(value) AS value_min,
       max(value) AS value_max,
       sum(session_duration) AS session_duration_sum,
       min(event_ts) AS first_event_ts,
       max(event_ts) AS last_event_ts
FROM dims
GROUP BY 1, 2, 3

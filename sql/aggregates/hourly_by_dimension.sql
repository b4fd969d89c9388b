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
-- The events are aggregated three times, not five: by hour × (country, device_type), by
-- hour × (action, page) and by hour × category; each dimension's rows are then rolled up
-- from the few rows of its pair (sum of sums, min of mins…, exact like the merge). floe
-- computes a common table expression read twice once per run; the dimension's name is a
-- constant added to the output rows, not a key hashed for every event.
WITH by_country_device AS (
  SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start, country, device_type,
         count(*) AS n,
         sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_n,
         sum(value) AS value_sum, min(value) AS value_min, max(value) AS value_max,
         sum(session_duration) AS duration_sum,
         min(event_ts) AS first_ts, max(event_ts) AS last_ts
  FROM batch
  GROUP BY 1, country, device_type
),
by_action_page AS (
  SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start, action, page,
         count(*) AS n,
         sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_n,
         sum(value) AS value_sum, min(value) AS value_min, max(value) AS value_max,
         sum(session_duration) AS duration_sum,
         min(event_ts) AS first_ts, max(event_ts) AS last_ts
  FROM batch
  GROUP BY 1, action, page
),
by_category AS (
  SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start, category,
         count(*) AS n,
         sum(CASE WHEN is_returning THEN 1 ELSE 0 END) AS returning_n,
         sum(value) AS value_sum, min(value) AS value_min, max(value) AS value_max,
         sum(session_duration) AS duration_sum,
         min(event_ts) AS first_ts, max(event_ts) AS last_ts
  FROM batch
  GROUP BY 1, category
)
SELECT window_start, 'country' AS dimension, country AS dimension_value,
       sum(n) AS event_count, sum(returning_n) AS returning_count,
       sum(value_sum) AS value_sum, min(value_min) AS value_min, max(value_max) AS value_max,
       sum(duration_sum) AS session_duration_sum,
       min(first_ts) AS first_event_ts, max(last_ts) AS last_event_ts
FROM by_country_device
GROUP BY window_start, country
UNION ALL
SELECT window_start, 'device_type' AS dimension, device_type AS dimension_value,
       sum(n) AS event_count, sum(returning_n) AS returning_count,
       sum(value_sum) AS value_sum, min(value_min) AS value_min, max(value_max) AS value_max,
       sum(duration_sum) AS session_duration_sum,
       min(first_ts) AS first_event_ts, max(last_ts) AS last_event_ts
FROM by_country_device
GROUP BY window_start, device_type
UNION ALL
SELECT window_start, 'action' AS dimension, action AS dimension_value,
       sum(n) AS event_count, sum(returning_n) AS returning_count,
       sum(value_sum) AS value_sum, min(value_min) AS value_min, max(value_max) AS value_max,
       sum(duration_sum) AS session_duration_sum,
       min(first_ts) AS first_event_ts, max(last_ts) AS last_event_ts
FROM by_action_page
GROUP BY window_start, action
UNION ALL
SELECT window_start, 'page' AS dimension, page AS dimension_value,
       sum(n) AS event_count, sum(returning_n) AS returning_count,
       sum(value_sum) AS value_sum, min(value_min) AS value_min, max(value_max) AS value_max,
       sum(duration_sum) AS session_duration_sum,
       min(first_ts) AS first_event_ts, max(last_ts) AS last_event_ts
FROM by_action_page
GROUP BY window_start, page
UNION ALL
SELECT window_start, 'category' AS dimension, category AS dimension_value,
       sum(n) AS event_count, sum(returning_n) AS returning_count,
       sum(value_sum) AS value_sum, min(value_min) AS value_min, max(value_max) AS value_max,
       sum(duration_sum) AS session_duration_sum,
       min(first_ts) AS first_event_ts, max(last_ts) AS last_event_ts
FROM by_category
GROUP BY window_start, category

-- Hourly totals per combination of dimensions: one row per hour × combination.
-- source: lake.events
-- target: lake.events_hourly_multi
-- key: window_start, country, device_type, action, page, category
-- merge: event_count=sum, value_sum=sum
--
-- Runs on `batch`: the events of one flush, decoded and deduplicated by event_guid.
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       country,
       device_type,
       action,
       page,
       category,
       count(*) AS event_count,
       sum(value) AS value_sum
FROM batch
GROUP BY 1, 2, 3, 4, 5, 6

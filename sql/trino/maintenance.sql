-- Trino's own maintenance statements for floe's tables, for users who prefer them to
-- `floe maintain`. Catalog `lake` is the Iceberg catalog of trino/etc/catalog/lake.properties;
-- schema `lake` is floe's namespace. Both tools commit with compare-and-swap on the same
-- catalog row, so they can run while `floe run` keeps loading; a loser retries.
--
-- floe keeps Kafka offsets in snapshot summaries (`floe.offsets.<group>`). Trino's snapshots do
-- not carry them; floe finds them by walking the snapshot ancestry, so keep `retain_last`
-- (Trino: the newest snapshots younger than `retention_threshold`) generous enough that the
-- newest floe snapshot survives, or run `floe maintain --expire-snapshots`, which always keeps it.

-- Compaction (floe maintain --compact): rewrite files smaller than the threshold.
ALTER TABLE lake.lake.events EXECUTE optimize(file_size_threshold => '96MB');

-- Compaction of recent partitions only (cheaper on big tables).
ALTER TABLE lake.lake.events EXECUTE optimize
WHERE event_ts >= current_timestamp - INTERVAL '2' DAY;

-- Snapshot expiry (floe maintain --expire-snapshots --older-than 7d).
-- Trino refuses thresholds below iceberg.expire-snapshots.min-retention (default 7d).
ALTER TABLE lake.lake.events EXECUTE expire_snapshots(retention_threshold => '7d');

-- Orphan files (floe maintain --remove-orphans --orphan-age 3d).
-- Trino refuses thresholds below iceberg.remove-orphan-files.min-retention (default 7d).
ALTER TABLE lake.lake.events EXECUTE remove_orphan_files(retention_threshold => '7d');

-- Retention (floe maintain --retention 30d): rows older than 30 days. On an hour-partitioned
-- table Trino drops whole partitions by metadata and rewrites the straddling ones.
DELETE FROM lake.lake.events
WHERE event_ts < current_timestamp - INTERVAL '30' DAY;

DELETE FROM lake.lake.events_dead_letters
WHERE failed_at < current_timestamp - INTERVAL '30' DAY;

-- What maintenance changed: snapshots by operation, files per partition.
SELECT committed_at, operation, summary['floe.operation'] AS floe_operation,
       summary['added-data-files'] AS added, summary['deleted-data-files'] AS deleted
FROM lake.lake."events$snapshots"
ORDER BY committed_at DESC
LIMIT 20;

SELECT partition, count(*) AS files, sum(file_size_in_bytes) AS bytes
FROM lake.lake."events$files"
GROUP BY partition
ORDER BY files DESC
LIMIT 20;

-- A table's retention for `floe maintain` with no --retention flag.
ALTER TABLE lake.lake.events SET PROPERTIES extra_properties = MAP(ARRAY['floe.retention'], ARRAY['30d']);

"""Aggregates beside the raw table: each aggregate table's totals equal a brute-force
recomputation from the raw table deduplicated by event_guid, computed independently with DuckDB
— after a clean run, after compaction, after SIGKILLs and restarts, and with two loaders."""

import math
import signal
import time
from datetime import timezone

import pytest

from test_kafka_loader import generated, kill_at_random_moments, produce, run_args, split

# The raw table deduplicated by event_guid: the first copy in Kafka order.
DEDUP = ("SELECT * FROM t QUALIFY row_number() OVER "
         "(PARTITION BY event_guid ORDER BY _kafka_partition, _kafka_offset) = 1")

BRUTE = {
    "lake.events_hourly_by_dimension": (
        ["window_start", "dimension", "dimension_value"],
        """WITH d AS ({dedup}), dims AS (
             SELECT event_ts, is_returning, value, session_duration, 'country' AS dimension, country AS dimension_value FROM d
             UNION ALL SELECT event_ts, is_returning, value, session_duration, 'device_type', device_type FROM d
             UNION ALL SELECT event_ts, is_returning, value, session_duration, 'action', action FROM d
             UNION ALL SELECT event_ts, is_returning, value, session_duration, 'page', page FROM d
             UNION ALL SELECT event_ts, is_returning, value, session_duration, 'category', category FROM d)
           SELECT time_bucket(INTERVAL 1 HOUR, event_ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS window_start,
                  dimension, dimension_value, count(*) AS event_count,
                  count(*) FILTER (WHERE is_returning) AS returning_count,
                  sum(value) AS value_sum, min(value) AS value_min, max(value) AS value_max,
                  sum(session_duration) AS session_duration_sum,
                  min(event_ts) AS first_event_ts, max(event_ts) AS last_event_ts
           FROM dims GROUP BY ALL""",
        """SELECT window_start, dimension, dimension_value, sum(event_count) AS event_count,
                  sum(returning_count) AS returning_count, sum(value_sum) AS value_sum,
                  min(value_min) AS value_min, max(value_max) AS value_max,
                  sum(session_duration_sum) AS session_duration_sum,
                  min(first_event_ts) AS first_event_ts, max(last_event_ts) AS last_event_ts
           FROM t GROUP BY ALL""",
    ),
    "lake.events_hourly_multi": (
        ["window_start", "country", "device_type", "action", "page", "category"],
        """WITH d AS ({dedup})
           SELECT time_bucket(INTERVAL 1 HOUR, event_ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS window_start,
                  country, device_type, action, page, category,
                  count(*) AS event_count, sum(value) AS value_sum
           FROM d GROUP BY ALL""",
        """SELECT window_start, country, device_type, action, page, category,
                  sum(event_count) AS event_count, sum(value_sum) AS value_sum
           FROM t GROUP BY ALL""",
    ),
}


def by_key(table, keys):
    out = {}
    for row in table.to_pylist():
        k = tuple(row[c] for c in keys)
        assert k not in out, f"key {k} twice"
        out[k] = row
    return out


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def assert_aggregates_exact(lake):
    """Every aggregate table's totals equal the DuckDB recomputation, for every key."""
    for table, (keys, brute, totals) in BRUTE.items():
        want = by_key(lake.read_duckdb("lake.events", brute.format(dedup=DEDUP)), keys)
        got = by_key(lake.read_duckdb(table, totals), keys)
        assert got.keys() == want.keys(), \
            f"{table}: {len(got.keys() - want.keys())} extra keys, {len(want.keys() - got.keys())} missing"
        for k, w in want.items():
            for c, v in w.items():
                assert close(got[k][c], v), f"{table} {k} {c}: {got[k][c]} != {v}"


def prepared_with_duplicates(lake, brokers, tmp_path, n, seed):
    payloads = generated(lake, tmp_path, n, seed=seed, malformed=0.01, duplicates=0.05)
    lake.run("table", "create", "--all")
    produce(lake, brokers, n, seed=seed, malformed=0.01, duplicates=0.05)
    return payloads


def column_chunks(lake, table):
    """(column, codec, has min/max statistics) of every column chunk of the table's live data
    files."""
    import pyarrow.parquet as pq
    files = [t.file.file_path for t in lake.pyiceberg_table(table).scan().plan_files()]
    out = set()
    for f in files:
        meta = pq.ParquetFile(f.removeprefix("file://")).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                stats = col.statistics
                out.add((col.path_in_schema, col.compression, stats is not None and stats.has_min_max))
    return out


def codecs(lake, table):
    """The compression codecs of the table's live data files' columns."""
    return {codec for _, codec, _ in column_chunks(lake, table)}


def with_bounds(lake, table):
    """The columns whose chunks all carry min/max statistics."""
    chunks = column_chunks(lake, table)
    return {c for c, _, _ in chunks} - {c for c, _, has in chunks if not has}


def raw_rows(lake):
    return lake.read_pyiceberg("lake.events").num_rows


def test_aggregates_equal_a_brute_force_recomputation_also_after_compaction(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared_with_duplicates(lake, dev_broker, tmp_path, 20_000, seed=81)
    lake.run(*run_args(dev_broker, "--max-rows", "3000", "--flush-interval", "500ms", "--until-drained"),
             timeout=180)
    good, _ = split(payloads)
    assert raw_rows(lake) == len(good), "the raw table keeps every copy"
    distinct = len({g["event_guid"] for g in good})
    assert distinct < len(good), "the stream has duplicates"
    assert_aggregates_exact(lake)
    partials = lake.read_pyiceberg("lake.events_hourly_multi").num_rows
    # Loaders write partials uncompressed (cheap on the hot path); compaction rewrites them
    # with the table's codec (zstd).
    assert codecs(lake, "lake.events_hourly_multi") == {"UNCOMPRESSED"}
    # ... and without bounds on their string columns (comparing every value costs); the
    # numbers and times keep theirs (retention and the dedup rebuild read the time bounds).
    assert with_bounds(lake, "lake.events_hourly_multi") == {"window_start", "event_count", "value_sum"}
    lake.run("maintain", "--table", "lake.events_hourly_by_dimension", "--table",
             "lake.events_hourly_multi", "--compact")
    assert_aggregates_exact(lake)
    assert codecs(lake, "lake.events_hourly_multi") == {"ZSTD"}
    assert {"window_start", "country", "category"} <= with_bounds(lake, "lake.events_hourly_multi")
    # Compaction folded the partials: one row per key now.
    for table, (keys, _, _) in BRUTE.items():
        rows = lake.read_duckdb(table, f"SELECT count(*) AS n, count(DISTINCT ({', '.join(keys)})) AS k FROM t")
        n, k = rows.column("n")[0].as_py(), rows.column("k")[0].as_py()
        assert n == k, f"{table}: {n} rows for {k} keys after compaction"
    assert lake.read_pyiceberg("lake.events_hourly_multi").num_rows < partials


@pytest.mark.parametrize("failpoint", ["after-table-commit@2", "after-aggregate-commit@3",
                                       "before-kafka-commit@2"])
def test_a_crash_between_the_tables_commits_counts_nothing_twice(catalog_lake, dev_broker, tmp_path, failpoint):
    """Killed after the raw table's commit (aggregates behind it), between the two aggregate
    tables' commits, or before the Kafka commit: the restart brings every table level, once."""
    lake = catalog_lake
    payloads = prepared_with_duplicates(lake, dev_broker, tmp_path, 12_000, seed=87)
    args = run_args(dev_broker, "--max-rows", "1500", "--flush-interval", "500ms", "--until-drained")
    crashed = lake.popen(*args, env={"FLOE_FAILPOINTS": failpoint})
    _, err = crashed.communicate(timeout=120)
    assert crashed.returncode != 0 and f"failpoint {failpoint.split('@')[0]}" in err, err
    lake.run(*args, timeout=120)
    good, _ = split(payloads)
    assert raw_rows(lake) == len(good)
    assert_aggregates_exact(lake)


def test_aggregates_stay_exact_across_sigkills_and_restarts(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared_with_duplicates(lake, dev_broker, tmp_path, 30_000, seed=83)
    args = run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "200ms")
    kill_at_random_moments(lake, args, times=3, low=2.0, high=4.0, seed=5)
    lake.run(*args, "--until-drained", timeout=180)
    good, _ = split(payloads)
    assert raw_rows(lake) == len(good)
    assert_aggregates_exact(lake)


def test_two_loaders_in_one_group_aggregate_exactly(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared_with_duplicates(lake, dev_broker, tmp_path, 30_000, seed=85)
    args = run_args(dev_broker, "--max-rows", "2000", "--flush-interval", "300ms")
    procs = [lake.popen(*args) for _ in range(2)]
    good, _ = split(payloads)
    deadline = time.time() + 150
    while time.time() < deadline:
        snap = lake.pyiceberg_table("lake.events").current_snapshot()
        if snap and int(snap.summary.get("total-records", 0)) >= len(good):
            break
        time.sleep(1)
    time.sleep(3)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert raw_rows(lake) == len(good)
    assert_aggregates_exact(lake)


def test_aggregates_can_be_chosen_or_turned_off(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    prepared_with_duplicates(lake, dev_broker, tmp_path, 2_000, seed=89)
    bad = lake.run(*run_args(dev_broker, "--until-drained", "--aggregates", "nope"), check=False, timeout=60)
    assert bad.returncode != 0 and "no definition named nope" in bad.stderr, bad.stderr
    lake.run(*run_args(dev_broker, "--until-drained", "--aggregates", "hourly_multi"), timeout=120)
    assert lake.pyiceberg_table("lake.events_hourly_by_dimension").current_snapshot() is None
    assert lake.pyiceberg_table("lake.events_hourly_multi").current_snapshot() is not None


def test_events_beyond_2262_are_aggregated_in_their_hour(catalog_lake, dev_broker, tmp_path):
    """Event times a nanosecond timestamp cannot hold (after 2262-04-11, before 1677-09-21)
    are valid `timestamptz` values: they load, and each aggregate puts them in their hour
    (DataFusion's own date_bin failed the query on them, which held the loader back)."""
    import json

    from confluent_kafka import Producer
    from oracle import expected_row
    lake = catalog_lake
    payloads = prepared_with_duplicates(lake, dev_broker, tmp_path, 3_000, seed=95)
    template = json.loads(next(p for p in payloads if expected_row(p)))
    far = []
    for i, ms in enumerate([29_348_044_200_000, -11_676_096_000_000, 253_402_300_799_000]):
        far.append(json.dumps(dict(template, eventGuid=f"far-{i}", timestamp=ms)).encode())
    prod = Producer({"bootstrap.servers": dev_broker})
    for pl in far:
        prod.produce("events", value=pl, key=json.loads(pl)["eventGuid"])
    assert prod.flush(30) == 0
    lake.run(*run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "500ms", "--until-drained"),
             timeout=180)
    good, _ = split(payloads + far)
    assert raw_rows(lake) == len(good)
    assert_aggregates_exact(lake)
    hours = lake.read_duckdb(
        "lake.events_hourly_multi",
        "SELECT DISTINCT window_start FROM t WHERE window_start < TIMESTAMPTZ '1700-01-01 00:00:00+00' "
        "OR window_start > TIMESTAMPTZ '2262-12-31 00:00:00+00' ORDER BY 1").column(0).to_pylist()
    assert [h.astimezone(timezone.utc).isoformat() for h in hours] == [
        "1600-01-01T00:00:00+00:00", "2900-01-01T10:00:00+00:00", "9999-12-31T23:00:00+00:00"]

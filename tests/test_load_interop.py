"""`floe load` of seed events with malformed lines, read back by PyIceberg and DuckDB."""

import re
from collections import Counter
from datetime import timezone

import pyarrow as pa
import pytest

from events import mixed_file

COLUMNS = ["event_guid", "event_ts", "country", "is_returning", "user_id", "action",
           "device_type", "page", "category", "value", "session_duration"]


def rows_by_guid(table: pa.Table):
    return {r["event_guid"]: r for r in table.select(COLUMNS).to_pylist()}


def assert_rows(table: pa.Table, good: dict):
    """Every expected row, identical, and nothing else (timestamps compared in UTC: DuckDB
    returns tz-aware datetimes in the session zone)."""
    assert table.num_rows == len(good)
    got = rows_by_guid(table)
    assert got.keys() == good.keys()
    for guid, exp in good.items():
        row = dict(got[guid])
        row["event_ts"] = row["event_ts"].astimezone(timezone.utc)
        assert row == exp, guid


def test_load_reads_back_identically_in_pyiceberg_and_duckdb(lake, tmp_path):
    good, bad, lines = mixed_file(tmp_path / "events.jsonl", n_good=6000, bad_every=50, seed=7)
    lake.run("table", "create", "--all")
    out = lake.run("load", "--table", "lake.events", "--input", tmp_path / "events.jsonl",
                   "--max-rows", "1500").stdout
    m = re.search(r"(\d+) lines, (\d+) accepted, (\d+) dead-lettered", out)
    assert m, out
    assert (int(m[1]), int(m[2]), int(m[3])) == (lines, len(good), len(bad))
    assert len(good) + len(bad) == lines

    # PyIceberg: exact rows, values and types.
    t = lake.read_pyiceberg("lake.events")
    assert_rows(t, good)
    assert t.schema.field("event_ts").type == pa.timestamp("us", tz="UTC") or \
        t.schema.field("event_ts").type == pa.timestamp("us", tz="+00:00")
    assert t.schema.field("value").type == pa.float64()
    assert t.schema.field("session_duration").type == pa.int32()
    assert t.schema.field("is_returning").type == pa.bool_()
    # Ingestion columns are filled for file loads: partition/offset NULL, _ingested_at set.
    assert t.column("_ingested_at").null_count == 0

    # DuckDB iceberg_scan over the same metadata.
    d = lake.read_duckdb("lake.events")
    assert d.schema.field("event_ts").type.unit == "us"
    assert_rows(d, good)

    # Dead letters: exactly the rejected lines, each with its reason.
    dl = lake.read_pyiceberg("lake.events_dead_letters").to_pylist()
    assert sorted(r["payload"] for r in dl) == sorted(p for p, _ in bad)
    by_payload = {r["payload"]: r for r in dl}
    for payload, kind in bad:
        r = by_payload[payload]
        assert r["error_kind"] == kind, (payload, r["error_message"])
        assert r["error_message"]
        assert r["target_table"] == "lake.events"
        assert r["source_topic"].startswith("file:")
        assert r["source_offset"] > 0
    wrong = [r for r in dl if r["error_kind"] == "wrong_type" and r["error_field"] == "value"]
    assert wrong and all(r["error_message"] == 'field "value": expected double, found string "abc"'
                         for r in wrong)
    assert Counter(r["error_kind"] for r in dl) == Counter(k for _, k in bad)
    d_dl = lake.read_duckdb("lake.events_dead_letters", "SELECT count(*) AS n FROM t")
    assert d_dl.column("n")[0].as_py() == len(bad)


def test_floe_query_agrees_with_the_readers(catalog_lake, tmp_path):
    good, bad, _ = mixed_file(tmp_path / "e.jsonl", n_good=2000, bad_every=40, seed=3)
    catalog_lake.run("table", "create", "--all")
    catalog_lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl")
    out = catalog_lake.run("query", "SELECT count(*) AS n, count(DISTINCT event_guid) AS g "
                          "FROM lake.events", "--format", "csv").stdout.splitlines()
    assert out == ["n,g", f"{len(good)},{len(good)}"]
    out = catalog_lake.run("query", "SELECT count(*) AS n FROM events_dead_letters",
                          "--format", "json").stdout.strip()
    assert out == f'{{"n":{len(bad)}}}'


def test_a_rejected_line_without_dead_letters_stops_the_load(catalog_lake, tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_bytes(b'{"eventGuid":"a","timestamp":1}\n{"eventGuid":"b","timestamp":"nope"}\n')
    catalog_lake.run("table", "create", "--all")
    p = catalog_lake.run("load", "--table", "lake.events", "--input", f, "--no-dead-letters",
                        check=False)
    assert p.returncode != 0
    assert "line 2" in p.stderr and 'field "event_ts"' in p.stderr, p.stderr
    assert catalog_lake.read_pyiceberg("lake.events").num_rows == 0


def test_data_files_are_zstd_parquet_with_field_ids(catalog_lake, tmp_path):
    import pyarrow.parquet as pq
    mixed_file(tmp_path / "e.jsonl", n_good=500, bad_every=10**9, seed=5)
    catalog_lake.run("table", "create", "--all")
    catalog_lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl")
    files = catalog_lake.data_files_on_disk("lake.events")
    assert files
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(rg).column(c).compression == "ZSTD"
        schema = pq.read_schema(f)
        assert schema.field("event_guid").metadata[b"PARQUET:field_id"] == b"1"
        assert schema.field("event_ts").type.unit == "us"

"""Apache Iceberg's Java library (Spark 3.5 + Iceberg 1.10, what Trino and Spark run, and the
strictest reader) reads floe's tables row for row as PyIceberg does, and commits to them as a
co-writer that PyIceberg and floe then build on."""

import random
from datetime import datetime, timezone

from events import expected_row, mixed_file, seed_event


def canonical(row):
    """A row with the type of every value kept (1 and 1.0 differ) and timestamps as UTC
    instants (PyIceberg's tzinfo is ZoneInfo("UTC"), Java's datetime.timezone.utc)."""
    out = []
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.astimezone(timezone.utc).isoformat() if v.tzinfo else ("naive", v.isoformat())
        out.append((k, type(v).__name__, v))
    return tuple(out)


def assert_same_rows(java, py, what):
    """The same rows (as a multiset), the same columns in the same order, the same values of
    the same types."""
    assert len(java) == len(py), what
    if py:
        assert list(java[0]) == list(py[0]), what
    assert sorted(map(canonical, java), key=repr) == sorted(map(canonical, py), key=repr), what


def test_iceberg_java_reads_and_co_writes_floe_tables(lake, tmp_path, iceberg_java):
    good, bad, _ = mixed_file(tmp_path / "a.jsonl", n_good=3000, bad_every=60, seed=11)
    lake.run("table", "create", "--all")
    # Several commits (and data files) per table.
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "a.jsonl",
             "--max-rows", "1000")

    # Every table floe created, as Java reads it = as PyIceberg reads it.
    tables = sorted(".".join(t) for t in lake.pyiceberg_catalog().list_tables("lake"))
    assert {"lake.events", "lake.events_dead_letters"} <= set(tables)
    for name in tables:
        assert_same_rows(lake.read_java(name), lake.read_pyiceberg(name).to_pylist(), name)

    # And the raw table is exactly what was loaded (the events' own oracle).
    java = {r["event_guid"]: r for r in lake.read_java("lake.events")}
    assert java.keys() == good.keys()
    for guid, exp in good.items():
        assert {k: java[guid][k] for k in exp} == exp, guid
        assert java[guid]["event_ts"].tzinfo is not None
    assert len(lake.read_java("lake.events_dead_letters")) == len(bad)

    # Java as a co-writer: a row committed by Iceberg Java (an append snapshot of Spark's) ...
    e = seed_event(random.Random(99), 5000)
    row = expected_row(e)
    ts = row["event_ts"].strftime("%Y-%m-%d %H:%M:%S.%f")
    lake.java_sql(
        "INSERT INTO lake.events VALUES ("
        f"'{e['eventGuid']}', TIMESTAMP '{ts}', '{e['country']}', "
        f"{str(e['is_returning']).lower()}, "
        f"'{e['user_id']}', '{e['action']}', '{e['device_type']}', '{e['page']}', "
        f"'{e['category']}', CAST({e['value']!r} AS DOUBLE), {e['session_duration']}, "
        "NULL, NULL, TIMESTAMP '2026-01-02 03:04:05.678901')")
    t = lake.pyiceberg_table("lake.events")
    assert t.current_snapshot().summary.operation.value == "append"
    assert "spark.app.id" in t.current_snapshot().summary.additional_properties
    # ... is read by PyIceberg, exactly.
    py = {r["event_guid"]: r for r in lake.read_pyiceberg("lake.events").to_pylist()}
    assert py.keys() == good.keys() | {e["eventGuid"]}
    got = py[e["eventGuid"]]
    assert {k: got[k] for k in row} == row
    assert (got["_kafka_partition"], got["_kafka_offset"]) == (None, None)
    assert got["_ingested_at"] == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)

    # floe commits on top of Java's snapshot, and the readers agree again.
    more, _, _ = mixed_file(tmp_path / "b.jsonl", n_good=500, bad_every=10**9, seed=12)
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "b.jsonl")
    java_rows = lake.read_java("lake.events")
    assert len(java_rows) == len(good) + 1 + len(more)
    assert_same_rows(java_rows, lake.read_pyiceberg("lake.events").to_pylist(), "lake.events")


def assert_java_reads_every_table(lake, what):
    """Every table of the lake, as Java reads it = as PyIceberg reads it."""
    tables = sorted(".".join(t) for t in lake.pyiceberg_catalog().list_tables("lake"))
    for name in tables:
        assert_same_rows(lake.read_java(name), lake.read_pyiceberg(name).to_pylist(),
                         f"{name} {what}")
    return tables


def test_iceberg_java_reads_every_table_through_its_life(catalog_lake, dev_broker, tmp_path,
                                                         iceberg_java):
    """Raw, dead letters and aggregates as `floe run` writes them, then after a schema
    evolution, compaction, retention and a dead-letter replay: Java reads what PyIceberg
    reads, row for row."""
    import json
    from test_kafka_loader import prepared, run_args
    lake = catalog_lake
    prepared(lake, dev_broker, tmp_path, 4000, seed=61, malformed=0.02)
    lake.run(*run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "500ms",
                       "--until-drained"), timeout=180)
    tables = assert_java_reads_every_table(lake, "after floe run")
    assert any("hourly" in t for t in tables), tables
    assert all(lake.read_pyiceberg(t).num_rows > 0 for t in tables), "every table has rows"

    lake.run("table", "evolve", "lake.events", "--add-column", "campaign:string")
    more, _, _ = mixed_file(tmp_path / "b.jsonl", n_good=500, bad_every=10**9, seed=62)
    lines = [json.loads(x) for x in open(tmp_path / "b.jsonl") if x.strip()]
    with open(tmp_path / "c.jsonl", "w") as f:
        for o in lines:
            f.write(json.dumps({**o, "campaign": "c" + o["eventGuid"][:3]}) + "\n")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "c.jsonl", "--max-rows", "100")
    assert_java_reads_every_table(lake, "after evolution")

    lake.run("maintain", "--all", "--compact")
    assert_java_reads_every_table(lake, "after compaction")

    times = sorted(r["event_ts"] for r in lake.read_pyiceberg("lake.events").to_pylist())
    keep = int((datetime.now(timezone.utc) - times[len(times) // 2]).total_seconds())
    lake.run("maintain", "--table", "lake.events", "--retention", f"{keep}s")
    left = lake.read_pyiceberg("lake.events").num_rows
    assert 0 < left < len(times)
    assert_java_reads_every_table(lake, "after retention")

    # Dead letters for a key the table lacks, replayed once the column exists.
    with lake.pyiceberg_table("lake.events").transaction() as tx:
        tx.set_properties({"floe.unknown-fields": "reject"})
    with open(tmp_path / "d.jsonl", "w") as f:
        for o in lines[:50]:
            o = {k: v for k, v in o.items() if k not in ("extra", "utm")}
            f.write(json.dumps({**o, "eventGuid": "r" + o["eventGuid"][1:], "tier": "gold"}) + "\n")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "d.jsonl")
    dead_before = lake.read_pyiceberg("lake.events_dead_letters").num_rows
    lake.run("table", "evolve", "lake.events", "--add-column", "tier:string")
    lake.run("dlq", "replay", "--table", "lake.events")
    assert lake.read_pyiceberg("lake.events_dead_letters").num_rows == dead_before - 50
    assert lake.read_pyiceberg("lake.events").num_rows == left + 50
    assert_java_reads_every_table(lake, "after a dead-letter replay")

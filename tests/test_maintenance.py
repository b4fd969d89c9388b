"""`floe maintain` on tables floe loaded, checked with PyIceberg and DuckDB: compaction keeps
every row (also while `floe run` commits), expiry leaves exactly the referenced files and time
travel to a kept snapshot works, retention removes exactly the old rows, dry runs change nothing."""

import os
import re
import signal
import time
from collections import Counter
from datetime import datetime, timezone

from events import mixed_file
from test_kafka_loader import assert_exactly, prepared, run_args, split

# Order-independent and exact: a sum of per-row hashes over every seed column.
CHECKSUM = ("SELECT count(*) AS n, sum(hash(event_guid, event_ts, country, is_returning, user_id, "
            "action, device_type, page, category, value, session_duration)::HUGEINT) AS h FROM t")
AGGREGATE = ("SELECT date_trunc('hour', event_ts) AS h, country, count(*), avg(value) "
             "FROM t GROUP BY 1, 2")


def warehouse_listing(lake):
    out = {}
    for root, _, files in os.walk(lake.warehouse_dir):
        for f in files:
            p = os.path.join(root, f)
            out[p] = os.path.getsize(p)
    return out


def files_per_partition(lake, name="lake.events"):
    files = lake.pyiceberg_table(name).inspect.files().to_pylist()
    return Counter(str(f["partition"]) for f in files), {f["file_path"].removeprefix("file://")
                                                         for f in files}


def timed_duckdb(lake, sql, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        lake.read_duckdb("lake.events", sql)
        best = min(best, time.perf_counter() - t)
    return best


def test_compaction_then_expiry_keep_every_row_and_exactly_the_referenced_files(catalog_lake, tmp_path):
    lake = catalog_lake
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=20_000, bad_every=1000, seed=3)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl", "--max-rows", "100")
    per_partition, _ = files_per_partition(lake)
    files_before = sum(per_partition.values())
    assert files_before >= 200, per_partition
    checksum = lake.read_duckdb("lake.events", CHECKSUM).to_pylist()
    rows = lake.read_pyiceberg("lake.events").num_rows
    assert rows == len(good)
    slow = timed_duckdb(lake, AGGREGATE)

    # A dry run of every step changes nothing.
    listing = warehouse_listing(lake)
    location = lake.pyiceberg_table("lake.events").metadata_location
    out = lake.run("maintain", "--table", "lake.events", "--dry-run", "--older-than", "0s",
                   "--retain-last", "1", "--orphan-age", "0s").stdout
    assert "(dry run)" in out
    assert warehouse_listing(lake) == listing
    assert lake.pyiceberg_table("lake.events").metadata_location == location

    out = lake.run("maintain", "--table", "lake.events", "--compact").stdout
    assert re.search(r"compact: \d+ → \d+ files", out), out
    per_partition, _ = files_per_partition(lake)
    assert max(per_partition.values()) <= 2, per_partition
    assert lake.read_duckdb("lake.events", CHECKSUM).to_pylist() == checksum
    assert lake.read_pyiceberg("lake.events").num_rows == rows
    fast = timed_duckdb(lake, AGGREGATE)
    print(f"\nDuckDB aggregate: {slow * 1000:.0f} ms over {files_before} files before, "
          f"{fast * 1000:.0f} ms over {sum(per_partition.values())} after compaction")

    # Expiry keeping the last 3 snapshots: the data files on disk are exactly those the kept
    # snapshots read, and every kept snapshot still reads in PyIceberg (time travel).
    table = lake.pyiceberg_table("lake.events")
    kept, snap = [], table.current_snapshot()
    while snap is not None and len(kept) < 3:  # the newest three: the current one's ancestry
        kept.append(snap.snapshot_id)
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
    lake.run("maintain", "--table", "lake.events", "--expire-snapshots", "--older-than", "0s",
             "--retain-last", "3")
    table = lake.pyiceberg_table("lake.events")
    assert {s.snapshot_id for s in table.snapshots()} == set(kept)
    live = {task.file.file_path.removeprefix("file://")
            for sid in kept for task in table.scan(snapshot_id=sid).plan_files()}
    assert set(lake.data_files_on_disk("lake.events")) == live
    for sid in kept:
        assert table.scan(snapshot_id=sid).to_arrow().num_rows == rows
    assert lake.read_duckdb("lake.events", CHECKSUM).to_pylist() == checksum
    # Every manifest list and manifest the metadata names is on disk.
    for s in table.snapshots():
        assert os.path.exists(s.manifest_list.removeprefix("file://"))
        for m in s.manifests(table.io):
            assert os.path.exists(m.manifest_path.removeprefix("file://"))


def test_retention_removes_exactly_the_rows_older_than_the_cutoff(catalog_lake, tmp_path):
    lake = catalog_lake
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=5_000, bad_every=1000, seed=5)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl", "--max-rows", "700")
    times = sorted(r["event_ts"] for r in good.values())
    middle = times[len(times) // 2]
    keep_secs = int((datetime.now(timezone.utc) - middle).total_seconds())
    out = lake.run("maintain", "--table", "lake.events", "--retention", f"{keep_secs}s").stdout
    m = re.search(r"before (\S+) removed: (\d+) rows", out)
    assert m, out
    cutoff = datetime.fromisoformat(m[1])
    want = {g for g, r in good.items() if r["event_ts"] >= cutoff}
    assert 0 < len(want) < len(good)
    got = lake.read_pyiceberg("lake.events").column("event_guid").to_pylist()
    assert Counter(got) == Counter(want)
    assert int(m[2]) == len(good) - len(want)
    duck = lake.read_duckdb("lake.events", "SELECT event_guid FROM t").column(0).to_pylist()
    assert Counter(duck) == Counter(want)


def test_compaction_while_floe_run_commits_loses_and_duplicates_nothing(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 30_000, seed=71, malformed=0.01)
    loader = lake.popen(*run_args(dev_broker, "--max-rows", "500", "--flush-interval", "200ms"))
    compactions = 0
    deadline = time.time() + 120
    good = len(split(payloads)[0])
    while time.time() < deadline:
        lake.run("maintain", "--table", "lake.events", "--compact")
        compactions += 1
        snap = lake.pyiceberg_table("lake.events").current_snapshot()
        if snap and int(snap.summary.get("total-records", 0)) >= good and compactions >= 3:
            break
    # Let the loader finish the topic, then stop it cleanly.
    time.sleep(3)
    loader.send_signal(signal.SIGTERM)
    _, err = loader.communicate(timeout=60)
    assert loader.returncode == 0, err
    assert_exactly(lake, payloads)
    ops = Counter(s.summary.get("floe.operation") or s.summary.operation.value
                  for s in lake.pyiceberg_table("lake.events").snapshots())
    assert ops["compact"] >= 1 and ops["append"] >= 10, ops

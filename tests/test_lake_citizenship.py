"""floe in a shared lake: Apache Iceberg Java (what Trino and Spark run) commits to the same
tables — inserts, merge-on-read deletes, rewrites, expiry — and floe keeps exactly once, keeps
its metadata small over thousands of commits, applies other engines' row-level deletes when it
compacts, and never deletes another table's files."""

import json
import os
import time
from collections import Counter

from events import mixed_file
from readers import local_path
from test_kafka_loader import prepared, produce, generated, run_args, split

JAVA_ROW = ("INSERT INTO lake.events VALUES ('java-{n}', TIMESTAMP '2025-11-13 02:00:00', "
            "'NL', true, 'u', 'view', 'mobile', '/', 'c', 1.0, 3, NULL, NULL, NULL)")
DELETED = "country IN ('country_3', 'country_7')"


def guids(rows):
    return Counter(r["event_guid"] for r in rows)


def pyiceberg_guids(lake, name="lake.events"):
    return Counter(lake.read_pyiceberg(name).column("event_guid").to_pylist())


def java_guids(lake, name="lake.events"):
    return Counter(r["event_guid"] for r in lake.java_sql(f"SELECT event_guid FROM {name}"))


def duckdb_guids(lake, name="lake.events"):
    return Counter(lake.read_duckdb(name, "SELECT event_guid FROM t").column("event_guid").to_pylist())


def assert_readers_agree(lake, want, name="lake.events"):
    """PyIceberg, DuckDB and Iceberg Java each read exactly `want` (event_guid → count)."""
    for reader, got in (("PyIceberg", pyiceberg_guids(lake, name)),
                        ("DuckDB", duckdb_guids(lake, name)),
                        ("Iceberg Java", java_guids(lake, name))):
        missing, extra = want - got, got - want
        assert not missing and not extra, (
            f"{reader}: {sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
            f"{sum(extra.values())} extra (e.g. {list(extra)[:3]})")


def live_delete_files(lake, name="lake.events"):
    return lake.java_sql(f"SELECT file_path FROM {name}.delete_files")


def test_offsets_survive_java_commits_and_expiry_keeping_one_foreign_snapshot(
        catalog_lake, dev_broker, tmp_path, iceberg_java):
    lake = catalog_lake
    first = prepared(lake, dev_broker, tmp_path, 3000, seed=31, malformed=0.02)
    lake.run(*run_args(dev_broker, "--flush-interval", "1s", "--until-drained"), timeout=180)
    good1, bad1 = split(first)
    assert pyiceberg_guids(lake) == Counter(r["event_guid"] for r in good1)

    # Iceberg Java commits on top of floe: an INSERT, a merge-on-read DELETE, a rewrite.
    lake.java_sql("ALTER TABLE lake.events SET TBLPROPERTIES ('write.delete.mode'='merge-on-read')")
    lake.java_sql(JAVA_ROW.format(n=1))
    deleted = guids(lake.java_sql(f"SELECT event_guid FROM lake.events WHERE {DELETED}"))
    assert deleted
    lake.java_sql(f"DELETE FROM lake.events WHERE {DELETED}")
    lake.java_sql("CALL system.rewrite_data_files(table => 'lake.events', "
                  "options => map('min-input-files', '1'))")
    # floe's expiry, then Java's, each keeping only the newest snapshot (a foreign one).
    lake.run("maintain", "--table", "lake.events", "--expire-snapshots", "--older-than", "0s",
             "--retain-last", "1")
    lake.java_sql("CALL system.expire_snapshots(table => 'lake.events', "
                  "older_than => TIMESTAMP '2999-01-01 00:00:00', retain_last => 1)")
    snaps = lake.java_sql("SELECT snapshot_id, summary FROM lake.events.snapshots")
    assert len(snaps) == 1 and not any(k.startswith("floe.") for k, _ in snaps[0]["summary"]), snaps

    # floe resumes at its offsets: the old messages are not loaded again, the new ones once.
    produce(lake, dev_broker, 2000, seed=32, malformed=0.02)
    second = generated(lake, tmp_path, 2000, seed=32, malformed=0.02)
    lake.run(*run_args(dev_broker, "--flush-interval", "1s", "--until-drained"), timeout=180)
    good2, bad2 = split(second)
    want = Counter(r["event_guid"] for r in good1) - deleted
    want.update(r["event_guid"] for r in good2)
    want["java-1"] += 1
    assert_readers_agree(lake, want)
    dead = lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist()
    assert Counter(dead) == Counter(bad1 + bad2)


def test_compaction_applies_a_java_merge_on_read_delete(lake, tmp_path, iceberg_java):
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=6_000, bad_every=2000, seed=33)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl", "--max-rows", "500")
    lake.java_sql("ALTER TABLE lake.events SET TBLPROPERTIES ('write.delete.mode'='merge-on-read')")
    lake.java_sql(f"DELETE FROM lake.events WHERE {DELETED}")
    assert live_delete_files(lake), "Java's DELETE wrote position delete files"
    want = Counter(g for g, r in good.items() if r["country"] not in ("country_3", "country_7"))
    assert_readers_agree(lake, want)

    out = lake.run("maintain", "--table", "lake.events", "--compact").stdout
    assert "compact:" in out, out
    assert live_delete_files(lake) == [], "no delete file left live after compaction"
    assert_readers_agree(lake, want)
    q = lake.run("query", "SELECT count(*) AS n FROM lake.events", "--format", "json").stdout
    assert json.loads(q.splitlines()[0])["n"] == sum(want.values()), q


def test_a_java_delete_while_floe_compacts_is_not_undone(catalog_lake, tmp_path, iceberg_java):
    lake = catalog_lake
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=4_000, bad_every=4000, seed=34)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl", "--max-rows", "400")
    lake.java_sql("ALTER TABLE lake.events SET TBLPROPERTIES ('write.delete.mode'='merge-on-read')")
    # floe plans and rewrites its first bin, then waits before committing it; meanwhile Java
    # deletes rows of every partition.
    p = lake.popen("maintain", "--table", "lake.events", "--compact", "--json",
                   env={"FLOE_FAILPOINTS": "compact-before-commit=sleep:20000"})
    deadline = time.time() + 120
    line = ""
    while "failpoint compact-before-commit" not in line:
        assert time.time() < deadline and p.poll() is None, p.communicate()
        line = p.stderr.readline()
    lake.java_sql(f"DELETE FROM lake.events WHERE {DELETED}")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    report = json.loads(out)[0]["steps"]["compact"]
    assert report["bins_skipped"] >= 1, report
    want = Counter(g for g, r in good.items() if r["country"] not in ("country_3", "country_7"))
    assert_readers_agree(lake, want)
    # The next run compacts with the deletes applied.
    lake.run("maintain", "--table", "lake.events", "--compact")
    assert live_delete_files(lake) == []
    assert_readers_agree(lake, want)


def test_a_table_nested_in_another_survives_its_orphan_removal(lake, tmp_path):
    good, bad, _ = mixed_file(tmp_path / "e.jsonl", n_good=2_000, bad_every=50, seed=35)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
             "--dead-letter-table", "lake.events.dlq", "--max-rows", "500")
    nested = lake.pyiceberg_table("lake.events.dlq")
    assert "/lake/events/dlq" in nested.metadata.location
    before = lake.read_pyiceberg("lake.events.dlq").num_rows
    assert before == len(bad)
    out = lake.run("maintain", "--table", "lake.events", "--remove-orphans", "--orphan-age", "0s",
                   "--force").stdout
    assert "remove-orphans" in out, out
    assert lake.read_pyiceberg("lake.events.dlq").num_rows == before
    assert lake.read_duckdb("lake.events.dlq", "SELECT count(*) AS n FROM t").column("n")[0].as_py() == before
    assert pyiceberg_guids(lake) == Counter(good.keys())
    lake.run("maintain", "--all", "--older-than", "0s", "--retain-last", "1", "--orphan-age", "0s",
             "--force")
    assert lake.read_pyiceberg("lake.events.dlq").num_rows == before
    assert pyiceberg_guids(lake) == Counter(good.keys())
    # Below an hour without --force: refused, nothing removed.
    p = lake.run("maintain", "--table", "lake.events", "--remove-orphans", "--orphan-age", "10m",
                 check=False)
    assert p.returncode != 0 and "1h" in p.stderr, p.stderr


def test_thousands_of_small_commits_keep_the_metadata_small(catalog_lake, tmp_path, iceberg_java):
    lake = catalog_lake
    lake.run("table", "create", "--all")
    want = Counter()
    # 3,000 commits (600 on REST, where each is two HTTP round trips and a metadata file the
    # server writes): either way far past write.metadata.previous-versions-max (100).
    per_batch = 1_000 if lake.kind == "rest" else 5_000
    for batch in range(6):
        good, _, _ = mixed_file(tmp_path / f"e{batch}.jsonl", n_good=per_batch, bad_every=10**9,
                                seed=100 + batch)
        want.update(good.keys())
        lake.run("load", "--table", "lake.events", "--input", tmp_path / f"e{batch}.jsonl",
                 "--max-rows", "10", timeout=900)
        # The maintenance cron's expiry between batches.
        lake.run("maintain", "--table", "lake.events", "--expire-snapshots", "--older-than", "0s",
                 "--retain-last", "10")
        table = lake.pyiceberg_table("lake.events")
        manifests = table.current_snapshot().manifests(table.io)
        assert len(manifests) <= 150, f"{len(manifests)} manifests after batch {batch}"
        assert all(m.added_files_count + m.existing_files_count > 0 for m in manifests)
    table = lake.pyiceberg_table("lake.events")
    assert int(table.current_snapshot().summary["total-records"]) == 6 * per_batch

    lake.run("maintain", "--table", "lake.events", "--older-than", "0s", "--retain-last", "1",
             "--orphan-age", "0s", "--force")
    table = lake.pyiceberg_table("lake.events")
    manifests = table.current_snapshot().manifests(table.io)
    assert len(manifests) <= 5, len(manifests)
    assert all(m.deleted_files_count == 0 for m in manifests)
    assert all(m.added_files_count + m.existing_files_count > 0 for m in manifests)
    location = local_path(table.metadata_location)
    assert os.path.getsize(location) < 64 * 1024, os.path.getsize(location)
    metadata_dir = os.path.dirname(location)
    n_files = len(os.listdir(metadata_dir))
    assert n_files <= 130, f"{n_files} files in {metadata_dir}"
    assert_readers_agree(lake, want)


def java_retrying(lake, sql, attempts=5):
    """A Java statement that may lose a race with floe's commits (Iceberg's own retries
    exhausted, or a validation against a concurrent rewrite): run again, as a scheduler would."""
    from readers import IcebergJavaError
    for n in range(attempts):
        try:
            return lake.java_sql(sql)
        except IcebergJavaError as e:
            if n == attempts - 1:
                raise
            print(f"Java: {sql[:60]}… failed ({str(e)[:160]}); again")
            time.sleep(1)


def test_chaos_java_commits_interleave_with_floe_run_and_maintain(catalog_lake, dev_broker,
                                                                  tmp_path, iceberg_java):
    """Iceberg Java's INSERT, merge-on-read DELETE, rewrite_data_files, rewrite_manifests,
    expire_snapshots and ADD COLUMN, between and during `floe run` (killed and restarted) and
    `floe maintain`: every message is exactly once in the raw and dead-letter tables, less
    exactly what Java deleted, as Java, PyIceberg and DuckDB read them."""
    import random
    import signal
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 24_000, seed=41, malformed=0.02)
    good, bad = split(payloads)
    lake.java_sql("ALTER TABLE lake.events SET TBLPROPERTIES ("
                  "'write.delete.mode'='merge-on-read', 'write.delete.isolation-level'='snapshot')")
    rng = random.Random(7)
    deleted, inserted = Counter(), Counter()
    ops = [
        "insert", "delete", "rewrite_data_files", "rewrite_manifests", "expire_snapshots",
        "add_column", "floe_maintain",
    ]
    args = run_args(dev_broker, "--max-rows", "1500", "--flush-interval", "300ms")
    for round_ in range(len(ops)):
        p = lake.popen(*args)
        time.sleep(rng.uniform(1.5, 4.0))
        op = ops[round_]
        if op == "insert":
            java_retrying(lake, JAVA_ROW.format(n=round_))
            inserted[f"java-{round_}"] += 1
        elif op == "delete":
            # The loader's first commit may take a while (a group join; REST round trips).
            deadline = time.monotonic() + 60
            while True:
                present = [r["event_guid"] for r in lake.java_sql(
                    "SELECT event_guid FROM lake.events WHERE event_guid NOT LIKE 'java-%' "
                    "LIMIT 50")]
                if present or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert present, "the loader committed rows by now"
            in_list = ", ".join(f"'{g}'" for g in present)
            java_retrying(lake, f"DELETE FROM lake.events WHERE event_guid IN ({in_list})")
            deleted.update(present)
        elif op == "rewrite_data_files":
            java_retrying(lake, "CALL system.rewrite_data_files(table => 'lake.events', "
                                "options => map('min-input-files', '2'))")
        elif op == "rewrite_manifests":
            java_retrying(lake, "CALL system.rewrite_manifests('lake.events')")
        elif op == "expire_snapshots":
            java_retrying(lake, "CALL system.expire_snapshots(table => 'lake.events', "
                                "older_than => TIMESTAMP '2999-01-01 00:00:00', retain_last => 1)")
        elif op == "add_column":
            java_retrying(lake, "ALTER TABLE lake.events ADD COLUMN java_note string")
        else:
            lake.run("maintain", "--table", "lake.events", "--table", "lake.events_dead_letters",
                     "--older-than", "0s", "--retain-last", "1", "--orphan-age", "1h")
        time.sleep(rng.uniform(0.5, 2.0))
        p.send_signal(signal.SIGKILL if round_ % 2 == 0 else signal.SIGTERM)
        p.communicate(timeout=60)
    lake.run(*args, "--until-drained", timeout=300)
    lake.run("maintain", "--all", "--older-than", "0s", "--retain-last", "1")

    want = Counter(r["event_guid"] for r in good) - deleted
    want.update(inserted)
    assert sum(deleted.values()) == 50
    assert_readers_agree(lake, want)
    dead = lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist()
    assert Counter(dead) == Counter(bad)
    java_dead = lake.java_sql("SELECT count(*) AS n FROM lake.events_dead_letters")[0]["n"]
    assert java_dead == len(bad)
    # The column Java added is there for every reader, NULL in floe's rows.
    assert "java_note" in lake.read_pyiceberg("lake.events").column_names


def test_a_partition_spec_evolved_by_java_is_followed(lake, tmp_path, iceberg_java):
    good1, _, _ = mixed_file(tmp_path / "a.jsonl", n_good=3_000, bad_every=10**9, seed=51)
    good2, _, _ = mixed_file(tmp_path / "b.jsonl", n_good=3_000, bad_every=10**9, seed=52)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "a.jsonl", "--max-rows", "700")
    lake.java_sql("ALTER TABLE lake.events ADD PARTITION FIELD bucket(2, country) AS country_bucket")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "b.jsonl", "--max-rows", "700")
    specs = {r["spec_id"]: r["n"] for r in lake.java_sql(
        "SELECT spec_id, count(*) AS n FROM lake.events.files GROUP BY spec_id")}
    assert set(specs) == {0, 1}, specs  # the old files, and the new ones in the new spec
    want = Counter(good1.keys()) + Counter(good2.keys())
    assert_readers_agree(lake, want)
    # Compaction rewrites per spec, into the current one.
    lake.run("maintain", "--table", "lake.events", "--compact")
    specs = {r["spec_id"]: r["n"] for r in lake.java_sql(
        "SELECT spec_id, count(*) AS n FROM lake.events.files GROUP BY spec_id")}
    assert set(specs) == {1}, specs
    assert_readers_agree(lake, want)


def test_a_table_upgraded_to_format_v3_is_refused_by_name(catalog_lake, tmp_path, iceberg_java):
    lake = catalog_lake
    good, _, _ = mixed_file(tmp_path / "a.jsonl", n_good=2_000, bad_every=10**9, seed=53)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "a.jsonl", "--max-rows", "500")
    lake.java_sql("ALTER TABLE lake.events SET TBLPROPERTIES ('format-version'='3')")
    before = lake.java_sql("SELECT count(*) AS n FROM lake.events")[0]["n"]
    p = lake.run("load", "--table", "lake.events", "--input", tmp_path / "a.jsonl", check=False)
    assert p.returncode != 0 and "format v3" in p.stderr and "lake.events" in p.stderr, p.stderr
    p = lake.run("maintain", "--table", "lake.events", "--compact", check=False)
    assert p.returncode != 0 and "v3" in p.stderr, p.stderr
    assert lake.java_sql("SELECT count(*) AS n FROM lake.events")[0]["n"] == before == len(good)


def test_a_table_no_flush_brings_rows_gains_no_snapshot(catalog_lake, dev_broker, tmp_path):
    """The dead-letter table of a clean stream: no snapshot per flush (it once had an empty
    one every flush), its offsets recorded as a property before the loader stops, so a restart
    reads nothing again."""
    lake = catalog_lake
    prepared(lake, dev_broker, tmp_path, 6000, seed=71)
    lake.run(*run_args(dev_broker, "--max-rows", "500", "--flush-interval", "200ms",
                       "--until-drained"), timeout=180)
    raw = lake.pyiceberg_table("lake.events")
    dlq = lake.pyiceberg_table("lake.events_dead_letters")
    assert len(raw.snapshots()) >= 5
    if lake.kind == "rest":
        # REST requirements guard no property: the offsets ride on one snapshot without
        # files, which moves main (docs/configuration.md), not one per flush.
        assert len(dlq.snapshots()) <= 1, [s.summary for s in dlq.snapshots()]
        for snap in dlq.snapshots():
            props = snap.summary.additional_properties
            assert props.get("floe.state-only") == "true", props
            assert props.get("added-data-files", "0") == "0", props
    else:
        assert dlq.snapshots() == [], [s.summary for s in dlq.snapshots()]
    offsets = json.loads(raw.properties["floe.offsets.g"])
    assert json.loads(dlq.properties["floe.offsets.g"]) == offsets
    assert sum(offsets["events"].values()) == 6000

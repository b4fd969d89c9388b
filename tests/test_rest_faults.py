"""Commits through a REST catalog whose answer is lost or wrong: the gate forwards the commit
(the server applies it) and then answers 5xx or cuts the connection, or refuses it before the
server sees it. floe must neither load a line twice nor delete a file the table references."""

import os
from collections import Counter

import pytest

from events import mixed_file
from readers import local_path


def _referenced_files_exist(lake, name):
    table = lake.pyiceberg_table(name)
    missing = []
    for snap in table.snapshots():
        if not os.path.exists(local_path(snap.manifest_list)):
            missing.append(snap.manifest_list)
    for task in table.scan().plan_files():
        if not os.path.exists(local_path(task.file.file_path)):
            missing.append(task.file.file_path)
    return missing


@pytest.mark.parametrize("fault", ["500", "502", "504", "cut", "503-before", "429-before"])
def test_a_commit_whose_answer_is_lost_lands_once(rest_lake, tmp_path, fault):
    lake, gate = rest_lake, rest_lake.rest_gate
    good, bad, lines = mixed_file(tmp_path / "e.jsonl", n_good=3_000, bad_every=50, seed=61)
    lake.run("table", "create", "--all")
    if fault == "cut":
        rule = gate.cut_after_forward(times=2, table="events")
    elif fault.endswith("-before"):
        rule = gate.status_before_forward(int(fault[:3]), times=2, table="events")
    else:
        rule = gate.status_after_forward(int(fault), times=2, table="events")
    p = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
                 "--max-rows", "500", check=False, timeout=300)
    assert rule.fired == 2, rule.fired
    # floe learns from the table what became of each commit and goes on.
    assert p.returncode == 0, p.stderr
    rows = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    assert rows == Counter(good.keys()), "a line is missing or loaded twice"
    duck = Counter(lake.read_duckdb("lake.events", "SELECT event_guid FROM t")
                   .column("event_guid").to_pylist())
    assert duck == rows
    dead = Counter(lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist())
    assert dead == Counter(p for p, _ in bad)
    assert _referenced_files_exist(lake, "lake.events") == []
    # One snapshot per batch of 500 lines (good or bad): no commit landed twice.
    snaps = lake.pyiceberg_table("lake.events").snapshots()
    assert len(snaps) == -(-lines // 500), [s.summary.additional_properties.get("added-records")
                                            for s in snaps]
    # Orphan removal finds nothing the table needs (what it removes are the lost attempts).
    lake.run("maintain", "--all", "--remove-orphans", "--orphan-age", "0s", "--force")
    assert _referenced_files_exist(lake, "lake.events") == []
    assert Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist()) == rows


def test_loads_and_a_loader_group_race_through_the_commit_endpoint(rest_lake, dev_broker,
                                                                    tmp_path, iceberg_java):
    """Two `floe load`s and a two-member `floe run` group commit to one table at once through
    the REST catalog, one member killed and restarted: the server refuses the stale commits
    (409), floe re-plans them, and every message and line is in the table once, as PyIceberg
    and Iceberg Java read it."""
    import signal
    import subprocess
    import time
    from test_kafka_loader import prepared, run_args, split
    lake, gate = rest_lake, rest_lake.rest_gate
    payloads = prepared(lake, dev_broker, tmp_path, 12_000, seed=77)
    good_msgs, _ = split(payloads)
    files = []
    for i in range(2):
        good, _, _ = mixed_file(tmp_path / f"f{i}.jsonl", n_good=3_000, bad_every=10**9,
                                seed=200 + i)
        files.append(good)
    args = run_args(dev_broker, "--max-rows", "500", "--flush-interval", "200ms")
    members = [lake.popen(*args) for _ in range(2)]
    loads = [lake.popen("load", "--table", "lake.events", "--input", tmp_path / f"f{i}.jsonl",
                        "--max-rows", "200") for i in range(2)]
    time.sleep(3)
    members[0].send_signal(signal.SIGKILL)
    members[0].wait()
    members[0] = lake.popen(*args)
    for p in loads:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    want = len(good_msgs) + sum(len(g) for g in files)
    deadline = time.time() + 180
    while time.time() < deadline:
        snap = lake.pyiceberg_table("lake.events").current_snapshot()
        if snap and int(snap.summary.get("total-records", 0)) >= want:
            break
        time.sleep(1)
    for p in members:
        p.send_signal(signal.SIGTERM)
    for p in members:
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    assert any(s.status == 409 for s in gate.commits()), "no commit lost a race"
    ids = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    expected = Counter(r["event_guid"] for r in good_msgs)
    for g in files:
        expected.update(g.keys())
    assert ids == expected, "a message or line is missing or loaded twice"
    java = lake.java_sql("SELECT count(*) AS n, count(DISTINCT event_guid) AS d FROM lake.events")
    assert java == [{"n": want, "d": len(expected)}], java

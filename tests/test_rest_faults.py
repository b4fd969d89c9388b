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

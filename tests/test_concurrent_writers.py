"""Several `floe load` processes committing to one table at once: every row lands exactly
once and lost commit races leave no data file behind."""

import pyarrow.compute as pc

from events import mixed_file


def test_concurrent_loads_land_every_row_once_and_leave_no_orphans(lake, tmp_path):
    lake.run("table", "create", "--all")
    expected = {}
    procs = []
    for w in range(3):
        path = tmp_path / f"part{w}.jsonl"
        good, _, _ = mixed_file(path, n_good=3000, bad_every=10**9, seed=100 + w)
        expected.update(good)
        # Small flushes: many commits per process, so the processes race each other.
        procs.append(lake.popen("load", "--table", "lake.events", "--input", path,
                                "--max-rows", "150"))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "3000 accepted" in out, out

    t = lake.read_pyiceberg("lake.events")
    assert t.num_rows == len(expected)
    assert pc.count_distinct(t.column("event_guid")).as_py() == len(expected)
    assert set(t.column("event_guid").to_pylist()) == set(expected)

    tbl = lake.pyiceberg_table("lake.events")
    live = {f.replace("file://", "") for f in tbl.inspect.files().column("file_path").to_pylist()}
    on_disk = set(lake.data_files_on_disk("lake.events"))
    assert on_disk == live, f"orphaned: {sorted(on_disk - live)[:5]}"
    assert len(tbl.snapshots()) == 3 * 20  # 3000 rows / 150 per flush, per process

    d = lake.read_duckdb("lake.events", "SELECT count(*) AS n, count(DISTINCT event_guid) AS g FROM t")
    assert (d.column("n")[0].as_py(), d.column("g")[0].as_py()) == (len(expected), len(expected))

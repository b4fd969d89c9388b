"""floe under hostile operators and inputs (issue 23)."""

import random
import shutil
import signal
import subprocess
from collections import Counter

import pytest

from events import mixed_file
from readers import Lake


def test_a_catalog_password_in_the_uri_query_is_never_printed(tmp_path, floe_bin):
    secret = "s3cr3t-Pa55"
    uri = f"postgres://floe@127.0.0.1:1/floe?sslmode=disable&password={secret}"
    lake = Lake(floe_bin, tmp_path, uri, f"{tmp_path}/wh")
    shown = lake.run("--print-config")
    assert secret not in shown.stdout + shown.stderr, shown.stdout
    assert "password=***" in shown.stdout, shown.stdout
    # A connection error names the catalog without its password.
    failed = lake.run("table", "list", check=False, timeout=120)
    assert failed.returncode != 0
    assert secret not in failed.stdout + failed.stderr, failed.stderr
    assert "127.0.0.1:1" in failed.stderr, failed.stderr


# --- floe load is exactly once (COPY INTO semantics) -----------------------------------------

def _loaded(lake):
    """(guid → times in the table by PyIceberg, the same by DuckDB, dead-letter payload →
    times)."""
    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    duck = Counter(lake.read_duckdb("lake.events", "SELECT event_guid FROM t")
                   .column("event_guid").to_pylist())
    dl = Counter(lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist())
    return py, duck, dl


def _load(lake, path, *extra, check=True, **kw):
    return lake.run("load", "--table", "lake.events", "--input", path, *extra, check=check,
                    **kw)


def test_a_file_loaded_twice_is_loaded_once(lake, tmp_path):
    good, bad, _ = mixed_file(tmp_path / "events.jsonl", n_good=3000, bad_every=40, seed=3)
    lake.run("table", "create", "--all")
    first = _load(lake, tmp_path / "events.jsonl", "--max-rows", "700").stdout
    assert "3000 accepted" in first, first
    # The same content under another path is the same file.
    copy = tmp_path / "copy.jsonl"
    shutil.copy(tmp_path / "events.jsonl", copy)
    for path in (tmp_path / "events.jsonl", copy):
        again = _load(lake, path).stdout
        assert again.startswith("skipped"), again
        assert "--force" in again, again
    py, duck, dl = _loaded(lake)
    assert py == duck == Counter(good.keys())
    assert dl == Counter(p for p, _ in bad)

    # A changed file at the same path is a new load: all its lines load (COPY INTO).
    extra, _, _ = mixed_file(tmp_path / "events.jsonl", n_good=10, bad_every=1000, seed=99)
    _load(lake, tmp_path / "events.jsonl")
    py, duck, _ = _loaded(lake)
    assert py == duck == Counter(good.keys()) + Counter(extra.keys())

    # --force loads a file again.
    forced = _load(lake, copy, "--force").stdout
    assert "3000 accepted" in forced, forced
    py, _, _ = _loaded(lake)
    assert py == Counter(good.keys()) + Counter(good.keys()) + Counter(extra.keys())


def test_stdin_loads_are_apart_unless_given_one_load_id(sqlite_lake, tmp_path):
    lake = sqlite_lake
    good, _, _ = mixed_file(tmp_path / "events.jsonl", n_good=200, bad_every=1000, seed=5)
    data = (tmp_path / "events.jsonl").read_bytes()
    lake.run("table", "create", "--all")
    for _ in range(2):
        _load(lake, "-", "--load-id", "nightly-2026-12-04", input=data.decode())
    py, duck, _ = _loaded(lake)
    assert py == duck == Counter(good.keys()), "one load id: loaded once"
    _load(lake, "-", input=data.decode())
    py, _, _ = _loaded(lake)
    assert py == Counter(good.keys()) + Counter(good.keys()), "a stdin stream without an id is a load of its own"
    bad = _load(lake, "-", "--load-id", " ", input="", check=False)
    assert bad.returncode != 0 and "--load-id" in bad.stderr, bad.stderr


def test_a_load_killed_at_random_moments_loads_every_line_once(lake, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    good, bad, lines = mixed_file(tmp_path / "events.jsonl", n_good=40_000, bad_every=97,
                                  seed=seed % 1000)
    lake.run("table", "create", "--all")
    args = ("load", "--table", "lake.events", "--input", tmp_path / "events.jsonl",
            "--max-rows", "1000")
    kills, outputs = 0, []
    for attempt in range(6):
        proc = lake.popen(*args)
        try:
            # The first kill comes surely before the load ends (it takes seconds).
            proc.wait(timeout=rng.uniform(0.1, 0.4 if attempt == 0 else 1.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        outputs.append(proc.communicate(timeout=60)[0])
        if proc.returncode == 0:
            break
    done = lake.run(*args).stdout
    assert done.startswith("skipped"), done
    assert kills >= 1
    py, duck, dl = _loaded(lake)
    assert py == duck == Counter(good.keys()), f"seed {seed}, {kills} kills"
    assert dl == Counter(p for p, _ in bad), f"seed {seed}, {kills} kills"
    assert len(good) + len(bad) == lines


def test_where_of_a_replay_is_one_expression(sqlite_lake, tmp_path):
    lake = sqlite_lake
    _, bad, _ = mixed_file(tmp_path / "events.jsonl", n_good=100, bad_every=10, seed=8)
    lake.run("table", "create", "--all")
    _load(lake, tmp_path / "events.jsonl")
    for text in ["1=1) OR (1=1", "error_kind = 'x'; DROP TABLE dead_letters",
                 "(SELECT count(*) FROM dead_letters) > 0", "error_kind"]:
        r = lake.run("dlq", "replay", "--table", "lake.events", "--where", text, check=False)
        assert r.returncode != 0, (text, r.stdout)
        assert "--where" in r.stderr and "boolean expression" in r.stderr, r.stderr
    _, _, dl = _loaded(lake)
    assert dl == Counter(p for p, _ in bad), "nothing was touched"


# --- a full disk ------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB filesystem (tmpfs) for a lake to fill."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_full_disk_is_named_and_a_load_completes_exactly_once_after(small_disk, tmp_path,
                                                                      floe_bin):
    lake = Lake(floe_bin, tmp_path, f"sqlite://{small_disk}/catalog.db", f"{small_disk}/wh")
    good, bad, _ = mixed_file(tmp_path / "events.jsonl", n_good=60_000, bad_every=200, seed=4)
    lake.run("table", "create", "lake.events")
    failed = _load(lake, tmp_path / "events.jsonl", "--max-rows", "2000", check=False)
    assert failed.returncode != 0, failed.stdout
    assert "no space left on the device" in failed.stderr, failed.stderr
    assert str(small_disk) in failed.stderr, failed.stderr

    # A read-only command on a full disk says so at once (it waited 30 s for a pool).
    with open(small_disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    listed = lake.run("table", "list", check=False, timeout=25)
    assert listed.returncode != 0
    assert "pool timed out" not in listed.stderr, listed.stderr
    assert "no space left on the device" in listed.stderr and str(small_disk) in listed.stderr

    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    # What the failed load committed is whole: rows of the file, none twice.
    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    assert set(py) <= set(good) and max(py.values(), default=1) == 1
    resumed = _load(lake, tmp_path / "events.jsonl", "--max-rows", "2000").stdout
    if py:
        assert "resumed load" in resumed, resumed
    py, duck, dl = _loaded(lake)
    assert py == duck == Counter(good.keys())
    assert dl == Counter(p for p, _ in bad)

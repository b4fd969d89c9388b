"""floe under hostile operators and inputs (issue 23): secrets never printed, loads exactly
once, event times no partition can hold, messages too large to hold, a full disk, a metrics
endpoint no client can use to starve the loader, failures that retrying cannot mend stop the
loader, and a dedup state that survives a failed rebuild and stays under its cap."""

import json
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone

import pytest

from conftest import free_port
from events import mixed_file
from readers import Lake
from test_kafka_loader import assert_exactly, generated, produce, run_args, split


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


def test_stdin_loads_are_apart_unless_given_one_load_id(catalog_lake, tmp_path):
    lake = catalog_lake
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
    kills, outputs, finished = 0, [], False
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
            finished = True
            break
    if not finished:
        rest = lake.run(*args).stdout
        assert rest.startswith("resumed load"), rest
    done = lake.run(*args).stdout
    assert done.startswith("skipped"), done
    assert kills >= 1
    py, duck, dl = _loaded(lake)
    assert py == duck == Counter(good.keys()), f"seed {seed}, {kills} kills"
    assert dl == Counter(p for p, _ in bad), f"seed {seed}, {kills} kills"
    assert len(good) + len(bad) == lines


def test_where_of_a_replay_is_one_expression(catalog_lake, tmp_path):
    lake = catalog_lake
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


# --- Event times a partition cannot hold (item 3) ------------------------------------------

HOUR_MS = 3_600_000
# The hour partition's value is an int: 2**31 hours from 1970 (about year 246,953) is the first
# hour it cannot hold. iceberg-rust computes hours as `micros / 3.6e9` cast to i32, so such a
# time would wrap to a negative hour.
FIRST_UNHOLDABLE_MS = 2**31 * HOUR_MS


def test_event_times_beyond_the_hour_partition_are_out_of_range_dead_letters(catalog_lake, tmp_path):
    lake = catalog_lake
    base_ms = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    good = [{"event_guid": f"g{i}", "event_ts": base_ms + (i % 3) * HOUR_MS + i, "country": "fr"}
            for i in range(30)]
    far = [
        {"event_guid": "far-future", "event_ts": FIRST_UNHOLDABLE_MS, "country": "fr"},
        {"event_guid": "far-past", "event_ts": -FIRST_UNHOLDABLE_MS - HOUR_MS, "country": "fr"},
        {"event_guid": "far-far", "event_ts": 9_000_000_000_000_000, "country": "fr"},
    ]
    lines = good[:10] + far[:1] + good[10:20] + far[1:] + good[20:]
    path = tmp_path / "far.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", path)

    # The dead letters: the three far times, out_of_range on event_ts, naming the hour
    # partition and its range.
    dead = lake.read_pyiceberg("lake.events_dead_letters").to_pylist()
    assert sorted(json.loads(d["payload"])["event_guid"] for d in dead) == \
        ["far-far", "far-future", "far-past"], dead
    for d in dead:
        assert d["error_kind"] == "out_of_range", d
        assert d["error_field"] == "event_ts", d
        msg = d["error_message"]
        assert "is beyond the range of the hour partition \"event_ts_hour\"" in msg, msg
        assert "(-243014-" in msg and " .. +246953-" in msg, msg

    # The table holds exactly the good rows, each in its own hour's partition: no wrapped
    # (negative or far) partition exists.
    tbl = lake.pyiceberg_table("lake.events")
    rows = tbl.scan().to_arrow()
    assert sorted(rows.column("event_guid").to_pylist()) == sorted(r["event_guid"] for r in good)
    hours = {(r["event_ts"] // HOUR_MS) for r in good}
    parts = {p["partition"]["event_ts_hour"] for p in tbl.inspect.partitions().to_pylist()}
    assert parts == hours, parts

    # Partition-pruned queries see every row of their hours (PyIceberg and DuckDB).
    from pyiceberg.expressions import GreaterThanOrEqual
    second_hour = datetime.fromtimestamp((base_ms + HOUR_MS) / 1000, tz=timezone.utc)
    later = tbl.scan(row_filter=GreaterThanOrEqual("event_ts", second_hour.isoformat())).to_arrow()
    want_later = sorted(r["event_guid"] for r in good if r["event_ts"] >= base_ms + HOUR_MS)
    assert sorted(later.column("event_guid").to_pylist()) == want_later
    n = lake.read_duckdb("lake.events", "SELECT count(*) AS n FROM t WHERE event_ts >= "
                         f"TIMESTAMPTZ '{second_hour.isoformat()}'").column("n").to_pylist()
    assert n == [len(want_later)]


# --- Messages too large to load (item 8) ---------------------------------------------------

MIB = 1 << 20
KEPT = 64 * 1024


def event_line(guid, pad_to=None, pad=None):
    """An event as a JSON line (without newline), its `country` padded so the line is
    `pad_to` bytes long, or `pad` bytes of padding."""
    head = '{"event_guid":"%s","event_ts":1704067200000,"country":"' % guid
    tail = '"}'
    n = pad if pad is not None else (pad_to - len(head) - len(tail) if pad_to else 2)
    return head + "A" * n + tail


def run_measured(lake, *args, stdin=None):
    """Runs floe under /usr/bin/time -v: (completed process, peak RSS in bytes)."""
    p = subprocess.run(["/usr/bin/time", "-v", str(lake.bin), *map(str, args)], cwd=lake.dir,
                       env=lake.env(), stdin=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return p, int(rss.group(1)) * 1024


def test_lines_larger_than_the_limit_are_too_large_dead_letters_never_held(catalog_lake, tmp_path):
    lake = catalog_lake
    lake.run("table", "create", "--all")
    big = 120 * MIB  # each; holding one would take more than the whole bound below
    for source in ("file", "stdin"):
        p = f"{source}-"
        lines = [event_line(p + "a"), event_line(p + "edge", pad_to=MIB),
                 event_line(p + "big1", pad=big), event_line(p + "b"),
                 event_line(p + "over", pad_to=MIB + 1), event_line(p + "big2", pad=big),
                 event_line(p + "c")]
        path = tmp_path / f"{source}.jsonl"
        with open(path, "w") as f:
            for line in lines:
                f.write(line + "\n")
        if source == "file":
            out, rss = run_measured(lake, "load", "--table", "lake.events", "--input", path,
                                    "--max-message-size", "1MiB")
        else:
            lake.extra_env["FLOE__LIMITS__MAX_MESSAGE_BYTES"] = "1MiB"
            with open(path, "rb") as f:
                out, rss = run_measured(lake, "load", "--table", "lake.events", "--input", "-",
                                        stdin=f)
            del lake.extra_env["FLOE__LIMITS__MAX_MESSAGE_BYTES"]
        assert "dead letters too_large: 3" in out.stdout, out.stdout
        assert rss < 100 * MIB, f"{source}: peak RSS {rss / MIB:.0f} MiB"

        # The rows: every line up to the limit, the one of exactly 1 MiB included.
        rows = lake.read_pyiceberg("lake.events").column("event_guid").to_pylist()
        assert sorted(g for g in rows if g.startswith(p)) == \
            sorted(p + g for g in ("a", "edge", "b", "c"))
        # The dead letters: the first 64 KiB of each payload, its size and the limit.
        dead = [d for d in lake.read_pyiceberg("lake.events_dead_letters").to_pylist()
                if d["source_topic"].endswith(f"{source}.jsonl") or
                (source == "stdin" and d["source_topic"] == "file:stdin")]
        want = {line_no: line for line_no, line in enumerate(lines, 1)
                if len(line) > MIB}
        assert sorted(d["source_offset"] for d in dead) == sorted(want), dead
        for d in dead:
            line = want[d["source_offset"]].encode()
            assert d["error_kind"] == "too_large"
            assert d["payload"] == line[:KEPT]
            assert d["error_message"] == (
                f"message of {len(line)} bytes exceeds the limit of {MIB} bytes "
                f"(limits.max_message_bytes); payload truncated to the first {KEPT} bytes")
    n = lake.read_duckdb("lake.events", "SELECT count(*) AS n FROM t").column("n").to_pylist()
    assert n == [8]


# --- a hostile corpus through floe load and floe run -------------------------------------------

INJECTIONS = ["'; DROP TABLE lake.events; --", "\" OR 1=1 --", "${jndi:ldap://127.0.0.1/a}",
              "<script>alert(1)</script>", "../../../../etc/passwd", "%00%0a", "\u0000nul",
              "postgres://floe:hunter2@db/floe?password=hunter2", "🧊" * 50, "\u202eevil"]


def hostile_corpus(limit, huge=40 * MIB):
    """(payload, guid or None) pairs: events whose strings are injection attempts, far and
    odd timestamps, deep nesting, huge messages (up to `huge`), broken encodings and JSON."""
    rng = random.Random(23)
    out = []

    def event(guid, **over):
        e = {"eventGuid": guid, "timestamp": 1_704_067_200_000 + rng.randrange(10**8),
             "country": "fr", "action": "view", "userId": f"u{rng.randrange(10**6)}"}
        e.update(over)
        return json.dumps(e).encode()

    for i, s in enumerate(INJECTIONS):
        out.append((event(f"inj-{i}", country=s, page=s), f"inj-{i}"))
    for i, ts in enumerate([9_000_000_000_000_000, -9_000_000_000_000_000, 2**63 - 1,
                            "+275760-09-13T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                            "1e400", 1e308, -1, 0]):
        out.append((event(f"ts-{i}", timestamp=ts), f"ts-{i}"))
    for i, depth in enumerate([129, 10_000, 100_000]):
        nested = "[" * depth + "]" * depth
        out.append((event(f"deep-{i}").replace(b'"fr"', nested.encode()), f"deep-{i}"))
        out.append((("{\"a\":" * depth).encode() + b"1" + b"}" * depth, None))
    for i, size in enumerate([limit - 200, limit + 1, 3 * limit, huge]):
        out.append((event(f"big-{i}", page="P" * size), f"big-{i}"))
    out.append((b"\xff\xfe\xfd not utf-8", None))
    out.append((event("dup-keys") + b"", "dup-keys"))
    out.append((b'{"eventGuid": "dup-keys-2", "eventGuid": "again", "timestamp": 1}', None))
    out.append((b'{"eventGuid": "huge-int", "timestamp": 1704067200000, '
                b'"userId": 123456789012345678901234567890}', "huge-int"))
    out.append((b"[1, 2, 3]", None))
    out.append((b"null", None))
    out.append((b'"just a string"', None))
    out.append((b'{"eventGuid": "cut', None))
    for i in range(50):
        out.append((event(f"ok-{i}"), f"ok-{i}"))
    rng.shuffle(out)
    return out


def assert_corpus_accounted(lake, corpus, limit):
    """Every message is a row or a dead letter with a reason, once; nothing else."""
    rows = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    duck = Counter(lake.read_duckdb("lake.events", "SELECT event_guid FROM t")
                   .column("event_guid").to_pylist())
    assert rows == duck
    dead = lake.read_pyiceberg("lake.events_dead_letters").to_pylist()
    assert max(rows.values(), default=1) == 1, "a row loaded twice"
    assert sum(rows.values()) + len(dead) == len(corpus), (len(rows), len(dead), len(corpus))
    guids = {g for _, g in corpus if g}
    assert set(rows) <= guids, set(rows) - guids
    for d in dead:
        assert d["error_kind"] and d["error_message"], d
    dead_payloads = Counter(d["payload"] for d in dead)
    for payload, guid in corpus:
        if guid in rows:
            continue
        kept = payload if len(payload) <= limit else payload[:KEPT]
        assert dead_payloads[kept] >= 1, (guid, payload[:200])
        if len(payload) > limit:
            assert any(d["error_kind"] == "too_large" and d["payload"] == kept for d in dead)
    for payload, guid in corpus:
        if guid and guid.startswith(("inj-", "ok-")):
            assert guid in rows, guid
    injected = lake.read_pyiceberg("lake.events").to_pylist()
    countries = {r["event_guid"]: r["country"] for r in injected}
    for i, s in enumerate(INJECTIONS):
        assert countries[f"inj-{i}"] == s, "stored verbatim"


def test_a_hostile_corpus_through_floe_load_is_rows_or_dead_letters(catalog_lake, tmp_path):
    lake = catalog_lake
    limit = MIB
    corpus = hostile_corpus(limit)
    path = tmp_path / "hostile.jsonl"
    with open(path, "wb") as f:
        for payload, _ in corpus:
            f.write(payload + b"\n")
    lake.run("table", "create", "--all")
    lake.extra_env["FLOE__LIMITS__MAX_MESSAGE_BYTES"] = "1MiB"
    p, rss = run_measured(lake, "load", "--table", "lake.events", "--input", path)
    assert "panicked" not in p.stderr, p.stderr
    # The 40 MiB message is never held: memory is bounded by the limit, not the input.
    assert rss < 100 * MIB, f"peak RSS {rss / MIB:.0f} MiB"
    assert_corpus_accounted(lake, corpus, limit)


def test_a_hostile_corpus_through_floe_run_is_rows_or_dead_letters(catalog_lake, dev_broker,
                                                                   tmp_path):
    from confluent_kafka import Producer
    lake = catalog_lake
    # librdkafka's mock broker keeps 5 MB per partition (older messages go, as retention
    # would take them): the corpus stays below that.
    limit = 256 * 1024
    corpus = hostile_corpus(limit, huge=MIB)
    corpus.append((b"", None))  # an empty message
    lake.run("table", "create", "--all")
    prod = Producer({"bootstrap.servers": dev_broker, "message.max.bytes": 64 * MIB,
                     "batch.size": MIB})
    failed = []
    for payload, _ in corpus:
        prod.produce("events", value=payload, partition=0,
                     on_delivery=lambda err, msg: err and failed.append(err))
        prod.poll(0)
    assert prod.flush(60) == 0
    assert not failed, failed
    lake.extra_env["FLOE__LIMITS__MAX_MESSAGE_BYTES"] = "256KiB"
    p, rss = run_measured(lake, "run", "--brokers", dev_broker, "--topic", "events", "--table",
                          "lake.events", "--group", "hostile", "--until-drained")
    assert "panicked" not in p.stderr, p.stderr
    assert rss < 300 * MIB, f"peak RSS {rss / MIB:.0f} MiB"
    assert_corpus_accounted(lake, corpus, limit)


def raise_fd_limit(at_least):
    """Lifts this process's soft RLIMIT_NOFILE to its hard limit (to hold many sockets)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {at_least}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fd_limit(n):
    """A preexec_fn giving the child process `n` file descriptors at most."""
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def metrics_text(port):
    """`/metrics` of the process listening on `port`, or None when it does not answer."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None


def metric(text, name):
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def wait_for_rows(lake, table, n, proc, log, timeout=120):
    """Waits until `table` holds `n` rows (read with PyIceberg); fails if `proc` (logging to
    the file `log`) exits first."""
    deadline, rows = time.time() + timeout, 0
    while time.time() < deadline:
        assert proc.poll() is None, f"floe exited with {proc.returncode}: {log.read_text()[-3000:]}"
        snap = lake.pyiceberg_table(table).current_snapshot()
        rows = int(snap.summary.get("total-records", 0)) if snap else 0
        if rows >= n:
            return rows
        time.sleep(0.5)
    return rows


def test_ten_thousand_idle_connections_to_the_metrics_port_do_not_stop_the_loader(catalog_lake, dev_broker, tmp_path):
    """Item 4: clients of the metrics endpoint cannot take the loader's file descriptors. The
    loader runs with 4096 of them; 10,000 connections that never send a byte are opened to its
    metrics port while it loads; it keeps committing, /metrics answers again once the idle
    connections time out, and SIGTERM still ends it cleanly."""
    lake = catalog_lake
    raise_fd_limit(12_000)
    first = generated(lake, tmp_path, 2_000, seed=401)
    second = generated(lake, tmp_path, 2_000, seed=402)
    lake.run("table", "create", "--all")
    produce(lake, dev_broker, 2_000, seed=401)
    port = free_port()
    env = dict(lake.env(), FLOE__METRICS__LISTEN=f"127.0.0.1:{port}")
    log = tmp_path / "floe-run.log"
    with open(log, "w") as f:
        p = subprocess.Popen([str(lake.bin), *run_args(dev_broker, "--flush-interval", "500ms")],
                             cwd=lake.dir, env=env, stdout=subprocess.DEVNULL, stderr=f,
                             preexec_fn=fd_limit(4096))
    try:
        loaded = len(split(first)[0])
        assert wait_for_rows(lake, "lake.events", loaded, p, log) == loaded
        # 10,000 connections that send nothing: connected without waiting (a listener that
        # stopped accepting leaves them pending, as a real flood would).
        idle = []
        for _ in range(10_000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        produce(lake, dev_broker, 2_000, seed=402)
        good = len(split(first)[0]) + len(split(second)[0])
        assert wait_for_rows(lake, "lake.events", good, p, log) == good
        # The idle connections time out (metrics.read_timeout) and /metrics answers again,
        # counting the connections it closed unserved.
        deadline, text = time.time() + 120, None
        while text is None and time.time() < deadline and p.poll() is None:
            text = metrics_text(port)
            time.sleep(0.5)
        assert text is not None, "/metrics never answered again"
        assert metric(text, "floe_metrics_connections_refused_total") > 0
        assert metric(text, "floe_messages_received_total") == 4_000
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
        for s in idle:
            s.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert_exactly(lake, first + second)


def test_a_failed_dedup_rebuild_is_retried_and_counts_nothing_twice(catalog_lake, dev_broker, tmp_path):
    """Item 10: rebuilding the dedup state when partitions are assigned fails (twice); the
    loader retries it instead of failing every later flush until a restart, and the rebuilt
    state keeps the aggregates exact: the stream sent again is all duplicates of events
    already counted."""
    from test_aggregates import assert_aggregates_exact, prepared_with_duplicates
    lake = catalog_lake
    payloads = prepared_with_duplicates(lake, dev_broker, tmp_path, 3_000, seed=411)
    args = run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "300ms", "--until-drained")
    lake.run(*args, timeout=120)
    produce(lake, dev_broker, 3_000, seed=411, malformed=0.01, duplicates=0.05)
    lake.extra_env["FLOE_FAILPOINTS"] = "dedup-rebuild=error:2"
    done = lake.run(*args, timeout=120)
    assert done.stderr.count("failpoint dedup-rebuild: failing") == 2, done.stderr
    good, _ = split(payloads)
    assert lake.read_pyiceberg("lake.events").num_rows == 2 * len(good)
    assert_aggregates_exact(lake)


# Total session duration per hour into an `int` column: five events of 2e9 s overflow it.
DURATION_TOTAL_SQL = """-- source: lake.events
-- target: lake.events_duration_total
-- key: window_start
-- merge: duration_total=sum
SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start,
       sum(session_duration) AS duration_total
FROM batch
GROUP BY 1
"""

DURATION_TOTAL_TABLE = {
    "format-version": 2,
    "schema": {"type": "struct", "schema-id": 0, "fields": [
        {"id": 1, "name": "window_start", "required": True, "type": "timestamptz"},
        {"id": 2, "name": "duration_total", "required": True, "type": "int"},
    ]},
    "partition-spec": {"fields": [
        {"source-id": 1, "field-id": 1000, "name": "window_start_day", "transform": "day"}]},
}


def test_an_aggregate_that_overflows_its_column_stops_the_loader_with_the_reason(catalog_lake, dev_broker, tmp_path):
    """Item 11: a flush that fails for a reason retrying cannot change (an aggregate's total
    overflows its `int` column) stops the loader with the table and the reason, instead of
    being rewound and retried for ever; nothing of the batch is committed."""
    import json

    from confluent_kafka import Producer
    lake = catalog_lake
    (lake.dir / "sql" / "aggregates").mkdir(parents=True)
    (lake.dir / "sql" / "aggregates" / "duration_total.sql").write_text(DURATION_TOTAL_SQL)
    (lake.dir / "schemas" / "lake.events_duration_total.json").write_text(json.dumps(DURATION_TOTAL_TABLE))
    lake.run("table", "create", "--all")
    template = json.loads(generated(lake, tmp_path, 1, seed=421)[0])
    prod = Producer({"bootstrap.servers": dev_broker})
    for i in range(5):
        event = dict(template, eventGuid=f"long-{i}", session_duration=2_000_000_000)
        prod.produce("events", value=json.dumps(event).encode(), key=event["eventGuid"])
    assert prod.flush(30) == 0
    # One batch (flushed once drained): its total is 10^10.
    p = lake.run(*run_args(dev_broker, "--flush-interval", "1h", "--until-drained"), check=False,
                 timeout=120)
    assert p.returncode != 0, p.stderr
    error = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert error, p.stderr
    assert "lake.events" in error[0] and "duration_total" in error[0], error
    assert "10000000000" in error[0] and "Int32" in error[0], error
    assert lake.pyiceberg_table("lake.events_duration_total").current_snapshot() is None
    assert lake.pyiceberg_table("lake.events").current_snapshot() is None


def test_a_commit_that_fails_transiently_is_retried_and_loads_each_message_once(catalog_lake, dev_broker, tmp_path):
    """Item 11: the raw table's commit fails three times in a row with an error retrying may
    mend (an I/O error); each time the loader rewinds and retries after a pause, then loads
    every message exactly once."""
    from test_kafka_loader import prepared
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 3_000, seed=431, malformed=0.02)
    lake.extra_env["FLOE_FAILPOINTS"] = "before-table-commit=error:3"
    done = lake.run(*run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "300ms",
                              "--until-drained"), timeout=120)
    assert done.stderr.count("failpoint before-table-commit: failing") == 3, done.stderr
    assert_exactly(lake, payloads)


def test_the_dedup_state_stays_under_its_cap_and_says_what_it_forgot(catalog_lake, dev_broker, tmp_path):
    """Item 10: the aggregates' dedup state holds at most `dedup_max_keys` ids; past it the
    oldest are forgotten, with a warning, and (as documented) a later duplicate of a
    forgotten id counts again. 1,000 distinct events then duplicates of the 100 oldest, on one
    partition, with a cap of 500: the aggregates count 1,100 events."""
    import json

    from confluent_kafka import Producer

    from test_kafka_loader import START_MS
    lake = catalog_lake
    (lake.dir / "floe.toml").write_text(
        '[[pipelines]]\ntopics = ["events"]\ntable = "lake.events"\ndedup_max_keys = 500\n')
    lake.run("table", "create", "--all")
    template = json.loads(generated(lake, tmp_path, 1, seed=441)[0])
    prod = Producer({"bootstrap.servers": dev_broker})
    for i in list(range(1_000)) + list(range(100)):
        event = dict(template, eventGuid=f"e{i}", timestamp=START_MS + i * 1_000)
        prod.produce("events", value=json.dumps(event).encode(), key=event["eventGuid"], partition=0)
    assert prod.flush(30) == 0
    done = lake.run(*run_args(dev_broker, "--until-drained", "--chunk-rows", "100"), timeout=120)
    assert "reached dedup_max_keys" in done.stderr, done.stderr
    assert lake.read_pyiceberg("lake.events").num_rows == 1_100
    total = lake.read_duckdb("lake.events_hourly_multi", "SELECT sum(event_count) AS n FROM t")
    assert total.column("n")[0].as_py() == 1_100

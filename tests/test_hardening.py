"""floe under hostile operators and inputs (issue 23): secrets never printed, a metrics
endpoint no client can use to starve the loader, failures that retrying cannot mend stop the
loader, and a dedup state that survives a failed rebuild."""

import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import free_port
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


def test_ten_thousand_idle_connections_to_the_metrics_port_do_not_stop_the_loader(sqlite_lake, dev_broker, tmp_path):
    """Item 4: clients of the metrics endpoint cannot take the loader's file descriptors. The
    loader runs with 4096 of them; 10,000 connections that never send a byte are opened to its
    metrics port while it loads; it keeps committing, /metrics answers again once the idle
    connections time out, and SIGTERM still ends it cleanly."""
    lake = sqlite_lake
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


def test_a_failed_dedup_rebuild_is_retried_and_counts_nothing_twice(sqlite_lake, dev_broker, tmp_path):
    """Item 10: rebuilding the dedup state when partitions are assigned fails (twice); the
    loader retries it instead of failing every later flush until a restart, and the rebuilt
    state keeps the aggregates exact: the stream sent again is all duplicates of events
    already counted."""
    from test_aggregates import assert_aggregates_exact, prepared_with_duplicates
    lake = sqlite_lake
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


def test_an_aggregate_that_overflows_its_column_stops_the_loader_with_the_reason(sqlite_lake, dev_broker, tmp_path):
    """Item 11: a flush that fails for a reason retrying cannot change (an aggregate's total
    overflows its `int` column) stops the loader with the table and the reason, instead of
    being rewound and retried for ever; nothing of the batch is committed."""
    import json

    from confluent_kafka import Producer
    lake = sqlite_lake
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


def test_a_commit_that_fails_transiently_is_retried_and_loads_each_message_once(sqlite_lake, dev_broker, tmp_path):
    """Item 11: the raw table's commit fails three times in a row with an error retrying may
    mend (an I/O error); each time the loader rewinds and retries after a pause, then loads
    every message exactly once."""
    from test_kafka_loader import prepared
    lake = sqlite_lake
    payloads = prepared(lake, dev_broker, tmp_path, 3_000, seed=431, malformed=0.02)
    lake.extra_env["FLOE_FAILPOINTS"] = "before-table-commit=error:3"
    done = lake.run(*run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "300ms",
                              "--until-drained"), timeout=120)
    assert done.stderr.count("failpoint before-table-commit: failing") == 3, done.stderr
    assert_exactly(lake, payloads)


def test_the_dedup_state_stays_under_its_cap_and_says_what_it_forgot(sqlite_lake, dev_broker, tmp_path):
    """Item 10: the aggregates' dedup state holds at most `dedup_max_keys` ids; past it the
    oldest are forgotten, with a warning, and (as documented) a later duplicate of a
    forgotten id counts again. 1,000 distinct events then duplicates of the 100 oldest, on one
    partition, with a cap of 500: the aggregates count 1,100 events."""
    import json

    from confluent_kafka import Producer

    from test_kafka_loader import START_MS
    lake = sqlite_lake
    (lake.dir / "floe.toml").write_text(
        '[[pipelines]]\ntopics = ["events"]\ntable = "lake.events"\ndedup_max_keys = 500\n')
    lake.run("table", "create", "--all")
    template = json.loads(generated(lake, tmp_path, 1, seed=441)[0])
    prod = Producer({"bootstrap.servers": dev_broker})
    for i in list(range(1_000)) + list(range(100)):
        event = dict(template, eventGuid=f"e{i}", timestamp=START_MS + i * 1_000)
        prod.produce("events", value=json.dumps(event).encode(), key=event["eventGuid"], partition=0)
    assert prod.flush(30) == 0
    lake.extra_env["FLOE_CHUNK_ROWS"] = "100"
    done = lake.run(*run_args(dev_broker, "--until-drained"), timeout=120)
    assert "reached dedup_max_keys" in done.stderr, done.stderr
    assert lake.read_pyiceberg("lake.events").num_rows == 1_100
    total = lake.read_duckdb("lake.events_hourly_multi", "SELECT sum(event_count) AS n FROM t")
    assert total.column("n")[0].as_py() == 1_100

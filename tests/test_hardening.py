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

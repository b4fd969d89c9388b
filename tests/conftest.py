"""Shared fixtures for floe's end-to-end tests: the floe binary, a scratch working directory,
a throwaway PostgreSQL server, and independent Iceberg readers (PyIceberg, DuckDB, and Apache
Iceberg's Java library in a Spark worker)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from readers import Lake

ROOT = Path(__file__).resolve().parent.parent


def _build_floe() -> Path:
    if os.environ.get("FLOE_BIN"):
        return Path(os.environ["FLOE_BIN"])
    out = subprocess.run(
        ["cargo", "build", "-p", "floe-cli", "--message-format=json-render-diagnostics"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "floe":
            return Path(msg["executable"])
    raise RuntimeError("cargo build did not produce the floe binary")


@pytest.fixture(scope="session")
def floe_bin() -> Path:
    return _build_floe()


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server on 127.0.0.1 for the whole session (scripts/postgres). A free port
    can be taken by another process (an outgoing connection's ephemeral port) before the
    server binds it: then it starts again on another one."""
    for attempt in range(5):
        port = str(free_port())
        data = Path(f"/tmp/floe-pg-{os.getuid()}-{port}")
        shutil.rmtree(data, ignore_errors=True)
        started = subprocess.run([ROOT / "scripts" / "postgres", "start", str(data), port],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if started.returncode == 0:
            break
        log = data / "server.log"
        reason = log.read_text()[-2000:] if log.exists() else started.stderr[-2000:]
        shutil.rmtree(data, ignore_errors=True)
        if attempt == 4 or "Address already in use" not in reason:
            raise RuntimeError(f"postgres did not start on port {port}: {reason}")
    uri = started.stdout.strip()
    yield uri
    subprocess.run([ROOT / "scripts" / "postgres", "stop", str(data)], check=False)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_database(pg_server):
    """A fresh database per test on the session's server."""
    import uuid
    import psycopg2
    name = "t_" + uuid.uuid4().hex[:12]
    base = pg_server.rsplit("/", 1)[0]
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    yield f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
def lake(request, tmp_path, floe_bin):
    """A floe working directory with its catalog on SQLite or PostgreSQL."""
    if request.param == "postgres":
        uri = request.getfixturevalue("pg_database")
    else:
        uri = f"sqlite://{tmp_path}/floe-data/catalog.db"
    lake = Lake(floe_bin, tmp_path, uri, f"{tmp_path}/floe-data/warehouse")
    yield lake
    lake.close()


@pytest.fixture
def sqlite_lake(tmp_path, floe_bin):
    lake = Lake(floe_bin, tmp_path, f"sqlite://{tmp_path}/floe-data/catalog.db",
                f"{tmp_path}/floe-data/warehouse")
    yield lake
    lake.close()


@pytest.fixture(scope="session")
def iceberg_java():
    """Apache Iceberg's Java library (Spark 3.5 + Iceberg 1.10, what Trino and Spark run) in
    one long-lived Spark worker for the session (readers.SparkWorker; ~7 s to start). A test
    that asks for it reads and writes a lake with `lake.java_sql(sql)` and
    `lake.read_java(name)`, each lake in a Spark session of its own. The stack is
    $FLOE_ICEBERG_JAVA (scripts/test exports it), else scripts/iceberg-java installs it."""
    from readers import spark_worker, stop_spark_worker
    yield spark_worker()
    stop_spark_worker()


def wait_for_port(port, proc, name, timeout=30):
    """Waits until `proc` listens on 127.0.0.1:`port`; kills it and raises if it exits first
    or does not listen within `timeout` seconds."""
    import socket
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout} s")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_KEYS = {"access_key_id": "floe-test-key", "secret_access_key": "floe-test-secret-4f9a"}


@pytest.fixture(scope="session")
def moto_server():
    """An S3 server (moto_server from PyPI, in memory) on 127.0.0.1; yields its endpoint."""
    import sys
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    p = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, p, "moto_server")
    yield f"http://127.0.0.1:{port}"
    p.kill()
    p.wait()


@pytest.fixture
def s3_proxy(moto_server):
    """A fault-injecting TCP proxy in front of the S3 server (tests/faultproxy.py)."""
    from faultproxy import FaultProxy
    host, port = moto_server.split("://", 1)[1].split(":")
    proxy = FaultProxy(host, int(port))
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_lake(request, tmp_path, floe_bin, pg_database, moto_server):
    """A floe working directory with its catalog on PostgreSQL and its warehouse on S3 (a
    fresh bucket); through the fault proxy when the test also asks for `s3_proxy`."""
    import uuid
    from readers import s3_client
    endpoint = moto_server
    if "s3_proxy" in request.fixturenames:
        endpoint = request.getfixturevalue("s3_proxy").endpoint
    s3 = dict(S3_KEYS, endpoint=endpoint)
    bucket = "lake-" + uuid.uuid4().hex[:10]
    s3_client(dict(S3_KEYS, endpoint=moto_server)).create_bucket(Bucket=bucket)
    lake = Lake(floe_bin, tmp_path, pg_database, f"s3://{bucket}/warehouse", s3=s3)
    # Readers go to the server directly (the proxy's faults are for floe).
    lake.reader_s3 = dict(S3_KEYS, endpoint=moto_server)
    yield lake
    lake.close()


@pytest.fixture
def dev_broker(floe_bin, tmp_path):
    """`floe dev-broker` in its own process (6 partitions per topic); yields its bootstrap."""
    port = free_port()
    p = subprocess.Popen([str(floe_bin), "dev-broker", "--port", str(port), "--partitions", "6",
                          "--topic", "events", "--topic", "events.dead-letters"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    assert "dev broker up" in line, line
    wait_for_port(port, p, "floe dev-broker", timeout=10)
    yield f"127.0.0.1:{port}"
    p.kill()
    p.wait()


class Tansu:
    """A Tansu broker (a Kafka-protocol broker no one here wrote, scripts/tansu) in its own
    process, storing into SQLite under `workdir` so a restart keeps every message."""

    def __init__(self, binary, workdir):
        self.bin = str(binary)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.url = f"tcp://{self.bootstrap}"
        self.proc = None

    def start(self, authentication=False, advertised=None):
        """Starts the broker; `advertised` (host:port) is the address it gives clients, e.g.
        a proxy's."""
        log = open(self.dir / "broker.log", "a")
        advertised = f"tcp://{advertised}" if advertised else self.url
        self.proc = subprocess.Popen(
            [self.bin, "broker", "--listener-url", self.url, "--advertised-listener-url", advertised,
             "--storage-engine", "sqlite://tansu.db", *(["--authentication"] if authentication else [])],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, self.proc, "tansu")
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {(self.dir / 'broker.log').read_text()[-2000:]}") from None
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def panic(self):
        """The first panic Tansu's log shows (its own bug: e.g. 0.6.0's storage service dies
        and `update_group` hits `unreachable!()`), or None."""
        log = (self.dir / "broker.log").read_text(errors="replace")
        at = log.find("panicked at")
        return None if at < 0 else log[at:at + 300]

    def _cli(self, *args):
        subprocess.run([self.bin, *map(str, args)], cwd=self.dir, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

    def topic(self, name, partitions):
        self._cli("topic", "create", "--broker", self.url, "--partitions", partitions, name)

    def user(self, name, password):
        self._cli("user", "create", "--broker", self.url, "--mechanism", "scram512", name, password)


@pytest.fixture(scope="session")
def tansu_bin():
    """The Tansu binary: $FLOE_TANSU, else `scripts/tansu path` (builds it once, cached)."""
    if os.environ.get("FLOE_TANSU"):
        return os.environ["FLOE_TANSU"]
    return subprocess.run([ROOT / "scripts" / "tansu", "path"], check=True,
                          stdout=subprocess.PIPE, text=True).stdout.strip()


@pytest.fixture
def tansu(tansu_bin, tmp_path):
    broker = Tansu(tansu_bin, tmp_path / "tansu")
    yield broker
    broker.stop()

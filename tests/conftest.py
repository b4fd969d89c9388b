"""Shared fixtures for floe's end-to-end tests: the floe binary, a scratch working directory,
a throwaway PostgreSQL server, an Iceberg REST catalog (with a gate for auth, faults and TLS),
and independent Iceberg readers (PyIceberg, DuckDB, and Apache Iceberg's Java library in a
Spark worker)."""

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


@pytest.fixture(params=["sqlite", "postgres", "rest"])
def lake(request, tmp_path, floe_bin):
    """A floe working directory with its catalog on SQLite, PostgreSQL or the REST server
    (Iceberg Java's own handlers, through a fault-free gate)."""
    if request.param == "rest":
        lake = request.getfixturevalue("rest_lake")
        yield lake
        return
    if request.param == "postgres":
        uri = request.getfixturevalue("pg_database")
    else:
        uri = f"sqlite://{tmp_path}/floe-data/catalog.db"
    lake = Lake(floe_bin, tmp_path, uri, f"{tmp_path}/floe-data/warehouse")
    yield lake
    lake.close()


@pytest.fixture(params=["sqlite", "rest"])
def catalog_lake(request, tmp_path, floe_bin):
    """A floe working directory on the embedded SQLite catalog or on the REST server: for the
    end-to-end tests of everything that goes through the catalog (the Kafka loader, loads,
    maintenance, evolution, replay, aggregates). PostgreSQL adds nothing there that `lake`
    does not cover."""
    if request.param == "rest":
        lake = request.getfixturevalue("rest_lake")
        yield lake
        return
    lake = Lake(floe_bin, tmp_path, f"sqlite://{tmp_path}/floe-data/catalog.db",
                f"{tmp_path}/floe-data/warehouse")
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
    proc.wait()
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout} s")


def stop_process(proc, grace=10):
    """Stops `proc` (if it runs): SIGTERM, then SIGKILL after `grace` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        stop_process(self.proc)

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


# --- Iceberg REST catalog ------------------------------------------------------------------

class RestServer:
    """tests/java/MiniRestCatalogServer.java (Iceberg's own CatalogHandlers over JdbcCatalog)
    in its own process, multi-tenant: each warehouse name W (GET /v1/config?warehouse=W) is a
    catalog of its own, SQLite database `base/W.db`, files under `base/W/`."""

    def __init__(self, home, base, threads=8, config=None):
        self.home = Path(home)
        self.base = Path(base)
        self.threads = threads
        self.config = config
        self.proc = None
        self.port = None
        self.log = self.base / "server.log"

    @property
    def uri(self):
        return f"http://127.0.0.1:{self.port}"

    def new_warehouse(self):
        """A fresh warehouse (tenant) name."""
        import uuid
        return "wh_" + uuid.uuid4().hex[:12]

    def warehouse_dir(self, warehouse):
        """Where the server keeps warehouse `warehouse`'s files."""
        return self.base / warehouse

    def start(self):
        self.base.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, REST_TENANTS_DIR=str(self.base))
        if self.config is not None:
            env["REST_CONFIG_JSON"] = json.dumps(self.config)
        for attempt in range(5):
            self.port = free_port()
            with open(self.log, "a") as log:
                self.proc = subprocess.Popen(
                    [str(self.home / "rest-catalog.sh"), str(self.port),
                     f"jdbc:sqlite:{self.base}/default.db", f"file://{self.base}/default",
                     str(self.threads)],
                    stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                wait_for_port(self.port, self.proc, "the REST catalog server", timeout=60)
                return self
            except RuntimeError as e:
                self.stop()
                tail = self.log_tail()
                if attempt == 4 or "Address already in use" not in tail:
                    raise RuntimeError(f"{e}: {tail}") from None

    def log_tail(self, n=3000):
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self):
        stop_process(self.proc)


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory):
    """The REST catalog server for the session (from the Iceberg Java stack, not Spark: no
    worker starts for it). A test takes a warehouse of its own: `rest_server.new_warehouse()`,
    and talks to `rest_server.uri` (or a `rest_gate` in front of it)."""
    from readers import iceberg_java_home
    server = RestServer(iceberg_java_home(), tmp_path_factory.mktemp("rest-catalog")).start()
    yield server
    server.stop()


@pytest.fixture
def rest_gate(rest_server):
    """A gate (tests/restgate.py) in front of the session's REST server: no auth and no faults
    until the test sets them (`rest_gate.require_auth = True`, `rest_gate.clients[...]`,
    `rest_gate.status_after_forward(502)`, …); `rest_gate.seen()` is what it was sent."""
    from restgate import RestGate
    with RestGate(rest_server.uri) as gate:
        yield gate


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    """A throwaway CA (`.ca`, PEM) and a server certificate it signed for 127.0.0.1 and
    localhost (`.cert`, `.key`): RestGate(uri, tls=(tls_certs.cert, tls_certs.key))."""
    from types import SimpleNamespace
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, cwd=d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3",
            "-subj", "/CN=floe tests CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "3", "-extfile", "server.ext")
    return SimpleNamespace(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key", dir=d)


@pytest.fixture
def rest_lake(request, tmp_path, rest_server, rest_gate):
    """A floe working directory whose catalog is the REST server (through `rest_gate`), in a
    warehouse of its own. floe is built only when the test runs it (`lake.run`), so the
    fixture also serves tests of the tooling alone; `lake.bin` is None until then."""
    warehouse = rest_server.new_warehouse()
    lake = Lake(_LazyFloe(request), tmp_path, rest_gate.endpoint, warehouse, kind="rest",
                warehouse_dir=rest_server.warehouse_dir(warehouse))
    lake.rest_gate = rest_gate
    lake.rest_server = rest_server
    yield lake
    lake.close()


class _LazyFloe:
    """The floe binary, built (the `floe_bin` fixture) when first used as a path."""

    def __init__(self, request):
        self._request = request
        self._path = None

    def __fspath__(self):
        if self._path is None:
            self._path = os.fspath(self._request.getfixturevalue("floe_bin"))
        return self._path

    def __str__(self):
        return self.__fspath__()


# --- Vended credentials: a REST catalog handing out S3 credentials S3 enforces -------------

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "vended(**options): options of the `vended_rest` server (tests/pyrest.py "
        "PyRestServer: vend, vend_ttl_s, use_storage_credentials, revoke_old, enforce_expiry)")


@pytest.fixture(scope="session")
def vended_s3(tmp_path_factory):
    """An S3 server of its own for the session that enforces credentials (tests/vendeds3.py:
    moto with IAM auth on): `.endpoint`, `.admin` (keys allowed everything, a settings dict
    for readers.s3_client), `.vend(prefix, ttl_s)` / `.revoke(cred)` (STS credentials allowed
    on one prefix), `.client(cred)`, `.requests(access_key_id)` (what S3 got, by key)."""
    from vendeds3 import AuthS3
    s3 = AuthS3(log=tmp_path_factory.mktemp("vended-s3") / "server.log").start()
    yield s3
    s3.stop()


@pytest.fixture
def vended_rest(request, tmp_path, vended_s3, monkeypatch):
    """An Iceberg REST catalog for this test (tests/pyrest.py: PyIceberg's SqlCatalog in a
    thread) with its warehouse in a fresh bucket of `vended_s3`, vending credentials to
    clients that send `X-Iceberg-Access-Delegation: vended-credentials`. Options from
    `@pytest.mark.vended(revoke_old=True, vend_ttl_s=…)`, or set its attributes at any time.
    Yields the server: `.uri`, `.warehouse` (the name clients give), `.location`
    (s3://bucket/warehouse), `.vends`, `.credentials`, `.current(table)`, `.requests`,
    `.seen(method, path)`, `.fail_next`. No ambient AWS credentials reach the test's clients
    (nor floe), and no AWS SDK probes the EC2 metadata service."""
    import uuid
    from pyrest import PyRestServer
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    marker = request.node.get_closest_marker("vended")
    options = marker.kwargs if marker else {}
    server = PyRestServer(vended_s3, tmp_path / "pyrest", bucket="vended-" + uuid.uuid4().hex[:10],
                          **options)
    with server:
        yield server


@pytest.fixture
def vended_lake(request, tmp_path, vended_rest):
    """A floe working directory on `vended_rest` with no S3 keys of its own: floe gets the
    endpoint (FLOE__S3__ENDPOINT, REGION, PATH_STYLE) and
    FLOE__CATALOG__ACCESS_DELEGATION=vended-credentials, and must use what the catalog vends.
    Readers (PyIceberg, DuckDB) use the S3 admin's keys and ask the catalog for no
    credentials, so they never cause a vend (nor, with revoke_old, revoke floe's). floe is
    built only when the test runs it."""
    from pyrest import vended_lake as make
    lake = make(_LazyFloe(request), tmp_path, vended_rest)
    yield lake
    lake.close()

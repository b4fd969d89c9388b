"""The REST catalog test tooling, checked without floe: the multi-tenant Iceberg REST server
(tests/java/MiniRestCatalogServer.java), the gate in front of it (tests/restgate.py: OAuth2,
faults on commits, TLS, the request record) and the `rest_lake` fixture, driven by PyIceberg's
RestCatalog and Apache Iceberg Java's REST client."""

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
import requests
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import (CommitFailedException, CommitStateUnknownException,
                                  NoSuchNamespaceError, OAuthError, ServiceUnavailableError,
                                  TooManyRequestsError, UnauthorizedError)

from restgate import RestGate

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def rows(n, start=0):
    return pa.table({"id": list(range(start, start + n)),
                     "name": [f"n{i}" for i in range(start, start + n)]}, schema=SCHEMA)


def catalog(gate_or_uri, warehouse, **props):
    uri = gate_or_uri if isinstance(gate_or_uri, str) else gate_or_uri.endpoint
    return RestCatalog("t", uri=uri, warehouse=warehouse, **props)


def new_table(cat, name="lake.t", retries=None):
    """A table with 3 rows (commit retries off with retries=0: a conflict then raises)."""
    cat.create_namespace_if_not_exists(name.split(".")[0])
    props = {} if retries is None else {"commit.retry.num-retries": str(retries)}
    t = cat.create_table(name, schema=SCHEMA, properties=props)
    t.append(rows(3))
    return t


def ids(cat, name="lake.t"):
    return sorted(cat.load_table(name).scan().to_arrow().column("id").to_pylist())


def http(method, url, headers=None, data=None, context=None):
    """(status, JSON body or None) of one plain request."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body else None


def test_warehouses_are_separate_catalogs(rest_server, rest_gate):
    w1, w2 = rest_server.new_warehouse(), rest_server.new_warehouse()
    c1 = catalog(rest_gate, w1)
    new_table(c1)
    assert ids(c1) == [0, 1, 2]
    # The warehouse is the prefix of every request after the config.
    assert rest_gate.seen("GET", r"/v1/config$")[0].query == {"warehouse": [w1]}
    assert rest_gate.seen("POST", rf"^/v1/{w1}/namespaces/lake/tables$")
    # Its files are where rest_server says.
    data = list((rest_server.warehouse_dir(w1) / "lake" / "t" / "data").glob("*.parquet"))
    assert len(data) == 1
    # Another warehouse does not see it, nor does the default catalog (no prefix).
    c2 = catalog(rest_gate, w2)
    assert c2.list_namespaces() == []
    assert not c2.table_exists("lake.t")
    with pytest.raises(NoSuchNamespaceError):
        c2.list_tables("lake")
    assert not RestCatalog("d", uri=rest_gate.endpoint).table_exists("lake.t")
    # Both can hold a table of the same name.
    new_table(c2)
    c2.load_table("lake.t").append(rows(2, 10))
    assert ids(c2) == [0, 1, 2, 10, 11] and ids(c1) == [0, 1, 2]


def test_config_and_bad_warehouse_names(rest_server, rest_gate):
    status, body = http("GET", f"{rest_gate.endpoint}/v1/config?warehouse=a_B-9")
    assert status == 200 and body["overrides"] == {"prefix": "a_B-9"}, body
    status, body = http("GET", f"{rest_server.uri}/v1/config")
    assert status == 200 and body["overrides"] == {} and body["defaults"] == {}, body
    for bad in ("a%2Fb", "..", "a.b", "namespaces"):
        status, body = http("GET", f"{rest_gate.endpoint}/v1/config?warehouse={bad}")
        assert status == 400, (bad, body)
        assert body["error"]["code"] == 400 and body["error"]["type"] == "BadRequestException"
    status, body = http("GET", f"{rest_gate.endpoint}/v1/a.b/namespaces")
    assert status == 400, body
    # The gate's own additions to the config answer.
    rest_gate.inject_catalog_config = {"overrides": {"x": "1"}, "idempotency-key-lifetime": "PT1H"}
    status, body = http("GET", f"{rest_gate.endpoint}/v1/config?warehouse=w")
    assert body["overrides"] == {"prefix": "w", "x": "1"}, body
    assert body["idempotency-key-lifetime"] == "PT1H"


def test_bodies_and_queries_pass_through(rest_server, rest_gate):
    """A chunked request body, a query string, HEAD, 204 and error statuses."""
    import http.client
    w = rest_server.new_warehouse()
    conn = http.client.HTTPConnection("127.0.0.1", rest_gate.port, timeout=30)
    body = json.dumps({"namespace": ["a\u00e9"], "properties": {"k": "v" * 5000}}).encode()
    conn.request("POST", f"/v1/{w}/namespaces", body=iter([body[:100], body[100:]]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 200, r.read()
    assert json.loads(r.read())["properties"]["k"] == "v" * 5000
    # The same connection (keep-alive) goes on.
    conn.request("HEAD", f"/v1/{w}/namespaces/a%C3%A9")
    r = conn.getresponse()
    assert r.status == 204 and r.read() == b""
    conn.request("GET", f"/v1/{w}/namespaces?parent=nope")
    r = conn.getresponse()
    assert r.status == 404 and json.loads(r.read())["error"]["type"] == \
        "NoSuchNamespaceException"
    conn.close()
    assert rest_gate.seen("GET", "namespaces$")[-1].query == {"parent": ["nope"]}
    assert [r.status for r in rest_gate.seen()] == [200, 204, 404]


def test_server_config_json(tmp_path):
    """REST_CONFIG_JSON is merged into the server's config answer (a server of its own)."""
    from conftest import RestServer
    from readers import iceberg_java_home
    extra = {"defaults": {"a": "1"}, "overrides": {"b": "2"},
             "endpoints": ["GET /v1/{prefix}/namespaces"], "idempotency-key-lifetime": "PT30M"}
    server = RestServer(iceberg_java_home(), tmp_path / "rest", threads=2, config=extra).start()
    try:
        status, body = http("GET", f"{server.uri}/v1/config?warehouse=x")
        assert status == 200
        assert body == {"defaults": {"a": "1"}, "overrides": {"b": "2", "prefix": "x"},
                        "endpoints": ["GET /v1/{prefix}/namespaces"],
                        "idempotency-key-lifetime": "PT30M"}
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_stale_base_gets_409(rest_server, rest_gate):
    cat = catalog(rest_gate, rest_server.new_warehouse())
    new_table(cat, retries=0)
    a, b = cat.load_table("lake.t"), cat.load_table("lake.t")
    a.append(rows(1, 100))
    with pytest.raises(CommitFailedException, match="Requirement failed"):
        b.append(rows(1, 200))
    assert [r.status for r in rest_gate.commits()][-2:] == [200, 409]
    assert ids(cat) == [0, 1, 2, 100]


def test_concurrent_commits_all_land(rest_server, rest_gate):
    """Four writers on one table: the server's compare-and-swap (SQLite) loses none."""
    w = rest_server.new_warehouse()
    new_table(catalog(rest_gate, w), retries=20)
    errors = []

    def writer(k):
        cat = catalog(rest_gate, w)
        try:
            for i in range(4):
                cat.load_table("lake.t").append(rows(1, 1000 * (k + 1) + i))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    expect = [0, 1, 2] + [1000 * (k + 1) + i for k in range(4) for i in range(4)]
    assert ids(catalog(rest_gate, w)) == sorted(expect)
    assert len(catalog(rest_gate, w).load_table("lake.t").snapshots()) == 17


@pytest.mark.parametrize("code", [500, 502, 504])
def test_status_after_forward_is_applied(rest_server, rest_gate, code):
    cat = catalog(rest_gate, rest_server.new_warehouse())
    t = new_table(cat)
    fault = rest_gate.status_after_forward(code)
    with pytest.raises(CommitStateUnknownException):
        t.append(rows(2, 10))
    assert fault.fired == 1
    assert rest_gate.commits()[-1].status == code
    assert rest_gate.commits()[-1].fault == "status_after"
    # The server applied it: a reload shows it.
    assert ids(cat) == [0, 1, 2, 10, 11]
    # times=1: the next commit goes through.
    cat.load_table("lake.t").append(rows(1, 20))
    assert fault.fired == 1 and ids(cat) == [0, 1, 2, 10, 11, 20]


def test_cut_after_forward_is_applied(rest_server, rest_gate):
    cat = catalog(rest_gate, rest_server.new_warehouse())
    t = new_table(cat)
    fault = rest_gate.cut_after_forward()
    with pytest.raises(requests.ConnectionError):
        t.append(rows(1, 10))
    assert fault.fired == 1 and rest_gate.commits()[-1].status is None
    assert ids(cat) == [0, 1, 2, 10]


def test_status_before_forward_is_not_applied(rest_server, rest_gate):
    cat = catalog(rest_gate, rest_server.new_warehouse())
    t = new_table(cat)
    new_table(cat, "lake.other")
    snapshot = cat.load_table("lake.t").current_snapshot().snapshot_id
    # A rule for another table does not fire on this one.
    other = rest_gate.status_before_forward(503, table="lake.other")
    t.append(rows(1, 10))
    assert other.fired == 0
    fault = rest_gate.status_before_forward(503, times=2)
    t = cat.load_table("lake.t")
    with pytest.raises(ServiceUnavailableError):
        t.append(rows(1, 20))
    assert fault.fired == 1
    throttle = rest_gate.status_before_forward(429, retry_after=1)
    with pytest.raises(ServiceUnavailableError):
        cat.load_table("lake.t").append(rows(1, 30))
    assert fault.fired == 2 and throttle.fired == 0  # the first rule in order fires
    with pytest.raises(TooManyRequestsError):
        cat.load_table("lake.t").append(rows(1, 40))
    assert throttle.fired == 1
    assert rest_gate.commits()[-1].status == 429
    assert ids(cat) == [0, 1, 2, 10]
    assert cat.load_table("lake.t").current_snapshot().parent_snapshot_id == snapshot
    with pytest.raises(ServiceUnavailableError):
        cat.load_table("lake.other").append(rows(1, 50))
    assert other.fired == 1 and ids(cat, "lake.other") == [0, 1, 2]


def test_delay(rest_server, rest_gate):
    cat = catalog(rest_gate, rest_server.new_warehouse())
    t = new_table(cat)
    slow = rest_gate.delay(0.5, times=1)
    t0 = time.monotonic()
    t.append(rows(1, 10))
    assert time.monotonic() - t0 >= 0.5 and slow.fired == 1


def test_oauth2_client_credentials(rest_server, rest_gate):
    gate, w = rest_gate, rest_server.new_warehouse()
    gate.clients["floe"] = "s3cret"
    gate.require_auth = True
    # No token: 401 with an Iceberg ErrorResponse.
    status, body = http("GET", f"{gate.endpoint}/v1/config?warehouse={w}")
    assert status == 401, body
    assert body["error"]["type"] == "NotAuthorizedException" and body["error"]["code"] == 401
    with pytest.raises(UnauthorizedError):
        catalog(gate, w)
    status, _ = http("GET", f"{gate.endpoint}/v1/config", {"Authorization": "Bearer nope"})
    assert status == 401
    # Client credentials: PyIceberg gets a token at /v1/oauth/tokens and uses it.
    cat = catalog(gate, w, credential="floe:s3cret", scope="PRINCIPAL_ROLE:ALL")
    new_table(cat)
    assert ids(cat) == [0, 1, 2]
    assert gate.tokens_issued >= 1
    form = gate.seen("POST", "/v1/oauth/tokens")[-1].body.decode()
    assert "client_secret=s3cret" in form and "scope=PRINCIPAL_ROLE%3AALL" in form
    table_reqs = gate.seen(path=rf"^/v1/{w}/")
    assert table_reqs and all(r.headers["Authorization"].startswith("Bearer gate-")
                              for r in table_reqs)
    # A wrong secret: an OAuth2 error.
    with pytest.raises(OAuthError, match="invalid_client"):
        catalog(gate, w, credential="floe:wrong")
    assert gate.token_requests_refused == 1
    # HTTP Basic at /oauth2/token works too, and the answer has the OAuth2 shape.
    import base64
    basic = base64.b64encode(b"floe:s3cret").decode()
    status, body = http("POST", f"{gate.endpoint}/oauth2/token",
                        {"Authorization": f"Basic {basic}",
                         "Content-Type": "application/x-www-form-urlencoded"},
                        b"grant_type=client_credentials&scope=catalog")
    assert status == 200, body
    assert body["token_type"] == "bearer" and body["expires_in"] == gate.ttl
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    status, _ = http("GET", f"{gate.endpoint}/v1/{w}/namespaces",
                     {"Authorization": f"Bearer {body['access_token']}"})
    assert status == 200
    status, body = http("POST", f"{gate.endpoint}/oauth2/token", {}, b"grant_type=password")
    assert status == 400 and body["error"] == "unsupported_grant_type"
    # A static token.
    gate.static_tokens.add("static-tok")
    assert ids(catalog(gate, w, token="static-tok")) == [0, 1, 2]


def test_tokens_expire(rest_server, rest_gate):
    gate, w = rest_gate, rest_server.new_warehouse()
    gate.clients["floe"] = "s3cret"
    gate.require_auth = True
    gate.ttl = 1
    status, body = http("POST", f"{gate.endpoint}/v1/oauth/tokens", {},
                        b"grant_type=client_credentials&client_id=floe&client_secret=s3cret")
    assert status == 200 and body["expires_in"] == 1
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert http("GET", f"{gate.endpoint}/v1/config?warehouse={w}", bearer)[0] == 200
    time.sleep(1.2)
    status, body = http("GET", f"{gate.endpoint}/v1/config?warehouse={w}", bearer)
    assert status == 401 and "expired" in body["error"]["message"]
    # expire_tokens() ends every issued token at once.
    gate.ttl = 60
    token = gate.issue_token()
    assert gate.token_valid(token)
    gate.expire_tokens()
    assert not gate.token_valid(token)


def test_headers_are_recorded(rest_server, rest_gate):
    w = rest_server.new_warehouse()
    cat = catalog(rest_gate, w, **{"header.X-Tenant": "blue",
                                   "header.X-Iceberg-Access-Delegation": "vended-credentials"})
    new_table(cat)
    commit = rest_gate.commits()[-1]
    assert commit.headers["x-tenant"] == "blue"
    assert commit.headers["X-Iceberg-Access-Delegation"] == "vended-credentials"
    body = commit.json()
    assert body["identifier"] == {"namespace": ["lake"], "name": "t"}
    assert any(r["type"] == "assert-ref-snapshot-id" for r in body["requirements"])


def test_vended_credentials_injected(rest_server, rest_gate):
    w = rest_server.new_warehouse()
    fake = {"s3.access-key-id": "ASIAFAKE", "s3.secret-access-key": "fake-secret",
            "s3.session-token": "fake-session", "s3.session-token-expires-at-ms": "1"}
    rest_gate.inject_config = fake
    rest_gate.inject_storage_credentials = [{"prefix": "file:/", "config": fake}]
    cat = catalog(rest_gate, w)
    cat.create_namespace("lake")
    created = cat.create_table("lake.t", schema=SCHEMA)
    assert {k: created.config.get(k) for k in fake} == fake
    status, body = http("GET", f"{rest_gate.endpoint}/v1/{w}/namespaces/lake/tables/t",
                        {"X-Iceberg-Access-Delegation": "vended-credentials"})
    assert status == 200 and body["config"] == fake, body
    assert body["storage-credentials"] == [{"prefix": "file:/", "config": fake}]
    # Not on other answers.
    status, body = http("GET", f"{rest_gate.endpoint}/v1/{w}/namespaces/lake/tables")
    assert status == 200 and "config" not in body


def test_tls(rest_server, tls_certs, monkeypatch):
    w = rest_server.new_warehouse()
    # requests lets these override a session's own CA bundle (PyIceberg's ssl.cabundle).
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    with RestGate(rest_server.uri, tls=(tls_certs.cert, tls_certs.key)) as gate:
        assert gate.endpoint.startswith("https://127.0.0.1:")
        cat = catalog(gate, w, ssl={"cabundle": str(tls_certs.ca)})
        new_table(cat)
        assert ids(cat) == [0, 1, 2]
        # Without the CA the server is not trusted.
        with pytest.raises(requests.exceptions.SSLError):
            catalog(gate, w)
        # REQUESTS_CA_BUNDLE does it too.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_certs.ca))
        assert ids(catalog(gate, w)) == [0, 1, 2]
        assert all(r.status == 200 for r in gate.seen())


def test_rest_lake_fixture(rest_lake, rest_server, rest_gate):
    lake = rest_lake
    env = lake.env()
    assert env["FLOE__CATALOG__URI"] == rest_gate.endpoint
    assert env["FLOE__CATALOG__WAREHOUSE"] == lake.warehouse
    assert "FLOE__CATALOG__TOKEN" not in env
    lake.token = "tok"
    assert lake.env()["FLOE__CATALOG__TOKEN"] == "tok"
    lake.token = None
    new_table(lake.pyiceberg_catalog(), "lake.events")
    assert lake.read_pyiceberg("lake.events").num_rows == 3
    assert len(lake.data_files_on_disk("lake.events")) == 1
    assert all(f.startswith(str(rest_server.base / lake.warehouse))
               for f in lake.data_files_on_disk("lake.events"))
    assert lake.java_catalog()["type"] == "rest"
    # floe was not built for this.
    assert lake._bin._path is None


def test_iceberg_java_reads_through_the_gate(rest_lake, iceberg_java):
    """Iceberg Java's REST client (Spark, type=rest, a bearer token) reads what PyIceberg
    wrote through the gate, exactly; then a later commit too (no caching)."""
    lake, gate = rest_lake, rest_lake.rest_gate
    gate.require_auth = True
    gate.static_tokens.add("java-token")
    lake.token = "java-token"
    cat = lake.pyiceberg_catalog()
    cat.create_namespace("lake")
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("v", pa.float64()),
                        ("ts", pa.timestamp("us", tz="UTC")), ("d", pa.date32()),
                        ("amount", pa.decimal128(10, 2)), ("ok", pa.bool_())])
    t = cat.create_table("lake.mixed", schema=schema)
    data = [{"id": i, "name": None if i % 5 == 0 else f"n{i}", "v": i / 3,
             "ts": datetime(2026, 1, 2, 3, 4, 5, i, tzinfo=timezone.utc),
             "d": date(2026, 1, 1 + i % 28), "amount": Decimal(f"{i}.{i % 100:02d}"),
             "ok": i % 2 == 0} for i in range(50)]
    t.append(pa.Table.from_pylist(data[:30], schema=schema))
    t.append(pa.Table.from_pylist(data[30:], schema=schema))
    before = len(gate.seen())
    java = lake.read_java("lake.mixed", order_by="id")
    py = sorted(lake.read_pyiceberg("lake.mixed").to_pylist(), key=lambda r: r["id"])
    assert len(java) == 50
    assert [list(r) for r in java[:1]] == [list(schema.names)]
    for j, p in zip(java, py):
        assert j["ts"].astimezone(timezone.utc) == p["ts"]
        assert {k: v for k, v in j.items() if k != "ts"} == {k: v for k, v in p.items()
                                                            if k != "ts"}
    assert py == sorted(data, key=lambda r: r["id"])
    java_reqs = gate.seen()[before:]
    assert any(r.method == "GET" and r.path.endswith("/namespaces/lake/tables/mixed")
               for r in java_reqs), [(r.method, r.path) for r in java_reqs]
    assert all(r.headers["Authorization"] == "Bearer java-token" for r in java_reqs)
    assert all(r.path.startswith(f"/v1/{lake.warehouse}/") for r in java_reqs
               if r.path != "/v1/config")
    t.append(pa.Table.from_pylist([dict(data[0], id=99)], schema=schema))
    assert lake.java_sql("SELECT count(*) AS n FROM lake.mixed") == [{"n": 51}]

    # Java's OAuth2 client (client credentials at {uri}/v1/oauth/tokens) against the gate.
    gate.clients["java"] = "java-secret"
    issued = gate.tokens_issued
    sid = iceberg_java.open(name="jv", type="rest", uri=gate.endpoint, warehouse=lake.warehouse,
                            credential="java:java-secret")
    try:
        _, got = iceberg_java.sql(sid, "SELECT count(*) FROM jv.lake.mixed")
        assert got == [[51]]
    finally:
        iceberg_java.close(sid)
    assert gate.tokens_issued > issued

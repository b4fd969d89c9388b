"""A small Iceberg REST catalog server over PyIceberg's SqlCatalog (SQLite) with an S3
warehouse, that vends S3 credentials: for tests of a client's vended credentials
(`X-Iceberg-Access-Delegation: vended-credentials`) against an S3 server that enforces them
(tests/vendeds3.py).

The server (stdlib ThreadingHTTPServer in a thread of the test process) writes metadata with
the S3 admin's key. A client that sends the delegation header gets, in each load-table and
create-table response, credentials allowed on that table's location only (an STS role from
AuthS3.vend): in `config` (s3.access-key-id, s3.secret-access-key, s3.session-token,
s3.session-token-expires-at-ms, with s3.endpoint, s3.region, s3.path-style-access) or, with
`use_storage_credentials`, in `storage-credentials` ([{"prefix": <table location>, "config"}])
with only the endpoint settings left in `config`. `GET …/tables/{t}/credentials` vends anew.
A client without the header gets the endpoint settings and no keys.

Options: `vend` (False: never vend), `vend_ttl_s` (s3.session-token-expires-at-ms is now +
this), `use_storage_credentials`, `revoke_old` (vending a table new credentials revokes the
ones it had: S3 refuses them from then on), `enforce_expiry` (credentials are revoked when they
expire).

Routes (the REST spec's, each also without the prefix): GET /v1/config (overrides.prefix is
`?warehouse=`, which must be this server's `warehouse`), namespaces (list with `parent`, get,
head, create, drop, properties), tables (list, create (stage-create too), load, head, commit,
drop with `purgeRequested`, rename, credentials, metrics). A commit's body is parsed into
PyIceberg's CommitTableRequest and applied by SqlCatalog.commit_table, which checks its
requirements: a stale one is a 409 CommitFailedException. Errors are REST ErrorResponses.

    with PyRestServer(auth_s3, tmp_path, bucket="lake") as server:
        RestCatalog("c", uri=server.uri, warehouse=server.warehouse)
        server.vends, server.requests, server.credentials
"""

import json
import re
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DELEGATION = "X-Iceberg-Access-Delegation"
ERROR_TYPES = {400: "BadRequestException", 401: "NotAuthorizedException",
               403: "ForbiddenException", 404: "NoSuchTableException",
               405: "MethodNotAllowedException", 409: "AlreadyExistsException",
               500: "InternalServerError", 501: "UnsupportedOperationException"}
ENDPOINTS = [
    "GET /v1/{prefix}/namespaces", "POST /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}", "HEAD /v1/{prefix}/namespaces/{namespace}",
    "DELETE /v1/{prefix}/namespaces/{namespace}",
    "POST /v1/{prefix}/namespaces/{namespace}/properties",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "POST /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}/credentials",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}/metrics",
    "POST /v1/{prefix}/tables/rename",
]


class RestError(Exception):
    def __init__(self, code, message, type_=None):
        super().__init__(message)
        self.code = code
        self.type = type_ or ERROR_TYPES.get(code, "RESTException")


@dataclass
class Request:
    """One request the server got; `headers` is case-insensitive (`.get`)."""
    method: str
    path: str
    query: dict
    headers: object
    body: bytes
    status: int = None

    def json(self):
        return json.loads(self.body) if self.body else None

    @property
    def delegation(self):
        return self.headers.get(DELEGATION)


@dataclass
class Vend:
    """One handing out of credentials: to which table, by which route, what."""
    table: str
    route: str                  # "create", "load", "credentials"
    credential: object          # vendeds3.Credential


class PyRestServer:
    def __init__(self, s3, workdir, bucket, warehouse="vended", vend=True, vend_ttl_s=3600,
                 use_storage_credentials=False, revoke_old=False, enforce_expiry=False):
        """`s3` is the AuthS3 the warehouse is on (bucket `bucket`, which this creates if it
        is not there; files under s3://bucket/<warehouse>)."""
        from pyiceberg.catalog.sql import SqlCatalog
        self.s3 = s3
        self.bucket = bucket
        self.warehouse = warehouse
        self.location = f"s3://{bucket}/{warehouse}"
        self.vend = vend
        self.vend_ttl_s = vend_ttl_s
        self.use_storage_credentials = use_storage_credentials
        self.revoke_old = revoke_old
        self.enforce_expiry = enforce_expiry
        self.requests = []
        self.vends = []
        self.fail_next = []            # (method, path regex, status): answered instead, once
        self._current = {}             # table → its latest vended Credential
        self._timers = []
        self._lock = threading.RLock()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            s3.client().head_bucket(Bucket=bucket)
        except Exception:
            s3.create_bucket(bucket)
        self.catalog = SqlCatalog(
            "pyrest", uri=f"sqlite:///{workdir}/pyrest-catalog.db", warehouse=self.location,
            **self.endpoint_config(), **{"s3.access-key-id": s3.admin["access_key_id"],
                                         "s3.secret-access-key": s3.admin["secret_access_key"]})
        self._httpd = None
        self._thread = None

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def uri(self):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self):
        server = self

        class Handler(_Handler):
            owner = server
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="pyrest")
        self._thread.start()
        return self

    def stop(self):
        for t in self._timers:
            t.cancel()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(10)
            self._httpd = None
        self.catalog.engine.dispose()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- what tests look at ---------------------------------------------------------------
    def seen(self, method=None, path=None):
        """The requests so far with that method and a path matching regex `path`."""
        return [r for r in list(self.requests) if (method is None or r.method == method)
                and (path is None or re.search(path, r.path))]

    @property
    def credentials(self):
        """Every Credential vended, oldest first."""
        return [v.credential for v in self.vends]

    def current(self, table):
        """The latest Credential vended for `table` ("ns.t")."""
        return self._current.get(table)

    def endpoint_config(self):
        return {"s3.endpoint": self.s3.endpoint, "s3.region": "us-east-1",
                "s3.path-style-access": "true"}

    # --- vending --------------------------------------------------------------------------
    def _vend(self, table, location, route):
        cred = self.s3.vend(location, ttl_s=self.vend_ttl_s)
        with self._lock:
            old = self._current.get(table)
            self._current[table] = cred
            self.vends.append(Vend(table, route, cred))
        if self.revoke_old and old is not None:
            self.s3.revoke(old)
        if self.enforce_expiry:
            t = threading.Timer(max(0.0, cred.expires_at_ms / 1000 - time.time()),
                                self.s3.revoke, (cred,))
            t.daemon = True
            t.start()
            self._timers.append(t)
        return cred

    @staticmethod
    def _cred_config(cred):
        return {"s3.access-key-id": cred.access_key_id,
                "s3.secret-access-key": cred.secret_access_key,
                "s3.session-token": cred.session_token,
                "s3.session-token-expires-at-ms": str(cred.expires_at_ms)}

    def load_result(self, ident, table, request, route):
        """A LoadTableResult for `table`, with credentials if the request asks for them."""
        result = {"metadata-location": table.metadata_location,
                  "metadata": json.loads(table.metadata.model_dump_json()),
                  "config": self.endpoint_config()}
        if self.vend and _wants_vending(request):
            location = table.metadata.location
            cred = self._vend(".".join(ident), location, route)
            if self.use_storage_credentials:
                result["storage-credentials"] = [
                    {"prefix": location, "config": {**self.endpoint_config(),
                                                    **self._cred_config(cred)}}]
            else:
                result["config"].update(self._cred_config(cred))
        return result


def _wants_vending(request):
    value = request.headers.get(DELEGATION) or ""
    return "vended-credentials" in [v.strip() for v in value.split(",")]


def _namespace(segment):
    return tuple(unquote(segment).split("\x1f"))


class _Handler(BaseHTTPRequestHandler):
    owner = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _handle(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, url.path, parse_qs(url.query), self.headers, body)
        self.owner.requests.append(req)
        try:
            for method, pattern, status in list(self.owner.fail_next):
                if method == req.method and re.search(pattern, req.path):
                    self.owner.fail_next.remove((method, pattern, status))
                    raise RestError(status, f"injected failure {status}")
            status, answer = self._route(req)
        except RestError as e:
            status, answer = e.code, {"error": {"message": str(e), "type": e.type,
                                                "code": e.code}}
        except Exception as e:  # noqa: BLE001 - a server bug is a 500 with its trace
            status, answer = 500, {"error": {"message": f"{e!r}", "type": type(e).__name__,
                                             "code": 500,
                                             "stack": traceback.format_exc().splitlines()}}
        req.status = status
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _route(self, req):
        owner = self.owner
        parts = [p for p in req.path.split("/") if p]
        if parts[:1] != ["v1"]:
            raise RestError(404, f"no route {req.method} {req.path}", "NotFoundException")
        parts = parts[1:]
        if parts == ["config"] and req.method == "GET":
            return 200, self._config(req)
        if parts and parts[0] not in ("namespaces", "tables"):
            if unquote(parts[0]) != owner.warehouse:
                raise RestError(404, f"no warehouse {unquote(parts[0])!r}",
                                "NoSuchWarehouseException")
            parts = parts[1:]
        with owner._lock:
            return self._catalog_route(req, parts)

    def _config(self, req):
        wh = req.query.get("warehouse", [None])[0]
        overrides = {}
        if wh:
            if wh not in (self.owner.warehouse, self.owner.location):
                raise RestError(404, f"no warehouse {wh!r}", "NoSuchWarehouseException")
            overrides["prefix"] = self.owner.warehouse
        return {"defaults": {}, "overrides": overrides, "endpoints": ENDPOINTS}

    def _catalog_route(self, req, parts):
        from pyiceberg.exceptions import (CommitFailedException, NamespaceAlreadyExistsError,
                                          NamespaceNotEmptyError, NoSuchNamespaceError,
                                          NoSuchTableError, TableAlreadyExistsError)
        try:
            return self._dispatch(req, parts)
        except NoSuchTableError as e:
            raise RestError(404, str(e), "NoSuchTableException") from None
        except NoSuchNamespaceError as e:
            raise RestError(404, str(e), "NoSuchNamespaceException") from None
        except (NamespaceAlreadyExistsError, TableAlreadyExistsError) as e:
            raise RestError(409, str(e), "AlreadyExistsException") from None
        except NamespaceNotEmptyError as e:
            raise RestError(409, str(e), "NamespaceNotEmptyException") from None
        except CommitFailedException as e:
            raise RestError(409, str(e), "CommitFailedException") from None

    def _dispatch(self, req, parts):
        cat = self.owner.catalog
        m, n = req.method, len(parts)
        if parts == ["namespaces"]:
            if m == "GET":
                parent = req.query.get("parent", [None])[0]
                found = cat.list_namespaces(_namespace(parent) if parent else ())
                return 200, {"namespaces": [list(ns) for ns in found]}
            if m == "POST":
                body = req.json()
                cat.create_namespace(tuple(body["namespace"]), body.get("properties") or {})
                return 200, {"namespace": body["namespace"],
                             "properties": body.get("properties") or {}}
        if parts == ["tables", "rename"] and m == "POST":
            body = req.json()
            src, dst = body["source"], body["destination"]
            cat.rename_table((*src["namespace"], src["name"]), (*dst["namespace"], dst["name"]))
            return 204, None
        if n < 2 or parts[0] != "namespaces":
            raise RestError(404, f"no route {m} {req.path}", "NotFoundException")
        ns = _namespace(parts[1])
        if n == 2:
            if m in ("GET", "HEAD"):
                props = cat.load_namespace_properties(ns)
                return (200, {"namespace": list(ns), "properties": props}) if m == "GET" \
                    else (204, None)
            if m == "DELETE":
                cat.drop_namespace(ns)
                return 204, None
        if n == 3 and parts[2] == "properties" and m == "POST":
            body = req.json()
            s = cat.update_namespace_properties(ns, set(body.get("removals") or []),
                                                body.get("updates") or {})
            return 200, {"updated": s.updated, "removed": s.removed, "missing": s.missing}
        if n == 3 and parts[2] == "tables":
            if m == "GET":
                return 200, {"identifiers": [{"namespace": list(t[:-1]), "name": t[-1]}
                                             for t in cat.list_tables(ns)]}
            if m == "POST":
                return 200, self._create(req, ns)
        if n >= 4 and parts[2] == "tables":
            ident = (*ns, unquote(parts[3]))
            if n == 4:
                if m == "GET":
                    return 200, self.owner.load_result(ident, cat.load_table(ident), req, "load")
                if m == "HEAD":
                    cat.load_table(ident)
                    return 204, None
                if m == "POST":
                    return 200, self._commit(req, ident)
                if m == "DELETE":
                    purge = req.query.get("purgeRequested", ["false"])[0].lower() == "true"
                    (cat.purge_table if purge else cat.drop_table)(ident)
                    return 204, None
            if n == 5 and parts[4] == "credentials" and m == "GET":
                table = cat.load_table(ident)
                if not self.owner.vend:
                    return 200, {"storage-credentials": []}
                cred = self.owner._vend(".".join(ident), table.metadata.location, "credentials")
                return 200, {"storage-credentials": [
                    {"prefix": table.metadata.location,
                     "config": {**self.owner.endpoint_config(), **self.owner._cred_config(cred)}}]}
            if n == 5 and parts[4] == "metrics" and m == "POST":
                return 204, None
        raise RestError(404 if m in ("GET", "POST", "DELETE", "HEAD") else 405,
                        f"no route {m} {req.path}", "NotFoundException")

    def _create(self, req, ns):
        from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionSpec
        from pyiceberg.schema import Schema
        from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortOrder
        cat = self.owner.catalog
        body = req.json()
        ident = (*ns, body["name"])
        args = dict(
            schema=Schema.model_validate(body["schema"]),
            location=body.get("location"),
            partition_spec=PartitionSpec.model_validate(body["partition-spec"])
            if body.get("partition-spec") else UNPARTITIONED_PARTITION_SPEC,
            sort_order=SortOrder.model_validate(body["write-order"])
            if body.get("write-order") else UNSORTED_SORT_ORDER,
            properties=body.get("properties") or {})
        cat.load_namespace_properties(ns)   # NoSuchNamespace → 404
        if body.get("stage-create"):
            if cat.table_exists(ident):
                raise RestError(409, f"table {'.'.join(ident)} exists", "AlreadyExistsException")
            table = cat._create_staged_table(ident, **args)
            result = self.owner.load_result(ident, table, req, "create")
            result.pop("metadata-location", None)
            return result
        table = cat.create_table(ident, **args)
        return self.owner.load_result(ident, table, req, "create")

    def _commit(self, req, ident):
        from types import SimpleNamespace
        from pyiceberg.table import CommitTableRequest
        from pyiceberg.table.update import AssertCreate
        body = req.json()
        body.setdefault("identifier", {"namespace": list(ident[:-1]), "name": ident[-1]})
        try:
            commit = CommitTableRequest.model_validate(body)
        except Exception as e:  # noqa: BLE001 - a body PyIceberg cannot read
            raise RestError(400, f"invalid commit: {e}") from None
        cat = self.owner.catalog
        if not cat.table_exists(ident) and \
                not any(isinstance(r, AssertCreate) for r in commit.requirements):
            raise RestError(404, f"no table {'.'.join(ident)}", "NoSuchTableException")
        table = SimpleNamespace(name=lambda: ident)
        response = cat.commit_table(table, commit.requirements, commit.updates)
        return {"metadata-location": response.metadata_location,
                "metadata": json.loads(response.metadata.model_dump_json())}


def vended_lake(floe_bin, workdir, server, name="floe"):
    """A readers.Lake (floe's working directory) on `server`'s catalog with no S3 keys: floe
    is told the endpoint and to ask for vended credentials; readers use the admin's keys and
    send an empty delegation header (so the catalog vends them nothing)."""
    from readers import Lake
    lake = Lake(floe_bin, workdir, server.uri, server.warehouse, name=name, kind="rest",
                s3={"endpoint": server.s3.endpoint, "region": "us-east-1"},
                warehouse_dir=server.location)
    lake.reader_s3 = dict(server.s3.admin)
    lake.reader_rest_props = {f"header.{DELEGATION}": ""}
    lake.extra_env.update({"FLOE__CATALOG__ACCESS_DELEGATION": "vended-credentials",
                           "AWS_EC2_METADATA_DISABLED": "true"})
    lake.vended_rest = server
    lake.vended_s3 = server.s3
    return lake

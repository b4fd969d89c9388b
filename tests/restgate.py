"""A gate in front of an Iceberg REST catalog server (tests/java/MiniRestCatalogServer.java):
an HTTP(S) reverse proxy on 127.0.0.1 that adds what the server does not do and what a client
must cope with, so that tests can check a REST client against it:

- OAuth2: a token endpoint (`POST /v1/oauth/tokens`, `POST /oauth2/token`; client credentials
  in the form body or HTTP Basic, and token exchange), tokens that expire after `ttl` seconds,
  static bearer tokens, and with `require_auth` a 401 for every other request without a valid
  `Authorization: Bearer` token.
- A record of every request (`requests`: method, path, query, headers, body, status), with
  the secrets left in for the test to look at.
- Faults on table commits (`POST …/namespaces/{ns}/tables/{t}`): a status after the server
  applied the commit (an ambiguous outcome), a cut connection after it, a status instead of
  forwarding (not applied), and delays.
- Fake vended credentials: `inject_config` is merged into the `config` of load-table and
  create-table responses; `inject_catalog_config` into `GET /v1/config`'s answer.
- TLS: `tls=(certfile, keyfile)` serves HTTPS (see conftest's `tls_certs` for a throwaway CA).

    with RestGate(rest_server.uri, clients={"floe": "s3cret"}, require_auth=True) as gate:
        fault = gate.status_after_forward(502)
        ...  # a client on gate.endpoint
        assert fault.fired == 1
"""

import base64
import http.client
import json
import re
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
TOKEN_PATHS = re.compile(r"^(?:/.*)?/v1/oauth/tokens$|^/oauth2/token$")
# The update-table route (a commit), not create-table (…/tables) nor …/tables/{t}/metrics.
COMMIT_PATH = re.compile(r"^/v1/(?:[^/]+/)?namespaces/(?P<ns>[^/]+)/tables/(?P<table>[^/]+)$")
# Responses with a LoadTableResult: load table, create table, register table.
LOAD_TABLE_PATH = re.compile(
    r"^/v1/(?:[^/]+/)?namespaces/[^/]+/(?:tables(?:/[^/]+)?|register)$")
ERROR_TYPES = {400: "BadRequestException", 401: "NotAuthorizedException",
               403: "ForbiddenException", 404: "NoSuchTableException",
               409: "CommitFailedException", 429: "TooManyRequestsException",
               500: "CommitStateUnknownException", 502: "BadGatewayException",
               503: "ServiceUnavailableException", 504: "GatewayTimeoutException"}
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def error_body(code, message, type_=None):
    """An Iceberg REST ErrorResponse."""
    return {"error": {"message": message, "type": type_ or ERROR_TYPES.get(code, "RESTException"),
                      "code": code}}


@dataclass
class Seen:
    """One request the gate received. `headers` is the request's http.client.HTTPMessage
    (case-insensitive `get`); `status` is what the gate answered (None: cut)."""
    method: str
    path: str
    query: dict
    headers: object
    body: bytes
    status: int = None
    fault: str = None

    def json(self):
        return json.loads(self.body) if self.body else None

    @property
    def is_commit(self):
        return self.method == "POST" and COMMIT_PATH.match(self.path) is not None


@dataclass
class Fault:
    """A fault rule: fires on at most `times` matching requests (None: all); `fired` counts.
    With `skip`, the first `skip` matching requests pass untouched (a fault mid-way through
    a load); `skipped` counts them."""
    kind: str
    code: int = None
    times: int = 1
    table: str = None
    seconds: float = 0.0
    method: str = None
    path: str = None  # a regex on the path; None: table commits only
    body: dict = None
    headers: dict = field(default_factory=dict)
    fired: int = 0
    skip: int = 0
    skipped: int = 0

    def matches(self, method, path):
        if self.times is not None and self.fired >= self.times:
            return False
        if self.path is not None:
            return (self.method is None or self.method == method) and re.search(self.path, path)
        m = COMMIT_PATH.match(path)
        if method != "POST" or not m:
            return False
        if self.table is None:
            return True
        ns = unquote(m["ns"]).replace("\x1f", ".")
        table = unquote(m["table"])
        return self.table in (table, f"{ns}.{table}")


class RestGate:
    """See the module's doc. `upstream` is the REST server's base URI (http://127.0.0.1:PORT);
    `clients` {client_id: secret} may get tokens; `static_tokens` are always valid; `ttl` is
    the lifetime in seconds of the tokens the gate issues."""

    def __init__(self, upstream, tls=None, clients=None, static_tokens=(), require_auth=False,
                 ttl=3600, inject_config=None, inject_catalog_config=None):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.upstream_base = u.path.rstrip("/")
        self.tls = tls
        self.clients = dict(clients or {})
        self.static_tokens = set(static_tokens)
        self.require_auth = require_auth
        self.ttl = ttl
        self.inject_config = dict(inject_config or {})
        self.inject_catalog_config = dict(inject_catalog_config or {})
        self.inject_storage_credentials = None  # a list: LoadTableResult's storage-credentials
        # A check of every non-token request (e.g. its AWS SigV4 signature): returns None to
        # let it through, or why it is refused (403).
        self.verify = None
        self.requests = []
        self.tokens = {}  # token → (expires at, time.monotonic(); client id; scope)
        self.tokens_issued = 0
        self.token_requests_refused = 0
        self.faults = []
        self._lock = threading.Lock()
        self._conns = set()
        self._server = None
        self._thread = None

    # --- set-up --------------------------------------------------------------------------
    @property
    def endpoint(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def port(self):
        return self._server.server_address[1]

    def start(self):
        gate = self

        class Handler(_Handler):
            pass
        Handler.gate = gate
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.gate = self
        if self.tls:
            cert, key = self.tls
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            # The handshake happens in the connection's thread, not in accept().
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            _close(c)
        self._thread.join(5)
        self._server = None

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()

    # --- faults --------------------------------------------------------------------------
    def _add(self, fault):
        with self._lock:
            self.faults.append(fault)
        return fault

    def status_after_forward(self, code, times=1, table=None, body=None, path=None, method=None,
                             skip=0):
        """Forwards a commit (the server applies it), then answers `code` (500/502/504) with
        an ErrorResponse instead of the server's answer: an outcome the client cannot know.
        `skip`: the first `skip` matching requests pass untouched."""
        return self._add(Fault("status_after", code=code, times=times, table=table, body=body,
                               path=path, method=method, skip=skip))

    def cut_after_forward(self, times=1, table=None, path=None, method=None, skip=0):
        """Forwards a commit (the server applies it), then closes the connection unanswered."""
        return self._add(Fault("cut_after", times=times, table=table, path=path, method=method,
                               skip=skip))

    def status_before_forward(self, code, times=1, table=None, body=None, retry_after=None,
                              path=None, method=None, skip=0):
        """Answers `code` (503/429/…) without forwarding: the commit is not applied."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return self._add(Fault("status_before", code=code, times=times, table=table, body=body,
                               headers=headers, path=path, method=method, skip=skip))

    def delay(self, seconds, times=None, table=None, path=None, method=None, skip=0):
        """Holds matching requests (table commits unless `path`) `seconds` before forwarding."""
        return self._add(Fault("delay", seconds=seconds, times=times, table=table, path=path,
                               method=method, skip=skip))

    def clear_faults(self):
        with self._lock:
            self.faults = []

    def _take(self, method, path):
        """The faults that fire on this request (at most one of each kind), counted. A rule
        still skipping counts every matching request, whatever else fires on it."""
        fired = {}
        with self._lock:
            for f in self.faults:
                if not f.matches(method, path):
                    continue
                if f.skipped < f.skip:
                    f.skipped += 1
                    continue
                if f.kind not in fired:
                    f.fired += 1
                    fired[f.kind] = f
        return fired

    # --- tokens --------------------------------------------------------------------------
    def issue_token(self, client_id="test", scope="catalog", ttl=None):
        token = "gate-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = (time.monotonic() + (self.ttl if ttl is None else ttl),
                                  client_id, scope)
            self.tokens_issued += 1
        return token

    def token_valid(self, token):
        if token in self.static_tokens:
            return True
        with self._lock:
            t = self.tokens.get(token)
        return t is not None and time.monotonic() < t[0]

    def expire_tokens(self):
        """Every issued token expires now (static ones stay)."""
        with self._lock:
            self.tokens = {k: (0.0, c, s) for k, (_, c, s) in self.tokens.items()}

    # --- the record ----------------------------------------------------------------------
    def seen(self, method=None, path=None):
        """The requests so far, those with `method` and a path matching regex `path` if given."""
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if (method is None or r.method == method)
                and (path is None or re.search(path, r.path))]

    def commits(self):
        return [r for r in self.seen() if r.is_commit]

    def clear(self):
        with self._lock:
            self.requests = []


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # a client gone mid-request; the test sees the outcome in its own client


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection ends after this
    gate = None

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.gate._lock:
            self.gate._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.gate._lock:
            self.gate._conns.discard(self.connection)

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    # --- request and answer --------------------------------------------------------------
    def _body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body=b"", headers=(), seen=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = [*headers, ("Content-Type", "application/json")]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status not in (204, 304) and not (100 <= status < 200):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)
        self.wfile.flush()
        if seen is not None:
            seen.status = status

    def _handle(self):
        gate = self.gate
        url = urlsplit(self.path)
        path = url.path
        body = self._body()
        seen = Seen(self.command, path, parse_qs(url.query), self.headers, body)
        with gate._lock:
            gate.requests.append(seen)
        if TOKEN_PATHS.match(path) and self.command == "POST":
            return self._token(body, seen)
        if gate.require_auth:
            auth = self.headers.get("Authorization") or ""
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not gate.token_valid(token.strip()):
                why = "no bearer token" if not auth else "invalid or expired bearer token"
                return self._send(401, error_body(401, f"Not authorized: {why}"),
                                  [("WWW-Authenticate", 'Bearer error="invalid_token"')], seen)
        if gate.verify is not None:
            why = gate.verify(seen)
            if why:
                return self._send(403, error_body(403, f"Forbidden: {why}"), [], seen)
        faults = gate._take(self.command, path)
        if "delay" in faults:
            time.sleep(faults["delay"].seconds)
        if "status_before" in faults:
            f = faults["status_before"]
            seen.fault = "status_before"
            msg = f"injected by restgate: {f.code} before forwarding (not applied)"
            return self._send(f.code, f.body or error_body(f.code, msg), list(f.headers.items()),
                              seen)
        status, headers, rbody = self._forward(url, body)
        if "cut_after" in faults:
            seen.fault = "cut_after"
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if "status_after" in faults:
            f = faults["status_after"]
            seen.fault = "status_after"
            msg = (f"injected by restgate: {f.code} after the server answered {status} "
                   "(the request was applied)")
            return self._send(f.code, f.body or error_body(f.code, msg), [], seen)
        rbody = self._rewrite(path, status, headers, rbody)
        self._send(status, rbody, headers, seen)

    def _forward(self, url, body):
        gate = self.gate
        conn = http.client.HTTPConnection(*gate.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "content-length")}
            headers["Host"] = f"{gate.upstream[0]}:{gate.upstream[1]}"
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body))
            target = gate.upstream_base + url.path + (f"?{url.query}" if url.query else "")
            conn.request(self.command, target, body=body or None, headers=headers)
            resp = conn.getresponse()
            rbody = resp.read()  # de-chunked
            out = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            return resp.status, out, rbody
        except OSError as e:
            msg = f"restgate: upstream {gate.upstream} failed: {e}"
            return 502, [("Content-Type", "application/json")], json.dumps(
                error_body(502, msg)).encode()
        finally:
            conn.close()

    def _rewrite(self, path, status, headers, rbody):
        """Vended credentials and config injected into the server's answer."""
        gate = self.gate
        if status != 200 or not rbody:
            return rbody
        if self.command == "GET" and path.endswith("/v1/config") and gate.inject_catalog_config:
            doc = json.loads(rbody)
            for k, v in gate.inject_catalog_config.items():
                if k in ("defaults", "overrides") and isinstance(v, dict):
                    doc.setdefault(k, {}).update(v)
                else:
                    doc[k] = v
            return json.dumps(doc).encode()
        if LOAD_TABLE_PATH.match(path) and self.command in ("GET", "POST") and (
                gate.inject_config or gate.inject_storage_credentials is not None):
            doc = json.loads(rbody)
            if "metadata" not in doc:
                return rbody  # e.g. a list of tables
            doc.setdefault("config", {}).update(gate.inject_config)
            if gate.inject_storage_credentials is not None:
                doc["storage-credentials"] = gate.inject_storage_credentials
            return json.dumps(doc).encode()
        return rbody

    # --- OAuth2 ----------------------------------------------------------------------------
    def _token(self, body, seen):
        gate = self.gate
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                              keep_blank_values=True).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
                client_id, secret = unquote(user), unquote(pw)
            except ValueError:
                pass
        grant = form.get("grant_type")
        scope = form.get("scope", "catalog")

        def refuse(status, error, description):
            with gate._lock:
                gate.token_requests_refused += 1
            self._send(status, {"error": error, "error_description": description}, [], seen)

        if grant == "client_credentials":
            if client_id is None or gate.clients.get(client_id) != secret:
                return refuse(401, "invalid_client", "unknown client or wrong secret")
        elif grant == TOKEN_EXCHANGE:
            # A client refreshing its token: the subject (or its bearer) must be valid.
            subject = form.get("subject_token") or ""
            bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not (gate.token_valid(subject) or gate.token_valid(bearer)):
                return refuse(401, "invalid_grant", "subject token invalid or expired")
            client_id = "token-exchange"
        else:
            return refuse(400, "unsupported_grant_type", f"grant_type {grant!r}")
        token = gate.issue_token(client_id, scope)
        self._send(200, {"access_token": token, "token_type": "bearer", "expires_in": gate.ttl,
                         "issued_token_type": ACCESS_TOKEN_TYPE, "scope": scope},
                   [("Cache-Control", "no-store")], seen)


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass

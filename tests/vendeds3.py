"""An S3 server that enforces credentials, for tests of vended credentials: moto's server in a
process of its own with IAM authentication on (moto checks every request's SigV4 signature,
access key, session token and the IAM policies of the key's user or role), and what a REST
catalog needs to vend credentials on it.

- The admin: an IAM user allowed everything (S3, IAM, STS); the catalog server writes
  metadata with its key, and readers read with it.
- Vended credentials: `vend("s3://bucket/prefix")` makes an IAM role allowed `s3:*` on that
  prefix only (and listing its bucket) and assumes it with STS, so they are real temporary
  credentials: an ASIA… key id, a secret and a session token that moto checks (a client that
  drops the token is refused). `revoke(cred)` deletes the role's policy: from then on S3
  refuses the key with AccessDenied. moto does not expire STS credentials by itself; the
  catalog server (tests/pyrest.py) revokes them at their expiry when asked to.

moto answers a request without an `Authorization` header with a 500 (it looks the header up
without a default), so the server runs moto's WSGI app behind a guard that answers such a
request with S3's 403 AccessDenied instead, and records every request (method, path, access
key id, status): `requests()`.

    s3 = AuthS3().start()
    s3.create_bucket("lake")
    cred = s3.vend("s3://lake/wh/ns/t")
    s3.client(cred).put_object(Bucket="lake", Key="wh/ns/t/x", Body=b"x")   # allowed
    s3.revoke(cred)                                                          # now refused
    s3.stop()

Run as a script (`python vendeds3.py PORT`) it is the server itself.
"""

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

REGION = "us-east-1"
LOG_PATH = "/_floe/s3-requests"
ALLOW_ALL = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
TRUST_ANYONE = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                               "Action": "sts:AssumeRole"}]}


@dataclass
class Credential:
    """One set of vended credentials: what a catalog puts in a LoadTableResult's config."""
    access_key_id: str
    secret_access_key: str
    session_token: str
    prefix: str                 # s3://bucket/path it is allowed on
    role: str                   # the IAM role behind it
    expires_at_ms: int = 0
    revoked: bool = False

    def s3(self, endpoint):
        """The settings dict tests/readers.py takes (`s3_client`, `Lake.reader_s3`)."""
        return {"endpoint": endpoint, "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "session_token": self.session_token}


@dataclass
class S3Request:
    method: str
    path: str
    access_key_id: str          # None: unsigned
    status: int


class AuthS3:
    """The auth-enforcing S3 server (see the module's doc). `endpoint`, `admin` (a settings
    dict for readers.s3_client / Lake.reader_s3), `vend`, `revoke`, `client`, `requests`."""

    def __init__(self, log=None):
        self.proc = None
        self.port = None
        self.admin = None
        self.log = log
        self._n = itertools.count(1)
        self._lock = threading.Lock()
        self.vended = []

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        from conftest import free_port, wait_for_port
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
        for attempt in range(5):
            self.port = free_port()
            out = open(self.log, "a") if self.log else subprocess.DEVNULL
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.port)], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
            if self.log:
                out.close()
            try:
                wait_for_port(self.port, self.proc, "the auth-enforcing S3 server")
                break
            except RuntimeError:
                self.stop()
                if attempt == 4:
                    raise
        self._bootstrap()
        return self

    def _moto_auth(self, count):
        """Sets how many requests moto lets through unauthenticated from now (0: none)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", method="POST",
                                     data=str(count).encode(),
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _bootstrap(self):
        """The admin user and key: made with auth off for a moment, then auth is on for good."""
        self._moto_auth("inf")
        try:
            iam = self._boto("iam", {"access_key_id": "bootstrap", "secret_access_key": "x"})
            iam.create_user(UserName="admin")
            iam.put_user_policy(UserName="admin", PolicyName="all",
                                PolicyDocument=json.dumps(ALLOW_ALL))
            key = iam.create_access_key(UserName="admin")["AccessKey"]
        finally:
            self._moto_auth(0)
        self.admin = {"endpoint": self.endpoint, "access_key_id": key["AccessKeyId"],
                      "secret_access_key": key["SecretAccessKey"]}

    def stop(self):
        from conftest import stop_process
        stop_process(self.proc)

    def _boto(self, service, s3):
        import boto3
        from botocore.config import Config
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=s3["access_key_id"],
                            aws_secret_access_key=s3["secret_access_key"],
                            aws_session_token=s3.get("session_token"),
                            config=Config(retries={"max_attempts": 1}))

    def client(self, cred=None, service="s3"):
        """A boto3 client with `cred` (a Credential or a settings dict; the admin's by
        default), not retrying."""
        s3 = cred.s3(self.endpoint) if isinstance(cred, Credential) else (cred or self.admin)
        return self._boto(service, s3)

    def create_bucket(self, name):
        self.client().create_bucket(Bucket=name)
        return name

    def vend(self, prefix, ttl_s=3600):
        """New temporary credentials allowed on `prefix` (s3://bucket/path) only."""
        bucket, _, path = prefix[len("s3://"):].partition("/")
        path = path.strip("/")
        objects = f"arn:aws:s3:::{bucket}/{path}/*" if path else f"arn:aws:s3:::{bucket}/*"
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": [objects]},
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation",
                                           "s3:ListBucketMultipartUploads"],
             "Resource": [f"arn:aws:s3:::{bucket}"]}]}
        role = f"vended-{os.getpid()}-{next(self._n)}"
        iam = self.client(service="iam")
        arn = iam.create_role(RoleName=role,
                              AssumeRolePolicyDocument=json.dumps(TRUST_ANYONE))["Role"]["Arn"]
        iam.put_role_policy(RoleName=role, PolicyName="s3", PolicyDocument=json.dumps(policy))
        c = self.client(service="sts").assume_role(
            RoleArn=arn, RoleSessionName="floe-test", DurationSeconds=max(900, int(ttl_s)))
        c = c["Credentials"]
        cred = Credential(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"],
                          prefix=prefix, role=role,
                          expires_at_ms=int((time.time() + ttl_s) * 1000))
        with self._lock:
            self.vended.append(cred)
        return cred

    def revoke(self, cred):
        """From now on S3 refuses `cred` (AccessDenied): its role loses its policy."""
        with self._lock:
            if cred.revoked:
                return
            cred.revoked = True
        self.client(service="iam").delete_role_policy(RoleName=cred.role, PolicyName="s3")

    def requests(self, access_key_id=...):
        """The S3 requests the server got (not IAM, STS, nor its own API), oldest first; only
        those signed with `access_key_id` when given (None: unsigned)."""
        with urllib.request.urlopen(self.endpoint + LOG_PATH, timeout=10) as r:
            seen = [S3Request(**x) for x in json.loads(r.read())]
        if access_key_id is not ...:
            seen = [x for x in seen if x.access_key_id == access_key_id]
        return seen


# --- the server process ---------------------------------------------------------------------

ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b'<Message>Access Denied (an anonymous request: this S3 server requires '
                 b'credentials)</Message><RequestId>floe-test</RequestId></Error>')


def _guard(app):
    """WSGI middleware: 403 for an unsigned request, a record of every S3 request."""
    import re
    seen = []
    lock = threading.Lock()
    credential = re.compile(r"Credential=([^/,\s]+)/[^/]*/[^/]*/([^/]+)/")

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == LOG_PATH:
            with lock:
                body = json.dumps(seen).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path.startswith("/moto-api/"):
            return app(environ, start_response)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        m = credential.search(auth)
        service = m.group(2) if m else "s3"
        entry = {"method": environ.get("REQUEST_METHOD"), "path": path,
                 "access_key_id": m.group(1) if m else None, "status": None}
        if service == "s3":
            with lock:
                seen.append(entry)
        if not auth:
            entry["status"] = 403
            start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                              ("Content-Length", str(len(ACCESS_DENIED)))])
            return [ACCESS_DENIED]

        def recording(status, headers, exc_info=None):
            entry["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)
        return app(environ, recording)
    return wsgi


def main(port):
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    from werkzeug.serving import run_simple
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, _guard(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    if os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT") != "0":
        sys.exit("vendeds3.py: run with INITIAL_NO_AUTH_ACTION_COUNT=0 (AuthS3 does)")
    main(int(sys.argv[1]))

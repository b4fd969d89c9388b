"""Running floe and reading what it wrote with readers floe does not control."""

import base64
import glob
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent


class Lake:
    """A floe working directory: runs the binary there and reads its tables back."""

    def __init__(self, floe_bin, workdir, catalog_uri, warehouse, name="floe", s3=None,
                 kind=None, token=None, credential=None, ca_file=None, warehouse_dir=None):
        """`kind` is "sql" (catalog_uri sqlite://… or postgres://…, `warehouse` a folder or
        s3://…) or "rest" (catalog_uri http(s)://… of an Iceberg REST catalog, `warehouse`
        its warehouse name, `warehouse_dir` the folder (or s3://bucket/path) where that
        catalog keeps the files;
        `token`, `credential` ("id:secret", OAuth2) and `ca_file` for its client); by
        default from `catalog_uri`'s scheme. `floe_bin` may be anything os.fspath() takes
        (conftest's rest_lake builds floe only when it is run)."""
        self._bin = floe_bin
        self.dir = Path(workdir)
        self.catalog_uri = catalog_uri
        self.warehouse = warehouse
        self.kind = kind or ("rest" if catalog_uri.startswith(("http://", "https://")) else "sql")
        self.token = token
        self.credential = credential
        self.ca_file = str(ca_file) if ca_file else None
        # Where the table files are on disk (local warehouses): the warehouse itself for SQL
        # catalogs, the REST server's folder of the warehouse for REST.
        self.warehouse_dir = str(warehouse_dir) if warehouse_dir else (
            warehouse if self.kind == "sql" else None)
        self.name = name
        # S3 settings for an s3:// warehouse: endpoint, access_key_id, secret_access_key
        # (the keys left out when the REST catalog vends them), region.
        self.s3 = s3
        # What readers use (the S3 server itself when floe goes through a fault proxy).
        self.reader_s3 = s3
        # Added to (or overriding) the properties of readers' PyIceberg RestCatalog.
        self.reader_rest_props = {}
        self.extra_env = {}
        # This lake's Spark session in the Iceberg Java worker: (worker, session id), opened
        # on first use.
        self._java = None
        shutil.copytree(ROOT / "schemas", self.dir / "schemas", dirs_exist_ok=True)

    @property
    def bin(self):
        return Path(os.fspath(self._bin))

    def env(self):
        env = dict(os.environ)
        env["FLOE__CATALOG__URI"] = self.catalog_uri
        env["FLOE__CATALOG__WAREHOUSE"] = self.warehouse
        env["FLOE__CATALOG__NAME"] = self.name
        if self.token:
            env["FLOE__CATALOG__TOKEN"] = self.token
        if self.credential:
            env["FLOE__CATALOG__CREDENTIAL"] = self.credential
        if self.ca_file:
            env["FLOE__CATALOG__CA_FILE"] = self.ca_file
        env.setdefault("RUST_LOG", "warn")
        env.setdefault("FLOE__METRICS__LISTEN", "127.0.0.1:0")
        if self.s3:
            env["FLOE__S3__ENDPOINT"] = self.s3["endpoint"]
            env["FLOE__S3__REGION"] = self.s3.get("region", "us-east-1")
            env["FLOE__S3__PATH_STYLE"] = "true"
            # Without keys (vended credentials: the catalog hands them out) only the endpoint.
            if self.s3.get("access_key_id"):
                env["FLOE__S3__ACCESS_KEY_ID"] = self.s3["access_key_id"]
                env["FLOE__S3__SECRET_ACCESS_KEY"] = self.s3["secret_access_key"]
        env.update(self.extra_env)
        return env

    def run(self, *args, check=True, timeout=300, **kw):
        p = subprocess.run([str(self.bin), *map(str, args)], cwd=self.dir, env=self.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"floe {' '.join(map(str, args))} failed ({p.returncode}):\n"
                                 f"{p.stdout}\n{p.stderr}")
        return p

    def popen(self, *args, env=None, **kw):
        e = self.env()
        e.update(env or {})
        return subprocess.Popen([str(self.bin), *map(str, args)], cwd=self.dir, env=e,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    # --- PyIceberg -------------------------------------------------------------------------
    def pyiceberg_catalog(self):
        if self.kind == "rest":
            return self.pyiceberg_rest_catalog()
        from pyiceberg.catalog.sql import SqlCatalog
        if self.catalog_uri.startswith("sqlite://"):
            uri = "sqlite:///" + self.catalog_uri[len("sqlite://"):]
        else:
            uri = "postgresql+psycopg2://" + self.catalog_uri.split("://", 1)[1]
        if self.reader_s3:
            return SqlCatalog(self.name, uri=uri, warehouse=self.warehouse, **{
                "s3.endpoint": self.reader_s3["endpoint"],
                "s3.access-key-id": self.reader_s3["access_key_id"],
                "s3.secret-access-key": self.reader_s3["secret_access_key"],
                "s3.region": "us-east-1",
            })
        return SqlCatalog(self.name, uri=uri, warehouse=f"file://{self.warehouse}")

    def pyiceberg_rest_catalog(self, **props):
        """PyIceberg's REST catalog on this lake's catalog (`props` added or overriding)."""
        from pyiceberg.catalog.rest import RestCatalog
        p = {"uri": self.catalog_uri, "warehouse": self.warehouse}
        if self.token:
            p["token"] = self.token
        if self.credential:
            p["credential"] = self.credential
        if self.ca_file:
            p["ssl"] = {"cabundle": self.ca_file}
        if self.reader_s3:
            p.update({"s3.endpoint": self.reader_s3["endpoint"],
                      "s3.access-key-id": self.reader_s3["access_key_id"],
                      "s3.secret-access-key": self.reader_s3["secret_access_key"],
                      "s3.region": "us-east-1"})
            if self.reader_s3.get("session_token"):
                p["s3.session-token"] = self.reader_s3["session_token"]
        p.update(self.reader_rest_props)
        p.update(props)
        return RestCatalog(self.name, **p)

    def pyiceberg_table(self, name):
        return self.pyiceberg_catalog().load_table(name)

    def read_pyiceberg(self, name):
        return self.pyiceberg_table(name).scan().to_arrow()

    # --- DuckDB ----------------------------------------------------------------------------
    def read_duckdb(self, name, sql="SELECT * FROM t"):
        con = duckdb_connect(self.reader_s3)
        location = self.pyiceberg_table(name).metadata_location
        con.execute(f"CREATE VIEW t AS SELECT * FROM iceberg_scan('{location}')")
        return con.execute(sql).to_arrow_table()

    # --- Apache Iceberg Java (Spark 3.5 + Iceberg 1.10, tests/java/spark_worker.py) --------
    def java_catalog(self):
        """The Iceberg JDBC catalog settings of this lake, as floe's catalog.uri maps to JDBC:
        sqlite://PATH → jdbc:sqlite:PATH; postgres://USER:PASS@HOST:PORT/DB →
        jdbc:postgresql://HOST:PORT/DB with user and password apart. A REST lake's are
        Iceberg's REST catalog's (type "rest", its uri, warehouse name, token or credential)."""
        uri = self.catalog_uri
        if self.kind == "rest":
            catalog = {"type": "rest", "uri": uri, "warehouse": self.warehouse,
                       "token": self.token, "credential": self.credential}
            if self.reader_s3:
                catalog["s3"] = dict(self.reader_s3, region="us-east-1")
            return dict(catalog, name=self.name)
        if uri.startswith("sqlite://"):
            path = Path(uri[len("sqlite://"):].split("?", 1)[0])
            catalog = {"uri": f"jdbc:sqlite:{path if path.is_absolute() else self.dir / path}"}
        else:
            u = urlsplit(uri)
            catalog = {"uri": f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}",
                       "user": unquote(u.username) if u.username else None,
                       "password": unquote(u.password) if u.password else None}
        wh = self.warehouse
        catalog["warehouse"] = wh if "://" in wh else f"file://{os.path.abspath(wh)}"
        if self.reader_s3:
            catalog["s3"] = dict(self.reader_s3, region="us-east-1")
        return dict(catalog, name=self.name)

    def java_sql(self, sql, timeout=300):
        """Runs one SQL statement with Apache Iceberg's Java library (Spark SQL, the Iceberg
        extensions on: CALL system.rewrite_data_files(…), DELETE, MERGE, INSERT …) in this
        lake's catalog, which is Spark's default catalog there (`lake.events` and
        `floe.lake.events` both name floe's table). Returns the rows as dicts in column order,
        values as PyIceberg's to_pylist() gives them (see SparkWorker.sql). Raises
        IcebergJavaError with the Java exception's message when the statement fails.
        Local warehouses only for now: Iceberg's S3FileIO needs the AWS SDK v2, which the
        stack (scripts/iceberg-java) does not have."""
        worker = spark_worker()
        if self._java is None or self._java[0] is not worker:
            self._java = (worker, worker.open(**self.java_catalog()))
        columns, rows = worker.sql(self._java[1], sql, timeout=timeout)
        names = [c["name"] for c in columns]
        return [dict(zip(names, r)) for r in rows]

    def read_java(self, name, order_by=None):
        """Every row of table `name` ("lake.events") as Iceberg Java reads it: a list of dicts
        (column → value, as PyIceberg's to_pylist() gives them), sorted by `order_by` (SQL)
        when given."""
        ident = ".".join(f"`{p}`" for p in [self.name, *name.split(".")])
        order = f" ORDER BY {order_by}" if order_by else ""
        return self.java_sql(f"SELECT * FROM {ident}{order}")

    def close(self):
        """Closes what the lake holds open in the Iceberg Java worker (its catalog's JDBC
        connections)."""
        if self._java is not None:
            worker, sid = self._java
            self._java = None
            if worker.alive():
                worker.close(sid)

    def data_files_on_disk(self, name):
        ns, table = name.split(".", 1)
        where = self.warehouse_dir or self.warehouse
        if self.reader_s3 and where.startswith("s3://"):
            bucket, prefix = where[len("s3://"):].split("/", 1)
            keys = s3_keys(self.reader_s3, bucket, f"{prefix}/{ns}/{table}/data/")
            return sorted(f"s3://{bucket}/{k}" for k in keys if k.endswith(".parquet"))
        return sorted(glob.glob(f"{self.warehouse_dir}/{ns}/{table}/data/**/*.parquet",
                                recursive=True))


def local_path(uri):
    """The local path of a file URI in any of its spellings (`file:///a`, `file:/a` as Java
    writes it, or a plain path)."""
    for prefix in ("file://", "file:"):
        if uri.startswith(prefix):
            return uri[len(prefix):]
    return uri


def s3_client(s3):
    import boto3
    return boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1",
                        aws_access_key_id=s3["access_key_id"],
                        aws_secret_access_key=s3["secret_access_key"],
                        aws_session_token=s3.get("session_token"))


def s3_keys(s3, bucket, prefix):
    keys = []
    for page in s3_client(s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def duckdb_connect(s3=None):
    """DuckDB with the iceberg extension loaded offline from the pip-installed packages (and
    httpfs with an S3 secret for an S3 warehouse)."""
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg
    mods = [duckdb_extension_avro, duckdb_extension_iceberg]
    if s3:
        import duckdb_extension_httpfs
        mods.insert(0, duckdb_extension_httpfs)
    con = duckdb.connect(config={
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
        "extension_directory": str(Path(os.environ.get("TMPDIR", "/tmp")) / "floe-duckdb-ext-empty"),
    })
    for mod in mods:
        base = Path(mod.__file__).parent
        files = sorted(base.glob("**/*.duckdb_extension*"))
        if not files:
            raise RuntimeError(f"no extension file under {base}")
        con.execute(f"LOAD '{files[-1]}'")
    if s3:
        endpoint = s3["endpoint"].split("://", 1)[1]
        token = f", SESSION_TOKEN '{s3['session_token']}'" if s3.get("session_token") else ""
        con.execute(f"""CREATE SECRET floe_s3 (TYPE S3, KEY_ID '{s3["access_key_id"]}',
            SECRET '{s3["secret_access_key"]}', ENDPOINT '{endpoint}', URL_STYLE 'path',
            USE_SSL false, REGION 'us-east-1'{token})""")
    return con


# --- Apache Iceberg Java -------------------------------------------------------------------

class IcebergJavaError(Exception):
    """A request the Iceberg Java worker refused: the Java exception's message (and causes);
    `java_class` is the exception's class."""

    def __init__(self, message, java_class=None):
        super().__init__(message)
        self.java_class = java_class


def iceberg_java_home():
    """The Iceberg Java stack: $FLOE_ICEBERG_JAVA (scripts/test exports it), else what
    scripts/iceberg-java installs (once, cached outside the clone; ~1 min) and prints."""
    if os.environ.get("FLOE_ICEBERG_JAVA"):
        return Path(os.environ["FLOE_ICEBERG_JAVA"])
    out = subprocess.run([ROOT / "scripts" / "iceberg-java"], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip())


class SparkWorker:
    """tests/java/spark_worker.py in its own process: one Spark driver (JVM) for the whole test
    session, with a Spark session per lake. Its log (Spark's and the JVM's output) goes to
    `self.log`."""

    def __init__(self, home=None, start_timeout=120):
        home = Path(home or iceberg_java_home())
        env = dict(os.environ)
        for var in ("SPARK_HOME", "PYTHONPATH", "PYTHONHOME", "PYSPARK_SUBMIT_ARGS"):
            env.pop(var, None)
        for line in (home / "env.sh").read_text().splitlines():
            key, eq, value = line.partition("=")
            if eq and not key.startswith(("#", "export ")):
                env[key.strip()] = value.strip()
        fd, self.log = tempfile.mkstemp(prefix="floe-spark-worker-", suffix=".log")
        t0 = time.time()
        self.proc = subprocess.Popen(
            [str(home / "venv" / "bin" / "python"), str(ROOT / "tests/java/spark_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd, env=env)
        os.close(fd)
        self._buf = bytearray()
        self._next_id = 0
        ready = self._read(start_timeout)
        if not ready.get("ready"):
            raise RuntimeError(f"spark worker: unexpected first line {ready}")
        self.spark_version = ready["spark"]
        self.start_seconds = time.time() - t0

    def alive(self):
        return self.proc.poll() is None

    def _log_tail(self):
        try:
            return Path(self.log).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _read(self, timeout):
        fd = self.proc.stdout.fileno()
        deadline = time.time() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.time()
            ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self.proc.kill()
                self.proc.wait()
                raise TimeoutError(f"spark worker: no answer within {timeout} s (killed); "
                                   f"log {self.log}:\n{self._log_tail()}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.proc.wait()
                raise RuntimeError(f"spark worker exited ({self.proc.returncode}); "
                                   f"log {self.log}:\n{self._log_tail()}")
            self._buf += chunk
        at = self._buf.index(b"\n")
        line = bytes(self._buf[:at])
        del self._buf[:at + 1]
        return json.loads(line)

    def request(self, timeout=300, **req):
        """Sends one request (see tests/java/spark_worker.py) and returns its answer; raises
        IcebergJavaError for an {"error": …} answer."""
        self._next_id += 1
        req["id"] = self._next_id
        self.proc.stdin.write(json.dumps(req).encode() + b"\n")
        self.proc.stdin.flush()
        answer = self._read(timeout)
        if answer.get("id") != req["id"]:
            raise RuntimeError(f"spark worker: answer {answer} to request {req}")
        if "error" in answer:
            raise IcebergJavaError(answer["error"], answer.get("class"))
        return answer

    def open(self, name, uri, warehouse, user=None, password=None, s3=None, conf=None,
             type="jdbc", token=None, credential=None):
        """A Spark session with an Iceberg catalog `name` (floe's catalog.name): JDBC on `uri`
        (jdbc:sqlite:/abs/path or jdbc:postgresql://127.0.0.1:PORT/DB) and `warehouse`
        (file:///abs/path), or with type="rest" Iceberg's REST client on `uri`
        (http://127.0.0.1:PORT), `warehouse` its warehouse name, `token` / `credential`;
        returns its id."""
        return self.request(op="open", name=name, uri=uri, warehouse=warehouse, user=user,
                            password=password, s3=s3, conf=conf or {}, type=type, token=token,
                            credential=credential)["session"]

    def sql(self, session, sql, timeout=300):
        """Runs `sql` in `session`: (columns, rows), columns as [{"name", "type"}] (Spark's
        type), rows as lists of Python values like PyIceberg's to_pylist(): timestamp
        (timestamptz) → datetime in UTC, timestamp_ntz → naive datetime, date → date,
        decimal → Decimal, binary → bytes, map → list of (key, value), struct → dict."""
        answer = self.request(op="sql", session=session, sql=sql, timeout=timeout)
        types = [c["type"] for c in answer["columns"]]
        rows = [[_decode(v, t) for v, t in zip(row, types)] for row in answer["rows"]]
        return answer["columns"], rows

    def close(self, session):
        self.request(op="close", session=session)

    def stop(self):
        """Ends the worker (at the end of its input); its log is kept if it failed."""
        if self.alive():
            try:
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        if self.proc.returncode == 0:
            Path(self.log).unlink(missing_ok=True)


def _decode(v, t):
    """A value of tests/java/spark_worker.py's JSON as Python's (Spark type `t`)."""
    if v is None:
        return None
    if isinstance(t, str):
        if t in ("timestamp", "timestamp_ntz"):
            return datetime.fromisoformat(v)
        if t == "date":
            return date.fromisoformat(v)
        if t.startswith("decimal"):
            return Decimal(v)
        if t == "binary":
            return base64.b64decode(v)
        return v
    if t["type"] == "array":
        return [_decode(x, t["elementType"]) for x in v]
    if t["type"] == "map":
        return [(_decode(k, t["keyType"]), _decode(x, t["valueType"])) for k, x in v]
    if t["type"] == "struct":
        return {f["name"]: _decode(v[f["name"]], f["type"]) for f in t["fields"]}
    return v


_worker = None


def spark_worker():
    """The test session's Iceberg Java worker, started on first use (again if it died). The
    conftest's `iceberg_java` fixture stops it at the session's end."""
    global _worker
    if _worker is None or not _worker.alive():
        _worker = SparkWorker()
    return _worker


def stop_spark_worker():
    global _worker
    if _worker is not None:
        _worker.stop()
        _worker = None

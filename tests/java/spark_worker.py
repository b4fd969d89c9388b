"""A long-lived Spark 3.5 driver with Apache Iceberg 1.10 (the Java library Trino and Spark run),
so that tests read and write floe's tables with it without paying the JVM's start-up per read.

Run with the Python of scripts/iceberg-java's directory (it has pyspark), SPARK_JARS (and
JAVA_HOME) from its env.sh in the environment: tests/readers.py's SparkWorker does that.

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout. The first line
out is {"ready": true, "spark": VERSION, "seconds": START_UP}. Every answer echoes the request's
"id" when it has one. A failing request answers {"error": "<Java exception: message; caused by
...>", "class": "<Java class>"} and the worker goes on; it ends at the end of its input.

  {"op": "open", "name": "floe",
   "uri": "jdbc:sqlite:/abs/catalog.db" | "jdbc:postgresql://127.0.0.1:PORT/DB",
   "user": null, "password": null, "warehouse": "file:///abs/warehouse",
   "s3": null | {"endpoint", "access_key_id", "secret_access_key", "region"}, "conf": {SQL conf}}
      → {"session": "s1"}: a Spark session of its own (spark.newSession(): catalogs are per
        session) with an Iceberg JDBC catalog named `name`, which is also its default catalog.
        Iceberg's JdbcCatalog keeps its tables under the Spark catalog's name (its
        catalog_name column), so `name` must be floe's catalog.name, and every floe lake, all
        named "floe" in the tests, needs a session of its own.
  {"op": "open", "type": "rest", "name": "floe", "uri": "http://127.0.0.1:PORT",
   "warehouse": "WAREHOUSE NAME" | null, "token": null | "…", "credential": null | "id:secret",
   "s3": …, "conf": {…}}
      → {"session": "s2"}: the same with Iceberg's REST catalog client instead (a bearer
        token, or OAuth2 client credentials exchanged at {uri}/v1/oauth/tokens).
  {"op": "sql", "session": "s1", "sql": "SELECT …"}
      (on SQLite, each statement runs with its catalog initialized anew: see op_sql; a USE
      does not carry over to the next statement there)
      → {"columns": [{"name": …, "type": SPARK_TYPE}], "rows": [[…], …]}
        SPARK_TYPE is Spark's DataType.jsonValue(): a string for a primitive ("timestamp",
        "decimal(10,2)", …), an object for array/map/struct. Values: null; booleans, integers
        and floats as JSON (NaN and ±Infinity as Python's json writes them); strings; decimal
        as a string ("12.50"); date "YYYY-MM-DD"; timestamp (Iceberg timestamptz) as ISO 8601
        in UTC with microseconds and "+00:00"; timestamp_ntz (Iceberg timestamp) the same
        without an offset; binary (and fixed) in base64; array as a list; struct as an object;
        map as a list of [key, value] pairs. Commands (INSERT, DELETE, CALL …) run too and
        answer their rows, if any.
  {"op": "close", "session": "s1"} → {"ok": true}: closes its catalog (its JDBC connections).
  {"op": "ping"} → {"ok": true, "sessions": N}
"""

import base64
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

# The answers own stdout: everything else, the JVM's output included (it inherits fd 1), goes
# to stderr.
_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
# PySpark turns Spark's timestamps (UTC microseconds) into naive datetimes in the process's time
# zone: make that UTC.
os.environ["TZ"] = "UTC"
time.tzset()
# Spark resolves the host's address for itself unless told: only the loopback here.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

JNI = "/usr/lib/x86_64-linux-gnu/jni"  # Debian's SQLite JDBC loads its native library from here


def base_session(scratch):
    b = (SparkSession.builder
         .master(os.environ.get("SPARK_WORKER_MASTER", "local[2]"))
         .appName("floe-tests-iceberg-java")
         .config("spark.jars", os.environ["SPARK_JARS"])
         .config("spark.driver.memory", os.environ.get("SPARK_WORKER_MEMORY", "1g"))
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.catalogImplementation", "in-memory")
         .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
         .config("spark.local.dir", os.path.join(scratch, "local"))
         .config("spark.driver.extraJavaOptions",
                 f"-Djava.library.path={JNI} -Duser.timezone=UTC -XX:+UseSerialGC")
         .config("spark.sql.extensions",
                 "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"))
    s = b.getOrCreate()
    s.sparkContext.setLogLevel(os.environ.get("SPARK_WORKER_LOG_LEVEL", "ERROR"))
    return s


def catalog_conf(req):
    """The Spark SQL settings of an Iceberg JDBC (or REST) catalog named req["name"]."""
    name = req["name"]
    p = f"spark.sql.catalog.{name}"
    if req.get("type") == "rest":
        conf = {
            p: "org.apache.iceberg.spark.SparkCatalog",
            f"{p}.type": "rest",
            f"{p}.uri": req["uri"],
            f"{p}.cache-enabled": "false",
            "spark.sql.defaultCatalog": name,
        }
        for key in ("warehouse", "token", "credential"):
            if req.get(key):
                conf[f"{p}.{key}"] = req[key]
        s3 = req.get("s3")
        if s3:
            conf.update(s3_conf(p, s3))
        conf.update(req.get("conf") or {})
        return conf
    conf = {
        p: "org.apache.iceberg.spark.SparkCatalog",
        f"{p}.type": "jdbc",
        f"{p}.uri": req["uri"],
        f"{p}.warehouse": req["warehouse"],
        # Every query loads the table's current metadata: floe commits between the reads.
        f"{p}.cache-enabled": "false",
        # Java's catalog schema with views (the iceberg_type column, which floe creates too);
        # under V0 a missing table is reported as "initialized without view support".
        f"{p}.jdbc.schema-version": "V1",
        "spark.sql.defaultCatalog": name,
    }
    if req.get("user"):
        conf[f"{p}.jdbc.user"] = req["user"]
    if req.get("password"):
        conf[f"{p}.jdbc.password"] = req["password"]
    if req["uri"].startswith("jdbc:sqlite:"):
        # Wait for floe's write transactions instead of failing with SQLITE_BUSY.
        conf[f"{p}.jdbc.busy_timeout"] = "10000"
    s3 = req.get("s3")
    if s3:
        conf.update(s3_conf(p, s3))
    conf.update(req.get("conf") or {})
    return conf


def s3_conf(p, s3):
    """Iceberg's S3FileIO; it needs the AWS SDK v2 on the class path, which this stack does
    not ship yet (no registry package has it)."""
    return {
        f"{p}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        f"{p}.s3.endpoint": s3["endpoint"],
        f"{p}.s3.path-style-access": "true",
        f"{p}.s3.access-key-id": s3["access_key_id"],
        f"{p}.s3.secret-access-key": s3["secret_access_key"],
        f"{p}.client.region": s3.get("region", "us-east-1"),
    }


def encode(v, t):
    """A Spark value (as PySpark collects it) as JSON (see the module's doc)."""
    if v is None:
        return None
    if isinstance(t, T.TimestampType):  # naive, in the process's zone: UTC (above)
        return v.isoformat(timespec="microseconds") + "+00:00"
    if isinstance(t, T.TimestampNTZType):
        return v.isoformat(timespec="microseconds")
    if isinstance(t, T.DateType):
        return v.isoformat()
    if isinstance(t, T.DecimalType):
        return format(v, "f")
    if isinstance(t, T.BinaryType):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(t, T.ArrayType):
        return [encode(x, t.elementType) for x in v]
    if isinstance(t, T.MapType):
        return [[encode(k, t.keyType), encode(x, t.valueType)] for k, x in v.items()]
    if isinstance(t, T.StructType):
        return {f.name: encode(v[i], f.dataType) for i, f in enumerate(t.fields)}
    return v


def describe(e):
    """The Java exception behind `e` (class: message, and its causes), else Python's."""
    origin = getattr(e, "_origin", None) or getattr(e, "java_exception", None)
    if origin is None:
        return type(e).__name__, f"{type(e).__name__}: {e}"
    try:
        parts, seen, t = [], 0, origin
        while t is not None and seen < 6:
            text = t.toString()
            if not parts or text not in parts[-1]:
                parts.append(text)
            seen += 1
            t = t.getCause()
        return origin.getClass().getName(), "; caused by: ".join(parts)
    except Exception:  # the JVM is gone
        return type(e).__name__, str(e)


class Worker:
    def __init__(self, scratch):
        t0 = time.time()
        self.spark = base_session(scratch)
        self.sessions = {}
        self.names = {}
        self.next_id = 1
        self.started = time.time() - t0

    def op_ping(self, req):
        return {"ok": True, "sessions": len(self.sessions)}

    def op_open(self, req):
        s = self.spark.newSession()
        for k, v in catalog_conf(req).items():
            s.conf.set(k, v)
        sid = f"s{self.next_id}"
        self.next_id += 1
        self.sessions[sid] = {"spark": s, "name": req["name"], "loaded": False,
                              "fresh": req["uri"].startswith("jdbc:sqlite:")
                              and req.get("type", "jdbc") == "jdbc"}
        return {"session": sid}

    def session(self, req):
        sid = req.get("session")
        if sid not in self.sessions:
            raise KeyError(f"no session {sid!r} (open one first)")
        return self.sessions[sid]

    @staticmethod
    def drop_catalog(session):
        """Closes the session's Iceberg catalog (its JDBC connections); Spark loads it again,
        initialized anew, at its next use."""
        if not session["loaded"]:
            return
        session["loaded"] = False
        manager = session["spark"]._jsparkSession.sessionState().catalogManager()
        try:
            manager.catalog(session["name"]).icebergCatalog().close()
        finally:
            manager.reset()

    def op_sql(self, req):
        session = self.session(req)
        if session["fresh"]:
            # Iceberg 1.10's JdbcCatalog.initialize() leaves two DatabaseMetaData result sets
            # open (getTables in atomicCreateTable, getColumns in updateSchemaIfRequired). On
            # SQLite in WAL mode (floe's) the pooled connection then stays in a read
            # transaction: that catalog sees the database as it was at its start, forever (and
            # its commits would fail with SQLITE_BUSY_SNAPSHOT once floe has committed). So
            # each statement on SQLite gets a catalog initialized for it, which sees the
            # catalog as of the statement's start.
            self.drop_catalog(session)
        session["loaded"] = True
        df = session["spark"].sql(req["sql"])
        fields = df.schema.fields
        rows = df.collect()
        return {
            "columns": [{"name": f.name, "type": f.dataType.jsonValue()} for f in fields],
            "rows": [[encode(r[i], f.dataType) for i, f in enumerate(fields)] for r in rows],
        }

    def op_close(self, req):
        session = self.session(req)
        del self.sessions[req["session"]]
        self.drop_catalog(session)
        return {"ok": True}

    def handle(self, line):
        req = None
        try:
            req = json.loads(line)
            op = getattr(self, "op_" + str(req.get("op")), None)
            if op is None:
                raise ValueError(f"unknown op {req.get('op')!r}")
            answer = op(req)
        except Exception as e:
            cls, msg = describe(e)
            answer = {"error": msg, "class": cls}
            if os.environ.get("SPARK_WORKER_TRACE"):
                traceback.print_exc()
        if isinstance(req, dict) and "id" in req:
            answer["id"] = req["id"]
        return answer


def dumps(answer):
    try:
        return json.dumps(answer)
    except (TypeError, ValueError) as e:
        return json.dumps({"error": f"answer is not JSON: {e}", "class": type(e).__name__,
                           "id": answer.get("id")})


def main():
    scratch = tempfile.mkdtemp(prefix="floe-spark-worker-")  # Spark's own files
    try:
        w = Worker(scratch)
        _out.write(json.dumps({"ready": True, "spark": w.spark.version,
                               "seconds": round(w.started, 2)}) + "\n")
        for line in sys.stdin:
            if line.strip():
                _out.write(dumps(w.handle(line)) + "\n")
        w.spark.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Running floe and reading what it wrote with readers floe does not control."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Lake:
    """A floe working directory: runs the binary there and reads its tables back."""

    def __init__(self, floe_bin, workdir, catalog_uri, warehouse, name="floe", s3=None):
        self.bin = Path(floe_bin)
        self.dir = Path(workdir)
        self.catalog_uri = catalog_uri
        self.warehouse = warehouse
        self.name = name
        # S3 settings for an s3:// warehouse: endpoint, access_key_id, secret_access_key.
        self.s3 = s3
        # What readers use (the S3 server itself when floe goes through a fault proxy).
        self.reader_s3 = s3
        self.extra_env = {}
        shutil.copytree(ROOT / "schemas", self.dir / "schemas", dirs_exist_ok=True)

    def env(self):
        env = dict(os.environ)
        env["FLOE__CATALOG__URI"] = self.catalog_uri
        env["FLOE__CATALOG__WAREHOUSE"] = self.warehouse
        env["FLOE__CATALOG__NAME"] = self.name
        env.setdefault("RUST_LOG", "warn")
        env.setdefault("FLOE__METRICS__LISTEN", "127.0.0.1:0")
        if self.s3:
            env["FLOE__S3__ENDPOINT"] = self.s3["endpoint"]
            env["FLOE__S3__REGION"] = "us-east-1"
            env["FLOE__S3__PATH_STYLE"] = "true"
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

    def data_files_on_disk(self, name):
        ns, table = name.split(".", 1)
        if self.reader_s3:
            bucket, prefix = self.warehouse[len("s3://"):].split("/", 1)
            keys = s3_keys(self.reader_s3, bucket, f"{prefix}/{ns}/{table}/data/")
            return sorted(f"s3://{bucket}/{k}" for k in keys if k.endswith(".parquet"))
        return sorted(glob.glob(f"{self.warehouse}/{ns}/{table}/data/**/*.parquet", recursive=True))


def s3_client(s3):
    import boto3
    return boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1",
                        aws_access_key_id=s3["access_key_id"],
                        aws_secret_access_key=s3["secret_access_key"])


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
        con.execute(f"""CREATE SECRET floe_s3 (TYPE S3, KEY_ID '{s3["access_key_id"]}',
            SECRET '{s3["secret_access_key"]}', ENDPOINT '{endpoint}', URL_STYLE 'path',
            USE_SSL false, REGION 'us-east-1')""")
    return con

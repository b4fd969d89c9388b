"""Running floe and reading what it wrote with readers floe does not control."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Lake:
    """A floe working directory: runs the binary there and reads its tables back."""

    def __init__(self, floe_bin, workdir, catalog_uri, warehouse, name="floe"):
        self.bin = Path(floe_bin)
        self.dir = Path(workdir)
        self.catalog_uri = catalog_uri
        self.warehouse = warehouse
        self.name = name
        self.extra_env = {}
        shutil.copytree(ROOT / "schemas", self.dir / "schemas", dirs_exist_ok=True)

    def env(self):
        env = dict(os.environ)
        env["FLOE__CATALOG__URI"] = self.catalog_uri
        env["FLOE__CATALOG__WAREHOUSE"] = self.warehouse
        env["FLOE__CATALOG__NAME"] = self.name
        env.setdefault("RUST_LOG", "warn")
        env.setdefault("FLOE__METRICS__LISTEN", "127.0.0.1:0")
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
        return SqlCatalog(self.name, uri=uri, warehouse=f"file://{self.warehouse}")

    def pyiceberg_table(self, name):
        return self.pyiceberg_catalog().load_table(name)

    def read_pyiceberg(self, name):
        return self.pyiceberg_table(name).scan().to_arrow()

    # --- DuckDB ----------------------------------------------------------------------------
    def read_duckdb(self, name, sql="SELECT * FROM t"):
        con = duckdb_connect()
        location = self.pyiceberg_table(name).metadata_location
        con.execute(f"CREATE VIEW t AS SELECT * FROM iceberg_scan('{location}')")
        return con.execute(sql).to_arrow_table()

    def data_files_on_disk(self, name):
        ns, table = name.split(".", 1)
        return sorted(glob.glob(f"{self.warehouse}/{ns}/{table}/data/**/*.parquet", recursive=True))


def duckdb_connect():
    """DuckDB with the iceberg extension loaded offline from the pip-installed packages."""
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg
    con = duckdb.connect(config={
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
        "extension_directory": str(Path(os.environ.get("TMPDIR", "/tmp")) / "floe-duckdb-ext-empty"),
    })
    for mod in (duckdb_extension_avro, duckdb_extension_iceberg):
        base = Path(mod.__file__).parent
        files = sorted(base.glob("**/*.duckdb_extension*"))
        if not files:
            raise RuntimeError(f"no extension file under {base}")
        con.execute(f"LOAD '{files[-1]}'")
    return con

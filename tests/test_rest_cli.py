"""The CLI on a REST catalog: the quickstart, and settings that belong to one kind of catalog."""

from collections import Counter


def test_quickstart_runs_on_a_rest_catalog(rest_lake, tmp_path):
    lake = rest_lake
    # Only the URI: the SQL default warehouse folder is not sent as a warehouse name.
    lake.extra_env["FLOE__CATALOG__WAREHOUSE"] = "floe-data/warehouse"
    p = lake.run("quickstart", "--catalog-uri", lake.rest_gate.endpoint, timeout=600)
    assert "Done in" in p.stdout, p.stdout
    configs = lake.rest_gate.seen("GET", r"/v1/config")
    assert configs and all("warehouse" not in s.query for s in configs)
    # The tables are in the server's default catalog; PyIceberg reads them there.
    from pyiceberg.catalog.rest import RestCatalog
    cat = RestCatalog("q", uri=lake.rest_gate.endpoint)
    events = cat.load_table("lake.events").scan().to_arrow()
    assert events.num_rows > 0
    ids = Counter(events.column("event_guid").to_pylist())
    assert max(ids.values()) == 1, "an event loaded twice"


def test_rest_settings_with_a_sql_catalog_are_refused(sqlite_lake):
    lake = sqlite_lake
    lake.extra_env["FLOE__CATALOG__CREDENTIAL"] = "id:very-secret"
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0
    assert "catalog.credential applies to an Iceberg REST catalog" in p.stderr, p.stderr
    assert "very-secret" not in p.stderr


def test_secrets_never_print(rest_lake, tmp_path):
    lake = rest_lake
    lake.extra_env.update({"FLOE__CATALOG__CREDENTIAL": "client:s3cr3t-value",
                           "FLOE__CATALOG__HEADERS__X_API_KEY": "k3y-value",
                           "FLOE__CATALOG__HEADERS__X_TENANT": "t1"})
    p = lake.run("--print-config")
    assert "s3cr3t-value" not in p.stdout and "k3y-value" not in p.stdout, p.stdout
    assert "client:***" in p.stdout and "t1" in p.stdout, p.stdout
